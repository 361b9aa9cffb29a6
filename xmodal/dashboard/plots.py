"""Plotly figure builders for the dashboard pages; each returns a ``plotly.graph_objects.Figure``.

Plotly reads a subset of HTML (``<a href>``, ``<b>``, ``<br>``) in trace names, hover text, tick labels and
titles, so every run name, loss term, caption and attribute value goes through ``escape.plotly`` (``esc``).
The Embeddings map has its own module, ``mapplot``.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from .analysis import DIRECTIONS, KS, SHORT, loss_terms
from .escape import plotly as esc

PALETTE = qualitative.Plotly + qualitative.D3
MODALITY_COLOURS = {"image": "#1f77b4", "caption": "#ff7f0e"}


def run_colours(names: Sequence[str]) -> dict[str, str]:
    """A stable colour per run name (by position)."""
    return {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(names)}


def _layout(fig: go.Figure, height: int) -> go.Figure:
    """Shared look: the legend in a band above the plots (sized to its entries), white template."""
    names = [t.name for t in fig.data if t.showlegend is not False and t.name]
    entries = len(dict.fromkeys(names))
    rows = max(1, math.ceil(sum(min(len(n), 60) * 7 + 40 for n in dict.fromkeys(names)) / 1000)) if entries else 0
    top = 30 + 22 * rows
    fig.update_layout(height=height + top, margin=dict(l=10, r=10, t=top, b=10), template="plotly_white",
                      legend=dict(orientation="h", yref="container", y=1, yanchor="top", x=0),
                      modebar=dict(orientation="v"))  # the toolbar on the right, clear of the legend band
    return fig


def _epoch_x(rows: list[dict]) -> np.ndarray:
    """Fractional epoch of each step row: epoch - 1 + step / steps in that epoch."""
    per_epoch: dict[int, int] = {}
    for r in rows:
        per_epoch[r["epoch"]] = max(per_epoch.get(r["epoch"], 0), r["step"])
    return np.array([r["epoch"] - 1 + r["step"] / max(per_epoch[r["epoch"]], 1) for r in rows])


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(values) < 2:
        return values
    kernel = np.ones(min(window, len(values))) / min(window, len(values))
    padded = np.concatenate([np.full(len(kernel) - 1, values[0]), values])
    return np.convolve(padded, kernel, mode="valid")


def loss_figure(metrics: dict[str, list[dict]], smooth: int = 1) -> go.Figure:
    """One panel per loss term (``loss`` = their sum), every run overlaid, x = fractional epoch."""
    terms = loss_terms([r for rows in metrics.values() for r in rows]) or ["loss"]
    cols = 2 if len(terms) > 1 else 1
    nrows = math.ceil(len(terms) / cols)
    fig = make_subplots(rows=nrows, cols=cols, subplot_titles=[esc(t) for t in terms],
                        vertical_spacing=0.3 / nrows)
    colours = run_colours(list(metrics))
    for name, rows in metrics.items():
        steps = [r for r in rows if r.get("kind") == "step"]
        if not steps:
            continue
        x = _epoch_x(steps)
        for i, term in enumerate(terms):
            pts = [(xi, r[term]) for xi, r in zip(x, steps) if isinstance(r.get(term), (int, float))]
            if not pts:
                continue
            xs, ys = zip(*pts)
            fig.add_trace(go.Scatter(x=xs, y=_smooth(np.array(ys, dtype=float), smooth), mode="lines",
                                     name=esc(name), legendgroup=name, showlegend=i == 0,
                                     line=dict(color=colours[name])),
                          row=i // cols + 1, col=i % cols + 1)
    for c in range(1, cols + 1):  # label the lowest panel of each column only
        last = nrows if (nrows - 1) * cols + c <= len(terms) else nrows - 1
        fig.update_xaxes(title_text="epoch", row=last, col=c)
    return _layout(fig, 260 * nrows)


def validation_figure(metrics: dict[str, list[dict]], prefix: str = "val") -> go.Figure:
    """Validation R@1/5/10 and median rank per epoch, one row per direction, every run overlaid."""
    panels = [f"R@{k}" for k in KS] + ["median rank"]
    titles = [f"{SHORT[d]} {p}" for d in DIRECTIONS for p in panels]
    fig = make_subplots(rows=2, cols=4, subplot_titles=titles, vertical_spacing=0.18, horizontal_spacing=0.06)
    colours = run_colours(list(metrics))
    for name, rows in metrics.items():
        epochs = [r for r in rows if r.get("kind") == "epoch"]
        if not epochs:
            continue
        x = [r["epoch"] for r in epochs]
        for di, d in enumerate(DIRECTIONS):
            keys = [f"{prefix}/{d}/R@{k}" for k in KS] + [f"{prefix}/{d}/median_rank"]
            for ci, key in enumerate(keys):
                fig.add_trace(go.Scatter(x=x, y=[r.get(key) for r in epochs], mode="lines+markers", name=esc(name),
                                         legendgroup=name, showlegend=di == 0 and ci == 0,
                                         line=dict(color=colours[name])), row=di + 1, col=ci + 1)
    fig.update_xaxes(dtick=1)
    fig.update_xaxes(title_text="epoch", row=2)
    return _layout(fig, 480)


def similarity_figure(metrics: dict[str, list[dict]]) -> go.Figure:
    """Mean cosine similarity of matching (solid) and non-matching (dashed) validation pairs per epoch."""
    fig = go.Figure()
    colours = run_colours(list(metrics))
    for name, rows in metrics.items():
        epochs = [r for r in rows if r.get("kind") == "epoch" and "pos_sim" in r]
        x = [r["epoch"] for r in epochs]
        fig.add_trace(go.Scatter(x=x, y=[r["pos_sim"] for r in epochs], name=f"{esc(name)} positive",
                                 mode="lines+markers", legendgroup=name, line=dict(color=colours[name])))
        fig.add_trace(go.Scatter(x=x, y=[r["neg_sim"] for r in epochs], name=f"{esc(name)} negative",
                                 mode="lines+markers", legendgroup=name, line=dict(color=colours[name], dash="dash")))
    fig.update_xaxes(title_text="epoch", dtick=1)
    fig.update_yaxes(title_text="cosine similarity")
    return _layout(fig, 300)


def metric_bars(table: pd.DataFrame) -> go.Figure:
    """Grouped bars of test R@1/5/10 (left) and median rank (right, lower is better), both directions, with their
    95% intervals (``... lo`` / ``... hi`` columns of ``analysis.test_metrics_table``) as error bars."""
    fig = make_subplots(rows=1, cols=2, column_widths=[0.7, 0.3],
                        subplot_titles=["recall (%) — higher is better", "median rank — lower is better"])
    recall_cols = [f"{SHORT[d]} R@{k}" for d in DIRECTIONS for k in KS]
    rank_cols = [f"{SHORT[d]} median rank" for d in DIRECTIONS]
    colours = run_colours(list(table["run"])) if len(table) else {}
    def error(row, cols):  # the 95% interval of each bar, where test.json recorded one
        if not all(f"{c} lo" in row and pd.notna(row[f"{c} lo"]) for c in cols):
            return None
        return dict(type="data", symmetric=False, array=[row[f"{c} hi"] - row[c] for c in cols],
                    arrayminus=[row[c] - row[f"{c} lo"] for c in cols], thickness=1, width=3)

    for _, row in table.iterrows():
        name = row["run"]
        fig.add_trace(go.Bar(x=recall_cols, y=[row[c] for c in recall_cols], name=esc(name), legendgroup=name,
                             marker_color=colours[name], error_y=error(row, recall_cols)), row=1, col=1)
        fig.add_trace(go.Bar(x=rank_cols, y=[row[c] for c in rank_cols], name=esc(name), legendgroup=name,
                             showlegend=False, marker_color=colours[name], error_y=error(row, rank_cols)), row=1, col=2)
    fig.update_layout(barmode="group")
    return _layout(fig, 380)


def slice_figure(slices: pd.DataFrame, metric: str = "R@10") -> go.Figure:
    """Bars of ``metric`` per slice value (x), one bar per run, one panel per direction, each with its 95%
    interval; slices too small to rank (``small``) come last, pale, marked ``*``.

    Args:
        slices: ``slices.slice_metrics`` rows of one attribute with a ``run`` column added.
        metric: ``R@1``, ``R@5``, ``R@10`` (Wilson intervals) or ``median_rank`` (bootstrap intervals).
    """
    fig = make_subplots(rows=1, cols=2, subplot_titles=[f"{SHORT[d]} {esc(metric)}" for d in DIRECTIONS],
                        shared_yaxes=True)
    runs = list(dict.fromkeys(slices["run"])) if len(slices) else []
    colours = run_colours(runs)
    lo, hi = (f"{metric} lo", f"{metric} hi") if metric.startswith("R@") else ("median lo", "median hi")
    for name in runs:
        for di, d in enumerate(DIRECTIONS):
            part = slices[(slices["run"] == name) & (slices["direction"] == d)]
            small = part["small"].astype(bool).to_numpy() if "small" in part else np.zeros(len(part), dtype=bool)
            x = [f"{esc(v)} (n={n}){' *' if s else ''}" for v, n, s in zip(part["value"], part["n"], small)]
            error = None
            if lo in part and hi in part:
                error = dict(type="data", symmetric=False, array=(part[hi] - part[metric]).to_numpy(),
                             arrayminus=(part[metric] - part[lo]).to_numpy(), thickness=1, width=3)
            fig.add_trace(go.Bar(x=x, y=part[metric], name=esc(name), legendgroup=name, showlegend=di == 0,
                                 marker=dict(color=colours[name], opacity=np.where(small, 0.35, 1.0).tolist()),
                                 error_y=error), row=1, col=di + 1)
    fig.update_layout(barmode="group")
    return _layout(fig, 380)


def gap_figure(gap: dict) -> go.Figure:
    """Histograms of paired vs random image-caption distances in the joint space."""
    fig = go.Figure()
    fig.add_trace(go.Histogram(x=gap["paired"], name="same item (paired)", opacity=0.65, nbinsx=40,
                               marker_color=MODALITY_COLOURS["image"]))
    fig.add_trace(go.Histogram(x=gap["random"], name="random pairs", opacity=0.65, nbinsx=40,
                               marker_color=MODALITY_COLOURS["caption"]))
    fig.update_layout(barmode="overlay")
    fig.update_xaxes(title_text="euclidean distance between unit embeddings (0 = identical, 2 = opposite)")
    fig.update_yaxes(title_text="items")
    return _layout(fig, 320)
