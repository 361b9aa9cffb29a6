"""What a training run says while it works: ``status.json``'s phase, how far it is and the time left.

Every phase that takes more than a few seconds reports its own progress (``xmodal.dashboard.jobs.training``
reads it for the sidebar and Home):

- a counted phase (distillation steps, training steps): ``done`` of ``total`` ``unit`` and ``eta_s`` from
  the pace so far, never more than the total and never below zero;
- a phase whose only gauge is a progress bar in ``train.log`` (the backbone's feature extraction): ``bar``,
  the bar's name, and ``log_offset``, the log's size when the phase began, so an older bar is never read
  as this one's;
- a phase that is not counted but can be foreseen (checking the catalogue, testing): ``eta_s`` with
  ``estimated``, and the reader counts down from ``phase_started``;
- a phase whose result is cached: ``cached``, and its text says so (never "extracting 0 %").
"""
from __future__ import annotations

import csv
import os
import stat
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ..data.images import check_image
from ..image.feature_cache import extraction_arithmetic, feature_cache_path
from ..runs import read_json, write_status

PHASE_FIELDS = ("done", "total", "unit", "eta_s", "estimated", "cached", "bar", "log_offset", "phase_started")


def log_offset() -> int | None:
    """The size of this process's stderr when it is a file (the run's train.log), else None."""
    try:
        info = os.fstat(sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):  # no real stderr (a test's capture)
        return None
    return info.st_size if stat.S_ISREG(info.st_mode) else None


class StatusReporter:
    """Writes a running run's ``status.json``: ``phase`` starts a named step, ``advance`` moves a counted one
    on (at most every ``every_s`` seconds, and at its end), ``write`` records other fields (the epoch loop's).

    Args:
        run_dir: the run folder.
        enabled: False on the ranks that do not write (DDP) and where a status must not be written.
        fields: written with every status (``model``, ``data``: what a launcher's panel names the run by).
    """

    def __init__(self, run_dir: Path, enabled: bool = True, every_s: float = 1.0, **fields: Any):
        self.run_dir, self.enabled, self.every_s = Path(run_dir), enabled, every_s
        self.fields = fields
        self.current: dict[str, Any] = {}
        self._started = time.time()
        self._written = 0.0

    def write(self, **fields: Any) -> None:
        """A ``running`` status with ``fields`` (those of the current phase dropped unless given again)."""
        if not self.enabled:
            return
        self.current = {**self.fields, **fields}
        write_status(self.run_dir, "running", **self.current)
        self._written = time.time()

    def phase(self, text: str, total: int | None = None, unit: str = "", cached: bool = False,
              eta_s: float | None = None, bar: str | None = None) -> None:
        """Start a phase.

        Args:
            total: items to go through (``advance`` counts them); None when not counted.
            cached: the phase reads a cache (its ``text`` says so): nothing to count.
            eta_s: a foreseen length, for a phase that is not counted (recorded as ``estimated``).
            bar: the name of the progress bar in train.log that measures the phase.
        """
        self._started = time.time()
        fields: dict[str, Any] = {"phase": text, "phase_started": self._started}
        if total is not None:
            fields.update(done=0, total=max(int(total), 0), unit=unit)
        if cached:
            fields["cached"] = True
        if eta_s is not None and total is None:
            fields.update(eta_s=max(float(eta_s), 0.0), estimated=True)
        if bar:
            fields.update(bar=bar, log_offset=log_offset())
        self.write(**fields)

    def advance(self, done: int, **extra: Any) -> None:
        """``done`` of the phase's total are through: the time left follows from the pace so far."""
        if not self.enabled:
            return
        total = self.current.get("total") or 0
        done = min(max(int(done), 0), total) if total else max(int(done), 0)
        elapsed = time.time() - self._started
        eta = elapsed / done * (total - done) if done and total else None
        if done >= total or time.time() - self._written >= self.every_s:
            self.write(**{**self.current, **extra, "done": done, "eta_s": eta})


def owns_status(run_dir: Path) -> bool:
    """Whether ``run_dir``'s status.json was written for this process (a dashboard launch names the child's
    pid): it may then report before the run folder is claimed."""
    status = read_json(Path(run_dir) / "status.json", default={})
    return isinstance(status, dict) and status.get("state") == "running" and status.get("pid") == os.getpid()


def catalogue_check_estimate(folder: Path, sample: int = 16) -> tuple[int, float] | None:
    """(rows, seconds) that checking every photo of the catalogue ``folder`` should take: its rows counted, and
    the check of its first ``sample`` photos timed. None when that cannot be told (no csv, no image column)."""
    path = Path(folder) / "captions.csv"
    try:
        with open(path, newline="", encoding="utf-8", errors="replace") as f:
            reader = csv.DictReader(f)
            first = [row for _, row in zip(range(sample), reader)]
            rows = len(first) + sum(1 for _ in reader)
    except (OSError, csv.Error):
        return None
    paths = [Path(folder) / str(r.get("image") or "") for r in first if r.get("image")]
    if not paths:
        return None
    t = time.perf_counter()
    for p in paths:
        try:
            check_image(p.read_bytes())
        except OSError:
            pass
    return rows, (time.perf_counter() - t) / len(paths) * rows


def features_cached(model: torch.nn.Module, cat, device: torch.device) -> bool:
    """Whether the frozen backbone features of ``model`` for every photo of ``cat`` are in the feature cache (the
    file ``xmodal.image.feature_cache.cached_features`` would read): the phase then says "cached"."""
    cfg = model.cfg
    size = tuple(cfg.image_size)
    arithmetic = extraction_arithmetic(model.backbone, device, size, len(cat.images), cfg.tune_blocks)
    return feature_cache_path(model.backbone, cfg.backbone, size, cat.images, cat.fingerprint, cfg.tune_blocks,
                              arithmetic).is_file()
