"""Losses: functions of model outputs returning named terms; the training loop sums them.

``labels`` are per-sample group ids: two samples with the same id (identical captions) are a match.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def match_matrix(labels: torch.Tensor) -> torch.Tensor:
    """``y[i, j] = 1`` where samples i and j share a label. ``[B, B]`` float."""
    return (labels[:, None] == labels[None, :]).float()


def contrastive_loss(img: torch.Tensor, txt: torch.Tensor, labels: torch.Tensor, margin: float = 0.5
                     ) -> dict[str, torch.Tensor]:
    """Contrastive loss on euclidean distances (Hadsell, Chopra & LeCun, CVPR 2006).

    Matching pairs are pulled together (d^2); every non-matching image-text pair in the batch is
    pushed beyond ``margin`` (max(0, margin - d)^2).
    """
    dist = torch.cdist(img, txt)  # [B, B]
    y = match_matrix(labels)
    pos = (y * dist.pow(2)).sum() / y.sum()
    neg_mask = 1 - y
    neg = (neg_mask * F.relu(margin - dist).pow(2)).sum() / neg_mask.sum().clamp_min(1)
    return {"contrastive_pos": pos, "contrastive_neg": neg}


def correlation(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Sum over dimensions of the batch correlation between codes ``a`` and ``b`` ``[B, D]``."""
    a = a - a.mean(0, keepdim=True)
    b = b - b.mean(0, keepdim=True)
    num = (a * b).sum(0)
    den = torch.sqrt((a.pow(2).sum(0) + eps) * (b.pow(2).sum(0) + eps))
    return (num / den).sum()


def corrnet_loss(img: torch.Tensor, txt: torch.Tensor, recon: dict[str, torch.Tensor], code_img: torch.Tensor,
                 code_txt: torch.Tensor, corr_weight: float = 0.1) -> dict[str, torch.Tensor]:
    """Correlational Neural Network loss (Chandar et al., Neural Computation 2016).

    Reconstruct both views from the joint code, from the image-only code and from the text-only code,
    and maximise the correlation between the two single-view codes. Two scalings differ from the paper's
    summed squared error and summed correlation: each view's reconstruction error is its mean squared error
    (a view weighs the same whatever its width), and the correlation is averaged over the code's dimensions
    (the paper's lambda is ``corr_weight / D``).

    Args:
        img: the image view ``[B, Fi]``; txt: the text view ``[B, Ft]``.
        recon: ``{"<from>_<view>": reconstruction}`` for from in both/img/txt and view in img/txt.
        corr_weight: the weight of the mean per-dimension correlation.
    """
    terms = {}
    for source in ("both", "img", "txt"):
        terms[f"recon_{source}"] = (F.mse_loss(recon[f"{source}_img"], img)
                                    + F.mse_loss(recon[f"{source}_txt"], txt))
    dims = code_img.shape[1]
    terms["correlation"] = -corr_weight * correlation(code_img, code_txt) / dims
    return terms


def cmpm_loss(img: torch.Tensor, txt: torch.Tensor, labels: torch.Tensor, eps: float = 1e-8
              ) -> dict[str, torch.Tensor]:
    """Cross-Modal Projection Matching loss (Zhang & Lu, "Deep Cross-Modal Projection Learning for
    Image-Text Matching", ECCV 2018).

    p_ij = softmax_j(x_i . z_j/|z_j|); q_ij = y_ij / sum_k y_ik (true matches normalised per row);
    L_i2t = mean_i sum_j p_ij log(p_ij / (q_ij + eps)); likewise text to image; CMPM = both summed.
    """
    y = match_matrix(labels)
    q = y / y.sum(1, keepdim=True)  # [B, B], rows sum to 1
    txt_n = F.normalize(txt, dim=1)
    img_n = F.normalize(img, dim=1)
    terms = {}
    for name, a, b_n in (("cmpm_i2t", img, txt_n), ("cmpm_t2i", txt, img_n)):
        logits = a @ b_n.t()  # [B, B]
        p = logits.softmax(1)
        terms[name] = (p * (logits.log_softmax(1) - torch.log(q + eps))).sum(1).mean()
    return terms


def cmpc_loss(img: torch.Tensor, txt: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor
              ) -> dict[str, torch.Tensor]:
    """Cross-Modal Projection Classification (Zhang & Lu, ECCV 2018): norm-softmax classification of
    each modality projected onto the other's direction, with unit-norm class weights ``[C, D]``."""
    w = F.normalize(weight, dim=1)
    txt_n = F.normalize(txt, dim=1)
    img_n = F.normalize(img, dim=1)
    img_proj = (img * txt_n).sum(1, keepdim=True) * txt_n  # [B, D]
    txt_proj = (txt * img_n).sum(1, keepdim=True) * img_n
    return {"cmpc_i": F.cross_entropy(img_proj @ w.t(), labels),
            "cmpc_t": F.cross_entropy(txt_proj @ w.t(), labels)}


def infonce_loss(img: torch.Tensor, txt: torch.Tensor, labels: torch.Tensor, logit_scale: torch.Tensor
                 ) -> dict[str, torch.Tensor]:
    """Symmetric InfoNCE with a learnable temperature (CLIP: Radford et al., ICML 2021).

    Items with identical captions are all counted as positives (soft targets). The multiplier ``exp(t)`` is
    clipped at 100 as in CLIP (no gradient to ``t`` beyond it). The two directions are returned as separate
    terms and the training loop sums them: twice CLIP's mean of the two, a scale Adam's update ignores.
    """
    y = match_matrix(labels)
    target = y / y.sum(1, keepdim=True)
    logits = logit_scale.exp().clamp(max=100) * F.normalize(img, dim=1) @ F.normalize(txt, dim=1).t()
    return {"infonce_i2t": -(target * logits.log_softmax(1)).sum(1).mean(),
            "infonce_t2i": -(target * logits.t().log_softmax(1)).sum(1).mean()}


def max_violation_loss(img: torch.Tensor, txt: torch.Tensor, labels: torch.Tensor, margin: float = 0.2
                       ) -> dict[str, torch.Tensor]:
    """VSE++'s max-violation hinge (Faghri et al., BMVC 2018): each pair against its hardest negative.

    On cosine similarities ``s``: mean over i of ``max(0, margin + max_{j not a match} s_ij - s_ii)`` for
    image queries, and likewise for text queries. Samples sharing a label are matches, never negatives.
    A row with no negative in the batch adds nothing.
    """
    sim = F.normalize(img, dim=1) @ F.normalize(txt, dim=1).t()  # [B, B]
    negatives = match_matrix(labels) == 0
    pos = sim.diagonal()
    floor = torch.finfo(sim.dtype).min
    hardest_i2t = sim.masked_fill(~negatives, floor).max(1).values  # [B]
    hardest_t2i = sim.masked_fill(~negatives, floor).max(0).values
    has_i2t, has_t2i = negatives.any(1), negatives.any(0)
    i2t = F.relu(margin + hardest_i2t - pos) * has_i2t
    t2i = F.relu(margin + hardest_t2i - pos) * has_t2i
    return {"hard_i2t": i2t.mean(), "hard_t2i": t2i.mean()}


def attribute_loss(logits: dict[str, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of attribute heads: ``logits[name]`` ``[B, C]`` in column order against
    ``targets`` ``[B, A]`` (-1: missing, no loss); a column with no known target in the batch adds nothing."""
    total = targets.new_zeros((), dtype=torch.float32)
    used = 0
    for a, head in enumerate(logits.values()):
        known = targets[:, a] >= 0
        if known.any():
            total = total + F.cross_entropy(head[known].float(), targets[known, a])
            used += 1
    return total / max(used, 1)
