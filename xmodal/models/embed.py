"""From catalogue items to joint-space embeddings with a model and its vocabulary.

Frozen-backbone models read the on-disk feature cache; fine-tuned ones run their backbone on pixels.
Training, evaluation and search all embed through these functions. ``embed_catalogue_images(flip=True)`` is flip
test-time augmentation: each image's embedding averaged with its horizontal mirror's, then normalised again.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from ..data import Catalogue
from ..data.images import to_rgb
from ..image.backbones import ImageFiles, image_transform, loader_workers
from ..image.feature_cache import cached_features
from ..image.runtime import backbone_features
from ..text.runtime import fixed_weights, text_encoder  # noqa: F401  (fixed_weights: load_model marks its model)
from ..text.vocabulary import Vocab



def catalogue_features(model: nn.Module, cat: Catalogue, device: torch.device, progress: bool = True
                       ) -> torch.Tensor:
    """Frozen backbone features ``[N, F]`` of every item of ``cat`` (from the disk cache, keyed on the
    backbone's actual weights: call it after they are loaded)."""
    cfg = model.cfg
    feats = cached_features(model.backbone, cfg.backbone, tuple(cfg.image_size), cat.root, cat.images,
                            cat.fingerprint, device, progress=progress, tail_blocks=cfg.tune_blocks)
    return torch.from_numpy(feats)


def mirrored_features(model: nn.Module, cat: Catalogue, index: np.ndarray, device: torch.device,
                      progress: bool = False) -> torch.Tensor:
    """Frozen backbone features ``[n, F]`` of the horizontal mirrors of items ``index`` of ``cat``.

    Cached apart from the unflipped features (``cached_features(flip=True)``), for these items only: flip
    averaging is an evaluation option, and a split's mirrors cost a tenth of the catalogue's.
    """
    cfg = model.cfg
    images = [cat.images[int(i)] for i in index]
    feats = cached_features(model.backbone, cfg.backbone, tuple(cfg.image_size), cat.root, images, cat.fingerprint,
                            device, progress=progress, tail_blocks=cfg.tune_blocks, flip=True)
    return torch.from_numpy(feats)


def flip_average(plain: torch.Tensor, mirrored: torch.Tensor) -> torch.Tensor:
    """``normalize(mean(normalize(plain), normalize(mirrored)))`` row by row: ``[n, D]`` twice -> ``[n, D]``."""
    return F.normalize(F.normalize(plain, dim=-1) + F.normalize(mirrored, dim=-1), dim=-1)


@torch.no_grad()
def embed_texts(model: nn.Module, vocab: Vocab, texts: list[str], device: torch.device, batch: int = 512
                ) -> torch.Tensor:
    """Text embeddings ``[N, D]`` (CPU, float32): a fixed model's text tower in ONNX Runtime on CPU
    (``xmodal.text.runtime``)."""
    if model.training:  # walking the module tree to set eval mode is not free on every query
        model.eval()
    encode = text_encoder(model, device)
    # Texts of like length share a batch: each batch is padded to its longest, and the BiLSTM runs every step
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = [encode(vocab.encode([texts[i] for i in order[s:s + batch]]).to(device)).float().cpu()
           for s in range(0, len(texts), batch)]
    if not out:
        return torch.zeros(0, model.cfg.embed_dim)
    return torch.cat(out)[torch.as_tensor(order).argsort()]  # [N, D], back in the texts' order


@torch.no_grad()
def embed_features(model: nn.Module, feats: torch.Tensor, device: torch.device, batch: int = 512) -> torch.Tensor:
    """Image embeddings ``[N, D]`` from cached backbone features ``[N, F]`` (or maps ``[N, C, h, w]``)."""
    model.eval()
    return torch.cat([model.encode_image(feats[s:s + batch].to(device)).float().cpu()
                      for s in range(0, len(feats), batch)])


@torch.no_grad()
def embed_pil(model: nn.Module, images: list, device: torch.device) -> torch.Tensor:
    """Image embeddings ``[N, D]`` of decoded images (uploads, single queries): PIL images, or RGB arrays
    ``[H, W, 3]`` uint8 as ``xmodal.data.images.rgb_array`` gives."""
    if model.training:  # walking the module tree to set eval mode is not free on every query
        model.eval()
    tf = image_transform(model.cfg.backbone, tuple(model.cfg.image_size))
    raw = torch.stack([tf.to_uint8(to_rgb(im) if isinstance(im, Image.Image) else im)
                       for im in images]).to(device)  # [N, 3, H, W] uint8
    if model.image_input == "features" and device.type == "cpu":  # frozen backbone: the fastest runtime
        feats = backbone_features(model.backbone, raw, model.cfg.tune_blocks, transform=tf)  # [N, F] or maps
        return model.encode_image(feats).float().cpu()
    return model.encode_image(tf.normalise(raw)).float().cpu()


@torch.no_grad()
def embed_catalogue_images(model: nn.Module, cat: Catalogue, index: np.ndarray, device: torch.device,
                           features: torch.Tensor | None = None, batch: int = 128,
                           progress: bool = False, flip: bool = False) -> torch.Tensor:
    """Image embeddings ``[n, D]`` of items ``index`` of ``cat``; with ``flip``, each averaged with its horizontal
    mirror's embedding and normalised again (``flip_average``)."""
    if model.image_input == "features":
        if features is None:
            features = catalogue_features(model, cat, device, progress=progress)
        plain = embed_features(model, features[torch.as_tensor(index, dtype=torch.long)], device)
        if not flip:
            return plain
        return flip_average(plain, embed_features(model, mirrored_features(model, cat, index, device, progress),
                                                  device))
    model.eval()
    tf = image_transform(model.cfg.backbone, tuple(model.cfg.image_size))
    loader = DataLoader(ImageFiles([cat.image_path(int(i)) for i in index], tf), batch_size=batch,
                        num_workers=loader_workers(), generator=torch.Generator())  # leaves the global RNG alone
    out = []
    for pixels in loader:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            x = pixels.to(device, non_blocking=True)  # [B, 3, H, W]
            y = model.encode_image(x).float().cpu()
            out.append(flip_average(y, model.encode_image(x.flip(-1)).float().cpu()) if flip else y)
    return F.normalize(torch.cat(out), dim=-1)
