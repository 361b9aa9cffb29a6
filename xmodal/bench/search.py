"""Section 3 of ``python -m xmodal.bench``: one caption's text encoding through ``embed_texts`` (in the runtime
``xmodal.text.runtime`` picks) against the tokeniser plus the bare text tower in each runtime (ONNX Runtime's
session, PyTorch's ``encode_text``), timed right after each query; text-to-top-10 latency over galleries of
10k to 1M items, exact search against one pass over the gallery's memory, the faiss index's build and latency,
and its recall@10 against exact search for the real text queries of a trained run (synthetic queries near
gallery rows would only measure the calibration's own assumption: real captions sit across the modality gap
from the photos). Each exact row names the product kernel the gallery chose by timing at build
(``xmodal.retrieval.kernels``). A float16 gallery (``GalleryConfig(precision="fp16")``: a float16 pass, then the
candidates re-scored in float32 from the caller's rows): its latency against one pass over its own (half-size)
memory, and its top-10 against float32 exact search for the same held-out captions of the trained run.
"""
from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..evaluation.metrics import wilson
from ..models.embed import embed_texts
from ..retrieval import kernels
from ..retrieval.filters import exact_rows
from ..retrieval.gallery import Gallery, GalleryConfig, _FaissThreads, exact_topk, recall_at_k
from ..retrieval.run import load_run
from ..text import runtime as text_runtime
from ..text.vocabulary import Vocab
from .common import BenchConfig, Row, ms, product_like, text_model, train_run


def _latency(encode: Callable[[str], torch.Tensor], search: Callable[[torch.Tensor], object], texts: list[str],
             paired: Callable[[], object] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-query seconds: end to end (text encoding included), search alone, and ``paired`` timed right
    after each search (so that both see the same moment of a noisy machine), behind the same text's encoding
    again (so that both find the caches as an encoding leaves them, not one warmed by the other)."""
    total, alone, other = [], [], []
    for text in texts:
        t0 = time.perf_counter()
        vec = encode(text)
        t1 = time.perf_counter()
        search(vec)
        t2 = time.perf_counter()
        total.append(t2 - t0)
        alone.append(t2 - t1)
        if paired is not None:
            encode(text)
            t3 = time.perf_counter()
            paired()
            other.append(time.perf_counter() - t3)
    return np.array(total), np.array(alone), np.array(other)


TEXT_TARGET = 1.25  # embed_texts within 1.25x of the tokeniser plus the bare forward: the image query row's margin


def _ms(seconds: float) -> str:
    """A sub-millisecond duration for the row (``common.ms`` keeps one decimal)."""
    return f"{seconds * 1e3:.2f} ms"


def text_encoding_row(model: nn.Module, vocab: Vocab, texts: list[str], what: str) -> Row:
    """p50 of ``embed_texts`` on each of ``texts`` alone against the tokeniser plus the best bare forward.

    Args:
        model: a model marked by ``text_runtime.fixed_weights`` (as a loaded run's is), in eval mode.
        what: the model, as the row names it.
    """
    cpu = torch.device("cpu")
    graph = text_runtime.select_runtime(model, cpu)  # exported or loaded here, before the clock
    used = "onnxruntime" if graph is not None else "torch"
    for text in texts[:5]:
        embed_texts(model, vocab, [text], cpu)  # warm-up: first calls, allocators
    total, tokenise, bare = [], [], {"torch": [], "onnxruntime": []}
    for text in texts:
        t0 = time.perf_counter()
        embed_texts(model, vocab, [text], cpu)
        t1 = time.perf_counter()
        tokens = vocab.encode([text])  # [1, L]
        t2 = time.perf_counter()
        with torch.no_grad():
            model.encode_text(tokens)  # [1, D]
        t3 = time.perf_counter()
        if graph is not None:
            graph(tokens)
            bare["onnxruntime"].append(time.perf_counter() - t3)
        total.append(t1 - t0)
        tokenise.append(t2 - t1)
        bare["torch"].append(t3 - t2)
    p50 = {name: float(np.median(v)) for name, v in bare.items() if v}
    best = min(p50, key=p50.get)
    limit = float(np.median(tokenise)) + p50[best]
    ratio = float(np.median(total)) / limit
    threads = graph.threads if graph is not None else torch.get_num_threads()
    return Row("3 search", f"text encoding: one caption through embed_texts ({what}, {used}, {threads} thread"
               f"{'s' if threads > 1 else ''}; {len(texts)} captions)",
               f"p50 {_ms(np.median(total))} / p95 {_ms(np.percentile(total, 95))}",
               f"tokenise p50 {_ms(np.median(tokenise))} + bare {best} p50 {_ms(p50[best])} "
               f"(torch {_ms(p50['torch'])})",
               f"{ratio:.2f}x", f"<= {TEXT_TARGET:.2f}x", ratio <= TEXT_TARGET)


# The run whose captions are the recall row's queries: trained in the bench on its catalogue, small images and
# few epochs to stay bounded, but a real modality gap.
RECALL_RUN = ("--model", "infonce-efficientnet", "--epochs", "3", "--batch-size", "64", "--image-size", "112", "84")


def bench_search(cfg: BenchConfig, cat, work: Path, query_run: Path | None = None) -> list[Row]:
    """Text-to-top-10 latency: exact (float32, float16) vs one memory pass, faiss build and latency, per gallery
    size; faiss recall@10 and float16's top-10 agreement with float32 for the captions of ``query_run`` (default: a
    run trained here on ``cat``, see ``RECALL_RUN``)."""
    vocab = Vocab.build(cat.captions)
    model = text_model(len(vocab), cfg.dim)
    cpu = torch.device("cpu")
    rng = np.random.default_rng(0)

    def encode(text: str) -> torch.Tensor:
        return embed_texts(model, vocab, [text], cpu)[0]  # [D]

    rows = [text_encoding_row(model, vocab, list(rng.choice(cat.captions, 50)), "untrained cmpm BiLSTM")]
    for n in sorted(cfg.sizes):
        texts = list(rng.choice(cat.captions, max(10, min(cfg.latency_queries, int(3e7 // n)))))
        rows += _search_rows(cfg, n, encode, texts, work)
        gc.collect()
    split = held_out_captions(query_run or _recall_run(cat, work))
    return rows + real_query_recall(split) + [fp16_agreement_row(split)]


def _recall_run(cat, work: Path) -> Path:
    """A run trained on ``cat`` with ``RECALL_RUN`` (its output hidden), for ``real_query_recall``."""
    return train_run(work, "recall-queries", [*RECALL_RUN, "--data", str(cat.root)], "the recall run")


@dataclass
class HeldOut:
    """A trained run's photos and its captions split in two (seeded): one half calibrates, the other is measured."""

    images: torch.Tensor  # [N, D]: the run's photo embeddings, the gallery
    calib: torch.Tensor  # [N // 2, D]: captions that calibrate faiss's nprobe
    held: torch.Tensor  # [N - N // 2, D]: the held-out captions, the queries measured
    items: np.ndarray  # [N - N // 2]: each held-out caption's own photo (its row of ``images``)


def held_out_captions(run_dir: Path, seed: int = 0) -> HeldOut:
    """The run's photos, and its captions split in two by a seeded permutation."""
    run = load_run(run_dir)
    images, texts = run.image_embeds, run.text_embeds  # [N, D] each: photos and their captions, row i = item i
    n = len(images)
    order = np.random.default_rng(seed).permutation(n)
    index = torch.from_numpy(order)
    return HeldOut(images, texts[index[: n // 2]], texts[index[n // 2:]], order[n // 2:])


def real_query_recall(run: Path | HeldOut, seed: int = 0) -> list[Row]:
    """faiss recall@10 against exact search over a trained run's image gallery, for its own captions as queries.

    The captions are split in two (seeded): one half calibrates ``nprobe`` (as ``Run.gallery`` calibrates on the
    other modality), the other half is measured. The same index calibrated on gallery rows plus noise (the old
    way) is shown beside it, with what its calibration promised. Every gallery size builds an index (the bench
    asks for faiss, whatever ``faiss_above`` says). ``run``: a run folder, or its split from ``held_out_captions``.
    """
    split = run if isinstance(run, HeldOut) else held_out_captions(run, seed)
    images, calib, held, n = split.images, split.calib, split.held, len(split.images)
    _, truth = exact_topk(images, held, 10)
    cfg = GalleryConfig()
    rows = []
    for name, queries in (("other captions, as Run.gallery does", calib), ("gallery rows plus noise (old)", None)):
        index = Gallery.build(images, kind="faiss", cfg=cfg, calibration_queries=queries)
        recall = recall_at_k(index.search(held, 10)[1], truth)
        info = index.info
        measure = (f"faiss recall@10 vs exact, {len(held):,} held-out captions of a trained run over its {n:,} photos "
                   f"(nlist {info['nlist']}, nprobe {info['nprobe']} calibrated on {name})")
        promised = f"calibration promised {info['calibration_recall@10']:.3f}"
        if queries is None:  # the contrast: no target, it is what the old calibration would have served
            rows.append(Row("3 search", measure, f"{recall:.3f}", promised, "-", "-", None))
        else:
            rows.append(Row("3 search", measure, f"{recall:.3f}", promised, f"{recall:.3f}", ">= 0.95", recall >= 0.95))
    return rows


def _search_rows(cfg: BenchConfig, n: int, encode: Callable[[str], torch.Tensor], texts: list[str], work: Path
                 ) -> list[Row]:
    """Exact search over ``n`` synthetic items, float32 then float16, each against one pass over its own memory;
    the faiss rows above the threshold."""
    gallery, _ = product_like(n, cfg.dim, seed=n)  # [n, D]
    exact = Gallery.build(gallery, kind="exact", cfg=GalleryConfig(precision="fp32"))
    row, exact_p50 = _exact_row(exact, encode, texts)
    half = Gallery.build(gallery, kind="exact", cfg=GalleryConfig(precision="fp16"))
    rows = [row, _exact_row(half, encode, texts)[0], _filtered_row(exact, encode, texts, exact_p50)]
    del half
    if n > GalleryConfig().faiss_above:
        rows += _bench_faiss(gallery, cfg, work, encode, texts, exact_p50)
    return rows


def _size(nbytes: int) -> str:
    """A memory size for the table, in kB, MB or GB (powers of 1000)."""
    unit, scale = next(((u, s) for u, s in (("GB", 1e9), ("MB", 1e6)) if nbytes >= s), ("kB", 1e3))
    return f"{nbytes / scale:,.1f} {unit}"


def _kernel(index: Gallery) -> str:
    """Which product exact search chose at build, and what each candidate took then."""
    timed = index.info.get("kernel_ms") or {}
    if timed:
        return f"kernel: {index.kernel}, fastest at build of " + ", ".join(f"{k} {v:.1f}" for k, v in timed.items()) \
            + " ms"
    if len(index) < kernels.MEASURE_ABOVE:
        return f"kernel: {index.kernel}, not timed under {kernels.MEASURE_ABOVE:,} rows"
    return f"kernel: {index.kernel}, as configured"


def _exact_row(index: Gallery, encode: Callable[[str], torch.Tensor], texts: list[str]) -> tuple[Row, float]:
    """Exact search on ``index`` against one pass over the memory it searches (a plain sum over the same array,
    float32 or float16, timed right after each query's search); the row and the search's p50 in seconds."""
    stored = index.embeds  # [n, D]
    n, dim = stored.shape
    index.search(encode(texts[0]), 10)
    stored.sum()
    total, alone, passes = _latency(encode, lambda v: index.search(v, 10), texts, lambda: stored.sum())
    one_pass, p50 = float(np.median(passes)), float(np.median(alone))
    ratio = p50 / one_pass
    nbytes = stored.numel() * stored.element_size()
    half = stored.dtype == torch.float16
    reference = f"one pass (sum) {'of the fp16 gallery ' if half else ''}p50 {ms(one_pass)} " \
                f"({nbytes / one_pass / 1e9:.1f} GB/s)"
    if half:
        full = stored.numel() * 4
        reference += f"; memory {_size(nbytes)} against fp32's {_size(full)} ({nbytes / full:.2f}x)"
    how = (", float16 pass + float32 re-score" if index.rescored else ", plain float16: not re-scored") if half else ""
    return Row("3 search", f"text->top-10, exact{' fp16' if half else ''}, {n:,} x {dim} ({_kernel(index)}{how})",
               f"p50 {ms(np.median(total))} / p95 {ms(np.percentile(total, 95))} (search p50 {ms(p50)})",
               reference, f"{ratio:.2f}x", "<= 1.5x", ratio <= 1.5), p50


FILTER_SHARES = (0.01, 0.1, 0.5)  # shares of the gallery a where= filter keeps (issue 23 §4)


def _filtered_row(exact: Gallery, encode: Callable[[str], torch.Tensor], texts: list[str], exact_p50: float
                  ) -> Row:
    """Filtered exact search (``where=`` keeping 1, 10 and 50 % of the rows, drawn at random) against the
    unfiltered exact search's p50: exact over the kept rows, so its recall is that of exact search (1.000)."""
    gallery = exact.embeds  # [n, D] float32, searched as Run does with a filter: the gallery's own kernel
    n, dim = gallery.shape
    rng, p50s = np.random.default_rng(n), {}
    for share in FILTER_SHARES:
        keep = rng.random(n) < share
        keep[0] = True
        p50s[share] = float(np.median(_latency(encode, lambda v: exact_rows(gallery, v, 10, None, keep, exact.kernel),
                                                texts)[1]))
    worst = max(p50s.values()) / exact_p50
    return Row("3 search", f"text->top-10, exact, filtered, {n:,} x {dim} (where= keeps "
               f"{' / '.join(f'{100 * s:g}' for s in FILTER_SHARES)} %; exact over the kept rows: recall 1.000)",
               " / ".join(f"{100 * s:g} %: p50 {ms(t)}" for s, t in p50s.items()),
               f"unfiltered exact search p50 {ms(exact_p50)}", f"{worst:.2f}x", "<= 1.25x", worst <= 1.25)


FP16_IDENTICAL = 0.99  # fp16 must return float32's top-10 set for this share of real queries (issue 24 §2)
FP16_R10_POINTS = 0.1  # and move R@10 by at most this many percentage points


def _same_sets(a: np.ndarray, b: np.ndarray) -> int:
    """How many rows of ``a`` and ``b`` (``[Q, k]`` indices) hold the same items."""
    return int(sum(set(x) == set(y) for x, y in zip(a.tolist(), b.tolist())))


def fp16_agreement(images: torch.Tensor, queries: torch.Tensor, items: np.ndarray, k: int = 10) -> dict[str, int]:
    """Exact top-``k`` of ``queries`` over ``images`` stored in float16 (a float16 pass and float32 re-scoring, one
    query's path: ``kernels.rescored_topk``) against float32 exact search; plain float16 (no re-scoring) beside it.

    Returns:
        Counts over the queries: ``queries``; ``same_set`` (the same ``k`` items), ``same_order`` (also in the same
        order), ``plain_same_set`` (plain float16's same sets); ``hit32``/``hit16`` (the query's own photo, row
        ``items[i]``, in its top ``k``: R@k's numerator); ``changed`` (queries whose hit differs); ``widened``
        (queries whose candidate set had to grow past ``k + 32``), ``most_rescored`` (the largest candidate set);
        and the two galleries' ``bytes32``/``bytes16``.
    """
    full = Gallery.build(images, kind="exact", cfg=GalleryConfig(precision="fp32"))
    half = Gallery.build(images, kind="exact", cfg=GalleryConfig(precision="fp16"))
    if not half.rescored:
        raise ValueError("fp16_agreement needs float32 images (a contiguous float32 tensor) to re-score from")
    i32 = full.search(queries, k)[1].numpy()
    _, i16, used = kernels.rescored_topk(half.embeds, half.rows, queries, k, half.error, half.kernel)
    i16, plain = i16.numpy(), exact_topk(half.embeds, queries, k)[1].numpy()
    own = np.asarray(items).reshape(-1, 1)
    hit32, hit16 = (i32 == own).any(1), (i16 == own).any(1)
    return {"queries": len(i32), "same_set": _same_sets(i32, i16), "same_order": int((i32 == i16).all(1).sum()),
            "plain_same_set": _same_sets(i32, plain), "hit32": int(hit32.sum()), "hit16": int(hit16.sum()),
            "changed": int((hit32 != hit16).sum()), "widened": int((used > min(k + 32, len(images))).sum()),
            "most_rescored": int(used.max()) if len(used) else 0,
            "bytes32": full.embeds.numel() * full.embeds.element_size(),
            "bytes16": half.embeds.numel() * half.embeds.element_size()}


def fp16_agreement_row(split: HeldOut) -> Row:
    """``fp16_agreement`` for a trained run's held-out captions over its photos, as a row with 95 % intervals."""
    a = fp16_agreement(split.images, split.held, split.items)
    q = a["queries"]
    same, (lo, hi) = 100 * a["same_set"] / q, wilson(a["same_set"], q)
    r32, r16 = 100 * a["hit32"] / q, 100 * a["hit16"] / q
    i32, i16 = wilson(a["hit32"], q), wilson(a["hit16"], q)
    met = same >= 100 * FP16_IDENTICAL and abs(r16 - r32) <= FP16_R10_POINTS
    return Row("3 search", f"fp16 vs fp32 exact top-10, {q:,} held-out captions of a trained run over its "
               f"{len(split.images):,} photos (R@10: the caption's own photo)",
               f"{same:.1f} % [{lo:.1f}, {hi:.1f}] identical top-10 sets ({100 * a['same_order'] / q:.1f} % in the "
               f"same order; float16 pass + float32 re-score, {a['widened']} queries widened, at most "
               f"{a['most_rescored']} re-scored); R@10 {r16:.1f} % [{i16[0]:.1f}, {i16[1]:.1f}]",
               f"fp32 exact: R@10 {r32:.1f} % [{i32[0]:.1f}, {i32[1]:.1f}]; difference {r16 - r32:+.2f} pt "
               f"({a['changed']} queries changed); plain fp16 (no re-score) {100 * a['plain_same_set'] / q:.1f} % "
               f"identical; memory {_size(a['bytes16'])} against {_size(a['bytes32'])}",
               f"{same:.1f} %",
               f">= {100 * FP16_IDENTICAL:.0f} % identical, R@10 within {FP16_R10_POINTS} pt", met)


def _bench_faiss(gallery: torch.Tensor, cfg: BenchConfig, work: Path,
                 encode: Callable[[str], torch.Tensor], texts: list[str], exact_p50: float) -> list[Row]:
    """Build (and reload) the faiss index of ``gallery`` and time its queries (its recall is measured on real
    queries: ``real_query_recall``)."""
    n = len(gallery)
    path = work / f"faiss_{n}.npz"
    path.unlink(missing_ok=True)
    t = time.perf_counter()
    index = Gallery.build(gallery, kind="faiss", cache_path=path)
    build_s = time.perf_counter() - t
    info = index.info
    bare = max(info["build_s"], 1e-9)  # faiss's own train + add: the limit an IVF index cannot beat
    save_s = info.get("save_s", 0.0)  # writing the index to the run folder: disk-bound, shown apart
    ratio = (build_s - save_s) / bare
    rows = [Row("3 search", f"faiss IVF build, {n:,} x {cfg.dim} (nlist {info['nlist']}, nprobe {info['nprobe']} "
                "calibrated; the figure leaves out the cache write)", f"{build_s - save_s:.1f} s (calibration "
                f"{info.get('calibrate_s', 0):.1f} s of it) + cache write {save_s:.1f} s",
                f"faiss train {info['train_s']:.1f} s + add {info['build_s'] - info['train_s']:.1f} s",
                f"{ratio:.2f}x", "<= 2.0x", ratio <= 2.0)]
    t = time.perf_counter()
    again = Gallery.build(gallery, kind="faiss", cache_path=path)
    rows.append(Row("3 search", f"faiss index reload from the run-folder cache, {n:,}",
                    f"{time.perf_counter() - t:.1f} s (from cache: {again.info['from_cache']})",
                    f"build {build_s:.0f} s", "-", "-", None))
    rows.append(_faiss_latency_row(index, encode, texts, exact_p50, f"text->top-10, faiss, {n:,} x {cfg.dim}"))
    path.unlink(missing_ok=True)
    return rows


def _faiss_latency_row(index, encode: Callable[[str], torch.Tensor], texts: list[str], exact_p50: float,
                       measure: str) -> Row:
    """``Gallery.search`` on a faiss index against faiss's own ``index.search`` of the same vector at the same
    ``nprobe`` on one thread (the IVF scan itself: the limit of any search through this index).

    Each text is encoded and searched both ways, each behind its own encoding, the order alternating from
    one text to the next: the second search of a vector finds its probed lists in the cache, whichever
    searched, so each way goes first half of the time. One thread, as ``Gallery`` runs one query (two are no
    faster for one query).
    """

    def bare(v: torch.Tensor) -> object:
        with _FaissThreads(1):
            return index.index.search(v.reshape(1, -1).numpy(), 10)

    def ours(v: torch.Tensor) -> object:
        return index.search(v, 10)

    ours(encode(texts[0]))
    bare(encode(texts[0]))
    times: dict[str, list[float]] = {"ours": [], "bare": [], "total": []}
    for i, text in enumerate(texts):
        for name, fn in ((("ours", ours), ("bare", bare)) if i % 2 == 0 else (("bare", bare), ("ours", ours))):
            t0 = time.perf_counter()
            v = encode(text)
            t1 = time.perf_counter()
            fn(v)
            t2 = time.perf_counter()
            times[name].append(t2 - t1)
            if name == "ours":
                times["total"].append(t2 - t0)
    p50, limit = float(np.median(times["ours"])), float(np.median(times["bare"]))
    ratio = p50 / limit
    return Row("3 search", measure, f"p50 {ms(np.median(times['total']))} / p95 "
               f"{ms(np.percentile(times['total'], 95))} (search p50 {ms(p50)})",
               f"faiss's own search, same nprobe, 1 thread, p50 {ms(limit)}; exact search p50 {ms(exact_p50)}",
               f"{ratio:.2f}x", "<= 1.5x", ratio <= 1.5)
