"""Runs grouped by the catalogue they were trained on, which of them are fit to compare, and the runs too
young to have a config.

Runs on different catalogues rank against different test galleries (the demo's 200 test items, a real
catalogue's 1,500), so their numbers are never drawn side by side: each page first picks a catalogue,
identified by its name and content fingerprint from ``config.json``, then its runs.

A run is *unfit* to be chosen by default when it failed, is still training, has no test metrics yet, or
has *collapsed*: the Training page's alarm (``analysis.detect_collapse``: a flat loss and matching pairs
no closer than random ones at its last validation), or a test R@10 within ``CHANCE_FACTOR`` of what ranking
at random gives on its gallery. A run that is not finished carries a badge wherever it is shown (``state_badge``):
its numbers and maps come from its best weights so far.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..runs import RunInfo, read_status
from .analysis import DIRECTIONS, catalogue_label, detect_collapse
from .jobs.training import read_launch, run_folders

CHANCE_FACTOR = 2.0  # test R@10 at most this many times chance (10 / gallery size) counts as collapsed


@dataclass(frozen=True)
class CatalogueId:
    """A catalogue as runs record it."""

    key: str  # "<name>-<fingerprint prefix>": the value stored in widgets and URLs
    name: str  # "demo" or the folder's name
    fingerprint: str  # the catalogue's content fingerprint ("" when the config has none)
    items: int | None  # products in it, when recorded


def catalogue_id(config: dict) -> CatalogueId:
    """The catalogue a run's ``config.json`` was trained on."""
    data = config.get("data") or {}
    name = catalogue_label(config)
    fp = str(data.get("fingerprint") or "")
    items = data.get("items")
    return CatalogueId(f"{name}-{fp[:10] or 'unknown'}", name, fp,
                       items if isinstance(items, int) and not isinstance(items, bool) else None)


def group_runs(runs: Sequence[RunInfo]) -> dict[str, list[RunInfo]]:
    """Runs by catalogue key; catalogues ordered by their newest run, runs keep their order (newest first)."""
    groups: dict[str, list[RunInfo]] = {}
    for r in runs:
        groups.setdefault(catalogue_id(r.config).key, []).append(r)
    return groups


def describe(runs: Sequence[RunInfo]) -> str:
    """One catalogue group as plain text: ``demo · 2,000 products · 5 runs · fingerprint 1a2b3c4d5e``."""
    cid = catalogue_id(runs[0].config)
    items = f" · {cid.items:,} products" if cid.items else ""
    return f"{cid.name}{items} · {len(runs)} run{'s' * (len(runs) != 1)} · fingerprint {cid.fingerprint[:10] or '?'}"


def collapse_reason(info: RunInfo, rows: Sequence[dict] = ()) -> str | None:
    """Why a run counts as collapsed, or None: the Training page's alarm (``analysis.detect_collapse``: the
    loss has gone flat and matching pairs are no closer than random ones at the last validation), or test
    R@10 within ``CHANCE_FACTOR`` of chance in both directions (item-level, on a gallery of over 10 items)."""
    if detect_collapse(rows):
        pos, neg = next((r["pos_sim"], r["neg_sim"]) for r in reversed(rows) if r.get("kind") == "epoch"
                        and "pos_sim" in r and "neg_sim" in r)
        return f"flat loss, matching pairs no closer than random ones (cosine {pos:.3f} vs {neg:.3f})"
    test = info.test or {}
    item, size = test.get("item") or {}, test.get("gallery_size")
    recalls = [item.get(f"{d}/R@10") for d in DIRECTIONS]
    if isinstance(size, int) and size > 10 and all(isinstance(v, (int, float)) for v in recalls):
        chance = 100.0 * 10 / size
        if max(recalls) <= CHANCE_FACTOR * chance:
            return f"test R@10 {max(recalls):.1f}% is near chance ({chance:.1f}% on {size} items)"
    return None


def health(info: RunInfo, rows: Sequence[dict] = ()) -> str | None:
    """Why a run is not chosen by default (``failed``, ``training``, ``no test metrics yet``, ``collapsed:
    ...``), or None for a finished, healthy run."""
    state = info.status.get("state")
    if state == "failed":
        return "failed"
    if state == "running":
        return "training"
    if not info.test:
        return "no test metrics yet"
    if reason := collapse_reason(info, rows):
        return f"collapsed: {reason}"
    return None


def state_badge(info: RunInfo) -> str | None:
    """A run that is not finished, in words, wherever it is shown (the pickers, the map, Search's columns side by
    side): ``still training (epoch 3 of 10): its best weights so far, from epoch 2``; None for a finished run.

    Its numbers and maps come from the best checkpoint so far, which the next epoch may replace: it is never shown
    as if it were finished.
    """
    status = info.status or {}
    state = status.get("state")
    if state == "finished" or (state not in ("running", "stopped", "failed") and info.test):
        return None
    epoch, epochs = status.get("epoch"), status.get("epochs")
    at = f" (epoch {epoch} of {epochs})" if isinstance(epoch, (int, float)) and isinstance(epochs, (int, float)) \
        else ""
    best = (info.best or {}).get("epoch")
    weights = f"its best weights so far, from epoch {best}" if isinstance(best, (int, float)) else "no best weights yet"
    what = {"running": "still training", "stopped": "stopped", "failed": "failed"}.get(state, "state unknown")
    return f"{what}{at}: {weights}"


def rsum(info: RunInfo, ground_truth: str = "caption") -> float:
    """The run's test rsum (-1 when it has none)."""
    value = ((info.test or {}).get(ground_truth) or {}).get("rsum")
    return float(value) if isinstance(value, (int, float)) else -1.0


def default_runs(runs: Sequence[RunInfo], rows_of: Callable[[RunInfo], Sequence[dict]], limit: int = 6
                 ) -> list[RunInfo]:
    """The healthy finished runs, best test rsum first, at most ``limit``: what a page compares unasked."""
    healthy = [r for r in runs if health(r, rows_of(r)) is None]
    return sorted(healthy, key=rsum, reverse=True)[:limit]


@dataclass
class PendingRun:
    """A run folder with a status but no config.json yet: launched, importing PyTorch or extracting features."""

    path: Path
    status: dict
    model: str
    data: str

    @property
    def run_id(self) -> str:
        return self.path.name


def pending_runs(root: Path | None = None) -> list[PendingRun]:
    """Run folders under ``root`` (the checkpoints folder) that are running but too young for a config."""
    out = []
    for d in run_folders(root):
        if (d / "config.json").is_file():
            continue
        status = read_status(d)
        if status.get("state") != "running":
            continue
        launch = read_launch(d)
        out.append(PendingRun(d, status, str(launch.get("model") or status.get("model") or "?"),
                              str(launch.get("data") or "?")))
    return out


def runs_signature(root: Path | None = None) -> tuple:
    """What the pages show about the run folders, cheaply (a status read and a few stats per folder): it
    changes when a run appears, goes, changes state, gets its config, new best weights or test metrics, or is
    hidden; the sidebar's poll reruns the page then, so new runs appear by themselves."""
    sig = []
    for d in run_folders(root):
        stamps = []
        for name in ("config.json", "best.safetensors", "test.json", "notes.json"):
            try:
                stamps.append((d / name).stat().st_mtime_ns)
            except OSError:
                stamps.append(0)
        sig.append((d.name, read_status(d).get("state"), *stamps))
    return tuple(sorted(sig))
