"""Train/val/test splits of a catalogue: the csv's ``split`` column, or a seeded split.

The seeded split is title-grouped by default: items whose normalised titles are identical (the same
product photographed twice, or a title shared across colours) land in the same split, so a test
query never has its exact title in the training data. ``grouping="item"`` is the older item-level
permutation, kept exactly for runs trained with it. Every split is refused with a
:class:`CatalogueError` when it leaves train, val or test too small to train and evaluate.
"""
from __future__ import annotations

import numpy as np

from ..evaluation import metrics
from .catalogue import SPLITS, Catalogue, CatalogueError, normalise_caption

GROUPINGS = ("title", "item")
MIN_ITEMS = 4  # 2 to train on (in-batch negatives need a pair), 1 to validate, 1 to test
MIN_SIZES = {"train": 2, "val": 1, "test": 1}


def _check_fractions(cat: Catalogue, fractions: tuple[float, float, float]) -> None:
    if len(fractions) != 3 or abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) < 0:
        raise ValueError(f"split fractions {tuple(fractions)} must be three non-negative numbers (train, val, "
                         "test) that sum to 1")
    empty = [s for s, f in zip(SPLITS, fractions) if f <= 0]
    if empty:
        raise CatalogueError(f"{cat.root}: split fractions {tuple(fractions)} leave no {' and no '.join(empty)} "
                             "items: give every split a share, e.g. 0.8 0.1 0.1 (val picks checkpoints, test "
                             "scores the final model)")


def _check_grouping(grouping: str) -> None:
    if grouping not in GROUPINGS:
        raise ValueError(f"unknown split grouping {grouping!r}; choose one of {', '.join(GROUPINGS)}")


def _item_split(n: int, seed: int, fractions: tuple[float, float, float]) -> dict[str, np.ndarray]:
    """The item-level split (unchanged from the first releases, so old runs re-split identically)."""
    perm = np.random.default_rng(seed).permutation(n)
    n_train = int(round(fractions[0] * n))
    n_val = int(round(fractions[1] * n))
    if n >= 3:  # keep every split non-empty on tiny catalogues
        n_val = max(n_val, 1)
        n_train = min(n_train, n - n_val - 1)
    return {"train": np.sort(perm[:n_train]), "val": np.sort(perm[n_train:n_train + n_val]),
            "test": np.sort(perm[n_train + n_val:])}


def title_groups(cat: Catalogue) -> np.ndarray:
    """Group id per item of ``cat``: :func:`xmodal.evaluation.metrics.title_groups` of its captions."""
    return metrics.title_groups(cat.captions)


def _closest_cut(cum: np.ndarray, lo: int, target: float) -> int:
    """The index ``j >= lo`` whose cumulative count ``cum[j]`` is closest to ``target`` (ties: the earlier)."""
    return lo + int(np.argmin(np.abs(cum[lo:] - target)))


def _title_split(cat: Catalogue, seed: int, fractions: tuple[float, float, float]) -> dict[str, np.ndarray]:
    """Shuffle the title groups (seeded) and cut the sequence where the split sizes come closest to
    ``fractions``; val and test get at least one group each when there are three or more."""
    groups = title_groups(cat)
    sizes = np.bincount(groups)
    order = np.random.default_rng(seed).permutation(len(sizes))  # groups in shuffled order
    cum = np.concatenate([[0], np.cumsum(sizes[order])])  # items before group k of the order
    n, g = len(cat), len(sizes)
    cut1 = _closest_cut(cum, 0, fractions[0] * n)
    cut2 = _closest_cut(cum, cut1, (fractions[0] + fractions[1]) * n)
    if g >= 3:  # keep val and test non-empty
        cut1 = min(max(cut1, 1), g - 2)
        cut2 = min(max(cut2, cut1 + 1), g - 1)
    split_of_group = np.empty(g, dtype=np.int64)
    split_of_group[order[:cut1]], split_of_group[order[cut1:cut2]], split_of_group[order[cut2:]] = 0, 1, 2
    which = split_of_group[groups]
    return {s: np.flatnonzero(which == k) for k, s in enumerate(SPLITS)}


def _refuse_small(cat: Catalogue, splits: dict[str, np.ndarray], source: str) -> None:
    small = [s for s in SPLITS if len(splits[s]) < MIN_SIZES[s]]
    if not small:
        return
    sizes = ", ".join(f"{s} {len(splits[s])}" for s in SPLITS)
    if source == "csv split column":
        todo = ("mark more rows " + " and ".join(small) + " in the split column, or delete the column to get a "
                "seeded split")
    elif source.startswith("seeded title"):
        todo = (f"the catalogue has {len(set(title_groups(cat).tolist()))} distinct titles; add products, "
                "raise the val/test fractions, or use the item-level grouping")
    else:
        todo = "add products or raise the val/test fractions"
    where = cat.root / "captions.csv" if source == "csv split column" else cat.root
    raise CatalogueError(f"{where}: the {source} leaves too few items in {', '.join(small)} ({sizes}; need at "
                         f"least train {MIN_SIZES['train']}, val 1, test 1): {todo}")


def make_splits(cat: Catalogue, seed: int = 0, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
                grouping: str = "title") -> dict[str, np.ndarray]:
    """Train/val/test item indices (sorted): the csv's ``split`` column when it has one, else a seeded split.

    Args:
        cat: the catalogue.
        seed: seeds the shuffle of the seeded split.
        fractions: train, val and test shares of the seeded split.
        grouping: ``"title"`` keeps items with identical normalised titles in one split; ``"item"``
            is the plain item-level permutation.

    Raises:
        CatalogueError: fewer than ``MIN_ITEMS`` items, or a split that leaves train under 2 items or
            val or test empty.
        ValueError: bad fractions or an unknown grouping.
    """
    _check_grouping(grouping)
    n = len(cat)
    if n < MIN_ITEMS:
        raise CatalogueError(f"{cat.root}: only {n} usable item(s); training and evaluation need at least "
                             f"{MIN_ITEMS} (2 train, 1 val, 1 test). Add products, or see the load report for "
                             "the rows that were skipped")
    source = describe_split(cat, grouping, fractions)
    if cat.split_column:
        col = np.array(cat.split_column)
        splits = {s: np.flatnonzero(col == s) for s in SPLITS}
    else:
        _check_fractions(cat, fractions)
        splits = _title_split(cat, seed, fractions) if grouping == "title" else _item_split(n, seed, fractions)
    _refuse_small(cat, splits, source)
    return splits


def describe_split(cat: Catalogue, grouping: str = "title",
                   fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> str:
    """What :func:`make_splits` uses for ``cat``, e.g. ``"seeded title-grouped split 80/10/10"``."""
    _check_grouping(grouping)
    if cat.split_column:
        return "csv split column"
    shares = "/".join(f"{100 * f:.4g}" for f in fractions)
    return f"seeded {'title-grouped' if grouping == 'title' else 'item-level'} split {shares}"


def unseen_title_mask(cat: Catalogue, test_index: np.ndarray | list[int],
                      train_index: np.ndarray | list[int]) -> np.ndarray:
    """Per test item: True when its normalised title occurs nowhere in the train items."""
    seen = {normalise_caption(cat.captions[int(i)]) for i in train_index}
    return np.array([normalise_caption(cat.captions[int(i)]) not in seen for i in test_index], dtype=bool)


__all__ = ["GROUPINGS", "MIN_ITEMS", "make_splits", "describe_split", "unseen_title_mask", "title_groups"]
