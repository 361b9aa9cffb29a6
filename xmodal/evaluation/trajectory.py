"""How the joint space forms: the per-epoch snapshots of a run (``xmodal.training.snapshots``) as aligned maps.

Every epoch is drawn in the map of the last epoch, the formed space: the projection (PCA, or UMAP with cosine
distance) is fitted once on the last epoch's photos and titles and every other epoch is placed by the same
fitted projection. A product whose embeddings did not change between two epochs therefore keeps its place
exactly (PCA) or to the projection's determinism (UMAP's ``transform`` with a fixed seed), and the motion on the
map is the motion of the space. Beside each map, per epoch: how far apart the pairs are (mean cosine of a
product's photo and title), the modality gap (distance between the photo and title centroids) and the recall
of the snapshot's products among themselves.
"""
from __future__ import annotations

import numpy as np

from . import metrics
from .project2d import import_umap


def _stack(img: np.ndarray, txt: np.ndarray) -> np.ndarray:
    return np.concatenate([img, txt]).astype(np.float32)  # [2n, D]: photos, then titles


def aligned_maps(snapshots: dict[int, tuple[np.ndarray, np.ndarray]], method: str = "pca", seed: int = 0
                 ) -> dict[int, np.ndarray]:
    """``{epoch: [2n, 2]}`` (the n photo points, then the n title points) in the last epoch's projection.

    Raises:
        ValueError: no snapshots, or an unknown ``method`` (``pca`` or ``umap``).
    """
    if not snapshots:
        raise ValueError("the run kept no snapshots (trained with --snapshots 0, or before they existed)")
    last = max(snapshots)
    ref = _stack(*snapshots[last])
    if method == "pca":
        centre = ref.mean(0)
        _, _, vt = np.linalg.svd(ref - centre, full_matrices=False)
        axes = vt[:2].T  # [D, 2]
        return {e: (_stack(*s) - centre) @ axes for e, s in sorted(snapshots.items())}
    if method == "umap":
        umap = import_umap()  # umap-learn and numba load here, only for this method
        reducer = umap.UMAP(n_components=2, metric="cosine", random_state=seed, n_neighbors=15, min_dist=0.1)
        fitted = reducer.fit_transform(ref)
        return {e: (fitted if e == last else reducer.transform(_stack(*s))) for e, s in sorted(snapshots.items())}
    raise ValueError(f"unknown projection {method!r}; choose pca or umap")


def epoch_stats(snapshots: dict[int, tuple[np.ndarray, np.ndarray]], captions: list[str] | None = None) -> list[dict]:
    """Per epoch: ``pair_cosine`` (mean cosine of each product's photo and title), ``modality_gap`` (distance
    between the unit photo and title centroids), and the snapshot products' caption-level ``t2i_R@1`` and
    ``rsum`` among themselves (item-level without ``captions``)."""
    out = []
    for epoch, (img, txt) in sorted(snapshots.items()):
        unit_i = img / np.maximum(np.linalg.norm(img, axis=1, keepdims=True), 1e-12)
        unit_t = txt / np.maximum(np.linalg.norm(txt, axis=1, keepdims=True), 1e-12)
        ranks = (metrics.split_ranks(unit_i, unit_t, captions, "caption") if captions is not None
                 else metrics.query_ranks(unit_i, unit_t))
        summary = metrics.summarise(ranks)
        out.append({"epoch": epoch, "pair_cosine": float((unit_i * unit_t).sum(1).mean()),
                    "modality_gap": float(np.linalg.norm(unit_i.mean(0) - unit_t.mean(0))),
                    "t2i_R@1": summary["text_to_image/R@1"], "rsum": summary["rsum"]})
    return out
