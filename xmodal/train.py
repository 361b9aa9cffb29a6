"""``python -m xmodal.train --model NAME [--data DIR] [--epochs N] [--device auto|cpu|cuda] ...``

Trains one registered model and writes ``checkpoints/<run-id>/`` (see ``xmodal.runs``). The best
weights are chosen on the validation split (caption-level rsum); the test split is evaluated once,
at the end, from those weights. Ctrl-C (or SIGTERM) stops cleanly after keeping the last completed
epoch; ``--resume DIR`` carries on from it. Under ``torchrun`` it trains with DistributedDataParallel.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import distributed as dist
from .data import make_splits, open_catalogue, resolve_data
from .models import create_model, list_models, rebuild_model
from .paths import checkpoints_dir
from .pipeline import caption_groups, catalogue_features, evaluate_split
from .runs import (MetricsLog, atomic_write_json, new_run_id, read_json, read_metrics, save_torch,
                   save_weights, write_status)
from .text import Vocab, word_vectors
from .training import PairDataset, make_loader, make_optimizer, reseed, train_one_epoch
from .training import steps_per_epoch as epoch_steps


@dataclass
class TrainConfig:
    """Everything a training run was asked for (saved in config.json as ``train``)."""

    model: str = "cmpm-efficientnet"  # registered model name
    data: str = "demo"  # catalogue folder, or "demo" for the built-in one
    epochs: int | None = None  # None: 30 on cached features, 10 when the backbone trains
    batch_size: int = 128  # global batch (split across DDP ranks)
    lr: float = 1e-3  # peak learning rate of the heads (AdamW, warmup then cosine)
    backbone_lr_scale: float = 0.1  # pretrained backbone lr = lr * this, when it trains (random init: 1)
    weight_decay: float = 1e-4  # AdamW weight decay
    warmup_frac: float = 0.05  # share of steps spent warming the learning rate up
    finetune: bool = False  # train the backbone end to end after the frozen epochs
    freeze_epochs: int = 0  # with --finetune: epochs on frozen cached features first (the paper's recipe)
    word_vectors: str = "word2vec"  # word2vec (trained on the train captions) or glove
    word_dim: int = 100  # word vector size for word2vec (GloVe is 50)
    embed_dim: int | None = None  # joint space size (None: the model's default)
    image_size: tuple[int, int] | None = None  # (height, width); None: the backbone's default
    cmpc_weight: float | None = None  # CMPC term weight for cmpm models (None: the model's default)
    tune_blocks: int | None = None  # frozen backbone: train its last N stages on cached maps (None: default)
    seed: int = 0  # initialisation and batch order
    split_seed: int = 0  # item-level train/val/test split
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)  # fractions when the csv has no split column
    device: str = "auto"  # auto, cpu or cuda
    download_weights: bool = False  # let timm fetch ImageNet weights from its hub (network needed)
    out: str | None = None  # where run folders go (None: $XMODAL_CHECKPOINTS, default ./checkpoints)
    run_id: str | None = None  # folder name (default: model-date-pid)
    model_args: dict = field(default_factory=dict)  # other model config fields (--set FIELD=VALUE)


def parse_args(argv: list[str] | None) -> tuple[TrainConfig, str | None]:
    p = argparse.ArgumentParser(prog="python -m xmodal.train", description=__doc__.split("\n\n")[1])
    p.add_argument("--model", choices=list_models(), default=TrainConfig.model)
    p.add_argument("--data", default="demo", help="catalogue folder, or 'demo' (default)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    p.add_argument("--lr", type=float, default=TrainConfig.lr)
    p.add_argument("--weight-decay", type=float, default=TrainConfig.weight_decay)
    p.add_argument("--finetune", action="store_true", help="train the backbone end to end")
    p.add_argument("--freeze-epochs", type=int, default=0, help="with --finetune: frozen epochs first")
    p.add_argument("--word-vectors", choices=["word2vec", "glove"], default="word2vec")
    p.add_argument("--embed-dim", type=int)
    p.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"))
    p.add_argument("--cmpc-weight", type=float)
    p.add_argument("--tune-blocks", type=int, help="train the backbone's last N stages on cached feature maps")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="any other model config field, e.g. --set margin=1.0 --set corr_weight=0.5")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--download-weights", action="store_true", help="allow timm hub downloads")
    p.add_argument("--out", help="folder for run folders (default: $XMODAL_CHECKPOINTS or ./checkpoints)")
    p.add_argument("--run-id")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run from its last epoch")
    a = p.parse_args(argv)
    model_args = {}
    for item in a.set:
        key, sep, value = item.partition("=")
        if not sep:
            p.error(f"--set expects FIELD=VALUE, got {item!r}")
        model_args[key.strip()] = json.loads(value) if value.strip()[:1] in "-0123456789[tfn" else value
    cfg = TrainConfig(model=a.model, data=a.data, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr,
                      weight_decay=a.weight_decay, finetune=a.finetune, freeze_epochs=a.freeze_epochs,
                      word_vectors=a.word_vectors, word_dim=50 if a.word_vectors == "glove" else 100,
                      embed_dim=a.embed_dim, image_size=tuple(a.image_size) if a.image_size else None,
                      cmpc_weight=a.cmpc_weight, tune_blocks=a.tune_blocks, seed=a.seed,
                      split_seed=a.split_seed, device=a.device,
                      download_weights=a.download_weights, out=a.out or str(checkpoints_dir()),
                      run_id=a.run_id, model_args=model_args)
    return cfg, a.resume


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is an error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda asked for, but no CUDA GPU is visible; use --device cpu or auto")
    return torch.device(name)


class Stop(Exception):
    """Raised inside the loop when SIGTERM asks the run to stop."""


def main(argv: list[str] | None = None) -> int:
    cfg, resume = parse_args(argv)
    if resume:
        saved = read_json(Path(resume) / "config.json")
        if not saved:
            raise SystemExit(f"error: {resume} is not a run folder (no config.json)")
        cfg = TrainConfig(**{**saved["train"], "split": tuple(saved["train"]["split"]),
                             "image_size": saved["train"]["image_size"] and tuple(saved["train"]["image_size"])})
        cfg.out, cfg.run_id = str(Path(resume).parent), Path(resume).name
    ctx = dist.setup(cfg.device)
    device = ctx.device if ctx.world > 1 else resolve_device(cfg.device)
    torch.manual_seed(cfg.seed + ctx.rank)
    np.random.seed(cfg.seed)

    if ctx.is_main:
        cfg.run_id = cfg.run_id or new_run_id(cfg.model)
    cfg.run_id = ctx.broadcast(cfg.run_id)
    run_dir = Path(cfg.out) / cfg.run_id
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_status(run_dir, "running", phase="loading data")

    stop_requested: list[bool] = []

    def on_sigterm(*_):  # every file is written atomically, so stopping anywhere loses nothing
        stop_requested.append(True)
        raise Stop()
    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        return _train(cfg, ctx, device, run_dir, resume is not None, stop_requested)
    except (KeyboardInterrupt, Stop):
        if ctx.is_main:
            write_status(run_dir, "stopped", message="stopped by the user; the last completed epoch is kept "
                         f"(resume: python -m xmodal.train --resume {run_dir})")
            print(f"\nstopped; resume with: python -m xmodal.train --resume {run_dir}", file=sys.stderr)
        return 130
    except Exception as err:
        if ctx.is_main:
            (run_dir / "error.log").write_text(traceback.format_exc())
            write_status(run_dir, "failed", error=f"{type(err).__name__}: {err}")
        raise
    finally:
        ctx.close()


def _train(cfg: TrainConfig, ctx, device: torch.device, run_dir: Path, resuming: bool, stop_requested) -> int:
    cat = open_catalogue(cfg.data)
    if ctx.is_main and cat.report.skipped:
        print(cat.report.summary(), file=sys.stderr)
    splits = make_splits(cat, seed=cfg.split_seed, fractions=cfg.split)
    if len(splits["train"]) < 2 or len(splits["val"]) < 1:
        raise ValueError(f"catalogue too small to split: {[len(v) for v in splits.values()]} (train/val/test)")
    train_caps = [cat.captions[i] for i in splits["train"]]
    if resuming:
        vocab = Vocab.load(run_dir / "vocab.json")
    else:
        vocab = Vocab.build(train_caps)
    groups = caption_groups(train_caps)  # train labels: identical captions share a class

    overrides = {**cfg.model_args}
    overrides.update({k: v for k, v in dict(
        vocab_size=len(vocab), word_dim=cfg.word_dim, num_classes=int(groups.max()) + 1, embed_dim=cfg.embed_dim,
        image_size=cfg.image_size, cmpc_weight=cfg.cmpc_weight, tune_blocks=cfg.tune_blocks).items() if v is not None})
    if cfg.finetune:
        overrides["finetune"] = True
    if cfg.download_weights:
        os.environ["XMODAL_ALLOW_DOWNLOAD"] = "1"
    if resuming:
        model = rebuild_model(cfg.model, read_json(run_dir / "config.json")["model_config"])
    else:
        model = create_model(cfg.model, **overrides)
        if ctx.is_main:  # the same vectors on every rank come from the broadcast of the weights by DDP
            model.set_word_vectors(word_vectors(cfg.word_vectors, vocab, train_caps, cfg.word_dim, cfg.seed))
    mcfg = model.cfg
    pretrained_note = mcfg.weights_source or "none: random initialisation, trained end to end"
    if ctx.is_main:
        print(f"[xmodal] {cfg.model}: backbone {mcfg.backbone} weights = {pretrained_note}; "
              f"image size {mcfg.image_size}; {'fine-tuned' if mcfg.finetune else 'frozen (cached features)'}",
              file=sys.stderr)
    epochs = cfg.epochs or (10 if mcfg.finetune else 30)
    cfg.epochs = epochs

    # Features for the frozen phase (rank 0 builds the cache, the others read it).
    frozen_epochs = epochs if not mcfg.finetune else (cfg.freeze_epochs if mcfg.weights_source else 0)
    features = None
    if frozen_epochs > 0 or model.image_input == "features":
        if ctx.is_main:
            write_status(run_dir, "running", phase="extracting image features (cached for later runs)")
            features = catalogue_features(model, cat, device)
        ctx.barrier()
        if not ctx.is_main:
            features = catalogue_features(model, cat, device, progress=False)

    if ctx.is_main and not resuming:
        vocab.save(run_dir / "vocab.json")
        atomic_write_json(run_dir / "splits.json", {s: [cat.item_ids[i] for i in idx] for s, idx in splits.items()})
        atomic_write_json(run_dir / "config.json", {
            "run_id": run_dir.name, "model": cfg.model, "created": time.time(), "train": asdict(cfg),
            "model_config": mcfg.to_dict(), "pretrained": mcfg.weights_source is not None,
            "data": {"path": str(resolve_data(cfg.data)), "name": cfg.data, "fingerprint": cat.fingerprint,
                     "items": len(cat), "report": cat.report.to_dict()},
            "split": {"seed": cfg.split_seed, "fractions": cfg.split, "sizes": {s: len(v) for s, v in splits.items()},
                      "source": "csv split column" if cat.split_column else "seeded permutation"},
            "world_size": ctx.world, "device": str(device), "torch": torch.__version__})

    model.to(device)
    if device.type == "cuda" and mcfg.finetune:
        model.to(memory_format=torch.channels_last)  # matches the channels_last input batches
    tokens = vocab.encode(cat.captions)  # [N, L]
    train_idx = torch.as_tensor(splits["train"])
    labels = torch.as_tensor(groups)
    dataset = {"features": PairDataset(features[train_idx] if features is not None else None,
                                       tokens[train_idx], labels),
               "pixels": PairDataset.from_images(cat, splits["train"], mcfg, tokens[train_idx], labels)}
    steps_per_epoch = epoch_steps(len(train_idx), cfg.batch_size // ctx.world, ctx.world)
    opt, sched = make_optimizer(model, cfg.lr, cfg.backbone_lr_scale, cfg.weight_decay,
                                total_steps=epochs * steps_per_epoch, warmup_frac=cfg.warmup_frac)
    ddp_model = ctx.wrap(model)

    start_epoch, best_rsum, log_rows = 1, -1.0, []
    if resuming:
        state = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start_epoch, best_rsum = int(state["epoch"]) + 1, float(state["best_rsum"])
        log_rows = [r for r in read_metrics(run_dir) if r.get("epoch", 0) < start_epoch]
        torch.set_rng_state(state["rng"])
    log = MetricsLog(run_dir / "metrics.jsonl", existing=log_rows) if ctx.is_main else None
    t_start = time.time()

    def on_step(epoch: int, step: int, terms: dict[str, float]) -> None:
        if stop_requested:
            raise Stop()
        if not ctx.is_main:
            return
        done = (epoch - start_epoch) * steps_per_epoch + step
        total = (epochs - start_epoch + 1) * steps_per_epoch
        elapsed = time.time() - t_start
        log.add({"kind": "step", "epoch": epoch, "step": step, "global_step": (epoch - 1) * steps_per_epoch + step,
                 "lr": opt.param_groups[0]["lr"], "time": time.time(), **terms})
        if step % 5 == 0 or step == steps_per_epoch:
            write_status(run_dir, "running", phase="training", epoch=epoch, epochs=epochs, step=step,
                         steps_per_epoch=steps_per_epoch, loss=terms["loss"],
                         eta_s=elapsed / max(done, 1) * (total - done))

    loaders: dict = {}
    for epoch in range(start_epoch, epochs + 1):
        use_features = epoch <= frozen_epochs
        kind = "features" if use_features else "pixels"
        model.set_backbone_trainable(pixels=not use_features)
        if kind not in loaders:
            loaders[kind] = make_loader(dataset[kind], cfg.batch_size // ctx.world, ctx, seed=cfg.seed, device=device)
        loader = loaders[kind]
        reseed(loader, cfg.seed, epoch)
        train_one_epoch(ddp_model, model.loss, loader, opt, sched, device, epoch, on_step, ctx,
                        progress=ctx.is_main)
        if ctx.is_main:
            val = evaluate_split(model, vocab, cat, splits["val"], device, features)
            rsum = val["caption"]["rsum"]
            log.add({"kind": "epoch", "epoch": epoch, "time": time.time(), "split": "val",
                     **{f"val/{k}": v for k, v in val["caption"].items()},
                     **{f"val_item/{k}": v for k, v in val["item"].items()},
                     **val["similarity"]})
            log.flush()
            if rsum > best_rsum:
                best_rsum = rsum
                save_weights(run_dir / "best.safetensors", model.state_dict(), {"epoch": str(epoch)})
                atomic_write_json(run_dir / "best.json", {"epoch": epoch, "val_rsum": rsum, "val": val})
            save_torch(run_dir / "last.pt", {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                             "scheduler": sched.state_dict(), "epoch": epoch,
                                             "best_rsum": best_rsum, "rng": torch.get_rng_state()})
            print(f"[xmodal] epoch {epoch}/{epochs}: val rsum {rsum:.1f} (caption-level), "
                  f"t2i R@1 {val['caption']['text_to_image/R@1']:.1f}, "
                  f"pos/neg sim {val['similarity']['pos_sim']:.2f}/{val['similarity']['neg_sim']:.2f}",
                  file=sys.stderr)
        ctx.barrier()

    if ctx.is_main:
        write_status(run_dir, "running", phase="testing the best checkpoint")
        from safetensors.torch import load_file
        model.load_state_dict(load_file(run_dir / "best.safetensors"))
        best = read_json(run_dir / "best.json")
        test = evaluate_split(model, vocab, cat, splits["test"], device, features)
        atomic_write_json(run_dir / "test.json", {
            "split": "test", "gallery_size": test["gallery_size"], "checkpoint": "best.safetensors",
            "chosen_on": f"validation caption-level rsum (epoch {best['epoch']}, rsum {best['val_rsum']:.1f})",
            "protocol": "1:1 gallery of the test split; item = only the item's own pair is correct; "
                        "caption = items with identical captions are all correct",
            **test, "train_seconds": time.time() - t_start})
        write_status(run_dir, "finished", epoch=epochs, epochs=epochs)
        c = test["caption"]
        print(f"[xmodal] test (caption-level, {test['gallery_size']} items): "
              f"t2i R@1/5/10 {c['text_to_image/R@1']:.1f}/{c['text_to_image/R@5']:.1f}/{c['text_to_image/R@10']:.1f}, "
              f"i2t R@1/5/10 {c['image_to_text/R@1']:.1f}/{c['image_to_text/R@5']:.1f}/{c['image_to_text/R@10']:.1f}"
              f"\n[xmodal] run folder: {run_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
