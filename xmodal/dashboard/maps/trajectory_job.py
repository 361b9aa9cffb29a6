"""The map of a run's joint space over training, computed in the background and cached in the run folder.

``python -m xmodal.dashboard.maps.trajectory_job RUN_DIR [RUN_DIR ...] [--method pca|umap]`` reads the run's
per-epoch snapshots (``xmodal.training.snapshots``), draws every epoch in the last epoch's projection
(``xmodal.evaluation.trajectory.aligned_maps``) and scores each epoch's snapshot products among themselves under
both ground truths, reporting its phase through ``xmodal.dashboard.jobs.tasks``; the Embeddings page starts it
and polls.

The file, ``trajectory_<method>_<key>.npz``, holds ``epochs`` ``[E]``, ``xy`` ``[E, 2n, 2]`` (per epoch the n
photo points, then the n title points), the products' ``item_ids`` and ``captions`` ``[n]``, the method used
and ``stats`` (JSON: ``{"caption": [per epoch], "item": [per epoch]}`` from ``trajectory.epoch_stats``; caption
is empty when the catalogue's titles could not be read). The key covers the snapshot files (a run still
training gets a new map with each epoch) and ``VERSION``. Written atomically; ``load`` checks it.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import zipfile
from pathlib import Path

import numpy as np

from ...cachefile import atomic_write, check_array
from ...data import CatalogueError, open_catalogue
from ...evaluation import trajectory
from ...runs import read_json
from ...runs.snapshots import FOLDER as SNAPSHOTS, read_snapshots, run_catalogue_path
from ..jobs import tasks

VERSION = 1  # bump when the file's layout changes


def snapshot_files(run_dir: Path) -> list[Path]:
    """The run's per-epoch snapshot files, in epoch order (a cheap listing: nothing is read)."""
    folder = Path(run_dir) / SNAPSHOTS
    return sorted(folder.glob("epoch_*.safetensors")) if (folder / "items.json").is_file() else []


def task_name(method: str) -> str:
    return f"trajectory-{method}"


def trajectory_path(run_dir: Path, method: str = "pca") -> Path | None:
    """Where the run's map over epochs with ``method`` is cached; None: the run kept no snapshots."""
    if method not in trajectory.METHODS:
        raise ValueError(f"unknown projection {method!r}; choose one of {trajectory.METHODS}")
    files = snapshot_files(run_dir)
    if not files:
        return None
    stamp = "|".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)
    key = hashlib.sha256(f"{VERSION}|{method}|{stamp}".encode()).hexdigest()[:12]
    return Path(run_dir) / f"trajectory_{method}_{key}.npz"


def _captions(run_dir: Path, item_ids: list[str]) -> list[str] | None:
    """The products' titles from the run's catalogue (None when it cannot be read or lacks one of them)."""
    try:
        cat = open_catalogue(str(run_catalogue_path(read_json(run_dir / "config.json"))), check_images=False)
    except (CatalogueError, OSError, ValueError, KeyError, TypeError):
        return None
    title = dict(zip(cat.item_ids, cat.captions))
    return [title[i] for i in item_ids] if all(i in title for i in item_ids) else None


def compute(run_dir: Path, method: str = "pca", progress: tasks.Progress | None = None) -> Path:
    """Compute and cache the run's map over epochs; returns the file."""
    run_dir = Path(run_dir)
    path = trajectory_path(run_dir, method)
    if path is None:
        raise FileNotFoundError(f"{run_dir.name} kept no snapshots: train it with --snapshots N (default 500)")
    if progress:
        progress.phase("reading the snapshots")
    ids, snaps = read_snapshots(run_dir)
    if not snaps:
        raise ValueError(f"none of {run_dir.name}'s snapshot files can be read")
    used = trajectory.method_used(snaps, method)
    if progress:
        progress.phase(f"{used.upper()} of {2 * len(ids):,} points over {len(snaps)} epochs",
                       eta_s=25.0 + 2.0 * len(snaps) if used == "umap" else None)
    maps = trajectory.aligned_maps(snaps, used)
    captions = _captions(run_dir, ids)
    if progress:
        progress.phase("scoring each epoch's snapshot products")
    stats = {"item": trajectory.epoch_stats(snaps),
             "caption": trajectory.epoch_stats(snaps, captions) if captions is not None else []}
    epochs = sorted(snaps)
    with atomic_write(path) as f:
        np.savez(f, epochs=np.array(epochs, dtype=np.int64), xy=np.stack([maps[e] for e in epochs]),
                 item_ids=np.array(ids, dtype=str), captions=np.array(captions or [""] * len(ids), dtype=str),
                 method=np.array(used), stats=np.array(json.dumps(stats)))
    for old in run_dir.glob(f"trajectory_{method}_*.npz"):  # maps of earlier snapshots
        if old != path:
            old.unlink(missing_ok=True)
    return path


def load(path: Path) -> dict:
    """A map over epochs: ``epochs`` (list), ``xy`` ``[E, 2n, 2]``, ``item_ids``, ``captions`` (lists; titles empty
    when unknown), ``method`` and ``stats``. Raises ``ValueError`` on a damaged file (the page computes it again)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            out = {k: data[k] for k in data.files}  # reading each member checks its CRC-32
        epochs = check_array("epochs", out["epochs"], (None,), ("int64",))
        n = len(out["item_ids"])
        check_array("xy", out["xy"], (len(epochs), 2 * n, 2), ("float32",))
        stats = json.loads(str(out["stats"]))
    except (OSError, KeyError, EOFError, ValueError, zipfile.BadZipFile) as err:  # JSONDecodeError: a ValueError
        raise ValueError(f"{Path(path).name} is damaged ({err})") from err
    if not isinstance(stats, dict) or not all(isinstance(stats.get(g), list) for g in ("caption", "item")):
        raise ValueError(f"{Path(path).name} is damaged (its stats are not per ground truth)")
    return {"epochs": epochs.tolist(), "xy": out["xy"], "item_ids": out["item_ids"].tolist(),
            "captions": out["captions"].tolist(), "method": str(out["method"]), "stats": stats}


def start(run_dir: Path, method: str) -> bool:
    """Compute the map in a background process; False when it is already under way."""
    return bool(tasks.start([Path(run_dir)], task_name(method),
                            ["-m", "xmodal.dashboard.maps.trajectory_job", str(run_dir), "--method", method]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m xmodal.dashboard.maps.trajectory_job",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders trained with --snapshots N")
    p.add_argument("--method", choices=trajectory.METHODS, default="pca")
    a = p.parse_args(argv)

    def work(run_dir: Path, progress: tasks.Progress) -> Path:
        done = trajectory_path(run_dir, a.method)
        return done if done is not None and done.is_file() else compute(run_dir, a.method, progress)

    return tasks.run_each(a.run_dirs, task_name(a.method), work)


if __name__ == "__main__":
    sys.exit(main())
