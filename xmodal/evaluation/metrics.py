"""The metrics core: ranks, title groups, R@K, median and mean rank, rsum, their intervals and paired tests.

Every retrieval number xmodal shows comes from here: training's validation, ``evaluate``, ``report``, the
bench, the dashboard (Compare, slices, the map, the click panel, Search's "true match at rank N") and
``compose``. NumPy only (no torch import), so the dashboard ranks without PyTorch; torch tensors are
accepted and converted.

The rules, each in one function:

- **Rank**: 1 + the number of wrong gallery entries that score at least as high as the query's best correct
  entry. Ties count against the model, exactly: a wrong entry within ``TIE_TOL`` of the best correct score
  counts as a tie (identical captions get embeddings that differ in the last float bit, which would
  otherwise break ties at random).
- **Non-finite scores rank last**: a NaN or infinite similarity is treated as the worst score, so a query
  whose correct entries are all non-finite gets rank ``G - (correct entries) + 1`` (the last place), and a
  non-finite wrong entry never beats a finite correct one. NaN embeddings can never score well.
- **Median rank** is ``floor(median(r - 1)) + 1`` over 1-based ranks: 1 when most queries are right at the
  top, never a percentage.
- **Title groups** (caption-level ground truth): items whose normalised titles are identical
  (``xmodal.data.normalise_caption``) share a group.
- **Intervals**: a seeded percentile bootstrap over queries (the same resampled items for both directions,
  so rsum's interval is right too); Wilson's score interval for a single proportion where no ranks exist.
- **Paired comparison** of two runs on the same queries: a paired bootstrap of the difference; "different"
  only when its 95 % interval excludes 0.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np

from ..text.normalise import normalise_caption

KS = (1, 5, 10)
DIRECTIONS = ("text_to_image", "image_to_text")
TIE_TOL = 1e-5  # cosine scores closer than this are a tie (float32 noise of a 512-d dot product is ~1e-6)
BOOTSTRAP_REPS = 1000
BOOTSTRAP_SEED = 0
INTERVAL_METHOD = (f"95% percentile bootstrap over queries ({BOOTSTRAP_REPS} resamples, seed {BOOTSTRAP_SEED}; "
                   "both directions resample the same items)")
_BLOCK_SCORES = 1 << 25  # scores held at once when ranking in blocks (128 MB of float32)


def _numpy(x: Any, dtype=np.float32) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu().float().numpy() if dtype == np.float32 else x.detach().cpu().numpy()
    return np.ascontiguousarray(x, dtype=dtype)


# ---------------------------------------------------------------- ground truth

def title_groups(captions: Sequence[str]) -> np.ndarray:
    """Group id per item (first-seen order): items with the same normalised title share one.

    The caption-level ground truth, the title-grouped split and training's duplicate-title targets all
    use this function.
    """
    ids: dict[str, int] = {}
    return np.array([ids.setdefault(normalise_caption(c), len(ids)) for c in captions], dtype=np.int64)


def ground_truth_groups(captions: Sequence[str], ground_truth: str) -> np.ndarray | None:
    """Group ids for :func:`query_ranks`: title groups under ``caption``, None (item level) under ``item``."""
    if ground_truth not in ("caption", "item"):
        raise ValueError(f"unknown ground truth {ground_truth!r}; choose caption or item")
    return title_groups(captions) if ground_truth == "caption" else None


def canonical_texts(text_embeds: Any, groups: np.ndarray) -> np.ndarray:
    """Text embeddings with every member of a title group given its first member's row.

    Identical titles tokenise identically, so their embeddings are equal in exact arithmetic; batched
    float arithmetic makes them differ by an ulp. Merging them makes ties between identical captions exact.
    """
    txt = _numpy(text_embeds)
    if len(txt) == 0:
        return txt
    _, first, inverse = np.unique(np.asarray(groups), return_index=True, return_inverse=True)
    return txt[first[inverse.ravel()]]


# ---------------------------------------------------------------- ranks

def _beaten_by(sim: np.ndarray, rel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rank rule on one block: ``sim`` ``[b, G]``, ``rel`` ``[b, G]`` bool. Returns the scores with
    non-finite ones made the worst possible, and the wrong entries scoring at least as high as the best correct
    one (all of them when that is -inf)."""
    sim = np.where(np.isfinite(sim), sim, -np.inf)
    best = np.where(rel, sim, -np.inf).max(1, keepdims=True)  # [b, 1]
    return sim, (sim >= best - TIE_TOL) & ~rel


def _ranks_from_scores(sim: np.ndarray, rel: np.ndarray) -> np.ndarray:
    """Ranks of one block: ``sim`` ``[b, G]`` float32, ``rel`` ``[b, G]`` bool."""
    return _beaten_by(sim, rel)[1].sum(1).astype(np.int64) + 1


def first_match_ranks(sim: Any, relevant: Any, chunk: int = 1024) -> np.ndarray:
    """1-based rank of the best-scoring correct match of each query (see the module's rules).

    Args:
        sim: similarities ``[Q, G]`` (NumPy or torch).
        relevant: boolean ``[Q, G]``, True where the gallery entry is a correct match; every row needs one.

    Returns:
        int64 ranks ``[Q]``.
    """
    sim, rel = _numpy(sim), _numpy(relevant, dtype=bool)
    if sim.shape != rel.shape:
        raise ValueError(f"similarities {sim.shape} and relevance {rel.shape} differ in shape")
    if len(rel) and not rel.any(1).all():
        raise ValueError("every query needs at least one correct match in the gallery")
    out = [_ranks_from_scores(sim[s:s + chunk], rel[s:s + chunk]) for s in range(0, len(sim), chunk)]
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def _group_members(groups: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Items sorted by group, and each group's start and end in that order (the correct entries of a query)."""
    order = np.argsort(groups, kind="stable")
    sorted_groups = groups[order]
    ids = np.arange(int(groups.max()) + 1 if len(groups) else 0)
    return order, np.searchsorted(sorted_groups, ids, "left"), np.searchsorted(sorted_groups, ids, "right")


def _block_ranks(sim: np.ndarray, rows: np.ndarray, groups: np.ndarray, members: tuple) -> np.ndarray:
    """Ranks of a block of queries ``rows`` from their scores ``sim`` ``[b, N]`` (modified in place), by the rule
    of :func:`_ranks_from_scores` without a ``[b, N]`` relevance matrix: the correct entries are gathered."""
    bad = ~np.isfinite(sim)
    if bad.any():
        sim[bad] = -np.inf  # non-finite scores are the worst possible
    order, start, end = members
    g = groups[rows]
    sizes = end[g] - start[g]  # correct entries per query
    pi = np.repeat(np.arange(len(rows)), sizes)  # (query, correct entry) pairs
    pc = order[np.repeat(start[g], sizes) + (np.arange(len(pi)) - np.repeat(np.cumsum(sizes) - sizes, sizes))]
    vals = sim[pi, pc]
    best = np.full(len(rows), -np.inf, dtype=sim.dtype)
    np.maximum.at(best, pi, vals)
    floor = best - TIE_TOL
    at_least = (sim >= floor[:, None]).sum(1)  # every entry at least as good, correct ones included
    correct = np.bincount(pi, weights=vals >= floor[pi], minlength=len(rows)).astype(np.int64)
    return at_least - correct + 1


def query_ranks(image_embeds: Any, text_embeds: Any, groups: Sequence | None = None,
                queries: np.ndarray | None = None, progress: Callable[[int], None] | None = None
                ) -> dict[str, np.ndarray]:
    """Rank of the true match of every query, both directions, over one 1:1 gallery, in bounded memory.

    Row i of ``image_embeds`` and of ``text_embeds`` is item i. The gallery of each direction is every
    item; scores are made a block of queries at a time (at most ``_BLOCK_SCORES`` of them), so 100k items
    never hold a 100k x 100k matrix.

    Args:
        groups: per-item group id (caption-level ground truth: :func:`title_groups`); None = item level.
        queries: boolean ``[N]``: rank only these items as queries (both directions); None = all.
        progress: called with the number of queries ranked so far (both directions: up to 2Q).

    Returns:
        ``{"text_to_image": ranks [Q], "image_to_text": ranks [Q]}``.
    """
    return _rank_blocks(image_embeds, text_embeds, [groups], queries, progress)[0]


def _rank_blocks(image_embeds: Any, text_embeds: Any, groupings: list, queries: np.ndarray | None,
                 progress: Callable[[int], None] | None) -> list[dict[str, np.ndarray]]:
    """:func:`query_ranks` under several ground truths at once: each block of scores is made once."""
    img, txt = _numpy(image_embeds), _numpy(text_embeds)
    n = len(img)
    if len(txt) != n:
        raise ValueError(f"{n} image embeddings but {len(txt)} text embeddings: a 1:1 gallery needs both")
    dense = [np.arange(n) if g is None else np.unique(np.asarray(g), return_inverse=True)[1].ravel()
             for g in groupings]
    members = [_group_members(g) for g in dense]
    which = np.arange(n) if queries is None else np.flatnonzero(np.asarray(queries, dtype=bool))
    block = int(max(1, min(1024, _BLOCK_SCORES // max(n, 1))))
    out: list[dict[str, np.ndarray]] = [{} for _ in groupings]
    for di, (d, q_emb, g_emb) in enumerate(((DIRECTIONS[0], txt, img), (DIRECTIONS[1], img, txt))):
        ranks = [np.empty(len(which), dtype=np.int64) for _ in groupings]
        g_t = np.ascontiguousarray(g_emb.T)
        for s in range(0, len(which), block):
            rows = which[s:s + block]
            with np.errstate(invalid="ignore", over="ignore"):
                sim = q_emb[rows] @ g_t  # [b, N]
            for r, g, m in zip(ranks, dense, members):
                r[s:s + block] = _block_ranks(sim, rows, g, m)
            if progress:
                progress(di * len(which) + min(s + block, len(which)))
        for o, r in zip(out, ranks):
            o[d] = r
    return out


def split_ranks(image_embeds: Any, text_embeds: Any, captions: Sequence[str], ground_truth: str = "caption",
                queries: np.ndarray | None = None, progress: Callable[[int], None] | None = None
                ) -> dict[str, np.ndarray]:
    """:func:`query_ranks` of one split's items under ``ground_truth`` (``caption`` or ``item``), identical
    titles' text embeddings merged first (:func:`canonical_texts`) so their ties are exact.

    The entry point for every caller that has the items' captions: evaluation, the dashboard, export.
    """
    titles = title_groups(captions)
    groups = ground_truth_groups(captions, ground_truth)
    return query_ranks(image_embeds, canonical_texts(text_embeds, titles), groups, queries, progress)


def ranks_by_ground_truth(image_embeds: Any, text_embeds: Any, captions: Sequence[str],
                          queries: np.ndarray | None = None) -> dict[str, dict[str, np.ndarray]]:
    """:func:`split_ranks` under both ground truths, each block of scores made once:
    ``{"item": {direction: ranks}, "caption": {direction: ranks}}``."""
    titles = title_groups(captions)
    item, caption = _rank_blocks(image_embeds, canonical_texts(text_embeds, titles), [None, titles], queries, None)
    return {"item": item, "caption": caption}


def rank_of_match(scores: Any, correct: Sequence[int], show: int = 10) -> tuple[int, list[int]]:
    """Where one query's correct match landed in a gallery, and what ranked above it (the click panel, Search).

    Args:
        scores: the query's similarity to every gallery entry ``[G]``.
        correct: gallery positions that count as correct (the item, and under caption-level ground truth its
            title group).
        show: how many of the entries above it to return.

    Returns:
        (the rank by :func:`first_match_ranks`' rule; the wrong positions tied with or above the best correct
        one, best first, at most ``show``).
    """
    sim = _numpy(scores)[None, :]
    rel = np.zeros_like(sim, dtype=bool)
    rel[0, list(correct)] = True
    clean, beaten = _beaten_by(sim, rel)
    above = np.flatnonzero(beaten[0])
    above = above[np.argsort(-clean[0, above], kind="stable")]
    return len(above) + 1, [int(i) for i in above[:show]]


# ---------------------------------------------------------------- summaries

def median_rank(ranks: np.ndarray) -> float:
    """``floor(median(r - 1)) + 1`` over 1-based ranks; NaN for no ranks."""
    ranks = np.asarray(ranks)
    return float(np.floor(np.median(ranks - 1)) + 1) if len(ranks) else float("nan")


def rank_metrics(ranks: np.ndarray, prefix: str) -> dict[str, float]:
    """R@1/5/10 (percent), median rank, mean rank for one direction."""
    ranks = np.asarray(ranks)
    out = {f"{prefix}/R@{k}": float(100.0 * np.mean(ranks <= k)) for k in KS}
    out[f"{prefix}/median_rank"] = median_rank(ranks)
    out[f"{prefix}/mean_rank"] = float(np.mean(ranks))
    return out


def summarise(ranks: dict[str, np.ndarray]) -> dict[str, float]:
    """Both directions' :func:`rank_metrics` and ``rsum`` (the sum of the six recalls)."""
    out: dict[str, float] = {}
    for d in DIRECTIONS:
        out.update(rank_metrics(ranks[d], d))
    out["rsum"] = sum(out[f"{d}/R@{k}"] for d in DIRECTIONS for k in KS)
    return out


def retrieval_metrics(image_embeds: Any, text_embeds: Any, groups: np.ndarray | list | None = None,
                      queries: np.ndarray | None = None) -> dict[str, float]:
    """Both directions over one split: image i matches text i (and, with ``groups``, every text of its group).

    Args:
        image_embeds: ``[N, D]`` L2-normalised.
        text_embeds: ``[N, D]`` L2-normalised, row i describing image i.
        groups: per-item group id (caption-level ground truth); None = item level.
        queries: boolean ``[N]``: score only these items as queries (both directions), against the whole
            gallery; None = every item.

    Returns:
        ``text_to_image/R@1`` ... ``image_to_text/mean_rank`` and ``rsum``.
    """
    if queries is not None and not np.asarray(queries, dtype=bool).any():
        raise ValueError("no query selected")
    return summarise(query_ranks(image_embeds, text_embeds, groups, queries))


def similarity_stats(image_embeds: Any, text_embeds: Any, max_n: int = 2000) -> dict[str, float]:
    """Mean cosine similarity of matching pairs and of non-matching pairs (collapse shows as equal)."""
    img, txt = _numpy(image_embeds)[:max_n], _numpy(text_embeds)[:max_n]
    sim = txt.astype(np.float64) @ img.T.astype(np.float64)
    n = sim.shape[0]
    pos = np.trace(sim) / max(n, 1)
    neg = (sim.sum() - np.trace(sim)) / max(n * n - n, 1)
    return {"pos_sim": float(pos), "neg_sim": float(neg)}


# ---------------------------------------------------------------- uncertainty

def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a proportion ``k/n``, in percent; (0, 100) for ``n == 0``."""
    if n <= 0:
        return 0.0, 100.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return 100.0 * max(0.0, centre - half), 100.0 * min(1.0, centre + half)


def _resamples(n: int, reps: int, seed: int):
    """Seeded bootstrap index blocks ``[r, n]`` (at most ~2e7 indices at a time)."""
    rng = np.random.default_rng(seed)
    step = max(1, int(2e7 // max(n, 1)))
    for s in range(0, reps, step):
        yield rng.integers(0, n, size=(min(step, reps - s), n))


def _medians(ranks: np.ndarray) -> np.ndarray:
    """:func:`median_rank` of each row of resampled ranks ``[r, n]``: ``[r]``."""
    return np.floor(np.median(ranks - 1, axis=1)) + 1


def _stats(ranks: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric of :func:`summarise` (but mean rank) for each resample ``idx`` ``[r, n]``: arrays ``[r]``."""
    out: dict[str, np.ndarray] = {}
    rsum = 0.0
    for d in DIRECTIONS:
        r = np.asarray(ranks[d])[idx]  # [r, n]
        for k in KS:
            out[f"{d}/R@{k}"] = 100.0 * (r <= k).mean(1)
            rsum = rsum + out[f"{d}/R@{k}"]
        out[f"{d}/median_rank"] = _medians(r)
    out["rsum"] = rsum
    return out


def bootstrap_median(ranks: np.ndarray, reps: int = BOOTSTRAP_REPS, seed: int = BOOTSTRAP_SEED,
                     level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of one set of ranks' median rank (NaN, NaN for none): the slices' interval."""
    ranks = np.asarray(ranks)
    if len(ranks) == 0:
        return float("nan"), float("nan")
    meds = np.concatenate([_medians(ranks[idx]) for idx in _resamples(len(ranks), reps, seed)])
    a = 100 * (1 - level) / 2
    return float(np.percentile(meds, a)), float(np.percentile(meds, 100 - a))


def bootstrap_intervals(ranks: dict[str, np.ndarray], reps: int = BOOTSTRAP_REPS, seed: int = BOOTSTRAP_SEED,
                        level: float = 0.95) -> dict[str, list[float]]:
    """Percentile intervals of every R@K, median rank and rsum, resampling queries (items) with replacement.

    Args:
        ranks: ``{"text_to_image": [Q], "image_to_text": [Q]}``, query i of both directions being item i.

    Returns:
        ``{"text_to_image/R@1": [lo, hi], ..., "rsum": [lo, hi]}``; empty for no queries.
    """
    n = len(ranks[DIRECTIONS[0]])
    if n == 0:
        return {}
    draws: dict[str, list[np.ndarray]] = {}
    for idx in _resamples(n, reps, seed):
        for key, v in _stats(ranks, idx).items():
            draws.setdefault(key, []).append(v)
    a = 100 * (1 - level) / 2
    return {key: [float(np.percentile(np.concatenate(v), a)), float(np.percentile(np.concatenate(v), 100 - a))]
            for key, v in draws.items()}


def paired_difference(ranks_a: dict[str, np.ndarray], ranks_b: dict[str, np.ndarray], metric: str = "rsum",
                      reps: int = BOOTSTRAP_REPS, seed: int = BOOTSTRAP_SEED, level: float = 0.95) -> dict:
    """Paired bootstrap of ``metric(a) - metric(b)`` over the same queries (both runs resample the same items).

    Args:
        ranks_a, ranks_b: :func:`query_ranks` output of two runs over the same queries in the same order.
        metric: a key of :func:`summarise` other than mean rank (``text_to_image/R@1``, ``rsum``, ...).

    Returns:
        ``{"metric", "difference", "lo", "hi", "p", "different", "queries"}``: ``different`` is True when the
        ``level`` interval of the difference excludes 0; ``p`` is the two-sided bootstrap p-value.
    """
    n = len(ranks_a[DIRECTIONS[0]])
    if n != len(ranks_b[DIRECTIONS[0]]) or n == 0:
        raise ValueError(f"a paired comparison needs the same queries: {n} against {len(ranks_b[DIRECTIONS[0]])}")
    diff = summarise(ranks_a)[metric] - summarise(ranks_b)[metric]
    draws = np.concatenate([_stats(ranks_a, idx)[metric] - _stats(ranks_b, idx)[metric]
                            for idx in _resamples(n, reps, seed)])
    a = 100 * (1 - level) / 2
    lo, hi = float(np.percentile(draws, a)), float(np.percentile(draws, 100 - a))
    p = float(min(1.0, 2 * min(np.mean(draws <= 0), np.mean(draws >= 0))))
    return {"metric": metric, "difference": float(diff), "lo": lo, "hi": hi, "p": p,
            "different": bool(lo > 0 or hi < 0), "queries": int(n)}


def seed_spread(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation, min and max of one metric over runs that differ only by seed."""
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    if len(v) == 0:
        return {"n": 0, "mean": float("nan"), "std": float("nan"), "min": float("nan"), "max": float("nan")}
    return {"n": int(len(v)), "mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max())}
