"""The frozen-feature cache: a backbone's features of a catalogue's photos, on disk, keyed on what made them.

The key is ``weights_digest`` of the modules whose output it stores, never a label saying where the weights
were meant to come from: features of a randomly initialised backbone can never be read back as ImageNet ones.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .backbones import extract_features, image_transform, stem_module, weights_digest
from .cachefile import check_array, warn_rebuild, write_cache
from .paths import cache_dir

log = logging.getLogger(__name__)

FEATURE_CACHE_VERSION = 3  # bump when the file layout or the meaning of the key changes (3: images resized by
# PyTorch's uint8 antialiased bilinear, within 1 of the Pillow resize that version 2 used)


def feature_cache_path(model: nn.Module, backbone: str, size: tuple[int, int], images: list[str],
                       fingerprint: str, tail_blocks: int = 0) -> Path:
    """Where ``cached_features`` keeps the features of ``images`` by ``model`` (``$XMODAL_CACHE/features``).

    The key covers the cache format, the catalogue's content fingerprint (captions and image bytes), the
    image list, the backbone, ``weights_digest`` of the part of ``model`` that computes the features
    (``stem_module``: tuning the last stages leaves the key alone), the image size and the stage cut.
    """
    key = hashlib.sha256(json.dumps({
        "version": FEATURE_CACHE_VERSION, "catalogue": fingerprint, "backbone": backbone,
        "weights": weights_digest(stem_module(model, tail_blocks)), "size": [int(v) for v in size],
        "tail_blocks": int(tail_blocks), "images": hashlib.sha256("\n".join(images).encode()).hexdigest(),
    }, sort_keys=True).encode()).hexdigest()[:20]
    cut = f"_cut{tail_blocks}" if tail_blocks else ""
    return cache_dir() / "features" / f"{backbone}_{size[0]}x{size[1]}{cut}_{key}.npz"


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
                    fingerprint: str, device: torch.device, progress: bool = True, tail_blocks: int = 0
                    ) -> np.ndarray:
    """Frozen-backbone features for ``root/images``, cached on disk (see ``feature_cache_path``).

    Reused across runs and models, never stale, and never taken from other weights. A damaged file
    (truncated, garbled, wrong shape or dtype, non-finite values) is extracted again with a warning;
    a cache that cannot be written (full disk) is only warned about.
    """
    path = feature_cache_path(model, backbone, size, images, fingerprint, tail_blocks)
    if path.is_file():
        try:
            return _read_features(path, len(images), tail_blocks)
        except Exception as err:  # any damage: the features are recomputed below
            warn_rebuild(path, err)
    feats = extract_features(model, [root / r for r in images], image_transform(backbone, size), device,
                             progress=progress, tail_blocks=tail_blocks)
    if not all(np.isfinite(feats[s:s + 4096]).all() for s in range(0, len(feats), 4096)):
        log.warning("%s features of %s hold non-finite values; not caching them", backbone, root)
        return feats
    write_cache(path, lambda f: np.savez(f, features=feats, key=np.array(path.stem.rsplit("_", 1)[-1])))
    return feats
