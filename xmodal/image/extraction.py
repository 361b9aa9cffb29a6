"""Frozen-backbone feature extraction: image files -> pooled features (or stage-cut maps) in the fastest runtime.

The feature cache (``xmodal.image.feature_cache``), evaluation on a new catalogue and the bench call
``extract_features``. It sits above the backbone adapter (``xmodal.image.backbones``: models, preprocessing) and the
runtime choice (``xmodal.image.runtime.select_runtime``: the backbone's ONNX graph in ONNX Runtime on CPU, else
PyTorch), and wires them to the decoding lanes of ``xmodal.image.batching``.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from .backbones import ImageFiles, ImageTransform, loader_workers, stem_forward
from .batching import decoded_batches, ordered_map
from ..data.images import open_rgb
from .runtime import select_runtime


def one_thread() -> None:
    """Run this thread's torch operations on one thread (OpenMP keeps the count per thread)."""
    torch.set_num_threads(1)


LANE_BATCH = 8  # images per batch of a lane (4 to 32 run about as fast; 8 keeps 2 lanes busy)


def lanes_for(images: int) -> int:
    """Lanes of ``extract_features`` on CPU for ``images``: one per core torch uses, when there are at least
    two batches per lane (else one lane, a session using every core)."""
    cores = max(1, torch.get_num_threads())
    return cores if cores > 1 and images >= 2 * LANE_BATCH * cores else 1


ORT_FP32 = "onnxruntime fp32"  # the arithmetic of a backbone's ONNX graph in ONNX Runtime (CPU)


def torch_arithmetic(device: torch.device) -> str:
    """The arithmetic of ``extract_features``' PyTorch forward on ``device``: bf16 autocast on CUDA, else fp32."""
    return "torch bf16 autocast (cuda)" if device.type == "cuda" else "torch fp32"


@torch.no_grad()
def extract_features(model: nn.Module, paths: list[Path], transform, device: torch.device,
                     batch_size: int = 64, progress: bool = True, tail_blocks: int = 0,
                     used: list[str] | None = None, flip: bool = False) -> np.ndarray:
    """Pooled backbone features ``[N, F]`` (float32) of the images at ``paths``.

    With ``flip``: of the images' horizontal mirrors (flip test-time augmentation), mirrored after the resize.

    With ``tail_blocks`` > 0: the feature maps before the last ``tail_blocks`` stages ``[N, C, h, w]``
    (float16), for models that tune those stages on cached maps. ``used``, if given, receives the arithmetic
    that ran (``ORT_FP32`` or ``torch_arithmetic(device)``): the feature cache keys on it.

    On CPU the backbone runs in the fastest runtime available (``xmodal.image.runtime.select_runtime``: its ONNX
    graph in ONNX Runtime, equal to PyTorch's outputs within ``xmodal.image.runtime.TOLERANCE``) on uint8 pixels that
    the graph normalises inside itself. With several cores (``lanes_for``), a lane per core decodes a batch and
    runs it through a one-thread session, batches in order: this beats one session on every core fed by a
    decoding thread (whose parallel sections wait for the core the decoding takes). In
    PyTorch, or on one core, a decoding thread (``decoded_batches``) prepares the next batches. On a GPU a
    DataLoader's worker processes decode, into pinned memory.
    """
    model = model.to(device).eval()
    split = isinstance(transform, ImageTransform)  # uint8 pixels are shipped; normalised here or in the graph

    def load(batch_paths: list[Path]) -> torch.Tensor:  # [B, 3, H, W]: uint8 (split) or the transform's output
        x = transform.load(batch_paths) if split else torch.stack([transform(open_rgb(p)) for p in batch_paths])
        return x.flip(-1) if flip else x  # the resize is mirror-symmetric: mirroring after it mirrors the photo
    bar = functools.partial(tqdm, desc="image features", unit="batch", disable=not progress, leave=False)
    graph, lanes = None, 1
    if device.type == "cpu" and paths:
        lanes = lanes_for(len(paths))
        size = tuple(load(paths[:1]).shape[-2:])
        graph = select_runtime(model, device, size, tail_blocks, len(paths), threads=1 if lanes > 1 else None)
    if used is not None:
        used.append(ORT_FP32 if graph is not None else torch_arithmetic(device))
    if graph is not None:
        raw = split and graph.mean_std == transform.mean_std  # the graph normalises as the transform does

        def run(batch: torch.Tensor) -> torch.Tensor:  # [B, F] float32, or [B, C, h, w] float16 with a cut
            y = torch.from_numpy(graph.raw(batch.numpy()) if raw else
                                 graph((transform.normalise(batch) if split else batch).numpy()))
            return y.half() if tail_blocks else y
        if lanes > 1:  # a lane per core decodes its own batch and runs the graph on one thread: no lane waits
            def lane(start: int) -> torch.Tensor:  # for another, and no decoding steals a core from a forward
                return run(load(paths[start:start + LANE_BATCH]))
            starts = range(0, len(paths), LANE_BATCH)
            threads = torch.get_num_threads()
            try:  # a lane's resize stays on its core (a two-thread one would take the other lane's core)
                return torch.cat(list(bar(ordered_map(lane, starts, lanes, 2 * lanes, initializer=one_thread),
                                          total=len(starts)))).numpy()
            finally:  # torch hands the last set_num_threads to threads started later: give it back
                torch.set_num_threads(threads)
        batches = decoded_batches(paths, load, batch_size, loader_workers())
        return torch.cat([run(b) for b in bar(batches, total=-(-len(paths) // batch_size))]).numpy()
    if device.type == "cpu":
        batches = decoded_batches(paths, load, batch_size, loader_workers())  # mirrored by ``load``
    else:
        batches = DataLoader(ImageFiles(paths, transform, uint8=split), batch_size=batch_size,
                             num_workers=loader_workers(), pin_memory=True,
                             generator=torch.Generator())  # its own: leaves the global RNG alone
    out = []
    for batch in bar(batches, total=-(-len(paths) // batch_size)):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            x = batch.to(device, non_blocking=True)
            if flip and device.type != "cpu":  # the DataLoader's workers decode without ``load``: mirrored here
                x = x.flip(-1)
            if split:
                x = transform.normalise(x)
            if tail_blocks:
                out.append(stem_forward(model, x, tail_blocks).half().cpu())  # [B, C, h, w]
            else:
                out.append(model(x).float().cpu())  # [B, F]
    return torch.cat(out).numpy()
