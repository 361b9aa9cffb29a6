"""The logic behind the dashboard as plain functions: runs table, ranks and intervals, disagreements, selections,
collapse, uploads, coinciding ground truths and live queries. Slices, maps, jobs, start-up, escaping and run
management have modules of their own (tests/test_dashboard_*.py)."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from xmodal.dashboard import analysis, plots, queries
from xmodal.evaluation import metrics
from xmodal.dashboard.uploads import UploadError, read_upload
from xmodal.runs import list_runs


# ---------------------------------------------------------------- tables and ranks

def test_runs_table_reads_a_finished_run(trained_run):
    info = [r for r in list_runs(trained_run.parent) if r.run_id == trained_run.name]
    table = analysis.runs_table(info)
    assert len(table) == 1
    row = table.iloc[0]
    assert row["model"] == "cmpm-efficientnet" and row["status"] == "finished" and row["epochs"] == "2/2"
    assert row["backbone"] == "efficientnet: ImageNet, frozen"
    assert analysis.backbone_label({"model_config": {"backbone": "mobilenet", "weights_source": None,
                                                     "finetune": True}}) == "mobilenet: random init, trained end to end"
    distilled = {"model_config": {"backbone": "mobilenet", "weights_source": "distilled from efficientnet"}}
    assert analysis.backbone_label(distilled) == "mobilenet: distilled offline from EfficientNet-Lite0, frozen"
    test = json.loads((trained_run / "test.json").read_text())["caption"]
    assert row["test t2i R@1"] == pytest.approx(test["text_to_image/R@1"])
    assert row["test i2t R@10"] == pytest.approx(test["image_to_text/R@10"])
    table = analysis.test_metrics_table(info, "item")
    recorded = json.loads((trained_run / "test.json").read_text())
    assert table.iloc[0]["t2i median rank"] == recorded["item"]["text_to_image/median_rank"]
    lo, hi = recorded["ci95"]["item"]["image_to_text/R@5"]  # every cell's interval travels with it
    assert (table.iloc[0]["i2t R@5 lo"], table.iloc[0]["i2t R@5 hi"]) == (lo, hi)
    fig = plots.metric_bars(table)
    assert fig.data[0].error_y.array is not None and len(fig.data[0].error_y.array) == 6


def test_status_text_says_what_a_running_run_does():
    assert analysis.status_text({"state": "finished"}) == "finished"
    assert analysis.status_text({"state": "running", "phase": "training", "epoch": 2, "epochs": 8}) == \
        "running: epoch 2/8"
    assert analysis.status_text({"state": "running", "phase": "extracting image features"}) == \
        "running: extracting image features"
    assert analysis.status_text({}) == "unknown"


def test_split_positions_keeps_catalogue_order_and_drops_unknown_ids():
    assert analysis.split_positions(["a", "b", "c", "d"], ["d", "b", "zz"]).tolist() == [1, 3]


def test_wilson_interval_matches_known_values():
    lo, hi = metrics.wilson(0, 10)
    assert lo == 0 and hi == pytest.approx(27.75, abs=0.01)  # the "rule of three" neighbourhood
    lo, hi = metrics.wilson(10, 10)
    assert hi == pytest.approx(100) and lo == pytest.approx(72.25, abs=0.01)
    lo, hi = metrics.wilson(50, 100)
    assert (lo, hi) == (pytest.approx(40.38, abs=0.01), pytest.approx(59.62, abs=0.01))
    assert metrics.wilson(0, 0) == (0.0, 100.0)
    narrow, wide = metrics.wilson(500, 1000), metrics.wilson(5, 10)
    assert narrow[1] - narrow[0] < wide[1] - wide[0]


def test_disagreements_rank_by_log_spread():
    ranks = {"a": np.array([1, 5, 100, 3]), "b": np.array([1, 50, 200, 3]), "c": np.array([2, 5, 100, 3])}
    df = analysis.disagreements(ranks, top=10)
    assert df.index.tolist() == [1, 0, 2]  # log2(10) > log2(2) = log2(2): ties keep query order; 3 agrees
    assert df.loc[1, "a"] == 5 and df.loc[1, "b"] == 50
    assert df.loc[1, "spread"] == pytest.approx(np.log2(10))
    assert analysis.disagreements(ranks, top=1).index.tolist() == [1]
    assert analysis.disagreements({"a": np.array([1, 2])}).empty
    with pytest.raises(ValueError, match="different numbers"):
        analysis.disagreements({"a": np.array([1, 2]), "b": np.array([1])})


def test_selected_items_from_plotly_points():
    points = [{"customdata": [3], "curve_number": 1}, {"customdata": 3}, {"customdata": [0]},
              {"curve_number": 0, "point_index": 7}, {"customdata": [42]}, {"customdata": ["x"]},
              {"customdata": []}, {"customdata": 1.0}, {"customdata": {"0": 5}}]
    assert analysis.selected_items(points, n_items=10) == [3, 0, 1, 5]
    assert analysis.selected_items(points) == [3, 0, 42, 1, 5]
    assert analysis.selected_items(None) == []


def test_detect_collapse():
    flat = [{"kind": "step", "epoch": 1, "step": i, "loss": 5.0 + 0.001 * (i % 2)} for i in range(20)]
    same = [{"kind": "epoch", "epoch": 1, "pos_sim": 0.01, "neg_sim": 0.0}]
    apart = [{"kind": "epoch", "epoch": 1, "pos_sim": 0.6, "neg_sim": 0.05}]
    falling = [{"kind": "step", "epoch": 1, "step": i, "loss": 5.0 - 0.2 * i} for i in range(20)]
    assert "collapsed" in analysis.detect_collapse(flat + same)
    assert analysis.detect_collapse(flat + apart) is None
    assert analysis.detect_collapse(falling + same) is None
    assert analysis.detect_collapse(flat) is None  # no epoch yet: too young to tell
    # everything mapped to one point: the loss fell, then stopped; every pair is as similar as any other
    plateau = falling + [{"kind": "step", "epoch": 2, "step": i, "loss": 0.125} for i in range(40)]
    assert "collapsed" in analysis.detect_collapse(plateau + [{"kind": "epoch", "epoch": 2, "pos_sim": 0.97,
                                                                "neg_sim": 0.97}])
    narrow = [{"kind": "epoch", "epoch": 2, "pos_sim": 0.92, "neg_sim": 0.85}]  # a narrow cone, still apart
    assert analysis.detect_collapse(plateau + narrow) is None
    assert analysis.loss_terms([{"kind": "step", "loss": 1, "b": 2, "a": 3, "lr": 0.1}]) == ["loss", "a", "b"]


def test_format_eta():
    assert [analysis.format_eta(s) for s in (None, 42, 185, 3720)] == ["?", "42s", "3m05s", "1h02m"]


# ---------------------------------------------------------------- uploads

def _png(size=(20, 10), fmt="PNG", noise: bool = False) -> bytes:
    buf = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8) if noise else None
    (Image.fromarray(pixels) if noise else Image.new("RGB", size, (200, 10, 10))).save(buf, fmt)
    return buf.getvalue()


def test_read_upload_accepts_an_image():
    im = read_upload(_png(), "shirt.png")
    assert im.mode == "RGB" and im.size == (20, 10)


@pytest.mark.parametrize("data, kwargs, message", [
    (b"", {}, "empty"),
    (b"%PDF-1.4 not an image at all", {}, "not a readable image"),
    (_png((200, 100), noise=True)[:3000], {}, "not a readable image"),  # truncated
    (_png(), {"max_bytes": 50}, "the limit is"),
    (_png((400, 300)), {"max_pixels": 10_000}, "decompression bombs"),
    (_png(fmt="TIFF"), {}, "TIFF"),
])
def test_read_upload_refuses_with_a_clear_message(data, kwargs, message):
    with pytest.raises(UploadError, match=message):
        read_upload(data, "upload.bin", **kwargs)


# ---------------------------------------------------------------- live queries

def test_queries_locate_the_true_match(trained_run):
    from xmodal import load_run
    run = load_run(trained_run)
    item = run.catalogue.item_ids[5]
    res = queries.text_query(run, run.catalogue.captions[5], k=3, item_id=item)
    assert len(res.hits) == 3 and res.true_hit.item_id == item
    scores = (run.image_embeds @ run.embed_text(run.catalogue.captions[5])).numpy()
    assert res.rank <= 1 + int(np.sum(scores > scores[5]))  # identical titles may only help
    assert len(res.above) == min(res.rank - 1, 10)
    img = queries.image_query(run, run.catalogue.open_image(5), k=4, item_id=item)
    assert len(img.hits) == 4 and img.rank >= 1
    assert queries.text_query(run, "red shirt", k=2).rank is None


def test_a_dashboard_query_embeds_once_and_finds_what_search_finds(trained_run, monkeypatch):
    from xmodal import load_run
    run = load_run(trained_run)
    query, photo = run.catalogue.captions[3], run.catalogue.open_image(3)
    plain_text = [h.index for h in run.search_text(query, 5)]
    plain_image = [h.index for h in run.search_image(photo, 5)]
    calls = []
    for name in ("embed_text", "embed_image"):
        real = getattr(run, name)
        monkeypatch.setattr(run, name, lambda x, real=real, name=name: calls.append(name) or real(x))
    monkeypatch.setattr("xmodal.retrieval.run.embed_texts", lambda *a, **k: calls.append("embed_texts") or
                        __import__("xmodal.models.embed", fromlist=["x"]).embed_texts(*a, **k))
    assert [h.index for h in queries.text_query(run, query, k=5).hits] == plain_text
    assert [h.index for h in queries.image_query(run, photo, k=5).hits] == plain_image
    assert calls == ["embed_text", "embed_texts", "embed_image"]  # one text encoding, one image forward


def test_caption_and_item_level_coincide_when_no_titles_are_shared():
    assert analysis.titles_coincide(["Red Shirt", "Blue Shirt"])
    assert not analysis.titles_coincide(["Red Shirt", "red  shirt"])
    same = {"caption": {"text_to_image/R@1": 10.0, "rsum": 1}, "item": {"text_to_image/R@1": 10.0, "rsum": 1}}
    assert analysis.recall_table_coincides(same)
    assert not analysis.recall_table_coincides({**same, "item": {"text_to_image/R@1": 9.0}})
    rows = [{"kind": "epoch", "val/text_to_image/R@1": 5.0, "val_item/text_to_image/R@1": 5.0}]
    assert analysis.metrics_coincide(rows)
    assert not analysis.metrics_coincide([{**rows[0], "val_item/text_to_image/R@1": 4.0}])
    assert not analysis.metrics_coincide([])
