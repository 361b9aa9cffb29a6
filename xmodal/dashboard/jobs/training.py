"""Training jobs for the dashboard: launch ``python -m xmodal.train`` subprocesses, list and stop them.

Every launch gets its own run id (model, time and a random suffix), so several runs at once never
share a folder. The child writes its progress to ``<checkpoints>/<run-id>/status.json``; its output
goes to ``train.log`` in that folder. A queue (``<checkpoints>/.queues/<id>.json``, run by
``python -m xmodal.dashboard.jobs.queue``) trains several models one after another. Stopping sends
SIGTERM, which the trainer turns into a clean "stopped" state.
"""
from __future__ import annotations

import glob
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ...paths import checkpoints_dir
from ...runs import atomic_write_json, read_json, read_lock, read_status, write_status

# The registered models, in registration order: xmodal.list_models() without importing PyTorch (the registry
# imports the models), so the sidebar's form draws before torch has loaded. A test keeps the two equal.
MODELS = ("siamese", "corrnet", "cmpm-mobilenet", "cmpm-efficientnet", "infonce-efficientnet")
QUEUE_DIR = ".queues"
LOG_NAME = "train.log"
LAUNCH_NAME = "launch.json"
# The "train all five on the demo" quick path: small epoch counts so all five fit in ~10 min on 2 CPU cores.
DEMO_EPOCHS = {"siamese": 8, "corrnet": 8, "cmpm-mobilenet": 8, "cmpm-efficientnet": 8, "infonce-efficientnet": 8}
_CHILDREN: list[subprocess.Popen] = []  # launched by this server process; polled so none is left a zombie


@dataclass
class TrainJob:
    """One ``python -m xmodal.train`` invocation."""

    model: str  # registered model name
    data: str = "demo"  # catalogue folder or "demo"
    epochs: int | None = None  # None: the trainer's default
    batch_size: int = 128  # global batch
    lr: float = 1e-3  # peak learning rate
    finetune: bool = False  # train the backbone end to end
    device: str = "auto"  # auto, cpu or cuda
    run_id: str | None = None  # folder name; None: a fresh unique one

    def command(self, out: Path) -> list[str]:
        """The argv that trains this job into ``out/<run_id>``."""
        cmd = [sys.executable, "-m", "xmodal.train", "--model", self.model, "--data", self.data,
               "--batch-size", str(self.batch_size), "--lr", repr(float(self.lr)), "--device", self.device,
               "--out", str(out), "--run-id", str(self.run_id)]
        if self.epochs:
            cmd += ["--epochs", str(int(self.epochs))]
        if self.finetune:
            cmd.append("--finetune")
        return cmd


# Signs that a GPU driver is installed (NVIDIA; ROCm's /dev/kfd; WSL's /dev/dxg). Without any of them
# torch.cuda cannot find a device, so asking it (an import of PyTorch, which takes seconds) is skipped.
GPU_SIGNS = ("/proc/driver/nvidia/gpus/*", "/dev/nvidia[0-9]*", "/dev/kfd", "/dev/dxg")


def gpu_may_exist() -> bool:
    """Whether this machine shows any sign of a GPU driver (cheap: no PyTorch)."""
    return any(glob.glob(p) for p in GPU_SIGNS) or shutil.which("nvidia-smi") is not None


def device_options() -> list[str]:
    """``auto`` and ``cpu``, plus ``cuda`` only when a CUDA GPU is visible."""
    if not gpu_may_exist():
        return ["auto", "cpu"]
    import torch  # lazy: PyTorch, only where a GPU driver shows
    return ["auto", "cpu", "cuda"] if torch.cuda.is_available() else ["auto", "cpu"]


def unique_run_id(model: str) -> str:
    """``<model>-<YYYYmmdd-HHMMSS>-<4 hex>``: unique across launches from any number of sessions."""
    return f"{model}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def reap() -> None:
    """Collect children that have exited, so that their pids read as dead."""
    _CHILDREN[:] = [p for p in _CHILDREN if p.poll() is None]


def spawn(cmd: list[str], log_path: Path) -> subprocess.Popen:
    """Start ``cmd`` detached (its own session: it outlives the server), output appended to ``log_path``."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env, cwd=os.getcwd())
    _CHILDREN.append(proc)
    return proc


def start_training(job: TrainJob, root: Path | None = None) -> Path:
    """Launch ``job`` as a detached subprocess and return its run folder (status "running" at once)."""
    root = Path(root or checkpoints_dir()).resolve()
    job.run_id = job.run_id or unique_run_id(job.model)
    run_dir = root / job.run_id
    run_dir.mkdir(parents=True, exist_ok=False)
    write_launch(run_dir, job)
    proc = spawn(job.command(root), run_dir / LOG_NAME)
    if not (run_dir / "status.json").exists():  # visible before the child has imported torch; it overwrites this
        write_status(run_dir, "running", pid=proc.pid, phase="starting", model=job.model)
    return run_dir


def write_launch(run_dir: Path, job: TrainJob) -> None:
    """``launch.json``: what was asked for, so a run too young for a config.json still shows its model and
    catalogue (the trainer writes config.json only after the one-time feature extraction)."""
    atomic_write_json(Path(run_dir) / LAUNCH_NAME, {**vars(job), "launched": time.time()})


def read_launch(run_dir: Path) -> dict:
    """A run folder's ``launch.json`` (``{}`` when absent or not an object)."""
    rec = read_json(Path(run_dir) / LAUNCH_NAME, default={})
    return rec if isinstance(rec, dict) else {}


def can_resume(run_dir: Path, status: dict | None = None) -> str | None:
    """Why ``run_dir`` cannot be resumed now, or None when it can (stopped or failed, with a config, unlocked)."""
    run_dir = Path(run_dir)
    status = read_status(run_dir) if status is None else status
    if status.get("state") not in ("stopped", "failed"):
        return f"it is {status.get('state', 'unknown')}; only a stopped or failed run can be resumed"
    if not (run_dir / "config.json").is_file():
        return "it has no config.json (it stopped before training began): start a new run instead"
    if read_lock(run_dir):
        return "another process holds its lock"
    return None


def resume_training(run_dir: Path) -> subprocess.Popen:
    """Launch ``python -m xmodal.train --resume RUN_DIR`` detached, as the sidebar launches training.

    Raises:
        ValueError: the run cannot be resumed (``can_resume`` says why).
    """
    run_dir = Path(run_dir).resolve()
    if why := can_resume(run_dir):
        raise ValueError(f"{run_dir.name} cannot be resumed: {why}")
    proc = spawn([sys.executable, "-m", "xmodal.train", "--resume", str(run_dir)], run_dir / LOG_NAME)
    write_status(run_dir, "running", pid=proc.pid, phase="resuming")
    return proc


def stop_run(run_dir: Path) -> bool:
    """Ask a running run to stop (SIGTERM to its pid); False when it is not running here."""
    status = read_status(run_dir)
    pid = status.get("pid")
    if status.get("state") != "running" or status.get("host") != socket.gethostname():
        return False
    return _terminate(pid)


def _terminate(pid) -> bool:
    """SIGTERM to ``pid`` (a clean stop for trainers and queues); False when there is no such process."""
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    return True


def run_folders(root: Path | None = None) -> list[Path]:
    """Every folder under the checkpoints folder with a status.json (also runs too young for a config)."""
    root = Path(root or checkpoints_dir())
    if not root.is_dir():
        return []
    return sorted((d for d in root.iterdir() if d.is_dir() and (d / "status.json").is_file()),
                  key=lambda d: (d / "status.json").stat().st_mtime, reverse=True)


def recent_runs(root: Path | None = None, within_s: float = 1800.0) -> list[tuple[Path, dict]]:
    """(run folder, status) of runs that are running, or that ended less than ``within_s`` ago."""
    reap()
    now = time.time()
    out = []
    for d in run_folders(root):
        status = read_status(d)
        if status.get("state") == "running" or now - float(status.get("updated") or 0) < within_s:
            out.append((d, status))
    return out


_TQDM = re.compile(r"([A-Za-z][\w ]*?):\s+(\d+)%\|[^|]*\|\s*(\d+)/(\d+)\s*\[([\d:]+)<([\d:?]+)")


def log_progress(run_dir: Path, tail_bytes: int = 4096, log: Path | None = None) -> tuple[str, float, str] | None:
    """(what, fraction done, time left) of the last progress bar in a run's train.log (or ``log``), if any.

    Shows progress in phases that status.json only names, such as the one-time feature extraction.
    """
    path = Path(log) if log else Path(run_dir) / LOG_NAME
    try:
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - tail_bytes))
            text = f.read().decode(errors="replace")
    except FileNotFoundError:
        return None
    found = _TQDM.findall(text)
    if not found:
        return None
    what, _, done, total, _, left = found[-1]
    return what.strip(), int(done) / max(int(total), 1), left


def failure_detail(run_dir: Path, lines: int = 25) -> str:
    """The end of a failed run's traceback (error.log) or output (train.log), for display."""
    for name in ("error.log", LOG_NAME):
        path = Path(run_dir) / name
        if path.is_file():
            text = path.read_text(errors="replace").replace("\r", "\n")
            tail = [ln for ln in text.splitlines() if ln.strip()][-lines:]
            if tail:
                return "\n".join(tail)
    return "(no log was written)"


def start_queue(jobs: list[TrainJob], root: Path | None = None, name: str = "queue", prepare: bool = False) -> Path:
    """Train ``jobs`` one after another in a detached runner; returns the queue file.

    Args:
        prepare: afterwards, embed each finished run's gallery and map its test split (cached in the run).
    """
    root = Path(root or checkpoints_dir()).resolve()
    qdir = root / QUEUE_DIR
    qdir.mkdir(parents=True, exist_ok=True)
    qid = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    path = qdir / f"{qid}.json"
    for job in jobs:
        job.run_id = job.run_id or unique_run_id(job.model)
    atomic_write_json(path, {"id": qid, "name": name, "root": str(root), "created": time.time(), "state": "running",
                             "host": socket.gethostname(), "pid": None, "prepare": prepare,
                             "jobs": [{**vars(j), "state": "pending"} for j in jobs]})
    proc = spawn([sys.executable, "-m", "xmodal.dashboard.jobs.queue", str(path)], qdir / f"{qid}.log")
    queue = read_json(path)
    if queue.get("pid") is None:  # the runner records itself too; write it here so a stop works at once
        queue["pid"] = proc.pid
        atomic_write_json(path, queue)
    return path


def demo_jobs(data: str = "demo", device: str = "auto") -> list[TrainJob]:
    """The five models with the quick-path epoch counts."""
    return [TrainJob(model=m, data=data, epochs=DEMO_EPOCHS.get(m, 8), device=device) for m in MODELS]


def read_queue(path: Path) -> dict:
    """A queue file, with a dead runner read as ``failed``."""
    queue = read_json(path, default={}) or {}
    pid = queue.get("pid")
    if queue.get("state") == "running" and queue.get("host") == socket.gethostname() and isinstance(pid, int):
        reap()
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            queue["state"] = "failed"
    return queue


def active_queues(root: Path | None = None) -> list[tuple[Path, dict]]:
    """(queue file, queue) of queues still running."""
    qdir = Path(root or checkpoints_dir()) / QUEUE_DIR
    if not qdir.is_dir():
        return []
    out = [(p, read_queue(p)) for p in sorted(qdir.glob("*.json"))]
    return [(p, q) for p, q in out if q.get("state") == "running"]


def stop_queue(path: Path) -> bool:
    """Cancel a queue: its runner stops the current run and skips the rest."""
    queue = read_queue(path)
    pid = queue.get("pid")
    if queue.get("state") != "running":
        return False
    return _terminate(pid)
