"""Failure clusters with names: over-represented attribute groups against the base rate, with intervals."""
from __future__ import annotations

import numpy as np
import pytest

from xmodal.evaluation.failures import describe, failure_clusters


def _catalogue():
    rng = np.random.default_rng(0)
    n = 400
    gender = rng.choice(["Men", "Women"], n)
    category = rng.choice(["Kurtas", "Shirts", "Shoes", "Jeans"], n)
    colour = rng.choice(["Blue", "Red", "Black"], n)
    ranks = rng.integers(1, 11, n).astype(float)  # everyone found in the top 10 ...
    bad = (gender == "Women") & (category == "Kurtas") & (colour == "Blue")
    ranks[bad] = 50  # ... but blue women's kurtas
    ranks[rng.random(n) < 0.05] = 30  # and a little noise everywhere
    captions = [f"{g} {c} {k}" for g, c, k in zip(gender, colour, category)]
    return ranks, {"gender": list(gender), "sub_category": list(category), "colour": list(colour)}, captions, bad


def test_the_planted_cluster_comes_first_with_its_counts_and_interval():
    ranks, attrs, captions, bad = _catalogue()
    res = failure_clusters(ranks, attrs, captions, k=10, min_failures=5)
    fails = int((ranks > 10).sum())
    assert res["failures"] == fails and res["base_rate"] == pytest.approx(100 * fails / len(ranks))
    top = res["clusters"][0]
    assert top["values"] == [["gender", "Women"], ["sub_category", "Kurtas"], ["colour", "Blue"]]
    assert top["failures"] == int(bad.sum()) == top["items"] and top["rate"] == 100.0
    assert top["ci95"][0] > res["base_rate"] and top["lift"] == pytest.approx(100 / res["base_rate"])
    assert sorted(top["members"]) == np.flatnonzero(bad).tolist()
    assert describe(top).startswith(f"Women / Kurtas / Blue: {int(bad.sum())} failures of {int(bad.sum())}, ")
    for cluster in res["clusters"]:  # every cluster is significantly above the base rate
        assert cluster["ci95"][0] > res["base_rate"] and cluster["failures"] >= 5


def test_no_cluster_when_failures_are_spread_evenly():
    rng = np.random.default_rng(1)
    n = 600
    attrs = {"colour": list(rng.choice(["Blue", "Red"], n))}
    ranks = np.where(rng.random(n) < 0.3, 40.0, 1.0)
    assert failure_clusters(ranks, attrs, ["x"] * n, k=10)["clusters"] == []


def test_text_only_catalogues_get_clusters_named_by_title_words():
    ranks, _, captions, bad = _catalogue()
    res = failure_clusters(ranks, {}, captions, k=10)
    assert res["by"] == "title words"
    assert res["clusters"][0]["values"] == [["word", "blue"], ["word", "kurtas"], ["word", "women"]]
    nan = failure_clusters(np.full(20, np.nan), {"c": ["a"] * 20}, ["t"] * 20, k=10)
    assert nan["failures"] == 20  # NaN ranks (non-finite embeddings) fail


def test_evaluate_names_failure_clusters(trained_run, capsys):
    from xmodal.evaluation.evaluate import main as evaluate_cli
    assert evaluate_cli(["--run", str(trained_run), "--split", "val", "--failures", "1"]) == 0
    assert "failure clusters, text_to_image (rank past 1, caption-level)" in capsys.readouterr().out
    assert evaluate_cli(["--run", str(trained_run), "--failures", "0"]) == 2
