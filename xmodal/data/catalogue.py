"""Catalogues: a folder with ``captions.csv`` and the images it names.

Loading validates every row and reports what it skipped (missing, unreadable or corrupt images,
empty captions, duplicate item ids, paths that leave the folder) instead of crashing. Splits are
seeded and item-level, or taken from the csv's ``split`` column.
"""
from __future__ import annotations

import csv
import hashlib
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

REQUIRED_COLUMNS = ("image", "caption")
SPLITS = ("train", "val", "test")
# Largest image we agree to decode (pixels); guards against decompression bombs.
MAX_IMAGE_PIXELS = 40_000_000
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS


class CatalogueError(ValueError):
    """A catalogue that cannot be used at all (no csv, missing columns, no usable rows)."""


@dataclass
class LoadReport:
    """What loading kept and what it skipped, with the first few examples of each problem."""

    total_rows: int = 0  # data rows in captions.csv
    kept: int = 0  # rows that became items
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count
    examples: dict[str, list[str]] = field(default_factory=dict)  # reason -> first few examples

    def skip(self, reason: str, example: str, keep_examples: int = 5) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < keep_examples:
            shown.append(example)

    def summary(self) -> str:
        """One human-readable paragraph."""
        lines = [f"{self.kept} of {self.total_rows} rows usable"]
        for reason, n in sorted(self.skipped.items()):
            lines.append(f"  skipped {n} ({reason}), e.g. {'; '.join(self.examples[reason])}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"total_rows": self.total_rows, "kept": self.kept,
                "skipped": dict(self.skipped), "examples": {k: list(v) for k, v in self.examples.items()}}


@dataclass
class Catalogue:
    """A validated catalogue: one entry per usable product, in csv order."""

    root: Path  # folder holding captions.csv
    images: list[str]  # image path relative to root, per item
    captions: list[str]  # product title, per item
    item_ids: list[str]  # item id (csv item_id, or the row number), per item
    attributes: dict[str, list[str]]  # optional columns kept for slicing (gender, colour, ...)
    split_column: list[str] | None  # the csv's split column, when it had one
    report: LoadReport  # what was skipped and why
    fingerprint: str  # hash of captions and image bytes: keys caches and runs

    def __len__(self) -> int:
        return len(self.captions)

    def image_path(self, i: int) -> Path:
        return self.root / self.images[i]

    def open_image(self, i: int) -> Image.Image:
        """The RGB image of item ``i``."""
        with Image.open(self.image_path(i)) as im:
            return im.convert("RGB")

    def subset(self, index: np.ndarray | list[int]) -> "Catalogue":
        """A catalogue holding only the items at ``index`` (same root)."""
        idx = [int(i) for i in index]
        return Catalogue(
            root=self.root,
            images=[self.images[i] for i in idx],
            captions=[self.captions[i] for i in idx],
            item_ids=[self.item_ids[i] for i in idx],
            attributes={k: [v[i] for i in idx] for k, v in self.attributes.items()},
            split_column=[self.split_column[i] for i in idx] if self.split_column else None,
            report=self.report,
            fingerprint=self.fingerprint,
        )


def normalise_caption(text: str) -> str:
    """The caption key used for caption-level ground truth: lower case, single spaces."""
    return re.sub(r"\s+", " ", text.strip().lower())


def _safe_relative(root: Path, rel: str) -> Path | None:
    """``root/rel`` if ``rel`` is a relative path that stays inside ``root``, else None."""
    if not rel or os.path.isabs(rel) or rel.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", rel):
        return None
    parts = Path(rel.replace("\\", "/")).parts
    if ".." in parts:
        return None
    path = (root / rel).resolve()
    try:
        path.relative_to(root.resolve())
    except ValueError:  # a symlink pointing outside
        return None
    return path


def _check_image(data: bytes) -> str | None:
    """None if the image bytes decode, else the reason they do not."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > MAX_IMAGE_PIXELS:
                return "image too large"
            im.load()  # decodes every pixel: truncated or corrupt data fails here
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return "corrupt or unreadable image"
    return None


def load_catalogue(root: str | os.PathLike, check_images: bool = True) -> Catalogue:
    """Read and validate ``root/captions.csv``.

    Args:
        root: the catalogue folder.
        check_images: decode every image once to drop corrupt files (slow on huge catalogues).

    Returns:
        The usable items, with a report of what was skipped.

    Raises:
        CatalogueError: no csv, required columns missing, or no usable row.
    """
    root = Path(root).expanduser()
    csv_path = root / "captions.csv"
    if not csv_path.is_file():
        raise CatalogueError(
            f"no captions.csv in {root}: a catalogue is a folder with captions.csv (columns image, "
            "caption) and its images; import other layouts with `python -m xmodal.data import`")
    report = LoadReport()
    images: list[str] = []
    captions: list[str] = []
    item_ids: list[str] = []
    splits: list[str] = []
    attrs: dict[str, list[str]] = {}
    seen_ids: set[str] = set()
    hasher = hashlib.sha256()
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise CatalogueError(f"{csv_path} lacks column(s) {missing}; found {header}. "
                                 "Required: image (path relative to the folder), caption.")
        reader.fieldnames = header
        attr_cols = [c for c in header if c not in ("image", "caption", "item_id", "split")]
        attrs = {c: [] for c in attr_cols}
        has_split = "split" in header
        for line_no, row in enumerate(reader, start=2):
            report.total_rows += 1
            if None in row:  # more fields than the header: a broken row
                report.skip("broken csv row (extra fields)", f"line {line_no}")
                continue
            rel = (row.get("image") or "").strip()
            caption = re.sub(r"\s+", " ", (row.get("caption") or "").strip())
            item_id = (row.get("item_id") or "").strip() or f"row{line_no}"
            if not caption:
                report.skip("empty caption", f"line {line_no} ({rel})")
                continue
            path = _safe_relative(root, rel)
            if path is None:
                report.skip("image path outside the folder", f"line {line_no}: {rel!r}")
                continue
            if item_id in seen_ids:
                report.skip("duplicate item id", f"line {line_no}: {item_id}")
                continue
            try:
                data = path.read_bytes()  # read once: checked and fingerprinted from memory
            except OSError:
                data = None
            problem = "missing image" if data is None else (_check_image(data) if check_images else None)
            if problem:
                report.skip(problem, f"line {line_no}: {rel}")
                continue
            seen_ids.add(item_id)
            images.append(rel)
            captions.append(caption)
            item_ids.append(item_id)
            for c in attr_cols:
                attrs[c].append((row.get(c) or "").strip())
            if has_split:
                splits.append((row.get("split") or "").strip().lower())
            hasher.update(f"{rel}\t{caption}\t{item_id}\t{len(data)}\n".encode())
            hasher.update(hashlib.sha1(data).digest())
    report.kept = len(captions)
    if not captions:
        raise CatalogueError(f"{csv_path} has no usable rows.\n{report.summary()}")
    return Catalogue(root=root, images=images, captions=captions, item_ids=item_ids,
                     attributes=attrs, split_column=splits if has_split else None,
                     report=report, fingerprint=hasher.hexdigest()[:16])


def make_splits(cat: Catalogue, seed: int = 0, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
                ) -> dict[str, np.ndarray]:
    """Item-level train/val/test indices.

    Uses the csv's ``split`` column when every row has one of train/val/test; otherwise a seeded
    permutation cut by ``fractions``.
    """
    n = len(cat)
    if cat.split_column and all(s in SPLITS for s in cat.split_column):
        col = np.array(cat.split_column)
        return {s: np.flatnonzero(col == s) for s in SPLITS}
    if abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) < 0:
        raise ValueError(f"split fractions {fractions} must be non-negative and sum to 1")
    perm = np.random.default_rng(seed).permutation(n)
    n_train = int(round(fractions[0] * n))
    n_val = int(round(fractions[1] * n))
    if n >= 3:  # keep every split non-empty on tiny catalogues
        n_val = max(n_val, 1)
        n_train = min(n_train, n - n_val - 1)
    return {"train": np.sort(perm[:n_train]), "val": np.sort(perm[n_train:n_train + n_val]),
            "test": np.sort(perm[n_train + n_val:])}
