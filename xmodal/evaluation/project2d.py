"""Points of the joint space -> 2-D coordinates: UMAP (cosine), or PCA for a handful of points.

UMAP's kernels are numba code compiled on first call; ``import_umap`` keeps the compiled code in numba's
on-disk cache, and ``warm_umap`` fills it once per installation (``python -m xmodal.warmup``). The dashboard's
cached map of a run (``xmodal.dashboard.maps.projection``) and the bench call ``project``.
"""
from __future__ import annotations

import sys
import warnings

import numpy as np

UMAP_MIN_POINTS = 50  # below this UMAP's graph is too thin to mean much: PCA instead


def import_umap():
    """``umap`` with its numba kernels' compiled code cached on disk (numba's own cache, beside umap-learn's
    and pynndescent's files or in numba's user-wide cache, like Python's .pyc): each new process otherwise
    compiles them again, many seconds before even a small map. Kernels that numba cannot cache simply
    compile as before."""
    import umap  # lazy: a heavy optional dependency (numba), imported only to draw a UMAP map
    from numba.core.registry import CPUDispatcher  # lazy: numba, loaded by umap above
    global _UMAP_CACHING
    if not _UMAP_CACHING:
        _UMAP_CACHING = True
        for name, module in list(sys.modules.items()):
            if name.split(".")[0] not in ("umap", "pynndescent") or module is None:
                continue
            for value in list(vars(module).values()):
                if isinstance(value, CPUDispatcher) and type(value._cache).__name__ == "NullCache":
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        try:
                            value.enable_caching()
                        except Exception:  # noqa: BLE001 - a kernel numba cannot cache still compiles
                            pass
    return umap


_UMAP_CACHING = False


def warm_umap() -> None:
    """Compile (or load) UMAP's kernels into numba's on-disk cache with a tiny map (``python -m
    xmodal.warmup``, which the README's set-up command runs once after installing)."""
    points = np.random.default_rng(0).normal(size=(2 * UMAP_MIN_POINTS, 8)).astype(np.float32)
    project(points, "umap")


def project(points: np.ndarray, method: str = "umap", seed: int = 0, n_neighbors: int = 15,
            min_dist: float = 0.1) -> tuple[np.ndarray, str]:
    """2-D coordinates of ``points`` ``[M, D]`` and the method actually used.

    UMAP (cosine metric) when there are at least ``UMAP_MIN_POINTS`` points, else PCA.
    """
    points = np.asarray(points, dtype=np.float32)
    if method == "umap" and len(points) >= UMAP_MIN_POINTS:
        umap = import_umap()  # slow first import: numba compiles or loads its kernels
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
