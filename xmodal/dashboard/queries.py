"""Live queries for the Search page: top-k hits, and where the true match landed when the query is a
catalogue item (caption-level: items with an identical caption also count as the true match).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from ..data import normalise_caption
from .analysis import rank_of_match

if TYPE_CHECKING:  # the run passed in has loaded PyTorch already; importing this module does not
    from ..search import Hit, Run


@dataclass
class QueryResult:
    """What one run answered to one query."""

    hits: list[Hit]  # the top-k
    rank: int | None = None  # 1-based rank of the true match (None: the query is not a catalogue item here)
    above: list[Hit] = field(default_factory=list)  # what ranked above the true match, best first
    true_hit: Hit | None = None  # the true match itself, with its score


def _hit(run: Run, i: int, score: float) -> Hit:
    from ..search import Hit
    cat = run.catalogue
    return Hit(int(i), float(score), cat.captions[i], cat.image_path(i), cat.item_ids[i])


def _locate(run: Run, scores: np.ndarray, item_id: str | None, show: int) -> tuple[int | None, list[Hit], Hit | None]:
    cat = run.catalogue
    if item_id is None or item_id not in cat.item_ids:
        return None, [], None
    pos = cat.item_ids.index(item_id)
    key = normalise_caption(cat.captions[pos])
    same = [i for i, c in enumerate(cat.captions) if i != pos and normalise_caption(c) == key]
    rank, above = rank_of_match(scores, pos, same, show=show)
    return rank, [_hit(run, i, scores[i]) for i in above], _hit(run, pos, scores[pos])


def text_query(run: Run, query: str, k: int = 10, item_id: str | None = None, show_above: int = 10) -> QueryResult:
    """Products whose images best match ``query``; with ``item_id``, where that item's image landed."""
    hits = run.search_text(query, k)
    scores = (run.image_embeds @ run.embed_text(query)).numpy()  # [N]
    rank, above, true_hit = _locate(run, scores, item_id, show_above)
    return QueryResult(hits, rank, above, true_hit)


def image_query(run: Run, image: Image.Image, k: int = 10, item_id: str | None = None,
                show_above: int = 10) -> QueryResult:
    """Captions that best describe ``image``; with ``item_id``, where that item's caption landed."""
    hits = run.search_image(image, k)
    scores = (run.text_embeds @ run.embed_image(image)).numpy()  # [N]
    rank, above, true_hit = _locate(run, scores, item_id, show_above)
    return QueryResult(hits, rank, above, true_hit)
