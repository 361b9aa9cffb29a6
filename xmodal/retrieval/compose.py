"""Composed queries: the benchmark ``python -m xmodal.compose --run DIR``, and the functional forms of
``Run.search`` (a photo plus words, "in red") and ``Run.refine`` (relevance feedback).

The query arithmetic lives in ``xmodal.retrieval.query_vectors`` (photo + words each scaled by the spread of its scores
over the gallery, then weighted; Rocchio's feedback) and the searching in ``xmodal.retrieval.run.Run``; their names
are importable from here too. The benchmark asks for "this photo, in <colour>": the weight is swept on the
validation split and the test split is read once, at ``DEFAULT_WEIGHT`` (chosen on validation).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from ..evaluation.metrics import first_match_ranks, wilson
from .query_vectors import DEFAULT_WEIGHT, ROCCHIO, SPREAD_SAMPLE, compose_vectors, rocchio, score_spread, unit
from ..runs import read_json
from .run import RUN_INPUT_ERRORS, ComposedResult, Run, load_run, run_error_line

WEIGHTS = (0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0)  # the benchmark's sweep


def search(run: Run, image: Image.Image | str | os.PathLike | bytes | int | None = None, text: str | None = None,
           weight: float | None = None, k: int = 10, exclude: Sequence[int] = ()) -> ComposedResult:
    """Products for a photo, words, or both: ``run.search(...)`` (see ``xmodal.retrieval.run.Run.search``)."""
    return run.search(image=image, text=text, weight=weight, k=k, exclude=exclude)


def refine(run: Run, query: ComposedResult | torch.Tensor, good: Sequence[int] = (), bad: Sequence[int] = (),
           k: int = 10, coefficients: tuple[float, float, float] = ROCCHIO) -> ComposedResult:
    """Re-rank with relevance feedback: ``run.refine(...)`` (see ``xmodal.retrieval.run.Run.refine``)."""
    return run.refine(query, good=good, bad=bad, k=k, coefficients=coefficients)


# ---------------------------------------------------------------------------------------------- benchmark

def type_column(attributes: dict) -> str:
    """The article-type column: ``sub_category`` (Myntra) when the catalogue has it, else ``master_category``
    (the demo's garment)."""
    for name in ("sub_category", "master_category"):
        if any(attributes.get(name, [])):
            return name
    raise ValueError(f"the catalogue has neither a sub_category nor a master_category column (it has "
                     f"{sorted(attributes) or 'no attributes'}); the composed-query benchmark needs an article type")


def colour_words(colour: str) -> str:
    """The words asked for: the colour in lower case ("Navy Blue" -> "navy blue")."""
    return " ".join(colour.lower().split())


def benchmark_queries(run: Run, n: int = 300, seed: int = 0, type_col: str | None = None,
                      split: str = "val") -> tuple[list[int], list[str], str]:
    """(query items, target colour per query, type column): items of ``split`` paired with another colour
    that the gallery has in the item's article type and that the model can read, a seeded sample of ``n``.

    ``split`` is ``val`` (choose weights there) or ``test`` (read once, for the chosen weight); on a catalogue
    holding none of the run's items of that split (another catalogue), every item is a candidate.
    """
    if split not in ("train", "val", "test"):
        raise ValueError(f"unknown split {split!r}; choose 'val' (to choose on) or 'test' (to read once)")
    cat = run.catalogue
    attrs = cat.attributes
    type_col = type_col or type_column(attrs)
    if not any(attrs.get("colour", [])):
        raise ValueError("the catalogue has no colour column: the composed-query benchmark asks for colours")
    types, colours = attrs[type_col], attrs["colour"]
    have: dict[str, set[str]] = {}
    for t, c in zip(types, colours):
        if t and c:
            have.setdefault(t, set()).add(c)
    readable = {c: any(w in run.vocab.stoi for w in run.vocab.read(colour_words(c))) for c in set(colours) if c}
    split_ids = set((read_json(run.dir / "splits.json", default={}) or {}).get(split, []))
    pool = [i for i, x in enumerate(cat.item_ids) if x in split_ids] or list(range(len(cat)))
    rng = np.random.default_rng(seed)
    rng.shuffle(pool)
    items, targets = [], []
    for i in pool:
        t, c = types[i], colours[i]
        options = sorted(o for o in have.get(t, ()) if o != c and readable.get(o))
        if not (t and c and options):
            continue
        items.append(i)
        targets.append(options[int(rng.integers(len(options)))])
        if len(items) == n:
            break
    if not items:
        raise ValueError(f"no query found: no {split} item has an article type ({type_col}) that the gallery "
                         "holds in another colour the model can read")
    return items, targets, type_col


def benchmark(run: Run, n: int = 300, seed: int = 0, weights: Sequence[float] = WEIGHTS, k: int = 10,
              type_col: str | None = None, split: str = "val") -> dict:
    """Success@k of "this photo, in <colour>" queries: photo only, words only, and photo + words per weight.

    A query is an item of the run's ``split`` (validation to choose a weight on, test to read the chosen one
    once) and another colour the gallery has in the item's article type; it succeeds when a top-``k`` product
    (the item itself left out) has that type and that colour, i.e. when the first such product's rank
    (``xmodal.evaluation.metrics.first_match_ranks``: ties count against the query) is at most ``k``.

    Returns:
        ``{"model", "run", "catalogue", "split", "queries", "gallery", "type_column", "k", "photo_only",
        "words_only", "balanced": {weight: ...}, "plain": {weight: ...}}``, each figure ``[success@k,
        precision@k]`` in % (precision: the share of the top k that has the type and colour); ``plain`` adds
        the unit vectors without scaling.
    """
    items, targets, type_col = benchmark_queries(run, n, seed, type_col, split)
    weights = sorted({float(w) for w in weights} | {DEFAULT_WEIGHT})
    cat = run.catalogue
    types, colours = np.array(cat.attributes[type_col], dtype=object), np.array(cat.attributes["colour"], dtype=object)
    gallery = run.image_embeds  # [N, D]
    words = {c: run.embed_text(colour_words(c)) for c in sorted(set(targets))}

    own = torch.as_tensor(items)
    wanted = torch.from_numpy(np.stack([(types == types[i]) & (colours == c) for i, c in zip(items, targets)]))
    wanted[torch.arange(len(items)), own] = False  # [Q, N]: the products a query asks for, never itself

    def success(queries: torch.Tensor) -> list[float]:
        """[success@k, precision@k] in %."""
        scores = queries @ gallery.T  # [Q, N]
        scores[torch.arange(len(items)), own] = float("-inf")  # the query's own item
        ranks = first_match_ranks(scores, wanted)  # [Q]: 1-based rank of the first wanted product
        top = scores.topk(min(k, len(cat) - 1), dim=1).indices  # [Q, k]
        return [100.0 * float(np.mean(ranks <= k)), 100.0 * float(torch.gather(wanted, 1, top).float().mean())]

    img = gallery[torch.as_tensor(items)]  # [Q, D]: the items' own photo vectors
    txt = torch.stack([words[c] for c in targets])  # [Q, D]
    out = {"model": run.name, "run": run.dir.name, "catalogue": str(cat.root), "split": split, "queries": len(items),
           "gallery": len(cat), "type_column": type_col, "k": k,
           "photo_only": success(unit(img)), "words_only": success(unit(txt))}
    for mode, g in (("balanced", gallery), ("plain", None)):
        out[mode] = {float(w): success(compose_vectors(img, txt, w, g)) for w in weights}
    return out


def best_weight(figures: dict[float, list[float]]) -> float:
    """The weight with the highest success@k (then precision@k; then the one nearest ``DEFAULT_WEIGHT``)."""
    return max(figures, key=lambda w: (figures[w][0], figures[w][1], -abs(w - DEFAULT_WEIGHT)))


def choose_and_read(run: Run, n: int = 300, seed: int = 0, weights: Sequence[float] = WEIGHTS, k: int = 10,
                    type_col: str | None = None) -> dict:
    """The benchmark as it should be read: every weight on the validation split (``val``, where a weight is
    chosen), then the test split once, at ``DEFAULT_WEIGHT`` only (``test``; photo only and words only beside
    it, which have no weight to tune)."""
    val = benchmark(run, n, seed, weights, k, type_col, split="val")
    test = benchmark(run, n, seed, (DEFAULT_WEIGHT,), k, type_col, split="test")
    return {"val": val, "test": test, "val_best_weight": best_weight(val["balanced"])}


def format_table(results: list[dict]) -> str:
    """A Markdown table, one row per run (``choose_and_read``'s results): success@k (precision@k) in %."""
    def cell(v: list[float]) -> str:
        return f"{v[0]:.1f} ({v[1]:.1f})"

    def read(v: list[float], queries: int) -> str:
        """A test figure with the 95 % Wilson interval of its success@k."""
        low, high = wilson(round(v[0] * queries / 100), queries)
        return f"{v[0]:.1f} [{low:.1f}-{high:.1f}] ({v[1]:.1f})"

    w0 = f"{DEFAULT_WEIGHT:g}"
    lines = [f"| model | run | val queries | val: photo + words, w={w0} | val: best w | val: unscaled, best w | "
             f"test queries | test: photo only | test: words only | test: photo + words, w={w0} (read once) |",
             "|" + "---|" * 10]
    for r in results:
        val, test = r["val"], r["test"]
        best_w = best_weight(val["balanced"])
        plain_w = best_weight(val["plain"])
        lines.append(f"| {val['model']} | {val['run']} | {val['queries']} | {cell(val['balanced'][DEFAULT_WEIGHT])} | "
                     f"{cell(val['balanced'][best_w])} at {best_w:g} | {cell(val['plain'][plain_w])} at {plain_w:g} | "
                     f"{test['queries']} | {read(test['photo_only'], test['queries'])} | "
                     f"{read(test['words_only'], test['queries'])} | "
                     f"{read(test['balanced'][DEFAULT_WEIGHT], test['queries'])} |")
    k = results[0]["val"]["k"] if results else 10
    lines.append(f"\nsuccess@{k} (precision@{k}) in %: a top-{k} product (the query's own item left out) has the "
                 "query item's article type and the asked colour (precision: the share of the top "
                 f"{k} that has both); test figures with the 95 % Wilson interval of success@{k}. Queries: items of "
                 "the split, each with another colour that the gallery holds in its type; the words are the colour's "
                 "name. Weights are compared on the validation split; the "
                 f"test split is read once, at the default weight {w0} (chosen on validation).")
    return "\n".join(lines)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, like every other xmodal command
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def main(argv: list[str] | None = None) -> int:
    p = _Parser(prog="python -m xmodal.compose",
                description="Composed-query benchmark: photo + 'in <colour>' against photo only and words only.")
    p.add_argument("--run", required=True, nargs="+", metavar="DIR", help="one or more run folders")
    p.add_argument("--data", help="catalogue to search (default: each run's own)")
    p.add_argument("--n", type=int, default=300, help="queries per run (default 300)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--type-column", help="the article-type column (default: sub_category, else master_category)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table (every weight on validation)")
    a = p.parse_args(argv)
    if a.n < 1:
        p.error(f"--n must be at least 1; got {a.n}")
    results = []
    for run_dir in a.run:
        try:
            results.append(choose_and_read(load_run(run_dir, data=a.data), a.n, a.seed, type_col=a.type_column))
        except RUN_INPUT_ERRORS as err:  # a damaged or foreign run folder: one line, never a traceback
            print(f"error: {run_dir}: {run_error_line(err, run_dir)}", file=sys.stderr)
            return 2
    print(json.dumps(results, indent=1) if a.json else format_table(results))
    return 0


__all__ = ["DEFAULT_WEIGHT", "ROCCHIO", "SPREAD_SAMPLE", "WEIGHTS", "ComposedResult", "benchmark", "benchmark_queries",
           "best_weight", "choose_and_read", "colour_words", "compose_vectors", "format_table", "main", "refine",
           "rocchio", "score_spread", "search", "type_column"]

if __name__ == "__main__":
    sys.exit(main())
