"""The frozen-feature cache: a backbone's features of a catalogue's photos, on disk, keyed on what made them.

The key is ``weights_digest`` of the modules whose output it stores, never a label saying where the weights
were meant to come from: features of a randomly initialised backbone can never be read back as ImageNet ones.
It also names the arithmetic (``extraction_arithmetic``): features made under bf16 autocast on a GPU, by
ONNX Runtime or by PyTorch in fp32 on a CPU each have their own entry, so a run reads features computed the
way its own machine computes them.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .backbones import image_transform, stem_module, weights_digest
from ..cachefile import check_array, warn_rebuild, write_cache
from .extraction import ORT_FP32, extract_features, torch_arithmetic
from ..paths import cache_dir
from .runtime import _float32, export_min_pixels, graph_key, graph_path, onnxruntime_version, requested_runtime

log = logging.getLogger(__name__)

FEATURE_CACHE_VERSION = 4  # bump when the file layout or the meaning of the key changes (4: the key names the
# arithmetic; 3: images resized by PyTorch's uint8 antialiased bilinear, within 1 of version 2's Pillow resize)


def extraction_arithmetic(model: nn.Module, device: torch.device, size: tuple[int, int], images: int,
                          tail_blocks: int = 0) -> str:
    """The arithmetic ``extract_features`` will compute ``images`` features of ``model`` with on ``device``.

    Off the CPU: PyTorch (``torch_arithmetic``: bf16 autocast on CUDA). On the CPU: ONNX Runtime in fp32
    where ``xmodal.image.runtime.select_runtime`` runs the graph (onnxruntime imports, float32 weights, no
    ``XMODAL_RUNTIME=torch``, and a graph on disk or a job it exports one for), else PyTorch in fp32. Told
    without exporting or loading a graph, so a cache hit costs neither; should the extraction run otherwise
    (an export that failed), ``cached_features`` files its features under what did run.
    """
    if device.type != "cpu":
        return torch_arithmetic(device)
    choice = requested_runtime()
    if choice == "torch" or not images or onnxruntime_version() is None or not _float32(model):
        return torch_arithmetic(device)
    if (choice == "onnxruntime" or images * size[0] * size[1] >= export_min_pixels(model)
            or graph_path(graph_key(model, size, tail_blocks)).is_file()):
        return ORT_FP32
    return torch_arithmetic(device)


def feature_cache_path(model: nn.Module, backbone: str, size: tuple[int, int], images: list[str],
                       fingerprint: str, tail_blocks: int = 0, arithmetic: str | None = None, flip: bool = False
                       ) -> Path:
    """Where ``cached_features`` keeps the features of ``images`` by ``model`` (``$XMODAL_CACHE/features``).

    The key covers the cache format, the catalogue's content fingerprint (captions and image bytes), the
    image list, the backbone, ``weights_digest`` of the part of ``model`` that computes the features
    (``stem_module``: tuning the last stages leaves the key alone), the image size, the stage cut and the
    ``arithmetic`` (default: ``extraction_arithmetic`` on the CPU). ``flip`` (the images' horizontal mirrors) adds
    itself to the key only when set, so the unflipped entries keep the keys they had.
    """
    arithmetic = arithmetic or extraction_arithmetic(model, torch.device("cpu"), size, len(images), tail_blocks)
    fields = {
        "version": FEATURE_CACHE_VERSION, "catalogue": fingerprint, "backbone": backbone,
        "weights": weights_digest(stem_module(model, tail_blocks)), "size": [int(v) for v in size],
        "tail_blocks": int(tail_blocks), "images": hashlib.sha256("\n".join(images).encode()).hexdigest(),
        "arithmetic": arithmetic,
    }
    if flip:
        fields["flip"] = "horizontal"
    key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:20]
    cut = f"_cut{tail_blocks}" if tail_blocks else ""
    mirror = "_flip" if flip else ""
    return cache_dir() / "features" / f"{backbone}_{size[0]}x{size[1]}{cut}{mirror}_{key}.npz"


def _read_features(path: Path, rows: int, tail_blocks: int) -> np.ndarray:
    """A feature cache file's array, checked (zip CRC, key, shape, dtype, finite values); raises if bad."""
    with np.load(path, allow_pickle=False) as f:
        if str(f["key"]) != path.stem.rsplit("_", 1)[-1]:
            raise ValueError(f"it holds the features of key {str(f['key'])!r}")
        feats = f["features"]  # reading the whole member checks its CRC-32
    if tail_blocks:
        return check_array("the cached feature maps", feats, (rows, None, None, None), ("float16",))
    return check_array("the cached features", feats, (rows, None), ("float32",))


def cached_features(model: nn.Module, backbone: str, size: tuple[int, int], root: Path, images: list[str],
                    fingerprint: str, device: torch.device, progress: bool = True, tail_blocks: int = 0,
                    flip: bool = False) -> np.ndarray:
    """Frozen-backbone features for ``root/images``, cached on disk (see ``feature_cache_path``).

    Reused across runs and models, never stale, and never taken from other weights or other arithmetic. A
    damaged file (truncated, garbled, wrong shape or dtype, non-finite values) is extracted again with a
    warning; a cache that cannot be written (full disk) is only warned about. ``flip``: the features of the
    images' horizontal mirrors, in an entry of their own.
    """
    planned = extraction_arithmetic(model, device, size, len(images), tail_blocks)
    path = feature_cache_path(model, backbone, size, images, fingerprint, tail_blocks, planned, flip)
    if path.is_file():
        try:
            return _read_features(path, len(images), tail_blocks)
        except Exception as err:  # any damage: the features are recomputed below
            warn_rebuild(path, err)
    used: list[str] = []
    feats = extract_features(model, [root / r for r in images], image_transform(backbone, size), device,
                             progress=progress, tail_blocks=tail_blocks, used=used, flip=flip)
    if used and used[0] != planned:  # e.g. the graph's export failed: filed under what ran
        log.info("%s features were computed by %s (expected %s)", backbone, used[0], planned)
        path = feature_cache_path(model, backbone, size, images, fingerprint, tail_blocks, used[0], flip)
    if not all(np.isfinite(feats[s:s + 4096]).all() for s in range(0, len(feats), 4096)):
        log.warning("%s features of %s hold non-finite values; not caching them", backbone, root)
        return feats
    write_cache(path, lambda f: np.savez(f, features=feats, key=np.array(path.stem.rsplit("_", 1)[-1])))
    return feats
