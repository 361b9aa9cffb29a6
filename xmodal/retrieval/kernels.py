"""Exact search's inner loop, chosen by measuring on the machine it runs on, and the gallery's storage precision.

The matrix-vector product that exact search spends its time in runs at very different speeds on different
CPUs and BLAS builds (PyTorch's MKL takes a slow path on some AMD hosts where numpy's OpenBLAS does not, and
a float16 gallery reads half the bytes). So at gallery build time each candidate is timed on the gallery itself
and the fastest kept: no vendor guess. Candidates: ``torch`` (``q @ G.T``), ``numpy`` (the same through
numpy's BLAS, sharing the tensor's memory), each over the whole gallery or in row chunks; a float16 gallery
uses PyTorch's half-precision product (numpy has no BLAS for it).

A float16 gallery is exact when it can read float32 rows (``rescored_topk``): the float16 pass ranks every row,
a candidate set is scored again in float32, and the set is widened until ``HalfError`` proves that no row left
out could score above float32's k-th best. The proof bounds |fp16 score - fp32 score| by the rows' and the query's
float16 rounding (measured: Cauchy-Schwarz on the rounding vectors), the product's float32 accumulation and its
float16 output (checked once per process on this machine's kernel: ``half_arithmetic``), and float32's own
accumulation.
"""
from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass

import numpy as np
import torch

PRECISIONS = ("auto", "fp32", "fp16")
HALF_ABOVE = 20_000  # precision="auto": float16 (re-scored) from this many rows, where a query's bytes start to count
FP16_UNIT = 2.0 ** -11  # float16's unit roundoff (11 significant bits): |fl(x) - x| <= FP16_UNIT * |x|
FP16_TINY = 2.0 ** -25  # and at most this much below float16's normal range (|x| < 2^-14, subnormals)
FP32_UNIT = 2.0 ** -24
CHUNK_ROWS = 1 << 16  # the chunked candidates' rows per product (32 MB of float32 at D=128, 128 MB at D=512)
MEASURE_ABOVE = 4_096  # below this the kernels differ by tens of microseconds (at 10k rows: 1.9 ms against 0.4)


def resolve(precision: str, rows: int, borrowed: str | None) -> str:
    """``fp32`` or ``fp16`` for a gallery of ``rows``: ``auto`` is fp16 when it can be exact (float32 rows of the
    caller's to re-score from, ``borrowed``) and large enough to gain (``HALF_ABOVE``), else fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown gallery precision {precision!r}; choose one of {PRECISIONS}")
    if precision == "auto":
        return "fp16" if borrowed is not None and rows >= HALF_ABOVE else "fp32"
    return precision


def store(embeds: torch.Tensor, precision: str) -> torch.Tensor:
    """The gallery as searched: float32 as given, or a float16 copy (half the memory and bytes per query)."""
    return embeds.half().contiguous() if resolve(precision, 0, None) == "fp16" else embeds


def borrowed(given, x: torch.Tensor) -> str | None:
    """Where the float32 rows ``x`` live when they are the caller's own memory (no copy was made): "a memory-mapped
    float32 file" or "the caller's float32 rows"; None when ``x`` is a copy made here."""
    ptr = given.data_ptr() if isinstance(given, torch.Tensor) else \
        given.__array_interface__["data"][0] if isinstance(given, np.ndarray) else None
    if ptr != x.data_ptr() or x.numel() == 0:
        return None
    return "a memory-mapped float32 file" if isinstance(given, np.memmap) else "the caller's float32 rows"


def scores(gallery: torch.Tensor, queries: torch.Tensor, kernel: str = "torch", raw: bool = False) -> torch.Tensor:
    """``queries @ gallery.T`` as float32 ``[Q, N]`` with ``kernel`` (``torch``/``numpy``, ``:chunked`` for row
    chunks); ``raw``: a float16 gallery's product as it comes (float16)."""
    name, _, mode = kernel.partition(":")
    if mode == "chunked" and len(gallery) > CHUNK_ROWS:
        return torch.cat([scores(gallery[s:s + CHUNK_ROWS], queries, name, raw) for s in range(0, len(gallery),
                                                                                                CHUNK_ROWS)], 1)
    if gallery.dtype == torch.float16:
        product = queries.half() @ gallery.T
        return product if raw else product.float()
    if name == "numpy":
        return torch.from_numpy(np.ascontiguousarray(queries.numpy()) @ gallery.numpy().T)
    return queries @ gallery.T


def topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.topk`` along dim 1 with exact ties going to the lower column, wherever they fall (torch's own choice
    among ties is unspecified): two exact searches that score alike then return alike, whichever kernel ran.

    Returns:
        Values and columns ``[Q, k]``, descending.
    """
    n = scores.shape[1]
    top = torch.topk(scores, min(k + 1, n), dim=1)
    values, cols = top.values[:, :k], top.indices[:, :k]
    if k < n:
        for r in (top.values[:, k] == top.values[:, k - 1]).nonzero()[:, 0].tolist():  # a tie across rank k (rare)
            tied = (scores[r] >= top.values[r, k - 1]).nonzero()[:, 0]  # every column down to the k-th score
            keep = torch.sort(scores[r, tied], descending=True, stable=True).indices[:k]
            values[r], cols[r] = scores[r, tied[keep]], tied[keep]
    cols, perm = cols.sort(dim=1)
    order = torch.sort(values.gather(1, perm), dim=1, descending=True, stable=True)  # ties inside: column order
    return order.values, cols.gather(1, order.indices)


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


def _gamma(terms: int, unit: float) -> float:
    """The classic bound on a sum's rounding: ``|computed - exact| <= gamma * sum|terms|`` in any order."""
    return terms * unit / (1 - terms * unit) if terms * unit < 1 else math.inf


@functools.lru_cache(maxsize=None)
def half_arithmetic(dim: int) -> tuple[float, float]:
    """(accumulation unit, output unit) of this process's float16 product at width ``dim``: checked on random rows
    (one query and a batch: the two BLAS paths) against float64; float32 accumulation with a float16 output passes,
    anything coarser is taken as float16 accumulation (a bound that stays true, only wider)."""
    gen = torch.Generator().manual_seed(dim)
    g = torch.nn.functional.normalize(torch.randn(512, dim, generator=gen), dim=1).half()  # [512, D]
    q = torch.nn.functional.normalize(torch.randn(4, dim, generator=gen), dim=1).half()  # [4, D]
    out = q @ g.T
    out_unit = FP16_UNIT if out.dtype == torch.float16 else 0.0
    exact = q.double() @ g.double().T  # [4, 512]: products of float16 numbers are exact in float64
    mass = q.double().abs() @ g.double().abs().T
    allowed = out_unit * (exact.abs() + _gamma(dim + 1, FP32_UNIT) * mass) + FP16_TINY \
        + _gamma(dim + 1, FP32_UNIT) * mass
    for got in (out, q[:1] @ g.T):
        if ((got.double() - exact[: len(got)]).abs() > allowed[: len(got)]).any():
            return FP16_UNIT, out_unit
    return FP32_UNIT, out_unit


@dataclass(frozen=True)
class HalfError:
    """What bounds |fp16 score - fp32 score| over one gallery (see the module docstring); ``HalfError.of``."""

    norm32: float  # the float32 rows' largest norm
    norm16: float  # the float16 rows' largest norm
    rounding: float  # the largest ||fp16(g) - g|| over rows g
    gamma16: float  # the float16 product's accumulation bound (per unit of sum |g_i q_i|)
    gamma32: float  # float32's (the search it must agree with, and the re-scoring)
    out_unit: float  # the float16 product's output rounding (relative)

    @classmethod
    def of(cls, rows: torch.Tensor, half: torch.Tensor, block: int = 1 << 16) -> "HalfError":
        """The bound for float32 ``rows`` ``[N, D]`` stored as ``half``, a block at a time."""
        norm32 = norm16 = rounding = 0.0
        for s in range(0, len(rows), block):
            r, h = rows[s:s + block], half[s:s + block].float()  # [b, D]; h - r is exact (Sterbenz)
            norm32 = max(norm32, float(r.norm(dim=1).max()))
            norm16 = max(norm16, float(h.norm(dim=1).max()))
            rounding = max(rounding, float((h - r).norm(dim=1).max()))
        dim = rows.shape[1]
        acc, out = half_arithmetic(dim)
        up = 1 + 2 * _gamma(dim + 2, FP32_UNIT)  # the float32 norms' own rounding, taken upwards
        return cls(norm32 * up, norm16 * up, rounding * up, _gamma(dim + 1, acc), _gamma(dim + 1, FP32_UNIT), out)

    def slack(self, queries: torch.Tensor) -> torch.Tensor:
        """``[Q]`` float64: how far a row's float32 score can lie above the float16 product's unrounded value."""
        q = queries.double()
        q16 = queries.half().double()
        n, n16, moved = q.norm(dim=1), q16.norm(dim=1), (q16 - q).norm(dim=1)
        # both products' accumulation, then the inputs' rounding (Cauchy-Schwarz):
        # |fp16(g).fp16(q) - g.q| <= ||fp16(g) - g|| ||fp16(q)|| + ||g|| ||fp16(q) - q||
        return (self.gamma16 * self.norm16 * n16 + self.gamma32 * self.norm32 * n + self.rounding * n16
                + self.norm32 * moved) * (1 + 1e-9) + FP16_TINY

    def upper(self, half_scores: torch.Tensor, slack: torch.Tensor) -> torch.Tensor:
        """The highest float32 score a row can have whose float16 score is at most ``half_scores`` (``[Q]``)."""
        c = half_scores.double()
        unrounded = torch.where(c >= 0, c / (1 - self.out_unit), c / (1 + self.out_unit)) + FP16_TINY
        return unrounded + slack


HALF_QUERIES = 8  # from this many queries at once the product is compute-bound: float32 rows beat a float16 pass
RESCORE_ROWS = 1 << 15  # float32 rows gathered for re-scoring at once (64 MB at D=512)


def rescored_topk(half: torch.Tensor, rows: torch.Tensor, queries: torch.Tensor, k: int, error: HalfError,
                  kernel: str = "torch", block_scores: int = 1 << 24, first: int = 32
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float32's exact top ``k`` through a float16 pass: the ``k + m`` best rows by ``half`` (``[N, D]`` float16)
    scored again in float32 from ``rows`` (the same rows, ``[N, D]`` float32: only the candidates are read), ``m``
    widened (x4, from ``first``) while the float32 score a left-out row could reach (``error``) is not below the
    k-th best float32 score of the candidates. Holds at most ``block_scores`` float16 scores at once (but always one
    query's ``N``).

    Returns:
        Scores ``[Q, k]`` (float32, descending), gallery indices ``[Q, k]`` (int64), and how many candidates each
        query scored in float32 ``[Q]`` (how far its set had to widen).
    """
    n, nq = len(half), len(queries)
    k = min(k, n)
    best_s, best_i = torch.empty(nq, k), torch.empty(nq, k, dtype=torch.long)
    used = torch.zeros(nq, dtype=torch.long)
    q_block = max(1, min(nq, block_scores // n))
    for qs in range(0, nq, q_block):
        qb = queries[qs:qs + q_block]  # [b, D]
        s16 = torch.from_numpy(scores(half, qb, kernel, raw=True).numpy().astype(np.float32))  # [b, N] float16 values
        slack = error.slack(qb)  # [b]
        todo, c = torch.arange(len(qb)), min(n, k + first)
        while len(todo):
            step = max(1, RESCORE_ROWS // c)
            safe = torch.cat([_rescore(s16, rows, qb, slack, error, t, c, k, best_s, best_i, qs)
                              for t in todo.split(step)])
            used[qs + todo] = c
            todo = todo[~safe] if c < n else todo[:0]  # every row scored: nothing was left out
            c = min(n, 4 * c)
    return best_s, best_i, used


def _rescore(s16: torch.Tensor, rows: torch.Tensor, qb: torch.Tensor, slack: torch.Tensor, error: HalfError,
             t: torch.Tensor, c: int, k: int, best_s: torch.Tensor, best_i: torch.Tensor, offset: int
             ) -> torch.Tensor:
    """Queries ``t`` of the block: their ``c`` best rows by float16 scored in float32, the best ``k`` written to
    ``best_*`` (rows ``offset + t``); True where no row left out can beat the k-th (the set needs no widening)."""
    top = torch.topk(s16 if len(t) == len(s16) else s16[t], c, dim=1)  # [t, c] (one query: no copy of its row)
    index = top.indices.sort(dim=1).values  # [t, c]: in gallery order, so that an exact tie goes to the lower index
    # [t, c, D] float32 read from the caller's rows; numpy's gather, like the conversion in ``rescored_topk``, runs
    # on this thread: a parallel region for a few rows waits for a second thread on a busy machine (10+ ms)
    cand = torch.from_numpy(rows.numpy()[index.reshape(-1).numpy()]).view(len(t), c, -1)
    exact = torch.bmm(cand, qb[t, :, None])[..., 0]  # [t, c]
    win, at = topk(exact, k)  # [t, k]
    best_s[offset + t], best_i[offset + t] = win, torch.gather(index, 1, at)
    return error.upper(top.values[:, -1], slack[t]) < win[:, -1].double()
