"""Run folders: ``checkpoints/<run-id>/`` and the files in it, each written atomically.

- ``config.json``: the resolved config (model, data fingerprint, split seed, pretrained status, ...)
- ``vocab.json``, ``splits.json``: the vocabulary and the item ids of each split
- ``metrics.jsonl``: one JSON object per line, ``{"kind": "step", ...}`` or ``{"kind": "epoch", ...}``
- ``status.json``: running / finished / failed / stopped, with progress; readable while the run goes on
- ``best.safetensors``: the weights with the best validation rsum; ``last.pt``: the resume state
- ``test.json``: test metrics, computed once at the end from the best weights
"""
from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .paths import checkpoints_dir

if TYPE_CHECKING:  # torch is imported only where weights are written: reading runs needs no PyTorch
    import torch

STATES = ("running", "finished", "failed", "stopped")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=1, default=_json_default).encode())


def _json_default(obj: Any):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj)}")


def read_json(path: Path, default: Any = None) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return default


def save_weights(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Save a state dict as safetensors, atomically."""
    from safetensors.torch import save
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    atomic_write_bytes(path, save(state, metadata=metadata))


def save_torch(path: Path, obj: dict) -> None:
    """``torch.save`` atomically (tensors, numbers, strings only: loadable with weights_only=True)."""
    import torch
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def new_run_id(model: str) -> str:
    """``<model>-<YYYYmmdd-HHMMSS>-<pid>``: unique across concurrent runs on one machine."""
    return f"{model}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"


class MetricsLog:
    """Append-only metrics; rewritten atomically at most every ``flush_s`` seconds and on ``flush()``."""

    def __init__(self, path: Path, flush_s: float = 2.0, existing: list[dict] | None = None):
        self.path = Path(path)
        self.rows: list[dict] = list(existing or [])
        self.flush_s = flush_s
        self._last = 0.0

    def add(self, row: dict) -> None:
        self.rows.append(row)
        if time.time() - self._last >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        atomic_write_bytes(self.path, "".join(json.dumps(r) + "\n" for r in self.rows).encode())
        self._last = time.time()


def read_metrics(run_dir: Path) -> list[dict]:
    """The rows of ``metrics.jsonl`` (an empty list if none yet)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def write_status(run_dir: Path, state: str, **fields: Any) -> None:
    if state not in STATES:
        raise ValueError(f"unknown run state {state!r}; expected one of {STATES}")
    atomic_write_json(Path(run_dir) / "status.json", {"state": state, "pid": os.getpid(),
                                                       "host": socket.gethostname(), "updated": time.time(),
                                                       **fields})


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_status(run_dir: Path) -> dict:
    """The run's status; a ``running`` run whose process is gone on this host reads as ``failed``."""
    status = read_json(Path(run_dir) / "status.json", default={"state": "unknown"})
    if status.get("state") == "running" and status.get("host") == socket.gethostname():
        pid = status.get("pid")
        if isinstance(pid, int) and not _pid_alive(pid):
            status = {**status, "state": "failed", "error": status.get("error") or "the training process died"}
    return status


@dataclass
class RunInfo:
    """A summary of one run folder, for listings."""

    path: Path
    config: dict
    status: dict
    test: dict | None
    best: dict | None

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def model(self) -> str:
        return self.config.get("model", "?")


def list_runs(root: str | Path | None = None) -> list[RunInfo]:
    """Every run folder under ``root`` (default: the checkpoints folder), newest first."""
    root = Path(root) if root else checkpoints_dir()
    if not root.is_dir():
        return []
    runs = []
    for d in root.iterdir():
        config = read_json(d / "config.json") if d.is_dir() else None
        if not config:
            continue
        runs.append(RunInfo(d, config, read_status(d), read_json(d / "test.json"), read_json(d / "best.json")))
    runs.sort(key=lambda r: r.config.get("created", 0), reverse=True)
    return runs
