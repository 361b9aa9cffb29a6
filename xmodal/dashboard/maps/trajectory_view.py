"""The Embeddings page's *Over training* view: a run's joint space epoch by epoch (``trajectory_job``'s map,
``trajectory_figure``'s animation), with each epoch's validation metrics beside the epoch slider.

The epoch slider (``emb_epoch``) and the view are in the URL; the map is computed in the background and cached
in the run folder. ``history_table`` and ``snapshot_table`` are pure (no Streamlit) and tested as such.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd
import streamlit as st

from ...evaluation import metrics
from ...runs import RunInfo
from .. import analysis, pickers, state, ui
from ..escape import md
from . import trajectory_figure, trajectory_job

EPOCH = "emb_epoch"  # the URL parameter of the epoch slider


def _interval(value: object, n: int) -> tuple[float, float] | None:
    """Wilson 95 % interval of a recall (percent) over ``n`` queries; None for a missing value."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or n <= 0:
        return None
    return metrics.wilson(int(round(float(value) * n / 100)), n)


def history_table(rows: Sequence[dict], ground_truth: str, n_val: int) -> pd.DataFrame:
    """Per epoch of the run's log (``metrics.jsonl``): validation R@1 both ways, each with its Wilson 95 %
    interval over the ``n_val`` validation queries (``lo``/``hi`` columns), and rsum, under ``ground_truth``."""
    prefix = "val" if ground_truth == "caption" else "val_item"
    out = []
    for r in rows:
        if r.get("kind") != "epoch" or not isinstance(r.get("epoch"), int):
            continue
        row = {"epoch": r["epoch"]}
        for short, d in (("t2i", "text_to_image"), ("i2t", "image_to_text")):
            value = r.get(f"{prefix}/{d}/R@1")
            ci = _interval(value, n_val)
            row[f"val {short} R@1"] = value
            row[f"val {short} R@1 lo"], row[f"val {short} R@1 hi"] = ci or (None, None)
        row["val rsum"] = r.get(f"{prefix}/rsum")
        out.append(row)
    return pd.DataFrame(out).drop_duplicates("epoch", keep="last") if out else pd.DataFrame()


def snapshot_table(stats: Sequence[dict]) -> pd.DataFrame:
    """``trajectory.epoch_stats`` rows as a table: pair cosine, modality gap and the snapshot products' R@1 both
    ways with their bootstrap 95 % intervals."""
    out = []
    for s in stats:
        ci = s.get("ci95") or {}
        row = {"epoch": s["epoch"], "pair cosine": s["pair_cosine"], "modality gap": s["modality_gap"]}
        for key, col in (("t2i_R@1", "sample t2i R@1"), ("i2t_R@1", "sample i2t R@1")):
            row[col] = s[key]
            row[f"{col} lo"], row[f"{col} hi"] = ci.get(key) or (None, None)
        out.append(row)
    return pd.DataFrame(out)


def with_intervals(table: pd.DataFrame) -> pd.DataFrame:
    """Each ``X`` with ``X lo``/``X hi`` columns as one text cell ``52.9 [49.8-56.0]``; other numbers rounded."""
    out = pd.DataFrame({"epoch": table["epoch"]}) if "epoch" in table else pd.DataFrame()
    for col in table.columns:
        if col == "epoch" or col.endswith((" lo", " hi")):
            continue
        if f"{col} lo" in table:
            out[col] = [("–" if pd.isna(v) else f"{v:.1f}" + ("" if pd.isna(lo) else f" [{lo:.1f}-{hi:.1f}]"))
                        for v, lo, hi in zip(table[col], table[f"{col} lo"], table[f"{col} hi"])]
        else:
            out[col] = table[col].round(3)
    return out


@st.cache_data(show_spinner=False, max_entries=16)
def _load(path: str, stamp: int) -> dict:
    return trajectory_job.load(Path(path))


def _metrics_beside(history: pd.DataFrame, snap: pd.DataFrame, epoch: int, n_val: int, n_snap: int, gt: str) -> None:
    """The chosen epoch's numbers, each saying what it was measured on."""
    h = history[history["epoch"] == epoch] if len(history) else history
    if len(h):
        row = h.iloc[0]
        for short, name in (("t2i", "title → photo"), ("i2t", "photo → title")):
            lo, hi = row[f"val {short} R@1 lo"], row[f"val {short} R@1 hi"]
            value = row[f"val {short} R@1"]
            st.metric(f"Validation R@1, {name}", "–" if pd.isna(value) else f"{value:.1f} %")
            if not pd.isna(lo):
                st.caption(f"95 % interval {lo:.1f}-{hi:.1f} (Wilson)")
        st.caption(f"Among the run's {n_val:,} validation products, {gt}-level (its training log).")
    else:
        st.caption("No validation record for this epoch in the run's log.")
    s = snap[snap["epoch"] == epoch] if len(snap) else snap
    if len(s):
        row = s.iloc[0]
        st.metric("Pair cosine (mean)", f"{row['pair cosine']:.3f}", help="cosine of each product's photo and title")
        st.metric("Modality gap", f"{row['modality gap']:.3f}", help="distance between the photo and title centroids")
        st.caption(f"Over the {n_snap:,} validation products of the map; their own R@1 among themselves: "
                   f"{row['sample t2i R@1']:.1f} % [{row['sample t2i R@1 lo']:.1f}-{row['sample t2i R@1 hi']:.1f}] "
                   f"title → photo (bootstrap 95 %).")


def _wait(run: RunInfo, method: str, path: Path) -> None:
    @st.fragment(run_every=2)
    def wait() -> None:
        if ui.background_work(f"Computing the {method.upper()} map over epochs", [run.path],
                              trajectory_job.task_name(method), path.is_file,
                              lambda: trajectory_job.start(run.path, method), "emb_traj_job"):
            st.rerun(scope="app")
    wait()


def draw(run: RunInfo, method: str, gt: str) -> None:
    """The view for ``run``: its map over epochs with ``method`` (``pca``/``umap``) and ``gt``-level metrics."""
    path = trajectory_job.trajectory_path(run.path, method)
    if path is None:
        st.info(f"**{md(run.run_id)}** kept no snapshots of its joint space over training: train with "
                "`--snapshots N` (default 500 validation products per epoch) to watch it form here.",
                icon=":material/timeline:")
        return
    if not path.is_file():
        _wait(run, method, path)
        return
    try:
        data = _load(str(path), path.stat().st_mtime_ns)
    except (ValueError, FileNotFoundError):  # damaged: computed again in the background
        path.unlink(missing_ok=True)
        st.rerun()
    epochs, n_snap = data["epochs"], len(data["item_ids"])
    n_val = len(state.test_split_ids(run.path, "val"))
    rows = state.metrics(run.path)
    stats = data["stats"][gt] if data["stats"][gt] else data["stats"]["item"]
    level = gt if data["stats"][gt] else "item"
    history, snap = history_table(rows, gt, n_val), snapshot_table(stats)
    if warning := analysis.detect_collapse(rows):
        st.warning(f"**{md(run.run_id)}** {md(warning)}", icon=":material/warning:")
    left, right = st.columns([3, 1])
    with right:
        epoch = pickers.url_widget(st.select_slider, EPOCH, pickers.choice(epochs), epochs[-1], "Epoch", epochs,
                                   help="the map's still frame and the numbers below; ▶ Play under the map walks "
                                        "through every epoch")
        _metrics_beside(history, snap, epoch, n_val, n_snap, level)
    labels = [c or i for c, i in zip(data["captions"], data["item_ids"])]
    with left:
        st.plotly_chart(trajectory_figure.trajectory_figure(epochs, data["xy"], labels, epoch, data["method"]),
                        key=f"emb_traj_{method}_{run.run_id}")
    st.caption(f"{n_snap:,} validation products of {md(run.run_id)} kept at the end of each epoch, circles photos "
               f"and crosses titles, every epoch drawn in the last epoch's {md(data['method'].upper())} projection: "
               "a product whose embeddings did not change keeps its place. Pairs drawing together shorten their "
               "lines; the photos and titles meeting is the modality gap closing; everything collapsing onto a "
               "point is a collapse.")
    table = snap.merge(history, on="epoch", how="left") if len(history) else snap
    st.dataframe(with_intervals(table), hide_index=True)
    st.caption(f"Per epoch: pair cosine, modality gap and the sample's R@1 over the map's {n_snap:,} products "
               f"({level}-level, bootstrap 95 %); validation R@1 over all {n_val:,} validation products "
               f"({gt}-level, Wilson 95 %) and rsum, from the run's log.")
