"""Correlational Network: an autoencoder over both views (image features, sentence vectors) that
reconstructs each view from either and maximises the correlation of the single-view codes.
Retrieval compares the image-only code with the text-only code.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..losses import corrnet_loss
from .config import ModelConfig
from .registry import register_model
from .towers import CrossModalModel, Standardize


class CorrNet(CrossModalModel):
    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.word_embed.requires_grad_(False)
        self.norm_img = Standardize(cfg.feature_dim)  # both views standardised: one scale, common part removed
        self.norm_txt = Standardize(cfg.word_dim)
        self.enc_img = nn.Linear(cfg.feature_dim, cfg.embed_dim, bias=False)
        self.enc_txt = nn.Linear(cfg.word_dim, cfg.embed_dim, bias=False)
        self.code_bias = nn.Parameter(torch.zeros(cfg.embed_dim))
        self.dec_img = nn.Linear(cfg.embed_dim, cfg.feature_dim)
        self.dec_txt = nn.Linear(cfg.embed_dim, cfg.word_dim)

    def _views(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.norm_img(self.image_features(images)),
                self.norm_txt(self.sentence_vectors(tokens)))

    def _code(self, img: torch.Tensor | None, txt: torch.Tensor | None) -> torch.Tensor:
        h = self.code_bias
        if img is not None:
            h = h + self.enc_img(img)
        if txt is not None:
            h = h + self.enc_txt(txt)
        return torch.tanh(h)  # [B, D]

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self._code(self.norm_img(self.image_features(images)), None), dim=-1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(self._code(None, self.norm_txt(self.sentence_vectors(tokens))), dim=-1)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        img, txt = self._views(images, tokens)
        codes = {"both": self._code(img, txt), "img": self._code(img, None), "txt": self._code(None, txt)}
        out = {"view_img": img, "view_txt": txt, "code_img": codes["img"], "code_txt": codes["txt"],
               "image_embeds": F.normalize(codes["img"], dim=-1), "text_embeds": F.normalize(codes["txt"], dim=-1)}
        for source, h in codes.items():
            out[f"recon_{source}_img"] = self.dec_img(h)
            out[f"recon_{source}_txt"] = self.dec_txt(h)
        return out

    def loss(self, out: dict[str, torch.Tensor], labels: torch.Tensor) -> dict[str, torch.Tensor]:
        recon = {k[len("recon_"):]: v for k, v in out.items() if k.startswith("recon_")}
        return corrnet_loss(out["view_img"], out["view_txt"], recon, out["code_img"], out["code_txt"],
                            self.cfg.corr_weight)


@register_model("corrnet", embed_dim=256, corr_weight=1.0)
def corrnet(cfg: ModelConfig) -> CorrNet:
    return CorrNet(cfg)
