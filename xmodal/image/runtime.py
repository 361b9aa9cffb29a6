"""The fastest CPU runtime for a frozen backbone: its ONNX graph in ONNX Runtime, PyTorch as the fallback.

Feature extraction (``xmodal.image.extraction.extract_features``: the feature cache, evaluation on a new catalogue)
runs the frozen backbone forward only, so on CPU it can run the backbone's exported ONNX graph instead of
PyTorch, at a higher throughput, the more so on busy cores (docs/performance.md). The graph
computes the same function: each one is checked against PyTorch on a probe batch whenever it is loaded, to
``TOLERANCE``; the feature cache still keys on the runtime and arithmetic that made the features
(``xmodal.image.feature_cache``), so a cached number always says how it was computed.

- **The graph** is exported (``xmodal.image.onnx_export``) with ``torch.onnx.export`` (the torch.export-based
  exporter, at a fixed batch whose axis is then freed, checked at other batches; the image size fixed) and
  cached as ``$XMODAL_CACHE/onnx/<backbone>_<H>x<W>[_cut<k>]_<key>.onnx``, keyed like the feature cache: backbone,
  ``weights_digest`` of the part that runs, input size and stage cut. With a cut (``tail_blocks`` > 0) the
  graph is ``stem_forward``: the feature map before the last stages. A graph that is damaged (truncated,
  garbled, another key's) is exported again with a warning.
- **Export costs seconds** (docs/performance.md), so
  ``auto`` exports only for jobs big enough to repay it (``export_min_pixels``: about where the seconds the
  graph saves add up to its export, per backbone); a graph already on disk is used for any job.
- **When**: on CPU, when ``onnxruntime`` (and, to export, ``onnxscript``) imports, with float32 weights.
  ``XMODAL_RUNTIME=torch`` forces PyTorch, ``XMODAL_RUNTIME=onnxruntime`` exports whatever the job's
  size. Training and GPUs stay on PyTorch. Any failure to export, load or match falls back to PyTorch with
  a warning: the runtime only ever costs speed, never a result.
"""
from __future__ import annotations

import hashlib
import json
import logging
import operator
import os
import threading
import weakref
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import onnx_export
from .backbones import BACKBONES, normalisation, stem_module, weights_digest
from ..graphcache import GraphCache, cpu_session
from .onnx_export import OPSET, TOLERANCE, _eval, _runnable, relative_error
from ..paths import cache_dir

log = logging.getLogger(__name__)

ENV = "XMODAL_RUNTIME"
RUNTIMES = ("auto", "torch", "onnxruntime")
GRAPH_VERSION = 2  # bump when the export (exporter, opset, graph layout) changes meaning
EXPORT_MIN_PIXELS = 512 * 224 * 168  # auto exports a graph for jobs of at least ~512 images at 224x168
# Backbones whose light eager forward repays the export only later: at 224x168 from JPEGs, MobileNetV3-small
# after about 1,550 images (EfficientNet-Lite0 after about 300).
EXPORT_MIN_IMAGES = {"mobilenet": 1600}
PROBE_SEED = 20240611  # the probe batch: 2 images of uniform random raw pixels (0-255)
_GRAPHS: GraphCache[OrtBackbone] = GraphCache(keep=8)  # loaded sessions by graph file and threads
_LOCK = threading.RLock()  # one loader at a time: two threads never export the same graph at once


def requested_runtime() -> str:
    """``$XMODAL_RUNTIME`` (``auto``, the default; ``torch``; ``onnxruntime``).

    Raises:
        ValueError: another value, naming the choices.
    """
    choice = os.environ.get(ENV, "").strip().lower() or "auto"
    if choice in ("ort", "onnx"):
        choice = "onnxruntime"
    if choice not in RUNTIMES:
        raise ValueError(f"{ENV}={os.environ[ENV]!r} is not a runtime; choose one of {', '.join(RUNTIMES)} "
                         f"(or unset it)")
    return choice


def onnxruntime_version() -> str | None:
    """The installed ``onnxruntime``'s version, or None when it does not import."""
    try:
        import onnxruntime  # lazy: ONNX Runtime, only when a backbone may run in it
    except ImportError:
        return None
    return onnxruntime.__version__


def mean_std(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The normalisation (mean, std) of ``model``'s inputs: its xmodal backbone's, else ImageNet's."""
    name = backbone_name(model)
    if name in BACKBONES:
        return normalisation(name)
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD  # lazy: see backbones._timm
    return tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD)


def backbone_name(model: nn.Module) -> str:
    """xmodal's name of a timm backbone (``efficientnet``), else its timm architecture or class name."""
    arch = (getattr(model, "pretrained_cfg", None) or {}).get("architecture") or type(model).__name__
    return next((name for name, spec in BACKBONES.items() if spec.timm_name == arch), arch)


_DIGESTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> {cut: (tensor versions, digest)}
_TENSORS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> its state_dict's tensors
# module -> {(size, cut, threads): (its tensors' state, the (graph file, threads) select_runtime gave)}
_RECENT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _tensors(model: nn.Module) -> list[torch.Tensor]:
    """``model``'s parameters and buffers, listed once per module (not walked again on every query).

    Changes made in place (``copy_``, ``load_state_dict``, optimiser steps) are seen through the tensors'
    version counters; a tensor replaced by assignment after the first call is not (nothing in xmodal does that
    to a backbone it runs).
    """
    found = _TENSORS.get(model)
    if found is None:
        found = _TENSORS[model] = list(model.state_dict(keep_vars=True).values())
    return found


_VERSION = operator.attrgetter("_version")
_FLOAT32: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> (state, all float32?)


def _state(model: nn.Module) -> tuple:
    """Every tensor's storage address and version counter (``map`` over C methods: several times faster than
    a generator of tuples, and it runs on every image query)."""
    tensors = _tensors(model)
    return tuple(map(torch.Tensor.data_ptr, tensors)), tuple(map(_VERSION, tensors))


def _float32(model: nn.Module) -> bool:
    """Whether every floating-point weight of ``model`` is float32 (remembered while its tensors stay)."""
    state = _state(model)
    hit = _FLOAT32.get(model)
    if hit is None or hit[0] != state:
        ok = all(t.dtype == torch.float32 for t in _tensors(model) if t.is_floating_point())
        _FLOAT32[model] = hit = (state, ok)
    return hit[1]


def _digest(model: nn.Module, tail_blocks: int) -> str:
    """``weights_digest(stem_module(model, tail_blocks))``, remembered while no tensor of ``model`` changes.

    A tensor's storage address and version counter (bumped by every in-place change: ``copy_``,
    ``load_state_dict``, an optimiser step) stand for its bytes, so a single query does not hash the weights
    each time, and a changed weight is never missed.
    """
    state = _state(model)
    memo = _DIGESTS.setdefault(model, {})
    hit = memo.get(tail_blocks)
    if hit is None or hit[0] != state:
        memo[tail_blocks] = hit = (state, weights_digest(stem_module(model, tail_blocks)))
    return hit[1]


def graph_key(model: nn.Module, size: tuple[int, int], tail_blocks: int = 0) -> dict:
    """What a cached graph is keyed on: backbone, weights of the part that runs, input size, stage cut."""
    mean, std = mean_std(model)
    return {"version": GRAPH_VERSION, "opset": OPSET, "backbone": backbone_name(model),
            "weights": _digest(model, tail_blocks), "size": [int(v) for v in size], "tail_blocks": int(tail_blocks),
            "input": {"pixels": "raw 0-255", "mean": list(mean), "std": list(std)}}


def graph_path(key: dict) -> Path:
    """Where the graph of ``key`` is cached: ``$XMODAL_CACHE/onnx/<backbone>_<H>x<W>[_cut<k>]_<hash>.onnx``."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    h, w = key["size"]
    cut = f"_cut{key['tail_blocks']}" if key["tail_blocks"] else ""
    return cache_dir() / "onnx" / f"{key['backbone']}_{h}x{w}{cut}_{digest}.onnx"


def export_graph(model: nn.Module, size: tuple[int, int], tail_blocks: int = 0, key: dict | None = None) -> bytes:
    """The ONNX graph (serialised ``ModelProto``) of the frozen ``model`` on raw ``[B, 3, *size]`` pixels, its
    batch axis dynamic and ``key`` in its metadata: see ``xmodal.image.onnx_export.export_graph``."""
    return onnx_export.export_graph(model, size, tail_blocks, key or graph_key(model, size, tail_blocks))


class OrtBackbone:
    """A frozen backbone's graph in an ONNX Runtime session: pixels ``[B, 3, H, W]`` -> float32 outputs.

    ``raw`` takes raw pixels (uint8 or 0-255 floats: the loader's), ``__call__`` normalised ones (a
    transform's output), converted back to raw with the graph's own ``mean_std``.
    """

    def __init__(self, graph: bytes, path: Path, threads: int):
        self.session, self.key = cpu_session(graph, threads)
        self.path, self.threads = path, threads
        try:
            spec = json.loads(self.key or "{}")["input"]
            self.mean_std = (tuple(spec["mean"]), tuple(spec["std"]))
        except (ValueError, KeyError, TypeError):
            self.mean_std = None  # a graph of another layout: its key check fails on load
        scale = np.asarray(self.mean_std or ((0.0,) * 3, (1 / 255,) * 3), dtype=np.float32) * 255  # [2, 3]
        self._to_raw = scale[1].reshape(1, 3, 1, 1), scale[0].reshape(1, 3, 1, 1)

    def raw(self, pixels: np.ndarray | torch.Tensor) -> np.ndarray:
        """Outputs ``[B, F]`` (or maps ``[B, C, h, w]``), float32, of raw pixels ``[B, 3, H, W]`` (0-255)."""
        if isinstance(pixels, torch.Tensor):
            pixels = pixels.detach().cpu().numpy()
        return self.session.run(None, {"pixels": np.ascontiguousarray(pixels, dtype=np.float32)})[0]

    def __call__(self, pixels: np.ndarray | torch.Tensor) -> np.ndarray:
        """Outputs ``[B, F]`` (or maps ``[B, C, h, w]``), float32, of normalised pixels ``[B, 3, H, W]``."""
        if isinstance(pixels, torch.Tensor):
            pixels = pixels.detach().cpu().numpy()
        std, mean = self._to_raw
        return self.raw(pixels.astype(np.float32) * std + mean)


def probe_error(graph: OrtBackbone, model: nn.Module, size: tuple[int, int], tail_blocks: int = 0) -> float:
    """``relative_error`` of ``graph`` against PyTorch on the probe batch (compared with ``TOLERANCE``):
    raw pixels in, against ``ToTensor`` + ``Normalize``'s arithmetic and the PyTorch module."""
    x = torch.randint(0, 256, (2, 3, *size), generator=torch.Generator().manual_seed(PROBE_SEED))  # [2, 3, H, W]
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in mean_std(model))
    with torch.no_grad(), _eval(model):
        ref = _runnable(model, tail_blocks)(x.float().div(255).sub(mean).div(std)).float().numpy()
    return relative_error(graph.raw(x.to(torch.uint8)), ref)


def _checked(data: bytes, key: dict, path: Path, model: nn.Module, threads: int) -> OrtBackbone:
    """The session of graph ``data``, after checking its key and its outputs against PyTorch; raises if bad."""
    size, cut = tuple(key["size"]), key["tail_blocks"]
    graph = OrtBackbone(data, path, threads)
    if graph.key != json.dumps(key, sort_keys=True):
        raise ValueError(f"it is the graph of another key ({(graph.key or 'none')[:80]}...)")
    err = probe_error(graph, model, size, cut)
    if not err <= TOLERANCE:
        raise ValueError(f"its outputs differ from PyTorch's by {err:.2g} (tolerance {TOLERANCE:g})")
    return graph


def default_threads() -> int:
    """ONNX Runtime's intra-op threads: torch's (one per core unless ``--threads``/``OMP_NUM_THREADS`` say)."""
    return max(1, torch.get_num_threads())


def load_graph(model: nn.Module, size: tuple[int, int], tail_blocks: int = 0, export: bool = True,
               threads: int | None = None) -> OrtBackbone | None:
    """The checked ONNX Runtime session of ``model``'s graph for ``size`` inputs, from the disk cache.

    Args:
        export: export the graph when it is not cached (or is damaged); else return None then.
        threads: intra-op threads (default: ``default_threads()``).

    Returns:
        The session, or None when there is none to be had (not cached and ``export`` False, the export
        failed, or its outputs do not match PyTorch's); failures are logged, never raised.
    """
    with _LOCK:
        return _load_graph(model, size, tail_blocks, export, threads or default_threads())


def _load_graph(model: nn.Module, size: tuple[int, int], tail_blocks: int, export: bool, threads: int
                ) -> OrtBackbone | None:
    key = graph_key(model, size, tail_blocks)
    path = graph_path(key)
    return _GRAPHS.get(path, threads, lambda data: _checked(data, key, path, model, threads),
                       (lambda: export_graph(model, size, tail_blocks, key)) if export else None, key["backbone"])


def clear_sessions() -> None:
    """Forget the sessions loaded, and the exports failed, in this process (the next call reads, and checks,
    the disk cache)."""
    _GRAPHS.clear()


def export_min_pixels(model: nn.Module) -> int:
    """The pixels (images x height x width) a job needs before ``auto`` exports ``model``'s graph for it."""
    images = EXPORT_MIN_IMAGES.get(backbone_name(model))
    return EXPORT_MIN_PIXELS if images is None else images * 224 * 168


def select_runtime(model: nn.Module, device: torch.device, size: tuple[int, int], tail_blocks: int = 0,
                   images: int = 0, threads: int | None = None) -> OrtBackbone | None:
    """The ONNX Runtime session to run ``model`` with, or None for PyTorch.

    ONNX Runtime on CPU when it imports and the weights are float32, unless ``XMODAL_RUNTIME=torch``. A
    graph not yet cached is exported when ``XMODAL_RUNTIME=onnxruntime`` or the job (``images`` of ``size``)
    has at least ``export_min_pixels(model)`` pixels; smaller jobs use PyTorch rather than wait for an export.
    ``threads``: the session's intra-op threads (default ``default_threads()``; 1 for callers that run one
    session from a thread per core).
    """
    choice = requested_runtime()
    if choice == "torch" or device.type != "cpu":
        return None
    if onnxruntime_version() is None:
        if choice == "onnxruntime":
            log.warning("%s=onnxruntime but onnxruntime does not import; using PyTorch "
                        "(pip install onnxruntime onnxscript)", ENV)
        return None
    threads = threads or default_threads()
    state = _state(model)
    recent = _RECENT.setdefault(model, {})
    hit = recent.get((size, tail_blocks, threads))
    if hit is not None and hit[0] == state and (graph := _GRAPHS.loaded(*hit[1])) is not None:  # same weights
        return graph  # skips the float32 check and the key's digest, json and hash
    if not _float32(model):
        return None
    export = choice == "onnxruntime" or images * size[0] * size[1] >= export_min_pixels(model)
    graph = load_graph(model, size, tail_blocks, export=export, threads=threads)
    if graph is not None:
        recent[(size, tail_blocks, threads)] = (state, (str(graph.path), threads))
    return graph


def backbone_features(model: nn.Module, pixels: torch.Tensor, tail_blocks: int = 0, transform=None) -> torch.Tensor:
    """Frozen-backbone outputs of ``pixels`` ``[B, 3, H, W]`` (CPU): pooled features ``[B, F]``, or with
    ``tail_blocks`` the maps ``[B, C, h, w]``, both float32, through ``select_runtime``'s choice.

    ``pixels`` are normalised, or, with ``transform`` (a ``backbones.ImageTransform``), its uint8
    ``to_uint8`` output, which a graph takes as it is. For single queries (uploads, ``search_image``): a
    graph is used when cached, not exported for them.
    """
    graph = select_runtime(model, pixels.device, tuple(pixels.shape[-2:]), tail_blocks, len(pixels))
    if graph is not None and transform is not None and graph.mean_std == transform.mean_std:
        return torch.from_numpy(graph.raw(pixels))
    if transform is not None:
        pixels = transform.normalise(pixels)
    if graph is not None:
        return torch.from_numpy(graph(pixels))
    with torch.no_grad(), _eval(model):
        return _runnable(model, tail_blocks)(pixels).float()
