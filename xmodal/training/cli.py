"""``python -m xmodal.train --model NAME [--data DIR] [--epochs N] [--device auto|cpu|cuda] ...``

Trains one registered model and writes ``checkpoints/<run-id>/`` (see ``xmodal.runs``). The best
weights are chosen on the validation split (caption-level rsum); the test split is evaluated once,
at the end, from those weights. Ctrl-C (or SIGTERM) stops cleanly after keeping the last completed
epoch; ``--resume DIR`` carries on from it. Under ``torchrun`` it trains with DistributedDataParallel.

The run reads as named phases, each a function: parse the flags (``train_args``); plan the run folder,
open the data and claim the folder, one writer under a lock (``train_plan``); build or restore the model,
weights before any feature extraction (``train_model``); then, here, extract the frozen features, write
the run files, the epoch loop, and finish (test once). Bad input stops before anything is written, with
one line and exit code 2. Non-finite values stop the run (``training.train_one_epoch``): a weight that is
not finite after an optimiser step is never validated, chosen or saved; status.json says failed, naming it,
the last good checkpoint stays, and no test.json is written.
"""
from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from . import distributed as dist
from ..data import CatalogueError, resolve_data
from ..models.embed import catalogue_features
from ..evaluation.scoring import evaluate_split
from .provenance import collect
from .snapshots import snapshot_epoch
from ..runs import (BackgroundWriter, MetricsLog, atomic_write_json, new_run_id, read_best, read_metrics,
                    save_best, save_torch, snapshot, write_status)
from .args import Args, TrainConfig, parse_args
from .loop import (NonFiniteError, PairDataset, first_nonfinite_state, make_loader, make_optimizer, reseed,
                   train_one_epoch, use_bf16)
from .loop import steps_per_epoch as epoch_steps
from .build import build_model, check_weights_source, frozen_epochs, resolve_device, truncation_note
from .plan import (Data, Plan, RunFolderError, already_finished, claim_run_folder, open_data, plan_run,
                   train_labels)
from .errors import USER_ERRORS, describe_error, kept_note, one_line, record_failure
from .tblog import TeeLog, TensorBoardLog, write_projector
from .status import StatusReporter, catalogue_check_estimate, features_cached, owns_status

__all__ = ["TrainConfig", "main"]



class Stop(Exception):
    """Raised inside the loop when SIGTERM asks the run to stop."""


# ----------------------------------------------------------------------------------------------------
# Phase 4, continued: the frozen features, if the model trains on them (the model itself: ``train_model``).

def extract(model, data: Data, cfg: TrainConfig, ctx, device: torch.device, status: StatusReporter
            ) -> torch.Tensor | None:
    """Frozen backbone features of every item (rank 0 builds the cache, the others read it), if needed."""
    if frozen_epochs(cfg, model.cfg) == 0 and model.image_input != "features":
        return None
    features = None
    if ctx.is_main:
        if features_cached(model, data.cat, device):
            status.phase("image features: cached by an earlier run, reading them", cached=True)
        else:
            status.phase(f"extracting the image features of {len(data.cat):,} photos (cached for later runs)",
                         bar="image features")
        features = catalogue_features(model, data.cat, device)
    ctx.barrier()
    if not ctx.is_main:
        features = catalogue_features(model, data.cat, device, progress=False)
    return features


# ----------------------------------------------------------------------------------------------------
# Phase 5: the run files (config, vocabulary, splits) of a new run.

def write_run_files(plan: Plan, data: Data, model, ctx, device: torch.device) -> None:
    cfg, run_dir, mcfg = plan.cfg, plan.run_dir, model.cfg
    arithmetic = "bf16 autocast" if use_bf16(cfg.precision, device) else "fp32"
    provenance = collect(f"training: {arithmetic} on {device.type} (--precision {cfg.precision})")
    if plan.resuming:  # only the epochs (and device) may have changed; each session's provenance is kept
        saved = dict(plan.saved)
        saved["train"] = {**saved["train"], "epochs": cfg.epochs, "device": cfg.device}
        saved["resumed"] = [*saved.get("resumed", []), {"time": time.time(), "provenance": provenance}]
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
        "world_size": ctx.world, "device": str(device), "torch": torch.__version__, "arithmetic": arithmetic,
        "provenance": provenance})


# ----------------------------------------------------------------------------------------------------
# Phase 6: the epoch loop.

@dataclass
class LoopState:
    """Where the loop stands: restored from ``last.pt`` on resume."""

    start_epoch: int = 1
    best_rsum: float = -1.0
    train_seconds: float = 0.0  # training time of earlier sessions of this run
    val_seconds: float | None = None  # how long the last validation took (foretells the test's length)
    recorded_seconds: float | None = None  # as the last checkpoint holds it: test.json's figure, a resume's start
    writer: BackgroundWriter | None = field(default=None, repr=False)  # the checkpoints' writes (rank 0)


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


def run_epochs(plan: Plan, data: Data, model, features, ctx, device: torch.device, stop_requested: list,
               writer: BackgroundWriter, status: StatusReporter) -> LoopState:
    """Train from the restored epoch to ``cfg.epochs``, validating, keeping best and last after each epoch."""
    cfg, run_dir, mcfg = plan.cfg, plan.run_dir, model.cfg
    epochs, n_frozen = cfg.epochs, frozen_epochs(cfg, mcfg)
    model.to(device)
    if device.type == "cuda" and mcfg.finetune:
        model.to(memory_format=torch.channels_last)  # matches the channels_last input batches
    tokens = data.vocab.encode(data.cat.captions)  # [N, L]
    train_idx = torch.as_tensor(data.splits["train"])
    labels = train_labels(data, mcfg)  # [N] caption groups, or [N, 1 + A] with attribute classes
    dataset = {"features": PairDataset(features[train_idx] if features is not None else None,
                                       tokens[train_idx], labels),
               "pixels": PairDataset.from_images(data.cat, data.splits["train"], mcfg, tokens[train_idx], labels)}
    steps_per_epoch = epoch_steps(len(train_idx), cfg.batch_size // ctx.world, ctx.world)
    opt, sched = make_optimizer(model, cfg.lr, cfg.backbone_lr_scale, cfg.weight_decay,
                                total_steps=epochs * steps_per_epoch, warmup_frac=cfg.warmup_frac)
    ddp_model = ctx.wrap(model)
    loop = restore(plan, opt, sched)
    loop.writer = writer
    keep = [r for r in read_metrics(run_dir) if r.get("epoch", 0) < loop.start_epoch] if plan.resuming else []
    log = MetricsLog(run_dir / "metrics.jsonl", existing=keep) if ctx.is_main else None
    if log is not None and cfg.log == "tensorboard":  # every row mirrored to <run>/tensorboard
        log = TeeLog(log, TensorBoardLog(run_dir, asdict(cfg)))
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
            status.write(phase="training", epoch=epoch, epochs=epochs, step=step, steps_per_epoch=steps_per_epoch,
                         loss=terms["loss"], done=done, total=total, unit="steps",
                         eta_s=max(0.0, (time.time() - t_start) / max(done, 1) * (total - done)))

    loaders: dict = {}
    if plan.checkpoint is None:  # setup (feature extraction, a cold or warm cache) never changes training
        torch.manual_seed(cfg.seed + ctx.rank)
    for epoch in range(loop.start_epoch, epochs + 1):
        kind = "features" if epoch <= n_frozen else "pixels"
        model.set_backbone_trainable(pixels=kind == "pixels")
        if kind not in loaders:
            loaders[kind] = make_loader(dataset[kind], cfg.batch_size // ctx.world, ctx, seed=cfg.seed, device=device)
        reseed(loaders[kind], cfg.seed, epoch)
        model.progress = (epoch - 1) / epochs  # losses that warm up read it (the hard-negative hinge)
        means = train_one_epoch(ddp_model, model.loss, loaders[kind], opt, sched, device, epoch, on_step, ctx,
                                progress=ctx.is_main, amp=use_bf16(cfg.precision, device))
        if ctx.is_main:
            end_of_epoch(plan, data, model, features, device, log, opt, sched, loop, epoch,
                         lambda: loop.train_seconds + time.time() - t_start, int(means["skipped_steps"]))
        ctx.barrier()
    loop.train_seconds = loop.recorded_seconds or loop.train_seconds + time.time() - t_start
    if isinstance(log, TeeLog):  # the last epoch's snapshot goes to TensorBoard's projector
        write_projector(log.board, run_dir, data.cat)
        log.board.close()
    return loop


def end_of_epoch(plan: Plan, data: Data, model, features, device, log: MetricsLog, opt, sched, loop: LoopState,
                 epoch: int, train_seconds, skipped_steps: int = 0) -> None:
    """Validate, log, keep the best weights (with their record, as one file) and the resume state; weights
    that are not finite raise ``NonFiniteError`` first. ``train_seconds()``: training time so far, all sessions."""
    run_dir = plan.run_dir
    bad = first_nonfinite_state(model.state_dict())
    if bad is not None:
        raise NonFiniteError(f"{bad} is not finite at the end of epoch {epoch}; lower --lr or check the data")
    t_val = time.time()
    val = evaluate_split(model, data.vocab, data.cat, data.splits["val"], device, features)
    loop.val_seconds = time.time() - t_val
    if plan.cfg.snapshots:  # the joint space over epochs: a fixed sample of validation, every epoch
        snapshot_epoch(run_dir, epoch, plan.cfg, data, model, device, features)
    rsum = val["caption"]["rsum"]
    log.add({"kind": "epoch", "epoch": epoch, "time": time.time(), "split": "val", "skipped_steps": skipped_steps,
             **{f"val/{k}": v for k, v in val["caption"].items()},
             **{f"val_item/{k}": v for k, v in val["item"].items()}, **val["similarity"]})
    log.flush()
    best = None
    if rsum > loop.best_rsum:
        loop.best_rsum = rsum
        best = snapshot(model.state_dict()), {"epoch": epoch, "val_rsum": rsum, "val": val}
    loop.recorded_seconds = train_seconds()
    last = snapshot({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                     "epoch": epoch, "best_rsum": loop.best_rsum, "rng": torch.get_rng_state(),
                     "train_seconds": loop.recorded_seconds})

    def write() -> None:  # best first: a last.pt never points past the best weights on disk
        if best is not None:
            save_best(run_dir, *best)
        save_torch(run_dir / "last.pt", last)
    loop.writer.submit(write)  # written while the next epoch trains (copies: the next steps cannot touch them)
    print(f"[xmodal] epoch {epoch}/{plan.cfg.epochs}: val rsum {rsum:.1f} (caption-level), "
          f"t2i R@1 {val['caption']['text_to_image/R@1']:.1f}, "
          f"pos/neg sim {val['similarity']['pos_sim']:.2f}/{val['similarity']['neg_sim']:.2f}", file=sys.stderr)


# ----------------------------------------------------------------------------------------------------
# Phase 7: finish (the test split, once, from the best weights).

def finish(plan: Plan, data: Data, model, features, device: torch.device, loop: LoopState,
           status: StatusReporter) -> None:
    from safetensors.torch import load_file
    run_dir, epochs = plan.run_dir, plan.cfg.epochs
    loop.writer.close()  # the last epoch's checkpoints are on disk
    sizes = {s: len(data.splits[s]) for s in ("val", "test")}
    foreseen = loop.val_seconds * sizes["test"] / max(sizes["val"], 1) if loop.val_seconds is not None else None
    status.phase(f"testing the best checkpoint on {sizes['test']:,} test items", eta_s=foreseen)
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
                    "only the queries whose title never occurs in the train split, same gallery; dedup = one "
                    "product per distinct title (the proxy for new products); fixed_gallery = recall of those "
                    "in seeded galleries of a fixed size",
        **test, "train_seconds": loop.train_seconds})
    write_status(run_dir, "finished", epoch=epochs, epochs=epochs)
    c = test["caption"]
    print(f"[xmodal] test (caption-level, {test['gallery_size']} items): "
          f"t2i R@1/5/10 {c['text_to_image/R@1']:.1f}/{c['text_to_image/R@5']:.1f}/{c['text_to_image/R@10']:.1f}, "
          f"i2t R@1/5/10 {c['image_to_text/R@1']:.1f}/{c['image_to_text/R@5']:.1f}/{c['image_to_text/R@10']:.1f}"
          + (f"\n[xmodal] unseen titles ({test['unseen_queries']} queries): t2i R@1/10 "
             f"{u['text_to_image/R@1']:.1f}/{u['text_to_image/R@10']:.1f}" if (u := test.get("unseen_title")) else "")
          + (f"\n[xmodal] title-deduplicated ({test['dedup_gallery_size']} products): t2i R@1/10 "
             f"{d['text_to_image/R@1']:.1f}/{d['text_to_image/R@10']:.1f}" if (d := test.get("dedup")) else "")
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
        if plan.checkpoint is None:
            check_weights_source(plan.cfg)
        status = StatusReporter(plan.run_dir, enabled=ctx.is_main and owns_status(plan.run_dir),
                                model=plan.cfg.model, data=plan.cfg.data)
        check_catalogue_phase(status, plan.cfg.data)  # a launcher's run only: the folder is not ours yet
        data = open_data(plan)
        torch.manual_seed(plan.cfg.seed + ctx.rank)
        np.random.seed(plan.cfg.seed)
        lock = claim_run_folder(plan) if ctx.is_main else None
        status.enabled = ctx.is_main
        ctx.barrier()
        try:
            return _train_in_folder(plan, data, ctx, device, stop_requested, status)
        finally:
            if lock:
                lock.release()
    finally:
        ctx.close()


def check_catalogue_phase(status: StatusReporter, spec: str) -> None:
    """Say that the catalogue's photos are being checked, with the time it should take (``status.py``)."""
    if not status.enabled:
        return
    try:
        folder = resolve_data(spec)
    except CatalogueError:  # open_data reports it
        return
    estimate = catalogue_check_estimate(folder)
    if estimate is None:
        status.phase("checking the catalogue's photos")
    else:
        status.phase(f"checking the catalogue's {estimate[0]:,} photos", eta_s=estimate[1])


def _train_in_folder(plan: Plan, data: Data, ctx, device: torch.device, stop_requested: list,
                     status: StatusReporter) -> int:
    run_dir, writer = plan.run_dir, BackgroundWriter()
    try:
        status.phase("building the model")
        model = build_model(plan, data, ctx, status)
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
        features = extract(model, data, plan.cfg, ctx, device, status)
        if ctx.is_main:
            write_run_files(plan, data, model, ctx, device)
            status.phase("starting the epochs")
        loop = run_epochs(plan, data, model, features, ctx, device, stop_requested, writer, status)
        if ctx.is_main:
            finish(plan, data, model, features, device, loop, status)
        return 0
    except (KeyboardInterrupt, Stop):
        try:
            writer.close()  # the last completed epoch's checkpoints land before the run says it stopped
        except Exception as err:  # that write failed (a full disk): the run failed, and says why
            if ctx.is_main:
                record_failure(run_dir, err)
            raise
        if ctx.is_main:
            write_status(run_dir, "stopped", message="stopped by the user; the last completed epoch is kept "
                         f"(resume: python -m xmodal.train --resume {run_dir})")
            print(f"\nstopped; resume with: python -m xmodal.train --resume {run_dir}", file=sys.stderr)
        return 130
    except BaseException as err:
        try:
            writer.close()  # the write in flight (if any) lands; the error reported is the one that stopped us
        except BaseException:
            pass
        if isinstance(err, NonFiniteError):
            err.kept = kept_note(run_dir)
        if ctx.is_main:
            record_failure(run_dir, err)
        raise


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
