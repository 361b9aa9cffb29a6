"""Small Streamlit widgets shared by the pages: run pickers, result cards, failure boxes.

Every string from a catalogue or a run folder goes through ``escape.md`` before Markdown, and photos are
handed to Streamlit as bytes read from a local file, so that no caption, id or path becomes markup or
makes the browser fetch anything (see ``xmodal.dashboard.escape``).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import streamlit as st
from streamlit.delta_generator import DeltaGenerator

from ..runs import RunInfo, list_runs
from . import analysis, jobs, state
from .escape import md

if TYPE_CHECKING:  # xmodal.search imports PyTorch: the pages that show hits have loaded it already
    from ..search import Hit

ALL_RUNS = "All runs side by side"


def page_guard(page: str) -> None:
    """Route a page opened by its URL on a fresh server through ``dashboard.py``.

    Until ``dashboard.py`` has called ``st.navigation`` once, Streamlit treats ``pages/`` as a classic
    multipage folder and would run the page bare, without the sidebar. This sends it through the main
    script, which then opens the page that was asked for.
    """
    if not st.session_state.get("_app_ready"):
        st.session_state["_wanted_page"] = page
        st.switch_page("dashboard.py")


def load_pytorch() -> None:
    """Import ``xmodal.search`` (PyTorch, timm, the models) under a spinner, once per server.

    Home and Training never need it, and ``state.warm_pytorch`` imports it in the background after the
    first page; a page that needs a model before that is done waits for it (seconds on two busy cores)
    and says so, instead of showing the previous page greyed out.
    """
    if state.pytorch_loaded():
        return
    with st.spinner("Loading PyTorch (the first time a page needs a model after the server starts)...",
                    show_time=True):
        import xmodal.search  # noqa: F401


def runs_with_weights() -> list[RunInfo]:
    """Runs that have best weights (finished, or running past their first epoch), newest first."""
    return [r for r in list_runs() if (r.path / "best.safetensors").is_file()]


def finished_runs() -> list[RunInfo]:
    """Runs with test metrics, newest first."""
    return [r for r in list_runs() if r.test]


def no_runs_hint(what: str = "this page") -> None:
    """The message shown where a page needs a trained run and there is none."""
    st.info(f"No trained run yet, so {what} has nothing to show. Train one from the sidebar, or go to "
            "**Home** and click *Train all five models on the demo catalogue*.", icon=":material/info:")


def run_picker(runs: Sequence[RunInfo], key: str, allow_all: bool = False, label: str = "Run") -> list[RunInfo]:
    """A selectbox over ``runs`` (optionally with "all runs side by side"); returns the chosen runs."""
    labels = [analysis.run_label(r) for r in runs]
    options = ([ALL_RUNS] if allow_all and len(runs) > 1 else []) + labels
    choice = st.selectbox(label, options, key=key)
    if choice == ALL_RUNS:
        return list(runs)
    return [runs[labels.index(choice)]] if choice in labels else []


def show_failure(run_dir: Path, status: dict, compact: bool = False) -> None:
    """A failed run's error and the end of its log (never a blank page)."""
    error = status.get("error") or "the training process ended early"
    st.error(f"**{md(Path(run_dir).name)}** failed: {md(error)}", icon=":material/error:")
    with st.expander("log", expanded=not compact):
        st.code(jobs.failure_detail(run_dir), language="text")  # a code block is plain text


def photo(path: str | Path, width: int, where: DeltaGenerator | None = None, caption: str | None = None
          ) -> None:
    """A product photo from a local file, handed to Streamlit as its bytes.

    A path string that looks like a URL would reach the browser as one (and be fetched); bytes never do.
    A missing, unreadable or undecodable file (changed since the catalogue was checked) shows a short note.
    """
    where = where if where is not None else st
    try:
        data = Path(path).read_bytes()
    except OSError:
        where.caption("(photo missing)")
        return
    try:
        where.image(data, width=width, caption=caption)
    except (OSError, ValueError):  # PIL's UnidentifiedImageError is an OSError
        where.caption("(photo unreadable)")


def hit_card(hit: Hit, title: str | None = None, image_width: int = 90) -> None:
    """One result: the product photo beside its caption, score and item id."""
    left, right = st.columns([1, 2], vertical_alignment="center")
    photo(hit.image, image_width, where=left)
    right.markdown(f"{f'**{md(title)}** ' if title else ''}{md(hit.caption)}")
    right.caption(f"score {hit.score:.3f} · {md(hit.item_id)}")


def hit_grid(hits: Sequence[Hit], columns: int = 5, image_width: int = 120) -> None:
    """Results as a grid of photos with rank, caption and score underneath."""
    for start in range(0, len(hits), columns):
        for col, (i, hit) in zip(st.columns(columns), enumerate(hits[start:start + columns], start=start + 1)):
            photo(hit.image, image_width, where=col)
            col.markdown(f"**#{i}** {md(hit.caption)}")
            col.caption(f"score {hit.score:.3f}")


def product_grid(images: Sequence[str], captions: Sequence[str], columns: int = 6, image_width: int = 110) -> None:
    """Catalogue products as a grid of photos with their captions."""
    for start in range(0, len(images), columns):
        for col, img, cap in zip(st.columns(columns), images[start:start + columns], captions[start:start + columns]):
            photo(img, image_width, where=col)
            col.caption(md(cap))
