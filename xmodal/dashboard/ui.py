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

from ..data.images import IS_FOLDER, MISSING, ImageError
from ..runs import RunInfo, list_runs
from . import analysis, catalogues, pickers, runmeta, state
from .jobs import tasks, training as jobs
from .escape import md

if TYPE_CHECKING:  # xmodal.retrieval.run imports PyTorch: the pages that show hits have loaded it already
    from ..retrieval.run import Hit

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
    """Import ``xmodal.retrieval.run`` (PyTorch, timm, the models) under a spinner, once per server.

    Home and Training never need it, and ``state.warm_pytorch`` imports it in the background after the
    first page; a page that needs a model before that is done waits for it (seconds) and says so, instead
    of showing the previous page greyed out.
    """
    if state.pytorch_loaded():
        return
    with st.spinner("Loading PyTorch (the first time a page needs a model after the server starts)...",
                    show_time=True):
        import xmodal.retrieval.run  # noqa: F401 - lazy: PyTorch, which this function exists to load


def visible_runs() -> list[RunInfo]:
    """Every run folder with a config, newest first, less those hidden on Home (``runmeta``)."""
    return [r for r in list_runs() if not runmeta.read_meta(r.path)["hidden"]]


def runs_with_weights() -> list[RunInfo]:
    """Visible runs that have best weights (finished, or running past their first epoch), newest first."""
    return [r for r in visible_runs() if (r.path / "best.safetensors").is_file()]


def finished_runs() -> list[RunInfo]:
    """Visible runs with test metrics, newest first."""
    return [r for r in visible_runs() if r.test]


def no_runs_hint(what: str = "this page") -> None:
    """The message shown where a page needs a trained run and there is none."""
    st.info(f"No trained run yet, so {what} has nothing to show. Train one from the sidebar, or go to "
            "**Home** and click *Train all five models on the demo catalogue*.", icon=":material/info:")


def run_picker(runs: Sequence[RunInfo], key: str, allow_all: bool = False, label: str = "Run") -> list[RunInfo]:
    """A selectbox over ``runs`` (optionally with "all runs side by side"); returns the chosen runs.

    The choice is in the URL as ``key``: the run id, repeated for runs side by side (all of them, or the ones a
    link named: that set is offered as an option of its own). When the runs were trained on more than one
    catalogue, a catalogue is picked first (``pickers``; a link naming runs of one catalogue opens it) and only
    its runs are offered, so "all runs side by side" never puts one catalogue's query to another's models.
    """
    several = len({catalogues.catalogue_id(r.config).key for r in runs}) > 1
    _linked_runs(runs, key, several)
    if several:
        runs = pickers.catalogue_picker(runs)[1]
    by_id = {r.run_id: r for r in runs}
    ids = {analysis.run_label(r): [r.run_id] for r in runs}
    some = [] if not allow_all else st.session_state.get(f"_{key}_some", [])
    some = [i for i in some if i in by_id]
    if allow_all and len(runs) > 1:
        ids = {ALL_RUNS: list(by_id),
               **({f"{len(some)} runs side by side: {', '.join(some)}": some} if 1 < len(some) < len(runs) else {}),
               **ids}
    options = list(ids)
    badges = {o: catalogues.state_badge(by_id[i[0]]) for o, i in ids.items() if len(i) == 1}  # a run not finished
    choice = pickers.url_widget(st.selectbox, key, pickers.grouped(ids), options[0], label, options,
                                format_func=lambda o: f"{o} · {badges[o]}" if badges.get(o) else o)
    return [by_id[i] for i in ids.get(choice, [])]


def _linked_runs(runs: Sequence[RunInfo], key: str, pick_catalogue: bool) -> None:
    """A URL that brings run ids (``key``) of one catalogue opens that catalogue (``pick_catalogue``: the page
    offers several), and a set of two or more of its runs becomes an option of ``run_picker`` (for the session)."""
    asked = list(dict.fromkeys(pickers.url_values(key)))
    if not asked or (key in st.session_state and not pickers.url_is_new(key)):
        return
    named = [r for r in runs if r.run_id in asked]
    cats = {catalogues.catalogue_id(r.config).key for r in named}
    if len(cats) == 1:
        if pick_catalogue:
            st.query_params[pickers.CATALOGUE_KEY] = cats.pop()
        if len(named) > 1:
            st.session_state[f"_{key}_some"] = [r.run_id for r in named]


def url_tabs(labels: dict[str, str], key: str) -> Sequence:
    """``st.tabs`` over ``labels`` ({tab label: its name in the URL}) with the open tab in the URL as ``key`` (the
    first tab when the URL names none); returns the tab containers. Every tab's content still runs."""
    param = pickers.choice(list(labels), labels)
    pickers.seed(key, param, next(iter(labels)))
    tabs = st.tabs(list(labels), key=key, on_change="rerun")
    pickers.publish(key, param.encode(st.session_state.get(key)))
    return tabs


def show_failure(run_dir: Path, status: dict, compact: bool = False) -> None:
    """A failed run's error and the end of its log (never a blank page)."""
    error = status.get("error") or "the training process ended early"
    st.error(f"**{md(Path(run_dir).name)}** failed: {md(error)}", icon=":material/error:")
    with st.expander("log", expanded=not compact):
        st.code(jobs.failure_detail(run_dir), language="text")  # a code block is plain text


def photo(path: str | Path, width: int, where: DeltaGenerator | None = None, caption: str | None = None
          ) -> None:
    """A product photo from a local file, handed to Streamlit as the bytes of an upright JPEG (``state.photo``).

    A path string that looks like a URL would reach the browser as one (and be fetched); bytes never do.
    A missing, unreadable or undecodable file (changed since the catalogue was checked) shows a short note.
    """
    where = where if where is not None else st
    data, problem = _photo_or_problem(path, width)
    if data is None:
        where.caption(problem)
        return
    where.image(data, width=width, caption=caption)


def _photo_or_problem(path: str | Path, width: int) -> tuple[bytes | None, str]:
    """(``state.photo``'s bytes, "") or (None, "(photo missing)" / "(photo unreadable)")."""
    try:
        return state.photo(path, width), ""
    except ImageError as err:
        return None, "(photo missing)" if err.reason in (MISSING, IS_FOLDER) else "(photo unreadable)"


def hit_card(hit: Hit, title: str | None = None, image_width: int = 90) -> None:
    """One result: the product photo beside its caption, score and item id."""
    left, right = st.columns([1, 2], vertical_alignment="center")
    photo(hit.image, image_width, where=left)
    right.markdown(f"{f'**{md(title)}** ' if title else ''}{md(hit.caption)}")
    right.caption(f"score {hit.score:.3f} · {md(hit.item_id)}")


def hit_grid(hits: Sequence[Hit], image_width: int = 120) -> None:
    """Results as photos in rows, each with its rank, caption and score underneath: one element for them all,
    so a search sends the browser a few messages, not one per photo, caption and column (issue 20's twenty tabs)."""
    images, captions = [], []
    for i, hit in enumerate(hits, start=1):
        data, problem = _photo_or_problem(hit.image, image_width)
        images.append(state.blank_photo(image_width) if data is None else data)
        captions.append(f"**#{i}** {problem + ' ' if problem else ''}{md(hit.caption)}  \nscore {hit.score:.3f}")
    if images:
        st.image(images, width=image_width, caption=captions)


def product_grid(images: Sequence[str], captions: Sequence[str], columns: int = 6, image_width: int = 110) -> None:
    """Catalogue products as a grid of photos with their captions."""
    for start in range(0, len(images), columns):
        for col, img, cap in zip(st.columns(columns), images[start:start + columns], captions[start:start + columns]):
            photo(img, image_width, where=col)
            col.caption(md(cap))


def pending_panel(pending: Sequence[catalogues.PendingRun]) -> None:
    """Runs launched but too young for a config (importing PyTorch, extracting features): each with its
    phase and, where its log has a progress bar, how far it is and the time left."""
    for p in pending:
        phase = p.status.get("phase") or "starting"
        text = f"**{md(p.run_id)}** ({md(p.model)} on {md(p.data)}): {md(phase)}"
        frac = 0.0
        if bar := jobs.log_progress(p.path):
            text, frac = f"{text}: {bar[1]:.0%}, {md(bar[2])} left", bar[1]
        st.progress(min(max(frac, 0.0), 1.0), text=text)


def background_work(what: str, folders: Sequence[Path], task: str, ready, start, key: str) -> bool:
    """Wait for heavy work done by a background process, with its progress and time left, page usable.

    Starts the work (``start()``) unless it is running or done; draws one progress line per run folder
    (``tasks.describe``); on failure shows the error and a *Try again* button; once ``ready()`` is True the
    page reruns and fills in. Call it inside an ``st.fragment(run_every=...)``.

    Returns:
        Whether the work is done.
    """
    if ready():
        return True
    records = {Path(f): tasks.read(f, task) for f in folders}
    failed = {f: r for f, r in records.items() if r.get("state") == "failed"}
    if failed:
        for f, r in failed.items():
            st.error(f"{md(what)} failed for **{md(f.name)}**: {md(r.get('error') or 'unknown error')}",
                     icon=":material/error:")
        if st.button("Try again", key=f"{key}_retry", icon=":material/refresh:"):
            for f in failed:
                tasks.task_file(f, task).unlink(missing_ok=True)
            start()
            st.rerun(scope="fragment")
        return False
    if not any(r.get("state") in ("queued", "running") for r in records.values()):
        start()
        records = {Path(f): tasks.read(f, task) for f in folders}
    st.info(f"{md(what)} in a background process; this part of the page fills in by itself when it is done, "
            "and the rest of the page stays usable.", icon=":material/hourglass_top:")
    for f, rec in records.items():
        line, frac = tasks.describe(rec)
        st.progress(min(max(frac or 0.0, 0.0), 1.0), text=f"**{md(f.name)}**: {md(line)}")
    return False


FILTER_MAX_VALUES = 60  # columns with more distinct values (free text, ids) are not offered as filters


def filter_widgets(cat) -> dict[str, list[str]]:
    """The Search page's attribute filters (one multiselect per column, kept in the URL), with how many products
    each value keeps; returns ``where`` for ``xmodal.retrieval.filters`` (empty: no filter)."""
    columns = {c: v for c, v in cat.attributes.items() if 1 < len(set(v)) <= FILTER_MAX_VALUES}
    if not columns:
        return {}
    where: dict[str, list[str]] = {}
    with st.expander("Filter by attributes", expanded=False):
        cols = st.columns(min(len(columns), 4))
        for n, (column, values) in enumerate(columns.items()):
            counts: dict[str, int] = {}
            for v in values:
                counts[str(v)] = counts.get(str(v), 0) + 1
            picked = pickers.url_widget(cols[n % len(cols)].multiselect, f"search_f_{column}",
                                        pickers.choices(sorted(counts)), [], column, sorted(counts), always=False,
                                        format_func=lambda v, c=counts: f"{v} ({c[v]:,})")
            if picked:
                where[column] = list(picked)
    return where
