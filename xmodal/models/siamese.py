"""Siamese two-branch network: frozen image features and word2vec sentence vectors, each through an
MLP into one space, trained with a contrastive loss on euclidean distance (negatives from the batch).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..losses import contrastive_loss
from .config import ModelConfig
from .registry import register_model
from .towers import CrossModalModel, mlp


class Siamese(CrossModalModel):
    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.word_embed.requires_grad_(False)  # fixed word2vec sentence vectors, as in the original work
        self.image_branch = mlp(cfg.feature_dim, cfg.hidden_dim, cfg.embed_dim, cfg.dropout)
        self.text_branch = mlp(cfg.word_dim, cfg.hidden_dim, cfg.embed_dim, cfg.dropout)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_branch(self.image_features(images)), dim=-1)  # [B, D]

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_branch(self.sentence_vectors(tokens)), dim=-1)  # [B, D]

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"image_embeds": self.encode_image(images), "text_embeds": self.encode_text(tokens)}

    def loss(self, out: dict[str, torch.Tensor], labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return contrastive_loss(out["image_embeds"], out["text_embeds"], labels, self.cfg.margin)


@register_model("siamese", margin=0.5, hidden_dim=1024, embed_dim=256)
def siamese(cfg: ModelConfig) -> Siamese:
    return Siamese(cfg)
