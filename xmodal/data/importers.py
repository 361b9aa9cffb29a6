"""Importers from other catalogue layouts into xmodal's (``captions.csv`` + images).

- ``kaggle``: the Kaggle "Fashion Product Images" layout: ``styles.csv`` (id, gender, masterCategory,
  subCategory, articleType, baseColour, season, year, usage, productDisplayName) and
  ``images/<id>.jpg``. Some titles hold unquoted commas that spill into extra columns; they are
  joined back.
- ``research``: the original research project's ``images.csv`` (link, description, id) with images
  stored as ``<id>.jpg``.

Rows whose image is absent, or whose id could name a file outside the folder (``../x``), are dropped and
counted; everything else is left to the loader's checks. Both write through ``writing.write_catalogue``: a new
folder whole (rows and images of this import only), never over a user's catalogue without ``overwrite``.
"""
from __future__ import annotations

import csv
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .writing import check_in_place, safe_id, write_catalogue

KAGGLE_ATTRS = {"gender": "gender", "masterCategory": "master_category", "subCategory": "sub_category",
                "articleType": "article_type", "baseColour": "colour", "season": "season",
                "year": "year", "usage": "usage"}


@dataclass
class ImportResult:
    """What an import wrote."""

    out_dir: Path  # the catalogue folder written
    rows: int = 0  # rows written to captions.csv
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> count


def _place_image(src: Path, out_dir: Path, rel: str) -> None:
    """Make ``out_dir/rel`` hold ``src`` (a hard link, else a copy)."""
    dest = out_dir / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():  # a second row of the same id: its image is there already
        return
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)


def _write_captions(out_dir: Path, rows: list[dict], fieldnames: list[str]) -> None:
    tmp = out_dir / "captions.csv.tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, out_dir / "captions.csv")


def _in_place(src: Path, out: str | os.PathLike | None) -> bool:
    return not out or Path(out).expanduser().resolve() == src.resolve()


def _write(src: Path, out: str | os.PathLike | None, rows: list[dict], images: list[tuple[Path, str]],
           fieldnames: list[str], overwrite: bool, flag: str) -> Path:
    """Write the import: in place (only captions.csv) when ``out`` is empty or the source, else a new folder."""
    if _in_place(src, out):
        check_in_place(src, overwrite, flag)
        _write_captions(src, rows, fieldnames)
        return src

    def build(folder: Path) -> None:
        for image, rel in images:
            _place_image(image, folder, rel)
        _write_captions(folder, rows, fieldnames)
    return write_catalogue(out, build, overwrite, flag)


def _drop(result: ImportResult, why: str) -> None:
    result.dropped[why] = result.dropped.get(why, 0) + 1


def import_kaggle(src: str | os.PathLike, out: str | os.PathLike | None = None, overwrite: bool = False,
                  flag: str = "--overwrite") -> ImportResult:
    """Import a Kaggle "Fashion Product Images" folder (``styles.csv`` + ``images/``).

    Args:
        src: the Kaggle folder.
        out: a new catalogue folder; None or ``src``: in place (writes only ``captions.csv``).
        overwrite: replace a catalogue already at ``out`` (or ``src``'s own captions.csv in place).
        flag: how the user asks to overwrite, for the refusal's message.

    Raises:
        FileNotFoundError, ValueError: not the Kaggle layout. ``writing.TargetExists``: ``out`` holds something.
    """
    src = Path(src)
    styles = src / "styles.csv"
    if not styles.is_file():
        raise FileNotFoundError(f"no styles.csv in {src}: expected the Kaggle 'Fashion Product Images' layout")
    result = ImportResult(out_dir=src)
    rows, images = [], []
    with open(styles, newline="", encoding="utf-8-sig", errors="replace") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader)]
        if "id" not in header or "productDisplayName" not in header:
            raise ValueError(f"{styles} header {header} lacks id / productDisplayName")
        n_cols = len(header)
        title_at = header.index("productDisplayName")
        for fields in reader:
            if not fields:
                continue
            if len(fields) > n_cols and title_at == n_cols - 1:  # unquoted commas in the title
                fields = fields[:title_at] + [",".join(fields[title_at:])]
            if len(fields) != n_cols:
                _drop(result, "malformed row")
                continue
            rec = dict(zip(header, (x.strip() for x in fields)))
            if not safe_id(rec["id"]):  # "../../x" would name a file outside the folders
                _drop(result, "id not a plain file name")
                continue
            image = src / "images" / f"{rec['id']}.jpg"
            if not image.is_file():
                _drop(result, "image missing")
                continue
            rel = f"images/{rec['id']}.jpg"
            images.append((image, rel))
            row = {"image": rel, "caption": rec["productDisplayName"], "item_id": rec["id"]}
            row.update({new: rec.get(old, "") for old, new in KAGGLE_ATTRS.items()})
            rows.append(row)
    result.out_dir = _write(src, out, rows, images, ["image", "caption", "item_id", *KAGGLE_ATTRS.values()],
                            overwrite, flag)
    result.rows = len(rows)
    return result


def import_research(src: str | os.PathLike, out: str | os.PathLike | None = None, overwrite: bool = False,
                    flag: str = "--overwrite") -> ImportResult:
    """Import the original research project's ``images.csv`` (link, description, id; ``<id>.jpg``).

    Arguments and errors as ``import_kaggle``.
    """
    src = Path(src)
    table = src / "images.csv"
    if not table.is_file():
        raise FileNotFoundError(f"no images.csv in {src}: expected columns link, description, id")
    result = ImportResult(out_dir=src)
    rows, images, in_place = [], [], _in_place(src, out)
    with open(table, newline="", encoding="utf-8-sig", errors="replace") as f:
        reader = csv.DictReader(f)
        cols = [c.strip() for c in reader.fieldnames or []]
        reader.fieldnames = cols
        if not {"description", "id"} <= set(cols):
            raise ValueError(f"{table} header {cols} lacks description / id")
        for rec in reader:
            item = (rec.get("id") or "").strip()
            if item and not safe_id(item):
                _drop(result, "id not a plain file name")
                continue
            image = next((p for p in (src / f"{item}.jpg", src / "images" / f"{item}.jpg") if p.is_file()), None)
            if not item or image is None:
                _drop(result, "image missing")
                continue
            # a new folder keeps its images under images/ (what a catalogue folder holds); in place they stay
            rel = image.relative_to(src).as_posix() if in_place else f"images/{image.name}"
            images.append((image, rel))
            rows.append({"image": rel, "caption": (rec.get("description") or "").strip(), "item_id": item,
                         "link": (rec.get("link") or "").strip()})
    result.out_dir = _write(src, out, rows, images, ["image", "caption", "item_id", "link"], overwrite, flag)
    result.rows = len(rows)
    return result


IMPORTERS = {"kaggle": import_kaggle, "research": import_research}
