"""Phase 4 of ``python -m xmodal.train``: build the model, or restore a resumed one, with its real weights
(pretrained or distilled backbone, word vectors) before any feature is extracted; and the device it runs on.
"""
from __future__ import annotations

import os

import torch

from ..image.backbones import BACKBONES, hub_reachable, hub_weights_cached
from ..image.distill import DistillConfig, distilled_backbone, needs_distillation
from ..models import create_model, model_config, rebuild_model
from ..text.vocabulary import fasttext_vectors, word_vectors
from .args import ArgError, TrainConfig
from .plan import Data, Plan, RunFolderError


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is an error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ArgError("--device cuda asked for, but no CUDA GPU is visible; use --device cpu or auto")
    return torch.device(name)


def truncation_note(data: Data) -> str:
    """How much of the train captions the model reads (stated, never silent)."""
    t = data.vocab.truncation(data.train_captions)
    if not t["truncated"]:
        return f"every word read (at most {t['max_len']})"
    return (f"the first {t['max_len']} words read; {t['truncated']} of {t['captions']} train captions are longer "
            f"(up to {t['longest']} words) and truncated")


def weights_choice(cfg: TrainConfig) -> str:
    """Where the backbone's weights are asked to come from (``--set weights_source``): auto, hub or distilled."""
    return cfg.model_args.get("weights_source") or "auto"


def _set_fields(cfg: TrainConfig) -> dict:
    """``--set`` model config fields, less the weights choice (the model config records the actual source)."""
    return {k: v for k, v in cfg.model_args.items() if k != "weights_source"}


def check_weights_source(cfg: TrainConfig) -> None:
    """A forced hub start must be possible here, checked before anything is written: the weights in timm's
    local cache, or the hub reachable (``hub_reachable``: at once when offline, else one probe of at most ~3.5 s).

    Raises:
        ArgError: neither; the message says what to do.
    """
    if weights_choice(cfg) != "hub":
        return
    backbone = model_config(cfg.model, **_set_fields(cfg)).backbone
    if hub_weights_cached(backbone) or hub_reachable():
        return
    raise ArgError(f"--set weights_source=hub: timm's hub is not reachable from here and its local cache holds no "
                   f"{BACKBONES[backbone].timm_name} weights; connect this machine (HF_HUB_OFFLINE unset), or use "
                   "--set weights_source=distilled")


def model_overrides(cfg: TrainConfig, data: Data) -> dict:
    """Model config values that come from the flags and the data."""
    values = dict(vocab_size=len(data.vocab), word_dim=cfg.word_dim, num_classes=int(data.groups.max()) + 1,
                  embed_dim=cfg.embed_dim, image_size=cfg.image_size, cmpc_weight=cfg.cmpc_weight,
                  tune_blocks=cfg.tune_blocks)
    out = {**_set_fields(cfg), **{k: v for k, v in values.items() if v is not None}}
    if out.get("attr_weight"):  # auxiliary attribute heads: their class counts come from the train split
        out["attr_classes"] = dict(data.attributes[0])
    if cfg.finetune:
        out["finetune"] = True
    return out


def build_model(plan: Plan, data: Data, ctx, status=None) -> torch.nn.Module:
    """A fresh model (pretrained backbone, word vectors), or a resumed one with ``last.pt``'s weights loaded.

    ``status`` (a ``StatusReporter``) is told the distillation's progress, when there is one.

    A resumed run without ``last.pt`` (stopped during epoch 1) is built fresh from its saved flags,
    which gives the same initialisation as its first start. A backbone without packaged weights starts from
    the hub or from distillation as ``weights_choice`` says (auto: the hub where it has them).
    """
    cfg = plan.cfg
    if cfg.download_weights:
        os.environ["XMODAL_ALLOW_DOWNLOAD"] = "1"
    if plan.checkpoint is not None:
        model = rebuild_model(cfg.model, plan.saved["model_config"])
        try:
            model.load_state_dict(plan.checkpoint["model"])
        except RuntimeError as err:
            raise RunFolderError(f"{plan.run_dir}/last.pt does not fit the run's model "
                                 f"({str(err).splitlines()[0][:160]}); start a new run") from None
        return model
    overrides = model_overrides(cfg, data)
    backbone = model_config(cfg.model, **overrides).backbone
    choice = weights_choice(cfg)
    if choice == "auto":
        with torch.random.fork_rng(devices=[]):  # building a throwaway backbone must not shift the seed
            distil = overrides.get("pretrained", True) and needs_distillation(backbone)
    else:  # forced: distilled never asks the hub
        distil = choice == "distilled"
    note = None
    if distil:  # no pretrained weights here: a distilled start (cached) instead of a random network
        if not ctx.is_main:
            ctx.barrier()  # rank 0 distils first; the others then read its cache
        size = tuple(cfg.image_size or BACKBONES[backbone].default_size)
        with torch.random.fork_rng(devices=[]):
            state, note = distilled_backbone(backbone, data.cat, data.splits["train"], resolve_device(cfg.device)
                                             if ctx.world == 1 else ctx.device,
                                             DistillConfig(size=size, seed=cfg.seed), progress=ctx.is_main,
                                             reporter=status if ctx.is_main else None)
        if ctx.is_main:
            ctx.barrier()
    torch.manual_seed(cfg.seed + ctx.rank)  # the same initialisation whatever the caches held
    model = create_model(cfg.model, **overrides) if note is None else \
        create_model(cfg.model, **{**overrides, "weights_source": note})
    if note is not None:
        model.backbone.load_state_dict(state)
    if choice == "hub" and "timm hub" not in (model.cfg.weights_source or ""):
        raise ArgError(f"--set weights_source=hub: no ImageNet weights for {backbone} came from timm's hub (the "
                       "download failed); try again, or use --set weights_source=distilled")
    vectors = None
    if cfg.word_vectors == "fasttext":  # every rank encodes captions: each reads unseen words through the table
        vectors, subwords = fasttext_vectors(data.vocab, data.train_captions, cfg.word_dim, cfg.seed)
        data.vocab.attach_subwords(subwords)  # saved with vocab.json (Vocab.save)
    if ctx.is_main:  # the same vectors on every rank come from the broadcast of the weights by DDP
        model.set_word_vectors(vectors if vectors is not None else
                               word_vectors(cfg.word_vectors, data.vocab, data.train_captions, cfg.word_dim, cfg.seed))
    return model


def frozen_epochs(cfg: TrainConfig, mcfg) -> int:
    """Epochs trained on cached frozen features (all of them unless the backbone fine-tunes)."""
    if not mcfg.finetune:
        return cfg.epochs
    return cfg.freeze_epochs if mcfg.weights_source else 0
