"""Protocols that predict products nobody has seen: a title-deduplicated gallery, and recall at a fixed gallery size.

Caption-level ground truth on a split where a third of the items share their exact title with another item
hands out free matches: any product of the title counts. A fresh sample of a catalogue has almost no repeated
titles, so the split's caption-level figures overstate what new products get. Two protocols answer that:

- **title-deduplicated**: the gallery keeps one product per distinct normalised title (seeded choice), every
  kept product queries it in both directions; with unique titles item- and caption-level agree.
- **fixed gallery**: recall of the deduplicated products in galleries of ``FIXED_GALLERY`` of them, averaged
  over ``FIXED_REPS`` seeded subsamples, so that splits and catalogues of different sizes compare. Its 95 %
  interval is a percentile bootstrap over products of each product's hit rate across the subsamples.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from . import metrics

FIXED_GALLERY = 500  # products per gallery: fits the title-deduplicated Myntra val and test splits (~700)
FIXED_REPS = 50  # seeded subsamples averaged
DEDUP_NAME = "title-deduplicated (one product per distinct title)"
FIXED_NAME = f"fixed gallery of {FIXED_GALLERY} title-deduplicated products ({FIXED_REPS} seeded subsamples)"


def one_per_title(captions: Sequence[str], seed: int = 0) -> np.ndarray:
    """Sorted positions of one product per distinct normalised title, drawn with ``seed``."""
    groups = metrics.title_groups(captions)
    order = np.random.default_rng(seed).permutation(len(groups))
    _, first = np.unique(groups[order], return_index=True)  # the first of each title in the shuffled order
    return np.sort(order[first])


def dedup_ranks(image_embeds: Any, text_embeds: Any, captions: Sequence[str], seed: int = 0
                ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Ranks of every kept product in the title-deduplicated gallery, both directions, and the kept positions."""
    keep = one_per_title(captions, seed)
    img, txt = metrics._numpy(image_embeds)[keep], metrics._numpy(text_embeds)[keep]
    return metrics.query_ranks(img, txt), keep


def fixed_gallery(image_embeds: Any, text_embeds: Any, captions: Sequence[str], size: int = FIXED_GALLERY,
                  reps: int = FIXED_REPS, seed: int = 0, intervals: bool = True) -> dict | None:
    """R@K of title-deduplicated products in galleries of ``size``, averaged over ``reps`` seeded subsamples.

    Returns:
        ``{"size", "reps", "pool", "metrics": {direction/R@K: percent, "rsum"}, "ci95": {key: [lo, hi]}}``,
        or None when the split has fewer than ``size`` distinct titles.
    """
    keep = one_per_title(captions, seed)
    if len(keep) < size:
        return None
    img, txt = metrics._numpy(image_embeds)[keep], metrics._numpy(text_embeds)[keep]
    rng = np.random.default_rng(seed)
    hits = {(d, k): np.zeros(len(keep)) for d in metrics.DIRECTIONS for k in metrics.KS}
    drawn = np.zeros(len(keep))
    for _ in range(reps):
        sub = rng.choice(len(keep), size, replace=False)
        ranks = metrics.query_ranks(img[sub], txt[sub])
        drawn[sub] += 1
        for (d, k), h in hits.items():
            h[sub] += ranks[d] <= k
    seen = drawn > 0
    rate = {key: h[seen] / drawn[seen] for key, h in hits.items()}  # each product's hit rate  [n_seen]
    out = {f"{d}/R@{k}": float(100 * r.mean()) for (d, k), r in rate.items()}
    out["rsum"] = sum(out.values())
    result = {"size": size, "reps": reps, "pool": int(len(keep)), "metrics": out}
    if intervals:
        result["ci95"] = _bootstrap_rates(rate)
    return result


def _bootstrap_rates(rate: dict[tuple[str, int], np.ndarray]) -> dict[str, list[float]]:
    """Percentile bootstrap over products of the mean hit rates (and their sum, rsum)."""
    n = len(next(iter(rate.values())))
    boot = {key: [] for key in rate}
    for idx in metrics._resamples(n, metrics.BOOTSTRAP_REPS, metrics.BOOTSTRAP_SEED):  # blocks [r, n]
        for key, r in rate.items():
            boot[key].append(100 * r[idx].mean(1))
    arrays = {f"{d}/R@{k}": np.concatenate(v) for (d, k), v in boot.items()}
    arrays["rsum"] = sum(arrays.values())
    return {key: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] for key, v in arrays.items()}


def protocol_numbers(image_embeds: Any, text_embeds: Any, captions: Sequence[str], intervals: bool = True) -> dict:
    """Both protocols for one split: ``dedup`` (metrics), ``dedup_gallery_size``, ``fixed_gallery`` (or None),
    ``dedup_ranks`` (``{direction: [kept] ranks}``) and with ``intervals`` the dedup's ``ci95`` (what
    ``score_embeddings`` adds to ``test.json``)."""
    ranks, keep = dedup_ranks(image_embeds, text_embeds, captions)
    out = {"dedup": metrics.summarise(ranks), "dedup_gallery_size": int(len(keep)),
           "fixed_gallery": fixed_gallery(image_embeds, text_embeds, captions, intervals=intervals),
           "protocols": {"dedup": DEDUP_NAME, "fixed_gallery": FIXED_NAME}}
    if intervals:
        out["dedup_ci95"] = metrics.bootstrap_intervals(ranks)
    out["dedup_ranks"] = ranks  # per kept product, for paired tests between runs on the same split
    return out
