"""The logic behind the dashboard as plain functions: runs table, ranks, slices with intervals, disagreements,
selections, collapse, modality gap, uploads, jobs, background tasks, catalogue embeddings, maps (settings,
colours, filters, neighbours), catalogue grouping, run management and live queries."""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from xmodal.dashboard import analysis, catalogues, checks, plots, queries, runmeta, slices, state
from xmodal.dashboard.maps import colours, embeds, figure as mapplot, view as mapview, projection
from xmodal.dashboard.jobs import training as jobs, tasks
from xmodal.evaluation import metrics
from xmodal.dashboard.escape import md
from xmodal.dashboard.escape import plotly as plotly_text
from xmodal.dashboard.uploads import UploadError, read_upload
from xmodal.runs import list_runs, read_status


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


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


def test_slice_metrics_by_hand():
    ranks = {"text_to_image": np.array([1, 2, 10, 1]), "image_to_text": np.array([1, 1, 1, 30])}
    df = slices.slice_metrics(ranks, {"gender": ["Men", "Men", "Women", "Women"], "colour": ["", "", "", ""]},
                              min_n=1)
    assert set(df["attribute"]) == {"gender"}  # empty values are not a slice
    men = df[(df["value"] == "Men") & (df["direction"] == "text_to_image")].iloc[0]
    assert (men["n"], men["R@1"], men["R@5"], men["median_rank"]) == (2, 50.0, 100.0, 1.0)
    assert (men["R@1 lo"], men["R@1 hi"]) == tuple(round(x, 1) for x in metrics.wilson(1, 2))
    women = df[(df["value"] == "Women") & (df["direction"] == "image_to_text")].iloc[0]
    assert (women["R@1"], women["R@10"]) == (50.0, 50.0)
    assert df["small"].sum() == 0 and slices.slice_metrics(ranks, {"gender": ["Men"] * 4})["small"].all()


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


def test_small_slices_are_flagged_and_not_ranked():
    rng = np.random.default_rng(0)
    values = ["big"] * 40 + ["tiny"] * 3 + ["mid"] * 20
    ranks = {d: rng.integers(1, 30, len(values)) for d in analysis.DIRECTIONS}
    ranks["text_to_image"][43:] = 1  # "mid" is perfect
    ranks["text_to_image"][40:43] = 1  # "tiny" too, but on 3 queries
    df = slices.slice_metrics(ranks, {"type": values})
    t2i = df[df["direction"] == "text_to_image"]
    assert t2i["value"].tolist() == ["mid", "big", "tiny"]  # ranked by R@10, the small one last whatever its score
    assert t2i.set_index("value")["small"].to_dict() == {"mid": False, "big": False, "tiny": True}
    tiny = t2i.set_index("value").loc["tiny"]
    assert tiny["R@1"] == 100.0 and tiny["R@1 lo"] < 50  # perfect on 3 queries is a wide interval
    assert all(float(x) == round(float(x), 1) for x in df["R@10"])  # rounded
    lo, hi = slices.bootstrap_median(np.array([1, 1, 2, 3, 50]))
    assert 1 <= lo <= hi <= 50


def test_slice_attributes_offer_pattern_and_brand_and_skip_ids():
    n = 300
    attrs = {"brand": ["A", "B"] * (n // 2), "pattern": ["Solid", "Striped", "Dotted"] * (n // 3),
             "colour": ["Blue"] * n, "sku": [str(i) for i in range(n)], "zzz": ["x", "y", ""] * (n // 3),
             "gender": ["Men", "Women"] * (n // 2)}
    assert slices.slice_attributes(attrs) == ["pattern", "brand", "gender", "zzz"]  # known first; no constant, no ids


def test_saved_slices_round_trip_with_untrusted_names(tmp_path):
    bad = "<img src=x onerror=alert(1)>\n**name**"
    name = slices.save_slice(tmp_path, bad, ["a", "b", "a"])
    assert name == "<img src=x onerror=alert(1)> **name**"  # one line, kept as text (escaped where shown)
    assert slices.load_slices(tmp_path) == {name: ["a", "b"]}
    assert slices.save_slice(tmp_path, name, ["c"]) == name and slices.load_slices(tmp_path)[name] == ["c"]
    with pytest.raises(ValueError, match="name"):
        slices.save_slice(tmp_path, "  \t ", ["a"])
    with pytest.raises(ValueError, match="empty"):
        slices.save_slice(tmp_path, "x", [])
    assert slices.delete_slice(tmp_path, name) and not slices.delete_slice(tmp_path, name)
    (tmp_path / slices.SLICES_FILE).write_text('["not", "a", "dict"]')
    assert slices.load_slices(tmp_path) == {}
    (tmp_path / slices.SLICES_FILE).write_text('{"ok": ["1", 2, null, {"x": 1}], "bad": "no"}')
    assert slices.load_slices(tmp_path) == {"ok": ["1", "2"]}


def test_export_csv_keeps_text_as_text():
    import csv
    data = slices.export_csv(["1", "=HYPERLINK(1)"], ["Red, \"quoted\" shirt", "+cmd"], {"colour": ["-x", "Blue"]})
    rows = list(csv.reader(io.StringIO(data.decode("utf-8"))))
    assert rows == [["item_id", "title", "colour"], ["1", 'Red, "quoted" shirt', "'-x"],
                    ["'=HYPERLINK(1)", "'+cmd", "Blue"]]


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


def test_map_figure_markers_carry_item_positions():
    xy = np.arange(12, dtype=np.float32).reshape(6, 2)
    fig = mapplot.map_figure(xy, ["a", "b", "c"], colouring=colours.colouring(["x", "y", "x"]), lines=True)
    markers = [t for t in fig.data if t.mode == "markers"]
    assert all(t.type == "scatter" for t in fig.data)  # a small map: SVG, no WebGL context to start
    assert all(t.type == "scattergl" for t in mapplot.map_figure(xy, ["a", "b", "c"], gl=True).data)
    big = mapplot.SVG_MAX_ITEMS + 1
    assert {t.type for t in mapplot.map_figure(np.zeros((2 * big, 2)), ["t"] * big).data} == {"scattergl"}  # WebGL
    assert sorted(int(p) for t in markers for p in t.customdata) == [0, 0, 1, 1, 2, 2]  # photo and title each
    for t in markers:  # a clicked point grows above its neighbours, which fade, in the browser itself
        assert t.selected.marker.size > t.marker.size and t.unselected.marker.opacity < t.marker.opacity
    lines = [t for t in fig.data if t.mode == "lines"][0]
    assert np.isnan(np.asarray(lines.x, dtype=float)).sum() == 3  # three separate segments
    filtered = mapplot.map_figure(xy, ["a", "b", "c"], keep=np.array([True, False, True]), highlight=[1])
    names = [t.name for t in filtered.data]
    assert "filtered out (1)" in names and "located (1)" in names
    kept = [int(p) for t in filtered.data if t.name in ("photos", "titles") for p in t.customdata]
    assert sorted(kept) == [0, 0, 2, 2]
    by_rank = mapplot.map_figure(xy, ["a", "b", "c"], ranks=np.array([1, 5, 300]))
    assert by_rank.data[0].marker.colorbar.title.text == "rank of true match"
    assert list(by_rank.data[0].marker.color) == pytest.approx(np.log10([1, 5, 300]).tolist())


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


def test_modality_gap():
    rng = np.random.default_rng(0)
    emb = _unit(rng.normal(size=(50, 16)))
    gap = analysis.modality_gap(emb, emb)
    assert np.allclose(gap["paired"], 0) and gap["centroid_gap"] == pytest.approx(0)
    assert gap["random"].min() > 0
    shifted = analysis.modality_gap(emb, -emb)
    assert np.allclose(shifted["paired"], 2)


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


# ---------------------------------------------------------------- jobs

def test_train_command_and_unique_ids(tmp_path):
    job = jobs.TrainJob(model="siamese", data="demo", epochs=3, batch_size=64, lr=5e-4, finetune=True,
                        device="cpu", run_id="r1")
    cmd = job.command(tmp_path)
    assert cmd[1:3] == ["-m", "xmodal.train"]
    for flag, value in [("--model", "siamese"), ("--epochs", "3"), ("--batch-size", "64"), ("--device", "cpu"),
                        ("--out", str(tmp_path)), ("--run-id", "r1")]:
        assert cmd[cmd.index(flag) + 1] == value
    assert "--finetune" in cmd and float(cmd[cmd.index("--lr") + 1]) == 5e-4
    assert len({jobs.unique_run_id("siamese") for _ in range(50)}) == 50
    assert {j.model for j in jobs.demo_jobs()} == set(jobs.DEMO_EPOCHS)
    assert "cuda" not in jobs.device_options() or torch.cuda.is_available()


def test_device_options_skip_torch_without_gpu_signs(monkeypatch):
    monkeypatch.setattr(jobs, "gpu_may_exist", lambda: False)
    assert jobs.device_options() == ["auto", "cpu"]


def _wait(pred, timeout=120.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return False


@pytest.mark.slow
def test_a_failed_launch_reports_its_error(tmp_path):
    run_dir = jobs.start_training(jobs.TrainJob(model="siamese", data=str(tmp_path / "nowhere"), epochs=1), tmp_path)
    assert read_status(run_dir)["state"] == "running"  # visible at once
    assert _wait(lambda: (jobs.reap(), read_status(run_dir)["state"])[1] == "failed")
    status = read_status(run_dir)
    assert "captions.csv" in (status.get("error") or "") + jobs.failure_detail(run_dir)
    assert any(d == run_dir for d, _ in jobs.recent_runs(tmp_path))
    assert not jobs.stop_run(run_dir)


@pytest.mark.slow
def test_queue_trains_in_turn_and_stop_is_clean(tiny_catalogue, tmp_path):
    queue = jobs.start_queue([jobs.TrainJob(model="siamese", data=str(tiny_catalogue), epochs=1, batch_size=16),
                              jobs.TrainJob(model="siamese", data=str(tiny_catalogue), epochs=200, batch_size=8)],
                             tmp_path, name="t", prepare=True)
    first, second = (tmp_path / j["run_id"] for j in json.loads(queue.read_text())["jobs"])
    assert _wait(lambda: read_status(second).get("phase") == "training", 180)
    assert read_status(first)["state"] == "finished"  # one after the other
    assert jobs.active_queues(tmp_path)
    assert jobs.stop_run(second)
    assert _wait(lambda: jobs.read_queue(queue).get("state") == "finished", 60)
    assert read_status(second)["state"] == "stopped"
    assert [j["state"] for j in jobs.read_queue(queue)["jobs"]] == ["finished", "stopped"]
    assert projection.projection_path(first, "umap").is_file()  # prepared for the Embeddings page
    assert embeds.ready(first) and tasks.read(first, embeds.TASK)["state"] == "finished"  # and for Compare
    assert not projection.projection_path(second, "umap") or not projection.projection_path(second).is_file()


# ---------------------------------------------------------------- projection and queries

def test_projection_is_cached_per_run_and_weights(trained_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    path = projection.projection_path(run_dir, "pca")
    assert projection.compute(run_dir, "pca") == path and path.is_file()
    data = projection.load(path)
    n = len(json.loads((run_dir / "splits.json").read_text())["test"])
    assert data["xy"].shape == (2 * n, 2) and len(data["captions"]) == n and data["method"] == "pca"
    assert set(data["attributes"]) >= {"gender", "colour", "master_category", "pattern", "brand"}
    assert set(data["split"]) == {"test"} and len(data["rank_t2i"]) == n
    assert projection.projection_path(run_dir, "umap") != path
    wide = projection.MapSettings("pca", "all")
    whole = projection.load(projection.compute(run_dir, wide))
    splits = json.loads((run_dir / "splits.json").read_text())
    assert len(whole["captions"]) == 60 and {s: whole["split"].count(s) for s in ("train", "val", "test")} == {
        s: len(splits[s]) for s in ("train", "val", "test")}  # the whole catalogue, each item's split marked
    ranks = metrics.split_ranks(whole["image_embeds"], whole["text_embeds"], whole["captions"], "caption")
    assert whole["rank_t2i"].tolist() == ranks["text_to_image"].tolist()
    umap_a, umap_b = projection.MapSettings(n_neighbors=15), projection.MapSettings(n_neighbors=30)
    assert len({projection.projection_path(run_dir, s) for s in (umap_a, umap_b, wide, "pca")}) == 4  # keyed on all
    os.utime(run_dir / "best.safetensors", ns=(1, 1))  # new weights: a new key
    assert projection.projection_path(run_dir, "pca") != path


def test_project_falls_back_to_pca_on_few_points():
    xy, used = projection.project(np.random.default_rng(0).normal(size=(10, 5)), "umap")
    assert used == "pca" and xy.shape == (10, 2)
    assert projection.project(np.ones((1, 3)), "umap")[0].shape == (1, 2)


@pytest.mark.slow
def test_project_with_umap():
    xy, used = projection.project(np.random.default_rng(0).normal(size=(80, 8)), "umap")
    assert used == "umap" and xy.shape == (80, 2) and np.isfinite(xy).all()


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


def test_log_progress_reads_the_last_progress_bar(tmp_path):
    assert jobs.log_progress(tmp_path) is None
    (tmp_path / jobs.LOG_NAME).write_text(
        "[xmodal] siamese: backbone efficientnet\nimage features:   9%|▉         | 3/32 [00:23<03:54,  8.09s/batch]"
        "\rimage features:  19%|█▉        | 6/32 [00:47<03:25,  7.89s/batch]")
    assert jobs.log_progress(tmp_path) == ("image features", 6 / 32, "03:25")


# ---------------------------------------------------------------- start-up without PyTorch

# What Home, Training and the sidebar import; none may pull in PyTorch (4-8 s on a busy two-core machine).
TORCH_FREE = ["xmodal", "xmodal.runs", "xmodal.data", "xmodal.paths", *(f"xmodal.dashboard.{m}" for m in (
    "state", "analysis", "plots", "jobs.training", "sidebar", "ui", "queries", "uploads", "maps.projection",
    "jobs.queue", "escape", "checks", "catalogues", "maps.colours", "maps.embeds", "manage", "maps.figure",
    "maps.panels", "maps.view", "pickers", "runmeta", "slices", "jobs.tasks"))]


def _python_ok(code: str) -> None:
    """Run ``code`` in a fresh interpreter from the repo root; it must exit cleanly."""
    res = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]


@pytest.mark.slow
def test_home_modules_do_not_import_torch():
    code = (f"import sys, importlib\nfor m in {TORCH_FREE!r}: importlib.import_module(m)\n"
            "from xmodal.dashboard.jobs import training as jobs\n"
            "jobs.device_options() if not jobs.gpu_may_exist() else None\n"
            "heavy = sorted(m for m in ('torch', 'torchvision', 'timm', 'umap', 'xmodal.retrieval.run', "
            "'xmodal.models') "
            "if m in sys.modules)\n"
            "assert not heavy, heavy\n")
    _python_ok(code)


def test_torch_free_constants_match_the_library():
    import xmodal
    from xmodal.retrieval import run as search
    from xmodal.evaluation.metrics import KS
    assert jobs.MODELS == tuple(xmodal.list_models())  # the sidebar's model list, without the registry
    assert analysis.KS == KS
    assert xmodal.load_run is search.load_run and "Run" in dir(xmodal)  # the lazy names of xmodal/__init__
    with pytest.raises(AttributeError, match="no attribute"):
        xmodal.nothing_here


def test_runs_share_the_cached_catalogue(trained_run, tmp_path):
    config = json.loads((trained_run / "config.json").read_text())
    cat = state._gallery_catalogue(trained_run)
    assert cat is not None and cat.fingerprint == config["data"]["fingerprint"]
    assert cat is state.catalogue(config["data"]["path"])  # the cached copy, validated once
    assert state.run(trained_run).catalogue is cat
    other = tmp_path / "other-run"  # trained on an older version of the catalogue: load_run loads its own
    other.mkdir()
    (other / "config.json").write_text(json.dumps({**config, "data": {**config["data"], "fingerprint": "0" * 16}}))
    assert state._gallery_catalogue(other) is None
    (other / "config.json").write_text(json.dumps({**config, "data": {"name": "x", "path": str(tmp_path / "no")}}))
    assert state._gallery_catalogue(other) is None


@pytest.mark.slow
def test_warm_pytorch_imports_search_in_the_background():
    code = ("import sys\nfrom xmodal.dashboard import state\n"
            "assert not state.pytorch_loaded()\n"
            "state.warm_pytorch(); state.warm_pytorch()  # once per server\n"
            "assert len(state._warming) == 1\n"
            "state._warming[0].join(300)\n"
            "assert state.pytorch_loaded() and 'torch' in sys.modules\n")
    _python_ok(code)


# ---------------------------------------------------------------- catalogue text is text

HOSTILE = ['<script>window.__xss=1</script>', '<img src=x onerror="window.__xss=1">',
           '<iframe srcdoc="<script>parent.__xss=1</script>">', '![x](http://203.0.113.5/pixel.png)',
           '[click](javascript:window.__xss=1)', '<a href="http://203.0.113.5/">', '<svg onload=window.__xss=1>',
           'see www.example.com or a@b.co', '**bold** _it_ `code` # h1 > quote | a | :red[x] :smile: $x^2$ &amp;',
           'line one\n# heading\n\n- item\r\n    code', '\\*not bold\\*']
PUNCTUATION = set("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")


def _unescape(text: str) -> str:
    """What a CommonMark renderer shows for backslash-escaped text (and the invisible word joiner dropped)."""
    return re.sub(r"\\(.)", r"\1", text).replace("\u2060", "")


@pytest.mark.parametrize("text", HOSTILE)
def test_md_escapes_every_markdown_character(text):
    out = md(text)
    assert "\n" not in out and "\r" not in out  # one line: no headings, lists, quotes or code blocks
    assert _unescape(out) == " ".join(text.split())  # it shows exactly the text
    i = 0
    while i < len(out):  # every punctuation character is escaped, so none can open markup
        if out[i] == "\\":
            assert out[i + 1] in PUNCTUATION
            i += 2
            continue
        assert out[i] not in PUNCTUATION, (out, i)
        i += 1
    visible = out.replace("\\", "")  # what GitHub-flavoured Markdown scans for bare links after unescaping
    assert not re.search(r"(?i)[a-z]://|\bwww\.|[-.\w+]@[-\w]", visible), visible


def test_md_breaks_bare_links_and_keeps_plain_words():
    assert md("Roadster Men Navy Blue Striped Shirt") == "Roadster Men Navy Blue Striped Shirt"
    assert md("visit http://x.io or WWW.shop.in") == "visit http\u2060\\:\\/\\/x\\.io or WWW\u2060\\.shop\\.in"
    assert md(42) == "42" and md(Path("a b/c")) == "a b\\/c"


def test_plotly_text_escapes_the_html_plotly_reads():
    assert plotly_text('<a href="http://x/">a & b</a>') == '&lt;a href="http://x/"&gt;a &amp; b&lt;/a&gt;'
    assert plotly_text("&lt;b&gt;") == "&amp;lt;b&amp;gt;"  # an entity in the text shows as typed


def _figure_strings(fig) -> list[str]:
    """Every string Plotly would render as rich text: trace names, hover text, categories, titles."""
    out = [a.text for a in fig.layout.annotations or []]
    for t in fig.data:
        out.append(t.name or "")
        for attr in ("text", "x", "hovertext"):
            values = getattr(t, attr, None)
            if values is not None and not isinstance(values, (int, float)):
                out.extend(v for v in np.asarray(values, dtype=object).ravel() if isinstance(v, str))
    return out


def test_figures_escape_run_names_captions_and_attribute_values():
    bad = HOSTILE[1]
    step = {"kind": "step", "epoch": 1, "step": 1, "loss": 1.0, bad: 0.5}
    epoch = {"kind": "epoch", "epoch": 1, "pos_sim": 0.5, "neg_sim": 0.1, "val/text_to_image/R@1": 10.0}
    metrics = {bad: [step, epoch]}
    table = pd.DataFrame([{"run": bad, **{c: 1.0 for c in (f"{analysis.SHORT[d]} {m}" for d in analysis.DIRECTIONS
                                                           for m in ("R@1", "R@5", "R@10", "median rank"))}}])
    slice_rows = pd.DataFrame([{"attribute": "colour", "value": bad, "n": 3, "small": True, "direction": d, "R@1": 1.0,
                                "R@1 lo": 0.0, "R@1 hi": 5.0, "R@5": 2.0, "R@10": 3.0, "median_rank": 4.0, "run": bad}
                               for d in analysis.DIRECTIONS])
    xy = np.zeros((4, 2), dtype=np.float32)
    figures = [plots.loss_figure(metrics), plots.validation_figure(metrics), plots.similarity_figure(metrics),
               plots.metric_bars(table), plots.slice_figure(slice_rows),
               mapplot.map_figure(xy, [bad, bad], colouring=colours.colouring([bad, "x"]), highlight=[0], gl=False)]
    for fig in figures:
        strings = _figure_strings(fig)
        assert any("&lt;img" in s for s in strings), strings
        assert not any("<" in s for s in strings), strings


# ---------------------------------------------------------------- bad catalogue folders, run locks

def test_folder_problem_says_what_is_wrong(tmp_path, tiny_catalogue):
    assert checks.folder_problem("demo") is None and checks.folder_problem(str(tiny_catalogue)) is None
    assert "does not exist" in checks.folder_problem(str(tmp_path / "nowhere"))
    (tmp_path / "a-file").write_text("x")
    assert "is a file, not a folder" in checks.folder_problem(str(tmp_path / "a-file"))
    (tmp_path / "empty").mkdir()
    assert "no captions.csv" in checks.folder_problem(str(tmp_path / "empty"))


def test_load_problem_is_one_line_with_what_to_do():
    line = checks.load_problem("/data/cat", ValueError("captions.csv lacks column(s) ['caption']\n  found x"))
    assert "\n" not in line and line.startswith("The catalogue /data/cat cannot be used: captions.csv lacks")
    assert line.endswith(checks.WHAT_TO_DO)
    assert checks.load_problem("x", OSError()) == f"The catalogue x cannot be used: OSError. {checks.WHAT_TO_DO}"


def test_lock_holder_names_the_live_holder(tmp_path, monkeypatch):
    import xmodal.runs
    monkeypatch.delattr(xmodal.runs, "read_lock", raising=False)
    assert analysis.lock_holder(tmp_path) == ""  # a version of xmodal.runs without locks
    started = time.time() - 65
    locks = {"held": {"pid": 4242, "host": "box", "started": started, "command": "python -m xmodal.train"},
             "no-time": {"pid": 7, "host": "box", "started": None}}
    def read_lock(run_dir):
        if run_dir.name == "broken":
            raise ValueError("not JSON")
        return locks.get(run_dir.name)
    monkeypatch.setattr(xmodal.runs, "read_lock", read_lock, raising=False)
    since = time.strftime("%H:%M:%S", time.localtime(started))
    assert analysis.lock_holder(tmp_path / "held", now=started + 65) == f"4242@box since {since} (1m05s ago)"
    assert analysis.lock_holder(tmp_path / "no-time") == "7@box"
    assert analysis.lock_holder(tmp_path / "free") == "" and analysis.lock_holder(tmp_path / "broken") == ""


def test_lock_holder_reads_a_live_run_lock(tmp_path):
    import socket

    import xmodal.runs
    if not hasattr(xmodal.runs, "RunLock"):
        pytest.skip("this xmodal.runs has no run-folder locks")
    assert analysis.lock_holder(tmp_path) == ""  # never locked
    with xmodal.runs.RunLock.acquire(tmp_path, "python -m xmodal.train"):
        held = analysis.lock_holder(tmp_path)
    assert held.startswith(f"{os.getpid()}@{socket.gethostname()} since ") and held.endswith(" ago)"), held
    assert analysis.lock_holder(tmp_path) == ""  # released


# ---------------------------------------------------------------- map colours, filters, neighbours

def test_colour_names_are_drawn_in_their_own_colour():
    c = colours.colouring(["Blue", "White", "Navy Blue", "Off-White", "Dark Teal", "Unobtainium"] * 2, "colour")
    assert c.colours["Blue"] == colours.FASHION["blue"] and c.colours["Navy Blue"] == colours.FASHION["navy blue"]
    assert c.colours["Off-White"] == colours.FASHION["off white"] and c.colours["Dark Teal"] == colours.FASHION["teal"]
    assert c.colours["Unobtainium"] in colours.PALETTE  # an unknown name: a palette colour
    assert c.outlined == {"White", "Off-White"}  # light colours get an outline on the white plot
    r, g, b = (int(c.colours["Blue"][i:i + 2], 16) for i in (1, 3, 5))
    assert b > r and b > g
    same = colours.colouring(["Blue", "White"], "gender")  # not a colour column: palette colours
    assert same.colours["Blue"] in colours.PALETTE


def test_attribute_palette_never_repeats_and_groups_the_rest():
    values = [f"v{i:02d}" for i in range(40) for _ in range(40 - i)]  # 40 values, v00 most frequent
    c = colours.colouring(values, "brand", top_n=24)
    own = {k: v for k, v in c.colours.items() if k != colours.OTHER}
    assert len(own) == 24 and len(set(own.values())) == 24  # distinct colours
    assert set(own) == {f"v{i:02d}" for i in range(24)}  # the most frequent values
    assert c.colours[colours.OTHER] == colours.OTHER_COLOUR and c.labels.count(colours.OTHER) == sum(
        40 - i for i in range(24, 40))
    assert colours.colouring(["", "a"]).labels == ["(none)", "a"]


def _map_data():
    rng = np.random.default_rng(0)
    img, txt = _unit(rng.normal(size=(6, 4))), _unit(rng.normal(size=(6, 4)))
    return {"captions": list("abcdef"), "item_ids": [f"id{i}" for i in range(6)],
            "split": ["train", "test", "test", "val", "test", ""], "image_embeds": img, "text_embeds": txt,
            "attributes": {"colour": ["Blue", "Red", "Blue", "", "Red", "Blue"]},
            "rank_t2i": np.array([1, 3, 7, 12, 120, 1]), "rank_i2t": np.array([2, 1, 1, 1, 1, 60])}


def test_map_filters_and_counts():
    data = _map_data()
    assert mapview.facet_counts(data["attributes"]["colour"]) == {"Blue": 3, "Red": 2, "(none)": 1}
    assert mapview.rank_bin_counts(data["rank_t2i"]) == {"1": 2, "2-5": 1, "6-10": 1, "11-50": 1, "51-100": 0,
                                                         "over 100": 1}
    flt = mapview.MapFilter(facets={"colour": ["Blue", "(none)"]})
    assert flt.mask(data).tolist() == [True, False, True, True, False, True] and flt.active()
    flt = mapview.MapFilter(splits=["test"], rank_range=("2-5", "6-10"))
    assert flt.mask(data).tolist() == [False, True, True, False, False, False]
    flt = mapview.MapFilter(direction="image_to_text", rank_range=("over 100", "51-100"))
    assert flt.mask(data).tolist() == [False, False, False, False, False, True]
    assert not mapview.MapFilter().active() and mapview.MapFilter().mask(data).all()
    assert mapview.positions_of(data["item_ids"], ["id4", "nope", "id1", "id4"]) == [4, 1]


def test_neighbours_match_brute_force_and_mark_the_true_pair():
    data = _map_data()
    img, txt = data["image_embeds"], data["text_embeds"]
    nb = mapview.neighbours(img, txt, 2, k=3)
    assert [p for p, _ in nb.photos] == np.argsort(-(img @ txt[2]))[:3].tolist()
    assert [p for p, _ in nb.titles] == np.argsort(-(txt @ img[2]))[:3].tolist()
    assert nb.photo_rank == 1 + int(np.sum(img @ txt[2] > img[2] @ txt[2]))
    same = mapview.neighbours(img, img, 4, k=6)  # a perfect joint space: its own pair first
    assert same.photos[0][0] == 4 and same.photo_rank == 1 and same.title_rank == 1


def test_the_click_panel_ranks_as_the_map_colours():
    """The panel showed item-level ranks beside a caption-level map (Myntra item 2363: 1 on the map, 98 in the
    panel): both now come from the core under the map's ground truth."""
    rng = np.random.default_rng(3)
    n = 40
    captions = [f"Brand Men Shirt {j % 25}" for j in range(n)]  # 15 titles shared
    img = rng.normal(size=(n, 8)).astype(np.float32)
    txt = (img + 0.9 * rng.normal(size=(n, 8))).astype(np.float32)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    ranks = metrics.split_ranks(img, txt, captions, "caption")  # what projection.compute stores for the map
    for item in range(n):
        nb = mapview.neighbours(img, txt, item, 3, captions)
        assert (nb.photo_rank, nb.title_rank) == (ranks["text_to_image"][item], ranks["image_to_text"][item])


# ---------------------------------------------------------------- catalogues, health, run management

def _info(path: Path, fp: str = "f" * 16, name: str = "demo", state_: str = "finished", test: dict | None = None,
          created: float = 0.0):
    from xmodal.runs import RunInfo
    config = {"model": "siamese", "created": created, "data": {"name": name, "path": f"/data/{name}",
                                                               "fingerprint": fp, "items": 2000}}
    return RunInfo(path, config, {"state": state_}, test, None)


def test_runs_are_grouped_by_catalogue(tmp_path):
    runs = [_info(tmp_path / "a", "1" * 16), _info(tmp_path / "b", "2" * 16, name="/x/myntra"),
            _info(tmp_path / "c", "1" * 16), _info(tmp_path / "d", "3" * 16)]  # demo regenerated: another print
    groups = catalogues.group_runs(runs)
    assert list(groups) == ["demo-1111111111", "myntra-2222222222", "demo-3333333333"]
    assert [r.path.name for r in groups["demo-1111111111"]] == ["a", "c"]
    assert catalogues.describe(groups["demo-1111111111"]) == "demo · 2,000 products · 2 runs · fingerprint 1111111111"
    assert catalogues.catalogue_id({}).key == "?-unknown"


def test_health_flags_failed_training_collapsed_and_chance_runs(tmp_path):
    good = {"item": {"text_to_image/R@10": 40.0, "image_to_text/R@10": 35.0}, "gallery_size": 200,
            "caption": {"rsum": 200.0}}
    chance = {"item": {"text_to_image/R@10": 6.0, "image_to_text/R@10": 9.0}, "gallery_size": 200,
              "caption": {"rsum": 20.0}}
    flat = [{"kind": "step", "epoch": 1, "step": i, "loss": 5.0} for i in range(20)]
    assert catalogues.health(_info(tmp_path, test=good)) is None
    assert catalogues.health(_info(tmp_path, state_="failed", test=good)) == "failed"
    assert catalogues.health(_info(tmp_path, state_="running")) == "training"
    assert catalogues.health(_info(tmp_path)) == "no test metrics yet"
    assert "near chance" in catalogues.health(_info(tmp_path, test=chance))
    collapsed = flat + [{"kind": "epoch", "epoch": 1, "pos_sim": 0.9, "neg_sim": 0.9}]
    assert catalogues.health(_info(tmp_path, test=good), collapsed).startswith("collapsed: flat loss")
    apart = flat + [{"kind": "epoch", "epoch": 1, "pos_sim": 0.6, "neg_sim": 0.1}]
    runs = [_info(tmp_path / "x", test=chance), _info(tmp_path / "y", test=good),
            _info(tmp_path / "z", test={**good, "caption": {"rsum": 300.0}})]
    picked = catalogues.default_runs(runs, lambda r: apart)
    assert [r.path.name for r in picked] == ["z", "y"]  # healthy only, best rsum first
    assert catalogues.default_runs(runs, lambda r: collapsed) == []


def test_pending_runs_show_their_model_and_phase(tmp_path):
    young = tmp_path / "siamese-young"
    young.mkdir()
    jobs.write_launch(young, jobs.TrainJob(model="siamese", data="demo"))
    (young / "status.json").write_text(json.dumps({"state": "running", "phase": "extracting image features",
                                                   "pid": os.getpid(), "host": __import__("socket").gethostname()}))
    done = tmp_path / "done"
    done.mkdir()
    (done / "status.json").write_text(json.dumps({"state": "finished"}))
    (done / "config.json").write_text("{}")
    (pending,) = catalogues.pending_runs(tmp_path)
    assert (pending.run_id, pending.model, pending.data) == ("siamese-young", "siamese", "demo")
    assert pending.status["phase"] == "extracting image features"
    before = catalogues.runs_signature(tmp_path)
    (young / "config.json").write_text("{}")
    assert catalogues.runs_signature(tmp_path) != before  # the sidebar's poll reruns the page


def test_notes_and_tags_are_stored_atomically_and_bounded(tmp_path):
    assert runmeta.read_meta(tmp_path) == {"notes": "", "tags": [], "hidden": False}
    meta = runmeta.write_meta(tmp_path, notes="lr 1e-3\nbaseline <b>", tags=" best , <script>, best,, x\x00y ")
    assert meta == {"notes": "lr 1e-3\nbaseline <b>", "tags": ["best", "<script>", "xy"], "hidden": False}
    assert runmeta.write_meta(tmp_path, hidden=True)["tags"] == ["best", "<script>", "xy"]
    assert runmeta.read_meta(tmp_path)["hidden"] and not list(tmp_path.glob(".*.tmp"))
    with pytest.raises(ValueError, match="characters"):
        runmeta.write_meta(tmp_path, notes="x" * (runmeta.MAX_NOTES + 1))
    assert len(runmeta.clean_tags([f"t{i}" for i in range(50)])) == runmeta.MAX_TAGS
    (tmp_path / runmeta.META_FILE).write_text('{"notes": 5, "tags": "x", "hidden": "yes"}')
    assert runmeta.read_meta(tmp_path) == {"notes": "", "tags": [], "hidden": False}


def test_config_diff_lists_what_differs():
    a = {"run_id": "a", "created": 1, "model": "siamese", "train": {"lr": 0.001, "epochs": 8, "out": "x"},
         "data": {"fingerprint": "1", "report": {"rows": 3}}}
    b = {"run_id": "b", "created": 2, "model": "corrnet", "train": {"lr": 0.001, "epochs": 12, "out": "y",
                                                                    "finetune": True}, "data": {"fingerprint": "1"}}
    assert runmeta.config_diff(a, b) == [{"setting": "model", "a": "siamese", "b": "corrnet"},
                                         {"setting": "train.epochs", "a": "8", "b": "12"},
                                         {"setting": "train.finetune", "a": "—", "b": "True"}]
    assert runmeta.config_diff(a, a) == []


def test_delete_refuses_a_locked_running_or_foreign_folder(tmp_path):
    from xmodal.runs import RunLock
    root = tmp_path / "ckpt"
    run = root / "r1"
    run.mkdir(parents=True)
    (run / "config.json").write_text("{}")
    with RunLock.acquire(run, "python -m xmodal.train"):
        assert "holds its lock" in runmeta.delete_problem(run, root)
        with pytest.raises(ValueError, match="not deleted"):
            runmeta.delete_run(run, root)
    assert run.is_dir()
    (run / "status.json").write_text(json.dumps({"state": "running", "pid": os.getpid(),
                                                 "host": __import__("socket").gethostname()}))
    assert "running" in runmeta.delete_problem(run, root)
    (run / "status.json").write_text(json.dumps({"state": "stopped"}))
    assert "not a folder of the checkpoints" in runmeta.delete_problem(run, tmp_path)
    (root / "not-a-run").mkdir()
    assert "not a run folder" in runmeta.delete_problem(root / "not-a-run", root)
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "config.json").write_text("{}")
    (root / "link").symlink_to(target, target_is_directory=True)
    runmeta.delete_run(root / "link", root)
    assert target.is_dir() and not (root / "link").exists()  # a link: only the link goes
    runmeta.delete_run(run, root)
    assert not run.exists()


def test_resume_launches_the_trainer_for_a_stopped_run(tmp_path, monkeypatch):
    run = tmp_path / "r"
    run.mkdir()
    assert "only a stopped or failed" in jobs.can_resume(run, {"state": "finished"})
    assert "no config.json" in jobs.can_resume(run, {"state": "stopped"})
    (run / "config.json").write_text("{}")
    (run / "status.json").write_text(json.dumps({"state": "stopped"}))
    launched = []

    class Proc:
        pid = 12345
    monkeypatch.setattr(jobs, "spawn", lambda cmd, log: launched.append((cmd, log)) or Proc())
    jobs.resume_training(run)
    ((cmd, log),) = launched
    assert cmd[1:] == ["-m", "xmodal.train", "--resume", str(run.resolve())] and log.name == jobs.LOG_NAME
    assert json.loads((run / "status.json").read_text())["phase"] == "resuming"
    with pytest.raises(ValueError, match="cannot be resumed"):
        jobs.resume_training(tmp_path / "nowhere")


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


# ---------------------------------------------------------------- background tasks and catalogue embeddings

def test_task_progress_and_a_dead_child(tmp_path):
    progress = tasks.Progress(tmp_path, "job", every_s=0)
    progress.phase("embedding", total=100)
    progress.advance(25)
    rec = tasks.read(tmp_path, "job")
    assert rec["state"] == "running" and rec["done"] == 25 and rec["eta_s"] is not None
    line, frac = tasks.describe(rec)
    assert line.startswith("embedding: 25/100, ") and line.endswith(" left") and frac == 0.25
    progress.finish()
    assert tasks.describe(tasks.read(tmp_path, "job")) == ("done", 1.0)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    tasks.mark_queued(tmp_path, "other", dead.pid)
    assert tasks.read(tmp_path, "other")["state"] == "failed" and not tasks.active(tmp_path, "other")
    progress = tasks.Progress(tmp_path, "bar")
    progress.phase("reading the image features")
    tasks.task_file(tmp_path, "bar").with_suffix(".log").write_text(
        "image features:  50%|#####     | 16/32 [00:10<00:10,  1.6batch/s]")
    line, frac = tasks.describe(tasks.read(tmp_path, "bar"))  # the phase's own progress bar, from the log
    assert frac == 0.5 and "00:10 left" in line


def test_task_start_runs_once_per_folder(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    proc = tasks.start([a, b], "sleep", ["-c", "import time; time.sleep(30)"])
    try:
        assert proc is not None and tasks.read(a, "sleep")["state"] == tasks.read(b, "sleep")["state"] == "queued"
        assert tasks.start([a, b], "sleep", ["-c", "pass"]) is None  # already under way: nothing new
    finally:
        proc.kill()
        proc.wait()
    assert tasks.read(a, "sleep")["state"] == "failed"  # the child died without finishing


def test_catalogue_embeddings_file(trained_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    for p in run_dir.glob("embeds_*.npz"):
        p.unlink()
    assert not embeds.ready(run_dir)
    path = embeds.compute(run_dir)
    assert embeds.ready(run_dir) and path == embeds.embeds_path(run_dir)
    data = embeds.load(path)
    splits = json.loads((run_dir / "splits.json").read_text())
    assert data["image"].shape[0] == data["text"].shape[0] == len(data["item_ids"]) == 60
    assert {s: data["split"].count(s) for s in ("train", "val", "test")} == {s: len(splits[s]) for s in splits}
    assert set(data["attributes"]) >= {"pattern", "brand", "colour"}
    from xmodal import load_run
    run = load_run(run_dir)
    np.testing.assert_allclose(data["image"], run.image_embeds.numpy(), atol=1e-6)
    assert data["images"] == [str(run.catalogue.image_path(i)) for i in range(60)]
    with np.load(path) as raw:  # photo paths relative to the catalogue folder, which is named once
        assert not any(Path(p).is_absolute() for p in raw["images"].tolist()) and "root" in raw.files
    path.write_bytes(path.read_bytes()[:100])  # damaged: removed, so the page starts the job again
    with pytest.raises(FileNotFoundError, match="computed again"):
        embeds.load(path)
    assert not embeds.ready(run_dir)
    os.utime(run_dir / "best.safetensors", ns=(1, 1))
    assert embeds.embeds_path(run_dir) != path  # new weights: a new key


def test_catalogue_embeddings_follow_a_moved_catalogue(trained_run, tiny_catalogue, tmp_path):
    """Photos stay found when the catalogue folder moves: the run's config names the new place."""
    cat = tmp_path / "cat"
    shutil.copytree(tiny_catalogue, cat)
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    for p in run_dir.glob("embeds_*.npz"):
        p.unlink()
    config = json.loads((run_dir / "config.json").read_text())
    config["data"]["path"] = str(cat)
    (run_dir / "config.json").write_text(json.dumps(config))
    os.utime(run_dir / "best.safetensors")  # a fresh key: embedded from the copy
    from xmodal import load_run
    path = embeds.compute(run_dir, run=load_run(run_dir, data=str(cat)))
    moved = tmp_path / "moved"
    cat.rename(moved)
    config["data"]["path"] = str(moved)
    (run_dir / "config.json").write_text(json.dumps(config))
    data = embeds.load(path)
    assert all(Path(p).is_file() and Path(p).is_relative_to(moved) for p in data["images"])


def test_embeds_main_reports_through_its_task_file(trained_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    assert embeds.main([str(run_dir)]) == 0
    assert tasks.read(run_dir, embeds.TASK)["state"] == "finished" and embeds.ready(run_dir)
    assert embeds.main([str(tmp_path / "nothing")]) == 1
    assert "best.safetensors" in tasks.read(tmp_path / "nothing", embeds.TASK)["error"]


def test_fine_tuned_runs_are_embedded_in_counted_chunks(monkeypatch, tmp_path):
    from types import SimpleNamespace

    import xmodal.models.embed as pipeline
    calls = []
    monkeypatch.setattr(pipeline, "embed_catalogue_images",
                        lambda model, cat, idx, device: calls.append(len(idx)) or torch.ones(len(idx), 4))
    run = SimpleNamespace(model=SimpleNamespace(image_input="pixels"), catalogue=[0] * 1100, device="cpu")
    progress = tasks.Progress(tmp_path, "embed", every_s=0)
    out = embeds._image_embeds(run, progress)
    assert out.shape == (1100, 4) and calls == [512, 512, 76]
    rec = tasks.read(tmp_path, "embed")
    assert (rec["done"], rec["total"]) == (1100, 1100) and rec["phase"].startswith("embedding the photos")


def test_map_settings_are_checked():
    assert projection.MapSettings().key() == "umap|test|15|0.100"
    assert projection.MapSettings("pca", "all", 99, 0.5).key() == "pca|all"  # UMAP's knobs do not change PCA
    for bad in ({"method": "tsne"}, {"scope": "train"}, {"n_neighbors": 1}, {"min_dist": 1.5}):
        with pytest.raises(ValueError):
            projection.MapSettings(**bad)
    assert projection.task_name("pca") == projection.task_name(projection.MapSettings("pca"))


def test_bench_map_measures_a_synthetic_map():
    from xmodal.dashboard.maps import bench_map
    out = bench_map.measure(4000, browser=False)
    assert out["points"] == 4000 and out["traces"] >= 2 * 16  # photos and titles of each of 16 colours
    assert out["build_s"] > 0 and out["json_mb"] > 0 and "first_draw_s" not in out
    data = bench_map.synthetic(10)
    assert data["xy"].shape == (10, 2) and len(data["captions"]) == 5


def test_slices_belong_to_the_catalogue_not_the_run(tmp_path):
    from xmodal.runs import list_runs
    runs = tmp_path / "runs"
    a, b, other = runs / "run-a", runs / "run-b", runs / "run-c"
    shared = slices.slices_folder(a, "1a2B3c")
    assert shared == slices.slices_folder(b, "1a2B3c") != slices.slices_folder(other, "ffff")
    assert slices.slices_folder(a, "../../etc/<x>") == runs / slices.SHARED_DIR / "ec"  # only hex survives
    assert slices.slices_folder(a, "") == a  # no fingerprint: the run keeps its own
    slices.save_slice(shared, "blue tops", ["i1", "i2"])  # saved from run a's map...
    assert slices.load_slices(slices.slices_folder(b, "1a2B3c")) == {"blue tops": ["i1", "i2"]}  # ...seen from b
    assert slices.load_slices(slices.slices_folder(other, "ffff")) == {}
    assert list_runs(runs) == []  # the shared folder is not taken for a run


def test_find_in_titles():
    from xmodal.dashboard.maps import view as mapview
    titles = ["Roadster Men Navy Blue Shirt", "Nivora Women Red T-Shirt", "Kaveri Men Sweatshirt", "<b>Navy</b> Kurta"]
    assert mapview.find_in_titles(titles, "shirt") == [0, 1]
    assert mapview.find_in_titles(titles, "NAVY") == [0, 3]
    assert mapview.find_in_titles(titles, "navy shirt men") == [0]
    assert mapview.find_in_titles(titles, "  ,, ") == [0, 1, 2, 3]
    assert mapview.find_in_titles(titles, "dress") == []


@pytest.mark.parametrize("fork", ["1", "0"])
def test_warm_children_run_a_module_like_python_dash_m(tmp_path, monkeypatch, fork):
    """A job forked from the queue's process (or, with XMODAL_FORK=0, a subprocess) runs ``python -m MODULE
    ARGS``: its own pid, its output in its log, its exit code; SIGTERM reaches the job, not the queue."""
    import signal
    from xmodal.dashboard.jobs import warm
    monkeypatch.setenv(warm.ENV, fork)
    pkg = tmp_path / "warmjob"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "job.py").write_text(
        "import signal, sys, time\n"
        "print('args', sys.argv[1:], flush=True)\n"
        "if sys.argv[1] == 'sleep':\n"
        "    signal.signal(signal.SIGTERM, lambda *a: sys.exit(7))\n"
        "    print('ready', flush=True)\n"
        "    time.sleep(60)\n"
        "sys.exit(int(sys.argv[1]))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    log = tmp_path / "job.log"
    proc = warm.start([sys.executable, "-m", "warmjob.job", "3"], log)
    assert proc.pid != os.getpid() and proc.wait() == 3
    assert "args ['3']" in log.read_text()
    proc = warm.start([sys.executable, "-m", "warmjob.job", "sleep"], log)
    assert _wait(lambda: "ready" in log.read_text(), 30)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait() == 7  # the job's own handler ran; this (the queue's) process is untouched
    assert isinstance(proc, warm.Forked) == (fork == "1" and sys.platform.startswith("linux"))


def test_warmup_leaves_umaps_kernels_in_numbas_disk_cache():
    """``python -m xmodal.warmup`` (the set-up command runs it): UMAP's kernels compiled into numba's on-disk
    cache, where the next process loads them instead of compiling."""
    from pathlib import Path as _Path

    from xmodal import warmup
    assert warmup.main([]) == 0
    import umap.umap_ as umap_module
    kernel = umap_module.smooth_knn_dist
    assert type(kernel._cache).__name__ == "FunctionCache"  # caching on (numba's own default: off)
    cached = list(_Path(kernel._cache._cache_path).glob("umap_.smooth_knn_dist-*.nbi"))
    assert cached, kernel._cache._cache_path
