"""The protocols that predict new products: a title-deduplicated gallery and recall at a fixed gallery size."""
from __future__ import annotations

import numpy as np
import pytest

from xmodal.evaluation import metrics, protocols
from xmodal.evaluation.scoring import score_embeddings


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_one_product_per_title_seeded_and_normalised():
    captions = ["Red Shirt", "red  shirt", "Blue Kurta", "Red Shi\u00adrt", "Green Top"]
    keep = protocols.one_per_title(captions, seed=0)
    assert len(keep) == 3  # the soft hyphen and spacing make no new title
    assert sorted(metrics.title_groups([captions[i] for i in keep]).tolist()) == [0, 1, 2]
    assert (keep == protocols.one_per_title(captions, seed=0)).all()
    picks = {int(i) for s in range(20) for i in protocols.one_per_title(captions, seed=s) if i in (0, 1, 3)}
    assert picks == {0, 1, 3}  # which copy is kept depends on the seed only


def test_dedup_takes_away_the_free_matches_of_repeated_titles():
    eye = np.eye(8, dtype=np.float32)
    img = eye[[7, 1, 2, 3, 4, 5]]  # product 0's photo looks like nothing; the rest are perfect
    txt = eye[[1, 1, 2, 3, 4, 5]]  # products 0 and 1 share a title, so their texts embed alike
    captions = ["Red Shirt", "Red Shirt", "Blue Kurta", "Green Top", "Black Jeans", "White Cap"]
    caption = metrics.summarise(metrics.split_ranks(img, txt, captions, "caption"))
    assert caption["text_to_image/R@1"] == 100.0  # product 0's title finds product 1's photo: counted correct
    for seed in range(8):
        ranks, keep = protocols.dedup_ranks(img, txt, captions, seed=seed)
        expected = 100.0 if 1 in keep else 80.0  # kept product 0 must be found by its own photo
        assert len(keep) == 5 and metrics.summarise(ranks)["text_to_image/R@1"] == pytest.approx(expected)


def test_fixed_gallery_equals_the_dedup_gallery_at_its_full_size_and_is_seeded():
    rng = np.random.default_rng(1)
    img = _unit(rng.normal(size=(60, 8)).astype(np.float32))
    txt = _unit(img + rng.normal(scale=0.6, size=img.shape).astype(np.float32))
    captions = [f"title {i}" for i in range(60)]
    whole = metrics.summarise(protocols.dedup_ranks(img, txt, captions)[0])
    full = protocols.fixed_gallery(img, txt, captions, size=60, reps=3)
    for key, value in full["metrics"].items():
        assert value == pytest.approx(whole[key]), key
    small = protocols.fixed_gallery(img, txt, captions, size=20, reps=10)
    assert small == protocols.fixed_gallery(img, txt, captions, size=20, reps=10)
    assert small["metrics"]["text_to_image/R@1"] > whole["text_to_image/R@1"]  # fewer distractors
    lo, hi = small["ci95"]["rsum"]
    assert lo <= small["metrics"]["rsum"] <= hi and hi - lo > 0
    assert protocols.fixed_gallery(img, txt, captions, size=61) is None


def test_every_split_score_carries_both_protocols():
    rng = np.random.default_rng(2)
    img = _unit(rng.normal(size=(40, 8)).astype(np.float32))
    captions = [f"title {i % 30}" for i in range(40)]
    out = score_embeddings(img, img.copy(), captions)
    assert out["dedup_gallery_size"] == 30 and out["dedup"]["rsum"] == pytest.approx(600.0)
    assert out["fixed_gallery"] is None  # 30 distinct titles: fewer than a fixed gallery needs
    assert "dedup" in out["ci95"] and out["protocols"]["dedup"] == protocols.DEDUP_NAME


def test_report_shows_the_title_deduplicated_column(trained_run, capsys):
    from xmodal.evaluation.report import main as report_cli
    assert report_cli([str(trained_run)]) == 0
    out = capsys.readouterr().out
    assert "title-deduplicated t2i R@1 / R@10 (products)" in out and "(test.json from before" not in out
    assert "| rsum in galleries of 500 deduplicated products |" in out
    assert "- (fewer distinct titles)" in out  # the tiny run's 6 test products cannot fill a gallery of 500
    assert report_cli([str(trained_run), "--gt", "dedup"]) == 0
    assert "one product per distinct title" in capsys.readouterr().out


def test_val_report_pairs_runs_under_dedup_and_completes_old_records(trained_run, tmp_path, capsys):
    """``report --split val --gt dedup``: per-product ranks from the chosen checkpoint's record, or, for a record
    from before the protocol, scored now from the checkpoint: the same numbers either way."""
    import shutil
    from safetensors.torch import load_file
    from xmodal.evaluation.report import main as report_cli
    from xmodal.runs import read_best, save_best
    new, old = tmp_path / "new", tmp_path / "old"
    shutil.copytree(trained_run, new)
    shutil.copytree(trained_run, old)
    info = read_best(old)
    kept = len(info["val"]["ranks"]["dedup"]["text_to_image"])
    assert kept == info["val"]["dedup_gallery_size"]
    for key in ("dedup", "dedup_gallery_size"):
        del info["val"][key]
    del info["val"]["ranks"]["dedup"], info["val"]["ci95"]["dedup"]
    save_best(old, load_file(old / "best.safetensors"), info)
    assert report_cli(["--split", "val", "--gt", "dedup", str(new), str(old)]) == 0
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line.split("|")[10].strip() for line in out.splitlines()
            if line.startswith("| new") or line.startswith("| old")}
    assert rows["new"] == rows["old"]  # rsum with its interval: recorded in training == scored now
    assert f"new vs old (the same {kept} val queries): rsum +0.0" in out


def test_seed_lines_name_what_each_recipes_flags_set():
    from xmodal.evaluation.report import recipe_label
    assert recipe_label({"model": "m", "train": {"word_vectors": "word2vec", "model_args": {}, "epochs": None}}) == "m"
    label = recipe_label({"model": "m", "train": {"word_vectors": "fasttext", "model_args": {"hard_weight": 1.0},
                                                  "epochs": 10, "tune_blocks": 0}})
    assert label == "m (word_vectors=fasttext, hard_weight=1.0, epochs=10)"


def test_compare_table_carries_both_proxies_with_their_intervals():
    from xmodal.dashboard.analysis import FIXED_COLUMN, protocol_columns, with_intervals
    import pandas as pd
    test = {"dedup": {"text_to_image/R@1": 45.0, "text_to_image/R@10": 88.4, "rsum": 427.4}, "dedup_gallery_size": 796,
            "ci95": {"dedup": {"text_to_image/R@1": [41.2, 48.2], "text_to_image/R@10": [86.0, 90.6],
                               "rsum": [414.4, 441.1]}},
            "fixed_gallery": {"size": 500, "metrics": {"rsum": 461.8}, "ci95": {"rsum": [450.0, 472.5]}}}
    row = with_intervals(pd.DataFrame([protocol_columns(test)])).iloc[0]
    assert FIXED_COLUMN == "gallery-500 rsum" and row[FIXED_COLUMN] == "461.8 [450.0-472.5]"
    assert row["dedup t2i R@1"] == "45.0 [41.2-48.2]" and row["dedup gallery"] == 796
    old = with_intervals(pd.DataFrame([protocol_columns({"caption": {}})])).iloc[0]  # from before the protocols
    assert old["dedup rsum"] == "" and old[FIXED_COLUMN] == ""
