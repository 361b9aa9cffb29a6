"""Section 2 of ``python -m xmodal.bench``: one training step of every registered model through
``make_loader`` + ``train_one_epoch`` against the same step's arithmetic (forward, loss, backward, the loop's
gradient clip and finite checks, AdamW, the LR schedule) over the same batches, already in memory, with no loop
around it. Both run in the arithmetic the training command would use here (``--precision``'s default:
``$XMODAL_PRECISION``, else auto, which is bf16 autocast on CPUs with AMX); the row says which, and when that
is not fp32 the loop's fp32 step is shown beside it. A model that trains on pixels decodes and augments its
JPEGs every step; its limit adds that decoding, timed on one thread and spread over the step's cores (no loop
over files beats it).
"""
from __future__ import annotations

import gc

import numpy as np
import torch

from ..evaluation.metrics import title_groups
from ..models import create_model, list_models
from ..text.vocabulary import Vocab
from ..training.args import default_precision
from ..training.distributed import DistContext
from ..training.loop import (
    CLIP_NORM, PairDataset, first_nonfinite, make_loader, make_optimizer, train_one_epoch, use_bf16)
from .common import BenchConfig, Row, compare, ms, timed


def bench_training(cfg: BenchConfig, cat) -> list[Row]:
    """train_one_epoch over make_loader vs a bare forward+loss+backward+AdamW loop, per model."""
    index = np.arange(cfg.train_batch * cfg.train_steps) % len(cat)
    vocab = Vocab.build(cat.captions)
    tokens = vocab.encode(cat.captions)[torch.as_tensor(index)]  # [n, L]
    labels = torch.as_tensor(title_groups([cat.captions[i] for i in index]))
    rows = []
    for name in cfg.models or list_models():
        rows.append(_train_row(cfg, cat, name, len(vocab), index, tokens, labels))
        gc.collect()
    return rows


def _train_row(cfg: BenchConfig, cat, name: str, vocab_size: int, index: np.ndarray, tokens: torch.Tensor,
               labels: torch.Tensor) -> Row:
    """One model's training step, the real loop against the bare one, in the training command's arithmetic."""
    cpu, ctx, b, n = torch.device("cpu"), DistContext(), cfg.train_batch, len(index)
    bf16 = use_bf16(default_precision(), cpu)  # what python -m xmodal.train runs here without --precision
    arithmetic = "bf16 autocast" if bf16 else "fp32"
    torch.manual_seed(0)
    model = create_model(name, vocab_size=vocab_size, word_dim=100, num_classes=int(labels.max()) + 1)
    if model.image_input == "features":  # random rows stand in for the on-disk feature cache
        images = torch.randn(n, model.cfg.feature_dim)
        data, warm = PairDataset(images, tokens, labels), PairDataset(images[:b], tokens[:b], labels[:b])
    else:
        data = PairDataset.from_images(cat, index, model.cfg, tokens, labels)
        warm = PairDataset.from_images(cat, index[:b], model.cfg, tokens[:b], labels[:b])
        images = torch.stack([data.images[i] for i in range(n)])  # decoded once, for the bare loop
    opt, sched = make_optimizer(model, 1e-3, 0.1, 1e-4, total_steps=100 * cfg.train_steps, warmup_frac=0.05)

    def real(ds=data, amp=bf16):
        train_one_epoch(model, model.loss, make_loader(ds, b, ctx, 0, cpu), opt, sched, cpu, 1,
                        lambda *a: None, ctx, progress=False, amp=amp)

    batches = []
    for s in range(0, n, b):
        tok = tokens[s:s + b]
        length = int((tok != 0).sum(1).max().clamp_min(1))
        batches.append((images[s:s + b], tok[:, :length], labels[s:s + b]))  # trimmed as the loop does

    params = [p for group in opt.param_groups for p in group["params"] if p.requires_grad]

    def bare():  # the same arithmetic as the loop's step (its clip, finite checks and schedule included), no loop
        model.train()
        for x, tok, lab in batches:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = model(x, tok)
            loss = sum(model.loss({k: v.float() for k, v in out.items()}, lab).values())
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{name}: loss {loss.item()}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if torch.isfinite(torch.nn.utils.clip_grad_norm_(params, CLIP_NORM, foreach=True)):
                opt.step()
                first_nonfinite(model, params)
            sched.step()

    real(warm)  # warm-up: first LSTM/backbone calls, allocator
    # A round of steps of a few ms each is short enough for one hiccup of a busy machine to decide it: each
    # round repeats them to ~0.4 s.
    repeat = int(np.clip(np.ceil(0.4 / max(timed(bare, 1), 1e-6)), 1, 16))
    t_bare, t_real = (t / repeat for t in compare(lambda: [bare() for _ in range(repeat)],
                                                  lambda: [real() for _ in range(repeat)], cfg.reps))
    steps, step = cfg.train_steps, "fwd+loss+bwd+clip+AdamW+finite checks+schedule"
    reference = f"{ms(t_bare / steps)}/step (bare {step}, {arithmetic})"
    limit = t_bare
    if model.image_input == "pixels":  # the JPEGs' decoding and augmentation, spread over the step's cores
        decode = timed(lambda: [data.images[i] for i in range(n)], cfg.reps)
        limit = t_bare + decode / max(1, torch.get_num_threads())
        reference = (f"{ms(limit / steps)}/step = bare {step} ({arithmetic}) {ms(t_bare / steps)} "
                     f"+ decoding {ms(decode / steps)} on one thread over {torch.get_num_threads()} core(s)")
    measured = f"{ms(t_real / steps)}/step (train_one_epoch; {t_real / t_bare:.2f}x the bare step)"
    if bf16:  # what fp32 costs here, for comparison (the CLI's --precision fp32)
        real(warm, amp=False)
        t_fp32 = timed(lambda: [real(amp=False) for _ in range(repeat)], cfg.reps) / repeat
        measured += f"; in fp32 {ms(t_fp32 / steps)}/step"
    ratio = t_real / limit
    return Row("2 training", f"train step: {name} ({model.image_input}), batch {b}, {arithmetic} as the CLI here",
               measured, reference, f"{ratio:.2f}x", "<= 1.20x", ratio <= 1.20)
