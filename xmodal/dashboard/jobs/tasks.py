"""Heavy dashboard work (embedding a gallery, computing a map) in detached subprocesses that report progress.

A task is a ``python -m MODULE ARGS`` child started by ``start``; it records where it stands in
``<folder>/.tasks/<name>.json`` through ``Progress`` (state, phase, items done of total, seconds left) and
writes its output to ``<folder>/.tasks/<name>.log``. A page polls ``read`` from an
``st.fragment(run_every=...)`` and fills in when the task has finished, so no page script ever blocks on the
work. A task whose process has died reads as ``failed``; a phase that only a progress bar in the log
measures (the backbone's one-time feature extraction) takes its fraction and time left from that bar.
"""
from __future__ import annotations

import math
import os
import socket
import sys
import time
from pathlib import Path

from ...runs import atomic_write_json, pid_alive, read_json
from . import warm
from .training import format_seconds, log_progress, reap, spawn

TASK_DIR = ".tasks"
STATES = ("queued", "running", "finished", "failed")


def task_file(folder: Path, name: str) -> Path:
    """Where task ``name`` of ``folder`` (a run folder) records its state."""
    return Path(folder) / TASK_DIR / f"{name}.json"


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    reap()
    return pid_alive(pid)


def read(folder: Path, name: str) -> dict:
    """The task's record (``{}`` when it never ran here): ``state``, ``phase``, ``done``, ``total``,
    ``eta_s``, ``error``. A queued or running task whose process is gone on this host reads as failed."""
    rec = read_json(task_file(folder, name), default={})
    if not isinstance(rec, dict) or rec.get("state") not in STATES:
        return {}
    if rec["state"] in ("queued", "running") and rec.get("host") == socket.gethostname() and not _alive(rec.get("pid")):
        rec = {**rec, "state": "failed", "error": rec.get("error") or "the background process ended without finishing"}
    if rec["state"] == "running" and not rec.get("total"):  # e.g. feature extraction: its progress bar says
        offset = rec.get("log_offset")  # only a bar written since the phase began is this phase's
        if not isinstance(offset, (int, float)) or isinstance(offset, bool):
            offset = None
        bar = log_progress(Path(folder), log=task_file(folder, name).with_suffix(".log"), offset=offset)
        if bar:
            rec = {**rec, "bar": bar[0], "fraction": bar[1], "left": bar[2]}
    return rec


def active(folder: Path, name: str) -> bool:
    """Whether the task is queued or running now."""
    return read(folder, name).get("state") in ("queued", "running")


def start(folders: list[Path], name_of: dict[str, str] | str, argv: list[str], fork: bool = False):
    """Run ``python ARGV`` detached for ``folders`` unless each one's task is already under way.

    Args:
        folders: the run folders the child works on; each gets a ``queued`` record at once (so a second page
            never starts the same work) that the child then takes over.
        name_of: the task name, or one per folder (by ``str(folder)``).
        argv: the child's arguments after the interpreter, e.g. ``["-m", "xmodal.dashboard.maps.embeds", DIR]``.
        fork: fork the child from this process (``warm.start``): only from the training queue's process.

    Returns:
        The child, or None when every folder's task was already queued or running (nothing was started).
    """
    names = {str(f): name_of if isinstance(name_of, str) else name_of[str(f)] for f in folders}
    todo = [f for f in folders if not active(f, names[str(f)])]
    if not todo:
        return None
    first = task_file(todo[0], names[str(todo[0])])
    first.parent.mkdir(parents=True, exist_ok=True)
    if fork:  # from the training queue: forked from its warm process (never from the server: threads)
        proc = warm.start([sys.executable, *argv], first.with_suffix(".log"))
    else:
        proc = spawn([sys.executable, *argv], first.with_suffix(".log"))
    for f in todo:
        path = task_file(f, names[str(f)])
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.is_file() or read(f, names[str(f)]).get("state") != "running":
            atomic_write_json(path, {"state": "queued", "pid": proc.pid, "host": socket.gethostname(),
                                     "phase": "waiting to start", "updated": time.time()})
    return proc


def mark_queued(folder: Path, name: str, pid: int, phase: str = "waiting for the training queue") -> None:
    """Record that process ``pid`` will run task ``name`` of ``folder`` (pages then wait for it)."""
    path = task_file(folder, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"state": "queued", "pid": pid, "host": socket.gethostname(), "phase": phase,
                             "updated": time.time()})


class Progress:
    """What a task child reports: ``phase`` starts a named step (with a count of items when it has one),
    ``advance`` moves it on and estimates the time left from the pace so far, ``finish``/``fail`` end it.

    Writes are atomic and at most every ``every_s`` seconds (a phase change is always written).
    """

    def __init__(self, folder: Path, name: str, every_s: float = 0.5):
        self.path = task_file(folder, name)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.every_s = every_s
        self.rec: dict = {"state": "running", "pid": os.getpid(), "host": socket.gethostname(),
                          "started": time.time(), "phase": "starting"}
        self._phase_start = time.time()
        self._written = 0.0
        self._write(force=True)

    def _write(self, force: bool = False) -> None:
        now = time.time()
        if force or now - self._written >= self.every_s:
            self.rec["updated"] = now
            atomic_write_json(self.path, self.rec)
            self._written = now

    def phase(self, text: str, total: int | None = None, eta_s: float | None = None) -> None:
        """Start a step: ``total`` items to go through (None: not counted), ``eta_s`` a guess of its length.
        The log's size now is kept, so that a progress bar of an earlier step is never read as this one's."""
        self._phase_start = time.time()
        log = self.path.with_suffix(".log")
        self.rec.update(phase=text, done=0, total=total, eta_s=None if eta_s is None else max(float(eta_s), 0.0),
                        phase_started=self._phase_start,
                        log_offset=log.stat().st_size if log.is_file() else None)
        self._write(force=True)

    def advance(self, done: int) -> None:
        """``done`` items of the phase's total are through (never more than the total); the time left follows
        from the pace so far."""
        total = self.rec.get("total") or 0
        done = min(max(int(done), 0), total) if total else max(int(done), 0)
        elapsed = time.time() - self._phase_start
        self.rec.update(done=done, eta_s=elapsed / done * (total - done) if done and total else None)
        self._write(force=done >= total)

    def finish(self, **fields) -> None:
        self.rec.update(state="finished", phase="done", eta_s=0, seconds=time.time() - self.rec["started"], **fields)
        self._write(force=True)

    def fail(self, err: BaseException | str) -> None:
        self.rec.update(state="failed", error=err if isinstance(err, str) else f"{type(err).__name__}: {err}")
        self._write(force=True)


def run_each(run_dirs: list[Path], name: str, work) -> int:
    """A task module's ``main``: ``work(run_dir, progress) -> output path`` for each run folder, its ``Progress``
    finished with the path or failed with the error (which the page shows); 1 if any failed, else 0."""
    failed = 0
    for run_dir in map(Path, run_dirs):
        progress = Progress(run_dir, name)
        try:
            path = work(run_dir, progress)
        except Exception as err:  # reported to the page through the task file
            progress.fail(err)
            print(f"error: {run_dir}: {err}", file=sys.stderr)
            failed += 1
            continue
        progress.finish(path=str(path))
        print(path)
    return 1 if failed else 0


def format_eta(seconds: float | None) -> str:
    """``1h02m``, ``3m05s``, ``42s``; ``?`` when unknown; never negative (``training.format_seconds``)."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    return format_seconds(seconds)


def _count(value: object) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def describe(rec: dict, now: float | None = None) -> tuple[str, float | None]:
    """A task record as (one line of plain text, fraction done or None): what it is doing and the time left.
    Counts never pass the total, a fraction never 100 % before the end, the time left never goes below zero."""
    if not rec:
        return "not started", None
    if rec.get("state") == "queued":
        return f"queued: {rec.get('phase') or 'waiting to start'}", 0.0
    if rec.get("state") == "failed":
        return f"failed: {rec.get('error') or 'unknown error'}", None
    if rec.get("state") == "finished":
        return "done", 1.0
    now = time.time() if now is None else now
    phase = rec.get("phase") or "working"
    total, done = _count(rec.get("total")), _count(rec.get("done")) or 0.0
    if total and total > 0:
        done = min(max(done, 0.0), total)
        eta = _count(rec.get("eta_s"))
        since = max(now - (_count(rec.get("updated")) or now), 0.0)
        left = format_eta(None if eta is None else max(eta - since, 0.0))
        return f"{phase}: {int(done):,}/{int(total):,}, {left} left", done / total
    if "fraction" in rec:
        frac = min(max(float(rec["fraction"]), 0.0), 1.0)
        return f"{phase} ({rec.get('bar')}): {frac:.0%}, {rec.get('left')} left", frac
    eta, started = _count(rec.get("eta_s")), _count(rec.get("phase_started"))
    if eta:
        elapsed = max(now - (started or _count(rec.get("updated")) or now), 0.0)
        if elapsed <= eta:
            return f"{phase}: about {format_eta(eta - elapsed)} left", None
        return f"{phase}: longer than the {format_eta(eta)} foreseen, {format_eta(elapsed)} so far", None
    if started:
        return f"{phase} ({format_eta(max(now - started, 0.0))} so far)", None
    return phase, None
