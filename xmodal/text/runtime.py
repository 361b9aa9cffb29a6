"""The text tower in ONNX Runtime on CPU, PyTorch as the fallback.

Every text search runs the model's text tower (``encode_text``: the word embedding, then the BiLSTM and its
projection for the dual encoders, the mean word vector and its MLP for the others) on one query. PyTorch spends
most of that time in per-operator dispatch; the same graph in ONNX Runtime takes a fraction of it, and batches of
captions take no longer (docs/performance.md, "The text tower through ONNX Runtime"). The graph computes the same
function: it is checked against PyTorch on a probe batch whenever it is loaded, to ``TOLERANCE``.

- **Which models**: those whose weights are fixed, marked by ``fixed_weights`` (``load_model`` marks a saved run's
  model). A model in training changes its weights every step: an export per evaluation would cost more than it
  saves and fill the cache, so its text tower stays in PyTorch. A marked model whose weights are then changed in
  place (``load_state_dict``, ``copy_``) is keyed again, never served a stale graph.
- **The graph** (``xmodal.text.onnx_export``) takes token ids ``[B, L]`` (int64, 0 pads), both axes free, and gives
  ``encode_text``'s unit vectors ``[B, D]``. It is cached as ``$XMODAL_CACHE/onnx/text_<Model>_<hash>.onnx``,
  keyed on the model's class and the digest of its weights outside the image backbone, written atomically; a
  damaged file (truncated, garbled, another key's) is exported again with a warning.
- **When**: on CPU, when ``onnxruntime`` imports, with float32 weights. ``XMODAL_RUNTIME`` is the image tower's
  switch: ``torch`` forces PyTorch; ``auto`` and ``onnxruntime`` both export on first use (a fraction of a
  second). Any failure to export, load or match falls back to PyTorch with a warning: the runtime only ever
  costs speed, never a result.
"""
from __future__ import annotations

import hashlib
import json
import logging
import operator
import threading
import weakref
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..graphcache import GraphCache, cpu_session
from ..image.onnx_export import TOLERANCE, _eval, relative_error
from ..image.runtime import ENV, default_threads, onnxruntime_version, requested_runtime
from ..paths import cache_dir
from . import onnx_export
from .onnx_export import OPSET, probe_tokens

log = logging.getLogger(__name__)

GRAPH_VERSION = 1  # bump when the export (exporter, opset, inputs) changes meaning
_FIXED: weakref.WeakSet = weakref.WeakSet()  # models whose weights are fixed: their text tower may be exported
_TENSORS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> [(name, tensor)] outside the backbone
_DIGESTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> (tensors' state, digest, float32?)
_RECENT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {threads: (state, (graph file, threads))}
_GRAPHS: GraphCache[OrtText] = GraphCache(keep=8)  # loaded sessions by graph file and threads
_LOCK = threading.RLock()  # one loader at a time: two threads never export the same graph at once
_VERSION = operator.attrgetter("_version")


def fixed_weights(model: nn.Module) -> nn.Module:
    """Mark ``model``'s weights as fixed (a saved run's, loaded for search or evaluation): on CPU its text tower
    may then run in ONNX Runtime. Returns ``model``."""
    _FIXED.add(model)
    return model


def _tensors(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """``model``'s parameters and buffers outside the image backbone (what ``encode_text`` can read), listed once
    per module; in-place changes are seen through the tensors' version counters."""
    found = _TENSORS.get(model)
    if found is None:
        found = _TENSORS[model] = [(name, t) for name, t in model.state_dict(keep_vars=True).items()
                                   if not name.startswith("backbone.")]
    return found


def _state(model: nn.Module) -> tuple:
    """Every text-side tensor's storage address and version counter: what stands for their bytes between calls."""
    tensors = [t for _, t in _tensors(model)]
    return tuple(map(torch.Tensor.data_ptr, tensors)), tuple(map(_VERSION, tensors))


def _digest(model: nn.Module) -> tuple[str, bool]:
    """sha256 of the text-side tensors (name, shape, dtype, bytes) and whether all floating ones are float32,
    remembered while none of them changes (a query does not hash the weights each time)."""
    state = _state(model)
    hit = _DIGESTS.get(model)
    if hit is None or hit[0] != state:
        h = hashlib.sha256()
        for name, t in _tensors(model):
            t = t.detach().to("cpu").contiguous()
            h.update(f"{name}|{tuple(t.shape)}|{t.dtype}\n".encode())
            h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
        float32 = all(t.dtype == torch.float32 for _, t in _tensors(model) if t.is_floating_point())
        _DIGESTS[model] = hit = (state, h.hexdigest(), float32)
    return hit[1], hit[2]


def graph_key(model: nn.Module) -> dict:
    """What a cached text graph is keyed on: the model's class and its weights outside the backbone."""
    return {"version": GRAPH_VERSION, "opset": OPSET, "model": type(model).__name__, "weights": _digest(model)[0],
            "input": "token ids [B, L] int64, 0 pads", "output": "encode_text [B, D] float32"}


def graph_path(key: dict) -> Path:
    """Where the graph of ``key`` is cached: ``$XMODAL_CACHE/onnx/text_<Model>_<hash>.onnx``."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return cache_dir() / "onnx" / f"text_{key['model']}_{digest}.onnx"


def export_graph(model: nn.Module, key: dict | None = None) -> bytes:
    """The ONNX graph (serialised ``ModelProto``) of ``model.encode_text``: see ``xmodal.text.onnx_export``."""
    return onnx_export.export_graph(model, key or graph_key(model))


class OrtText:
    """A text tower's graph in an ONNX Runtime session: token ids ``[B, L]`` -> unit vectors ``[B, D]`` float32."""

    def __init__(self, graph: bytes, path: Path, threads: int):
        self.session, self.key = cpu_session(graph, threads)
        self.path, self.threads = path, threads

    def __call__(self, tokens: np.ndarray | torch.Tensor) -> np.ndarray:
        """Unit vectors ``[B, D]`` of token ids ``[B, L]``."""
        if isinstance(tokens, torch.Tensor):
            tokens = tokens.detach().cpu().numpy()
        return self.session.run(None, {"tokens": np.ascontiguousarray(tokens, dtype=np.int64)})[0]


def probe_error(graph: OrtText, model: nn.Module) -> float:
    """The largest ``relative_error`` of ``graph`` against ``model.encode_text`` over the probe batches (a single
    query, and captions of several lengths with padding); compared with ``TOLERANCE``."""
    errors = []
    for tokens in probe_tokens(model.word_embed.num_embeddings):
        with torch.no_grad(), _eval(model):
            ref = model.encode_text(tokens).float().numpy()  # [B, D]
        errors.append(relative_error(graph(tokens), ref))
    return max(errors)


def _checked(data: bytes, key: dict, path: Path, model: nn.Module, threads: int) -> OrtText:
    """The session of graph ``data``, after checking its key and its outputs against PyTorch; raises if bad."""
    graph = OrtText(data, path, threads)
    if graph.key != json.dumps(key, sort_keys=True):
        raise ValueError(f"it is the graph of another key ({(graph.key or 'none')[:80]}...)")
    err = probe_error(graph, model)
    if not err <= TOLERANCE:
        raise ValueError(f"its outputs differ from PyTorch's by {err:.2g} (tolerance {TOLERANCE:g})")
    return graph


def load_graph(model: nn.Module, export: bool = True, threads: int | None = None) -> OrtText | None:
    """The checked ONNX Runtime session of ``model``'s text graph, from the disk cache (exported when missing or
    damaged, if ``export``); None when there is none to be had (failures are logged, never raised)."""
    with _LOCK:
        return _load_graph(model, export, threads or default_threads())


def _load_graph(model: nn.Module, export: bool, threads: int) -> OrtText | None:
    key = graph_key(model)
    path = graph_path(key)
    return _GRAPHS.get(path, threads, lambda data: _checked(data, key, path, model, threads),
                       (lambda: export_graph(model, key)) if export else None, f"the text tower of {key['model']}")


def clear_sessions() -> None:
    """Forget the sessions loaded, and the exports failed, in this process (the next call reads, and checks,
    the disk cache)."""
    with _LOCK:
        _GRAPHS.clear()


def select_runtime(model: nn.Module, device: torch.device, threads: int | None = None) -> OrtText | None:
    """The ONNX Runtime session to run ``model``'s text tower with, or None for PyTorch.

    ONNX Runtime on CPU for a model marked by ``fixed_weights`` whose weights are float32, when ``onnxruntime``
    imports, unless ``XMODAL_RUNTIME=torch``. ``threads``: the session's intra-op threads (default
    ``default_threads()``).
    """
    choice = requested_runtime()
    if choice == "torch" or device.type != "cpu" or model not in _FIXED:
        return None
    if onnxruntime_version() is None:
        if choice == "onnxruntime":
            log.warning("%s=onnxruntime but onnxruntime does not import; the text tower runs in PyTorch "
                        "(pip install onnxruntime)", ENV)
        return None
    threads = threads or default_threads()
    state = _state(model)
    recent = _RECENT.setdefault(model, {})
    hit = recent.get(threads)
    if hit is not None and hit[0] == state and (graph := _GRAPHS.loaded(*hit[1])) is not None:  # same weights
        return graph  # skips the key's digest, json and hash
    if not _digest(model)[1]:
        return None
    graph = load_graph(model, threads=threads)
    if graph is not None:
        recent[threads] = (state, (str(graph.path), threads))
    return graph


def text_encoder(model: nn.Module, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model.encode_text`` (token ids ``[B, L]`` -> ``[B, D]``) through ``select_runtime``'s choice."""
    graph = select_runtime(model, device)
    if graph is None:
        return model.encode_text
    return lambda tokens: torch.from_numpy(graph(tokens))  # [B, D] float32
