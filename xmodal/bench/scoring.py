"""Bench section 7: the metrics core scoring a whole split (``evaluate --split all``) in bounded memory.

Both ground truths, per-query ranks and the bootstrap intervals of ``xmodal.evaluation.scoring.score_embeddings`` on
synthetic embeddings of ``metrics_items`` items, with the peak of NumPy's allocations (``tracemalloc``) set
against the ``[N, N]`` score matrix the core never builds.
"""
from __future__ import annotations

import time
import tracemalloc

import numpy as np

from ..evaluation.scoring import score_embeddings
from .common import BenchConfig, Row

DIM = 64  # the matmul's width does not change the blocks' memory; a narrow one keeps the section short
LIMIT_GB = 4.0


def bench_scoring(cfg: BenchConfig) -> list[Row]:
    """One row: seconds and peak memory of scoring ``cfg.metrics_items`` items, against the 4 GB target."""
    n = cfg.metrics_items
    rng = np.random.default_rng(0)
    img = rng.normal(size=(n, DIM)).astype(np.float32)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt = img + rng.normal(size=(n, DIM)).astype(np.float32)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    captions = [f"brand {i % max(1, n * 9 // 10)} shirt" for i in range(n)]  # a tenth of the titles shared
    tracemalloc.start()
    t = time.perf_counter()
    score_embeddings(img, txt, captions, unseen=np.ones(n, dtype=bool))
    seconds = time.perf_counter() - t
    peak = tracemalloc.get_traced_memory()[1] / 1e9
    tracemalloc.stop()
    full = n * n * 4 / 1e9
    return [Row("7 metrics", f"score a split of {n:,} items (both ground truths, ranks, bootstrap intervals; "
                f"{DIM}-d embeddings)", f"{seconds:.0f} s, peak {peak:.2f} GB allocated",
                f"one [N, N] float32 score matrix: {full:.1f} GB", f"{peak:.2f} GB", f"<= {LIMIT_GB:.0f} GB",
                peak <= LIMIT_GB)]
