"""Retrieval metrics: pure functions from embeddings to a flat dict with stable keys.

Ranks are computed once per direction by one helper. A query's rank is 1 + the number of gallery
entries that are not correct matches and score at least as high as its best correct match (ties count
against the model, so a collapsed model scores badly). Median rank is ``floor(median(r - 1)) + 1``
over the 1-based ranks ``r``: 1 when most queries are right at the top, never a percentage.
"""
from __future__ import annotations

import numpy as np
import torch

KS = (1, 5, 10)


def first_match_ranks(sim: torch.Tensor, relevant: torch.Tensor, chunk: int = 1024) -> np.ndarray:
    """1-based rank of the best-scoring correct match of each query.

    Args:
        sim: similarities ``[Q, G]``.
        relevant: boolean ``[Q, G]``, True where the gallery entry is a correct match; every row needs one.

    Returns:
        int64 ranks ``[Q]``.
    """
    if not bool(relevant.any(1).all()):
        raise ValueError("every query needs at least one correct match in the gallery")
    ranks = []
    for s in range(0, sim.shape[0], chunk):
        sim_c, rel_c = sim[s:s + chunk], relevant[s:s + chunk]
        best = sim_c.masked_fill(~rel_c, float("-inf")).max(1, keepdim=True).values  # [q, 1]
        ranks.append(((sim_c >= best) & ~rel_c).sum(1) + 1)
    return torch.cat(ranks).cpu().numpy().astype(np.int64)


def rank_metrics(ranks: np.ndarray, prefix: str) -> dict[str, float]:
    """R@1/5/10 (percent), median rank, mean rank for one direction."""
    out = {f"{prefix}/R@{k}": float(100.0 * np.mean(ranks <= k)) for k in KS}
    out[f"{prefix}/median_rank"] = float(np.floor(np.median(ranks - 1)) + 1)
    out[f"{prefix}/mean_rank"] = float(np.mean(ranks))
    return out


def relevance(groups_q: np.ndarray | list, groups_g: np.ndarray | list) -> torch.Tensor:
    """Boolean ``[Q, G]``: True where query and gallery entry share a group id."""
    gq = torch.as_tensor(np.asarray(groups_q))
    gg = torch.as_tensor(np.asarray(groups_g))
    return gq[:, None] == gg[None, :]


def retrieval_metrics(image_embeds: torch.Tensor, text_embeds: torch.Tensor, groups: np.ndarray | list | None = None,
                      queries: np.ndarray | None = None) -> dict[str, float]:
    """Both directions over one split: image i matches text i (and, with ``groups``, every text of its group).

    Args:
        image_embeds: ``[N, D]`` L2-normalised.
        text_embeds: ``[N, D]`` L2-normalised, row i describing image i.
        groups: per-item group id (e.g. caption id for caption-level ground truth); None = item level.
        queries: boolean ``[N]``: score only these items as queries (both directions), against the whole
            gallery; None = every item. E.g. the items whose title never occurs in the train split.

    Returns:
        ``text_to_image/R@1`` ... ``image_to_text/mean_rank`` and ``rsum`` (sum of the six recalls).
    """
    n = image_embeds.shape[0]
    groups = np.arange(n) if groups is None else np.asarray(groups)
    rel = relevance(groups, groups)  # symmetric: same for both directions
    sim = text_embeds.float() @ image_embeds.float().t()  # [N texts, N images]
    q = torch.ones(n, dtype=torch.bool) if queries is None else torch.as_tensor(np.asarray(queries, dtype=bool))
    if not bool(q.any()):
        raise ValueError("no query selected")
    out = rank_metrics(first_match_ranks(sim[q], rel[q]), "text_to_image")
    out.update(rank_metrics(first_match_ranks(sim.t()[q], rel[q]), "image_to_text"))
    out["rsum"] = sum(out[f"{d}/R@{k}"] for d in ("text_to_image", "image_to_text") for k in KS)
    return out


def similarity_stats(image_embeds: torch.Tensor, text_embeds: torch.Tensor, max_n: int = 2000) -> dict[str, float]:
    """Mean cosine similarity of matching pairs and of non-matching pairs (collapse shows as equal)."""
    img, txt = image_embeds[:max_n].float(), text_embeds[:max_n].float()
    sim = txt @ img.t()
    n = sim.shape[0]
    pos = sim.diagonal().mean()
    neg = (sim.sum() - sim.diagonal().sum()) / max(n * n - n, 1)
    return {"pos_sim": float(pos), "neg_sim": float(neg)}
