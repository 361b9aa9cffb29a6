"""How well runs read the words of an attribute column (colours, patterns):
``python -m xmodal.evaluation.words RUN [RUN ...] --column colour``.

Two figures per run, over its whole catalogue, each with a 95 % Wilson interval:

- *reading*: each product's photo given the column's value whose words score highest against it
  (``xmodal.retrieval.explain.attribute_reading``), against always answering the most common value;
- *search*: each value's words alone as a text query ("red"), the share of its top-k photos that have that value:
  what a user typing a colour into Search sees.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from .metrics import wilson


def word_figures(run, column: str, k: int = 8) -> dict:
    """``{"column", "values", "items", "reading": (share, low, high), "majority", "search": (share, low, high),
    "queries"}`` for ``column`` of ``run``'s catalogue; ``{}`` for a column with fewer than two values."""
    from ..retrieval.explain import attribute_reading  # lazy: PyTorch, for the runs this measures
    from ..retrieval.run import UnknownQueryError
    reading = attribute_reading(run, column)
    if not reading:
        return {}
    values = run.catalogue.attributes[column]
    right = asked = 0
    for value in sorted(reading["per_value"]):
        try:
            hits = run.search_text(value.lower(), k=k)
        except UnknownQueryError:  # a value none of whose words the model knows: it cannot be searched
            continue
        right += sum(values[h.index] == value for h in hits)
        asked += len(hits)
    n = reading["items"]
    good = round(reading["accuracy"] * n)
    share = lambda k_, n_: (k_ / max(n_, 1), *(x / 100 for x in wilson(k_, n_)))  # noqa: E731 - fractions
    return {"column": column, "values": reading["values"], "items": n, "majority": reading["majority"],
            "reading": share(good, n), "search": share(right, asked),
            "queries": asked // k if k else 0}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m xmodal.evaluation.words", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="run folders")
    p.add_argument("--column", default="colour", help="attribute column of the catalogue (default: colour)")
    p.add_argument("--k", type=int, default=8, help="photos per value query (default: 8)")
    a = p.parse_args(argv)
    if a.k < 1:
        p.error(f"--k must be at least 1, got {a.k}")
    from ..retrieval.run import RUN_INPUT_ERRORS, load_run, run_error_line  # lazy: PyTorch
    print(f"| run | {a.column}: photo read as its value [95 %] | majority | '{a.column}' query: top-{a.k} photos "
          f"with it [95 %] |\n|---|---|---|---|")
    for folder in a.runs:
        try:
            f = word_figures(load_run(folder), a.column, a.k)
        except RUN_INPUT_ERRORS as err:
            print(f"error: {run_error_line(err, folder)}", file=sys.stderr)
            return 2
        if not f:
            print(f"error: {folder}: its catalogue has no column {a.column!r} with two values or more",
                  file=sys.stderr)
            return 2
        r, s = f["reading"], f["search"]
        print(f"| {folder} | {100 * r[0]:.1f} [{100 * r[1]:.1f}, {100 * r[2]:.1f}] of {f['items']:,} | "
              f"{100 * f['majority']:.1f} | {100 * s[0]:.1f} [{100 * s[1]:.1f}, {100 * s[2]:.1f}] over "
              f"{f['queries']} values |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
