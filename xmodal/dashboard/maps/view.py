"""What the Embeddings map shows: filters by attribute facets, split and rank of the true match (with
counts), a point's nearest neighbours in both modalities, and the items another page asked to locate.

Pure functions over the arrays of ``projection.load``; no Streamlit, no PyTorch.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ...evaluation import metrics
from .projection import SCOPE_NAMES, rank_key

# Ranges of the true match's rank: (label, lowest, highest).
RANK_BINS = (("1", 1, 1), ("2-5", 2, 5), ("6-10", 6, 10), ("11-50", 11, 50), ("51-100", 51, 100),
             ("over 100", 101, np.iinfo(np.int64).max))
RANK_LABELS = tuple(b[0] for b in RANK_BINS)
DIRECTION_OF = {"text_to_image": "rank_t2i", "image_to_text": "rank_i2t"}  # caption-level (``ranks_of``: either)
DIRECTION_NAMES = {"text_to_image": "title → photo", "image_to_text": "photo → title"}


def ranks_of(data: dict, direction: str, ground_truth: str = "caption") -> np.ndarray:
    """The mapped items' ranks of their true match in ``direction`` under ``ground_truth`` (``projection.load``)."""
    return data[rank_key(direction, ground_truth)]


def gallery_words(n: int, scope: str, ground_truth: str) -> str:
    """What a rank is out of and where: ``of 10,100 (whole catalogue, caption-level)``. ``scope``: ``test`` or
    ``all`` (``SCOPE_NAMES``), or words of its own (``whole catalogue, filtered``)."""
    return f"of {n:,} ({SCOPE_NAMES.get(scope, scope)}, {ground_truth}-level)"


def rank_text(rank: int, n: int, scope: str, ground_truth: str) -> str:
    """A rank that says what it is out of and where: ``rank 98 of 10,100 (whole catalogue, caption-level)``; the
    map's click panel, its located items and Search's true match all say it this way."""
    return f"rank {int(rank):,} {gallery_words(n, scope, ground_truth)}"


def rank_bin_counts(ranks: np.ndarray, mask: np.ndarray | None = None) -> dict[str, int]:
    """How many items' true match lands in each of ``RANK_BINS`` (among ``mask`` when given)."""
    ranks = np.asarray(ranks) if mask is None else np.asarray(ranks)[mask]
    return {label: int(((ranks >= lo) & (ranks <= hi)).sum()) for label, lo, hi in RANK_BINS}


def rank_range_mask(ranks: np.ndarray, first: str, last: str) -> np.ndarray:
    """Items whose rank lies from bin ``first`` to bin ``last`` (labels of ``RANK_BINS``, in either order)."""
    i, j = sorted((RANK_LABELS.index(first), RANK_LABELS.index(last)))
    lo, hi = RANK_BINS[i][1], RANK_BINS[j][2]
    ranks = np.asarray(ranks)
    return (ranks >= lo) & (ranks <= hi)


def facet_counts(values: Sequence[str], mask: np.ndarray | None = None) -> dict[str, int]:
    """Items per value (among ``mask`` when given), most frequent first; empty values read ``(none)``."""
    vals = np.asarray([v or "(none)" for v in values], dtype=object)
    if mask is not None:
        vals = vals[mask]
    counts = Counter(vals.tolist())
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


@dataclass
class MapFilter:
    """What the map keeps: chosen values per attribute (empty: any), splits, and a rank range."""

    facets: dict[str, list[str]] = field(default_factory=dict)  # attribute -> values kept
    splits: list[str] = field(default_factory=list)  # train/val/test kept (empty: all)
    direction: str = "text_to_image"  # whose rank the range applies to
    rank_range: tuple[str, str] | None = None  # (first bin, last bin); None: any rank
    ground_truth: str = "caption"  # the ranks the range reads: caption- or item-level (the page's one choice)

    def mask(self, data: dict) -> np.ndarray:
        """Boolean ``[n]``: the mapped items this filter keeps."""
        n = len(data["captions"])
        keep = np.ones(n, dtype=bool)
        for attr, wanted in self.facets.items():
            if wanted and attr in data["attributes"]:
                vals = np.asarray([v or "(none)" for v in data["attributes"][attr]], dtype=object)
                keep &= np.isin(vals, list(wanted))
        if self.splits:
            keep &= np.isin(np.asarray(data["split"], dtype=object), list(self.splits))
        if self.rank_range:
            keep &= rank_range_mask(ranks_of(data, self.direction, self.ground_truth), *self.rank_range)
        return keep

    def active(self) -> bool:
        return any(self.facets.values()) or bool(self.splits) or self.rank_range is not None


@dataclass
class Neighbours:
    """A mapped item's nearest neighbours in the other modality."""

    item: int  # the item's position on the map
    photos: list[tuple[int, float]]  # (position, cosine) of the photos nearest its title, best first
    titles: list[tuple[int, float]]  # (position, cosine) of the titles nearest its photo, best first
    photo_rank: int  # rank of its own photo among all photos for its title (1 = first)
    title_rank: int  # rank of its own title among all titles for its photo


def neighbours(image_embeds: np.ndarray, text_embeds: np.ndarray, item: int, k: int = 8,
               captions: Sequence[str] | None = None, ground_truth: str = "caption") -> Neighbours:
    """Photos nearest item ``item``'s title and titles nearest its photo, over the mapped items.

    The ranks are the metrics core's (``xmodal.evaluation.metrics.rank_of_match``: ties count against the model),
    under ``ground_truth`` as the map colours its points: ``caption``, items with the same title all count as
    correct; ``item``, only the item's own pair. With ``captions`` identical titles' text embeddings are merged
    first, as ``metrics.split_ranks`` does for the map (so their ties are exact); without, ranks are item-level.
    """
    img = np.asarray(image_embeds, dtype=np.float32)
    titles = metrics.title_groups(captions) if captions is not None else np.arange(len(img))
    txt = metrics.canonical_texts(text_embeds, titles) if captions is not None else \
        np.asarray(text_embeds, dtype=np.float32)
    by_title = img @ txt[item]  # [n]: every photo against this title
    by_photo = txt @ img[item]  # [n]: every title against this photo
    out = []
    for scores in (by_title, by_photo):
        top = np.argsort(-scores, kind="stable")[:k]
        out.append([(int(i), float(scores[i])) for i in top])
    groups = metrics.ground_truth_groups(captions, ground_truth) if captions is not None else None
    correct = [item] if groups is None else np.flatnonzero(groups == groups[item]).tolist()
    return Neighbours(item, out[0], out[1], metrics.rank_of_match(by_title, correct, 0)[0],
                      metrics.rank_of_match(by_photo, correct, 0)[0])


def find_in_titles(titles: Sequence[str], query: str) -> list[int]:
    """Positions of the ``titles`` holding every word of ``query``, case-insensitive, each as the start of a
    word of the title ("shirt" finds "Shirts" and "T-Shirt", not "Sweatshirt")."""
    words = [w for w in re.split(r"\W+", query.casefold()) if w]
    if not words:
        return list(range(len(titles)))
    out = []
    for i, title in enumerate(titles):
        tokens = [t for t in re.split(r"\W+", str(title).casefold()) if t]
        if all(any(t.startswith(w) for t in tokens) for w in words):
            out.append(i)
    return out


def positions_of(item_ids: Sequence[str], wanted: Sequence[str]) -> list[int]:
    """Map positions of the ``wanted`` item ids that are on the map, in ``wanted``'s order."""
    where = {x: i for i, x in enumerate(item_ids)}
    return [where[x] for x in dict.fromkeys(wanted) if x in where]
