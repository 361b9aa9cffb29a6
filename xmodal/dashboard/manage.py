"""Home's run manager: notes and tags on a run, hide it, resume a stopped one, delete one (confirmed).

The library side is ``runmeta`` (files in the run folder) and ``jobs.resume_training``; this module only
draws the widgets. Notes, tags and run names are user or file text: widgets and dataframe cells show them
as plain text, Markdown gets them through ``escape.md``.
"""
from __future__ import annotations

from typing import Sequence

import streamlit as st

from ..runs import RunInfo
from . import analysis, runmeta, state
from .jobs import training as jobs
from .escape import md


def run_manager(runs: Sequence[RunInfo]) -> None:
    """Pick one run; edit its notes and tags, hide or show it, resume or delete it."""
    by_id = {r.run_id: r for r in runs}
    run_id = st.selectbox("Run", list(by_id), key="manage_run", bind="query-params")
    run = by_id[run_id]
    st.caption(f"{md(run.model)} on {md(analysis.catalogue_label(run.config))}, {md(run.status.get('state', '?'))}")
    meta = runmeta.read_meta(run.path)
    with st.form(f"meta_{run_id}", border=False):
        notes = st.text_area("Notes", value=meta["notes"], max_chars=runmeta.MAX_NOTES, key=f"notes_{run_id}")
        tags = st.text_input("Tags (comma-separated)", value=", ".join(meta["tags"]), key=f"tags_{run_id}")
        if st.form_submit_button("Save notes and tags", icon=":material/save:"):
            try:
                runmeta.write_meta(run.path, notes=notes, tags=tags)
            except (ValueError, OSError) as err:
                st.error(md(f"Not saved: {err}"), icon=":material/error:")
            else:
                st.toast("Saved", icon=":material/check:")
    c1, c2, c3 = st.columns(3)
    if c1.button("Show it again" if meta["hidden"] else "Hide it", key=f"hide_{run_id}",
                 icon=":material/visibility:" if meta["hidden"] else ":material/visibility_off:",
                 help="A hidden run stays on disk; it leaves the other pages' pickers until shown again"):
        runmeta.write_meta(run.path, hidden=not meta["hidden"])
        st.rerun()
    why_not = jobs.can_resume(run.path, run.status)
    if c2.button("Resume training", key=f"resume_{run_id}", icon=":material/play_arrow:", disabled=why_not is not None,
                 help=md(f"python -m xmodal.train --resume {run.path}" if why_not is None else f"Cannot: {why_not}")):
        try:
            jobs.resume_training(run.path)
        except (ValueError, OSError) as err:
            st.error(md(f"Could not resume: {err}"), icon=":material/error:")
        else:
            st.session_state["_busy"] = True
            st.toast(f"Resuming {md(run_id)}", icon=":material/play_arrow:")
    with c3:
        _delete(run)


def _delete(run: RunInfo) -> None:
    problem = runmeta.delete_problem(run.path)
    sure = st.checkbox("I want to delete this run and all its files", key=f"sure_{run.run_id}",
                       disabled=problem is not None, help=md(f"Cannot: {problem}") if problem else None)
    if st.button("Delete the run", key=f"delete_{run.run_id}", type="primary", icon=":material/delete:",
                 disabled=not sure or problem is not None):
        try:
            runmeta.delete_run(run.path)
        except (ValueError, OSError) as err:
            st.error(md(f"Not deleted: {err}"), icon=":material/error:")
            return
        state.clear_runs()
        st.toast(f"Deleted {md(run.run_id)}", icon=":material/delete:")
        st.rerun()
    if problem:
        st.caption(f"Cannot be deleted now: {md(problem)}")
