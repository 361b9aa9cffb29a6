"""A 2-D map of a run's joint space on its test split, cached in the run folder.

``python -m xmodal.dashboard.projection RUN_DIR [RUN_DIR ...] [--method umap|pca]`` computes it in a
subprocess (UMAP's first import compiles numba code for a while); the Embeddings page starts that and
polls for the file. The file, ``projection_<key>.npz``, holds ``xy`` ``[2n, 2]`` (the n image points,
then the n caption points of the same items), the items' catalogue positions ``index`` ``[n]``, the
embeddings used, and the items' captions, image paths and attributes, so later visits only read it.
The key covers the weights, the catalogue and the method, so retraining or another catalogue never
shows a stale map. The file is written atomically; ``load`` checks it (each member's CRC-32, shapes,
finite values) and computes a damaged one again, with a warning.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

from ..cachefile import atomic_write, check_array, warn_rebuild

UMAP_MIN_POINTS = 50  # below this UMAP's graph is too thin to mean much: PCA instead
MAX_ITEMS = 3000  # test items mapped at most (a seeded sample beyond that)


def projection_path(run_dir: Path, method: str = "umap") -> Path | None:
    """Where the run's projection by ``method`` is cached (None: the run has no weights yet)."""
    run_dir = Path(run_dir)
    weights = run_dir / "best.safetensors"
    config = run_dir / "config.json"
    if not weights.is_file() or not config.is_file():
        return None
    fingerprint = (json.loads(config.read_text()).get("data") or {}).get("fingerprint", "")
    key = hashlib.sha256(f"{weights.stat().st_mtime_ns}|{fingerprint}|{method}|{MAX_ITEMS}".encode())
    return run_dir / f"projection_{key.hexdigest()[:12]}.npz"


def project(points: np.ndarray, method: str = "umap", seed: int = 0, n_neighbors: int = 15,
            min_dist: float = 0.1) -> tuple[np.ndarray, str]:
    """2-D coordinates of ``points`` ``[M, D]`` and the method actually used.

    UMAP (cosine metric) when there are at least ``UMAP_MIN_POINTS`` points, else PCA.
    """
    points = np.asarray(points, dtype=np.float32)
    if method == "umap" and len(points) >= UMAP_MIN_POINTS:
        import umap  # slow first import: numba compiles its kernels
        reducer = umap.UMAP(n_components=2, n_neighbors=min(n_neighbors, len(points) - 1), min_dist=min_dist,
                            metric="cosine", random_state=seed, n_jobs=1)
        return reducer.fit_transform(points).astype(np.float32), "umap"
    centred = points - points.mean(0, keepdims=True)
    if len(points) < 2:
        return np.zeros((len(points), 2), dtype=np.float32), "pca"
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    xy = centred @ vt[:2].T  # [M, <=2]
    if xy.shape[1] < 2:
        xy = np.pad(xy, ((0, 0), (0, 2 - xy.shape[1])))
    return xy.astype(np.float32), "pca"


def test_positions(run_dir: Path, item_ids: list[str], max_items: int = MAX_ITEMS, seed: int = 0) -> np.ndarray:
    """Catalogue positions of the run's test items (from splits.json), a seeded sample if there are many."""
    from .analysis import split_positions
    splits = json.loads((Path(run_dir) / "splits.json").read_text())
    index = split_positions(item_ids, splits.get("test", []))
    if len(index) > max_items:
        index = np.sort(np.random.default_rng(seed).choice(index, max_items, replace=False))
    return index


def compute(run_dir: Path, method: str = "umap", run=None) -> Path:
    """Compute and cache the projection of ``run_dir`` (``run``: an already loaded ``xmodal.Run``)."""
    run_dir = Path(run_dir)
    path = projection_path(run_dir, method)
    if path is None:
        raise FileNotFoundError(f"{run_dir} has no best.safetensors yet: nothing to project")
    if run is None:
        from ..search import load_run
        run = load_run(run_dir)
    index = test_positions(run_dir, run.catalogue.item_ids)
    if len(index) == 0:
        raise ValueError(f"none of {run_dir.name}'s test items are in its catalogue")
    img = run.image_embeds.numpy()[index]  # [n, D]
    txt = run.text_embeds.numpy()[index]  # [n, D]
    xy, used = project(np.concatenate([img, txt]), method)
    cat = run.catalogue
    extra = {f"attr_{k}": np.array([v[i] for i in index], dtype=str) for k, v in cat.attributes.items()}
    with atomic_write(path) as f:
        np.savez(f, xy=xy, index=index, image_embeds=img, text_embeds=txt, method=np.array(used),
                 captions=np.array([cat.captions[i] for i in index], dtype=str),
                 images=np.array([str(cat.image_path(i)) for i in index], dtype=str), **extra)
    return path


def _read(path: Path) -> dict:
    """A projection file's arrays, checked; raises if the file is damaged."""
    with np.load(path, allow_pickle=False) as data:
        out = {k: data[k] for k in data.files}  # reading each member checks its CRC-32
    missing = {"xy", "index", "image_embeds", "text_embeds", "method", "captions", "images"} - set(out)
    if missing:
        raise ValueError(f"it lacks {sorted(missing)}")
    n = len(out["index"])
    check_array("index", out["index"], (n,), ("int32", "int64"))
    check_array("xy", out["xy"], (2 * n, 2), ("float32",))
    dim = out["image_embeds"].shape[-1]
    for k in ("image_embeds", "text_embeds"):
        check_array(k, out[k], (n, dim), ("float32",))
    for k in ("captions", "images", *(k for k in out if k.startswith("attr_"))):
        check_array(k, out[k], (n,), finite=False)
    if str(out["method"]) not in ("umap", "pca"):
        raise ValueError(f"unknown method {str(out['method'])!r}")
    return out


def _requested_method(path: Path) -> str:
    """The method whose ``projection_path`` is ``path`` (the key is all the file name says).

    Raises:
        FileNotFoundError: ``path`` maps earlier weights; being damaged as well, it is removed.
    """
    for method in ("umap", "pca"):
        if projection_path(path.parent, method) == path:
            return method
    path.unlink(missing_ok=True)
    raise FileNotFoundError(f"{path} was damaged and mapped earlier weights of {path.parent.name}, so it was "
                            "removed; compute the current map with projection.compute(run_dir, method)")


def load(path: Path) -> dict:
    """A projection file: arrays ``xy``, ``index``, ``image_embeds``, ``text_embeds``; lists ``captions``,
    ``images``; ``attributes`` (column -> values); ``method`` (the one actually used).

    A damaged file (unreadable, truncated, failing a CRC-32, wrong shapes, non-finite values) is computed
    again in this process (``compute``: it loads the run), with a warning.
    """
    path = Path(path)
    try:
        out = _read(path)
    except Exception as err:  # any damage: map the run again
        if not path.is_file():
            raise
        warn_rebuild(path, err)
        out = _read(compute(path.parent, _requested_method(path)))
    attributes = {k[5:]: out.pop(k).tolist() for k in list(out) if k.startswith("attr_")}
    return {**out, "method": str(out["method"]), "captions": out["captions"].tolist(),
            "images": out["images"].tolist(), "attributes": attributes}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m xmodal.dashboard.projection", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="one or more run folders (one process "
                   "for several saves compiling UMAP's numba code again)")
    p.add_argument("--method", choices=["umap", "pca"], default="umap")
    a = p.parse_args(argv)
    failed = 0
    for run_dir in map(Path, a.run_dirs):
        err_path = run_dir / f"projection_{a.method}.error"
        try:
            path = compute(run_dir, a.method)
        except Exception as err:  # reported to the page through the error file
            err_path.write_text(f"{type(err).__name__}: {err}")
            print(f"error: {run_dir}: {err}", file=sys.stderr)
            failed += 1
            continue
        err_path.unlink(missing_ok=True)
        print(path)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
