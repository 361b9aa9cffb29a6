"""Composed queries: a photo plus words ("in red"), and relevance feedback ("more like this, less like this").

**Photo + words.** Both go into the joint space and are added, each part scaled by the inverse spread of its
own scores over the gallery, then weighted: ``q = (1 - w) * photo / s_photo + w * words / s_words``. Photos
score against photos far more alike than words against photos, so without the scaling the photo drowns the
words for every ``w`` short of 1; with it, ``w = 0.5`` gives both the same pull on the ranking (the same as
adding their z-scored scores). The results are products (the image gallery); the query's own item, when it
is one, is left out. ``python -m xmodal.compose --run DIR`` measures it (``benchmark``): the weight is swept on
the validation split and the test split is read once, at ``DEFAULT_WEIGHT`` (chosen on validation).

**Feedback.** Rocchio (Rocchio 1971; Manning et al., *Introduction to Information Retrieval*, ch. 9):
``q' = a * q0 + b * mean(good) - c * mean(bad)`` over the photos' embeddings, always from the first query
``q0`` with every judgement so far, so rounds add up and their order does not matter.

``run.search(image=..., text=..., weight=..., k=...)`` and ``run.refine(result, good=[...], bad=[...])`` call
``search`` and ``refine`` here.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from PIL import Image

from .metrics import first_match_ranks, wilson

if TYPE_CHECKING:
    from .search import Hit, Run

DEFAULT_WEIGHT = 0.5  # share of the words (after scaling both parts to the same spread), chosen on the validation
# split: see docs/quality.md, "Composed queries"
ROCCHIO = (1.0, 0.75, 0.15)  # (a, b, c): weight of the query, the good results, the bad results
SPREAD_SAMPLE = 20_000  # gallery rows the score spread is estimated on
WEIGHTS = (0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0)  # the benchmark's sweep


class ComposedResult(list):
    """The hits of a composed search or a refinement, best first (a ``list`` of ``Hit``), and its query.

    Attributes:
        query_vector: the joint-space vector ``[D]`` searched with.
        origin: the query before any feedback ``[D]`` (``refine`` starts from it again).
        good, bad: the gallery indices judged so far (relevance feedback).
        exclude: gallery indices never returned (the query's own item).
        unknown_words: words of the text part the model does not know (read as ``<unk>``).
        round: 0 for a search, then one more for each refinement.
    """

    def __init__(self, hits: Sequence[Hit], query_vector: torch.Tensor, origin: torch.Tensor | None = None,
                 good: Sequence[int] = (), bad: Sequence[int] = (), exclude: Sequence[int] = (),
                 unknown_words: Sequence[str] = (), round: int = 0):
        super().__init__(hits)
        self.query_vector = query_vector
        self.origin = query_vector if origin is None else origin
        self.good, self.bad, self.exclude = list(good), list(bad), list(exclude)
        self.unknown_words = list(unknown_words)
        self.round = round


def _unit(x: torch.Tensor) -> torch.Tensor:
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
    img, txt = _unit(image_vec), _unit(text_vec)
    if gallery is not None:
        img = img / score_spread(gallery, img)[..., None]
        txt = txt / score_spread(gallery, txt)[..., None]
    return _unit((1.0 - weight) * img + weight * txt)


def rocchio(origin: torch.Tensor, good: torch.Tensor | None, bad: torch.Tensor | None,
            coefficients: tuple[float, float, float] = ROCCHIO) -> torch.Tensor:
    """Rocchio's query ``[D]`` from the first query ``[D]`` and the judged items' vectors ``[g, D]``, ``[b, D]``."""
    a, b, c = coefficients
    q = a * _unit(origin)
    if good is not None and len(good):
        q = q + b * _unit(good).mean(0)
    if bad is not None and len(bad):
        q = q - c * _unit(bad).mean(0)
    return _unit(q)


def _products(run: Run, query: torch.Tensor, k: int, exclude: Sequence[int] = ()) -> list[Hit]:
    """The ``k`` products whose photos best match ``query`` ``[D]``, leaving out ``exclude``."""
    from .search import Hit
    skip = set(int(i) for i in exclude)
    scores, idx = run.gallery("images").search(query[None], k + len(skip))  # [1, k + e] each
    cat = run.catalogue
    hits = [Hit(int(i), float(s), cat.captions[int(i)], cat.image_path(int(i)), cat.item_ids[int(i)])
            for s, i in zip(scores[0], idx[0]) if int(i) not in skip]
    return hits[:k]


def _image_vector(run: Run, image) -> tuple[torch.Tensor, list[int]]:
    """The photo's vector and what to leave out: an item index of the run's catalogue uses (and leaves out)
    that item; a PIL image, path or bytes is embedded."""
    if isinstance(image, (int, np.integer)):
        i = int(image)
        if not 0 <= i < len(run.catalogue):
            raise ValueError(f"item index {i} is outside the gallery (0..{len(run.catalogue) - 1})")
        return run.image_embeds[i], [i]
    return run.embed_image(image), []


def search(run: Run, image: Image.Image | str | os.PathLike | bytes | int | None = None, text: str | None = None,
           weight: float | None = None, k: int = 10, exclude: Sequence[int] = ()) -> ComposedResult:
    """Products for a photo, words, or both (see the module docstring).

    Args:
        image: a PIL image, a path, the file's bytes, or an item index of the run's catalogue (that item
            is then left out of the results).
        text: words: a description, or a change to the photo ("in red", "striped").
        weight: the words' share, 0 (photo only) to 1 (words only); default ``DEFAULT_WEIGHT``. Ignored when
            only one of ``image`` and ``text`` is given.
        exclude: more gallery indices to leave out.

    Raises:
        ValueError: neither ``image`` nor ``text``; a weight outside [0, 1]; ``UnknownQueryError`` for words
            the model cannot read; ``ImageError`` for a photo it cannot open.
    """
    if image is None and not (text and text.strip()):
        raise ValueError("give a photo, words, or both")
    weight = DEFAULT_WEIGHT if weight is None else float(weight)
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must be between 0 (photo only) and 1 (words only); got {weight}")
    skip, unknown = list(exclude), []
    img = txt = None
    if image is not None:
        img, own = _image_vector(run, image)
        skip += own
    if text and text.strip():
        unknown = run.vocab.check_query(text)[1]
        txt = run.embed_text(text)
    if img is not None and txt is not None:
        query = compose_vectors(img, txt, weight, run.image_embeds)
    else:
        query = _unit(img if img is not None else txt)
    return ComposedResult(_products(run, query, k, skip), query, exclude=skip, unknown_words=unknown)


def refine(run: Run, query: ComposedResult | torch.Tensor, good: Sequence[int] = (), bad: Sequence[int] = (),
           k: int = 10, coefficients: tuple[float, float, float] = ROCCHIO) -> ComposedResult:
    """Re-rank with relevance feedback: more like the ``good`` gallery items, less like the ``bad`` ones.

    Args:
        query: a previous ``ComposedResult`` (its first query and judgements carry over; an item judged again
            takes its latest judgement) or a query vector ``[D]``.
        good, bad: gallery indices (``Hit.index``) judged in this round.
    """
    n = len(run.catalogue)
    for i in [*good, *bad]:
        if not 0 <= int(i) < n:
            raise ValueError(f"item index {i} is outside the gallery (0..{n - 1})")
    if isinstance(query, ComposedResult):
        origin, exclude, rounds, unknown = query.origin, query.exclude, query.round, query.unknown_words
        judged = {**{int(i): True for i in query.good}, **{int(i): False for i in query.bad}}
    else:
        origin, exclude, rounds, unknown, judged = _unit(torch.as_tensor(query)), [], 0, [], {}
    judged.update({int(i): True for i in good})
    judged.update({int(i): False for i in bad})
    good_all = [i for i, g in judged.items() if g]
    bad_all = [i for i, g in judged.items() if not g]
    emb = run.image_embeds
    vector = rocchio(origin, emb[good_all] if good_all else None, emb[bad_all] if bad_all else None, coefficients)
    return ComposedResult(_products(run, vector, k, exclude), vector, origin, good_all, bad_all, exclude,
                          unknown, rounds + 1)


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
    from .runs import read_json
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
    (``xmodal.metrics.first_match_ranks``: ties count against the query) is at most ``k``.

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
           "photo_only": success(_unit(img)), "words_only": success(_unit(txt))}
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
    from .data import CatalogueError
    from .search import RunError, load_run
    results = []
    for run_dir in a.run:
        try:
            results.append(choose_and_read(load_run(run_dir, data=a.data), a.n, a.seed, type_col=a.type_column))
        except (RunError, CatalogueError, ValueError, OSError, KeyError) as err:
            detail = "; ".join(line.strip() for line in str(err).splitlines() if line.strip())
            print(f"error: {run_dir}: {detail}", file=sys.stderr)
            return 2
    print(json.dumps(results, indent=1) if a.json else format_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
