"""The xmodal dashboard: ``streamlit run dashboard.py``.

This entry point holds the Home page (the catalogue in use, the runs table, one-click demo training),
draws the sidebar shared by every page, and routes to the pages in ``pages/``. Pages only read widgets,
call ``xmodal`` and draw; the logic lives in ``xmodal.dashboard``.
"""
from __future__ import annotations

import numpy as np
import streamlit as st

# None of these imports PyTorch (a test keeps it so): Home and the sidebar draw at once on a fresh server.
# PyTorch then loads in the background (state.warm_pytorch); a page that needs a model before it is done
# waits under a spinner.
from xmodal.dashboard import analysis, catalogues, checks, manage, pickers, runmeta, sidebar, sockets, state, ui
from xmodal.dashboard.jobs import training as jobs
from xmodal.dashboard.escape import md
from xmodal.data import make_splits
from xmodal.runs import list_runs

# An emoji favicon is drawn by the browser from a data: URL; a :material/...: one is fetched from Google's servers.
st.set_page_config(page_title="xmodal", page_icon="👗", layout="wide")
sockets.send_at_once()  # once per server: no 40 ms stall inside every rerun (xmodal.dashboard.sockets)
SAMPLES = 12


def _queue_progress() -> None:
    if not sidebar.progress_panel(key="home"):
        st.rerun(scope="app")  # the queue is done: show the filled-in page


def _quickstart(has_runs: bool) -> None:
    """One click trains all five models on the demo catalogue, one after another, with progress."""
    queues = jobs.active_queues()
    if queues:
        st.subheader("Training the demo models", divider="blue")
        st.fragment(_queue_progress, run_every=2)()
        return
    box = st.container(border=True) if not has_runs else st.expander("Train all five demo models again")
    with box:
        if not has_runs:
            st.markdown("### No trained models yet\nTrain all five models on the built-in demo catalogue "
                        "(2000 synthetic products), one after another: about 2 minutes on two idle CPU cores "
                        "(longer on a busy machine). "
                        "Progress shows here and in the sidebar; every other page fills in as runs finish.")
        epochs = ", ".join(f"{m} {e}" for m, e in jobs.DEMO_EPOCHS.items())
        st.caption(f"Epochs: {epochs}. Device: {state.device_options()[0]}.")
        if st.button("Train all five models on the demo catalogue", type="primary", key="train_all",
                     icon=":material/rocket_launch:"):
            jobs.start_queue(jobs.demo_jobs(), name="demo", prepare=True)
            st.session_state["_busy"] = True
            st.rerun()


def _catalogue_section(spec: str) -> None:
    st.header("Catalogue", divider="gray")
    if checks.folder_problem(spec):  # the sidebar says what is wrong, beside the folder box
        st.info("No catalogue to show: the folder chosen in the sidebar cannot be used (see there).",
                icon=":material/info:")
        return
    try:
        cat = state.catalogue(spec)
        splits = make_splits(cat, seed=0)
    except checks.LOAD_ERRORS as err:  # one line saying what is wrong and what to do, never a traceback
        st.error(md(checks.load_problem(spec, err)), icon=":material/error:")
        return
    report = cat.report
    c = st.columns(6)
    c[0].metric("Products", f"{len(cat):,}")
    c[1].metric("Rows in captions.csv", f"{report.total_rows:,}")
    c[2].metric("Rows skipped", f"{sum(report.skipped.values()):,}")
    for col, name in zip(c[3:], ("train", "val", "test")):
        col.metric(f"{name} split", f"{len(splits[name]):,}")
    attrs = ", ".join(cat.attributes) or "none"
    st.caption(f"{md(spec)} → {md(cat.root)} · fingerprint {md(cat.fingerprint)} · attributes: {md(attrs)} · "
               "split sizes as training makes them with the default seed (or the csv's split column)")
    pick = np.random.default_rng(0).choice(len(cat), min(SAMPLES, len(cat)), replace=False)
    ui.product_grid([str(cat.image_path(int(i))) for i in pick], [cat.captions[int(i)] for i in pick])
    if report.skipped:
        st.warning(f"The loader skipped {sum(report.skipped.values())} of {report.total_rows} rows:",
                   icon=":material/warning:")
        advice = getattr(report, "advice", {})  # what to do about each reason, where the loader says
        st.dataframe([{"reason": r, "rows": n, "examples": "; ".join(report.examples.get(r, [])),
                       "what to do": advice.get(r, "")} for r, n in sorted(report.skipped.items())],
                     hide_index=True)  # dataframe cells are plain text: the examples quote the csv
    else:
        st.success("Every row of captions.csv is usable.", icon=":material/check_circle:")


# The runs table: what matters first (recall), the rest after it; short labels, so it fits a laptop screen.
RUN_COLUMNS = ["run", "model", "status", "test t2i R@1", "test t2i R@10", "test i2t R@1", "test i2t R@10",
               "health", "best val rsum", "epochs", "tags", "backbone", "held by", "error"]


HEALTH_HELP = "ok, or why Compare leaves a run out unasked: collapsed (the Training alarm, or recall near chance), ..."


def _runs_table(runs: list, key: str) -> None:
    table = analysis.runs_table(runs)
    table["health"] = [pickers.health_of(r) or "ok" for r in runs]  # collapsed runs say so beside their numbers
    table["tags"] = [", ".join(runmeta.read_meta(r.path)["tags"]) for r in runs]
    shown = [c for c in RUN_COLUMNS if c in table and (c not in ("held by", "error", "tags") or table[c].any())]
    recall = {c: st.column_config.NumberColumn(c.replace("test ", ""), format="%.1f", width=60,
                                               help=f"{c} (%), caption-level") for c in shown if c.startswith("test")}
    st.dataframe(table, hide_index=True, key=f"runs_table_{key}", column_order=shown,
                 column_config={**recall, "run": st.column_config.TextColumn(width="medium", pinned=True),
                                "best val rsum": st.column_config.NumberColumn("val rsum", format="%.1f", width=70),
                                "epochs": st.column_config.TextColumn(width=60),
                                "health": st.column_config.TextColumn(width="small", help=HEALTH_HELP),
                                "status": st.column_config.TextColumn(width=80)})
    for r in runs:
        if r.status.get("state") == "failed":
            ui.show_failure(r.path, r.status, compact=True)


def _runs_section(runs: list, pending: list) -> None:
    st.header("Runs", divider="gray")
    if pending:
        st.caption("Launched, not training yet (the first run on a catalogue extracts its image features once):")
        ui.pending_panel(pending)
    if not runs:
        if not pending:
            st.caption("No run folders yet in the checkpoints folder.")
        return
    hidden = [r for r in runs if runmeta.read_meta(r.path)["hidden"]]
    show_hidden = bool(hidden) and st.toggle(f"Show {len(hidden)} hidden run(s)", key="home_hidden")
    shown = [r for r in runs if show_hidden or r not in hidden]
    groups = list(catalogues.group_runs(shown).items())
    if groups:  # the sidebar's catalogue first, as every page's picker does
        groups.insert(0, groups.pop(pickers.sidebar_match(dict(groups))))
    for key, group in groups:
        st.markdown(f"**{md(catalogues.describe(group))}**")
        _runs_table(group, key)
    st.caption("Recall (%) is caption-level (items with identical titles all count) on the test split of each "
               "run's own catalogue, from the weights with the best validation rsum. Runs of different catalogues "
               "are never compared: each has its own table. Details: **Compare**.")
    with st.expander("Manage a run: notes, tags, hide, resume, delete", icon=":material/edit_note:"):
        manage.run_manager(runs)


def home() -> None:
    """The Home page."""
    st.title("xmodal · product photos ⇄ product titles")
    st.caption("Cross-modal fashion retrieval: one embedding space for photos and titles. Train from the "
               "sidebar; then **Training** shows the curves, **Compare** the models, **Embeddings** the joint "
               "space and **Search** answers live queries.")
    runs = list_runs()
    _quickstart(has_runs=any(r.best for r in runs))
    _runs_section(runs, catalogues.pending_runs())  # first: it needs no catalogue loading, so it paints at once
    _catalogue_section(state.current_catalogue())


page = st.navigation([
    st.Page(home, title="Home", icon=":material/home:", default=True),
    st.Page("pages/training.py", title="Training", icon=":material/monitoring:"),
    st.Page("pages/compare.py", title="Compare", icon=":material/leaderboard:"),
    st.Page("pages/embeddings.py", title="Embeddings", icon=":material/scatter_plot:"),
    st.Page("pages/search.py", title="Search", icon=":material/search:"),
])
st.session_state["_app_ready"] = True
if wanted := st.session_state.pop("_wanted_page", None):  # a page opened by URL before the app was set up
    st.switch_page(wanted)
st.session_state[sidebar.FULL_RUN] = True
try:
    sidebar.render()
    page.run()
finally:  # also when the page stops early (st.stop) or reruns
    st.session_state[sidebar.FULL_RUN] = False
state.warm_pytorch()  # the page has drawn: load PyTorch in the background for the pages that need a model
