"""Plotly figure builders for the dashboard pages; each returns a ``plotly.graph_objects.Figure``.

Plotly reads a subset of HTML (``<a href>``, ``<b>``, ``<br>``) in trace names, hover text, tick labels and
titles, so every run name, loss term, caption and attribute value goes through ``escape.plotly`` (``esc``).
The Embeddings map has its own module, ``mapplot``.

A run keeps one colour on every chart and page, whatever else is chosen beside it: ``run_colour`` derives it
from the run's id alone. Recall axes are anchored at 0-100 and median-rank axes at 0, so that noise between
epochs is not blown up into a trend; loss functions of different models never share an axis.
"""
from __future__ import annotations

import hashlib
import math
from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from .analysis import DIRECTIONS, KS, SHORT, loss_terms
from .escape import plotly as esc

PALETTE = qualitative.Plotly + qualitative.D3 + [c for c in qualitative.Safe if c != "rgb(136, 136, 136)"]
MODALITY_COLOURS = {"image": "#1f77b4", "caption": "#ff7f0e"}
RUN_SEPARATOR = " · "  # analysis.run_label: ``model · run id`` or the run id alone
DASHES = ("solid", "dash", "dot", "dashdot")  # lines of runs that share a colour, in one chart
PATTERNS = ("", "/", ".", "x")  # bars of runs that share a colour, in one chart
SYMBOLS = ("circle", "square", "diamond", "triangle-up")  # markers of runs that share a colour (similarity chart)


def run_id_of(name: str) -> str:
    """The run id in a run's label (``analysis.run_label``): the part after the last `` · ``."""
    return str(name).rsplit(RUN_SEPARATOR, 1)[-1]


def run_colour(name: str) -> str:
    """A run's colour, from a hash of its id alone: the same on every chart and page, whatever else is shown."""
    digest = hashlib.sha256(run_id_of(name).encode("utf-8")).digest()
    return PALETTE[int.from_bytes(digest[:8], "big") % len(PALETTE)]


def run_colours(names: Sequence[str]) -> dict[str, str]:
    """``run_colour`` of each run name."""
    return {n: run_colour(n) for n in names}


def run_variants(names: Sequence[str]) -> dict[str, int]:
    """Which of the runs in one chart that share a colour each is (0, 1, ...; by run id): their lines get
    ``DASHES`` and their bars ``PATTERNS``, so that two runs never look alike. The colour itself never moves."""
    seen: dict[str, int] = {}
    out = {}
    for n in sorted(dict.fromkeys(names), key=run_id_of):
        c = run_colour(n)
        out[n] = seen.get(c, 0)
        seen[c] = out[n] + 1
    return out


def _line(name: str, variants: dict[str, int], **kw) -> dict:
    """A run's line style: its colour, dashed when it shares the colour with another run of the chart."""
    return dict(color=run_colour(name), dash=DASHES[variants.get(name, 0) % len(DASHES)], **kw)


def _bar_marker(name: str, variants: dict[str, int], **kw) -> dict:
    """A run's bar style: its colour, patterned when it shares the colour with another run of the chart."""
    shape = PATTERNS[variants.get(name, 0) % len(PATTERNS)]
    return dict(color=run_colour(name), **({"pattern": dict(shape=shape)} if shape else {}), **kw)


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


def loss_panels(metrics: dict[str, list[dict]]) -> list[tuple[str, str, list[str]]]:
    """The loss figure's panels: ``(title, term, runs)``. A term's name is its loss function (``infonce``,
    ``cmpm``, ``contrastive_pos``), so runs that log it share its panel; the total ``loss`` is a different
    function for each set of terms, so runs whose terms differ get a total panel each, titled with its sum."""
    logged = {name: loss_terms(rows) for name, rows in metrics.items()}
    terms_of = {name: [t for t in terms if t != "loss"] for name, terms in logged.items()}
    totals: dict[tuple[str, ...], list[str]] = {}
    for name, terms in logged.items():
        if "loss" in terms:
            totals.setdefault(tuple(sorted(terms_of[name])), []).append(name)
    panels = []
    for sig, names in totals.items():
        title = "loss" if len(totals) == 1 else f"loss = {' + '.join(sig) or 'loss'}"
        panels.append((title, "loss", names))
    for term in dict.fromkeys(t for ts in terms_of.values() for t in ts):
        panels.append((term, term, [n for n in metrics if term in terms_of[n]]))
    return panels or [("loss", "loss", list(metrics))]


def loss_figure(metrics: dict[str, list[dict]], smooth: int = 1) -> go.Figure:
    """One panel per loss function (``loss_panels``), its runs overlaid, x = fractional epoch: a total of other
    terms is another function, so it never shares an axis."""
    panels = loss_panels(metrics)
    cols = 2 if len(panels) > 1 else 1
    nrows = math.ceil(len(panels) / cols)
    fig = make_subplots(rows=nrows, cols=cols, subplot_titles=[esc(t) for t, _, _ in panels],
                        vertical_spacing=0.3 / nrows)
    variants = run_variants(list(metrics))
    shown: set[str] = set()
    for i, (_, term, names) in enumerate(panels):
        for name in names:
            steps = [r for r in metrics[name] if r.get("kind") == "step"]
            pts = [(xi, r[term]) for xi, r in zip(_epoch_x(steps), steps) if isinstance(r.get(term), (int, float))]
            if not pts:
                continue
            xs, ys = zip(*pts)
            fig.add_trace(go.Scatter(x=xs, y=_smooth(np.array(ys, dtype=float), smooth), mode="lines",
                                     name=esc(name), legendgroup=name, showlegend=name not in shown,
                                     line=_line(name, variants)),
                          row=i // cols + 1, col=i % cols + 1)
            shown.add(name)
    for c in range(1, cols + 1):  # label the lowest panel of each column only
        last = nrows if (nrows - 1) * cols + c <= len(panels) else nrows - 1
        fig.update_xaxes(title_text="epoch", row=last, col=c)
    return _layout(fig, 260 * nrows)


def validation_figure(metrics: dict[str, list[dict]], prefix: str = "val") -> go.Figure:
    """Validation R@1/5/10 and median rank per epoch, one row per direction, every run overlaid."""
    panels = [f"R@{k}" for k in KS] + ["median rank"]
    titles = [f"{SHORT[d]} {p}" for d in DIRECTIONS for p in panels]
    fig = make_subplots(rows=2, cols=4, subplot_titles=titles, vertical_spacing=0.18, horizontal_spacing=0.06)
    variants = run_variants(list(metrics))
    top_rank = 1.0
    for name, rows in metrics.items():
        epochs = [r for r in rows if r.get("kind") == "epoch"]
        if not epochs:
            continue
        x = [r["epoch"] for r in epochs]
        for di, d in enumerate(DIRECTIONS):
            keys = [f"{prefix}/{d}/R@{k}" for k in KS] + [f"{prefix}/{d}/median_rank"]
            for ci, key in enumerate(keys):
                y = [r.get(key) for r in epochs]
                if ci == len(KS):
                    top_rank = max([top_rank, *(v for v in y if isinstance(v, (int, float)) and math.isfinite(v))])
                fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=esc(name),
                                         legendgroup=name, showlegend=di == 0 and ci == 0,
                                         line=_line(name, variants)), row=di + 1, col=ci + 1)
    fig.update_xaxes(dtick=1)
    fig.update_xaxes(title_text="epoch", row=2)
    for row in (1, 2):  # fixed axes: a wobble of a point between epochs stays a wobble
        for col in range(1, len(KS) + 1):
            fig.update_yaxes(range=[0, 100], row=row, col=col, title_text="%" if col == 1 else None)
        fig.update_yaxes(range=[0, top_rank * 1.08], row=row, col=len(KS) + 1)
    return _layout(fig, 480)


def similarity_figure(metrics: dict[str, list[dict]]) -> go.Figure:
    """Mean cosine similarity of matching (solid) and non-matching (dashed) validation pairs per epoch."""
    fig = go.Figure()
    variants = run_variants(list(metrics))
    low = 0.0
    for name, rows in metrics.items():
        epochs = [r for r in rows if r.get("kind") == "epoch" and "pos_sim" in r]
        x = [r["epoch"] for r in epochs]
        low = min([low, *(float(r[k]) for r in epochs for k in ("pos_sim", "neg_sim")
                          if isinstance(r.get(k), (int, float)) and math.isfinite(r[k]))])
        colour, symbol = run_colour(name), SYMBOLS[variants.get(name, 0) % len(SYMBOLS)]
        fig.add_trace(go.Scatter(x=x, y=[r["pos_sim"] for r in epochs], name=f"{esc(name)} positive",
                                 mode="lines+markers", legendgroup=name, line=dict(color=colour),
                                 marker=dict(symbol=symbol)))
        fig.add_trace(go.Scatter(x=x, y=[r["neg_sim"] for r in epochs], name=f"{esc(name)} negative",
                                 mode="lines+markers", legendgroup=name, line=dict(color=colour, dash="dash"),
                                 marker=dict(symbol=symbol)))
    fig.update_xaxes(title_text="epoch", dtick=1)
    # anchored: from 0 (or the lowest value) to 1, the most a cosine can be
    fig.update_yaxes(title_text="cosine similarity", range=[max(-1.0, low - 0.05) if low < 0 else 0.0, 1.02])
    return _layout(fig, 300)


def metric_bars(table: pd.DataFrame) -> go.Figure:
    """Grouped bars of test R@1/5/10 (left) and median rank (right, lower is better), both directions, with their
    95% intervals (``... lo`` / ``... hi`` columns of ``analysis.test_metrics_table``) as error bars."""
    fig = make_subplots(rows=1, cols=2, column_widths=[0.7, 0.3],
                        subplot_titles=["recall (%) — higher is better", "median rank — lower is better"])
    recall_cols = [f"{SHORT[d]} R@{k}" for d in DIRECTIONS for k in KS]
    rank_cols = [f"{SHORT[d]} median rank" for d in DIRECTIONS]
    variants = run_variants(list(table["run"])) if len(table) else {}

    def error(row, cols):  # the 95% interval of each bar, where one is known (analysis.metric_intervals)
        known = [f"{c} lo" in row and pd.notna(row[f"{c} lo"]) and pd.notna(row[f"{c} hi"]) for c in cols]
        if not any(known):
            return None
        return dict(type="data", symmetric=False, thickness=1, width=3,
                    array=[row[f"{c} hi"] - row[c] if k else None for c, k in zip(cols, known)],
                    arrayminus=[row[c] - row[f"{c} lo"] if k else None for c, k in zip(cols, known)])

    for _, row in table.iterrows():
        name = row["run"]
        fig.add_trace(go.Bar(x=recall_cols, y=[row[c] for c in recall_cols], name=esc(name), legendgroup=name,
                             marker=_bar_marker(name, variants), error_y=error(row, recall_cols)), row=1, col=1)
        fig.add_trace(go.Bar(x=rank_cols, y=[row[c] for c in rank_cols], name=esc(name), legendgroup=name,
                             showlegend=False, marker=_bar_marker(name, variants), error_y=error(row, rank_cols)),
                      row=1, col=2)
    fig.update_layout(barmode="group")
    fig.update_yaxes(range=[0, 100], row=1, col=1)
    fig.update_yaxes(rangemode="tozero", row=1, col=2)
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
    variants = run_variants(runs)
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
                                 marker=_bar_marker(name, variants, opacity=np.where(small, 0.35, 1.0).tolist()),
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
