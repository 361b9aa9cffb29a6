"""Shared building blocks: the image tower (backbone + projection input) and text encoders."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..image.backbones import BACKBONES, create_backbone, stem_forward, tail_forward, tail_modules
from ..text.vocabulary import PAD, UNK
from .config import ModelConfig


class CrossModalModel(nn.Module):
    """Base of every model: owns the image backbone and the word embedding.

    ``encode_image`` takes pixels ``[B, 3, H, W]`` or cached backbone features ``[B, F]``.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        # Rebuilding a saved model passes pretrained=False: its weights come from the checkpoint.
        backbone, source = create_backbone(cfg.backbone, pretrained=cfg.pretrained and cfg.weights_source is None)
        if cfg.pretrained and cfg.weights_source is None:
            cfg.weights_source = source
        if cfg.weights_source is None:
            cfg.finetune = True  # frozen random features mean nothing: always train end to end
        if cfg.image_size is None:
            spec = BACKBONES[cfg.backbone]
            cfg.image_size = spec.default_size if cfg.weights_source else spec.scratch_size
        cfg.feature_dim = getattr(backbone, "head_hidden_size", None) or backbone.num_features  # pooled output size
        self.cfg = cfg
        self.backbone = backbone
        if cfg.finetune:
            cfg.tune_blocks = 0  # the whole backbone trains
        self.set_backbone_trainable(pixels=cfg.finetune)
        self.word_embed = nn.Embedding(cfg.vocab_size, cfg.word_dim, padding_idx=PAD)

    @property
    def image_input(self) -> str:
        """``features`` when the backbone is frozen (train on the cache), else ``pixels``.

        Cached "features" are pooled vectors ``[N, F]``, or feature maps ``[N, C, h, w]`` when the last
        ``cfg.tune_blocks`` stages train.
        """
        return "pixels" if self.cfg.finetune else "features"

    def set_backbone_trainable(self, pixels: bool) -> None:
        """Fine-tuned models train the whole backbone on pixels (frozen while on cached features);
        tuned-tail models train their last stages; others keep the backbone frozen."""
        self.backbone.requires_grad_(self.cfg.finetune and pixels)
        if not self.cfg.finetune and self.cfg.tune_blocks:
            for module in tail_modules(self.backbone, self.cfg.tune_blocks):
                module.requires_grad_(True)

    def train(self, mode: bool = True):
        super().train(mode)
        if not self.cfg.finetune:  # frozen statistics: batch norm stays in eval mode
            self.backbone.eval()
        return self

    def set_word_vectors(self, vectors: np.ndarray) -> None:
        """Initialise the word embedding ``[V, word_dim]``."""
        if vectors.shape != tuple(self.word_embed.weight.shape):
            raise ValueError(f"word vectors {vectors.shape} do not fit embedding {tuple(self.word_embed.weight.shape)}")
        with torch.no_grad():
            self.word_embed.weight.copy_(torch.from_numpy(vectors))

    def drop_words(self, tokens: torch.Tensor) -> torch.Tensor:
        """Word dropout (Bowman et al., CoNLL 2016): in training, each word of ``tokens`` ``[B, L]``
        becomes ``<unk>`` with probability ``cfg.word_dropout``; padding stays. Captions of the train
        split have no unknown words, so without this ``<unk>`` would keep its random initial vector and a
        query word outside the vocabulary would steer the search at random."""
        p = self.cfg.word_dropout
        if not self.training or p <= 0:
            return tokens
        drop = (torch.rand(tokens.shape, device=tokens.device) < p) & (tokens != PAD)  # [B, L]
        return tokens.masked_fill(drop, UNK)

    def embed_words(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Word vectors ``[B, L, word_dim]`` of ``tokens`` ``[B, L]`` and the tokens as read (word dropout
        applied in training): the text input of the sequence encoders."""
        tokens = self.drop_words(tokens)
        return self.word_embed(tokens), tokens

    def sentence_vectors(self, tokens: torch.Tensor) -> torch.Tensor:
        """Mean word vector ``[B, word_dim]`` of the known words of ``tokens`` (word dropout applied in
        training): the text input of the bag-of-words models, whose word vectors are frozen."""
        return mean_word_vectors(self.word_embed, self.drop_words(tokens))

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features ``[B, F]`` from pixels ``[B, 3, H, W]``, cached feature maps
        ``[B, C, h, w]`` (tuned-tail models) or cached pooled features (returned as they are)."""
        if images.ndim == 2:
            return images.float()
        k = self.cfg.tune_blocks
        if images.shape[1] != 3:  # a cached map before the tuned stages
            return tail_forward(self.backbone, images.float(), k)
        if self.cfg.finetune:
            return self.backbone(images)  # [B, F]
        with torch.no_grad():
            if not k:
                return self.backbone(images)
            maps = stem_forward(self.backbone, images, k)
        return tail_forward(self.backbone, maps, k)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]


def mean_word_vectors(embed: nn.Embedding, tokens: torch.Tensor) -> torch.Tensor:
    """Sentence vectors ``[B, word_dim]``: mean of the word vectors of the known words.

    ``<unk>`` is left out like padding: with frozen vectors it cannot learn a meaning, and a mean over
    the known words estimates the sentence vector the full text would have had. (A zero vector for
    ``<unk>`` would instead pull the mean towards the origin, which the models' standardisation maps to
    a definite, misleading point.) A text without a known word gives the zero vector.
    """
    mask = (tokens > UNK).unsqueeze(-1).float()  # [B, L, 1]: neither padding nor unknown
    return (embed(tokens) * mask).sum(1) / mask.sum(1).clamp_min(1)


class BiLSTMText(nn.Module):
    """Word vectors -> BiLSTM -> max-pool over time -> ``[B, 2 * hidden]``."""

    def __init__(self, word_dim: int, hidden: int):
        super().__init__()
        self.lstm = nn.LSTM(word_dim, hidden, batch_first=True, bidirectional=True)
        self.out_dim = 2 * hidden

    def forward(self, words: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Max over the valid time steps of both directions, exactly as a packed sequence would give.

        The two directions run as two unpadded ``torch.lstm`` calls (the backward one over each caption's
        words reversed in place, padding left at the end) instead of one call on a ``PackedSequence``: packed
        input takes PyTorch's per-step CPU kernel, plain input the fused oneDNN one, faster in float32 and
        much faster under bf16 autocast. Same parameters, outputs equal to the packed path within 1e-5 (tested).
        """
        b, n = tokens.shape
        lengths = (tokens != PAD).sum(1).clamp_min(1)  # [B]
        steps = torch.arange(n, device=tokens.device).expand(b, n)
        valid = steps < lengths[:, None]  # [B, L]
        reverse = torch.where(valid, lengths[:, None] - 1 - steps, steps)  # a permutation of each row
        lstm, h = self.lstm, self.lstm.hidden_size
        zeros = words.new_zeros(1, b, h)
        fwd = torch.lstm(words, (zeros, zeros), [lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0,
                                                 lstm.bias_hh_l0], True, 1, 0.0, self.training, False, True)[0]
        flipped = words.gather(1, reverse[..., None].expand(-1, -1, words.shape[-1]))
        bwd = torch.lstm(flipped, (zeros, zeros), [lstm.weight_ih_l0_reverse, lstm.weight_hh_l0_reverse,
                                                   lstm.bias_ih_l0_reverse, lstm.bias_hh_l0_reverse],
                         True, 1, 0.0, self.training, False, True)[0]
        bwd = bwd.gather(1, reverse[..., None].expand(-1, -1, h))  # back in word order
        out = torch.cat([fwd, bwd], -1).masked_fill(~valid[..., None], float("-inf"))  # [B, L, 2H]
        return out.max(1).values  # [B, 2H]


class Standardize(nn.Module):
    """Per-dimension standardisation with running statistics of the training inputs.

    Sentence vectors averaged from word vectors share one large common direction (mean cosine ~0.99
    between the demo's captions); removing the corpus mean and scale exposes what tells them apart.
    Unlike batch norm it normalises with the running statistics in training too, so a batch of one works.
    """

    def __init__(self, dim: int, momentum: float = 0.01, eps: float = 1e-5):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("var", torch.ones(dim))
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))
        self.momentum, self.eps = momentum, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            with torch.no_grad():
                mean = x.mean(0)
                var = x.var(0, unbiased=False) if x.shape[0] > 1 else self.var
                m = 1.0 if self.seen == 0 else self.momentum  # the first batch sets the statistics
                self.mean.lerp_(mean, m)
                self.var.lerp_(var, m)
                self.seen += 1
        return (x - self.mean) / torch.sqrt(self.var + self.eps)


def mlp(in_dim: int, hidden: int, out_dim: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(Standardize(in_dim), nn.Dropout(dropout), nn.Linear(in_dim, hidden), nn.GELU(),
                         nn.Linear(hidden, out_dim))
