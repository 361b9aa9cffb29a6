"""The model configuration shared by every registered model."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model (saved beside its weights as JSON)."""

    backbone: str = "efficientnet"  # image backbone name, see xmodal.image.backbones.BACKBONES
    pretrained: bool = True  # ask for ImageNet weights for the backbone
    weights_source: str | None = None  # where the backbone's weights came from (None: random init)
    finetune: bool = False  # train the backbone end to end (else frozen, features cached on disk)
    tune_blocks: int = 0  # frozen backbone only: train its last N stages (+ head conv) on cached feature maps
    image_size: tuple[int, int] | None = None  # (height, width) fed to the backbone; None: its default
    feature_dim: int = 1280  # pooled backbone feature size (filled in from the backbone)
    vocab_size: int = 2  # words in the vocabulary incl. <pad>, <unk> (filled in from the data)
    word_dim: int = 100  # word vector size (GloVe 6B 50d forces 50)
    embed_dim: int = 512  # size of the joint embedding space
    hidden_dim: int = 1024  # hidden width of the MLP branches (siamese)
    lstm_dim: int = 512  # BiLSTM hidden size per direction (cmpm, infonce)
    dropout: float = 0.2  # dropout before the projections
    image_mlp: int = 0  # dual encoders: hidden width of a two-layer image head (0: one linear layer)
    word_dropout: float = 0.1  # training only: share of words replaced by <unk>, so <unk> means "a word I do not know"
    margin: float = 0.5  # contrastive margin on euclidean distance of unit vectors (siamese)
    corr_weight: float = 1.0  # lambda, weight of the correlation term (corrnet)
    cmpc_weight: float = 0.0  # weight of the CMPC classification term, 0 disables it (cmpm)
    num_classes: int = 0  # caption groups in the train split, for CMPC (filled in from the data)
    init_logit_scale: float = math.log(1 / 0.07)  # initial log inverse temperature (infonce)
    hard_weight: float = 0.0  # dual encoders: weight of a VSE++ max-violation hinge on the hardest negative (0: off)
    hard_margin: float = 0.2  # its margin on cosine similarity
    hard_warmup: float = 0.2  # share of training before the hinge is on (VSE++ warms up without it)
    attr_weight: float = 0.0  # dual encoders: weight of auxiliary attribute classification (0: off)
    attr_classes: dict[str, int] = field(default_factory=dict)  # attribute column -> classes (filled from the data)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model config keys {sorted(unknown)}; known: {sorted(known)}")
        data = dict(data)
        if data.get("image_size") is not None:
            data["image_size"] = tuple(data["image_size"])
        return cls(**data)
