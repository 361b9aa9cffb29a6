"""Hubness reduction at query time: CSLS offsets learnt from a bank of the queries' modality.

In a joint space some gallery items ("hubs") sit close to very many queries and swallow their top ranks.
CSLS (Conneau et al., "Word translation without parallel data", ICLR 2018) scores a query q against a gallery
item g as ``2 cos(q, g) - r(q) - r(g)``, where ``r(g)`` is g's mean similarity to its ``k`` nearest queries of
a bank (here: the catalogue's embeddings of the queries' modality, so no live query is needed). ``r(q)`` is the
same for every item of one query, so the ranking is that of ``cos(q, g) - weight * r(g)``: one offset per
gallery item, computed once per gallery. ``weight`` 0.5 is CSLS exactly; it and ``k`` were chosen on the
Myntra validation split (docs/quality.md).
"""
from __future__ import annotations

from typing import Any

import numpy as np
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
    q = torch.as_tensor(np.asarray(queries, dtype=np.float32))
    q = q[None] if q.ndim == 1 else q
    gal = torch.as_tensor(np.asarray(gallery, dtype=np.float32))
    return corrected(q @ gal.T, offsets, weight).topk(min(k, len(gal)), dim=1)


def k_occurrence(queries: Any, gallery: Any, k: int = 10, offsets: torch.Tensor | None = None,
                 weight: float = CSLS_WEIGHT, block: int = 4096) -> np.ndarray:
    """How many queries put each gallery row in their top ``k`` ``[N]`` (with CSLS when ``offsets`` are given)."""
    q = torch.as_tensor(np.asarray(queries, dtype=np.float32))
    gal = torch.as_tensor(np.asarray(gallery, dtype=np.float32))
    counts = torch.zeros(len(gal), dtype=torch.int64)
    for s in range(0, len(q), block):
        scores = q[s:s + block] @ gal.T  # [b, N]
        if offsets is not None:
            scores = corrected(scores, offsets, weight)
        counts += torch.bincount(scores.topk(min(k, len(gal)), dim=1).indices.flatten(), minlength=len(gal))
    return counts.numpy()


def hubness_stats(counts: np.ndarray, k: int = 10, top: int = 5) -> dict:
    """The standard hubness measures of a k-occurrence distribution (Radovanovic et al., JMLR 2010).

    Returns:
        ``skewness`` (of N_k; 0 for a symmetric distribution, large for hubs), ``anti_hub_share`` (percent of
        gallery items no query retrieves in its top k), ``max`` (the biggest hub's N_k, ``max_share``: the
        percent of queries it reaches), ``top`` (the ``top`` hubs' ``[index, N_k]``), ``k``.
    """
    c = np.asarray(counts, dtype=np.float64)
    sd = c.std()
    n_queries = c.sum() / k if k else 0
    order = np.argsort(-c, kind="stable")[:top]
    return {"k": k, "skewness": float(((c - c.mean()) ** 3).mean() / sd ** 3) if sd > 0 else 0.0,
            "anti_hub_share": float(100 * (c == 0).mean()), "max": int(c.max(initial=0)),
            "max_share": float(100 * c.max(initial=0) / n_queries) if n_queries else 0.0,
            "top": [[int(i), int(c[i])] for i in order]}
