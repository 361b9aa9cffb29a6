"""Query vectors made from other vectors: a photo plus words ("in red"), and relevance feedback.

**Photo + words.** Both go into the joint space and are added, each part scaled by the inverse spread of its
own scores over the gallery, then weighted: ``q = (1 - w) * photo / s_photo + w * words / s_words``. Photos
score against photos far more alike than words against photos, so without the scaling the photo drowns the
words for every ``w`` short of 1; with it, ``w = 0.5`` gives both the same pull on the ranking (the same as
adding their z-scored scores). ``python -m xmodal.compose --run DIR`` measures it: the weight is swept on the
validation split and the test split is read once, at ``DEFAULT_WEIGHT`` (chosen on validation).

**Feedback.** Rocchio (Rocchio 1971; Manning et al., *Introduction to Information Retrieval*, ch. 9):
``q' = a * q0 + b * mean(good) - c * mean(bad)`` over the photos' embeddings, always from the first query
``q0`` with every judgement so far, so rounds add up and their order does not matter.

Pure tensor arithmetic: ``Run.search`` and ``Run.refine`` (``xmodal.retrieval.run``) build on it, and the benchmark
(``xmodal.retrieval.compose``) on both.
"""
from __future__ import annotations

import numpy as np
import torch

DEFAULT_WEIGHT = 0.5  # share of the words (after scaling both parts to the same spread), chosen on the validation
# split: see docs/quality.md, "Composed queries"
ROCCHIO = (1.0, 0.75, 0.15)  # (a, b, c): weight of the query, the good results, the bad results
SPREAD_SAMPLE = 20_000  # gallery rows the score spread is estimated on


def unit(x: torch.Tensor) -> torch.Tensor:
    """``x`` ``[..., D]`` as float32 unit vectors along the last axis."""
    return torch.nn.functional.normalize(x.float(), dim=-1)


def score_spread(gallery: torch.Tensor, vectors: torch.Tensor, sample: int = SPREAD_SAMPLE) -> torch.Tensor:
    """Standard deviation of each vector's scores over ``gallery`` ``[N, D]``: ``[...]`` for ``vectors``
    ``[..., D]`` (over a fixed sample of ``sample`` rows of a larger gallery)."""
    if len(gallery) > sample:
        rows = torch.from_numpy(np.random.default_rng(0).choice(len(gallery), sample, replace=False))
        gallery = gallery[rows]
    return (vectors.float() @ gallery.float().T).std(-1).clamp_min(1e-6)


def compose_vectors(image_vec: torch.Tensor, text_vec: torch.Tensor, weight: float,
                    gallery: torch.Tensor | None = None) -> torch.Tensor:
    """Queries ``[..., D]`` from photos' and words' vectors ``[..., D]``: ``(1 - weight)`` photo, ``weight`` words.

    Args:
        gallery: ``[N, D]``: given, each part is first divided by the spread of its scores over it (see
            the module docstring); None adds the unit vectors as they are.
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must be between 0 (photo only) and 1 (words only); got {weight}")
    img, txt = unit(image_vec), unit(text_vec)
    if gallery is not None:
        img = img / score_spread(gallery, img)[..., None]
        txt = txt / score_spread(gallery, txt)[..., None]
    return unit((1.0 - weight) * img + weight * txt)


def rocchio(origin: torch.Tensor, good: torch.Tensor | None, bad: torch.Tensor | None,
            coefficients: tuple[float, float, float] = ROCCHIO) -> torch.Tensor:
    """Rocchio's query ``[D]`` from the first query ``[D]`` and the judged items' vectors ``[g, D]``, ``[b, D]``."""
    a, b, c = coefficients
    q = a * unit(origin)
    if good is not None and len(good):
        q = q + b * unit(good).mean(0)
    if bad is not None and len(bad):
        q = q - c * unit(bad).mean(0)
    return unit(q)


__all__ = ["DEFAULT_WEIGHT", "ROCCHIO", "SPREAD_SAMPLE", "compose_vectors", "rocchio", "score_spread", "unit"]
