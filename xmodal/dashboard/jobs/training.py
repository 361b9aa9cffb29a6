"""Training jobs for the dashboard: launch ``python -m xmodal.train`` subprocesses, list and stop them.

Every launch gets its own run id (model, time and a random suffix), so several runs at once never
share a folder. The child writes its progress to ``<checkpoints>/<run-id>/status.json``; its output
goes to ``train.log`` in that folder. A queue (``<checkpoints>/.queues/<id>.json``, run by
``python -m xmodal.dashboard.jobs.queue``) trains several models one after another. Stopping sends
SIGTERM, which the trainer turns into a clean "stopped" state.
"""
from __future__ import annotations

import glob
import math
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
from typing import Any

from ...paths import checkpoints_dir
from ...runs import atomic_write_json, read_json, read_lock, read_status, write_status

# The registered models, in registration order: xmodal.list_models() without importing PyTorch (the registry
# imports the models), so the sidebar's form draws before torch has loaded. A test keeps the two equal.
MODELS = ("siamese", "corrnet", "cmpm-mobilenet", "cmpm-efficientnet", "infonce-efficientnet")
QUEUE_DIR = ".queues"
LOG_NAME = "train.log"
LAUNCH_NAME = "launch.json"
# The "train all five on the demo" quick path: small epoch counts so all five fit in ~10 min on 2 CPU cores.
DEMO_WORD_VECTORS = "glove"  # chosen on colour and pattern words over the demo catalogue (docs/quality.md)
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
    word_vectors: str | None = None  # word2vec, glove or fasttext; None: the trainer's default

    def command(self, out: Path) -> list[str]:
        """The argv that trains this job into ``out/<run_id>``."""
        cmd = [sys.executable, "-m", "xmodal.train", "--model", self.model, "--data", self.data,
               "--batch-size", str(self.batch_size), "--lr", repr(float(self.lr)), "--device", self.device,
               "--out", str(out), "--run-id", str(self.run_id)]
        if self.epochs:
            cmd += ["--epochs", str(int(self.epochs))]
        if self.finetune:
            cmd.append("--finetune")
        if self.word_vectors:
            cmd += ["--word-vectors", self.word_vectors]
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
    """A run folder's ``launch.json`` (``{}`` when absent or not an object). A run the queue started has none:
    its ``model`` and ``data`` then come from the trainer's status.json, which names them from its first phase."""
    rec = read_json(Path(run_dir) / LAUNCH_NAME, default={})
    if isinstance(rec, dict) and rec:
        return rec
    status = read_json(Path(run_dir) / "status.json", default={})
    status = status if isinstance(status, dict) else {}
    return {k: status[k] for k in ("model", "data") if isinstance(status.get(k), str) and status[k]}


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


# a tqdm bar: "<what>:  45%|####      | 16/32 [00:10<00:12,  1.6batch/s]" (what may hold "(1/3)")
_TQDM = re.compile(r"([A-Za-z][^\r\n|:\[\]]*?):\s+(\d+)%\|[^|\r\n]*\|\s*(\d+)/(\d+)\s*\[([\d:]+)<([\d:?]+)")


def _log_bars(path: Path, offset: float | None = None, name: str | None = None, tail_bytes: int = 4096) -> list:
    """The progress bars in the end of ``path`` written after byte ``offset`` (those of one phase), optionally
    only those whose description starts with ``name``."""
    try:
        size = path.stat().st_size
        start = max(0, size - tail_bytes, int(offset or 0))
        with open(path, "rb") as f:
            f.seek(start)
            text = f.read().decode(errors="replace")
    except (OSError, ValueError, OverflowError):
        return []
    found = _TQDM.findall(text)
    return [b for b in found if not name or b[0].strip().startswith(name)]


def log_progress(run_dir: Path, tail_bytes: int = 4096, log: Path | None = None,
                 offset: float | None = None) -> tuple[str, float, str] | None:
    """(what, fraction done, time left) of a running run's current phase, or of the last progress bar in a log.

    For a run folder (no ``log``): its status.json's own count (``phase_progress``), else the last bar of its
    train.log. With ``log`` (a task's): the last bar written after byte ``offset`` of it.
    """
    if log is None:
        status = read_status(Path(run_dir))
        if status.get("state") == "running" and "phase_started" in status:  # a trainer that reports each phase
            p = phase_progress(run_dir, status)
            return (p.text, p.fraction, p.left or "?") if p is not None and p.fraction is not None else None
    found = _log_bars(Path(log) if log else Path(run_dir) / LOG_NAME, offset, tail_bytes=tail_bytes)
    if not found:
        return None
    what, _, done, total, _, left = found[-1]
    return what.strip(), min(int(done) / max(int(total), 1), 1.0), left


@dataclass
class PhaseProgress:
    """How far a running run's current phase is, for a progress line."""

    text: str  # the phase, with its count when it has one
    fraction: float | None  # 0 to 1; None when nothing measures the phase (a bar would lie)
    left: str | None  # time left in words ("3m05s", "about 20s"); None when unknown


def _number(status: dict, key: str) -> float | None:
    """A finite number from an untrusted status.json, else None."""
    v = status.get(key)
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    return float(v) if ok else None


def _left(seconds: float | None) -> str | None:
    return None if seconds is None else format_seconds(max(seconds, 0.0))


def phase_progress(run_dir: Path, status: dict[str, Any] | None = None, now: float | None = None
                   ) -> PhaseProgress | None:
    """The progress of a running run's current phase (``xmodal.training.status``), None when it is not running.

    A counted phase gives ``done/total`` (clamped: never past 100 %) and the time left counted down since the
    status was written; a phase measured by a bar in train.log gives that bar (only one written since the
    phase began); a foreseen one counts down its estimate and says so when it runs over; a cached one says
    nothing more than its text (no bar); any other says how long it has taken so far.
    """
    status = read_status(run_dir) if status is None else status
    if status.get("state") != "running":
        return None
    now = time.time() if now is None else now
    phase = str(status.get("phase") or "starting")
    started, updated = _number(status, "phase_started"), _number(status, "updated") or now
    eta = _number(status, "eta_s")
    since_update = max(now - updated, 0.0)
    if status.get("cached") is True:
        return PhaseProgress(phase, None, None)
    total, done = _number(status, "total"), _number(status, "done")
    if total and total > 0 and done is not None:
        done = min(max(done, 0.0), total)
        unit = str(status.get("unit") or "")
        return PhaseProgress(f"{phase}: {int(done):,}/{int(total):,}{f' {unit}' if unit else ''}", done / total,
                             _left(None if eta is None else eta - since_update))
    if isinstance(status.get("bar"), str) and status["bar"]:
        bars = _log_bars(Path(run_dir) / LOG_NAME, _number(status, "log_offset"), status["bar"])
        if bars:
            _, _, d, t, _, left = bars[-1]
            return PhaseProgress(phase, min(int(d) / max(int(t), 1), 1.0), None if "?" in left else left)
    if status.get("estimated") is True and eta is not None and started is not None:
        elapsed = max(now - started, 0.0)
        if elapsed < eta:
            return PhaseProgress(phase, min(elapsed / max(eta, 1e-9), 0.99), f"about {format_seconds(eta - elapsed)}")
        return PhaseProgress(f"{phase}: longer than the {format_seconds(eta)} foreseen, "
                             f"{format_seconds(elapsed)} so far", None, None)
    if started is not None:
        return PhaseProgress(f"{phase} ({format_seconds(max(now - started, 0.0))} so far)", None, None)
    bars = _log_bars(Path(run_dir) / LOG_NAME)  # a trainer that names its phase only: the log's last bar
    if bars:
        _, _, d, t, _, left = bars[-1]
        return PhaseProgress(phase, min(int(d) / max(int(t), 1), 1.0), None if "?" in left else left)
    return PhaseProgress(phase, None, None)


def format_seconds(seconds: float) -> str:
    """``1h02m``, ``3m05s``, ``42s``; never negative."""
    s = int(round(max(float(seconds), 0.0)))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


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
    """The five models with the quick-path epoch counts, reading words through GloVe: word2vec vectors learnt from
    the demo's own titles give every colour word the same neighbours, so "red" found no red item (docs/quality.md,
    "The demo's word vectors")."""
    return [TrainJob(model=m, data=data, epochs=DEMO_EPOCHS.get(m, 8), device=device, word_vectors=DEMO_WORD_VECTORS)
            for m in MODELS]


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
