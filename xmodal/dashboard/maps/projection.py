"""A 2-D map of a run's joint space (its test split, or its whole catalogue), cached in the run folder.

``python -m xmodal.dashboard.maps.projection RUN_DIR [RUN_DIR ...] [--method umap|pca] [--scope test|all]
[--neighbors 15] [--min-dist 0.1]`` computes it in a background process (UMAP's first import compiles numba
code for a while; a whole catalogue takes minutes), reporting its phase and time left through
``xmodal.dashboard.jobs.tasks``; the Embeddings page starts it and polls. It first makes the run's catalogue
embeddings (``xmodal.dashboard.maps.embeds``) if they are missing.

The file, ``projection_<key>.npz``, holds ``xy`` ``[2n, 2]`` (the n photo points, then the n title points
of the same items), the items' catalogue positions ``index`` ``[n]``, the method used, and each item's rank
of its true match among the mapped items in both directions, under both ground truths (``rank_t2i``/``rank_i2t``
caption-level: identical titles count; ``rank_t2i_item``/``rank_i2t_item`` item-level: only its own pair), from
the metrics core (``metrics.ranks_by_ground_truth``), so the map can be coloured and filtered by how the model
does under the ground truth the page shows. ``load`` adds the items' embeddings, titles,
photos, splits and attributes from the embeddings file. The key covers the weights, the catalogue and every
setting (``MapSettings``), so another setting or retraining never shows a stale map. The file is written
atomically; ``load`` checks it (each member's CRC-32, shapes, finite values) and computes a damaged one again,
with a warning.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ...evaluation import metrics
from ...cachefile import atomic_write, check_array, warn_rebuild
from ...evaluation.project2d import UMAP_MIN_POINTS, import_umap, project, warm_umap  # noqa: F401 - import_umap, warm_umap: re-exported
from ...runs import atomic_write_json, read_json
from . import embeds, sprites
from ..jobs import tasks

MAX_ITEMS = 200_000  # items mapped at most (a seeded sample beyond that): 400k points
METHODS = ("umap", "pca")
SCOPES = ("test", "all")
SCOPE_NAMES = {"test": "test split", "all": "whole catalogue"}  # what each scope is called on the page and in URLs
GROUND_TRUTHS = ("caption", "item")
VERSION = 2  # bump when the file's layout changes (2: item-level ranks beside the caption-level ones)
INDEX_FILE = "maps.json"  # file name -> settings of each map computed here (to recompute a damaged one)


@dataclass(frozen=True)
class MapSettings:
    """What a map shows and how it is drawn."""

    method: str = "umap"  # umap (keeps neighbourhoods) or pca (instant, linear)
    scope: str = "test"  # test: the run's test split; all: the whole catalogue (train/val/test marked)
    n_neighbors: int = 15  # UMAP: neighbours each point looks at (larger: more global structure), 2..200
    min_dist: float = 0.1  # UMAP: how tightly points may pack (0: tight clumps, 0.99: evenly spread)

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown map method {self.method!r}; choose one of {METHODS}")
        if self.scope not in SCOPES:
            raise ValueError(f"unknown map scope {self.scope!r}; choose one of {SCOPES}")
        if not 2 <= int(self.n_neighbors) <= 200:
            raise ValueError(f"n_neighbors {self.n_neighbors} is outside 2..200")
        if not 0.0 <= float(self.min_dist) <= 0.99:
            raise ValueError(f"min_dist {self.min_dist} is outside 0..0.99")

    def key(self) -> str:
        umap = f"|{int(self.n_neighbors)}|{float(self.min_dist):.3f}" if self.method == "umap" else ""
        return f"{self.method}|{self.scope}{umap}"


def _settings(settings: MapSettings | str) -> MapSettings:
    return MapSettings(method=settings) if isinstance(settings, str) else settings


def task_name(settings: MapSettings | str) -> str:
    """The background task's name for a map with these settings."""
    return "map-" + hashlib.sha256(_settings(settings).key().encode()).hexdigest()[:10]


def projection_path(run_dir: Path, settings: MapSettings | str = "umap") -> Path | None:
    """Where the run's map with ``settings`` (or just a method) is cached; None: no best weights yet."""
    source = embeds.embeds_path(Path(run_dir))
    if source is None:
        return None
    key = hashlib.sha256(f"{source.stem}|{_settings(settings).key()}|{MAX_ITEMS}|{VERSION}".encode())
    return Path(run_dir) / f"projection_{key.hexdigest()[:12]}.npz"


def umap_seconds(points: int) -> float:
    """A rough guess of UMAP's time on two busy cores, numba compilation included (for the time left)."""
    return 25.0 + 0.004 * points


def mapped_positions(split: list[str], scope: str, max_items: int = MAX_ITEMS, seed: int = 0) -> np.ndarray:
    """Catalogue positions a map of ``scope`` shows (from the per-item split labels), a seeded sample beyond
    ``max_items``."""
    labels = np.asarray(split)
    index = np.flatnonzero(labels == "test") if scope == "test" else np.arange(len(labels))
    if len(index) > max_items:
        index = np.sort(np.random.default_rng(seed).choice(index, max_items, replace=False))
    return index.astype(np.int64)


def _remember(run_dir: Path, path: Path, settings: MapSettings) -> None:
    index = read_json(run_dir / INDEX_FILE, default={}) or {}
    index = {k: v for k, v in index.items() if (run_dir / k).is_file() or k == path.name}
    index[path.name] = asdict(settings)
    atomic_write_json(run_dir / INDEX_FILE, index)


def compute(run_dir: Path, settings: MapSettings | str = "umap", run=None,
            progress: tasks.Progress | None = None) -> Path:
    """Compute and cache the map of ``run_dir`` (``run``: an already loaded ``xmodal.Run``, used when the
    run's catalogue embeddings must be made first)."""
    run_dir, settings = Path(run_dir), _settings(settings)
    path = projection_path(run_dir, settings)
    if path is None:
        raise FileNotFoundError(f"{run_dir} has no best.safetensors yet: nothing to project")
    source = embeds.embeds_path(run_dir)
    if not source.is_file():
        embeds.compute(run_dir, run=run, progress=progress)
    emb = embeds.load(source)
    index = mapped_positions(emb["split"], settings.scope)
    if len(index) == 0:
        raise ValueError(f"none of {run_dir.name}'s test items are in its catalogue")
    img, txt = emb["image"][index], emb["text"][index]  # [n, D] each
    n_points = 2 * len(index)
    if progress:
        guess = umap_seconds(n_points) if settings.method == "umap" and n_points >= UMAP_MIN_POINTS else None
        progress.phase(f"{settings.method.upper()} of {n_points:,} points", eta_s=guess)
    xy, used = project(np.concatenate([img, txt]), settings.method, n_neighbors=settings.n_neighbors,
                       min_dist=settings.min_dist)
    if progress:
        progress.phase("ranking each item's true match (caption- and item-level)")
    ranks = metrics.ranks_by_ground_truth(img, txt, [emb["captions"][i] for i in index])
    with atomic_write(path) as f:
        np.savez(f, xy=xy, index=index, method=np.array(used),
                 **{rank_key(d, gt): ranks[gt][d].astype(np.int64) for gt in GROUND_TRUTHS for d in metrics.DIRECTIONS})
    _remember(run_dir, path, settings)
    try:  # the hover photos: a map without them still works (the page offers to make them again)
        sprites.build_for_map(run_dir, index, [emb["images"][i] for i in index.tolist()], progress)
    except Exception as err:
        print(f"warning: the map's hover photos were not made: {type(err).__name__}: {err}", file=sys.stderr)
    return path


def rank_key(direction: str, ground_truth: str = "caption") -> str:
    """The name of the ranks of ``direction`` under ``ground_truth`` in a map (``rank_t2i``, ``rank_i2t_item``)."""
    short = {"text_to_image": "t2i", "image_to_text": "i2t"}[direction]
    return f"rank_{short}" + ("" if ground_truth == "caption" else f"_{ground_truth}")


RANK_KEYS = tuple(rank_key(d, gt) for gt in GROUND_TRUTHS for d in metrics.DIRECTIONS)


def _read(path: Path) -> dict:
    """A projection file's arrays, checked; raises if the file is damaged."""
    with np.load(path, allow_pickle=False) as data:
        out = {k: data[k] for k in data.files}  # reading each member checks its CRC-32
    missing = {"xy", "index", "method", *RANK_KEYS} - set(out)
    if missing:
        raise ValueError(f"it lacks {sorted(missing)}")
    n = len(out["index"])
    check_array("index", out["index"], (n,), ("int32", "int64"))
    check_array("xy", out["xy"], (2 * n, 2), ("float32",))
    for k in RANK_KEYS:
        check_array(k, out[k], (n,), ("int32", "int64"))
    if str(out["method"]) not in METHODS:
        raise ValueError(f"unknown method {str(out['method'])!r}")
    return out


def _requested(path: Path) -> MapSettings:
    """The settings whose ``projection_path`` is ``path`` (from the run's map index, or the defaults).

    Raises:
        FileNotFoundError: ``path`` maps earlier weights; being damaged as well, it is removed.
    """
    known = read_json(path.parent / INDEX_FILE, default={}) or {}
    candidates = [MapSettings(**known[path.name])] if isinstance(known.get(path.name), dict) else []
    candidates += [MapSettings(method=m, scope=s) for m in METHODS for s in SCOPES]
    for settings in candidates:
        if projection_path(path.parent, settings) == path:
            return settings
    path.unlink(missing_ok=True)
    raise FileNotFoundError(f"{path} was damaged and mapped earlier weights of {path.parent.name}, so it was "
                            "removed; compute the current map with projection.compute(run_dir, settings)")


def load(path: Path) -> dict:
    """A map: ``xy``, ``index``, ``method``, the ranks (``RANK_KEYS``, ``[n]`` each), and for its n items from the
    embeddings file: ``image_embeds``/``text_embeds`` ``[n, D]``, lists ``captions``, ``images``,
    ``item_ids``, ``split`` and ``attributes`` (column -> n values).

    A damaged file (unreadable, truncated, failing a CRC-32, wrong shapes, non-finite values) is computed
    again in this process (``compute``), with a warning.
    """
    path = Path(path)
    try:
        out = _read(path)
    except Exception as err:  # any damage: map the run again
        if not path.is_file():
            raise
        warn_rebuild(path, err)
        out = _read(compute(path.parent, _requested(path)))
    source = embeds.embeds_path(path.parent)
    emb = embeds.load(source)
    index = out["index"]
    pick = index.tolist()
    return {"xy": out["xy"], "index": index, "method": str(out["method"]), **{k: out[k] for k in RANK_KEYS},
            "image_embeds": emb["image"][index], "text_embeds": emb["text"][index],
            "captions": [emb["captions"][i] for i in pick], "images": [emb["images"][i] for i in pick],
            "item_ids": [emb["item_ids"][i] for i in pick], "split": [emb["split"][i] for i in pick],
            "attributes": {k: [v[i] for i in pick] for k, v in emb["attributes"].items()}}


def start(run_dirs: list[Path], settings: MapSettings) -> bool:
    """Compute the runs' maps in one background process (UMAP compiles once); False when each is on disk or
    already being computed."""
    todo = [Path(d) for d in run_dirs if not (projection_path(d, settings) or Path("/nonexistent")).is_file()]
    argv = ["-m", "xmodal.dashboard.maps.projection", *map(str, todo), "--method", settings.method, "--scope",
            settings.scope, "--neighbors", str(int(settings.n_neighbors)), "--min-dist", repr(float(settings.min_dist))]
    return bool(todo) and tasks.start(todo, task_name(settings), argv)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m xmodal.dashboard.maps.projection", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="one or more run folders (one process "
                   "for several saves compiling UMAP's numba code again)")
    p.add_argument("--method", choices=METHODS, default="umap")
    p.add_argument("--scope", choices=SCOPES, default="test")
    p.add_argument("--neighbors", type=int, default=15)
    p.add_argument("--min-dist", type=float, default=0.1)
    a = p.parse_args(argv)
    try:
        settings = MapSettings(a.method, a.scope, a.neighbors, a.min_dist)
    except ValueError as err:
        p.error(str(err))
    def work(run_dir: Path, progress: tasks.Progress) -> Path:
        done = projection_path(run_dir, settings)
        return done if done is not None and done.is_file() else compute(run_dir, settings, progress=progress)

    return tasks.run_each(a.run_dirs, task_name(settings), work)


if __name__ == "__main__":
    sys.exit(main())
