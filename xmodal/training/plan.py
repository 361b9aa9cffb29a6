"""Phases 1-3 of ``python -m xmodal.train``: plan the run folder (fresh, overwrite or resume), open the data
(catalogue, splits, vocabulary) and claim the folder (one writer, a lock). The first two only read; a bad
folder or catalogue stops here, before anything is written.
"""
from __future__ import annotations

import functools
import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data import Catalogue, CatalogueError, describe_split, make_splits, open_catalogue
from ..evaluation.metrics import title_groups
from ..runs import LOCK_FILE, RunLock, check_record, new_run_id, read_json, read_status
from ..text.vocabulary import Vocab
from ..models import ModelConfig
from .args import Args, TrainConfig
from .attributes import attribute_classes


class RunFolderError(ValueError):
    """A run folder that cannot be used as asked (exists, is not a run, is unreadable)."""



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
        for section in ("model_config", "data", "split"):  # read later as objects
            if not isinstance(saved.get(section, {}), dict):
                raise ValueError(f"its '{section}' section is not an object")
        if not isinstance(saved.get("model_config"), dict):
            raise ValueError("no 'model_config' section")
        check_record("model_config", saved["model_config"], ModelConfig)
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

    @functools.cached_property
    def attributes(self) -> tuple[dict[str, int], np.ndarray]:
        """(usable attribute column -> class count, ``[N_train, A]`` class ids, -1: missing), made on first use:
        only runs with attribute heads (``--set attr_weight``) read them."""
        return attribute_classes(self.cat.attributes, self.splits["train"])


def train_labels(data: Data, mcfg: ModelConfig) -> torch.Tensor:
    """What the loss sees per train item: its caption group ``[N]``, or with attribute heads
    ``[N, 1 + A]``: the group, then the class id of each attribute column the model has a head for."""
    groups = torch.as_tensor(data.groups)
    if mcfg.attr_weight and not mcfg.attr_classes:
        print("[xmodal] attr_weight: the catalogue has no attribute column with 2-100 values filled for half the "
              "train rows; no attribute heads", file=sys.stderr)
    if not (mcfg.attr_weight and mcfg.attr_classes):
        return groups
    classes, ids = data.attributes
    names = sorted(classes)
    cols = [names.index(name) for name in mcfg.attr_classes]  # the model's columns, in its order
    return torch.cat([groups[:, None], torch.as_tensor(ids[:, cols])], dim=1)


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
    return Data(cat, splits, source, vocab, train_caps, title_groups(train_caps))


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
