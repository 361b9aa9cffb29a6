"""xmodal.bench: its helpers and a tiny end-to-end run. No timing assertions: only the table's shape."""
from __future__ import annotations

import pytest
import torch

from xmodal.bench import SECTIONS, BenchConfig, Row, bench_dashboard, format_table, main, product_like, run_bench
from xmodal.bench_search import _bench_faiss


def test_product_like_is_normalised_and_structured():
    gallery, queries = product_like(2000, 32, seed=0, queries=10, chunk=700)
    assert gallery.shape == (2000, 32) and queries.shape == (10, 32)
    torch.testing.assert_close(gallery.norm(dim=1), torch.ones(2000))
    top = torch.topk(queries @ gallery.T, 10).values
    assert float(top[:, 0].mean()) > 0.5  # each query sits near its item


def test_format_table_has_a_target_met_column():
    rows = [Row("s", "a", "1", "2", "0.5x", "<= 1x", True), Row("s", "b", "skipped (x)", "-", "-", "-", None),
            Row("s", "c", "3", "1", "3x", "<= 1x", False)]
    lines = format_table(rows).splitlines()
    assert "target met?" in lines[0] and len(lines) == 2 + len(rows)
    assert [line.rstrip(" |").split("|")[-1].strip() for line in lines[2:]] == ["yes", "-", "NO"]
    assert len({len(line) for line in lines}) == 1  # aligned


def test_faiss_rows(tmp_path):
    gallery, queries = product_like(3000, 32, queries=50)
    encode = lambda text: queries[len(text) % len(queries)]  # noqa: E731
    rows = _bench_faiss(gallery, queries, BenchConfig(dim=32), tmp_path, encode, ["a", "bb", "ccc"], 0.001)
    measures = [r.measure for r in rows]
    assert [m.split(",")[0] for m in measures] == ["faiss IVF build", "faiss index reload from the run-folder cache",
                                                   "faiss recall@10 vs exact", "text->top-10"]
    assert rows[2].met is True  # recall@10 >= 0.95 on product-like data
    assert not list(tmp_path.iterdir())  # the index file is removed afterwards


def test_dashboard_skips_when_missing(tmp_path):
    rows = bench_dashboard(BenchConfig(dashboard=str(tmp_path / "nope.py")), tmp_path)
    assert len(rows) == 1 and rows[0].measured.startswith("skipped (") and rows[0].met is None


def test_unknown_section(tiny_catalogue):
    with pytest.raises(ValueError, match="unknown bench sections"):
        run_bench(BenchConfig(data=str(tiny_catalogue), sections=("gpu",)))


@pytest.mark.slow
def test_tiny_run_has_every_row(tiny_catalogue, tmp_path, capsys):
    cfg = BenchConfig(sizes=(500, 2000), data=str(tiny_catalogue), feature_images=8, train_batch=8, train_steps=1,
                      models=("siamese", "cmpm-mobilenet"), latency_queries=5, recall_queries=20, umap_points=200,
                      embed_items=100, reps=1, sections=SECTIONS, dashboard=str(tmp_path / "absent.py"))
    rows = run_bench(cfg)
    measures = [r.measure for r in rows]
    assert [r.section for r in rows] == ["1 features", "2 training", "2 training", "3 search", "3 search",
                                         "3 search", "4 maps", "4 maps", "4 maps", "5 dashboard"]
    assert measures[1].startswith("train step: siamese") and measures[2].startswith("train step: cmpm-mobilenet")
    assert measures[4].startswith("text->top-10, exact, 500") and measures[5].startswith("text->top-10, exact, 2,000")
    assert all(r.met is not None for r in rows[:3])  # every comparison has a verdict
    table = format_table(rows)
    assert table.count("\n") == len(rows) + 1


def test_cli_runs_one_section(tiny_catalogue, tmp_path, capsys):
    assert main(["--sections", "dashboard", "--data", str(tiny_catalogue),
                 "--dashboard", str(tmp_path / "absent.py"), "--json", str(tmp_path / "rows.json")]) == 0
    out = capsys.readouterr().out
    assert "target met?" in out and "skipped (" in out
    assert (tmp_path / "rows.json").is_file()
