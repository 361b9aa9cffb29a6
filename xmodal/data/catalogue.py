"""Catalogues: a folder with ``captions.csv`` and the images it names.

Loading validates every row and reports what it skipped (rows the csv parser cannot trust, text that is
not UTF-8, empty or absurdly long captions, duplicate item ids, paths that leave the folder, missing,
unreadable, oversized or corrupt images) instead of crashing; a catalogue that cannot be used at all
raises :class:`CatalogueError` with one line saying what to do. Splits live in :mod:`xmodal.data.splits`.
"""
from __future__ import annotations

import hashlib
import os
import re
import stat
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from . import images as img
from .images import MAX_IMAGE_PIXELS, check_image, open_rgb
from .table import CatalogueError, Record, read_table
from ..text.normalise import normalise_caption  # noqa: F401  (re-exported: xmodal.data.normalise_caption)

REQUIRED_COLUMNS = ("image", "caption")
KNOWN_COLUMNS = ("image", "caption", "item_id", "split")  # the rest are attributes kept for slicing
SPLITS = ("train", "val", "test")
# Split-column spellings accepted, after lower-casing and dropping spaces, "-" and "_".
SPLIT_SYNONYMS = {"train": "train", "training": "train",
                  "val": "val", "valid": "val", "validation": "val", "dev": "val", "development": "val",
                  "test": "test", "testing": "test", "holdout": "test", "heldout": "test"}
MAX_CAPTION_CHARS = 10_000  # multi-sentence descriptions run to a few hundred; more is a broken row
MAX_IMAGE_BYTES = 256 * 1024**2  # refuse image files larger than this before reading them
SHOW_LINES = 5  # line numbers quoted in an error message

# Reasons a row is skipped for (the images' own reasons are in xmodal.data.images), with what to do.
EMPTY_CAPTION = "empty caption"
LONG_CAPTION = "caption too long"
EMPTY_PATH = "empty image path"
URL_PATH = "image path is a URL"
OUTSIDE = "image path outside the folder"
DUPLICATE_ID = "duplicate item id"
UNREADABLE = "image not readable"  # other OS errors (name too long, I/O error, a pipe)
ADVICE = {
    LONG_CAPTION: f"captions over {MAX_CAPTION_CHARS:,} characters are refused: usually a quote that swallowed "
                  "other rows, or a whole page pasted into the cell",
    URL_PATH: "download the images and give paths relative to the catalogue folder",
    OUTSIDE: "image paths must be relative and stay inside the catalogue folder",
    DUPLICATE_ID: "item_id must be unique; the first row with each id is kept",
}


@dataclass
class LoadReport:
    """What loading kept and what it skipped, with the first few examples of each problem."""

    total_rows: int = 0  # data rows in captions.csv (blank lines not counted)
    kept: int = 0  # rows that became items
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count
    examples: dict[str, list[str]] = field(default_factory=dict)  # reason -> first few examples
    advice: dict[str, str] = field(default_factory=dict)  # reason -> what to do about it
    notes: list[str] = field(default_factory=list)  # file-level remarks (e.g. ignored unnamed columns)

    def skip(self, reason: str, example: str, keep_examples: int = 5, advice: str = "") -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < keep_examples:
            shown.append(example)
        if advice and reason not in self.advice:
            self.advice[reason] = advice

    def summary(self) -> str:
        """One human-readable paragraph."""
        lines = [f"{self.kept} of {self.total_rows} rows usable"]
        for reason, n in sorted(self.skipped.items()):
            todo = f". Fix: {self.advice[reason]}" if reason in self.advice else ""
            lines.append(f"  skipped {n} ({reason}), e.g. {'; '.join(self.examples[reason])}{todo}")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"total_rows": self.total_rows, "kept": self.kept,
                "skipped": dict(self.skipped), "examples": {k: list(v) for k, v in self.examples.items()},
                "advice": dict(self.advice), "notes": list(self.notes)}


@dataclass
class Catalogue:
    """A validated catalogue: one entry per usable product, in csv order."""

    root: Path  # folder holding captions.csv
    images: list[str]  # image path relative to root, per item
    captions: list[str]  # product title, per item
    item_ids: list[str]  # item id (csv item_id, else the image path), per item
    attributes: dict[str, list[str]]  # optional columns kept for slicing (gender, colour, ...)
    split_column: list[str] | None  # the csv's split column (train/val/test), when it had one
    report: LoadReport  # what was skipped and why
    fingerprint: str  # hash of captions and image bytes: keys caches and runs
    lines: list[int] = field(default_factory=list)  # captions.csv line number, per item
    image_digests: np.ndarray | None = None  # uint64 [N]: ``image_digest`` of each item's image file, when known

    def __len__(self) -> int:
        return len(self.captions)

    def image_path(self, i: int) -> Path:
        return self.root / self.images[i]

    def open_image(self, i: int) -> Image.Image:
        """The RGB image of item ``i`` (decoded by :func:`xmodal.data.open_rgb`)."""
        return open_rgb(self.image_path(i))

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
            lines=[self.lines[i] for i in idx] if self.lines else [],
            image_digests=None if self.image_digests is None else self.image_digests[np.asarray(idx, dtype=np.int64)],
        )

    def digest_of(self) -> dict[str, int]:
        """``item_id -> image digest``: tells this catalogue's product from another's under the same id (empty
        when the catalogue was built without digests)."""
        if self.image_digests is None:
            return {}
        return dict(zip(self.item_ids, self.image_digests.tolist()))


def image_digest(sha1: bytes) -> int:
    """An image file's digest as kept per item: the first 8 bytes of the sha1 of the file's bytes."""
    return int.from_bytes(sha1[:8], "little")


def _safe_relative(root: Path, rel: str) -> Path | None:
    """``root/rel`` if ``rel`` is a relative path that stays inside ``root``, else None."""
    if not rel or os.path.isabs(rel) or rel.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", rel):
        return None
    parts = Path(rel).parts
    if ".." in parts:
        return None
    try:
        path = (root / rel).resolve()
        path.relative_to(root.resolve())
    except (ValueError, OSError, RuntimeError):  # a symlink pointing outside (or looping)
        return None
    return path


def check_folder(root: Path) -> Path:
    """``root/captions.csv``, or a CatalogueError saying what is wrong with the folder and what to do."""
    if not root.exists():
        raise CatalogueError(f"{root} does not exist: give a catalogue folder (captions.csv + images) or 'demo'")
    if not root.is_dir():
        hint = f"; use its folder {root.parent}" if root.name == "captions.csv" else ""
        raise CatalogueError(f"{root} is a file, not a folder: give the folder that holds captions.csv{hint}")
    csv_path = root / "captions.csv"
    if csv_path.exists() or csv_path.is_symlink():
        return csv_path
    try:
        entries = {p.name for p in root.iterdir()}
    except OSError as err:
        raise CatalogueError(f"{root} cannot be listed ({err.strerror or err}): check its permissions") from err
    if not entries:
        raise CatalogueError(f"no captions.csv in {root}: the folder is empty; a catalogue is a folder with "
                             "captions.csv (columns image, caption) and its images, or use 'demo'")
    hint = ("it looks like a Kaggle download: python -m xmodal.data import kaggle " + str(root)
            if "styles.csv" in entries else
            "it looks like the research layout: python -m xmodal.data import research " + str(root)
            if "images.csv" in entries else
            "import other layouts with `python -m xmodal.data import`")
    raise CatalogueError(f"no captions.csv in {root}: a catalogue is a folder with captions.csv (columns image, "
                         f"caption) and its images; {hint}")


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")


def _clean_caption(text: str) -> str:
    """One line of text: NFC, control characters and runs of whitespace turned into single spaces."""
    if not text.isascii():
        text = unicodedata.normalize("NFC", text)
    return re.sub(r"\s+", " ", _CONTROL.sub(" ", text)).strip()


def _read_image(path: Path) -> tuple[bytes | None, str | None, str]:
    """(bytes, None, "") or (None, reason, detail) for the image file at ``path``."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None, img.MISSING, ""
    except PermissionError:
        return None, img.NOT_READABLE, "a folder on the way is not accessible"
    except OSError as err:
        return None, UNREADABLE, err.strerror or str(err)
    if stat.S_ISDIR(st.st_mode):
        return None, img.IS_FOLDER, ""
    if not stat.S_ISREG(st.st_mode):
        return None, UNREADABLE, "not a regular file"
    if st.st_size > MAX_IMAGE_BYTES:
        return None, img.TOO_LARGE, f"{st.st_size / 2**20:.0f} MiB file"
    try:
        return path.read_bytes(), None, ""
    except PermissionError:
        return None, img.NOT_READABLE, "chmod a+r"
    except OSError as err:
        return None, UNREADABLE, err.strerror or str(err)


def _split_value(cell: str) -> str | None:
    """The canonical split a csv cell names (``"Validation "`` -> ``"val"``), "" when empty, None if unknown."""
    key = re.sub(r"[\s_\-]+", "", cell.lower())
    return "" if not key else SPLIT_SYNONYMS.get(key)


def _lines_text(lines: list[int]) -> str:
    more = f" and {len(lines) - SHOW_LINES} more" if len(lines) > SHOW_LINES else ""
    return ", ".join(str(n) for n in lines[:SHOW_LINES]) + more


def _check_split_column(csv_path: Path, cells: list[str], lines: list[int]) -> list[str]:
    """The canonical split of every kept row, or a CatalogueError naming the bad lines and values."""
    values = [_split_value(c) for c in cells]
    bad: dict[str, list[int]] = {}
    for cell, v, line in zip(cells, values, lines):
        if v is None:
            bad.setdefault(cell.strip(), []).append(line)
    if bad:
        shown = "; ".join(f"{v!r} on line(s) {_lines_text(ls)}" for v, ls in list(bad.items())[:SHOW_LINES])
        raise CatalogueError(
            f"{csv_path}: the split column holds values that are not a split: {shown}. Accepted: train, val, test "
            "(also training; validation, valid, dev, development; testing, holdout; any case). Fix those cells, "
            "or delete the split column to get a seeded split")
    empty = [line for v, line in zip(values, lines) if v == ""]
    if empty:
        raise CatalogueError(
            f"{csv_path}: the split column is empty on line(s) {_lines_text(empty)}: give every row train, val "
            "or test, or delete the split column to get a seeded split")
    return values  # type: ignore[return-value]


_VERDICTS: dict[bytes, str | None] = {}  # sha1 of an image file's bytes -> check_image's verdict, this process
_MAX_VERDICTS = 500_000


def _verdict(data: bytes) -> str | None:
    """``check_image(data)``, remembered by the bytes' digest: the same bytes always get the same verdict, so a
    catalogue loaded again in this process (or in a child forked from it: the training queue) decodes no
    photo twice."""
    key = hashlib.sha1(data).digest()
    if key not in _VERDICTS:
        verdict = check_image(data)
        if len(_VERDICTS) >= _MAX_VERDICTS:
            _VERDICTS.clear()
        _VERDICTS[key] = verdict
    return _VERDICTS[key]


def _row_item(root: Path, rec: Record, col: dict[str, int], report: LoadReport,
              seen_ids: set[str], check_images: bool) -> tuple[str, str, str, bytes] | None:
    """(image, caption, item id, image bytes) of a usable row; otherwise the skip is reported and None."""
    line = rec.line
    if rec.problem:
        report.skip(rec.problem, f"line {line}" + (f" ({rec.detail})" if rec.detail else ""), advice=rec.advice)
        return None
    rel = rec.fields[col["image"]].strip().replace("\\", "/")
    caption = _clean_caption(rec.fields[col["caption"]])
    item_id = rec.fields[col["item_id"]].strip() if "item_id" in col else ""
    if not item_id:  # the image path names the product: stable when other rows are added or removed
        item_id = rel if rel not in seen_ids else f"{rel}#line{line}"
    if not caption:
        report.skip(EMPTY_CAPTION, f"line {line} ({rel})")
        return None
    if len(caption) > MAX_CAPTION_CHARS:
        report.skip(LONG_CAPTION, f"line {line} ({len(caption):,} characters)", advice=ADVICE[LONG_CAPTION])
        return None
    if not rel:
        report.skip(EMPTY_PATH, f"line {line}")
        return None
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", rel):
        report.skip(URL_PATH, f"line {line}: {rel[:80]!r}", advice=ADVICE[URL_PATH])
        return None
    path = _safe_relative(root, rel)
    if path is None:
        report.skip(OUTSIDE, f"line {line}: {rel[:80]!r}", advice=ADVICE[OUTSIDE])
        return None
    if item_id in seen_ids:
        report.skip(DUPLICATE_ID, f"line {line}: {item_id}", advice=ADVICE[DUPLICATE_ID])
        return None
    data, problem, detail = _read_image(path)  # read once: checked and fingerprinted from memory
    if data is not None and check_images:
        problem = _verdict(data)
    if problem:
        report.skip(problem, f"line {line}: {rel}" + (f" ({detail})" if detail else ""))
        return None
    return rel, caption, item_id, data


def load_catalogue(root: str | os.PathLike, check_images: bool = True) -> Catalogue:
    """Read and validate ``root/captions.csv``.

    Args:
        root: the catalogue folder.
        check_images: decode every image once to drop corrupt files (slow on huge catalogues).

    Returns:
        The usable items, with a report of what was skipped.

    Raises:
        CatalogueError: no folder or csv, an unreadable or empty csv, required columns missing, a split
            column with unknown or empty values, or no usable row.
    """
    root = Path(root).expanduser()
    csv_path = check_folder(root)
    table = read_table(csv_path, required=REQUIRED_COLUMNS, known=KNOWN_COLUMNS)
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        one = table.columns[0] if len(table.columns) == 1 else ""
        other = (" (the whole header is one quoted field: remove the quotes around it)" if "," in one else
                 " (the header looks separated by something other than commas: use commas)"
                 if any(d in one for d in ";\t|") else "")
        raise CatalogueError(f"{csv_path} lacks column(s) {missing}; found {table.columns}{other}. "
                             "Required: image (path relative to the folder), caption.")
    col = {c: i for i, c in enumerate(table.columns) if c}
    attr_cols = [c for c in col if c not in KNOWN_COLUMNS]
    report = LoadReport(total_rows=len(table.records), notes=list(table.notes))
    images: list[str] = []
    captions: list[str] = []
    item_ids: list[str] = []
    lines: list[int] = []
    split_cells: list[str] = []
    attrs: dict[str, list[str]] = {c: [] for c in attr_cols}
    seen_ids: set[str] = set()
    digests: list[int] = []
    hasher = hashlib.sha256()
    for rec in table.records:
        item = _row_item(root, rec, col, report, seen_ids, check_images)
        if item is None:
            continue
        rel, caption, item_id, data = item
        seen_ids.add(item_id)
        images.append(rel)
        captions.append(caption)
        item_ids.append(item_id)
        lines.append(rec.line)
        for c in attr_cols:
            attrs[c].append(rec.fields[col[c]].strip())
        if "split" in col:
            split_cells.append(rec.fields[col["split"]])
        hasher.update(f"{rel}\t{caption}\t{item_id}\t{len(data)}\n".encode())
        sha1 = hashlib.sha1(data).digest()
        hasher.update(sha1)
        digests.append(image_digest(sha1))
    report.kept = len(captions)
    if not table.records:
        raise CatalogueError(f"{csv_path} has a header but no data rows: add one row per product "
                             "(image path, caption)")
    if not captions:
        raise CatalogueError(f"{csv_path} has no usable rows; fix these rows or the images they name: "
                             + "; ".join(line.strip() for line in report.summary().splitlines()))
    splits = _check_split_column(csv_path, split_cells, lines) if "split" in col else None
    return Catalogue(root=root, images=images, captions=captions, item_ids=item_ids,
                     attributes=attrs, split_column=splits, report=report,
                     fingerprint=hasher.hexdigest()[:16], lines=lines,
                     image_digests=np.array(digests, dtype=np.uint64))


__all__ = ["Catalogue", "CatalogueError", "LoadReport", "load_catalogue", "normalise_caption", "check_folder",
           "image_digest", "MAX_IMAGE_PIXELS", "MAX_CAPTION_CHARS", "SPLITS", "SPLIT_SYNONYMS"]
