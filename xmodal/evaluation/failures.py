"""Failure clusters with names: the kinds of product whose queries a model fails, against the split's base rate.

A query fails when its true match ranks past ``k``. Every group of items sharing up to ``depth`` attribute
values ("Women / Kurtas / Blue") is tested: its failure rate with a Wilson 95 % interval against the split's
base rate; a group is a cluster when it holds at least ``min_failures`` failures and its interval lies wholly
above the base rate. Catalogues without attribute columns get groups named by title words instead. Clusters
are ordered by excess failures (failures beyond what the base rate predicts), and a cluster contained in a
bigger one with no higher rate is dropped (its name adds nothing).
"""
from __future__ import annotations

from collections import defaultdict
from itertools import combinations
from typing import Sequence

import numpy as np

from ..text.normalise import normalise_caption
from .metrics import wilson


def _columns(attributes: dict[str, Sequence[str]]) -> list[str]:
    return [c for c, values in attributes.items() if any(str(v).strip() for v in values)]


def _keys(i: int, columns: list[str], attributes: dict[str, Sequence[str]], captions: Sequence[str]) -> list[tuple]:
    """Item ``i``'s (column, value) pairs; its title words as ("word", w) without attribute columns."""
    if columns:
        return [(c, str(attributes[c][i]).strip()) for c in columns if str(attributes[c][i]).strip()]
    return [("word", w) for w in sorted(set(normalise_caption(captions[i]).split()))]


def _groups(attributes: dict[str, Sequence[str]], captions: Sequence[str], depth: int) -> dict[tuple, list[int]]:
    """Every (column, value) combination of up to ``depth`` attributes -> its members; title words without
    attribute columns."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    columns = _columns(attributes)
    for i in range(len(captions)):
        keys = _keys(i, columns, attributes, captions)
        for size in range(1, min(depth, len(keys)) + 1):
            for combo in combinations(keys, size):
                groups[combo].append(i)
    return groups


def group_items(values: Sequence[Sequence[str]], attributes: dict[str, Sequence[str]], captions: Sequence[str]
                ) -> list[int]:
    """Positions of every item of a cluster's group (``values``: its ``[[column, value], ...]``), failed or not:
    the same items under another model's ranks. Membership is ``_keys``'s: stripped attribute values, or title
    words when no column has any."""
    columns = _columns(attributes)
    keep = np.ones(len(captions), dtype=bool)
    for column, value in values:
        if columns and column in columns:
            keep &= np.array([str(x).strip() == value for x in attributes[column]], dtype=bool)
        elif not columns and column == "word":
            keep &= np.array([value in normalise_caption(t).split() for t in captions], dtype=bool)
        else:
            return []
    return np.flatnonzero(keep).tolist()


def failure_clusters(ranks: Sequence[float], attributes: dict[str, Sequence[str]], captions: Sequence[str],
                     k: int = 10, depth: int = 3, min_failures: int = 5, top: int = 10) -> dict:
    """Named clusters of failed queries.

    Args:
        ranks: each item's rank of its true match ``[N]`` (one direction, one ground truth).
        attributes: catalogue columns ``{name: [N] values}`` (may be empty: title words are used).
        captions: the N titles.
        k: a query fails when its rank is past ``k``.
        depth: attribute values combined at most.
        min_failures: the fewest failures a cluster holds.
        top: clusters returned.

    Returns:
        ``{"k", "failures", "items", "base_rate", "by": "attributes"|"title words", "clusters": [...]}``, each
        cluster ``{"name", "values": [[column, value], ...], "failures", "items", "rate", "ci95", "lift", "excess",
        "members": [failing item positions]}`` (rates in percent).
    """
    ranks = np.asarray(ranks, dtype=np.float64)
    failed = ~(ranks <= k)  # NaN ranks fail
    n, n_fail = len(ranks), int(failed.sum())
    base = n_fail / n if n else 0.0
    found = []
    for combo, members in _groups(attributes, captions, depth).items():
        idx = np.asarray(members)
        f = int(failed[idx].sum())
        if f < min_failures:
            continue
        lo, hi = wilson(f, len(idx))
        if lo / 100 <= base:
            continue
        found.append({"name": " / ".join(v for _, v in combo), "values": [list(kv) for kv in combo], "failures": f,
                      "items": int(len(idx)), "rate": 100 * f / len(idx), "ci95": [lo, hi],
                      "lift": (f / len(idx)) / base if base else float("inf"), "excess": f - base * len(idx),
                      "members": [int(i) for i in idx[failed[idx]]]})
    found.sort(key=lambda c: (-c["excess"], len(c["values"]), c["name"]))  # the shortest name first
    kept: list[dict] = []
    for c in found:  # the same items under a longer name, or a sub-group no worse than its group, say nothing new
        if any(set(c["members"]) == set(b["members"]) and c["items"] == b["items"]
               or (set(c["members"]) <= set(b["members"]) and c["rate"] <= b["rate"] + 1e-9
                   and set(map(tuple, b["values"])) <= set(map(tuple, c["values"]))) for b in kept):
            continue
        kept.append(c)
        if len(kept) == top:
            break
    return {"k": k, "failures": n_fail, "items": n, "base_rate": 100 * base,
            "by": "attributes" if _columns(attributes) else "title words", "clusters": kept}


def describe(cluster: dict) -> str:
    """``Women / Kurtas / Blue: 62 failures of 80, 3.1x the base rate (rate 77.5% [67.2-85.3])``."""
    lo, hi = cluster["ci95"]
    return (f"{cluster['name']}: {cluster['failures']} failures of {cluster['items']}, {cluster['lift']:.1f}x the "
            f"base rate (rate {cluster['rate']:.1f}% [{lo:.1f}-{hi:.1f}])")
