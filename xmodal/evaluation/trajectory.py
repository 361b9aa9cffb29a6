"""How the joint space forms: the per-epoch snapshots of a run (``xmodal.training.snapshots``) as aligned maps.

Every epoch is drawn in the map of the last epoch, the formed space: the projection (PCA, or UMAP with cosine
distance) is fitted once on the last epoch's photos and titles and every other epoch is placed by the same
fitted projection. A product whose embeddings did not change between two epochs therefore keeps its place
exactly (PCA) or to the projection's determinism (UMAP's ``transform`` with a fixed seed), and the motion on the
map is the motion of the space. Beside each map, per epoch: how far apart the pairs are (mean cosine of a
product's photo and title), the modality gap (distance between the photo and title centroids) and the recall
of the snapshot's products among themselves, with bootstrap intervals.

Two other alignments are kept for comparison (``python -m xmodal.evaluation.trajectory RUN_DIR``, measured in
docs/quality.md): ``aligned-umap`` (umap-learn's AlignedUMAP, every epoch fitted jointly, consecutive epochs
tied product by product) and ``procrustes-umap`` (a UMAP per epoch, each rotated and scaled onto the next one):
both move unchanged points, which the last epoch's projection never does.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from . import metrics
from .project2d import UMAP_MIN_POINTS, import_umap, warm_umap

METHODS = ("pca", "umap")  # what the dashboard offers
COMPARED = ("pca", "umap", "aligned-umap", "procrustes-umap")  # what ``compare`` measures


def _stack(img: np.ndarray, txt: np.ndarray) -> np.ndarray:
    return np.concatenate([img, txt]).astype(np.float32)  # [2n, D]: photos, then titles


def method_used(snapshots: dict[int, tuple[np.ndarray, np.ndarray]], method: str) -> str:
    """``method``, or ``pca`` for a UMAP of fewer than ``UMAP_MIN_POINTS`` points (too thin a graph)."""
    if method not in COMPARED:
        raise ValueError(f"unknown projection {method!r}; choose one of {', '.join(COMPARED)}")
    n_points = 2 * len(next(iter(snapshots.values()))[0]) if snapshots else 0
    return "pca" if method != "pca" and n_points < UMAP_MIN_POINTS else method


def _reducer(umap, n: int, seed: int, n_neighbors: int, min_dist: float):
    return umap.UMAP(n_components=2, metric="cosine", random_state=seed, n_neighbors=min(n_neighbors, n - 1),
                     min_dist=min_dist, n_jobs=1)


def _procrustes(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a`` [m, 2] rotated (or reflected), scaled and moved to lie as close as it can to ``b`` [m, 2]."""
    a0, b0 = a - a.mean(0), b - b.mean(0)
    u, s, vt = np.linalg.svd(a0.T @ b0)
    scale = s.sum() / max(float((a0 ** 2).sum()), 1e-12)
    return (scale * a0 @ (u @ vt) + b.mean(0)).astype(np.float32)


def aligned_maps(snapshots: dict[int, tuple[np.ndarray, np.ndarray]], method: str = "pca", seed: int = 0,
                 n_neighbors: int = 15, min_dist: float = 0.1) -> dict[int, np.ndarray]:
    """``{epoch: [2n, 2]}`` (the n photo points, then the n title points) aligned across epochs.

    ``pca`` and ``umap`` draw every epoch in the last epoch's projection; ``aligned-umap`` and
    ``procrustes-umap`` are the alternatives ``compare`` measures. A UMAP of too few points is a PCA
    (``method_used``).

    Raises:
        ValueError: no snapshots, or an unknown ``method`` (``COMPARED``).
    """
    if not snapshots:
        raise ValueError("the run kept no snapshots (trained with --snapshots 0, or before they existed)")
    method = method_used(snapshots, method)
    epochs = sorted(snapshots)
    stacks = {e: _stack(*snapshots[e]) for e in epochs}
    last, ref = epochs[-1], stacks[epochs[-1]]
    if method == "pca":
        centre = ref.mean(0)
        _, _, vt = np.linalg.svd(ref - centre, full_matrices=False)
        axes = vt[:2].T  # [D, 2]
        return {e: ((s - centre) @ axes).astype(np.float32) for e, s in stacks.items()}
    umap = import_umap()  # umap-learn and numba load here, only for these methods
    if method == "umap" or len(epochs) == 1:
        reducer = _reducer(umap, len(ref), seed, n_neighbors, min_dist)
        fitted = reducer.fit_transform(ref)
        return {e: np.asarray(fitted if e == last else reducer.transform(s), dtype=np.float32)
                for e, s in stacks.items()}
    if method == "aligned-umap":
        same = {i: i for i in range(len(ref))}  # each point is the same product in every epoch
        fitted = umap.AlignedUMAP(n_neighbors=min(n_neighbors, len(ref) - 1), min_dist=min_dist, metric="cosine",
                                  random_state=seed)
        fitted.fit([stacks[e] for e in epochs], relations=[same] * (len(epochs) - 1))
        return {e: np.asarray(m, dtype=np.float32) for e, m in zip(epochs, fitted.embeddings_)}
    out = {last: _reducer(umap, len(ref), seed, n_neighbors, min_dist).fit_transform(ref).astype(np.float32)}
    for e, after in zip(epochs[-2::-1], epochs[:0:-1]):  # backwards: each epoch onto the one after it
        out[e] = _procrustes(_reducer(umap, len(ref), seed, n_neighbors, min_dist).fit_transform(stacks[e]), out[after])
    return dict(sorted(out.items()))


def epoch_stats(snapshots: dict[int, tuple[np.ndarray, np.ndarray]], captions: list[str] | None = None,
                ground_truth: str = "caption", intervals: bool = True) -> list[dict]:
    """Per epoch: ``pair_cosine`` (mean cosine of each product's photo and title), ``modality_gap`` (distance
    between the unit photo and title centroids), and the snapshot products' ``t2i_R@1``, ``i2t_R@1`` and
    ``rsum`` among themselves under ``ground_truth`` (item-level without ``captions``), with ``ci95``
    (bootstrap over the products, ``metrics.bootstrap_intervals``) when ``intervals``."""
    out = []
    for epoch, (img, txt) in sorted(snapshots.items()):
        unit_i = img / np.maximum(np.linalg.norm(img, axis=1, keepdims=True), 1e-12)
        unit_t = txt / np.maximum(np.linalg.norm(txt, axis=1, keepdims=True), 1e-12)
        ranks = (metrics.split_ranks(unit_i, unit_t, captions, ground_truth) if captions is not None
                 else metrics.query_ranks(unit_i, unit_t))
        summary = metrics.summarise(ranks)
        row = {"epoch": epoch, "pair_cosine": float((unit_i * unit_t).sum(1).mean()),
               "modality_gap": float(np.linalg.norm(unit_i.mean(0) - unit_t.mean(0))),
               "t2i_R@1": summary["text_to_image/R@1"], "i2t_R@1": summary["image_to_text/R@1"],
               "rsum": summary["rsum"]}
        if intervals:
            ci = metrics.bootstrap_intervals(ranks)
            row["ci95"] = {"t2i_R@1": ci["text_to_image/R@1"], "i2t_R@1": ci["image_to_text/R@1"], "rsum": ci["rsum"]}
        out.append(row)
    return out


# ---------------------------------------------------------------- how well an alignment keeps its places

def _spread(xy: np.ndarray) -> float:
    """The map's scale: median distance of its points from their centre (displacements are in these units)."""
    return max(float(np.median(np.linalg.norm(xy - xy.mean(0), axis=1))), 1e-12)


def displacement(snapshots: dict[int, tuple[np.ndarray, np.ndarray]], maps: dict[int, np.ndarray],
                 still: np.ndarray | None = None, quantile: float = 0.1) -> dict[str, float]:
    """How far points move on the map between consecutive epochs, in units of the later map's spread, medians
    over the pairs of epochs: ``still`` for the points that did not move (``still``: a boolean ``[n]`` over the
    products; else the ``quantile`` of the points whose embedding moved least, by cosine distance: the places a
    good alignment keeps) and ``moving`` for the others (the motion it should still show)."""
    calm_d, moving_d = [], []
    epochs = sorted(snapshots)
    for a, b in zip(epochs, epochs[1:]):
        if still is None:
            x, y = _stack(*snapshots[a]), _stack(*snapshots[b])
            moved = 1.0 - (x * y).sum(1) / np.maximum(np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1), 1e-12)
            calm = moved <= np.quantile(moved, quantile)  # [2n]
        else:
            calm = np.concatenate([still, still])  # a product's photo and title points
        d = np.linalg.norm(maps[b] - maps[a], axis=1) / _spread(maps[b])
        calm_d.append(float(np.median(d[calm])))
        moving_d.append(float(np.median(d[~calm])))
    return {"still": float(np.median(calm_d)) if calm_d else 0.0,
            "moving": float(np.median(moving_d)) if moving_d else 0.0}


def freeze(snapshots: dict[int, tuple[np.ndarray, np.ndarray]], share: float = 0.5, seed: int = 0
           ) -> tuple[dict[int, tuple[np.ndarray, np.ndarray]], np.ndarray]:
    """The snapshots with a random ``share`` of the products held at their middle epoch's embeddings in every
    epoch (truly unchanged points among moving ones), and the boolean ``[n]`` of those held."""
    epochs = sorted(snapshots)
    mid = snapshots[epochs[len(epochs) // 2]]
    n = len(mid[0])
    held = np.zeros(n, dtype=bool)
    held[np.random.default_rng(seed).choice(n, int(round(share * n)), replace=False)] = True
    out = {}
    for e, (img, txt) in snapshots.items():
        img, txt = img.copy(), txt.copy()
        img[held], txt[held] = mid[0][held], mid[1][held]
        out[e] = (img, txt)
    return out, held


def neighbour_preservation(snapshots: dict[int, tuple[np.ndarray, np.ndarray]], maps: dict[int, np.ndarray],
                           k: int = 10) -> float:
    """Mean over epochs and points of the share of each point's ``k`` nearest neighbours (cosine) in the space
    that are among its ``k`` nearest on that epoch's map: whether a stable map still shows each epoch's space."""
    shares = []
    for e, (img, txt) in snapshots.items():
        x = _stack(img, txt)
        x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        xy = maps[e].astype(np.float64)
        far = -(x @ x.T)  # [2n, 2n]
        near_map = ((xy[:, None, :] - xy[None, :, :]) ** 2).sum(-1)
        np.fill_diagonal(far, np.inf)
        np.fill_diagonal(near_map, np.inf)
        kk = min(k, len(x) - 1)
        a, b = np.argsort(far, 1)[:, :kk], np.argsort(near_map, 1)[:, :kk]
        shares.append(np.mean([len(np.intersect1d(p, q)) / kk for p, q in zip(a, b)]))
    return float(np.mean(shares))


def compare(snapshots: dict[int, tuple[np.ndarray, np.ndarray]], methods=COMPARED, seed: int = 0,
            still: np.ndarray | None = None) -> list[dict]:
    """Each alignment of ``snapshots``: ``seconds`` to compute, ``displacement`` (of the ``still`` products, when
    given) and ``neighbour_preservation``. UMAP's kernels are compiled first, outside the timings."""
    if any(method_used(snapshots, m) != "pca" for m in methods):
        warm_umap()
    rows = []
    for method in methods:
        t = time.perf_counter()
        maps = aligned_maps(snapshots, method, seed=seed)
        seconds = time.perf_counter() - t
        moved = displacement(snapshots, maps, still)
        rows.append({"method": method, "used": method_used(snapshots, method), "seconds": seconds,
                     "still": moved["still"], "moving": moved["moving"],
                     "neighbours": neighbour_preservation(snapshots, maps)})
    return rows


def _print(rows: list[dict], title: str) -> None:
    print(f"\n{title}\n")
    print("| method | seconds | still points moved (median, map spreads) | moving points moved | 10-NN kept |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['seconds']:.1f} | {r['still']:.3f} | {r['moving']:.3f} | {r['neighbours']:.2f} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m xmodal.evaluation.trajectory",
                                description="Compare the alignments of a run's per-epoch snapshots.")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run folder trained with --snapshots N")
    p.add_argument("--methods", nargs="+", choices=COMPARED, default=list(COMPARED))
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    from ..runs.snapshots import read_snapshots
    ids, snaps = read_snapshots(a.run_dir)
    if len(snaps) < 2:
        print(f"error: {a.run_dir} holds {len(snaps)} readable snapshot(s); train with --snapshots N for 2+ epochs",
              file=sys.stderr)
        return 2
    print(f"{a.run_dir.name}: {len(ids)} validation products ({2 * len(ids)} points), epochs {min(snaps)}-{max(snaps)}")
    _print(compare(snaps, a.methods, a.seed), "As trained; still: the tenth of points whose embedding moved least")
    held, mask = freeze(snaps, seed=a.seed)
    _print(compare(held, a.methods, a.seed, mask), "Half the products held at their middle epoch's embeddings; "
           "still: those (unchanged between any two epochs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
