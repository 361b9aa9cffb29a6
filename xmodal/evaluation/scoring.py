"""Every number of one split from its embeddings (``score_embeddings``), or from a model (``evaluate_split``).

What training writes to ``test.json``, what ``python -m xmodal.evaluate`` prints and what the bench times.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..data import Catalogue, normalise_caption
from ..models.embed import embed_catalogue_images, embed_texts
from ..retrieval.hubness import CSLS_K, CSLS_WEIGHT, csls_offsets, hubness_stats, k_occurrence
from ..text.vocabulary import Vocab
from . import metrics
from .protocols import protocol_numbers


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
        ``ranks`` (``{ground truth: {direction: [N] ranks}}``, in the order of ``captions``; ``dedup``: one
        per kept product),
        ``nonfinite_embeddings``, ``dedup`` (the title-deduplicated gallery's metrics) with
        ``dedup_gallery_size``, ``fixed_gallery`` (recall at a fixed gallery size, or None), ``protocols``
        (their names: ``xmodal.evaluation.protocols``); with ``unseen``: ``unseen_queries``, ``unseen_title``
        (caption-level) and ``unseen_title_item`` (item-level); with ``intervals``: ``ci95`` (per ground
        truth, key -> [lo, hi]) and ``ci_method``.
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
    proto = protocol_numbers(img, txt, captions, intervals)
    out.update({k: proto[k] for k in ("dedup", "dedup_gallery_size", "fixed_gallery", "protocols")})
    if intervals:
        out["ci95"] = {key: metrics.bootstrap_intervals(r) for key, r in subsets.items()}
        out["ci95"]["dedup"] = proto["dedup_ci95"]
        out["ci_method"] = metrics.INTERVAL_METHOD
    out["ranks"] = {gt: {d: r.tolist() for d, r in ranks[gt].items()} for gt in ("item", "caption")}
    out["ranks"]["dedup"] = {d: r.tolist() for d, r in proto["dedup_ranks"].items()}  # one per kept product
    return out


def with_offsets(img: np.ndarray, txt: np.ndarray, off_img: np.ndarray, off_txt: np.ndarray,
                 weight: float) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings whose inner products are ``img . txt - weight * (off_img[i] + off_txt[t])``.

    The term of the query's own side is the same for every gallery entry, so each direction ranks by its
    gallery's corrected score: the metrics core scores hubness-corrected retrieval unchanged.
    """
    ones = np.ones((len(img), 1), np.float32)
    img2 = np.concatenate([img, -weight * off_img[:, None], ones], 1).astype(np.float32)
    txt2 = np.concatenate([txt, np.ones((len(txt), 1), np.float32), -weight * off_txt[:, None]], 1).astype(np.float32)
    return img2, txt2


def evaluate_split(model: nn.Module, vocab: Vocab, cat: Catalogue, index: np.ndarray, device: torch.device,
                   features: torch.Tensor | None = None, train_captions: list[str] | None = None,
                   intervals: bool = True, hubness: str = "none", bank_index: np.ndarray | None = None,
                   flip: bool = False) -> dict:
    """Retrieval metrics on items ``index`` of ``cat``, both directions, both ground truths (see
    :func:`score_embeddings`).

    Args:
        train_captions: the run's train titles; given, ``unseen_title`` scores only the queries whose
            normalised title never occurs among them, against the same whole gallery.
        hubness: ``csls`` ranks with CSLS hubness reduction (``xmodal.retrieval.hubness``), its offsets learnt
            from the items ``bank_index`` (the train split; default the scored items themselves).
        flip: embed each image averaged with its horizontal mirror (``embed_catalogue_images``).
    """
    img = metrics._numpy(embed_catalogue_images(model, cat, index, device, features, flip=flip))
    captions = [cat.captions[int(i)] for i in index]
    txt = metrics._numpy(embed_texts(model, vocab, captions, device))
    unseen = None
    if train_captions is not None:
        seen = {normalise_caption(c) for c in train_captions}
        unseen = np.array([normalise_caption(c) not in seen for c in captions], dtype=bool)
    if hubness == "none":
        return score_embeddings(img, txt, captions, unseen, intervals)
    if hubness != "csls":
        raise ValueError(f"unknown hubness reduction {hubness!r}; choose none or csls")
    if bank_index is None:
        bank_img, bank_txt = img, txt
    else:
        bank_img = metrics._numpy(embed_catalogue_images(model, cat, bank_index, device, features, flip=flip))
        bank_txt = metrics._numpy(embed_texts(model, vocab, [cat.captions[int(i)] for i in bank_index], device))
    off_img_t, off_txt_t = csls_offsets(bank_txt, img), csls_offsets(bank_img, txt)  # per image / caption gallery
    off_img, off_txt = off_img_t.numpy(), off_txt_t.numpy()
    out = score_embeddings(*with_offsets(img, txt, off_img, off_txt, CSLS_WEIGHT), captions, unseen, intervals)
    out["similarity"] = metrics.similarity_stats(img, txt)  # of the model's own space, not the corrected one
    out["hubness"] = {"method": "csls", "k": CSLS_K, "weight": CSLS_WEIGHT,
                      "bank": "the train split" if bank_index is not None else "the scored items themselves",
                      "k_occurrence": {  # N_10 of each gallery, before and after the correction
                          "text_to_image": {"before": hubness_stats(k_occurrence(txt, img)),
                                            "after": hubness_stats(k_occurrence(txt, img, offsets=off_img_t))},
                          "image_to_text": {"before": hubness_stats(k_occurrence(img, txt)),
                                            "after": hubness_stats(k_occurrence(img, txt, offsets=off_txt_t))}}}
    return out
