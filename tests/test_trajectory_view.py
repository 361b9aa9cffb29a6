"""The Embeddings page's *Over training* view (issue 23 §1): the background job's cached map over epochs, the
animated figure (a frame per epoch, play button, fixed axes, escaped hover), the per-epoch validation numbers
with their intervals, and the page with AppTest (the view and the epoch in the URL; a run without snapshots says
so in one line; a map not made yet starts its job)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from apptest_kit import REPO, TIMEOUT, _no_markup, _ok
from streamlit.testing.v1 import AppTest

from xmodal.dashboard.maps import trajectory_figure, trajectory_job, trajectory_view
from xmodal.evaluation import metrics


@pytest.fixture
def snap_run(trained_run) -> Path:
    """The tiny run (two epochs of snapshots) with its PCA map over epochs made, as the job would."""
    path = trajectory_job.trajectory_path(trained_run, "pca")
    if not path.is_file():
        trajectory_job.compute(trained_run, "pca")
    return trained_run


def test_job_caches_a_checked_map_keyed_by_the_snapshots(snap_run, tmp_path):
    path = trajectory_job.trajectory_path(snap_run, "pca")
    data = trajectory_job.load(path)
    n = len(data["item_ids"])
    assert data["epochs"] == [1, 2] and data["xy"].shape == (2, 2 * n, 2) and data["method"] == "pca"
    assert all(data["captions"]) and [s["epoch"] for s in data["stats"]["caption"]] == [1, 2]
    lo, hi = data["stats"]["item"][0]["ci95"]["t2i_R@1"]
    assert lo <= data["stats"]["item"][0]["t2i_R@1"] <= hi
    copy = tmp_path / "run"
    shutil.copytree(snap_run / "snapshots", copy / "snapshots")
    before = trajectory_job.trajectory_path(copy, "pca")
    (copy / "snapshots" / "epoch_0003.safetensors").write_bytes((copy / "snapshots" / "epoch_0002.safetensors")
                                                              .read_bytes())
    assert trajectory_job.trajectory_path(copy, "pca") != before  # a new epoch: a new map
    assert trajectory_job.trajectory_path(tmp_path, "pca") is None  # no snapshots, no map
    damaged = tmp_path / "trajectory_pca_x.npz"
    damaged.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match="damaged"):
        trajectory_job.load(damaged)


def test_figure_has_a_frame_per_epoch_fixed_axes_and_escaped_hover():
    rng = np.random.default_rng(0)
    xy = rng.normal(size=(3, 8, 2)).astype(np.float32)
    fig = trajectory_figure.trajectory_figure([1, 2, 5], xy, ["<b>bold</b>", "a", "b", "c"], epoch=2)
    assert [f.name for f in fig.frames] == ["1", "2", "5"] and all(len(f.data) == 3 for f in fig.frames)
    assert fig.layout.sliders[0].active == 1 and fig.layout.title.text == "epoch 2 of 5"
    assert np.allclose(fig.data[1].x, xy[1, :4, 0])  # the still frame is the chosen epoch's photos
    lo, hi = fig.layout.xaxis.range
    assert lo <= xy[..., 0].min() and hi >= xy[..., 0].max()  # one range for every epoch
    assert fig.data[1].text[0] == "&lt;b&gt;bold&lt;/b&gt;"
    assert fig.layout.updatemenus[0].buttons[0].method == "animate"


def test_history_table_gives_each_validation_recall_its_wilson_interval():
    rows = [{"kind": "step", "epoch": 1}, {"kind": "epoch", "epoch": 1, "val/text_to_image/R@1": 20.0,
                                           "val/image_to_text/R@1": 10.0, "val/rsum": 150.0},
            {"kind": "epoch", "epoch": 2, "val/text_to_image/R@1": 40.0}]
    table = trajectory_view.history_table(rows, "caption", 50)
    assert table["epoch"].tolist() == [1, 2]
    assert (table.loc[0, "val t2i R@1 lo"], table.loc[0, "val t2i R@1 hi"]) == pytest.approx(metrics.wilson(10, 50))
    assert pd.isna(table.loc[1, "val i2t R@1"]) and pd.isna(table.loc[1, "val i2t R@1 lo"])
    shown = trajectory_view.with_intervals(table)
    assert shown.loc[0, "val t2i R@1"] == "20.0 [{:.1f}-{:.1f}]".format(*metrics.wilson(10, 50))
    assert shown.loc[1, "val i2t R@1"] == "–" and "val t2i R@1 lo" not in shown
    assert trajectory_view.history_table(rows, "item", 50)["val t2i R@1"].isna().all()  # no val_item keys


def _page(catalogue: Path, ckpt: Path, monkeypatch, **params) -> AppTest:
    monkeypatch.setenv("XMODAL_CHECKPOINTS", str(ckpt))
    at = AppTest.from_file(str(REPO / "dashboard.py"), default_timeout=TIMEOUT)
    at.session_state["cat_source"], at.session_state["cat_folder"] = "folder", str(catalogue)
    at.run()
    at.query_params.clear()
    at.query_params.update({"emb_view": "training", **params})
    at.switch_page("pages/embeddings.py").run()
    _ok(at)
    return at


def test_page_plays_the_run_over_epochs_with_the_epoch_in_the_url(snap_run, tiny_catalogue, tmp_path, monkeypatch):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / snap_run.name).symlink_to(snap_run, target_is_directory=True)
    at = _page(tiny_catalogue, ckpt, monkeypatch, emb_epoch="1")
    fig = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert [f["name"] for f in fig["frames"]] == ["1", "2"] and fig["layout"]["title"]["text"] == "epoch 1 of 2"
    assert at.select_slider(key="emb_epoch").value == 1 and at.query_params["emb_view"] == "training"
    assert at.query_params["emb_traj_method"] == "pca"  # this view's own projection, PCA first
    labels = {m.label for m in at.metric}
    assert {"Validation R@1, title → photo", "Pair cosine (mean)", "Modality gap"} <= labels
    assert any("(Wilson)" in c.value for c in at.caption)
    assert at.dataframe[0].value["epoch"].tolist() == [1, 2]
    at.select_slider(key="emb_epoch").set_value(2).run()
    _ok(at)
    assert at.query_params["emb_epoch"] == "2"
    assert json.loads(at.get("plotly_chart")[0].proto.spec)["layout"]["title"]["text"] == "epoch 2 of 2"
    _no_markup(at)


def test_page_without_snapshots_says_so_and_a_missing_map_starts_its_job(snap_run, tiny_catalogue, tmp_path,
                                                                         monkeypatch):
    bare = tmp_path / "ckpt" / "no-snaps"
    bare.mkdir(parents=True)
    for p in snap_run.iterdir():  # the same run without its snapshots
        if p.name != "snapshots" and not p.name.startswith((".", "trajectory_")):
            (bare / p.name).symlink_to(p, target_is_directory=p.is_dir())
    at = _page(tiny_catalogue, tmp_path / "ckpt", monkeypatch)
    assert len(at.info) == 1 and "--snapshots N" in at.info[0].value and not at.get("plotly_chart")
    started = []
    monkeypatch.setattr(trajectory_job, "start", lambda run_dir, method: started.append((run_dir, method)) or True)
    shutil.copytree(snap_run / "snapshots", bare / "snapshots")  # snapshots, but no map made yet
    at.run()
    _ok(at)
    assert started == [(bare, "pca")] and any("map over epochs" in i.value for i in at.info)
