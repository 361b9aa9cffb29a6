"""The joint space over training: a fixed sample of validation products embedded at the end of every epoch.

``<run>/snapshots/epoch_0001.safetensors`` holds ``images`` and ``texts`` ``[n, D]`` in float16 (about 1 MB per
epoch for 500 products at D=512), each written atomically; ``snapshots/items.json`` names the products (their
item ids, the same for every epoch). ``xmodal.evaluation.trajectory`` turns them into aligned maps.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data import Catalogue
from ..models.embed import embed_catalogue_images, embed_texts
from ..runs import atomic_write_bytes, atomic_write_json
from ..runs.snapshots import FOLDER, read_snapshots  # noqa: F401  (read_snapshots: re-exported)
from ..text.vocabulary import Vocab



def snapshot_index(val_index: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` validation positions (all when fewer), drawn once with ``seed``, in catalogue order."""
    val_index = np.asarray(val_index)
    if n >= len(val_index):
        return np.sort(val_index)
    return np.sort(np.random.default_rng(seed).choice(val_index, n, replace=False))


def write_snapshot(run_dir: Path, epoch: int, model, vocab: Vocab, cat: Catalogue, index: np.ndarray,
                   device: torch.device, features: torch.Tensor | None = None) -> Path:
    """Embed products ``index`` with the model as it is at the end of ``epoch``; returns the file written."""
    from safetensors.torch import save  # lazy: only runs that keep snapshots pay the import
    folder = Path(run_dir) / FOLDER
    folder.mkdir(exist_ok=True)
    items = folder / "items.json"
    if not items.is_file():
        atomic_write_json(items, {"item_ids": [cat.item_ids[int(i)] for i in index]})
    img = embed_catalogue_images(model, cat, index, device, features).half().contiguous()
    txt = embed_texts(model, vocab, [cat.captions[int(i)] for i in index], device).half().contiguous()
    path = folder / f"epoch_{epoch:04d}.safetensors"
    atomic_write_bytes(path, save({"images": img, "texts": txt}, metadata={"epoch": str(epoch)}))
    return path


def snapshot_epoch(run_dir: Path, epoch: int, cfg, data, model, device: torch.device,
                   features: torch.Tensor | None) -> Path:
    """The training loop's call: ``cfg.snapshots`` validation products (drawn with the split seed) at ``epoch``."""
    index = snapshot_index(data.splits["val"], cfg.snapshots, cfg.split_seed)
    return write_snapshot(run_dir, epoch, model, data.vocab, data.cat, index, device, features)
