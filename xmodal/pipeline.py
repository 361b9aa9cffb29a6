"""From catalogue items to joint-space embeddings with a model and its vocabulary.

Frozen-backbone models read the on-disk feature cache; fine-tuned ones run their backbone on pixels.
Training, evaluation and search all embed through these functions.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from .backbones import ImageFiles, image_transform, loader_workers
from .feature_cache import cached_features
from .data import Catalogue, normalise_caption
from . import metrics
from .text import Vocab


def catalogue_features(model: nn.Module, cat: Catalogue, device: torch.device, progress: bool = True
                       ) -> torch.Tensor:
    """Frozen backbone features ``[N, F]`` of every item of ``cat`` (from the disk cache, keyed on the
    backbone's actual weights: call it after they are loaded)."""
    cfg = model.cfg
    feats = cached_features(model.backbone, cfg.backbone, tuple(cfg.image_size), cat.root, cat.images,
                            cat.fingerprint, device, progress=progress, tail_blocks=cfg.tune_blocks)
    return torch.from_numpy(feats)


@torch.no_grad()
def embed_texts(model: nn.Module, vocab: Vocab, texts: list[str], device: torch.device, batch: int = 512
                ) -> torch.Tensor:
    """Text embeddings ``[N, D]`` (CPU, float32)."""
    model.eval()
    out = [model.encode_text(vocab.encode(texts[s:s + batch]).to(device)).float().cpu()
           for s in range(0, len(texts), batch)]
    return torch.cat(out) if out else torch.zeros(0, model.cfg.embed_dim)


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
    if model.training:  # walking the module tree to set eval mode costs ~4 ms a query
        model.eval()
    tf = image_transform(model.cfg.backbone, tuple(model.cfg.image_size))
    from .data.images import to_rgb
    raw = torch.stack([tf.to_uint8(to_rgb(im) if isinstance(im, Image.Image) else im)
                       for im in images]).to(device)  # [N, 3, H, W] uint8
    if model.image_input == "features" and device.type == "cpu":  # frozen backbone: the fastest runtime
        from .runtime import backbone_features
        feats = backbone_features(model.backbone, raw, model.cfg.tune_blocks, transform=tf)  # [N, F] or maps
        return model.encode_image(feats).float().cpu()
    return model.encode_image(tf.normalise(raw)).float().cpu()


@torch.no_grad()
def embed_catalogue_images(model: nn.Module, cat: Catalogue, index: np.ndarray, device: torch.device,
                           features: torch.Tensor | None = None, batch: int = 128,
                           progress: bool = False) -> torch.Tensor:
    """Image embeddings ``[n, D]`` of items ``index`` of ``cat``."""
    if model.image_input == "features":
        if features is None:
            features = catalogue_features(model, cat, device, progress=progress)
        return embed_features(model, features[torch.as_tensor(index, dtype=torch.long)], device)
    model.eval()
    tf = image_transform(model.cfg.backbone, tuple(model.cfg.image_size))
    loader = DataLoader(ImageFiles([cat.image_path(int(i)) for i in index], tf), batch_size=batch,
                        num_workers=loader_workers(), generator=torch.Generator())  # leaves the global RNG alone
    out = []
    for pixels in loader:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out.append(model.encode_image(pixels.to(device, non_blocking=True)).float().cpu())
    return torch.nn.functional.normalize(torch.cat(out), dim=-1)


def item_level_ceiling(groups: np.ndarray) -> dict[str, float]:
    """The best R@K item-level ground truth allows when titles repeat (percent).

    Identical titles embed identically and ties count against the model, so an image whose title is shared
    by m items ranks its own caption at m at best, and of m identical text queries at most one can find
    its own image first: image-to-text R@K <= share of items whose title group has at most K members;
    text-to-image R@K <= sum over groups of min(m, K) / N.
    """
    sizes = np.bincount(groups)
    m = sizes[groups]  # group size of each item
    n = max(len(groups), 1)
    out = {}
    for k in metrics.KS:
        out[f"text_to_image/R@{k}"] = float(100.0 * np.minimum(sizes, k).sum() / n)
        out[f"image_to_text/R@{k}"] = float(100.0 * (m <= k).sum() / n)
    return out


def score_embeddings(img: np.ndarray | torch.Tensor, txt: np.ndarray | torch.Tensor, captions: list[str],
                     unseen: np.ndarray | None = None, intervals: bool = True) -> dict:
    """Every number of one split from its embeddings: both ground truths, their intervals and per-query ranks.

    Args:
        img, txt: ``[N, D]`` image and caption embeddings, row i being item i.
        captions: the N titles (caption-level ground truth groups identical normalised titles).
        unseen: boolean ``[N]``: the queries whose title never occurs in the train split (or None).
        intervals: add the bootstrap intervals (``ci95``).

    Returns:
        ``item``, ``caption`` (flat metric dicts), ``similarity``, ``gallery_size``, ``item_ceiling``,
        ``ranks`` (``{ground truth: {direction: [N] ranks}}``, in the order of ``captions``),
        ``nonfinite_embeddings``; with ``unseen``: ``unseen_queries``, ``unseen_title`` (caption-level) and
        ``unseen_title_item`` (item-level); with ``intervals``: ``ci95`` (per ground truth, key -> [lo, hi])
        and ``ci_method``.
    """
    groups = metrics.title_groups(captions)
    img, txt = metrics._numpy(img), metrics._numpy(txt)
    bad = int((~np.isfinite(img).all(1)).sum() + (~np.isfinite(txt).all(1)).sum())
    ranks = metrics.ranks_by_ground_truth(img, txt, captions)
    out = {"item": metrics.summarise(ranks["item"]), "caption": metrics.summarise(ranks["caption"]),
           "similarity": metrics.similarity_stats(img, txt), "gallery_size": int(len(captions)),
           "item_ceiling": item_level_ceiling(groups), "nonfinite_embeddings": bad}
    subsets = {"item": ranks["item"], "caption": ranks["caption"]}
    if unseen is not None:
        unseen = np.asarray(unseen, dtype=bool)
        out["unseen_queries"] = int(unseen.sum())
        for key, gt in (("unseen_title", "caption"), ("unseen_title_item", "item")):
            sub = {d: r[unseen] for d, r in ranks[gt].items()}
            out[key] = metrics.summarise(sub) if unseen.any() else None
            if unseen.any():
                subsets[key] = sub
    if intervals:
        out["ci95"] = {key: metrics.bootstrap_intervals(r) for key, r in subsets.items()}
        out["ci_method"] = metrics.INTERVAL_METHOD
    out["ranks"] = {gt: {d: r.tolist() for d, r in ranks[gt].items()} for gt in ("item", "caption")}
    return out


def evaluate_split(model: nn.Module, vocab: Vocab, cat: Catalogue, index: np.ndarray, device: torch.device,
                   features: torch.Tensor | None = None, train_captions: list[str] | None = None,
                   intervals: bool = True) -> dict:
    """Retrieval metrics on items ``index`` of ``cat``, both directions, both ground truths (see
    :func:`score_embeddings`).

    Args:
        train_captions: the run's train titles; given, ``unseen_title`` scores only the queries whose
            normalised title never occurs among them, against the same whole gallery.
    """
    img = embed_catalogue_images(model, cat, index, device, features)
    captions = [cat.captions[int(i)] for i in index]
    txt = embed_texts(model, vocab, captions, device)
    unseen = None
    if train_captions is not None:
        seen = {normalise_caption(c) for c in train_captions}
        unseen = np.array([normalise_caption(c) not in seen for c in captions], dtype=bool)
    return score_embeddings(img, txt, captions, unseen, intervals)
