"""Run folders: ``checkpoints/<run-id>/`` and the files in it, each written atomically.

- ``config.json``: the resolved config (model, data fingerprint, split seed, pretrained status, ...)
- ``vocab.json``, ``splits.json``: the vocabulary and the item ids of each split; ``vocab.subwords.safetensors``
  beside it for ``--word-vectors fasttext`` runs (the n-gram table that reads a new word as a known one)
- ``metrics.jsonl``: one JSON object per line, ``{"kind": "step", ...}`` or ``{"kind": "epoch", ...}``
- ``status.json``: running / finished / failed / stopped, with progress; readable while the run goes on
- ``best.safetensors``: the weights with the best validation rsum; ``last.pt``: the resume state
- ``test.json``: test metrics, computed once at the end from the best weights
"""
from __future__ import annotations

import json
import math
import os
import socket
import time
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..paths import checkpoints_dir
from .lock import (  # noqa: F401  (re-exported: a run folder's API in one place)
    LOCK_FILE, RunLock, RunLocked, clean_dead_temps, pid_alive, read_lock)

if TYPE_CHECKING:  # torch is imported only where weights are written: reading runs needs no PyTorch
    import torch

STATES = ("running", "finished", "failed", "stopped")


def _fits(value: object, hint: object) -> bool:
    """Whether a JSON value has the type a dataclass field's annotation asks for (ints are floats too)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    if origin is tuple:
        return isinstance(value, (list, tuple)) and len(value) == len(args) and all(map(_fits, value, args))
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    return True  # a type this check does not know: left to the constructor


def check_record(section: str, record: dict, cls: type) -> None:
    """Raise ``ValueError`` naming the first field of a saved ``record`` whose value has the wrong type for ``cls``."""
    hints = typing.get_type_hints(cls)
    for name, value in record.items():
        if name in hints and not _fits(value, hints[name]):
            raise ValueError(f"'{section}' field {name!r} is {json.dumps(value)[:60]}, not a value of type "
                           f"{getattr(hints[name], '__name__', None) or hints[name]}")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename.

    On any failure (a full disk, a stop signal) the temporary file is removed and ``path`` keeps its
    previous content.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=1, default=_json_default).encode())


def _json_default(obj: Any):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj)}")


def json_problem(path: Path) -> tuple[Any, str]:
    """A JSON file's value and, when it cannot be read, why (empty when it was read or is absent).

    Run folders are untrusted: any bytes (not UTF-8, not JSON, nested past Python's recursion limit, a folder
    where a file should be) give a reason, never an exception.
    """
    try:
        return json.loads(Path(path).read_bytes().decode("utf-8")), ""
    except FileNotFoundError:
        return None, ""
    except UnicodeDecodeError:
        return None, f"{Path(path).name} is damaged (not UTF-8 text)"
    except (ValueError, RecursionError):  # json.JSONDecodeError is a ValueError
        return None, f"{Path(path).name} is damaged (not JSON)"
    except OSError as err:
        return None, f"{Path(path).name} cannot be read ({err.strerror or type(err).__name__})"


def read_json(path: Path, default: Any = None) -> Any:
    """A JSON file's value, or ``default`` when it is absent or damaged (see :func:`json_problem`)."""
    value, problem = json_problem(path)
    return default if problem or value is None and not Path(path).is_file() else value


def save_weights(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Save a state dict as safetensors, atomically."""
    from safetensors.torch import save
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    atomic_write_bytes(path, save(state, metadata=metadata))


def save_torch(path: Path, obj: dict) -> None:
    """``torch.save`` atomically (tensors, numbers, strings only: loadable with weights_only=True)."""
    import io

    import torch
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


class BackgroundWriter:
    """Runs a run's checkpoint writes in one thread while training goes on: one write in flight at a time.

    ``submit`` waits for the write before it (and raises that write's error, e.g. a full disk, in the
    caller's thread) and starts the next; ``wait`` lets the write in flight finish. What is handed over must
    be a copy that training cannot change (``snapshot``). Each file is still written atomically, so a process
    killed mid-write keeps the previous one.
    """

    def __init__(self):
        from concurrent.futures import ThreadPoolExecutor
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="xmodal-checkpoint")
        self._pending = None

    def submit(self, fn, *args) -> None:
        self.wait()
        self._pending = self._pool.submit(fn, *args)

    def wait(self) -> None:
        """Block until the write in flight is on disk; raise its error, if it failed."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        """Finish the write in flight (its error is raised) and stop the thread."""
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)


def snapshot(obj: Any) -> Any:
    """A copy of a state (nested dicts, lists and tuples of tensors and plain values) that later steps cannot
    change: every tensor cloned."""
    if hasattr(obj, "detach") and hasattr(obj, "clone"):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: snapshot(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(snapshot(v) for v in obj)
    return obj


def save_best(run_dir: Path, state: dict[str, torch.Tensor], info: dict) -> None:
    """Write ``best.safetensors`` and the record that describes it (``info``: epoch, val_rsum, val) as one unit.

    The record travels inside the weights file's metadata, so no stop can leave the two disagreeing;
    ``best.json`` is a readable copy written after it, and ``read_best`` trusts the weights file.
    """
    save_weights(Path(run_dir) / "best.safetensors", state, {"best": json.dumps(info, default=_json_default)})
    atomic_write_json(Path(run_dir) / "best.json", info)


def read_best(run_dir: Path) -> dict | None:
    """The record of a run's best checkpoint (epoch, val_rsum, val), from ``best.safetensors`` itself.

    Falls back to ``best.json`` for runs written before the record moved into the weights file.
    """
    path = Path(run_dir) / "best.safetensors"
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 0 < n < 100_000_000:
                return None
            meta = json.loads(f.read(n)).get("__metadata__") or {}
    except (OSError, ValueError):
        return None
    if "best" in meta:
        try:
            return json.loads(meta["best"])
        except json.JSONDecodeError:
            return None
    legacy = read_json(Path(run_dir) / "best.json")
    return legacy if isinstance(legacy, dict) else None


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
    try:
        data = path.read_bytes()
    except OSError:  # absent, a folder, unreadable
        return []
    rows = []
    for line in data.splitlines():  # a damaged line (not UTF-8, not JSON, not an object) is skipped alone
        try:
            row = json.loads(line.decode("utf-8"))
        except (ValueError, RecursionError):
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def write_status(run_dir: Path, state: str, **fields: Any) -> None:
    if state not in STATES:
        raise ValueError(f"unknown run state {state!r}; expected one of {STATES}")
    atomic_write_json(Path(run_dir) / "status.json", {"state": state, "pid": os.getpid(),
                                                       "host": socket.gethostname(), "updated": time.time(),
                                                       **fields})


NUMERIC_STATUS = ("epoch", "epochs", "step", "steps_per_epoch", "loss", "eta_s", "updated", "pid")


def read_status(run_dir: Path) -> dict:
    """The run's status; a ``running`` run whose process is gone on this host reads as ``failed``.

    A damaged or foreign ``status.json`` (not an object, an unknown state, numbers that are not numbers)
    is read as far as it makes sense: bad numeric fields are dropped, an unknown state is ``unknown``.
    """
    status, problem = json_problem(Path(run_dir) / "status.json")
    if problem:
        return {"state": "unknown", "error": problem}
    if not isinstance(status, dict):
        status = {"state": "unknown"}
    status = {k: v for k, v in status.items()
              if k not in NUMERIC_STATUS or (isinstance(v, (int, float)) and not isinstance(v, bool)
                                             and v == v and abs(v) != float("inf"))}
    if status.get("state") not in STATES:
        status["state"] = "unknown"
    if status.get("state") == "running" and status.get("host") == socket.gethostname():
        pid = status.get("pid")
        if isinstance(pid, int) and not pid_alive(pid):
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
        if not config or not isinstance(config, dict):
            continue
        clean_dead_temps(d)
        test = read_json(d / "test.json")
        runs.append(RunInfo(d, config, read_status(d), test if isinstance(test, dict) else None, read_best(d)))
    runs.sort(key=lambda r: r.config.get("created", 0), reverse=True)
    return runs
