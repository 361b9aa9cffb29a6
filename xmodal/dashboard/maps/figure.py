"""The Embeddings map as a ``plotly.graph_objects.Figure``: photos and titles of n items, drawn with WebGL
(``go.Scattergl``) so that a whole catalogue (100k points and more) pans and redraws smoothly; a map of at
most ``SVG_MAX_ITEMS`` items draws as SVG, which shows sooner than a WebGL context starts.

Points are coloured by modality, by an attribute (``colours.Colouring``: named colours in their own colour,
other values in a palette that never repeats), or by the rank of each item's true match (green at rank 1,
red far down, on a log scale). Items a filter leaves out stay as faint grey context; items another page
asked to locate get a black ring; a clicked or selected point grows while the others fade, and so does a point
chosen in the URL (``selected``: plotly's ``selectedpoints``, which a later click overrides in the browser without
the figure changing). Every marker's ``customdata`` is its item's position (0..n-1), so a click
or a box/lasso selection maps back to items. Hover text and legend names are escaped (``escape.plotly``).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import plotly.graph_objects as go

from .colours import OUTLINE, Colouring
from ..escape import plotly as esc
from ..plots import MODALITY_COLOURS, _layout

SYMBOLS = {"photo": "circle", "title": "x"}
RANK_SCALE = [[0.0, "#1a9850"], [0.35, "#a6d96a"], [0.6, "#fee08b"], [0.8, "#f46d43"], [1.0, "#a50026"]]
MAX_LINES = 5000  # items whose photo and title are joined at most (beyond: the lines hide the points)
SVG_MAX_ITEMS = 1000  # maps of at most this many items draw as SVG: no WebGL context to start, drawn sooner


def _point_size(n: int) -> float:
    """Smaller markers on denser maps."""
    return float(np.clip(9 - 1.2 * np.log10(max(n, 1)), 3, 8))


def _lines(text: str) -> str:
    """Plain text with line breaks as a Plotly label: each line escaped, joined by ``<br>``."""
    return "<br>".join(esc(line) for line in str(text).split("\n"))


def _ring(fig: go.Figure, trace, img: np.ndarray, txt: np.ndarray, ring: np.ndarray, text: np.ndarray | None) -> None:
    """Black rings around both points of the items at positions ``ring`` (located from another page)."""
    if not len(ring):
        return
    fig.add_trace(trace(x=np.concatenate([img[ring, 0], txt[ring, 0]]), y=np.concatenate([img[ring, 1], txt[ring, 1]]),
                        mode="markers", name=f"located ({len(ring):,})", customdata=np.concatenate([ring, ring]),
                        text=None if text is None else np.concatenate([text[ring], text[ring]]),
                        hovertemplate=None if text is None else "located: %{text}<extra></extra>",
                        marker=dict(symbol="circle-open", size=16, color="#000000", line=dict(width=2))))


def _background(fig: go.Figure, trace, img: np.ndarray, txt: np.ndarray, keep: np.ndarray, lines: bool,
                size: int) -> np.ndarray:
    """Draw the filtered-out points (faint, no hover) and the pair lines; return the kept positions."""
    out = np.flatnonzero(~keep)
    if len(out):
        fig.add_trace(trace(x=np.concatenate([img[out, 0], txt[out, 0]]), y=np.concatenate([img[out, 1], txt[out, 1]]),
                            mode="markers", name=f"filtered out ({len(out):,})", hoverinfo="skip",
                            marker=dict(size=max(size - 2, 2), color="#dddddd", opacity=0.5)))
    kept = np.flatnonzero(keep)
    if lines and 0 < len(kept) <= MAX_LINES:
        seg = np.full((3 * len(kept), 2), np.nan)
        seg[0::3], seg[1::3] = img[kept], txt[kept]
        fig.add_trace(trace(x=seg[:, 0], y=seg[:, 1], mode="lines", hoverinfo="skip", name="pair",
                            line=dict(color="rgba(120,120,120,0.25)", width=1)))
    return kept


def map_figure(xy: np.ndarray, captions: Sequence[str], *, colouring: Colouring | None = None,
               ranks: np.ndarray | None = None, keep: np.ndarray | None = None, highlight: Sequence[int] = (),
               lines: bool = False, method: str = "umap", gl: bool | None = None, hover: bool = True,
               rank_title: str = "rank of true match", selected: int | None = None) -> go.Figure:
    """Photo points (circles) and title points (crosses) of n items in one map.

    Args:
        xy: ``[2n, 2]``: the n photo points, then the n title points of the same items.
        captions: the n items' titles (hover text).
        colouring: colour by an attribute; None with ``ranks`` None colours by modality.
        ranks: colour by each item's rank of its true match ``[n]`` (log scale) instead.
        keep: boolean ``[n]``: the items a filter keeps (the rest are drawn faint grey, without hover).
        highlight: positions to ring in black (items located from another page or a saved slice).
        lines: join each kept item's photo and title (at most ``MAX_LINES`` items).
        method: named in the axis titles.
        gl: WebGL traces (``go.Scattergl``); False for SVG (``go.Scatter``); None: SVG up to ``SVG_MAX_ITEMS``
            items (a WebGL context costs a few hundred ms to start, more than SVG takes to draw a few thousand
            points), WebGL beyond.
        hover: titles in the hover labels (off saves their bytes on huge maps).
        rank_title: the colour bar's title with ``ranks`` (plain text, ``\\n`` between lines): what the ranks are
            out of, and under which ground truth.
        selected: the position of an item to show selected (its points grown, the others faded), as a click would.
    """
    n = len(captions)
    img, txt = np.asarray(xy[:n]), np.asarray(xy[n:])
    keep = np.ones(n, dtype=bool) if keep is None else np.asarray(keep, dtype=bool)
    gl = n > SVG_MAX_ITEMS if gl is None else gl
    trace = go.Scattergl if gl else go.Scatter
    size = _point_size(2 * int(keep.sum()))
    fig = go.Figure()
    kept = _background(fig, trace, img, txt, keep, lines, size)
    text = np.array([esc(c) for c in captions], dtype=object) if hover else None

    def add(idx: np.ndarray, modality: str, name: str, marker: dict, group: str, legend: bool) -> None:
        pts = img if modality == "photo" else txt
        chosen = {} if selected is None else {"selectedpoints": np.flatnonzero(idx == selected).tolist()}
        fig.add_trace(trace(**chosen,
            x=pts[idx, 0], y=pts[idx, 1], mode="markers", name=name, legendgroup=group, showlegend=legend,
            customdata=idx, text=text[idx] if hover else None,
            hovertemplate=f"{modality}: %{{text}}<extra></extra>" if hover else f"{modality} %{{customdata}}"
                          "<extra></extra>",
            marker=dict(symbol=SYMBOLS[modality], size=size if modality == "photo" else size - 1, opacity=0.85,
                        **marker),
            # a clicked (or box/lasso-selected) point grows and the rest fade, in the browser, before any rerun
            selected=dict(marker=dict(size=size + 9, opacity=1.0)), unselected=dict(marker=dict(opacity=0.3))))

    for modality in ("photo", "title"):
        if ranks is not None:
            r = np.asarray(ranks)[kept]
            top = max(float(np.log10(max(int(np.max(ranks)) if len(ranks) else 1, 10))), 1.0)
            ticks = [t for t in (1, 10, 100, 1000, 10000, 100000) if np.log10(t) <= top]
            add(kept, modality, f"{modality}s", dict(color=np.log10(r), colorscale=RANK_SCALE, cmin=0, cmax=top,
                                                     showscale=modality == "photo",
                                                     colorbar=dict(title=_lines(rank_title), tickvals=np.log10(ticks),
                                                                   ticktext=[str(t) for t in ticks])),
                f"rank-{modality}", True)
        elif colouring is None:
            add(kept, modality, f"{modality}s", dict(color=MODALITY_COLOURS["image" if modality == "photo" else
                                                                          "caption"], line=dict(width=0)),
                modality, True)
        else:
            labels = np.asarray(colouring.labels, dtype=object)
            for label, colour in colouring.colours.items():
                idx = kept[labels[kept] == label]
                if not len(idx):
                    continue
                line = dict(width=1, color=OUTLINE) if label in colouring.outlined else dict(width=0)
                add(idx, modality, f"{esc(label)} ({int((labels == label).sum()):,})", dict(color=colour, line=line),
                    f"c-{label}", modality == "photo")
    _ring(fig, trace, img, txt, np.asarray([i for i in highlight if 0 <= i < n], dtype=np.int64), text)
    fig.update_xaxes(title_text=f"{esc(method)} 1", showticklabels=False)
    fig.update_yaxes(title_text=f"{esc(method)} 2", showticklabels=False)
    # No dragmode: Streamlit then pans on drag and selects the point a click lands on (its clickmode
    # "event+select"); Box and Lasso Select are in the toolbar. uirevision keeps zoom across reruns.
    fig.update_layout(hovermode="closest", uirevision="map")
    return _layout(fig, 600)
