"""Deep CMPM (Zhang & Lu, ECCV 2018) and the InfoNCE baseline: a timm image encoder and a BiLSTM text
encoder projected into one space; they differ only in the loss.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..losses import attribute_loss, cmpc_loss, cmpm_loss, infonce_loss, max_violation_loss
from .config import ModelConfig
from .registry import register_model
from .towers import BiLSTMText, CrossModalModel


class ResidualMLP(nn.Module):
    """``[B, F] -> [B, D]``: a linear map plus a two-layer GELU branch (dropout on the input)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, dropout: float):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.linear = nn.Linear(in_dim, out_dim)
        self.branch = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout),
                                    nn.Linear(hidden, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(x)
        return self.linear(x) + self.branch(x)  # [B, D]


def caption_groups(labels: torch.Tensor) -> torch.Tensor:
    """The caption groups ``[B]`` of ``labels``: themselves, or column 0 of ``[B, 1 + A]`` (attribute classes after)."""
    return labels[:, 0] if labels.ndim == 2 else labels


class DualEncoder(CrossModalModel):
    """Image features -> linear; words -> BiLSTM (max-pooled) -> linear. ``[B, D]`` each."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        if cfg.image_mlp:  # frozen features adapted non-linearly, with a linear shortcut
            self.image_proj = ResidualMLP(cfg.feature_dim, cfg.image_mlp, cfg.embed_dim, cfg.dropout)
        else:
            self.image_proj = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(cfg.feature_dim, cfg.embed_dim))
        self.text_encoder = BiLSTMText(cfg.word_dim, cfg.lstm_dim)
        self.text_proj = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(self.text_encoder.out_dim, cfg.embed_dim))
        # Attribute heads, shared by both modalities so that the attribute is a direction of the joint space
        self.attr_heads = nn.ModuleDict({name: nn.Linear(cfg.embed_dim, n) for name, n in cfg.attr_classes.items()}) \
            if cfg.attr_weight > 0 else None
        self.progress = 1.0  # share of training done, set by the loop each epoch (the hinge's warm-up)

    def project_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.image_proj(self.image_features(images))  # [B, D], unnormalised

    def project_text(self, tokens: torch.Tensor) -> torch.Tensor:
        words, tokens = self.embed_words(tokens)  # [B, L, W]
        return self.text_proj(self.text_encoder(words, tokens))  # [B, D]

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.project_image(images), dim=-1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.project_text(tokens), dim=-1)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        img, txt = self.project_image(images), self.project_text(tokens)
        return {"image_proj": img, "text_proj": txt,
                "image_embeds": F.normalize(img, dim=-1), "text_embeds": F.normalize(txt, dim=-1)}

    def extra_terms(self, out: dict[str, torch.Tensor], labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """The optional terms beside the main loss: the hardest-negative hinge (after its warm-up) and the
        attribute heads. ``labels`` ``[B]`` caption groups, or ``[B, 1 + A]`` with attribute classes."""
        cfg, terms = self.cfg, {}
        if cfg.hard_weight > 0 and self.progress >= cfg.hard_warmup:
            hinge = max_violation_loss(out["image_proj"], out["text_proj"], caption_groups(labels), cfg.hard_margin)
            terms.update({k: cfg.hard_weight * v for k, v in hinge.items()})
        if self.attr_heads is not None and labels.ndim == 2:
            targets = labels[:, 1:]
            for side in ("image", "text"):
                logits = {name: head(out[f"{side}_embeds"]) for name, head in self.attr_heads.items()}
                terms[f"attr_{side}"] = cfg.attr_weight * attribute_loss(logits, targets)
        return terms


class CMPM(DualEncoder):
    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.class_weight = nn.Parameter(torch.randn(max(cfg.num_classes, 1), cfg.embed_dim) * 0.02) \
            if cfg.cmpc_weight > 0 else None

    def loss(self, out: dict[str, torch.Tensor], labels: torch.Tensor) -> dict[str, torch.Tensor]:
        terms = self.extra_terms(out, labels)
        labels = caption_groups(labels)
        terms.update(cmpm_loss(out["image_proj"], out["text_proj"], labels))
        if self.class_weight is not None:
            known = labels >= 0  # val/test captions unseen in train carry no class
            if known.any():
                cls = cmpc_loss(out["image_proj"][known], out["text_proj"][known], labels[known], self.class_weight)
                terms.update({k: self.cfg.cmpc_weight * v for k, v in cls.items()})
        return terms


class InfoNCE(DualEncoder):
    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.init_logit_scale)))

    def loss(self, out: dict[str, torch.Tensor], labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {**infonce_loss(out["image_proj"], out["text_proj"], caption_groups(labels), self.logit_scale),
                **self.extra_terms(out, labels)}


@register_model("cmpm-mobilenet", backbone="mobilenet", embed_dim=512)
def cmpm_mobilenet(cfg: ModelConfig) -> CMPM:
    return CMPM(cfg)


@register_model("cmpm-efficientnet", backbone="efficientnet", embed_dim=512)
def cmpm_efficientnet(cfg: ModelConfig) -> CMPM:
    return CMPM(cfg)


# image_mlp=1024: the residual two-layer image head won on Myntra validation (docs/quality.md, rows 13-15)
@register_model("infonce-efficientnet", backbone="efficientnet", embed_dim=512, image_mlp=1024)
def infonce_efficientnet(cfg: ModelConfig) -> InfoNCE:
    return InfoNCE(cfg)
