"""Metrics per slice of a catalogue, with their uncertainty, and the named slices a user saves from a map.

A slice is the items that share one value of an attribute column (``colour`` = Blue), or a named set of
items chosen on the map. Its recall is a proportion over few queries, so each R@K comes with its Wilson
95% interval and the median rank with a bootstrap interval; a slice of fewer than ``MIN_N`` queries is
flagged ``small`` and never ranked beside the others as if its number meant much.

Saved slices belong to the catalogue, not to one run: every run of the same catalogue (same content
fingerprint) under one runs folder sees them, from ``<runs>/.slices/<fingerprint>/slices.json``
(``{name: [item ids]}``, written atomically; ``slices_folder``). Slices saved in a run folder by earlier
versions are still shown. Names are typed by users and ids come from a catalogue: both are data, shown as text.
"""
from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..runs import atomic_write_json, read_json
from ..evaluation import metrics
from ..evaluation.metrics import DIRECTIONS, KS, median_rank, wilson

MIN_N = 10  # queries below which a slice is flagged small and left out of the ranking
Z95 = 1.959963984540054
# Attribute columns shown first when a catalogue has them; every other categorical column follows.
PREFERRED = ("master_category", "sub_category", "article_type", "colour", "pattern", "brand", "gender",
             "season", "usage")
MAX_VALUES = 200  # a column with more distinct values is an identifier or free text, not a slice
SLICES_FILE = "slices.json"
MAX_NAME = 80
MAX_SLICES = 200


def bootstrap_median(ranks: np.ndarray, reps: int = 200, seed: int = 0) -> tuple[float, float]:
    """2.5th and 97.5th percentiles of the median rank over ``reps`` resamples (seeded; the metrics core)."""
    return metrics.bootstrap_median(ranks, reps, seed)


def slice_attributes(attributes: dict[str, Sequence[str]], max_values: int = MAX_VALUES) -> list[str]:
    """The attribute columns worth slicing and colouring by: 2 to ``max_values`` distinct non-empty values,
    known fashion columns first (``PREFERRED``), then the rest alphabetically."""
    usable = []
    for name, values in attributes.items():
        distinct = {v for v in values if v}
        if 2 <= len(distinct) <= max_values:
            usable.append(name)
    order = {n: i for i, n in enumerate(PREFERRED)}
    return sorted(usable, key=lambda n: (order.get(n, len(order)), n))


def slice_metrics(ranks: dict[str, np.ndarray], attributes: dict[str, Sequence[str]], min_n: int = MIN_N
                  ) -> pd.DataFrame:
    """R@1/5/10 with Wilson 95% intervals and the median rank with a bootstrap interval, per value of each
    attribute, per direction; rounded to one decimal.

    Args:
        ranks: ``analysis.query_ranks`` output over N queries.
        attributes: column -> N values (``{"colour": [...]}``); empty values are not a slice.
        min_n: slices with fewer queries get ``small = True``.

    Returns:
        Rows ``attribute, value, n, small, direction, R@1, R@1 lo, R@1 hi, ..., median_rank, median lo,
        median hi``; within each attribute and direction, the slices that are not small first, by R@10
        (best first), then the small ones by size.
    """
    cols = ["attribute", "value", "n", "small", "direction",
            *[c for k in KS for c in (f"R@{k}", f"R@{k} lo", f"R@{k} hi")], "median_rank", "median lo", "median hi"]
    rows = []
    for attr, values in attributes.items():
        values = np.asarray(values, dtype=object)
        for value in sorted({v for v in values if v}):
            mask = values == value
            n = int(mask.sum())
            for d in DIRECTIONS:
                r = np.asarray(ranks[d])[mask]
                row = {"attribute": attr, "value": value, "n": n, "small": n < min_n, "direction": d}
                for k in KS:
                    hits = int((r <= k).sum())
                    lo, hi = wilson(hits, n)
                    row.update({f"R@{k}": round(100.0 * hits / n, 1), f"R@{k} lo": round(lo, 1),
                                f"R@{k} hi": round(hi, 1)})
                mlo, mhi = bootstrap_median(r)
                row.update(median_rank=median_rank(r), **{"median lo": mlo, "median hi": mhi})
                rows.append(row)
    df = pd.DataFrame(rows, columns=cols)
    if df.empty:
        return df
    df["_order"] = np.where(df["small"], -df["n"], df["R@10"])
    df = df.sort_values(["attribute", "direction", "small", "_order"], ascending=[True, True, True, False],
                        kind="stable")
    return df.drop(columns="_order").reset_index(drop=True)


def runs_slice_table(ranks_by_run: dict[str, dict[str, np.ndarray]], attributes: dict[str, Sequence[str]],
                     min_n: int = MIN_N) -> pd.DataFrame:
    """``slice_metrics`` of several runs over the same queries, stacked, the ``run`` column first (which run a
    row belongs to is the first thing a reader needs).

    Args:
        ranks_by_run: run label -> ``analysis.query_ranks`` output over the same N queries.
        attributes: column -> N values, as for ``slice_metrics``.
    """
    parts = [slice_metrics(ranks, attributes, min_n).assign(run=label) for label, ranks in ranks_by_run.items()]
    if not parts:
        return pd.DataFrame()
    table = pd.concat(parts, ignore_index=True)
    return table[["run", *[c for c in table.columns if c != "run"]]]


# ---------------------------------------------------------------- saved slices

def clean_name(name: str) -> str:
    """A slice name as stored: whitespace runs made one space, control characters dropped, at most
    ``MAX_NAME`` characters.

    Raises:
        ValueError: nothing is left.
    """
    text = re.sub(r"[\x00-\x1f\x7f]", "", " ".join(str(name).split()))[:MAX_NAME]
    if not text:
        raise ValueError("give the slice a name (letters, digits, anything printable)")
    return text


SHARED_DIR = ".slices"  # under the runs folder; list_runs skips it (no config.json)


def slices_folder(run_dir: Path, fingerprint: str) -> Path:
    """Where the slices of a run's catalogue live: ``<runs>/.slices/<fingerprint>/``, shared by every run of
    that catalogue; the run folder itself when its config names no fingerprint."""
    fp = re.sub(r"[^0-9a-fA-F]", "", str(fingerprint or ""))[:64]
    return Path(run_dir).parent / SHARED_DIR / fp if fp else Path(run_dir)


def load_slices(run_dir: Path) -> dict[str, list[str]]:
    """The slices saved in ``run_dir`` (a ``slices_folder``), name -> item ids; a damaged or foreign file
    reads as far as it makes sense."""
    raw = read_json(Path(run_dir) / SLICES_FILE, default={})
    if not isinstance(raw, dict):
        return {}
    out = {}
    for name, ids in list(raw.items())[:MAX_SLICES]:
        if isinstance(name, str) and isinstance(ids, list):
            out[name] = [str(x) for x in ids if isinstance(x, (str, int))]
    return out


def save_slice(run_dir: Path, name: str, item_ids: Sequence[str]) -> str:
    """Store ``item_ids`` as slice ``name`` (replacing one of that name); returns the name as stored.

    Raises:
        ValueError: an empty name or selection, or ``MAX_SLICES`` slices already.
    """
    name = clean_name(name)
    ids = list(dict.fromkeys(str(x) for x in item_ids))
    if not ids:
        raise ValueError("the selection is empty: select some points on the map first")
    current = load_slices(run_dir)
    if name not in current and len(current) >= MAX_SLICES:
        raise ValueError(f"{len(current)} slices are saved already (the limit); delete some first")
    current[name] = ids
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(run_dir) / SLICES_FILE, current)
    return name


def delete_slice(run_dir: Path, name: str) -> bool:
    """Remove a saved slice; False when there was none of that name."""
    current = load_slices(run_dir)
    if current.pop(name, None) is None:
        return False
    atomic_write_json(Path(run_dir) / SLICES_FILE, current)
    return True


def _cell(value: object) -> str:
    """A CSV cell that a spreadsheet will not run as a formula (``=``, ``+``, ``-``, ``@`` lead-ins)."""
    text = str(value)
    return f"'{text}" if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def export_csv(item_ids: Sequence[str], captions: Sequence[str], extra: dict[str, Sequence[str]] | None = None
               ) -> bytes:
    """A CSV (UTF-8) of the items: ``item_id``, ``title`` and any ``extra`` columns, formula lead-ins
    quoted so that a spreadsheet shows catalogue text as text."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    extra = extra or {}
    writer.writerow(["item_id", "title", *extra])
    for i, (item, title) in enumerate(zip(item_ids, captions)):
        writer.writerow([_cell(item), _cell(title), *(_cell(v[i]) for v in extra.values())])
    return buf.getvalue().encode("utf-8")
