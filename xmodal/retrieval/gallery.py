"""Top-k search over a gallery of unit vectors: exact for small galleries, a faiss IVF index for large ones.

``Gallery.build(embeds)`` picks the method from the gallery's size (``GalleryConfig.faiss_above``):

- ``exact``: one matrix product and ``torch.topk``, in blocks so that at most ``block_scores`` scores
  are held at once. A single query costs one pass over the gallery, i.e. it runs at memory bandwidth.
  ``precision="fp16"`` stores float16 rows (half the bytes per query) and a reference to the caller's float32 rows
  (its tensor or a memory map, never a copy) that a proven candidate set is re-scored from: float32's top k and
  scores (``kernels.rescored_topk``; a batch of ``kernels.HALF_QUERIES`` or more reads the float32 rows). Without
  float32 rows (float64 given, say) it is plain float16: near-ties at rank k may swap (``Gallery.rescored``).
  The default, ``auto``, takes fp16 from ``kernels.HALF_ABOVE`` rows when it can re-score, else fp32.
- ``faiss``: ``IndexIVFFlat`` with inner product. The coarse quantizer (spherical k-means, about
  ``2 * sqrt(N)`` lists) is trained on a sample, the vectors are stored uncompressed, and ``nprobe``
  (lists scanned per query) is calibrated at build time: the smallest power of two whose recall@10
  against exact search reaches ``target_recall`` on calibration queries. Those must be real queries: a
  run's text queries sit off its image gallery (the modality gap) and need more lists than gallery rows
  plus noise (an index calibrated on those promises a recall that text queries do not get), so
  ``xmodal.retrieval.run.Run`` calibrates each gallery on the other modality's embeddings of the catalogue;
  without queries, gallery rows plus noise stand in. The index is cached on disk
  (one ``.npz`` file, written atomically) and reused while the embeddings are byte-identical; a damaged
  file (truncated, failing its CRC-32, not fitting the embeddings) is rebuilt with a warning.

An index's recall@10 is what calibration measured on its queries (``info["calibration_recall@10"]``), for
queries like them; build and query times are in docs/performance.md.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..cachefile import warn_rebuild, write_cache
from . import kernels

log = logging.getLogger(__name__)

KINDS = ("auto", "exact", "faiss")
CACHE_VERSION = 1


@dataclass
class GalleryConfig:
    """How a gallery is searched."""

    faiss_above: int = 50_000  # kind="auto": galleries with more items than this get a faiss index
    nlist: int | None = None  # IVF lists; None: 2 * sqrt(N), at most N / 8 (about 2000 at 1M items)
    train_per_list: int = 32  # k-means training sample: this many rows per list (capped at N)
    kmeans_iters: int = 10  # k-means iterations for the IVF quantizer
    nprobe: int | None = None  # lists scanned per query; None: calibrated at build time
    target_recall: float = 0.97  # recall@10 vs exact that calibration asks for (0.95 plus a margin)
    calibration_queries: int = 256  # queries used to calibrate nprobe (and to report the recall)
    calibration_noise: float = 1.0  # without real calibration queries: gallery rows plus noise of this norm
    block_scores: int = 1 << 24  # exact search: at most this many scores in memory at once (64 MiB)
    precision: str = "auto"  # exact search's rows: fp32, fp16 (half the bytes read; see above), auto (fp16 if exact)
    kernel: str = "auto"  # exact search's product: auto (the fastest measured at build), torch, numpy[:chunked]
    threads: int | None = None  # faiss threads for builds and batches; None: torch.get_num_threads()
    seed: int = 0  # training sample, k-means and calibration queries


def _as_matrix(x: torch.Tensor | np.ndarray, what: str) -> torch.Tensor:
    """``x`` as a contiguous float32 CPU tensor ``[n, D]`` (a vector becomes one row)."""
    if isinstance(x, torch.Tensor) and x.dtype == torch.float32 and x.ndim == 2 and x.device.type == "cpu" \
            and not x.requires_grad and x.is_contiguous():
        return x  # already what the calls below would return: a query skips their no-op conversions
    with warnings.catch_warnings():  # a read-only memory map: searched, never written
        warnings.filterwarnings("ignore", "The given NumPy array is not writable")
        t = torch.as_tensor(x)
    if t.ndim == 1:
        t = t.unsqueeze(0)
    if t.ndim != 2:
        raise ValueError(f"{what} must be [n, D] (or [D]); got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise ValueError(f"{what} must be floating point; got {t.dtype}")
    return t.detach().to("cpu", torch.float32).contiguous()


def exact_topk(gallery: torch.Tensor, queries: torch.Tensor, k: int, block_scores: int = 1 << 24,
               kernel: str = "torch") -> tuple[torch.Tensor, torch.Tensor]:
    """Exact inner-product top-``k`` (brute force), holding at most ``block_scores`` scores at once; the products
    by ``kernel`` (``xmodal.retrieval.kernels``; a float16 ``gallery`` is searched in half precision, as is, without
    re-scoring); an exact tie goes to the lower gallery index (``kernels.topk``).

    Returns:
        Scores ``[Q, k]`` (descending) and gallery indices ``[Q, k]`` (int64), ``k`` capped at ``N``.
    """
    n, q = gallery.shape[0], queries.shape[0]
    k = min(k, n)
    q_block = max(1, min(q, block_scores // max(k, 1024)))
    g_block = max(k, block_scores // q_block)
    if 0 < q <= q_block and n <= g_block:  # one block (a single query below 16M items): no merging to do
        return kernels.topk(kernels.scores(gallery, queries, kernel), k)
    out_s, out_i = [], []
    for qs in range(0, q, q_block):
        qb = queries[qs:qs + q_block]  # [b, D]
        best_s = best_i = None
        for gs in range(0, n, g_block):
            scores = kernels.scores(gallery[gs:gs + g_block], qb, kernel)  # [b, g]
            cand_s, cand_i = kernels.topk(scores, min(k, scores.shape[1]))
            cand_i = cand_i + gs
            if best_s is not None:  # earlier blocks' columns first: a tie still goes to the lower index
                cand_s, cand_i = torch.cat([best_s, cand_s], 1), torch.cat([best_i, cand_i], 1)
                cand_i, perm = cand_i.sort(dim=1)
                cand_s, at = kernels.topk(cand_s.gather(1, perm), k)
                cand_i = torch.gather(cand_i, 1, at)
            best_s, best_i = cand_s, cand_i
        out_s.append(best_s)
        out_i.append(best_i)
    if not out_s:
        return torch.zeros(0, k), torch.zeros(0, k, dtype=torch.long)
    return torch.cat(out_s), torch.cat(out_i)


def recall_at_k(found: torch.Tensor | np.ndarray, truth: torch.Tensor | np.ndarray) -> float:
    """Mean share of each row of ``truth`` (exact top-k indices) that ``found`` contains."""
    found, truth = np.asarray(found), np.asarray(truth)
    if len(truth) == 0:
        return 1.0
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / len(t) for f, t in zip(found, truth)]))


def fingerprint(embeds: torch.Tensor) -> str:
    """Content hash of an embedding matrix (shape and bytes)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(str(tuple(embeds.shape)).encode())
    h.update(memoryview(embeds.numpy()).cast("B"))  # no copy
    return h.hexdigest()


def _import_faiss():
    try:
        import faiss  # lazy: faiss, only for a gallery that gets an index
    except ImportError as err:
        raise ImportError("kind='faiss' needs the faiss-cpu package: pip install faiss-cpu "
                          "(or use kind='exact')") from err
    return faiss


class _FaissThreads:
    """Set faiss's OpenMP thread count for a block, then restore it."""

    def __init__(self, n: int):
        self.n = n

    def __enter__(self):
        faiss = _import_faiss()
        self.prev = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(self.n)

    def __exit__(self, *exc):
        _import_faiss().omp_set_num_threads(self.prev)


class Gallery:
    """A searchable set of unit vectors ``[N, D]``; build it with ``Gallery.build``."""

    def __init__(self, embeds: torch.Tensor, kind: str, cfg: GalleryConfig, index=None,
                 info: dict | None = None, rows: torch.Tensor | None = None, error: kernels.HalfError | None = None):
        self.embeds = embeds  # [N, D] float32 (float16 for an fp16 exact gallery): exact search, IVF misses
        self.rows = rows  # [N, D] float32: the caller's own rows an fp16 gallery re-scores from (a reference)
        self.error = error  # what bounds the fp16 scores' distance from float32's (with ``rows``)
        self.kind = kind  # "exact" or "faiss"
        self.cfg = cfg
        self.index = index  # faiss.IndexIVFFlat when kind == "faiss"
        self.info = info or {}  # how it was built: nlist, nprobe, calibration recall, seconds, cache, kernel
        self.kernel = "torch"  # exact search's product (``_build_exact`` measures the fastest)

    def __len__(self) -> int:
        return self.embeds.shape[0]

    @property
    def rescored(self) -> bool:
        """Whether exact search returns float32's exact top k and scores (always but for an fp16 gallery built
        without float32 rows to re-score from: then near-ties at rank k may swap)."""
        return self.kind != "exact" or self.embeds.dtype == torch.float32 or self.rows is not None

    @property
    def dim(self) -> int:
        """The embedding width D of the gallery's ``[N, D]`` vectors."""
        return self.embeds.shape[1]

    @classmethod
    def build(cls, embeds: torch.Tensor | np.ndarray, kind: str = "auto", cache_path: str | os.PathLike | None = None,
              cfg: GalleryConfig | None = None,
              calibration_queries: torch.Tensor | np.ndarray | Callable[[], torch.Tensor] | None = None
              ) -> "Gallery":
        """A gallery over ``embeds`` (L2-normalised rows, ``[N, D]``).

        Args:
            embeds: the gallery vectors; scores are inner products, i.e. cosine similarities.
            kind: ``exact``, ``faiss``, or ``auto`` (faiss above ``cfg.faiss_above`` items).
            cache_path: where a faiss index is stored and reused (``.npz``); ignored for exact search.
            cfg: search settings (defaults: ``GalleryConfig()``).
            calibration_queries: real queries ``[Q, D]`` (e.g. the other modality's embeddings) to
                calibrate ``nprobe`` on, or a function returning them (called only when a faiss index is
                built or looked up: an exact gallery needs none); by default, gallery rows plus noise,
                which promise too much for queries that sit off the gallery.

        Raises:
            ValueError: bad kind, empty or non-normalised embeddings.
        """
        cfg = cfg or GalleryConfig()
        if kind not in KINDS:
            raise ValueError(f"unknown gallery kind {kind!r}; choose one of {KINDS}")
        x = _as_matrix(embeds, "gallery embeddings")
        if x.shape[0] == 0:
            raise ValueError("the gallery is empty: nothing to search")
        norms = x[:: max(1, x.shape[0] // 4096)].norm(dim=1)
        if not torch.isfinite(norms).all() or (norms - 1).abs().max() > 1e-3:
            raise ValueError(f"gallery rows must be L2-normalised (norms {float(norms.min()):.4f}.."
                             f"{float(norms.max()):.4f}); apply torch.nn.functional.normalize(x, dim=-1) first")
        if kind == "auto":
            kind = "faiss" if x.shape[0] > cfg.faiss_above else "exact"
            if kind == "faiss":
                try:
                    _import_faiss()
                except ImportError as err:
                    log.warning("%s; searching %d items exactly instead", err, x.shape[0])
                    kind = "exact"
        if kind == "exact":
            return cls._build_exact(x, cfg, kernels.borrowed(embeds, x))
        calib = calibration_queries() if callable(calibration_queries) else calibration_queries
        return cls._build_faiss(x, cfg, Path(cache_path) if cache_path else None, calib)

    @classmethod
    def _build_exact(cls, x: torch.Tensor, cfg: GalleryConfig, borrowed: str | None) -> "Gallery":
        precision = kernels.resolve(cfg.precision, len(x), borrowed)
        stored = kernels.store(x, precision)
        kernel, timings = kernels.choose(stored) if cfg.kernel == "auto" else (cfg.kernel, {})
        info = {"kind": "exact", "n": x.shape[0], "precision": precision, "kernel": kernel, "kernel_ms": timings}
        rows = error = None
        if stored.dtype == torch.float16:
            if borrowed is not None:  # a reference, never a copy: the float32 rows cost this gallery no memory
                rows, error = x, kernels.HalfError.of(x, stored)
            else:
                log.info("fp16 gallery without float32 rows of the caller's to re-score from: its top k may swap "
                         "near-ties at rank k (pass float32 rows, e.g. np.load(path, mmap_mode='r'), to make it exact)")
            info["rescored_from"] = borrowed  # None: plain float16, near-ties may swap
        gallery = cls(stored, "exact", cfg, info=info, rows=rows, error=error)
        gallery.kernel = kernel
        return gallery

    @classmethod
    def _build_faiss(cls, x: torch.Tensor, cfg: GalleryConfig, cache: Path | None, calib) -> "Gallery":
        faiss = _import_faiss()
        n, d = x.shape
        nlist = cfg.nlist or max(1, min(int(round(2 * math.sqrt(n))), n // 8))
        if nlist > n:
            raise ValueError(f"nlist={nlist} is more than the {n} gallery items; lower GalleryConfig.nlist")
        settings = {k: v for k, v in asdict(cfg).items() if k not in ("faiss_above", "block_scores", "threads",
                                                                          "precision", "kernel")}
        key = hashlib.blake2b(json.dumps({"v": CACHE_VERSION, "data": fingerprint(x), "nlist": nlist,
                                          "settings": settings, "calib": None if calib is None else
                                          fingerprint(_as_matrix(calib, "calibration queries"))},
                                         sort_keys=True).encode(), digest_size=16).hexdigest()
        if cache is not None and cache.is_file():
            try:
                found = cls._load(cache, x, cfg, key, nlist)
            except Exception as err:  # any damage: the index is built again below
                warn_rebuild(cache, err)
            else:
                if found is not None:
                    return found
                log.info("gallery index %s was built for other embeddings or settings; rebuilding it", cache)
        threads = cfg.threads or torch.get_num_threads()
        rng = np.random.default_rng(cfg.seed)
        t0 = time.perf_counter()
        with _FaissThreads(threads):
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
            index.cp.niter = cfg.kmeans_iters
            index.cp.seed = cfg.seed
            index.cp.spherical = True  # unit-norm centroids for inner product
            index.cp.min_points_per_centroid = 1  # the sample size is chosen here, not by faiss
            index.cp.max_points_per_centroid = max(cfg.train_per_list, 1)
            sample = np.sort(rng.choice(n, min(n, max(nlist, cfg.train_per_list * nlist)), replace=False))
            index.train(x.numpy()[sample])
            train_s = time.perf_counter() - t0
            index.add(x.numpy())
        build_s = time.perf_counter() - t0
        gallery = cls(x, "faiss", cfg, index)
        nprobe, recall = gallery._calibrate(calib, rng)
        index.nprobe = nprobe
        calibrate_s = time.perf_counter() - t0 - build_s
        gallery.info = {"kind": "faiss", "key": key, "n": n, "dim": d, "nlist": nlist, "nprobe": nprobe,
                        "calibration_recall@10": recall, "calibrated_on": "gallery rows plus noise" if calib is None
                        else f"{min(len(calib), cfg.calibration_queries)} given queries", "train_s": round(train_s, 2),
                        "build_s": round(build_s, 2), "calibrate_s": round(calibrate_s, 2), "from_cache": False}
        if cache is not None:
            t = time.perf_counter()
            gallery._save(cache)
            gallery.info["save_s"] = round(time.perf_counter() - t, 2)
        return gallery

    def _calibrate(self, calib, rng: np.random.Generator) -> tuple[int, float]:
        """(nprobe, recall@10): the fixed ``cfg.nprobe``, or the smallest power of two reaching the target."""
        n = len(self)
        if calib is None:
            rows = self.embeds[torch.as_tensor(rng.choice(n, min(n, self.cfg.calibration_queries), replace=False))]
            noise = torch.from_numpy(rng.standard_normal(rows.shape, dtype=np.float32)) / math.sqrt(self.dim)
            queries = torch.nn.functional.normalize(rows + self.cfg.calibration_noise * noise, dim=-1)
        else:
            queries = _as_matrix(calib, "calibration queries")
            if queries.shape[1] != self.dim:
                raise ValueError(f"calibration queries have {queries.shape[1]} dims, the gallery {self.dim}")
            pick = rng.choice(len(queries), min(len(queries), self.cfg.calibration_queries), replace=False)
            queries = queries[torch.as_tensor(pick)]
        k = min(10, n)
        _, truth = exact_topk(self.embeds, queries, k, self.cfg.block_scores)
        ladder = [self.cfg.nprobe] if self.cfg.nprobe else \
            sorted({min(2 ** i, self.index.nlist) for i in range(int(math.log2(self.index.nlist)) + 2)})
        recall = 0.0
        for nprobe in ladder:
            self.index.nprobe = nprobe
            _, found = self._faiss_search(queries, k)
            recall = recall_at_k(found, truth)
            if recall >= self.cfg.target_recall:
                break
        return nprobe, recall

    @classmethod
    def _load(cls, path: Path, x: torch.Tensor, cfg: GalleryConfig, key: str, nlist: int) -> "Gallery | None":
        """The index cached at ``path`` if it was built for ``key``; None if for another one.

        Raises:
            Exception: the file is damaged (unreadable, a member failing its CRC-32, an index that does
                not fit ``x``).
        """
        faiss = _import_faiss()
        with np.load(path, allow_pickle=False) as f:
            meta = json.loads(str(f["meta"]))
            if meta.get("key") != key:
                return None
            blob = f["index"]  # reading the whole member checks its CRC-32
        index = faiss.deserialize_index(blob)
        n, d = x.shape
        if (index.ntotal, index.d, getattr(index, "nlist", None)) != (n, d, nlist):
            raise ValueError(f"it indexes {index.ntotal} x {index.d} vectors in {getattr(index, 'nlist', None)} "
                             f"lists, expected {n} x {d} in {nlist}")
        nprobe = meta.get("nprobe")
        if not isinstance(nprobe, int) or not 1 <= nprobe <= nlist:
            raise ValueError(f"its nprobe {nprobe!r} is not in 1..{nlist}")
        index.nprobe = nprobe
        return cls(x, "faiss", cfg, index, {**meta, "from_cache": True})

    def _save(self, path: Path) -> bool:
        """Write the index and its description to ``path`` atomically; False (with a warning) when the
        disk refuses it (the index in memory is used all the same)."""
        blob = _import_faiss().serialize_index(self.index)
        return write_cache(path, lambda f: np.savez(f, index=blob, meta=np.array(json.dumps(self.info))))

    def _faiss_search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        # One query runs on one thread (faiss parallelises over queries; more threads only add overhead).
        threads = 1 if len(queries) < 4 else (self.cfg.threads or torch.get_num_threads())
        with _FaissThreads(threads):
            scores, idx = self.index.search(queries.numpy(), k)
        short = (idx < 0).any(1)  # the probed lists held fewer than k items: answer those rows exactly
        scores, idx = torch.from_numpy(scores), torch.from_numpy(idx)
        if short.any():  # checked in numpy: torch's two reductions are a visible share of a fast query
            rows = torch.from_numpy(short)
            scores[rows], idx[rows] = exact_topk(self.embeds, queries[rows], k, self.cfg.block_scores)
        return scores, idx

    def search(self, queries: torch.Tensor | np.ndarray, k: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` best gallery items for each query (inner product, highest first).

        Args:
            queries: ``[Q, D]`` (or one ``[D]`` vector, treated as ``Q = 1``), L2-normalised.
            k: results per query; more than the gallery holds returns all of it.

        Returns:
            Scores ``[Q, min(k, N)]`` (float32) and gallery indices ``[Q, min(k, N)]`` (int64).
        """
        if k < 1:
            raise ValueError(f"k must be at least 1; got {k}")
        q = _as_matrix(queries, "queries")
        if q.shape[1] != self.dim:
            raise ValueError(f"queries have {q.shape[1]} dims but the gallery has {self.dim}; "
                             "embed them with the same model")
        k = min(k, len(self))
        if self.kind == "exact":
            if self.rows is not None and len(q) >= kernels.HALF_QUERIES:  # a batch is compute-bound: float32
                return exact_topk(self.rows, q, k, self.cfg.block_scores)
            if self.rows is not None:  # fp16 pass, float32 re-scoring of a proven candidate set
                return kernels.rescored_topk(self.embeds, self.rows, q, k, self.error, self.kernel,
                                             self.cfg.block_scores)[:2]
            return exact_topk(self.embeds, q, k, self.cfg.block_scores, self.kernel)
        return self._faiss_search(q, k)

    def __repr__(self) -> str:
        extra = f", nlist={self.info.get('nlist')}, nprobe={self.info.get('nprobe')}" if self.kind == "faiss" else ""
        return f"Gallery(kind={self.kind!r}, n={len(self)}, dim={self.dim}{extra})"
