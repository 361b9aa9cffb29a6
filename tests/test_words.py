"""How well a run reads attribute words (xmodal.evaluation.words): the figures against a count made here, and the
command's one-line errors."""
from __future__ import annotations

import pytest

from xmodal.evaluation.words import main, word_figures


def test_word_figures_count_what_the_searches_return(trained_run):
    from xmodal import load_run
    run = load_run(trained_run)
    f = word_figures(run, "colour", k=4)
    colours = run.catalogue.attributes["colour"]
    right = asked = 0
    for value in sorted(set(colours)):
        hits = run.search_text(value.lower(), k=4)
        right += sum(colours[h.index] == value for h in hits)
        asked += len(hits)
    assert f["search"][0] == pytest.approx(right / asked) and f["queries"] == asked // 4
    for share, low, high in (f["reading"], f["search"]):
        assert 0 <= low <= share <= high <= 1
    assert f["items"] == len(colours) and 0 < f["majority"] <= 1


def test_the_command_prints_a_row_per_run_and_refuses_a_missing_column(trained_run, capsys):
    assert main([str(trained_run), "--column", "pattern", "--k", "3"]) == 0
    out = capsys.readouterr().out
    assert out.count(f"| {trained_run} |") == 1 and "top-3 photos" in out
    assert main([str(trained_run), "--column", "nonexistent"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nonexistent" in err and err.count("\n") == 1
