"""Reading a run folder's files without PyTorch: its per-epoch snapshots (written by
``xmodal.training.snapshots``) and the catalogue it trained on. The dashboard's background jobs read these, so
they stay free of PyTorch and timm (seconds of import for reading a few fp16 files)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..data import resolve_data
from . import read_json

FOLDER = "snapshots"  # a run's per-epoch snapshots: items.json and epoch_NNNN.safetensors


def read_snapshots(run_dir: Path) -> tuple[list[str], dict[int, tuple[np.ndarray, np.ndarray]]]:
    """(item ids, {epoch: (images [n, D], texts [n, D]) as float32}); damaged or mis-sized files are skipped."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file
    folder = Path(run_dir) / FOLDER
    rec = read_json(folder / "items.json", default={})
    ids = rec.get("item_ids") if isinstance(rec, dict) else None
    if not isinstance(ids, list):
        return [], {}
    out = {}
    for path in sorted(folder.glob("epoch_*.safetensors")):
        try:
            epoch = int(path.stem.split("_")[1])
            arrays = load_file(str(path))
            img, txt = arrays["images"].astype(np.float32), arrays["texts"].astype(np.float32)
        except (ValueError, KeyError, OSError, SafetensorError, json.JSONDecodeError):
            continue
        if img.shape == txt.shape and len(img) == len(ids) and np.isfinite(img).all() and np.isfinite(txt).all():
            out[epoch] = (img, txt)
    return ids, out


def run_catalogue_path(config: dict, data: str | None = None) -> Path:
    """The catalogue folder to search or evaluate: ``data`` if given, else the run's own (the demo is
    found in this machine's cache, wherever it lay when the run trained)."""
    if data:
        return resolve_data(data)
    if config["data"]["name"] == "demo":
        return resolve_data("demo")
    return Path(config["data"]["path"])
