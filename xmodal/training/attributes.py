"""The catalogue's attribute columns (gender, category, colour, ...) as class ids of the train split, for
auxiliary attribute heads (``--set attr_weight=...``).

Class ids are the sorted distinct values of the train rows, so a resumed run (same catalogue, checked by
fingerprint) gets the same ids. A column is used when it names between 2 and ``MAX_CLASSES`` values and is
filled for at least half of the train rows; an empty cell is -1 (no loss for that row).
"""
from __future__ import annotations

import numpy as np

MAX_CLASSES = 100  # beyond this a column is an identifier (a title, a code), not an attribute
MISSING = {"", "na", "n/a", "nan", "none", "null", "-"}


def attribute_classes(attributes: dict[str, list[str]], rows: np.ndarray
                      ) -> tuple[dict[str, int], np.ndarray]:
    """Class counts per usable column and the class id of each of ``rows`` ``[N, A]`` (-1: missing).

    Args:
        attributes: column -> one value per catalogue item (``Catalogue.attributes``).
        rows: catalogue positions of the train items.
    """
    classes: dict[str, int] = {}
    ids = []
    for name in sorted(attributes):
        values = [attributes[name][int(i)].strip().casefold() for i in rows]
        known = [v for v in values if v not in MISSING]
        names = sorted(set(known))
        if not 2 <= len(names) <= MAX_CLASSES or len(known) * 2 < len(values):
            continue
        index = {v: k for k, v in enumerate(names)}
        classes[name] = len(names)
        ids.append([index.get(v, -1) for v in values])
    out = np.array(ids, dtype=np.int64).T if ids else np.zeros((len(rows), 0), dtype=np.int64)
    return classes, out
