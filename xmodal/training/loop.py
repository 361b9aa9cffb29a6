"""The training loop's parts: datasets of pairs, loaders, optimiser and ``train_one_epoch``."""
from __future__ import annotations

import math
import os
import sys
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler, RandomSampler
from tqdm import tqdm

from ..image.backbones import ImageFiles, image_transform, loader_workers
from ..data import Catalogue
from ..models import ModelConfig


class PairDataset(Dataset):
    """(image, tokens, label) triples; the image is a cached feature row or a transformed picture."""

    def __init__(self, images: torch.Tensor | Dataset | None, tokens: torch.Tensor, labels: torch.Tensor):
        self.images = images
        self.tokens = tokens  # [N, L]
        self.labels = labels  # [N]

    @classmethod
    def from_images(cls, cat: Catalogue, index: np.ndarray, cfg: ModelConfig, tokens: torch.Tensor,
                    labels: torch.Tensor) -> "PairDataset":
        tf = image_transform(cfg.backbone, tuple(cfg.image_size), train=True)
        return cls(ImageFiles([cat.image_path(int(i)) for i in index], tf), tokens, labels)

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int | list[int]):
        if isinstance(i, list):  # a whole batch from a BatchSampler (in-memory datasets)
            return self.batch(i)
        return self.images[i], self.tokens[i], self.labels[i]

    @property
    def in_memory(self) -> bool:
        """True when the images are cached tensors: a batch is then one indexing, not a stack of items."""
        return isinstance(self.images, torch.Tensor)

    def batch(self, index: list[int]):
        """The batch at ``index`` in one go (in-memory datasets)."""
        idx = torch.as_tensor(index, dtype=torch.long)
        return self.images[idx], self.tokens[idx], self.labels[idx]


def make_loader(dataset: PairDataset, batch_size: int, ctx, seed: int, device: torch.device) -> DataLoader:
    """Shuffled batches (a DistributedSampler under DDP); workers only when images are decoded.

    Made once per run: decoding workers persist across epochs, and ``reseed`` gives each epoch its own
    shuffle, the same one on a resumed run. On CPU, see ``cpu_decoding_workers``.
    """
    decode = not dataset.in_memory
    workers = (cpu_decoding_workers() if device.type == "cpu" else loader_workers()) if decode else 0
    sampler = ctx.sampler(dataset, seed)
    if not decode:  # cached tensors: the batch sampler's indices fetch a whole batch at once
        sampler = BatchSampler(sampler or RandomSampler(dataset, generator=torch.Generator().manual_seed(seed)),
                               batch_size=max(batch_size, 1), drop_last=len(sampler or dataset) > batch_size)
        return DataLoader(dataset, sampler=sampler, batch_size=None, collate_fn=_as_is)
    if workers and device.type == "cpu":  # decoding workers and compute share the cores: leave them theirs
        torch.set_num_threads(max(1, (os.cpu_count() or 1) - workers))
    return DataLoader(dataset, batch_size=max(batch_size, 1), shuffle=sampler is None, sampler=sampler,
                      generator=torch.Generator().manual_seed(seed) if sampler is None else None,
                      drop_last=len(sampler or dataset) > batch_size, num_workers=workers,
                      pin_memory=device.type == "cuda", persistent_workers=workers > 0)


def cpu_decoding_workers() -> int:
    """Decoding worker processes for pixel training on CPU: one, with a core of its own, from four cores up;
    none below (decoding inline costs ~10% of a step, while giving a worker one of two cores halved the
    compute: 1.46x the bare step, measured on two cores)."""
    cores = os.cpu_count() or 1
    return 1 if cores >= 4 else 0


def steps_per_epoch(n: int, batch_size: int, world: int = 1) -> int:
    """Batches ``make_loader`` yields per epoch for ``n`` items (per rank under DDP)."""
    per_rank = n // world if world > 1 else n
    batch_size = max(batch_size, 1)
    return per_rank // batch_size if per_rank > batch_size else math.ceil(per_rank / batch_size)


def _as_is(batch):
    return batch


def reseed(loader: DataLoader, seed: int, epoch: int) -> None:
    """Fix this epoch's shuffle from ``seed`` and ``epoch``."""
    sampler = loader.sampler.sampler if isinstance(loader.sampler, BatchSampler) else loader.sampler
    if isinstance(sampler, DistributedSampler):
        sampler.set_epoch(epoch)
    elif isinstance(sampler, RandomSampler) and sampler.generator is not None:
        sampler.generator.manual_seed(seed + epoch)


def make_optimizer(model: nn.Module, lr: float, backbone_lr_scale: float, weight_decay: float,
                   total_steps: int, warmup_frac: float):
    """AdamW (backbone at a lower rate) with linear warmup then cosine decay, stepped per batch."""
    trains = model.cfg.finetune or model.cfg.tune_blocks > 0
    backbone = [p for p in model.backbone.parameters() if trains and (model.cfg.finetune or p.requires_grad)]
    ids = {id(p) for p in model.backbone.parameters()}
    heads = [p for p in model.parameters() if id(p) not in ids and p.requires_grad]
    groups = [{"params": heads, "lr": lr}]
    if backbone:  # a pretrained backbone moves slowly; one learning from scratch gets the full rate
        scale = backbone_lr_scale if model.cfg.weights_source else 1.0
        groups.append({"params": backbone, "lr": lr * scale})
    opt = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    warmup = max(1, int(total_steps * warmup_frac))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total_steps - warmup))))
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, schedule)


def cpu_has_amx() -> bool:
    """True when this CPU multiplies bf16 matrices in hardware (Intel AMX): bf16 autocast then halves the
    BiLSTM's step time (measured: 196 -> 98 ms at batch 128); without AMX it is emulated and slower."""
    try:
        return bool(torch._C._cpu._init_amx())
    except Exception:  # an older or other build: no claim
        return False


def use_bf16(precision: str, device: torch.device) -> bool:
    """Whether training runs under bf16 autocast: ``precision`` auto, fp32 or bf16 (see ``TrainConfig``)."""
    if precision == "auto":
        return device.type == "cuda" or (device.type == "cpu" and cpu_has_amx())
    return precision == "bf16"


class NonFiniteError(FloatingPointError):
    """Training produced a value that is not finite (loss, repeated gradients, or a weight): the run stops.

    ``kept`` is filled in by the command with what is left on disk (the last good checkpoint), so that the
    one line a user reads says both what went wrong and what survived.
    """

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message
        self.kept: str | None = None

    def __str__(self) -> str:
        return f"{self.message}; {self.kept}" if self.kept else self.message


MAX_SKIPPED_STEPS = 3  # steps in a row with a non-finite gradient norm that stop the run (fewer are skipped)
CLIP_NORM = 5.0  # the gradient clip's total 2-norm


def nonfinite_positions(tensors: list[torch.Tensor]) -> list[int]:
    """Positions in ``tensors`` of those holding a NaN or an infinity.

    One fused 2-norm over them all (``torch._foreach_norm``: NaN and inf propagate into it), one sync; each
    tensor is looked at alone only when that norm is not finite, which also tells a weight that overflowed
    the norm's squares (beyond ~1e19) from one that is not finite. On CPU the fused norm costs ~0.2 ns a
    value (its max-abs form was 20x slower, ``isfinite`` tensor by tensor 15x).
    """
    if not tensors:
        return []
    if bool(torch.stack(torch._foreach_norm(tensors)).isfinite().all()):
        return []
    return [i for i, t in enumerate(tensors) if not bool(t.detach().isfinite().all())]


def first_nonfinite(model: nn.Module, params: list[torch.Tensor]) -> str | None:
    """The name of the first of ``params`` (parameters of ``model``) holding a non-finite value; None when
    all are finite. Names are looked up only when something is wrong."""
    bad = {id(params[i]) for i in nonfinite_positions(params)}
    if not bad:
        return None
    names = (n.removeprefix("module.") for n, p in model.named_parameters() if id(p) in bad)
    return next(names, "an unnamed parameter")


def first_nonfinite_state(state: dict[str, torch.Tensor]) -> str | None:
    """The name of the first floating-point tensor of a state dict (parameters and buffers, e.g. batch norm
    statistics) holding a non-finite value; None when all are finite."""
    named = [(k, v) for k, v in state.items() if v.is_floating_point()]
    bad = nonfinite_positions([v for _, v in named])
    return named[bad[0]][0] if bad else None


def train_one_epoch(model: nn.Module, loss_fn: Callable, loader: DataLoader, opt: torch.optim.Optimizer,
                    sched, device: torch.device, epoch: int, on_step: Callable, ctx, progress: bool = True,
                    amp: bool | None = None) -> dict[str, float]:
    """One pass over ``loader``; ``on_step(epoch, step, terms)`` sees every step's loss terms.

    ``amp``: the forward under bf16 autocast (default: on CUDA only); the loss is computed in float32.

    Non-finite values stop the run rather than train on: a non-finite loss raises ``NonFiniteError`` at
    once; a step whose total gradient norm is not finite is skipped (no optimiser step, the schedule moves
    on; a warning names it) and ``MAX_SKIPPED_STEPS`` of them in a row raise; after every optimiser step the
    stepped parameters are checked (``first_nonfinite``) and a non-finite one raises, naming it, before any
    validation or checkpoint could see it.

    Returns:
        The mean of each loss term over the epoch, and ``skipped_steps``: steps not taken (gradient norm
        not finite).
    """
    model.train()
    # What the optimiser steps, less what is frozen now (a backbone thawed after frozen epochs is in the
    # optimiser from the start): the clip's parameters without walking the module tree (~0.5 ms a step here)
    params = [p for group in opt.param_groups for p in group["params"] if p.requires_grad]
    sums: dict[str, float] = {}
    skipped, in_a_row = 0, 0
    bar = tqdm(loader, desc=f"epoch {epoch}", unit="step", disable=not progress, leave=False)
    amp = device.type == "cuda" if amp is None else amp
    for step, (images, tokens, labels) in enumerate(bar, start=1):
        images = images.to(device, non_blocking=True)
        if amp and images.ndim == 4 and device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        length = int((tokens != 0).sum(1).max().clamp_min(1))
        tokens = tokens[:, :length].to(device, non_blocking=True)  # trim padding
        labels = labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = model(images, tokens)
        out, labels = ctx.gather(out, labels)  # DDP: the loss sees the global batch, as in one process
        terms = loss_fn({k: v.float() for k, v in out.items()}, labels)
        loss = sum(terms.values())
        if not torch.isfinite(loss):
            raise NonFiniteError(f"loss became {loss.item()} at epoch {epoch} step {step}; "
                                 "lower --lr or check the data")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, CLIP_NORM, foreach=True)
        if torch.isfinite(grad_norm):  # DDP: gradients are all-reduced, so every rank decides alike
            in_a_row = 0
            opt.step()
            bad = first_nonfinite(model, params)
            if bad is not None:
                raise NonFiniteError(f"parameter {bad} became non-finite after the optimiser step at epoch "
                                     f"{epoch} step {step}; lower --lr or check the data")
        else:  # the clip would scale every gradient by NaN: no step at all
            skipped, in_a_row = skipped + 1, in_a_row + 1
            if in_a_row >= MAX_SKIPPED_STEPS:
                raise NonFiniteError(f"gradient norm was {grad_norm.item()} for {in_a_row} steps in a row (epoch "
                                     f"{epoch}, steps {step - in_a_row + 1}-{step}); lower --lr or check the data")
            if ctx.is_main:
                tqdm.write(f"[xmodal] epoch {epoch} step {step}: gradient norm {grad_norm.item()}; step skipped "
                           f"({in_a_row} in a row; {MAX_SKIPPED_STEPS} stop the run)", file=sys.stderr)
        sched.step()
        values = ctx.mean({"loss": loss.detach(), **{k: v.detach() for k, v in terms.items()}})
        for k, v in values.items():
            sums[k] = sums.get(k, 0.0) + v
        bar.set_postfix(loss=f"{values['loss']:.4f}")
        on_step(epoch, step, values)
    return {**{k: v / max(1, len(loader)) for k, v in sums.items()}, "skipped_steps": float(skipped)}
