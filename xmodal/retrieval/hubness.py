"""Hubness reduction at query time: CSLS offsets learnt from a bank of the queries' modality.

In a joint space some gallery items ("hubs") sit close to very many queries and swallow their top ranks.
CSLS (Conneau et al., "Word translation without parallel data", ICLR 2018) scores a query q against a gallery
item g as ``2 cos(q, g) - r(q) - r(g)``, where ``r(g)`` is g's mean similarity to its ``k`` nearest queries of
a bank (here: the catalogue's embeddings of the queries' modality, so no live query is needed). ``r(q)`` is the
same for every item of one query, so the ranking is that of ``cos(q, g) - weight * r(g)``: one offset per
gallery item, computed once per gallery. ``weight`` 0.5 is CSLS exactly; it and ``k`` were chosen on the
Myntra validation split (docs/quality.md).

The k-occurrence measures (``k_occurrence``, ``hubness_stats``, ``split_hubness``) are NumPy alone, so the
dashboard measures a run's hubs from its embeddings file without loading PyTorch; CSLS's offsets use PyTorch.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

CSLS_K = 30  # bank neighbours per gallery item
CSLS_WEIGHT = 0.5  # CSLS's own weight (2 cos - r(g), halved)
_BLOCK = 1 << 24  # scores held at once while computing offsets (64 MB of float32)


def csls_offsets(bank: Any, gallery: Any, k: int = CSLS_K) -> torch.Tensor:
    """``r(g)``: each gallery row's mean cosine to its ``k`` nearest bank rows ``[N]`` (float32).

    Args:
        bank: ``[B, D]`` unit vectors of the queries' modality (e.g. every caption for an image gallery).
        gallery: ``[N, D]`` unit vectors searched.
        k: neighbours averaged (capped at ``B``).
    """
    import torch  # lazy: PyTorch is heavy, and the k-occurrence measures below need NumPy alone
    bank_t = torch.as_tensor(np.asarray(bank, dtype=np.float32))
    gal = torch.as_tensor(np.asarray(gallery, dtype=np.float32))
    if bank_t.ndim != 2 or gal.ndim != 2 or bank_t.shape[1] != gal.shape[1] or len(bank_t) == 0:
        raise ValueError(f"bank {tuple(bank_t.shape)} and gallery {tuple(gal.shape)} must be [B, D] and [N, D]")
    k = max(1, min(int(k), len(bank_t)))
    step = max(1, _BLOCK // len(bank_t))
    out = torch.empty(len(gal))
    for s in range(0, len(gal), step):
        sim = gal[s:s + step] @ bank_t.T  # [b, B]
        out[s:s + step] = sim.topk(k, dim=1).values.mean(1)
    return out


def corrected(scores: torch.Tensor, offsets: torch.Tensor, weight: float = CSLS_WEIGHT) -> torch.Tensor:
    """Scores ``[..., N]`` with each gallery item's hubness taken off: ``scores - weight * offsets``."""
    return scores - weight * offsets


def csls_topk(queries: Any, gallery: Any, offsets: torch.Tensor, k: int, weight: float = CSLS_WEIGHT
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` best gallery rows of each query ``[Q, D]`` under CSLS: (corrected scores, indices), ``[Q, k]``."""
    import torch  # lazy: as in csls_offsets
    q = torch.as_tensor(np.asarray(queries, dtype=np.float32))
    q = q[None] if q.ndim == 1 else q
    gal = torch.as_tensor(np.asarray(gallery, dtype=np.float32))
    return corrected(q @ gal.T, offsets, weight).topk(min(k, len(gal)), dim=1)


def top_k(queries: Any, gallery: Any, k: int = 10, offsets: Any = None, weight: float = CSLS_WEIGHT,
          block: int = 4096) -> np.ndarray:
    """The ``k`` gallery rows each query ``[Q, D]`` ranks first ``[Q, k]`` (unordered; CSLS when ``offsets`` are
    given). NaN scores are never among them."""
    q = np.asarray(queries, dtype=np.float32)
    gal = np.asarray(gallery, dtype=np.float32)
    k = min(int(k), len(gal))
    if k < 1:
        return np.empty((len(q), 0), dtype=np.int64)
    penalty = None if offsets is None else weight * np.asarray(offsets, dtype=np.float32)
    out = np.empty((len(q), k), dtype=np.int64)
    for s in range(0, len(q), block):
        scores = q[s:s + block] @ gal.T  # [b, N]
        if penalty is not None:
            scores -= penalty
        scores[np.isnan(scores)] = -np.inf  # NaN would sort as the largest
        out[s:s + block] = np.argpartition(scores, len(gal) - k, axis=1)[:, len(gal) - k:]
    return out


def k_occurrence(queries: Any, gallery: Any, k: int = 10, offsets: Any = None, weight: float = CSLS_WEIGHT,
                 block: int = 4096) -> np.ndarray:
    """How many queries put each gallery row in their top ``k`` ``[N]`` (with CSLS when ``offsets`` are given)."""
    return np.bincount(top_k(queries, gallery, k, offsets, weight, block).ravel(), minlength=len(gallery))


def hubness_stats(counts: np.ndarray, k: int = 10, top: int = 5) -> dict:
    """The standard hubness measures of a k-occurrence distribution (Radovanovic et al., JMLR 2010).

    Returns:
        ``skewness`` (of N_k; 0 for a symmetric distribution, large for hubs), ``anti_hub_share`` (percent of
        gallery items no query retrieves in its top k), ``max`` (the biggest hub's N_k, ``max_share``: the
        percent of queries it reaches), ``top`` (the ``top`` hubs' ``[index, N_k]``), ``k``.
    """
    c = np.asarray(counts, dtype=np.float64)
    n_queries = c.sum() / k if k else 0
    order = np.argsort(-c, kind="stable")[:top]
    return {"k": k, "skewness": skewness(c),
            "anti_hub_share": float(100 * (c == 0).mean()), "max": int(c.max(initial=0)),
            "max_share": float(100 * c.max(initial=0) / n_queries) if n_queries else 0.0,
            "top": [[int(i), int(c[i])] for i in order]}


def skewness(counts: np.ndarray) -> float:
    """The skewness of a k-occurrence distribution (0 when every item is retrieved equally often)."""
    c = np.asarray(counts, dtype=np.float64)
    sd = c.std()
    return float(((c - c.mean()) ** 3).mean() / sd ** 3) if sd > 0 else 0.0


def skewness_interval(tops: np.ndarray, n: int) -> tuple[float, float]:
    """A 95 % interval of the k-occurrence skewness over the queries: the delete-one jackknife's standard error,
    +-1.96 of it around the estimate.

    The bootstrap does not fit here: a query drawn twice adds to the same k items twice, which skews N_k by
    itself (its percentiles missed the estimate on Myntra). Leaving one query out changes k counts by one, so
    each of the Q jackknife values is updated from the sums of N_k, N_k^2 and N_k^3 in O(k).

    Args:
        tops: each query's top-k gallery rows ``[Q, k]`` (``top_k``: k distinct rows per query).
        n: the gallery's size.
    """
    q = len(tops)
    if q < 2 or n < 2:
        return (0.0, 0.0)
    c = np.bincount(tops.ravel(), minlength=n).astype(np.float64)
    ct = c[tops]  # [Q, k] the counts each query's items had
    s1 = c.sum() - tops.shape[1]  # the sums once query i is left out, each [Q]
    s2 = (c ** 2).sum() - (2 * ct - 1).sum(1)
    s3 = (c ** 3).sum() - (3 * ct ** 2 - 3 * ct + 1).sum(1)
    m1 = s1 / n
    var = s2 / n - m1 ** 2
    m3 = s3 / n - 3 * m1 * s2 / n + 2 * m1 ** 3
    values = np.zeros(q)
    spread = var > 1e-9  # integer counts that vary have a variance of 1/n at least; below is rounding
    values[spread] = m3[spread] / var[spread] ** 1.5
    se = np.sqrt((q - 1) / q * ((values - values.mean()) ** 2).sum())
    centre = skewness(c)
    return float(centre - 1.959963984540054 * se), float(centre + 1.959963984540054 * se)


def split_hubness(image: Any, text: Any, k: int = 10, top: int = 5) -> dict:
    """Hubness of one split's 1:1 galleries, both directions: ``{direction: hubness_stats(...) +
    skewness_ci95}``; ``text_to_image`` counts how often each photo is in a title's top ``k``,
    ``image_to_text`` how often each title is in a photo's."""
    image, text = np.asarray(image, dtype=np.float32), np.asarray(text, dtype=np.float32)
    out = {}
    for direction, queries, gallery in (("text_to_image", text, image), ("image_to_text", image, text)):
        tops = top_k(queries, gallery, k)
        stats = hubness_stats(np.bincount(tops.ravel(), minlength=len(gallery)), k, top)
        out[direction] = {**stats, "skewness_ci95": list(skewness_interval(tops, len(gallery))),
                          "queries": len(queries), "gallery": len(gallery)}
    return out
