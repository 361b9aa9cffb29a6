"""Sprite sheets of product thumbnails, so the Embeddings map shows a point's photo under the mouse.

A map of n items gets ``ceil(n / PER_SHEET)`` JPEG sheets of ``COLS`` x ``ROWS`` cells, each cell one item's
photo fitted into ``CELL`` (60 x 80 px, white margins), in the map's item order: the browser fetches a sheet
the first time a point on it is hovered, then shows that item's cell (``hover.py``). This is the Embedding
Projector's sprite idea, cut into sheets so that a whole catalogue costs the browser only the sheets it
hovers. Photos are decoded by the library's one decoder (``xmodal.data.images.open_rgb``): upright, in
the pixels that were embedded.

Sheets belong to the catalogue, not to a run: ``<runs>/.sprites/<key>/`` (``key`` covers the catalogue's
fingerprint and the mapped items), so every run of a catalogue with the same split shares them. They are
made by the map's background job (``projection.compute``), or by ``python -m xmodal.dashboard.maps.sprite_job
PROJECTION_FILE`` for a map made before sheets existed; a folder is written under a temporary name and
renamed, so a half-made set is never read. A photo that is missing or unreadable gets a grey cell.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageOps

from ...data.images import open_rgb
from ...runs import read_json

VERSION = 2  # 2: photos upright (EXIF orientation applied); sheets of version 1 are made again
CELL = (60, 80)  # width, height of one thumbnail (the catalogue photos are 3:4)
COLS, ROWS = 32, 32  # cells per sheet: 1920 x 2560 px, about 1-2 MB as JPEG
PER_SHEET = COLS * ROWS
MAX_ITEMS = 20_000  # maps of more items show titles only on hover (their click still shows the photo)
SHARED_DIR = ".sprites"
META = "sprites.json"
MISSING = (200, 200, 200)


def sprite_key(fingerprint: str, index: np.ndarray) -> str:
    """The sheets' key: the catalogue's content fingerprint and the catalogue positions mapped, in order."""
    h = hashlib.sha256(f"{VERSION}|{CELL}|{COLS}x{ROWS}|{fingerprint}|".encode())
    h.update(np.ascontiguousarray(np.asarray(index, dtype=np.int64)).tobytes())
    return h.hexdigest()[:16]


def sprite_folder(run_dir: Path, fingerprint: str, index: np.ndarray) -> Path:
    """Where the sheets of the map of ``index`` (catalogue positions) of a run's catalogue live."""
    return Path(run_dir).parent / SHARED_DIR / sprite_key(fingerprint, index)


def task_name(folder: Path) -> str:
    """The background task that makes the sheets of ``folder``."""
    return f"sprites-{Path(folder).name}"


def read_meta(folder: Path) -> dict | None:
    """The sheets' description (``cell``, ``cols``, ``per_sheet``, ``n``, ``sheets``), None when they are not
    (all) there or do not describe themselves."""
    try:
        meta = json.loads((Path(folder) / META).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("version") != VERSION or not isinstance(meta.get("sheets"), list):
        return None
    if not all(isinstance(s, str) and "/" not in s and (Path(folder) / s).is_file() for s in meta["sheets"]):
        return None
    return meta


def thumbnail(path: str | Path, cell: tuple[int, int] = CELL):
    """One photo, upright, fitted into ``cell`` on white; None when it cannot be read."""
    try:
        rgb = open_rgb(path, draft=(cell[0] * 2, cell[1] * 2))  # JPEG: decode at a fraction of full size
        return ImageOps.pad(rgb, cell, method=Image.Resampling.BILINEAR, color=(255, 255, 255))
    except Exception:  # missing, truncated, not an image, decompression bomb: the caller draws a grey cell
        return None


def build(folder: Path, images: Sequence[str], progress: Callable[[int], None] | None = None) -> Path:
    """Write the sheets of ``images`` (in map order) to ``folder`` (nothing when a complete set is there)."""
    folder = Path(folder)
    if read_meta(folder) is not None:
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        w, h = CELL
        sheets, missing = [], 0
        for s, start in enumerate(range(0, len(images), PER_SHEET)):
            chunk = images[start:start + PER_SHEET]
            rows = -(-len(chunk) // COLS)
            sheet = Image.new("RGB", (COLS * w if rows > 1 else len(chunk) * w, rows * h), (255, 255, 255))
            for j, path in enumerate(chunk):
                cell = thumbnail(path)
                missing += cell is None
                sheet.paste(cell or Image.new("RGB", CELL, MISSING), ((j % COLS) * w, (j // COLS) * h))
                if progress and (start + j + 1) % 64 == 0:
                    progress(start + j + 1)
            name = f"sheet_{s:04d}.jpg"
            sheet.save(tmp / name, "JPEG", quality=80, optimize=True)
            sheets.append(name)
        meta = {"version": VERSION, "cell": list(CELL), "cols": COLS, "per_sheet": PER_SHEET, "n": len(images),
                "sheets": sheets, "unreadable": int(missing)}
        (tmp / META).write_text(json.dumps(meta))
        try:
            os.replace(tmp, folder)  # atomic; fails when another process finished the same set first
        except OSError:
            if read_meta(folder) is None:
                shutil.rmtree(folder, ignore_errors=True)
                os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if progress:
        progress(len(images))
    return folder


def fingerprint_of(run_dir: Path) -> str:
    """The content fingerprint of a run's catalogue (its config.json), or empty."""
    data = (read_json(Path(run_dir) / "config.json", default={}) or {}).get("data") or {}
    return str(data.get("fingerprint") or "") if isinstance(data, dict) else ""


def build_for_map(run_dir: Path, index: np.ndarray, images: Sequence[str], progress=None) -> Path | None:
    """The sheets of a run's map (catalogue positions ``index``, their photos ``images``); None when the map
    has more than ``MAX_ITEMS`` items."""
    if len(index) > MAX_ITEMS:
        return None
    folder = sprite_folder(run_dir, fingerprint_of(run_dir), index)
    if progress:
        progress.phase("photo thumbnails for the map's hover", total=len(index))
    return build(folder, images, progress.advance if progress else None)
