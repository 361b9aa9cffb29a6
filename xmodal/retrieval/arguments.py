"""Checks on what callers pass to the search API: refused with a ``ValueError`` that names the argument,
never coerced (``good='12'`` is not items 1 and 2, ``image=-1`` is not the last item, ``True`` is not item 1)."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch


def check_k(k: Any) -> int:
    """``k``, the number of results: a whole number >= 1."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a whole number >= 1; got {k!r}")
    return int(k)


def check_index(i: Any, n: int, name: str = "item index") -> int:
    """One gallery index: a whole number in ``0..n-1`` (negative indices are refused, not counted from the end)."""
    if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
        raise ValueError(f"{name} must be a whole number (a Hit.index); got {i!r}")
    if not 0 <= int(i) < n:
        raise ValueError(f"{name} {int(i)} is outside the gallery (0..{n - 1})")
    return int(i)


def check_indices(values: Any, n: int, name: str) -> list[int]:
    """A collection of gallery indices (a list, tuple, range or integer array; not a string)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray, set, frozenset)):
        raise ValueError(f"{name} must be a list of item indices (Hit.index values); got {values!r}")
    return [check_index(i, n, f"{name} item") for i in values]


def check_vector(vector: Any, dim: int, name: str = "query vector") -> torch.Tensor:
    """A query vector ``[dim]``: finite and not zero (either would give hits with meaningless scores)."""
    if not isinstance(vector, (torch.Tensor, np.ndarray)):
        raise ValueError(f"{name} must be a tensor or array of {dim} numbers; got {type(vector).__name__}")
    v = torch.as_tensor(vector)
    if v.ndim != 1 or v.shape[0] != dim or not (v.is_floating_point() or v.dtype in (torch.int32, torch.int64)):
        raise ValueError(f"{name} must hold {dim} numbers (the run's embedding width); got shape "
                         f"{tuple(v.shape)} of {v.dtype}")
    v = v.float()
    if not torch.isfinite(v).all():
        raise ValueError(f"{name} holds NaN or infinite values; embed the query again (or check the run's weights)")
    if float(v.norm()) == 0.0:
        raise ValueError(f"{name} is all zeros: it has no direction to search in")
    return v
