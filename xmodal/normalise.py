"""The one normalisation of a product title: the key of caption-level ground truth and the title-grouped split.

Two titles are "the same title" exactly when their keys are equal. Kept in a leaf module (no imports of
the package) so the metrics core, the catalogue and the dashboard all share it without import cycles.
"""
from __future__ import annotations

import re

_SPACES = re.compile(r"\s+")


def normalise_caption(text: str) -> str:
    """The caption key used for caption-level ground truth: lower case, single spaces."""
    return _SPACES.sub(" ", text.strip().lower())
