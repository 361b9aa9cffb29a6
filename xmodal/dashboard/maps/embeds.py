"""A run's whole catalogue in its joint space, for the dashboard: computed once in a background process.

``python -m xmodal.dashboard.maps.embeds RUN_DIR [RUN_DIR ...]`` loads each run, embeds every photo and title
of its catalogue (a frozen backbone's features come from the shared feature cache, extracted once if this
machine has not got them yet: the slow part) and writes ``embeds_<key>.npz`` into the run folder:
``image`` and ``text`` ``[N, D]`` float32 (row i is catalogue item i), the items' ``item_ids``,
``captions``, ``images`` (photo paths relative to the catalogue folder ``root``, so that a catalogue or a
run folder that moves keeps its photos), ``split`` (train, val, test or empty, from splits.json) and one
``attr_<column>`` per catalogue attribute. The key covers the weights file and the catalogue fingerprint, so
retraining never shows stale points. Pages read it with NumPy alone (no PyTorch, no model): Compare ranks
the test queries from it, Embeddings maps it and finds a point's neighbours in it.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

from ...cachefile import atomic_write, check_array, warn_rebuild
from ...data import CatalogueError, load_catalogue
from ...data.demo import demo_dir
from ...retrieval.export import split_of_items
from ...runs import read_json
from ...runs.snapshots import run_catalogue_path
from ..jobs import tasks

VERSION = 1  # bump when the file's layout changes
TASK = "embeds"
CHUNK = 512  # photos embedded per step of a fine-tuned (pixel) model, for progress


def embeds_path(run_dir: Path) -> Path | None:
    """Where the run's catalogue embeddings are cached (None: the run has no best weights yet)."""
    run_dir = Path(run_dir)
    weights, config = run_dir / "best.safetensors", run_dir / "config.json"
    if not weights.is_file() or not config.is_file():
        return None
    try:
        config_value = json.loads(config.read_bytes().decode("utf-8"))
        data = (config_value.get("data") if isinstance(config_value, dict) else None) or {}
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    stat = weights.stat()
    key = hashlib.sha256(f"{VERSION}|{stat.st_mtime_ns}|{stat.st_size}|{data.get('fingerprint', '')}".encode())
    return run_dir / f"embeds_{key.hexdigest()[:12]}.npz"


def ready(run_dir: Path) -> bool:
    """Whether the run's catalogue embeddings are on disk (a cheap check: no file is read)."""
    path = embeds_path(run_dir)
    return path is not None and path.is_file()


def split_labels(run_dir: Path, item_ids: list[str]) -> np.ndarray:
    """Per catalogue item, the split it belongs to in this run (``train``/``val``/``test``, or empty)."""
    return np.array(split_of_items(run_dir, item_ids), dtype=str)


def _image_embeds(run, progress: tasks.Progress | None) -> np.ndarray:
    """The run's catalogue photo embeddings ``[N, D]``, with progress: the feature cache's progress bar for a
    frozen backbone (then the run's own gallery cache, which Search shares), counted chunks for a fine-tuned
    one."""
    from ...models.embed import catalogue_features, embed_catalogue_images  # lazy: PyTorch, only in the job
    cat = run.catalogue
    if run.model.image_input == "features":
        if progress:
            progress.phase("reading the image features (extracted once per machine and backbone)")
        catalogue_features(run.model, cat, run.device, progress=True)  # fills the shared cache; a bar in the log
        return run.image_embeds.numpy()  # from the run's gallery cache, or from the features just cached
    if progress:
        progress.phase("embedding the photos (fine-tuned backbone)", total=len(cat))
    out = []
    for s in range(0, len(cat), CHUNK):
        out.append(embed_catalogue_images(run.model, cat, np.arange(s, min(s + CHUNK, len(cat))), run.device).numpy())
        if progress:
            progress.advance(min(s + CHUNK, len(cat)))
    return np.concatenate(out)


_CATALOGUES: dict[str, object] = {}  # catalogue folder -> Catalogue, loaded (and checked) once per process


def _shared_catalogue(run_dir: Path):
    """The run's catalogue, loaded and checked once per process for all the runs trained on it (checking
    every photo takes a while, and the queue embeds several runs of one catalogue); None when it cannot be
    loaded here (``load_run`` then loads it itself and reports the error)."""
    config = read_json(Path(run_dir) / "config.json", default={}) or {}
    try:
        folder = str(Path(run_catalogue_path(config)).resolve())
        if folder not in _CATALOGUES:
            _CATALOGUES[folder] = load_catalogue(folder)
    except (CatalogueError, KeyError, TypeError, OSError, ValueError):
        return None
    return _CATALOGUES[folder]


def compute(run_dir: Path, run=None, progress: tasks.Progress | None = None) -> Path:
    """Embed the run's whole catalogue and cache it (``run``: an already loaded ``xmodal.Run``)."""
    run_dir = Path(run_dir)
    path = embeds_path(run_dir)
    if path is None:
        raise FileNotFoundError(f"{run_dir} has no best.safetensors yet: nothing to embed")
    if run is None:
        if progress:
            progress.phase("loading the run (PyTorch and the model)")
        from ...retrieval.run import load_run  # lazy: PyTorch, only in the job
        run = load_run(run_dir, catalogue=_shared_catalogue(run_dir))
    img = _image_embeds(run, progress)
    if progress:
        progress.phase("embedding the titles")
    txt = run.text_embeds.numpy()
    cat = run.catalogue
    attrs = {f"attr_{k}": np.array(v, dtype=str) for k, v in cat.attributes.items()}
    with atomic_write(path) as f:
        np.savez(f, image=img.astype(np.float32), text=txt.astype(np.float32),
                 item_ids=np.array(cat.item_ids, dtype=str), captions=np.array(cat.captions, dtype=str),
                 images=np.array([str(p) for p in cat.images], dtype=str), root=np.array(str(Path(cat.root).resolve())),
                 split=split_labels(run_dir, list(cat.item_ids)), **attrs)
    return path


def _read(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as data:
        out = {k: data[k] for k in data.files}  # reading each member checks its CRC-32
    missing = {"image", "text", "item_ids", "captions", "images", "split"} - set(out)
    if missing:
        raise ValueError(f"it lacks {sorted(missing)}")
    n, dim = out["image"].shape if out["image"].ndim == 2 else (-1, -1)
    check_array("image", out["image"], (n, dim), ("float32",))
    check_array("text", out["text"], (n, dim), ("float32",))
    for k in ("item_ids", "captions", "images", "split", *(k for k in out if k.startswith("attr_"))):
        check_array(k, out[k], (n,), finite=False)
    return out


def _catalogue_root(run_dir: Path, stored: str) -> Path:
    """The folder the relative photo paths hang from: where the catalogue was when it was embedded, else
    where the run's config says it is now (the demo: this machine's demo folder)."""
    root = Path(stored)
    if root.is_dir():
        return root
    data = (read_json(Path(run_dir) / "config.json", default={}) or {}).get("data") or {}
    if isinstance(data, dict):
        if data.get("name") == "demo":
            candidate = demo_dir()
        else:
            candidate = Path(str(data.get("path") or "")).expanduser()
        if str(candidate) not in ("", ".") and candidate.is_dir():
            return candidate
    return root


def load(path: Path) -> dict:
    """A run's catalogue embeddings: arrays ``image``, ``text`` ``[N, D]``; lists ``item_ids``, ``captions``,
    ``images``, ``split``; ``attributes`` (column -> N values).

    A damaged file (unreadable, failing a CRC-32, wrong shapes, non-finite values) is removed and reported
    with a warning: the caller starts the background job again (``ready`` is False).
    """
    path = Path(path)
    try:
        out = _read(path)
    except Exception as err:
        if not path.is_file():
            raise
        warn_rebuild(path, err)
        path.unlink(missing_ok=True)
        raise FileNotFoundError(f"{path.name} was damaged and has been removed; it is computed again") from err
    attributes = {k[5:]: out.pop(k).tolist() for k in list(out) if k.startswith("attr_")}
    images = out["images"].tolist()
    if "root" in out:  # relative paths (files written before kept absolute ones)
        root = _catalogue_root(path.parent, str(out["root"]))
        images = [str(root / p) for p in images]
    return {"image": out["image"], "text": out["text"], "item_ids": out["item_ids"].tolist(),
            "captions": out["captions"].tolist(), "images": images, "split": out["split"].tolist(),
            "attributes": attributes}


def start(run_dirs: list[Path]) -> bool:
    """Embed the runs that lack their file in one background process (one PyTorch import); False when all of
    them are ready or already being embedded."""
    todo = [Path(d) for d in run_dirs if not ready(d)]
    return bool(todo) and tasks.start(todo, TASK, ["-m", "xmodal.dashboard.maps.embeds", *map(str, todo)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m xmodal.dashboard.maps.embeds", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    a = p.parse_args(argv)
    return tasks.run_each(a.run_dirs, TASK, lambda run_dir, progress: embeds_path(run_dir) if ready(run_dir) else
                          compute(run_dir, progress=progress))


if __name__ == "__main__":
    sys.exit(main())
