"""The logic behind the dashboard as plain functions: runs table, ranks, slices, disagreements, selections,
collapse, modality gap, uploads, jobs, projections and live queries."""
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

from xmodal.dashboard import analysis, checks, jobs, plots, projection, queries, state
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
                                                     "finetune": True}}) == "mobilenet: random init, fine-tuned"
    test = json.loads((trained_run / "test.json").read_text())["caption"]
    assert row["test t2i R@1"] == pytest.approx(test["text_to_image/R@1"])
    assert row["test i2t R@10"] == pytest.approx(test["image_to_text/R@10"])
    metrics = analysis.test_metrics_table(info, "item")
    assert metrics.iloc[0]["t2i median rank"] == json.loads((trained_run / "test.json").read_text())["item"][
        "text_to_image/median_rank"]


def test_query_ranks_match_brute_force():
    rng = np.random.default_rng(0)
    img, txt = _unit(rng.normal(size=(30, 8))), _unit(rng.normal(size=(30, 8)))
    ranks = analysis.query_ranks(img, txt)
    sim = txt @ img.T
    for q in range(30):
        assert ranks["text_to_image"][q] == 1 + np.sum(sim[q] >= sim[q, q]) - 1
        assert ranks["image_to_text"][q] == 1 + np.sum(sim[:, q] >= sim[q, q]) - 1


def test_query_ranks_caption_groups_count_as_correct():
    img = np.eye(3, dtype=np.float32)
    txt = np.array([[.2, 1, 0], [1, .2, 0], [0, 0, 1]], dtype=np.float32)  # captions 0 and 1 nearly swapped
    assert analysis.query_ranks(img, txt)["text_to_image"].tolist() == [2, 2, 1]
    groups = analysis.ground_truth_groups(["Red Shirt", "red  shirt", "Blue Cap"], "caption")
    assert analysis.query_ranks(img, txt, groups)["text_to_image"].tolist() == [1, 1, 1]
    assert analysis.ground_truth_groups(["a", "a"], "item") is None


def test_split_positions_keeps_catalogue_order_and_drops_unknown_ids():
    assert analysis.split_positions(["a", "b", "c", "d"], ["d", "b", "zz"]).tolist() == [1, 3]


def test_slice_metrics_by_hand():
    ranks = {"text_to_image": np.array([1, 2, 10, 1]), "image_to_text": np.array([1, 1, 1, 30])}
    df = analysis.slice_metrics(ranks, {"gender": ["Men", "Men", "Women", "Women"], "colour": ["", "", "", ""]})
    assert set(df["attribute"]) == {"gender"}  # empty values are not a slice
    men = df[(df["value"] == "Men") & (df["direction"] == "text_to_image")].iloc[0]
    assert (men["n"], men["R@1"], men["R@5"], men["median_rank"]) == (2, 50.0, 100.0, 1.0)
    women = df[(df["value"] == "Women") & (df["direction"] == "image_to_text")].iloc[0]
    assert (women["R@1"], women["R@10"]) == (50.0, 50.0)
    assert analysis.slice_metrics(ranks, {"gender": ["Men", "Men", "Women", "Women"]}, min_count=3).empty


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


def test_projection_figure_markers_carry_item_positions():
    xy = np.arange(12, dtype=np.float32).reshape(6, 2)
    fig = plots.projection_figure(xy, ["a", "b", "c"], groups=["x", "y", "x"])
    custom = [p for t in fig.data if t.mode == "markers" for p in t.customdata]
    assert sorted(custom) == [0, 0, 1, 1, 2, 2]  # each item once as a photo, once as a title
    lines = [t for t in fig.data if t.mode == "lines"][0]
    assert np.isnan(np.asarray(lines.x, dtype=float)).sum() == 3  # three separate segments


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


def test_rank_of_match_counts_ties_against_the_model():
    scores = np.array([0.9, 0.5, 0.7, 0.5, 0.1])
    assert analysis.rank_of_match(scores, 1) == (4, [0, 2, 3])
    assert analysis.rank_of_match(scores, 0) == (1, [])
    assert analysis.rank_of_match(scores, 1, same=[0]) == (1, [])  # an identical caption ranked first
    assert analysis.rank_of_match(scores, 4, show=2) == (5, [0, 2])


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
        time.sleep(0.5)
    return False


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
    assert set(data["attributes"]) >= {"gender", "colour", "master_category"}
    assert projection.projection_path(run_dir, "umap") != path
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


def test_log_progress_reads_the_last_progress_bar(tmp_path):
    assert jobs.log_progress(tmp_path) is None
    (tmp_path / jobs.LOG_NAME).write_text(
        "[xmodal] siamese: backbone efficientnet\nimage features:   9%|▉         | 3/32 [00:23<03:54,  8.09s/batch]"
        "\rimage features:  19%|█▉        | 6/32 [00:47<03:25,  7.89s/batch]")
    assert jobs.log_progress(tmp_path) == ("image features", 6 / 32, "03:25")


# ---------------------------------------------------------------- start-up without PyTorch

# What Home, Training and the sidebar import; none may pull in PyTorch (4-8 s on a busy two-core machine).
TORCH_FREE = ["xmodal", "xmodal.runs", "xmodal.data", "xmodal.paths", *(f"xmodal.dashboard.{m}" for m in (
    "state", "analysis", "plots", "jobs", "sidebar", "ui", "queries", "uploads", "projection", "queue", "escape",
    "checks"))]


def _python_ok(code: str) -> None:
    """Run ``code`` in a fresh interpreter from the repo root; it must exit cleanly."""
    res = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]


def test_home_modules_do_not_import_torch():
    code = (f"import sys, importlib\nfor m in {TORCH_FREE!r}: importlib.import_module(m)\n"
            "from xmodal.dashboard import jobs\n"
            "jobs.device_options() if not jobs.gpu_may_exist() else None\n"
            "heavy = sorted(m for m in ('torch', 'torchvision', 'timm', 'umap', 'xmodal.search', 'xmodal.models') "
            "if m in sys.modules)\n"
            "assert not heavy, heavy\n")
    _python_ok(code)


def test_torch_free_constants_match_the_library():
    import xmodal
    from xmodal import search
    from xmodal.metrics import KS
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
    slices = pd.DataFrame([{"attribute": "colour", "value": bad, "n": 3, "direction": d, "R@1": 1.0, "R@5": 2.0,
                            "R@10": 3.0, "median_rank": 4.0, "run": bad} for d in analysis.DIRECTIONS])
    xy = np.zeros((4, 2), dtype=np.float32)
    figures = [plots.loss_figure(metrics), plots.validation_figure(metrics), plots.similarity_figure(metrics),
               plots.metric_bars(table), plots.slice_figure(slices),
               plots.projection_figure(xy, [bad, bad], [bad, "x"])]
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
