"""``python -m xmodal.train --model NAME [--data DIR] [--epochs N] [--device auto|cpu|cuda] ...``

Trains one registered model and writes ``checkpoints/<run-id>/`` (see ``xmodal.runs``). The best
weights are chosen on the validation split (caption-level rsum); the test split is evaluated once,
at the end, from those weights. Ctrl-C (or SIGTERM) stops cleanly after keeping the last completed
epoch; ``--resume DIR`` carries on from it. Under ``torchrun`` it trains with DistributedDataParallel.

The run reads as named phases, each a function below: parse the flags (``train_args``), plan the run
folder, open the data, claim the folder (one writer, a lock), build or restore the model (weights
before any feature extraction), extract the frozen features, write the run files, the epoch loop,
and finish (test once). Bad input stops before anything is written, with one line and exit code 2.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import distributed as dist
from .data import Catalogue, CatalogueError, describe_split, make_splits, open_catalogue, resolve_data
from .backbones import BACKBONES
from .distill import DistillConfig, distilled_backbone, needs_distillation
from .models import create_model, model_config, rebuild_model
from .pipeline import caption_groups, catalogue_features, evaluate_split
from .runs import (LOCK_FILE, MetricsLog, RunLock, RunLocked, atomic_write_json, new_run_id, read_best,
                   read_json, read_metrics, read_status, save_best, save_torch, write_status)
from .text import Vocab, word_vectors
from .train_args import ArgError, Args, TrainConfig, parse_args
from .training import PairDataset, make_loader, make_optimizer, reseed, train_one_epoch, use_bf16
from .training import steps_per_epoch as epoch_steps

__all__ = ["TrainConfig", "main"]

# Errors that are the user's input, not a bug: one line, exit code 2.
USER_ERRORS = (ArgError, CatalogueError, RunLocked)


class RunFolderError(ValueError):
    """A run folder that cannot be used as asked (exists, is not a run, is unreadable)."""


class Stop(Exception):
    """Raised inside the loop when SIGTERM asks the run to stop."""


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is an error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ArgError("--device cuda asked for, but no CUDA GPU is visible; use --device cpu or auto")
    return torch.device(name)


# ----------------------------------------------------------------------------------------------------
# Phase 1: plan the run folder (fresh, overwrite or resume); reads only.

@dataclass
class Plan:
    """Which run folder this command trains, and from where it starts."""

    cfg: TrainConfig
    run_dir: Path
    resuming: bool = False  # continuing a run folder (its config, vocab and splits)
    overwrite: bool = False  # replacing an existing folder of the same id
    checkpoint: dict | None = None  # last.pt of a resumed run (None: it restarts from epoch 1)
    saved: dict = field(default_factory=dict)  # the resumed run's config.json


def load_checkpoint(path: Path) -> dict:
    """``last.pt`` with ``weights_only=True``; a file that is not a safe, whole checkpoint is a ``RunFolderError``."""
    import pickle
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise RunFolderError(f"{path}: refused: this file is not a safe checkpoint (it holds Python objects "
                             "beyond tensors and numbers); delete it to restart the run from epoch 1, or "
                             "start a new run") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise RunFolderError(f"{path} cannot be read (truncated or corrupt: {str(err).splitlines()[0][:120]}); "
                             "delete it to restart the run from epoch 1, or start a new run") from None
    needed = {"model", "optimizer", "scheduler", "epoch", "best_rsum", "rng"}
    if not isinstance(state, dict) or not needed <= set(state):
        raise RunFolderError(f"{path} is not a resume checkpoint of xmodal (missing "
                             f"{sorted(needed - set(state) if isinstance(state, dict) else needed)}); delete "
                             "it to restart the run from epoch 1")
    return state


RUN_FILES = ("config.json", "vocab.json", "splits.json", "metrics.jsonl", "best.safetensors", "last.pt", "test.json")


def holds_a_run(run_dir: Path) -> bool:
    """True when ``run_dir`` has files of a run (a folder holding only a launcher's log and status is free)."""
    return run_dir.is_dir() and any((run_dir / name).exists() for name in RUN_FILES)


def plan_run(args: Args, check: bool = True) -> Plan:
    """Decide the run folder without writing anything (``check``: refuse an existing folder; DDP rank 0 only).

    Raises:
        RunFolderError: ``--run-id`` names an existing folder (without ``--overwrite``), or ``--resume``
            names something that is not a readable run folder.
    """
    if not args.resume:
        cfg = args.cfg
        cfg.run_id = cfg.run_id or new_run_id(cfg.model)
        run_dir = Path(cfg.out).expanduser() / cfg.run_id
        if run_dir.exists() and not run_dir.is_dir():
            raise RunFolderError(f"{run_dir} is a file, not a run folder; pick another --run-id")
        if check and holds_a_run(run_dir) and not args.overwrite:
            raise RunFolderError(f"run folder {run_dir} already exists; resume it with --resume {run_dir}, "
                                 "pick another --run-id, or replace it with --overwrite")
        return Plan(cfg, run_dir, overwrite=check and holds_a_run(run_dir))
    run_dir = Path(args.resume).expanduser()
    if not run_dir.is_dir():
        raise RunFolderError(f"--resume {run_dir}: no such run folder")
    try:
        saved = json.loads((run_dir / "config.json").read_text())
        if not isinstance(saved, dict) or not isinstance(saved.get("train"), dict):
            raise ValueError("no 'train' section")
        cfg = TrainConfig.from_saved(saved["train"])
    except FileNotFoundError:
        raise RunFolderError(f"--resume {run_dir}: not a run folder (no config.json)") from None
    except (ValueError, TypeError, OSError) as err:  # JSONDecodeError is a ValueError
        raise RunFolderError(f"--resume {run_dir}: config.json is unreadable or damaged ({err}); "
                             "this run cannot be resumed, start a new one") from None
    for name in ("vocab.json", "splits.json"):
        if not isinstance(read_json(run_dir / name), dict):
            raise RunFolderError(f"--resume {run_dir}: {name} is missing or damaged; start a new run")
    cfg.out, cfg.run_id = str(run_dir.parent), run_dir.name
    if args.cfg.epochs is not None and "epochs" in args.given:
        cfg.epochs = args.cfg.epochs
    if "device" in args.given:
        cfg.device = args.cfg.device
    checkpoint = load_checkpoint(run_dir / "last.pt") if (run_dir / "last.pt").is_file() else None
    return Plan(cfg, run_dir, resuming=True, checkpoint=checkpoint, saved=saved)


def already_finished(plan: Plan) -> bool:
    """A resumed run that has finished every asked-for epoch and has its test metrics."""
    if not plan.resuming or plan.checkpoint is None:
        return False
    done = int(plan.checkpoint["epoch"])
    want = plan.cfg.epochs or done
    return (read_status(plan.run_dir).get("state") == "finished" and (plan.run_dir / "test.json").is_file()
            and want <= done)


# ----------------------------------------------------------------------------------------------------
# Phase 2: open the data (catalogue, splits, vocabulary); reads only.

@dataclass
class Data:
    """The catalogue and everything derived from it that training needs."""

    cat: Catalogue
    splits: dict[str, np.ndarray]  # split -> catalogue positions
    split_source: str  # what made the split (csv column, seeded permutation)
    vocab: Vocab
    train_captions: list[str]
    groups: np.ndarray  # [N_train] caption group of each train item (CMPC classes)


def _split_source(cat: Catalogue, cfg: TrainConfig) -> str:
    """What made the split, as recorded (csv column, or the seeded title-grouped split)."""
    return describe_split(cat, grouping="title", fractions=cfg.split)


def open_data(plan: Plan) -> Data:
    """Load the catalogue and split it; a resumed run must see the same data and uses its recorded split.

    Raises:
        CatalogueError: the catalogue cannot be used, or a split is empty.
        RunFolderError: a resumed run's catalogue changed since it started.
    """
    cfg = plan.cfg
    cat = open_catalogue(cfg.data)
    if plan.resuming:
        recorded = plan.saved.get("data", {}).get("fingerprint")
        if recorded and recorded != cat.fingerprint:
            raise RunFolderError(f"the catalogue {cfg.data} changed since run {plan.run_dir.name} started "
                                 f"(fingerprint {cat.fingerprint} != {recorded}); a resumed run needs the same "
                                 "data: restore it, or start a new run")
        saved_splits = read_json(plan.run_dir / "splits.json")
        pos = {x: i for i, x in enumerate(cat.item_ids)}
        try:
            splits = {s: np.array(sorted(pos[x] for x in saved_splits[s]), dtype=np.int64)
                      for s in ("train", "val", "test")}
        except KeyError as err:
            raise RunFolderError(f"{plan.run_dir}/splits.json names item {err} that the catalogue lacks; "
                                 "start a new run") from None
        vocab = Vocab.load(plan.run_dir / "vocab.json")
        source = plan.saved.get("split", {}).get("source", "recorded split")
    else:
        splits = make_splits(cat, seed=cfg.split_seed, fractions=cfg.split, grouping="title")
        source = _split_source(cat, cfg)
        vocab = None
    sizes = {s: len(v) for s, v in splits.items()}
    if sizes["train"] < 2 or sizes["val"] < 1 or sizes["test"] < 1:
        raise CatalogueError(f"{cfg.data}: the split leaves {sizes['train']} train / {sizes['val']} val / "
                             f"{sizes['test']} test items; training needs at least 2 / 1 / 1 (add products, "
                             "or fix the csv's split column)")
    train_caps = [cat.captions[i] for i in splits["train"]]
    vocab = vocab or Vocab.build(train_caps)
    return Data(cat, splits, source, vocab, train_caps, caption_groups(train_caps))


# ----------------------------------------------------------------------------------------------------
# Phase 3: claim the run folder (create or replace it, one writer at a time).

def claim_run_folder(plan: Plan) -> RunLock:
    """Create (or, with ``--overwrite``, empty) the run folder and hold its lock.

    Raises:
        RunLocked: another live process holds the folder.
        RunFolderError: a new run's folder appeared meanwhile (another process took the id).
    """
    run_dir = plan.run_dir
    if not plan.resuming:  # a folder made by a launcher (the dashboard: its log and status only) is fine
        run_dir.mkdir(parents=True, exist_ok=True)
    lock = RunLock.acquire(run_dir, command=" ".join(sys.argv))
    if not plan.resuming and not plan.overwrite and holds_a_run(run_dir):  # another process got here first
        lock.release()
        raise RunFolderError(f"run folder {run_dir} already exists; pick another --run-id")
    if plan.overwrite:
        for child in run_dir.iterdir():
            if child.name in (LOCK_FILE, "train.log"):
                continue
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    return lock


# ----------------------------------------------------------------------------------------------------
# Phase 4: build or restore the model (its real weights before any feature is extracted).

def truncation_note(data: Data) -> str:
    """How much of the train captions the model reads (stated, never silent)."""
    t = data.vocab.truncation(data.train_captions)
    if not t["truncated"]:
        return f"every word read (at most {t['max_len']})"
    return (f"the first {t['max_len']} words read; {t['truncated']} of {t['captions']} train captions are longer "
            f"(up to {t['longest']} words) and truncated")


def model_overrides(cfg: TrainConfig, data: Data) -> dict:
    """Model config values that come from the flags and the data."""
    values = dict(vocab_size=len(data.vocab), word_dim=cfg.word_dim, num_classes=int(data.groups.max()) + 1,
                  embed_dim=cfg.embed_dim, image_size=cfg.image_size, cmpc_weight=cfg.cmpc_weight,
                  tune_blocks=cfg.tune_blocks)
    out = {**cfg.model_args, **{k: v for k, v in values.items() if v is not None}}
    if cfg.finetune:
        out["finetune"] = True
    return out


def build_model(plan: Plan, data: Data, ctx) -> torch.nn.Module:
    """A fresh model (pretrained backbone, word vectors), or a resumed one with ``last.pt``'s weights loaded.

    A resumed run without ``last.pt`` (stopped during epoch 1) is built fresh from its saved flags,
    which gives the same initialisation as its first start.
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
    with torch.random.fork_rng(devices=[]):  # building a throwaway backbone must not shift the seed
        distil = overrides.get("pretrained", True) and needs_distillation(backbone)
    note = None
    if distil:  # no pretrained weights here: a distilled start (cached) instead of a random network
        if not ctx.is_main:
            ctx.barrier()  # rank 0 distils first; the others then read its cache
        size = tuple(cfg.image_size or BACKBONES[backbone].default_size)
        with torch.random.fork_rng(devices=[]):
            state, note = distilled_backbone(backbone, data.cat, data.splits["train"], resolve_device(cfg.device)
                                             if ctx.world == 1 else ctx.device,
                                             DistillConfig(size=size, seed=cfg.seed), progress=ctx.is_main)
        if ctx.is_main:
            ctx.barrier()
    torch.manual_seed(cfg.seed + ctx.rank)  # the same initialisation whatever the caches held
    model = create_model(cfg.model, **overrides) if note is None else \
        create_model(cfg.model, **{**overrides, "weights_source": note})
    if note is not None:
        model.backbone.load_state_dict(state)
    if ctx.is_main:  # the same vectors on every rank come from the broadcast of the weights by DDP
        model.set_word_vectors(word_vectors(cfg.word_vectors, data.vocab, data.train_captions, cfg.word_dim,
                                            cfg.seed))
    return model


def frozen_epochs(cfg: TrainConfig, mcfg) -> int:
    """Epochs trained on cached frozen features (all of them unless the backbone fine-tunes)."""
    if not mcfg.finetune:
        return cfg.epochs
    return cfg.freeze_epochs if mcfg.weights_source else 0


def extract(model, data: Data, cfg: TrainConfig, ctx, device: torch.device, run_dir: Path) -> torch.Tensor | None:
    """Frozen backbone features of every item (rank 0 builds the cache, the others read it), if needed."""
    if frozen_epochs(cfg, model.cfg) == 0 and model.image_input != "features":
        return None
    features = None
    if ctx.is_main:
        write_status(run_dir, "running", phase="extracting image features (cached for later runs)")
        features = catalogue_features(model, data.cat, device)
    ctx.barrier()
    if not ctx.is_main:
        features = catalogue_features(model, data.cat, device, progress=False)
    return features


# ----------------------------------------------------------------------------------------------------
# Phase 5: the run files (config, vocabulary, splits) of a new run.

def write_run_files(plan: Plan, data: Data, model, ctx, device: torch.device) -> None:
    cfg, run_dir, mcfg = plan.cfg, plan.run_dir, model.cfg
    if plan.resuming:  # only the epochs (and device) may have changed
        saved = dict(plan.saved)
        saved["train"] = {**saved["train"], "epochs": cfg.epochs, "device": cfg.device}
        atomic_write_json(run_dir / "config.json", saved)
        return
    data.vocab.save(run_dir / "vocab.json")
    cat = data.cat
    atomic_write_json(run_dir / "splits.json", {s: [cat.item_ids[i] for i in idx] for s, idx in data.splits.items()})
    atomic_write_json(run_dir / "config.json", {
        "run_id": run_dir.name, "model": cfg.model, "created": time.time(), "train": asdict(cfg),
        "model_config": mcfg.to_dict(), "pretrained": mcfg.weights_source is not None,
        "data": {"path": str(resolve_data(cfg.data)), "name": cfg.data, "fingerprint": cat.fingerprint,
                 "items": len(cat), "report": cat.report.to_dict()},
        "split": {"seed": cfg.split_seed, "fractions": cfg.split, "grouping": "title",
                  "sizes": {s: len(v) for s, v in data.splits.items()}, "source": data.split_source},
        "text": data.vocab.truncation(data.train_captions),
        "world_size": ctx.world, "device": str(device), "torch": torch.__version__,
        "arithmetic": "bf16 autocast" if use_bf16(cfg.precision, device) else "fp32"})


# ----------------------------------------------------------------------------------------------------
# Phase 6: the epoch loop.

@dataclass
class LoopState:
    """Where the loop stands: restored from ``last.pt`` on resume."""

    start_epoch: int = 1
    best_rsum: float = -1.0
    train_seconds: float = 0.0  # training time of earlier sessions of this run


def restore(plan: Plan, opt, sched) -> LoopState:
    """Optimiser, scheduler and RNG state from ``last.pt`` (a fresh state without one)."""
    state = plan.checkpoint
    if state is None:
        return LoopState()
    try:
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
    except (ValueError, KeyError, RuntimeError) as err:
        raise RunFolderError(f"{plan.run_dir}/last.pt: optimiser state does not fit ({err}); start a new run") from None
    torch.set_rng_state(state["rng"])
    return LoopState(int(state["epoch"]) + 1, float(state["best_rsum"]), float(state.get("train_seconds", 0.0)))


def run_epochs(plan: Plan, data: Data, model, features, ctx, device: torch.device, stop_requested: list) -> LoopState:
    """Train from the restored epoch to ``cfg.epochs``, validating, keeping best and last after each epoch."""
    cfg, run_dir, mcfg = plan.cfg, plan.run_dir, model.cfg
    epochs, n_frozen = cfg.epochs, frozen_epochs(cfg, mcfg)
    model.to(device)
    if device.type == "cuda" and mcfg.finetune:
        model.to(memory_format=torch.channels_last)  # matches the channels_last input batches
    tokens = data.vocab.encode(data.cat.captions)  # [N, L]
    train_idx = torch.as_tensor(data.splits["train"])
    labels = torch.as_tensor(data.groups)
    dataset = {"features": PairDataset(features[train_idx] if features is not None else None,
                                       tokens[train_idx], labels),
               "pixels": PairDataset.from_images(data.cat, data.splits["train"], mcfg, tokens[train_idx], labels)}
    steps_per_epoch = epoch_steps(len(train_idx), cfg.batch_size // ctx.world, ctx.world)
    opt, sched = make_optimizer(model, cfg.lr, cfg.backbone_lr_scale, cfg.weight_decay,
                                total_steps=epochs * steps_per_epoch, warmup_frac=cfg.warmup_frac)
    ddp_model = ctx.wrap(model)
    loop = restore(plan, opt, sched)
    keep = [r for r in read_metrics(run_dir) if r.get("epoch", 0) < loop.start_epoch] if plan.resuming else []
    log = MetricsLog(run_dir / "metrics.jsonl", existing=keep) if ctx.is_main else None
    t_start = time.time()

    def on_step(epoch: int, step: int, terms: dict[str, float]) -> None:
        if stop_requested:
            raise Stop()
        if not ctx.is_main:
            return
        done = (epoch - loop.start_epoch) * steps_per_epoch + step
        total = (epochs - loop.start_epoch + 1) * steps_per_epoch
        log.add({"kind": "step", "epoch": epoch, "step": step, "global_step": (epoch - 1) * steps_per_epoch + step,
                 "lr": opt.param_groups[0]["lr"], "time": time.time(), **terms})
        if step % 5 == 0 or step == steps_per_epoch:
            write_status(run_dir, "running", phase="training", epoch=epoch, epochs=epochs, step=step,
                         steps_per_epoch=steps_per_epoch, loss=terms["loss"],
                         eta_s=(time.time() - t_start) / max(done, 1) * (total - done))

    loaders: dict = {}
    if plan.checkpoint is None:  # setup (feature extraction, a cold or warm cache) never changes training
        torch.manual_seed(cfg.seed + ctx.rank)
    for epoch in range(loop.start_epoch, epochs + 1):
        kind = "features" if epoch <= n_frozen else "pixels"
        model.set_backbone_trainable(pixels=kind == "pixels")
        if kind not in loaders:
            loaders[kind] = make_loader(dataset[kind], cfg.batch_size // ctx.world, ctx, seed=cfg.seed, device=device)
        reseed(loaders[kind], cfg.seed, epoch)
        train_one_epoch(ddp_model, model.loss, loaders[kind], opt, sched, device, epoch, on_step, ctx,
                        progress=ctx.is_main, amp=use_bf16(cfg.precision, device))
        if ctx.is_main:
            end_of_epoch(plan, data, model, features, device, log, opt, sched, loop, epoch,
                         lambda: loop.train_seconds + time.time() - t_start)
        ctx.barrier()
    loop.train_seconds += time.time() - t_start
    return loop


def end_of_epoch(plan: Plan, data: Data, model, features, device, log: MetricsLog, opt, sched, loop: LoopState,
                 epoch: int, train_seconds) -> None:
    """Validate, log, keep the best weights (with their record, as one file) and the resume state.

    ``train_seconds()`` is the run's training time so far (earlier sessions included).
    """
    run_dir = plan.run_dir
    val = evaluate_split(model, data.vocab, data.cat, data.splits["val"], device, features)
    rsum = val["caption"]["rsum"]
    log.add({"kind": "epoch", "epoch": epoch, "time": time.time(), "split": "val",
             **{f"val/{k}": v for k, v in val["caption"].items()},
             **{f"val_item/{k}": v for k, v in val["item"].items()}, **val["similarity"]})
    log.flush()
    if rsum > loop.best_rsum:
        loop.best_rsum = rsum
        save_best(run_dir, model.state_dict(), {"epoch": epoch, "val_rsum": rsum, "val": val})
    save_torch(run_dir / "last.pt", {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                     "scheduler": sched.state_dict(), "epoch": epoch, "best_rsum": loop.best_rsum,
                                     "rng": torch.get_rng_state(), "train_seconds": train_seconds()})
    print(f"[xmodal] epoch {epoch}/{plan.cfg.epochs}: val rsum {rsum:.1f} (caption-level), "
          f"t2i R@1 {val['caption']['text_to_image/R@1']:.1f}, "
          f"pos/neg sim {val['similarity']['pos_sim']:.2f}/{val['similarity']['neg_sim']:.2f}", file=sys.stderr)


# ----------------------------------------------------------------------------------------------------
# Phase 7: finish (the test split, once, from the best weights).

def finish(plan: Plan, data: Data, model, features, device: torch.device, loop: LoopState) -> None:
    from safetensors.torch import load_file
    run_dir, epochs = plan.run_dir, plan.cfg.epochs
    write_status(run_dir, "running", phase="testing the best checkpoint")
    model.load_state_dict(load_file(run_dir / "best.safetensors"))
    best = read_best(run_dir) or {}
    test = evaluate_split(model, data.vocab, data.cat, data.splits["test"], device, features,
                          train_captions=data.train_captions)
    atomic_write_json(run_dir / "test.json", {
        "split": "test", "split_source": data.split_source, "gallery_size": test["gallery_size"],
        "checkpoint": "best.safetensors",
        "chosen_on": f"validation caption-level rsum (epoch {best.get('epoch')}, rsum {best.get('val_rsum', 0):.1f})",
        "protocol": "1:1 gallery of the test split; item = only the item's own pair is correct; "
                    "caption = items with identical captions are all correct; unseen_title = caption-level, "
                    "only the queries whose title never occurs in the train split, same gallery",
        **test, "train_seconds": loop.train_seconds})
    write_status(run_dir, "finished", epoch=epochs, epochs=epochs)
    c = test["caption"]
    print(f"[xmodal] test (caption-level, {test['gallery_size']} items): "
          f"t2i R@1/5/10 {c['text_to_image/R@1']:.1f}/{c['text_to_image/R@5']:.1f}/{c['text_to_image/R@10']:.1f}, "
          f"i2t R@1/5/10 {c['image_to_text/R@1']:.1f}/{c['image_to_text/R@5']:.1f}/{c['image_to_text/R@10']:.1f}"
          + (f"\n[xmodal] unseen titles ({test['unseen_queries']} queries): t2i R@1/10 "
             f"{u['text_to_image/R@1']:.1f}/{u['text_to_image/R@10']:.1f}" if (u := test.get("unseen_title")) else "")
          + f"\n[xmodal] run folder: {run_dir}", file=sys.stderr)


# ----------------------------------------------------------------------------------------------------
# The command: the phases in order, and what the user sees when one fails.

def train(args: Args, stop_requested: list) -> int:
    """Run the phases for parsed ``args``; see the module docstring."""
    ctx = dist.setup(args.cfg.device)
    try:
        if not args.resume:  # one run id for every rank; rank 0 alone checks and claims the folder
            args.cfg.run_id = ctx.broadcast(args.cfg.run_id or new_run_id(args.cfg.model))
        plan = plan_run(args, check=ctx.is_main)
        if already_finished(plan):
            print(f"[xmodal] {plan.run_dir} has already finished its {plan.checkpoint['epoch']} epochs and has "
                  "its test metrics; nothing to do (pass a larger --epochs to train further)", file=sys.stderr)
            return 0
        device = ctx.device if ctx.world > 1 else resolve_device(plan.cfg.device)
        data = open_data(plan)
        torch.manual_seed(plan.cfg.seed + ctx.rank)
        np.random.seed(plan.cfg.seed)
        lock = claim_run_folder(plan) if ctx.is_main else None
        ctx.barrier()
        try:
            return _train_in_folder(plan, data, ctx, device, stop_requested)
        finally:
            if lock:
                lock.release()
    finally:
        ctx.close()


def _train_in_folder(plan: Plan, data: Data, ctx, device: torch.device, stop_requested: list) -> int:
    run_dir = plan.run_dir
    try:
        if ctx.is_main:
            write_status(run_dir, "running", phase="building the model")
        model = build_model(plan, data, ctx)
        mcfg = model.cfg
        plan.cfg.epochs = plan.cfg.epochs or (10 if mcfg.finetune else 30)
        if ctx.is_main:
            print(f"[xmodal] {plan.cfg.model}: backbone {mcfg.backbone} weights = "
                  f"{mcfg.weights_source or 'none: random initialisation, trained end to end'}; image size "
                  f"{mcfg.image_size}; {'fine-tuned' if mcfg.finetune else 'frozen (cached features)'}; "
                  f"split: {data.split_source}; captions: {truncation_note(data)}; training arithmetic: "
                  f"{'bf16 autocast' if use_bf16(plan.cfg.precision, device) else 'fp32'} ({plan.cfg.precision})"
                  + (f"; resuming after epoch {plan.checkpoint['epoch']}" if plan.checkpoint else
                     "; restarting from epoch 1 (no completed epoch was kept)" if plan.resuming else ""),
                  file=sys.stderr)
        features = extract(model, data, plan.cfg, ctx, device, run_dir)
        if ctx.is_main:
            write_run_files(plan, data, model, ctx, device)
        loop = run_epochs(plan, data, model, features, ctx, device, stop_requested)
        if ctx.is_main:
            finish(plan, data, model, features, device, loop)
        return 0
    except (KeyboardInterrupt, Stop):
        if ctx.is_main:
            write_status(run_dir, "stopped", message="stopped by the user; the last completed epoch is kept "
                         f"(resume: python -m xmodal.train --resume {run_dir})")
            print(f"\nstopped; resume with: python -m xmodal.train --resume {run_dir}", file=sys.stderr)
        return 130
    except BaseException as err:
        if ctx.is_main:
            _record_failure(run_dir, err)
        raise


def _record_failure(run_dir: Path, err: BaseException) -> None:
    """status.json says failed with the reason, error.log has the traceback (each best effort: the disk may be full)."""
    try:
        (run_dir / "error.log").write_text(traceback.format_exc())
    except OSError:
        pass
    try:
        write_status(run_dir, "failed", error=describe_error(err))
    except OSError:
        pass


def one_line(err: BaseException) -> str:
    """An error's message on one line (a catalogue report's details joined with '; ')."""
    return "; ".join(line.strip() for line in str(err).splitlines() if line.strip())


def describe_error(err: BaseException) -> str:
    """One line for the user."""
    import errno
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return (f"disk full while writing {err.filename or 'a run file'}: free some space, then resume with "
                "--resume (the last completed epoch is kept)")
    if isinstance(err, USER_ERRORS + (RunFolderError,)):
        return one_line(err)
    return f"{type(err).__name__}: {one_line(err)[:300]}"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("XMODAL_DEBUG", "") not in ("", "0")
    stop_requested: list[bool] = []

    def on_sigterm(*_):  # every file is written atomically, so stopping anywhere loses nothing
        stop_requested.append(True)
        raise Stop()
    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        return train(parse_args(argv), stop_requested)
    except (KeyboardInterrupt, Stop):  # before the run folder was claimed: nothing to keep
        print("\nstopped before training started; nothing was written", file=sys.stderr)
        return 130
    except USER_ERRORS + (RunFolderError,) as err:
        if debug:
            traceback.print_exc()
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - a bug or the environment: one line, the log has the rest
        if debug:
            traceback.print_exc()
        print(f"error: {describe_error(err)}; rerun with --debug (or XMODAL_DEBUG=1) for the traceback",
              file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
