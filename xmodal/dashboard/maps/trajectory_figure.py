"""The joint space over training as a ``plotly.graph_objects.Figure``: one frame per epoch, a play button and an
epoch slider that walk through them in the browser.

Every frame has the same three traces, so Plotly moves each point from its place in one epoch to its place in
the next: the lines joining each product's photo and title (pairs drawing together shorten them), the photos
(circles) and the titles (crosses), in the Embeddings map's modality colours. The axes are fixed over all the
epochs, so that a motion on the screen is a motion of the space and never a zoom. Hover text is escaped.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import plotly.graph_objects as go

from .figure import SYMBOLS
from ..escape import plotly as esc
from ..plots import MODALITY_COLOURS, _layout

FRAME_MS = 700  # each epoch's frame, with the glide to it
GLIDE_MS = 450  # the glide from one epoch's places to the next


def _pairs(img: np.ndarray, txt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Segments photo -> title for each product, separated by gaps (one trace for all)."""
    gap = np.full(len(img), np.nan)
    return (np.column_stack([img[:, 0], txt[:, 0], gap]).ravel(), np.column_stack([img[:, 1], txt[:, 1], gap]).ravel())


def _traces(xy: np.ndarray, labels: list[str], lines: bool) -> list[go.Scatter]:
    """An epoch's three traces; ``xy`` ``[2n, 2]``: the n photos, then the n titles."""
    n = len(xy) // 2
    img, txt = xy[:n], xy[n:]
    lx, ly = _pairs(img, txt) if lines else ([], [])
    point = dict(size=7, opacity=0.8)
    return [go.Scatter(x=lx, y=ly, mode="lines", name="photo-title pairs", hoverinfo="skip",
                       line=dict(color="rgba(120,120,120,0.25)", width=1)),
            go.Scatter(x=img[:, 0], y=img[:, 1], mode="markers", name="photos", text=labels,
                       hovertemplate="photo: %{text}<extra></extra>",
                       marker=dict(symbol=SYMBOLS["photo"], color=MODALITY_COLOURS["image"], **point)),
            go.Scatter(x=txt[:, 0], y=txt[:, 1], mode="markers", name="titles", text=labels,
                       hovertemplate="title: %{text}<extra></extra>",
                       marker=dict(symbol=SYMBOLS["title"], color=MODALITY_COLOURS["caption"], **point))]


def _range(values: np.ndarray) -> list[float]:
    lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
    pad = 0.05 * (hi - lo) or 1.0
    return [lo - pad, hi + pad]


def trajectory_figure(epochs: Sequence[int], xy: np.ndarray, labels: Sequence[str], epoch: int | None = None,
                      method: str = "pca", lines: bool = True) -> go.Figure:
    """An animated map of ``xy`` ``[E, 2n, 2]`` (``epochs[i]``'s photos then titles), first showing ``epoch``
    (default the last).

    Args:
        labels: each product's hover text (its title, or its item id), plain text: escaped here.
        lines: join each product's photo and title.
    """
    epochs = [int(e) for e in epochs]
    shown = epochs.index(int(epoch)) if epoch is not None and int(epoch) in epochs else len(epochs) - 1
    text = [esc(x) for x in labels]
    frames = [go.Frame(name=str(e), data=_traces(xy[i], text, lines),
                       layout=go.Layout(title_text=f"epoch {e} of {epochs[-1]}"))
              for i, e in enumerate(epochs)]
    fig = go.Figure(data=_traces(xy[shown], text, lines), frames=frames)
    play = dict(frame=dict(duration=FRAME_MS, redraw=False), transition=dict(duration=GLIDE_MS), fromcurrent=True,
                mode="immediate")
    fig.update_layout(
        title=dict(text=f"epoch {epochs[shown]} of {epochs[-1]}", x=0.01, y=0.99, yanchor="top"),
        xaxis=dict(range=_range(xy[..., 0]), title=f"{method.upper()} 1 (last epoch's projection)", zeroline=False),
        yaxis=dict(range=_range(xy[..., 1]), title=f"{method.upper()} 2", zeroline=False),
        updatemenus=[dict(type="buttons", direction="left", x=0.0, y=-0.08, xanchor="left", yanchor="top",
                          showactive=False, buttons=[
                              dict(label="▶ Play", method="animate", args=[None, play]),
                              dict(label="❚❚ Pause", method="animate",
                                   args=[[None], dict(frame=dict(duration=0, redraw=False), mode="immediate")])])],
        sliders=[dict(active=shown, x=0.18, y=-0.04, len=0.82, xanchor="left", yanchor="top",
                      currentvalue=dict(prefix="epoch ", visible=True),
                      transition=dict(duration=GLIDE_MS),
                      steps=[dict(label=str(e), method="animate",
                                  args=[[str(e)], dict(frame=dict(duration=0, redraw=False), mode="immediate",
                                                       transition=dict(duration=GLIDE_MS))])
                             for e in epochs])])
    _layout(fig, 560)
    fig.update_layout(margin=dict(b=110))  # room for the play button and the slider under the map
    return fig
