"""Section 3 of ``python -m xmodal.bench``: one caption's text encoding through ``embed_texts`` (in the runtime
``xmodal.text.runtime`` picks) against the tokeniser plus the bare text tower in each runtime (ONNX Runtime's
session, PyTorch's ``encode_text``), timed right after each query; text-to-top-10 latency over galleries of
10k to 1M items, exact search against one pass over the gallery's memory, the faiss index's build and latency,
and its recall@10 against exact search for the real text queries of a trained run (synthetic queries near
gallery rows would only measure the calibration's own assumption: real captions sit across the modality gap
from the photos).
"""
from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..models.embed import embed_texts
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
    """Text-to-top-10 latency: exact vs one memory pass, faiss build and latency, per gallery size; faiss
    recall@10 for the captions of ``query_run`` (default: a run trained here on ``cat``, see ``RECALL_RUN``)."""
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
    return rows + real_query_recall(query_run or _recall_run(cat, work))


def _recall_run(cat, work: Path) -> Path:
    """A run trained on ``cat`` with ``RECALL_RUN`` (its output hidden), for ``real_query_recall``."""
    return train_run(work, "recall-queries", [*RECALL_RUN, "--data", str(cat.root)], "the recall run")


def real_query_recall(run_dir: Path, seed: int = 0) -> list[Row]:
    """faiss recall@10 against exact search over a trained run's image gallery, for its own captions as queries.

    The captions are split in two (seeded): one half calibrates ``nprobe`` (as ``Run.gallery`` calibrates on the
    other modality), the other half is measured. The same index calibrated on gallery rows plus noise (the old
    way) is shown beside it, with what its calibration promised. Every gallery size builds an index (the bench
    asks for faiss, whatever ``faiss_above`` says).
    """
    run = load_run(run_dir)
    images, texts = run.image_embeds, run.text_embeds  # [N, D] each: photos and their captions
    n = len(images)
    order = torch.from_numpy(np.random.default_rng(seed).permutation(n))
    calib, held = texts[order[: n // 2]], texts[order[n // 2:]]
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
    """Exact search over ``n`` synthetic items against one memory pass; the faiss rows above the threshold."""
    gallery, _ = product_like(n, cfg.dim, seed=n)  # [n, D]
    exact = Gallery.build(gallery, kind="exact")
    exact.search(encode(texts[0]), 10)
    gallery.sum()
    # one pass: a plain sum reads every byte of the gallery once, timed right after each query's search
    total, alone, passes = _latency(encode, lambda v: exact.search(v, 10), texts, lambda: gallery.sum())
    one_pass = float(np.median(passes))
    ratio = float(np.median(alone)) / one_pass
    rows = [Row("3 search", f"text->top-10, exact, {n:,} x {cfg.dim}",
                f"p50 {ms(np.median(total))} / p95 {ms(np.percentile(total, 95))} "
                f"(search p50 {ms(np.median(alone))})",
                f"one pass (sum) p50 {ms(one_pass)} ({gallery.numel() * 4 / one_pass / 1e9:.1f} GB/s)",
                f"{ratio:.2f}x", "<= 1.5x", ratio <= 1.5)]
    if n > GalleryConfig().faiss_above:
        rows += _bench_faiss(gallery, cfg, work, encode, texts, float(np.median(alone)))
    return rows


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
