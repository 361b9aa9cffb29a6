"""Exact search's inner loop, chosen by measuring on the machine it runs on, and the gallery's storage precision.

The matrix-vector product that exact search spends its time in runs at very different speeds on different
CPUs and BLAS builds (PyTorch's MKL takes a slow path on some AMD hosts where numpy's OpenBLAS does not, and
a float16 gallery reads half the bytes). So at gallery build time each candidate is timed on the gallery itself
and the fastest kept: no vendor guess. Candidates: ``torch`` (``q @ G.T``), ``numpy`` (the same through
numpy's BLAS, sharing the tensor's memory), each over the whole gallery or in row chunks; a float16 gallery
uses PyTorch's half-precision product (numpy has no BLAS for it).
"""
from __future__ import annotations

import time

import numpy as np
import torch

PRECISIONS = ("fp32", "fp16")
CHUNK_ROWS = 1 << 16  # the chunked candidates' rows per product (32 MB of float32 at D=128, 128 MB at D=512)
MEASURE_ABOVE = 20_000  # smaller galleries take microseconds whatever the kernel: not worth timing


def store(embeds: torch.Tensor, precision: str) -> torch.Tensor:
    """The gallery as searched: float32 as given, or a float16 copy (half the memory and bytes per query)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown gallery precision {precision!r}; choose one of {PRECISIONS}")
    return embeds.half().contiguous() if precision == "fp16" else embeds


def scores(gallery: torch.Tensor, queries: torch.Tensor, kernel: str = "torch") -> torch.Tensor:
    """``queries @ gallery.T`` as float32 ``[Q, N]`` with ``kernel`` (``torch``/``numpy``, ``:chunked`` for row
    chunks)."""
    name, _, mode = kernel.partition(":")
    if mode == "chunked" and len(gallery) > CHUNK_ROWS:
        return torch.cat([scores(gallery[s:s + CHUNK_ROWS], queries, name) for s in range(0, len(gallery),
                                                                                           CHUNK_ROWS)], 1)
    if gallery.dtype == torch.float16:
        return (queries.half() @ gallery.T).float()
    if name == "numpy":
        return torch.from_numpy(np.ascontiguousarray(queries.numpy()) @ gallery.numpy().T)
    return queries @ gallery.T


def candidates(gallery: torch.Tensor) -> list[str]:
    names = ["torch"] if gallery.dtype == torch.float16 else ["torch", "numpy"]
    return names + [f"{n}:chunked" for n in names] if len(gallery) > CHUNK_ROWS else names


def choose(gallery: torch.Tensor, reps: int = 5, seed: int = 0) -> tuple[str, dict[str, float]]:
    """The fastest kernel for one query over ``gallery`` (median of ``reps`` after a warm-up), with every
    candidate's milliseconds; ``torch`` unmeasured below ``MEASURE_ABOVE`` rows."""
    if len(gallery) < MEASURE_ABOVE:
        return "torch", {}
    q = torch.nn.functional.normalize(torch.randn(1, gallery.shape[1], generator=torch.Generator().manual_seed(seed)),
                                      dim=1)
    timings = {}
    for name in candidates(gallery):
        scores(gallery, q, name)  # warm-up: first-touch and library start-up
        runs = []
        for _ in range(reps):
            t0 = time.perf_counter()
            torch.topk(scores(gallery, q, name), 10, dim=1)
            runs.append(time.perf_counter() - t0)
        timings[name] = 1000 * float(np.median(runs))
    return min(timings, key=timings.get), timings
