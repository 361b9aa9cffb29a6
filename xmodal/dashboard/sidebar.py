"""The sidebar on every page: the catalogue picker, the training form and live progress of runs."""
from __future__ import annotations

import os
import time
from pathlib import Path

import streamlit as st

from ..data import DEMO, make_splits
from ..data.importers import IMPORTERS
from ..data.writing import TargetExists, fresh_folder
from ..paths import cache_dir, checkpoints_dir
from . import analysis, catalogues, checks, state, ui
from .jobs import tasks, training as jobs
from .escape import md

SOURCES = ("demo", "folder", "import")
EXAMPLE_FOLDER = "../shared/datasets/myntra"
IDLE_POLL_S, BUSY_POLL_S = 15, 2
DATA_ENV = "XMODAL_DASHBOARD_DATA"  # optional default catalogue for new sessions (a folder, or "demo")


def _catalogue_picker() -> str:
    """Widgets choosing the catalogue; returns its spec (``demo`` or a folder) and stores it in session state."""
    default = os.environ.get(DATA_ENV, "").strip()
    if default and "cat_source" not in st.session_state:  # the server's default catalogue, once per session
        st.session_state["cat_source"] = "demo" if default == "demo" else "folder"
        st.session_state["cat_folder"] = "" if default == "demo" else default
    if "_imported" in st.session_state:  # set by an import on the last run, before the widgets exist
        st.session_state["cat_source"] = "folder"
        st.session_state["cat_folder"] = st.session_state.pop("_imported")
    source = st.radio("Catalogue", SOURCES, key="cat_source", horizontal=True,
                      help="demo: 2000 synthetic products, made on first use; folder: a catalogue folder "
                           "(captions.csv + images); import: convert a Kaggle or research-layout folder")
    spec = "demo"
    if source == "folder":
        folder = st.text_input("Catalogue folder", key="cat_folder", placeholder=EXAMPLE_FOLDER,
                               help="a folder holding captions.csv (columns image, caption) and its images")
        if folder.strip():
            spec = folder.strip()
            if problem := checks.folder_problem(spec):
                st.error(md(problem), icon=":material/error:")
        else:
            st.caption(f"e.g. `{EXAMPLE_FOLDER}`; the demo is used until you give one")
    elif source == "import":
        _import_form()
    st.session_state["catalogue"] = spec
    return spec


def _import_form() -> None:
    layout = st.selectbox("Layout", sorted(IMPORTERS), key="imp_layout",
                          help="kaggle: styles.csv + images/<id>.jpg; research: images.csv + <id>.jpg")
    src = st.text_input("Folder to import", key="imp_src").strip()
    # a new folder by default, never the source: an import must not replace a catalogue the user made
    default_out = str(fresh_folder(cache_dir() / "imports" / (Path(src).name or "catalogue"))) if src else ""
    out = st.text_input("Write the catalogue to", key="imp_out", placeholder=default_out or "a new folder",
                        help="a new folder; left empty, the suggested new folder shown").strip() or default_out
    overwrite = st.checkbox("Replace a catalogue already in that folder", key="imp_overwrite",
                            help="never replaces a folder that holds other files")
    if st.button("Import", key="imp_go", disabled=not src):
        try:
            with st.spinner("Importing..."):
                res = IMPORTERS[layout](src, out, overwrite=overwrite,
                                        flag="the 'Replace a catalogue already in that folder' box")
        except checks.LOAD_ERRORS as err:
            todo = "" if isinstance(err, TargetExists) else " Check the folder and the layout, then import again."
            st.error(md(f"Import failed: {' '.join(str(err).split())}.{todo}"), icon=":material/error:")
            return
        dropped = ", ".join(f"{n} {why}" for why, n in res.dropped.items()) or "none"
        st.session_state["_imported"] = str(res.out_dir)
        st.session_state["_import_note"] = f"Imported {res.rows} rows into {res.out_dir} (dropped: {dropped})."
        st.rerun()
    st.caption("The demo is used until an import finishes.")


def _train_problem(spec: str) -> str | None:
    """Why a run on ``spec`` would die at once: Home's reason (the folder, then loading and splitting it)."""
    if problem := checks.folder_problem(spec):
        return problem
    if spec == DEMO:  # made on first use, always usable
        return None
    try:
        make_splits(state.catalogue(spec), seed=0)  # the cached catalogue Home shows; a split it cannot make
    except checks.LOAD_ERRORS as err:
        return checks.load_problem(spec, err)
    return None


DOUBLE_LAUNCH_S = 15  # an identical launch this soon after another is a double click, not a wish for two runs


def _recent_twin(job: "jobs.TrainJob") -> str | None:
    """The run folder of an identical launch in the last ``DOUBLE_LAUNCH_S`` seconds (any session), or None."""
    root = checkpoints_dir()
    if not root.is_dir():
        return None
    asked = {k: v for k, v in vars(job).items() if k != "run_id"}
    now = time.time()
    for run_dir in root.iterdir():
        rec = jobs.read_launch(run_dir) if run_dir.is_dir() else {}
        launched = rec.get("launched")
        if (isinstance(launched, (int, float)) and 0 <= now - launched <= DOUBLE_LAUNCH_S
                and all(rec.get(k) == v for k, v in asked.items())):
            return run_dir.name
    return None


def _training_form(spec: str) -> None:
    models = list(jobs.MODELS)  # xmodal.list_models() needs PyTorch; this constant does not
    # enter_to_submit=False: Enter in a number box must not launch a run; only the button does
    with st.form("train_form", border=False, enter_to_submit=False):
        model = st.selectbox("Model", models, index=models.index("cmpm-efficientnet"), key="tf_model")
        c1, c2 = st.columns(2)
        epochs = c1.number_input("Epochs", 1, 500, 8, key="tf_epochs")
        batch = c2.number_input("Batch size", 2, 4096, 128, step=16, key="tf_batch")
        lr = c1.number_input("Learning rate", 1e-6, 1.0, 1e-3, step=1e-4, format="%.4f", key="tf_lr")
        device = c2.selectbox("Device", state.device_options(), key="tf_device",
                              help="cuda is offered only when a CUDA GPU is visible")
        finetune = st.checkbox("Fine-tune the image backbone", key="tf_finetune",
                               help="train the CNN end to end (slow on CPU); otherwise its features are cached")
        start = st.form_submit_button("Start training", type="primary", width="stretch")
    if start:
        if problem := _train_problem(spec):
            st.error(md(f"Cannot train: {problem}"), icon=":material/error:")
            return
        job = jobs.TrainJob(model=model, data=spec, epochs=int(epochs), batch_size=int(batch), lr=float(lr),
                            finetune=bool(finetune), device=device)
        if twin := _recent_twin(job):
            st.warning(md(f"Not started: an identical run ({twin}) was launched {DOUBLE_LAUNCH_S} s ago or less. "
                          "Change a setting, or wait a few seconds, to start another."), icon=":material/block:")
            return
        try:
            run_dir = jobs.start_training(job)
        except OSError as err:
            st.error(md(f"Could not start training: {err}"), icon=":material/error:")
            return
        st.session_state["_busy"] = True
        st.toast(f"Started {md(run_dir.name)}", icon=":material/rocket_launch:")


def _queue_line(q: dict) -> tuple[str, float]:
    """A queue's line and bar: its jobs done, and in its last steps (embedding, maps) that step's own progress."""
    jobs_ = q.get("jobs") or []
    done = sum(j.get("state") not in ("pending", "running") for j in jobs_)
    now = next((j.get("model") for j in jobs_ if j.get("state") == "running"), None)
    text = f"Queue **{md(q.get('name', '?'))}**: {done}/{len(jobs_)} trained"
    if now is not None:
        return f"{text}, now {md(now)}", done / max(len(jobs_), 1)
    root = Path(str(q.get("root") or "."))
    records = [tasks.read(root / str(j.get("run_id")), f.stem) for j in jobs_ if j.get("state") == "finished"
               for f in sorted((root / str(j.get("run_id")) / tasks.TASK_DIR).glob("*.json"))]
    running = [r for r in records if r.get("state") in ("queued", "running")]
    if running:  # the step's own record: what it does, how far, the time left
        line, frac = tasks.describe(running[0])
        return f"{text}; {md(q.get('phase') or 'preparing the pages')}: {md(line)}", frac or 0.0
    return f"{text}, now {md(q.get('phase') or 'starting')}", done / max(len(jobs_), 1)


def _run_line(name: str, run_dir: Path, status: dict) -> tuple[str, float | None]:
    """A running run's line and bar fraction (None: nothing measures this phase, so no bar)."""
    if status.get("phase") == "training":
        epoch, epochs = status.get("epoch") or 0, status.get("epochs") or 0
        step, steps = status.get("step") or 0, status.get("steps_per_epoch") or 0
        step = min(step, steps) if steps else step
        frac = ((epoch - 1) + step / steps) / epochs if epoch and steps and epochs else 0.0
        eta = status.get("eta_s")
        if isinstance(eta, (int, float)):
            eta = max(eta - max(time.time() - float(status.get("updated") or time.time()), 0.0), 0.0)
        return (f"**{md(name)}**: epoch {epoch}/{epochs}, step {step}/{steps}, loss {status.get('loss', 0):.4g}, "
                f"{analysis.format_eta(eta)} left"), min(max(frac, 0.0), 1.0)
    p = jobs.phase_progress(run_dir, status)
    if p is None:
        return f"**{md(name)}**: {md(status.get('phase') or 'starting')}", None
    text = f"**{md(name)}**: {md(p.text)}"
    if p.fraction is not None:
        text += f" · {p.fraction:.0%}" + (f", {md(p.left)} left" if p.left else "")
    return text, p.fraction


def _busy(queues: list, runs: list[tuple[Path, dict]]) -> bool:
    return bool(queues) or any(s.get("state") == "running" for _, s in runs)


def anything_running() -> bool:
    """Whether a queue or a run is going on now (what ``progress_panel`` returns, without drawing it)."""
    return _busy(jobs.active_queues(), jobs.recent_runs())


def progress_panel(key: str = "sb") -> bool:
    """Queues and runs that are going on (or ended in the last half hour), with stop buttons. Each phase of a
    run shows its own progress and time left (``jobs.phase_progress``), or says it reads a cache.

    Returns:
        Whether anything is still running.
    """
    queues = jobs.active_queues()
    for path, q in queues:
        text, frac = _queue_line(q)
        st.progress(min(max(frac, 0.0), 1.0), text=text)
        if st.button("Cancel queue", key=f"{key}-cq-{path.stem}", icon=":material/cancel:"):
            jobs.stop_queue(path)
            st.toast("Cancelling the queue: the current run stops after its step")
    runs = jobs.recent_runs()
    for run_dir, status in runs:
        name, state_ = run_dir.name, status.get("state")
        if state_ == "running":
            text, frac = _run_line(name, run_dir, status)
            if frac is None:  # a phase nothing measures (or a cache being read): its words, no empty bar
                st.caption(text)
            else:
                st.progress(min(max(frac, 0.0), 1.0), text=text)
            if holder := analysis.lock_holder(run_dir):
                st.caption(f"lock held by {md(holder)}")
            if st.button("Stop", key=f"{key}-stop-{name}", icon=":material/stop_circle:"):
                jobs.stop_run(run_dir)
                st.toast(f"Stopping {md(name)} (it keeps its last completed epoch)")
        elif state_ == "failed":
            ui.show_failure(run_dir, status, compact=True)
        elif state_ == "stopped":
            st.info(f"**{md(name)}** stopped. {md(status.get('message', ''))}", icon=":material/stop_circle:")
        elif state_ == "finished":
            st.caption(f":material/check_circle: **{md(name)}** finished")
    busy = _busy(queues, runs)
    if not runs and not queues:
        st.caption("No runs in progress.")
    return busy


FULL_RUN = "_full_run"  # True while dashboard.py runs the whole app (set there), False between runs


def _live_progress() -> None:
    busy = progress_panel()
    was_busy = st.session_state.get("_busy", False)
    st.session_state["_busy"] = busy
    signature = catalogues.runs_signature()
    seen = st.session_state.get("_runs_signature")
    st.session_state["_runs_signature"] = signature
    # A run appeared, finished, failed, got new best weights or test metrics (also between two runs of a
    # queue, when "busy" never drops): rerun the page so that it shows it, without the user navigating.
    # Only on the fragment's own timer: in a full run the page reads the runs anyway, and a rerun from here
    # would throw away the click that started it.
    if not st.session_state.get(FULL_RUN) and ((was_busy and not busy) or (seen is not None and seen != signature)):
        st.rerun(scope="app")


def render() -> str:
    """Draw the sidebar; returns the catalogue spec in use."""
    with st.sidebar:
        spec = _catalogue_picker()
        if note := st.session_state.pop("_import_note", None):
            st.success(md(note))
        with st.expander("Train a model", expanded=False, icon=":material/model_training:"):
            _training_form(spec)
        st.subheader("Runs in progress", divider="gray")
        if "_busy" not in st.session_state:  # a new session: poll fast only when something runs now
            st.session_state["_busy"] = anything_running()
        poll = BUSY_POLL_S if st.session_state["_busy"] else IDLE_POLL_S
        st.fragment(_live_progress, run_every=poll)()
    return spec
