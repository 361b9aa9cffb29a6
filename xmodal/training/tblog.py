"""``--log tensorboard``: the run as TensorBoard sees it, for people whose habit it is (the dashboard stays the
main view). Under ``<run>/tensorboard/``: every loss term per step (``train/<term>``), every validation metric
per epoch (``val/<metric>``), the run's config as text, and at the end the validation products' photo and title
embeddings with thumbnails for TensorBoard's projector. ``tensorboard`` is an optional dependency: asking for
the log without it is one error line before anything is written.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

FOLDER = "tensorboard"
THUMB = 32  # projector sprite cell, pixels


def check_available() -> None:
    """Raise ``ImportError`` with what to do when TensorBoard's writer cannot be imported."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401  (lazy: an optional dependency)
    except ImportError:
        raise ImportError("--log tensorboard needs the tensorboard package: pip install tensorboard "
                          "(or train without --log)") from None


class TensorBoardLog:
    """A ``SummaryWriter`` in the run folder, fed by the training loop's callbacks."""

    def __init__(self, run_dir: Path, config: dict):
        from torch.utils.tensorboard import SummaryWriter  # lazy: an optional dependency
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / FOLDER))
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=1, default=str) + "\n```", 0)

    def step(self, global_step: int, terms: dict[str, float]) -> None:
        for name, value in terms.items():
            self.writer.add_scalar(f"train/{name}", float(value), global_step)

    def epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            if isinstance(value, (int, float)) and np.isfinite(value):  # "val/rsum" as is, "pos_sim" as val/...
                self.writer.add_scalar(name if name.startswith(("val/", "val_")) else f"val/{name}", float(value),
                                       epoch)
        self.writer.flush()

    def embeddings(self, images: torch.Tensor, texts: torch.Tensor, captions: list[str],
                   thumbnails: torch.Tensor | None = None, step: int = 0) -> None:
        """Photos then titles of n products in one projector tensor, labelled by modality and title."""
        meta = [["photo", c] for c in captions] + [["title", c] for c in captions]
        label_img = None
        if thumbnails is not None:  # [n, 3, H, W] in 0..1; a title point shows its product's photo too
            label_img = torch.cat([thumbnails, thumbnails])
        self.writer.add_embedding(torch.cat([images, texts]).float(), metadata=meta,
                                  metadata_header=["modality", "title"], label_img=label_img, global_step=step,
                                  tag="validation")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def thumbnails(paths: list[Path]) -> torch.Tensor:
    """``[n, 3, THUMB, THUMB]`` thumbnails (0..1) of the product photos, for the projector's sprite."""
    from ..data.images import open_rgb
    out = torch.zeros(len(paths), 3, THUMB, THUMB)
    for i, path in enumerate(paths):
        try:
            img = open_rgb(path).resize((THUMB, THUMB))
        except (OSError, ValueError):  # a photo that cannot be read stays black
            continue
        out[i] = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return out


class TeeLog:
    """The run's ``MetricsLog`` with every row also sent to TensorBoard: step rows' loss terms (at their
    global step), epoch rows' validation metrics (at their epoch)."""

    SKIP = {"kind", "epoch", "step", "global_step", "time", "split"}

    def __init__(self, log, board: TensorBoardLog):
        self.log, self.board = log, board

    def add(self, row: dict) -> None:
        self.log.add(row)
        values = {k: v for k, v in row.items() if k not in self.SKIP and isinstance(v, (int, float))}
        if row.get("kind") == "step":
            self.board.step(int(row.get("global_step", 0)), values)
        elif row.get("kind") == "epoch":
            self.board.epoch(int(row.get("epoch", 0)), values)

    def flush(self) -> None:
        self.log.flush()


def write_projector(board: TensorBoardLog, run_dir: Path, cat) -> bool:
    """The last epoch's snapshot (``xmodal.training.snapshots``) in the projector; False when the run kept none."""
    from .snapshots import read_snapshots
    ids, snaps = read_snapshots(run_dir)
    if not snaps:
        return False
    img, txt = snaps[max(snaps)]
    pos = {iid: i for i, iid in enumerate(cat.item_ids)}
    index = [pos[i] for i in ids if i in pos]
    if len(index) != len(ids):
        return False
    board.embeddings(torch.from_numpy(img), torch.from_numpy(txt), [cat.captions[i] for i in index],
                     thumbnails([cat.image_path(i) for i in index]), step=max(snaps))
    return True
