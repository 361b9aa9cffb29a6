"""Live queries for the Search page: top-k hits, and where the true match landed when the query is a
catalogue item (caption-level: items with an identical caption also count as the true match).

The gallery is the run's whole catalogue, or a part of it (``gallery``: catalogue positions, e.g. the test
split, the gallery that Compare and the run's test.json rank against): hits and ranks then come from those
items alone, and ``gallery_line`` says which was searched. ``hubness="csls"`` ranks with CSLS hubness correction
(``xmodal.retrieval.hubness``, the ranking ``Run.hubness = "csls"`` gives); the hits keep their plain cosine as
their score, the number the explanations place among the catalogue's, and ``ranking_line`` says which ranking.

Every session's query runs on one thread (``on_query_thread``), one query at a time, with PyTorch on one
intra-op thread: sessions searching at the same moment queue there instead of each running PyTorch's thread
pool on the same cores. One caption or one photo is too small to share out: on two cores, a caption's BiLSTM
took 75-205 ms on two threads inside the server against 6 ms on one. A query's model work is a few to a few
tens of milliseconds, so the queue moves quickly; the page drawing around it stays in each session's thread.
"""
from __future__ import annotations

import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, TypeVar

import numpy as np
from PIL import Image

from ..evaluation.metrics import rank_of_match, title_groups

if TYPE_CHECKING:  # the run passed in has loaded PyTorch already; importing this module does not
    from ..retrieval.run import Hit, Run


T = TypeVar("T")


_QUERIES = ThreadPoolExecutor(max_workers=1, thread_name_prefix="xmodal-query")  # the one query thread
HUBNESS = ("csls", "none")  # query-time hubness corrections offered (xmodal.retrieval.hubness)
# Each loaded run's CSLS offsets per gallery kind; touched only on the query thread; gone with the run.
_OFFSETS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_GROUPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # each loaded run's title group per item


def _on_one_torch_thread(fn: Callable[..., T], args: tuple, kwargs: dict) -> T:
    """``fn`` with PyTorch (and any ONNX Runtime session it opens) on one intra-op thread, the count given back
    after: PyTorch hands its last count to threads started later, which must not inherit this one."""
    import torch  # lazy: importing this module does not load PyTorch; the first query has loaded it already
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn(*args, **kwargs)
    finally:
        torch.set_num_threads(threads)


def on_query_thread(fn: Callable[..., T], *args, **kwargs) -> T:
    """``fn(*args, **kwargs)`` run on the dashboard's one query thread (PyTorch on one intra-op thread there),
    after the queries queued before it; its result, or its exception raised here. ``fn`` must not call
    Streamlit (it runs outside the session)."""
    return _QUERIES.submit(_on_one_torch_thread, fn, args, kwargs).result()


@dataclass
class QueryResult:
    """What one run answered to one query."""

    hits: list[Hit]  # the top-k
    rank: int | None = None  # 1-based rank of the true match (None: the query is not a catalogue item here)
    above: list[Hit] = field(default_factory=list)  # what ranked above the true match, best first
    true_hit: Hit | None = None  # the true match itself, with its score
    spread: tuple[float, float, int] | None = None  # mean, std and count of its cosines over the whole catalogue


def _hit(run: Run, i: int, score: float) -> Hit:
    from ..retrieval.run import Hit
    cat = run.catalogue
    return Hit(int(i), float(score), cat.captions[i], cat.image_path(i), cat.item_ids[i])


def gallery_line(catalogue_name: str, scope: str, size: int) -> str:
    """What a result was searched in, in words (plain text: the caller escapes it)."""
    where = "its test split" if scope == "test" else "the whole catalogue"
    return f"Searched {where}: {size:,} products of {catalogue_name}"


def ranking_line(hubness: str, bank: str) -> str:
    """How results were ranked, in words (``bank``: what the correction compares each result to, e.g. "captions")."""
    if hubness == "csls":
        from ..retrieval.hubness import CSLS_K, CSLS_WEIGHT  # lazy: this module imports without PyTorch
        return (f"ranked with CSLS hubness correction: each result's cosine less {CSLS_WEIGHT:g} × its mean cosine "
                f"to its {CSLS_K} nearest {bank} of the catalogue; the scores shown are the plain cosines")
    return "ranked by plain cosine, as the run's reported recall is"


def _check_hubness(hubness: str) -> None:
    if hubness not in HUBNESS:
        raise ValueError(f"unknown hubness correction {hubness!r}; choose one of {HUBNESS}")


def offsets_ready(run: Run, kind: str) -> bool:
    """Whether ``run``'s CSLS offsets for gallery ``kind`` are computed (its first CSLS query takes seconds)."""
    return kind in _OFFSETS.get(run, {})


def _csls_offsets(run: Run, kind: str) -> np.ndarray:
    """CSLS's ``r(g)`` ``[N]`` for gallery ``kind`` (``images``: searched by captions, ``texts``: by photos), as
    ``Run.hubness = "csls"`` ranks with; computed once per run (cached in its folder), on the query thread."""
    cached = _OFFSETS.setdefault(run, {})
    if kind not in cached:
        cached[kind] = run.csls_offsets(kind).numpy()
    return cached[kind]


def _scores(run: Run, kind: str, vector, hubness: str, gallery: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(cosine ``[N]``, the ranking's scores ``[N]``: CSLS-corrected when ``hubness`` asks, -inf off ``gallery``);
    the product with the kernel measured fastest on this machine (``Run.rows_kernel``)."""
    from ..retrieval import kernels  # lazy, as below: this module imports without PyTorch
    from ..retrieval.hubness import CSLS_WEIGHT
    rows = run.image_embeds if kind == "images" else run.text_embeds
    cosine = kernels.scores(rows, vector[None], run.rows_kernel(kind))[0].numpy()  # [N]
    ranking = cosine - CSLS_WEIGHT * _csls_offsets(run, kind) if hubness == "csls" else cosine
    return cosine, _restricted(ranking, gallery)


def _restricted(scores: np.ndarray, gallery: np.ndarray | None) -> np.ndarray:
    """``scores`` with every entry outside ``gallery`` at -inf (never a hit, never above the true match)."""
    if gallery is None:
        return scores
    out = np.full_like(scores, -np.inf)
    out[gallery] = scores[gallery]
    return out


def _top(run: Run, ranking: np.ndarray, cosine: np.ndarray, gallery: np.ndarray, k: int) -> list[Hit]:
    """The ``k`` best of ``gallery`` by ``ranking`` (ties: the earlier in ``gallery``), each scored with its cosine."""
    import torch  # lazy, as above
    from ..retrieval import kernels
    cols = kernels.topk(torch.from_numpy(np.ascontiguousarray(ranking[gallery]))[None], min(k, len(gallery)))[1][0]
    return [_hit(run, int(i), cosine[i]) for i in gallery[cols.numpy()]]


def _locate(run: Run, ranking: np.ndarray, cosine: np.ndarray, item_id: str | None, show: int
            ) -> tuple[int | None, list[Hit], Hit | None]:
    cat = run.catalogue
    if item_id is None or item_id not in cat.item_ids:
        return None, [], None
    pos = cat.item_ids.index(item_id)
    if not np.isfinite(ranking[pos]):  # not in the gallery searched
        return None, [], None
    if run not in _GROUPS:
        _GROUPS[run] = title_groups(cat.captions)  # [N], once per run: the metrics' own title grouping
    same = [int(i) for i in np.flatnonzero(_GROUPS[run] == _GROUPS[run][pos]) if i != pos and np.isfinite(ranking[i])]
    rank, above = rank_of_match(ranking, [pos, *same], show=show)
    return rank, [_hit(run, i, cosine[i]) for i in above], _hit(run, pos, cosine[pos])


def text_query(run: Run, query: str, k: int = 10, item_id: str | None = None, show_above: int = 10,
               gallery: np.ndarray | None = None, hubness: str = "none") -> QueryResult:
    """Products whose images best match ``query``; with ``item_id``, where that item's image landed; with
    ``gallery`` (catalogue positions), among those products only; ``hubness`` ``csls``: ranked with CSLS (the hits'
    scores stay cosines). Runs on the query thread."""
    _check_hubness(hubness)
    return on_query_thread(_text_query, run, query, k, item_id, show_above, gallery, hubness)


def _text_query(run: Run, query: str, k: int, item_id: str | None, show_above: int,
                gallery: np.ndarray | None, hubness: str) -> QueryResult:
    hits = run.read_query(query)  # the words it read (an unreadable query raises here, before any work)
    vector = run.embed_text(query)  # [D], once: hits, the true match's rank and the spread all come from it
    cosine, ranking = _scores(run, "images", vector, hubness, gallery)  # [N] each
    if gallery is None and hubness == "none":  # the gallery's own search (faiss above 50k), as the library's
        hits.extend(run.search_text(query, k, vector=vector))
    else:
        hits.extend(_top(run, ranking, cosine, _positions(run, gallery), k))
    rank, above, true_hit = _locate(run, ranking, cosine, item_id, show_above)
    return QueryResult(hits, rank, above, true_hit, _spread(cosine))


def image_query(run: Run, image: Image.Image, k: int = 10, item_id: str | None = None,
                show_above: int = 10, gallery: np.ndarray | None = None, hubness: str = "none") -> QueryResult:
    """Captions that best describe ``image``; with ``item_id``, where that item's caption landed; with
    ``gallery`` (catalogue positions), among those products' captions only; ``hubness`` as ``text_query``. Runs on
    the query thread."""
    _check_hubness(hubness)
    return on_query_thread(_image_query, run, image, k, item_id, show_above, gallery, hubness)


def _image_query(run: Run, image: Image.Image, k: int, item_id: str | None, show_above: int,
                 gallery: np.ndarray | None, hubness: str) -> QueryResult:
    vector = run.embed_image(image)  # [D], once: the backbone's forward is most of a query
    cosine, ranking = _scores(run, "texts", vector, hubness, gallery)  # [N] each
    hits = run.search_image(image, k, vector=vector) if gallery is None and hubness == "none" else \
        _top(run, ranking, cosine, _positions(run, gallery), k)
    rank, above, true_hit = _locate(run, ranking, cosine, item_id, show_above)
    return QueryResult(hits, rank, above, true_hit, _spread(cosine))


def _spread(cosine: np.ndarray) -> tuple[float, float, int]:
    """(mean, standard deviation, count) of a query's cosines over the whole catalogue: what its hits' standard
    scores are measured against (``explain_view.standard_scores``), from the pass the query made anyway."""
    return float(cosine.mean()), float(cosine.std()), len(cosine)


def _positions(run: Run, gallery: np.ndarray | None) -> np.ndarray:
    return np.arange(len(run.catalogue)) if gallery is None else np.asarray(gallery)
