"""Filtered search: ``where={"gender": "Women", "master_category": ["Apparel", "Footwear"]}`` keeps the products
whose attribute columns take one of the given values, and the top k are found among them exactly.

Exact over the kept rows whatever the gallery's index (a faiss index searched with a filter loses recall;
scoring the kept rows directly keeps all of it): a sparse filter scores only the kept rows, a dense one scores
every row in one pass and masks the others, so a filtered search costs at most one unfiltered exact search.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..data import Catalogue
from ..text.normalise import normalise_caption
from . import kernels
from .hubness import CSLS_WEIGHT, corrected

# Above this share of the gallery kept, a filtered search scores every row and masks the rest instead of copying
# the kept rows out first (1M x 512, two cores: copying half of them took 4x one pass; a tenth, the same; a
# hundredth, a seventh of it: docs/performance.md, "Filtered search").
DENSE_FILTER = 0.15


def where_mask(catalogue: Catalogue, where: dict[str, Any] | None) -> np.ndarray | None:
    """Boolean ``[N]`` of the products ``where`` keeps (values compared as normalised text), or None for no filter.

    Raises:
        ValueError: ``where`` is not a dict of column -> value(s), names a column the catalogue lacks, or keeps
            no product (the message lists the values the column takes).
    """
    if where is None or where == {}:
        return None
    if not isinstance(where, dict):
        raise ValueError(f"where must be a dict of column -> value or list of values; got {type(where).__name__}")
    keep = np.ones(len(catalogue), dtype=bool)
    for column, wanted in where.items():
        if column not in catalogue.attributes:
            raise ValueError(f"where: the catalogue has no column {column!r}; its columns: "
                             f"{', '.join(sorted(catalogue.attributes)) or 'none'}")
        values = [wanted] if isinstance(wanted, str) else wanted
        if not isinstance(values, (list, tuple, set)) or not all(isinstance(v, str) for v in values) or not values:
            raise ValueError(f"where[{column!r}] must be a value or a list of values (text); got {wanted!r}")
        asked = {normalise_caption(v) for v in values}
        keep &= np.fromiter((normalise_caption(str(v)) in asked for v in catalogue.attributes[column]),
                            dtype=bool, count=len(catalogue))
    if not keep.any():
        takes = {c: sorted(set(map(str, catalogue.attributes[c])))[:12] for c in where}
        raise ValueError(f"where={where!r} keeps no product of the gallery; "
                         + "; ".join(f"{c} takes {', '.join(v)}" for c, v in takes.items()))
    return keep


def exact_rows(gallery: torch.Tensor, query: torch.Tensor, k: int, offsets: torch.Tensor | None = None,
               keep: np.ndarray | None = None, kernel: str = "torch") -> tuple[torch.Tensor, torch.Tensor]:
    """Scores and gallery indices ``[1, k]`` of the best rows among ``keep`` (all when None), exactly;
    hubness-corrected by ``offsets`` when given (CSLS); ``kernel``: the product for a pass over every row (the one
    the gallery measured fastest, ``xmodal.retrieval.kernels``)."""
    if keep is None or keep.mean() > DENSE_FILTER:  # one pass over every row beats copying (most of) them
        scores = kernels.scores(gallery, query[None], kernel)[0]  # [N]
        if offsets is not None:
            scores = corrected(scores, offsets, CSLS_WEIGHT)
        if keep is not None:
            scores[torch.from_numpy(~keep)] = float("-inf")
        top = scores.topk(min(k, len(scores) if keep is None else int(keep.sum())))
        return top.values[None], top.indices[None]
    rows = torch.from_numpy(np.flatnonzero(keep))  # a sparse filter: copy out the few rows it keeps
    scores = gallery[rows] @ query  # [n]
    if offsets is not None:
        scores = corrected(scores, offsets[rows], CSLS_WEIGHT)
    top = scores.topk(min(k, len(rows)))
    return top.values[None], rows[top.indices][None]
