"""The widgets each page starts with: a catalogue, then runs trained on it; the choices live in the URL.

Every widget here is bound to a query parameter (``bind="query-params"``: the parameter is its key), so a
view survives a reload and can be shared. Streamlit ignores a parameter that is not one of the widget's
options (an unknown catalogue, a run that is gone, a number out of range): the URL is untrusted and never
reaches anything but the widget. A bound widget writes its option's *label* into the URL, so options here
are stable identifiers shown as they are (catalogue keys, run ids), and what changes (run counts, health)
is said in a caption beside them. ``locate_link`` opens the Embeddings map on given items (``focus``
parameters, checked there against the items on the map).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import streamlit as st

from ..runs import RunInfo
from . import catalogues, state
from .escape import md

CATALOGUE_KEY = "cat"  # the same parameter on every page: the catalogue follows the user from page to page
FOCUS, FOCUS_LABEL = "focus", "focus_label"
MAX_FOCUS = 200  # item ids put in a link at most


def sidebar_match(groups: dict[str, list[RunInfo]]) -> int:
    """Index of the catalogue the sidebar has chosen among ``groups`` (0 when none matches)."""
    spec = state.current_catalogue()
    for i, runs in enumerate(groups.values()):
        data = runs[0].config.get("data") or {}
        if spec == "demo" and data.get("name") == "demo":
            return i
        if spec != "demo" and data.get("path") and Path(str(data["path"])) == Path(spec).expanduser().resolve():
            return i
    return 0


def catalogue_picker(runs: Sequence[RunInfo], key: str = CATALOGUE_KEY) -> tuple[str, list[RunInfo]]:
    """A selectbox of the catalogues ``runs`` were trained on (the sidebar's own first when it has runs);
    returns (catalogue key, its runs, newest first)."""
    groups = catalogues.group_runs(runs)
    keys = list(groups)
    choice = st.selectbox("Catalogue", keys, index=sidebar_match(groups), key=key, bind="query-params",
                          help="Runs trained on different catalogues rank against different test galleries, so "
                               "each view shows the runs of one catalogue: its name and content fingerprint")
    st.caption(md(catalogues.describe(groups[choice])))
    return choice, groups[choice]


def health_of(run: RunInfo) -> str | None:
    """``catalogues.health`` with the run's logged metrics (cached)."""
    return catalogues.health(run, state.metrics(run.path))


def unfit_note(runs: Sequence[RunInfo]) -> None:
    """A caption naming the runs not chosen unasked, and why (collapsed, failed, still training)."""
    notes = [f"{r.run_id} ({why})" for r in runs if (why := health_of(r))]
    if notes:
        st.caption("⚠ Not chosen unless you pick them: " + md("; ".join(notes)))


def _reset_on_change(catalogue: str, keys: Sequence[str], defaults: Sequence[object]) -> None:
    """After the catalogue changed, put the run widgets ``keys`` back to their ``defaults`` for it (their
    options changed, and Streamlit would otherwise leave them empty)."""
    marker = f"_cat_of_{keys[0]}"
    if st.session_state.get(marker) not in (None, catalogue):
        for k, v in zip(keys, defaults):
            st.session_state[k] = v
    st.session_state[marker] = catalogue


def runs_picker(catalogue: str, group: Sequence[RunInfo], key: str, label: str = "Runs",
                default: Sequence[RunInfo] | None = None, help: str | None = None) -> list[RunInfo]:
    """A multiselect over the runs of one catalogue (by run id, in the URL); returns the chosen runs."""
    by_id = {r.run_id: r for r in group}
    chosen_default = [r.run_id for r in (default if default is not None else group)]
    _reset_on_change(catalogue, [key], [chosen_default])
    ids = st.multiselect(label, list(by_id), default=chosen_default, key=key, bind="query-params", help=help)
    unfit_note(group)
    return [by_id[i] for i in ids if i in by_id]


def run_select(catalogue: str, group: Sequence[RunInfo], key: str, label: str = "Run",
               default: RunInfo | None = None, where=None) -> RunInfo:
    """A selectbox over the runs of one catalogue (by run id, in the URL); returns the chosen run."""
    where = where if where is not None else st
    ids = [r.run_id for r in group]
    index = ids.index(default.run_id) if default is not None and default.run_id in ids else 0
    _reset_on_change(catalogue, [key], [ids[index]])
    choice = where.selectbox(label, ids, index=index, key=key, bind="query-params")
    run = group[ids.index(choice)]
    if why := health_of(run):
        where.caption(f"⚠ {md(why)}")
    return run


def locate_link(run: RunInfo, item_ids: Sequence[str], what: str, scope: str | None = None,
                label: str = "Show on the map") -> None:
    """A link that opens the Embeddings map of ``run`` (its catalogue and run chosen) with ``item_ids`` ringed
    (the first ``MAX_FOCUS``).

    ``what`` (catalogue text, shown escaped there) says what was located, e.g. ``colour = Blue``; ``scope``
    (``test`` or ``all``) picks the map of the test split or of the whole catalogue (None: the page's own).
    """
    ids = [str(i) for i in item_ids][:MAX_FOCUS]
    params = {CATALOGUE_KEY: catalogues.catalogue_id(run.config).key, "emb_run": run.run_id, FOCUS: ids,
              FOCUS_LABEL: str(what)[:200]}
    if scope in ("test", "all"):
        params["emb_scope"] = scope
    st.page_link("pages/embeddings.py", label=label, icon=":material/location_on:", query_params=params,
                 disabled=not ids)


def focus_from_url() -> tuple[list[str], str]:
    """The item ids (untrusted: the map keeps only ids it shows) and the label a link asked to locate."""
    ids = [str(x)[:500] for x in st.query_params.get_all(FOCUS)][:MAX_FOCUS]
    return ids, str(st.query_params.get(FOCUS_LABEL, ""))[:200]


def clear_focus() -> None:
    for k in (FOCUS, FOCUS_LABEL):
        if k in st.query_params:
            del st.query_params[k]
