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
