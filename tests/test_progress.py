"""Truthful progress (issue 21 §5): every phase of a training run that takes more than a few seconds reports its
own progress and time left, a cached phase says so, and no line shows a count past its total or a negative
time. The statuses come from the real trainer (cmpm-mobilenet: its backbone is distilled first, offline); the
sidebar's panel and Home's list of young runs are drawn from them with AppTest."""
from __future__ import annotations

import json
import os
import re
import socket
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from conftest import TINY_SIZE

TIMEOUT = 60


def _panel_script() -> None:
    from xmodal.dashboard import sidebar
    sidebar.progress_panel()


def _pending_script() -> None:
    from xmodal.dashboard import catalogues, ui
    ui.pending_panel(catalogues.pending_runs())


def _lines(at: AppTest) -> list[str]:
    """The text of every progress bar and caption the script drew, as the browser shows it (escapes undone)."""
    out = [p.proto.text for p in at.get("progress")] + [c.value for c in at.caption] + [m.value for m in at.markdown]
    return [re.sub(r"\\(.)", r"\1", v).replace("\u2060", "") for v in out]


def _show(snapshot: dict, root: Path, name: str = "young-run", script=_panel_script) -> list[str]:
    """Draw ``script`` over a checkpoints folder holding one run whose status.json is ``snapshot``."""
    run = root / name
    run.mkdir(parents=True, exist_ok=True)
    (run / "status.json").write_text(json.dumps({**snapshot, "pid": os.getpid(), "host": socket.gethostname()}))
    at = AppTest.from_function(script, default_timeout=TIMEOUT).run()
    assert not at.exception, [e.value for e in at.exception]
    return _lines(at)


class _Recorder:
    """Every status.json written, and the one on disk at chosen moments."""

    def __init__(self):
        self.written: list[dict] = []
        self.during_distillation: list[dict] = []


@pytest.fixture
def recorded(tiny_catalogue, tmp_path, monkeypatch):
    """Train cmpm-mobilenet twice on the tiny catalogue with a fresh cache, launched as the dashboard launches
    (the run folder made first, its status naming the trainer's pid; no launch.json, like a queue's run)."""
    import xmodal.image.distill as distill_mod
    import xmodal.runs as runs_mod
    from xmodal.training.cli import main
    monkeypatch.setenv("XMODAL_CACHE", str(tmp_path / "cache"))  # nothing cached: distil and extract
    try:  # a status on every step of this tiny run (a real one writes at most once a second)
        from xmodal.training.status import StatusReporter
        monkeypatch.setattr(StatusReporter.__init__, "__defaults__", (True, 0.0))
    except ImportError:  # a trainer without a reporter: what it writes is recorded all the same
        pass
    recorders = {}
    real_write = runs_mod.atomic_write_json

    def write(path, obj):
        if Path(path).name == "status.json" and current:
            recorders[current[0]].written.append(dict(obj))
        return real_write(path, obj)
    monkeypatch.setattr(runs_mod, "atomic_write_json", write)
    real_batches = distill_mod.decoded_batches

    def batches(*a, **k):  # called at the start of each distillation epoch: what the dashboard reads then
        status = json.loads((out / current[0] / "status.json").read_text())
        recorders[current[0]].during_distillation.append(status)
        return real_batches(*a, **k)
    monkeypatch.setattr(distill_mod, "decoded_batches", batches)
    out = tmp_path / "runs"
    current: list[str] = []
    for run_id in ("first", "second"):
        (out / run_id).mkdir(parents=True)
        runs_mod.write_status(out / run_id, "running", phase="starting", model="cmpm-mobilenet")
        current[:] = [run_id]
        recorders[run_id] = _Recorder()
        assert main(["--model", "cmpm-mobilenet", "--data", str(tiny_catalogue), "--epochs", "2", "--batch-size",
                     "16", "--out", str(out), "--run-id", run_id, *TINY_SIZE]) == 0
    current.clear()
    return recorders


@pytest.mark.slow
def test_distillation_reports_its_steps_and_time_left(recorded, tmp_path, monkeypatch):
    """cmpm-mobilenet's distillation (minutes on a real catalogue) showed "building the model", an empty bar,
    no time left, and "(? on ?)" for the model and catalogue of a queued run."""
    seen = recorded["first"].during_distillation
    assert len(seen) >= 2, seen
    midway = seen[-1]  # the last epoch's start: steps of the first ones are done
    root = tmp_path / "ckpt"
    monkeypatch.setenv("XMODAL_CHECKPOINTS", str(root))
    lines = _show(midway, root)
    line = next(t for t in lines if "young-run" in t)
    assert "distil" in line and "%" in line and " left" in line and "building the model" not in line, line
    young = _show(midway, root, script=_pending_script)  # Home's list of runs too young for a config
    line = next(t for t in young if "young-run" in t)
    assert "cmpm-mobilenet on " in line and "(? on ?)" not in line and "on ?)" not in line, line
    assert "%" in line and "? left" not in line, line


@pytest.mark.slow
def test_every_long_phase_reports_progress_or_says_it_is_cached(recorded, tmp_path, monkeypatch):
    """Each running status the trainer wrote draws as a bar with its time left, a count-down of a foreseen
    length, or words saying the phase reads a cache; a second run over the same cache never "extracts"."""
    from xmodal.dashboard.jobs.training import phase_progress
    root = tmp_path / "ckpt"
    monkeypatch.setenv("XMODAL_CHECKPOINTS", str(root))
    for run_id, rec in recorded.items():
        phases = [s for s in rec.written if s.get("state") == "running"]
        names = list(dict.fromkeys(s["phase"] for s in phases))
        assert any("checking the catalogue" in n for n in names), names
        for status in phases:
            if status["phase"] in ("starting", "building the model", "starting the epochs"):
                continue  # quick steps: their words alone
            run = root / run_id
            run.mkdir(parents=True, exist_ok=True)
            (run / "status.json").write_text(json.dumps(status))
            p = phase_progress(run, status, now=status["updated"])  # as drawn when it was written
            assert p is not None and (p.fraction is not None or "cached" in p.text or status.get("bar")), status
            if p.fraction is not None:
                assert 0.0 <= p.fraction <= 1.0, status
        if run_id == "second":  # features and the distilled start are cached now
            assert not any("extracting" in n for n in names), names
            assert sum("cached" in n for n in names) >= 2, names


def test_counts_and_time_left_stay_within_bounds(tmp_path, monkeypatch):
    """A task advanced past its total read "18,292/10,100" with a negative time left; a run whose estimate was
    passed read "-30s left"."""
    from xmodal.dashboard.jobs import tasks
    from xmodal.runs import atomic_write_json
    root = tmp_path / "ckpt"
    monkeypatch.setenv("XMODAL_CHECKPOINTS", str(root))
    lines = _show({"state": "running", "phase": "training", "epoch": 2, "epochs": 2, "step": 12,
                   "steps_per_epoch": 10, "loss": 0.5, "eta_s": -30.0, "updated": time.time()}, root)
    line = next(t for t in lines if "young-run" in t)
    assert "-" not in line.split("loss")[1] and "12/10" not in line, line
    # a queue preparing the pages: its map task was advanced past its total
    run = root / "young-run"
    progress = tasks.Progress(run, "map", every_s=0)
    progress.phase("ranking each item's true match", total=10_100)
    progress.advance(18_292)
    (root / ".queues").mkdir()
    atomic_write_json(root / ".queues" / "q.json", {
        "id": "q", "name": "demo", "root": str(root), "state": "running", "host": socket.gethostname(),
        "pid": os.getpid(), "phase": "preparing the embedding maps",
        "jobs": [{"model": "cmpm-mobilenet", "run_id": "young-run", "state": "finished"}]})
    (run / "status.json").write_text(json.dumps({"state": "finished", "updated": time.time()}))
    at = AppTest.from_function(_panel_script, default_timeout=TIMEOUT).run()
    assert not at.exception, [e.value for e in at.exception]
    queue = next(t for t in _lines(at) if "Queue" in t)
    assert "10,100/10,100" in queue and "18,292" not in queue and "-" not in queue.split("10,100/10,100")[1], queue


def test_a_queue_step_reports_its_own_count_and_time_left(tmp_path):
    """Added by the issue 21 audit: the queue's embedding and map steps (tasks.Progress) say items done of their
    total and a time left measured from their own pace, never '?' once an item is through."""
    from xmodal.dashboard.jobs import tasks
    progress = tasks.Progress(tmp_path, "embeddings", every_s=0)
    progress.phase("embedding the catalogue's photos", total=10_100)
    progress.advance(2_525)
    rec = json.loads(tasks.task_file(tmp_path, "embeddings").read_text())
    line, fraction = tasks.describe(rec, now=rec["updated"])
    assert re.fullmatch(r"embedding the catalogue's photos: 2,525/10,100, (\d+h)?(\d+m)?\d+s left", line), line
    assert fraction == pytest.approx(0.25)
    later, _ = tasks.describe(rec, now=rec["updated"] + 10 * 3600)
    assert later.endswith(", 0s left"), later  # an estimate passed: zero, never negative



def _sidebar_script():
    from xmodal.dashboard import sidebar
    sidebar.render()


def test_a_new_session_polls_fast_only_while_something_runs(tmp_path, monkeypatch):
    """The sidebar's progress fragment polls every BUSY_POLL_S while a run goes on, else every IDLE_POLL_S; a new
    session used to start at the busy rate until its next full rerun (twenty idle visitors: ten fragment runs a
    second on the server)."""
    import streamlit as st
    from xmodal.dashboard import sidebar
    polls = []
    monkeypatch.setattr(st, "fragment", lambda fn, run_every=None: polls.append(run_every) or fn)
    root = tmp_path / "ckpt"
    root.mkdir()
    monkeypatch.setenv("XMODAL_CHECKPOINTS", str(root))
    assert not sidebar.anything_running()
    at = AppTest.from_function(_sidebar_script, default_timeout=TIMEOUT).run()
    assert not at.exception and polls == [sidebar.IDLE_POLL_S]
    run = root / "busy-run"
    run.mkdir()
    (run / "status.json").write_text(json.dumps({"state": "running", "phase": "training", "updated": time.time()}))
    assert sidebar.anything_running()
    AppTest.from_function(_sidebar_script, default_timeout=TIMEOUT).run()
    assert polls == [sidebar.IDLE_POLL_S, sidebar.BUSY_POLL_S]
