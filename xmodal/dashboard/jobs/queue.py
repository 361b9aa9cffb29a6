"""``python -m xmodal.dashboard.jobs.queue QUEUE.json``: train the queue's jobs one after another.

Started detached by ``xmodal.dashboard.jobs.training.start_queue``. Each job runs as its own child, ``python -m
xmodal.training.cli`` forked from this process once it has imported PyTorch (``warm.py``; a subprocess where
forking is not safe), with output in ``<run>/train.log``; the queue file records each job's
state (pending, running, finished, failed, stopped, cancelled). SIGTERM stops the current run cleanly
and cancels the rest. One run at a time keeps two CPU cores from being oversubscribed. With
``"prepare": true`` it then embeds each finished run's gallery and computes its map (both cached in the
run folder), so the Compare, Embeddings and Search pages open fast on first visit.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from ...runs import atomic_write_json, read_json, read_status, write_status
from ..maps import embeds, projection
from . import tasks, warm
from .training import LOG_NAME, TrainJob

FIELDS = ("model", "data", "epochs", "batch_size", "lr", "finetune", "device", "run_id")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m xmodal.dashboard.jobs.queue QUEUE.json", file=sys.stderr)
        return 2
    path = Path(argv[0])
    queue = read_json(path)
    if not queue:
        print(f"error: {path} is not a queue file", file=sys.stderr)
        return 2
    root = Path(queue["root"])
    queue.update(pid=os.getpid(), host=socket.gethostname(), state="running")
    atomic_write_json(path, queue)

    cancelled: list[bool] = []
    child: list[subprocess.Popen] = []

    def on_term(*_) -> None:
        cancelled.append(True)
        if child and child[0].poll() is None:
            child[0].send_signal(signal.SIGTERM)  # the trainer stops cleanly and records "stopped"

    signal.signal(signal.SIGTERM, on_term)
    warm.preload([j["data"] for j in queue["jobs"]])  # imported once for every job; catalogues checked once
    for job_rec in queue["jobs"]:
        if cancelled:
            job_rec["state"] = "cancelled"
            atomic_write_json(path, queue)
            continue
        job = TrainJob(**{k: job_rec[k] for k in FIELDS})
        run_dir = root / job.run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        proc = warm.start(job.command(root), run_dir / LOG_NAME)  # forked from this process: no re-import
        child[:] = [proc]
        if not (run_dir / "status.json").exists():
            write_status(run_dir, "running", pid=proc.pid, phase="starting", model=job.model)
        job_rec.update(state="running", started=time.time())
        atomic_write_json(path, queue)
        if cancelled:  # SIGTERM arrived between the check and the launch
            proc.send_signal(signal.SIGTERM)
        code = proc.wait()
        state = read_status(run_dir).get("state")
        if state not in ("finished", "failed", "stopped"):
            state = "finished" if code == 0 else "failed"
        job_rec.update(state=state, returncode=code, ended=time.time())
        atomic_write_json(path, queue)
    if queue.get("prepare") and not cancelled:
        _prepare(path, queue, root, cancelled, child)
    queue["state"] = "cancelled" if cancelled else "finished"
    queue["ended"] = time.time()
    atomic_write_json(path, queue)
    return 0


def _prepare(path: Path, queue: dict, root: Path, cancelled: list, child: list) -> None:
    """Embed each finished run's catalogue, then map its test split (one process each for all the runs:
    PyTorch loads once, numba compiles once), so the Compare, Embeddings and Search pages open fast. The
    pages see these as their own background tasks (``xmodal.dashboard.jobs.tasks``) and wait for them."""
    runs = [root / j["run_id"] for j in queue["jobs"] if j["state"] == "finished"]
    settings = projection.MapSettings()
    for phase, name, argv in (
            ("embedding the galleries", embeds.TASK, ["-m", "xmodal.dashboard.maps.embeds", *map(str, runs)]),
            ("preparing the embedding maps", projection.task_name(settings),
             ["-m", "xmodal.dashboard.maps.projection", *map(str, runs), "--method", settings.method])):
        if cancelled or not runs:
            return
        queue["phase"] = phase
        atomic_write_json(path, queue)
        proc = tasks.start(runs, name, argv, fork=True)
        if proc is None:  # a page started the same work meanwhile: it finishes it
            continue
        child[:] = [proc]
        proc.wait()
    queue.pop("phase", None)


if __name__ == "__main__":
    sys.exit(main())
