"""Importers from other catalogue layouts into xmodal's (``captions.csv`` + images).

- ``kaggle``: the Kaggle "Fashion Product Images" layout: ``styles.csv`` (id, gender, masterCategory,
  subCategory, articleType, baseColour, season, year, usage, productDisplayName) and
  ``images/<id>.jpg``. Some titles hold unquoted commas that spill into extra columns; they are
  joined back.
- ``research``: the original research project's ``images.csv`` (link, description, id) with images
  stored as ``<id>.jpg``.

Rows whose image is absent are dropped and counted; everything else is left to the loader's checks.
"""
from __future__ import annotations

import csv
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

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
    """Make ``out_dir/rel`` hold ``src`` (nothing to do in place; hard link, else copy)."""
    dest = out_dir / rel
    if dest.resolve() == src.resolve():
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        return
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)


def _write_captions(out_dir: Path, rows: list[dict], fieldnames: list[str]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "captions.csv.tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, out_dir / "captions.csv")


def import_kaggle(src: str | os.PathLike, out: str | os.PathLike | None = None) -> ImportResult:
    """Import a Kaggle "Fashion Product Images" folder (``styles.csv`` + ``images/``)."""
    src = Path(src)
    out_dir = Path(out) if out else src
    styles = src / "styles.csv"
    if not styles.is_file():
        raise FileNotFoundError(f"no styles.csv in {src}: expected the Kaggle 'Fashion Product Images' layout")
    result = ImportResult(out_dir=out_dir)
    rows = []
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
                result.dropped["malformed row"] = result.dropped.get("malformed row", 0) + 1
                continue
            rec = dict(zip(header, (x.strip() for x in fields)))
            image = src / "images" / f"{rec['id']}.jpg"
            if not image.is_file():
                result.dropped["image missing"] = result.dropped.get("image missing", 0) + 1
                continue
            rel = f"images/{rec['id']}.jpg"
            _place_image(image, out_dir, rel)
            row = {"image": rel, "caption": rec["productDisplayName"], "item_id": rec["id"]}
            row.update({new: rec.get(old, "") for old, new in KAGGLE_ATTRS.items()})
            rows.append(row)
    _write_captions(out_dir, rows, ["image", "caption", "item_id", *KAGGLE_ATTRS.values()])
    result.rows = len(rows)
    return result


def import_research(src: str | os.PathLike, out: str | os.PathLike | None = None) -> ImportResult:
    """Import the original research project's ``images.csv`` (link, description, id; ``<id>.jpg``)."""
    src = Path(src)
    out_dir = Path(out) if out else src
    table = src / "images.csv"
    if not table.is_file():
        raise FileNotFoundError(f"no images.csv in {src}: expected columns link, description, id")
    result = ImportResult(out_dir=out_dir)
    rows = []
    with open(table, newline="", encoding="utf-8-sig", errors="replace") as f:
        reader = csv.DictReader(f)
        cols = [c.strip() for c in reader.fieldnames or []]
        reader.fieldnames = cols
        if not {"description", "id"} <= set(cols):
            raise ValueError(f"{table} header {cols} lacks description / id")
        for rec in reader:
            item = (rec.get("id") or "").strip()
            image = next((p for p in (src / f"{item}.jpg", src / "images" / f"{item}.jpg") if p.is_file()), None)
            if not item or image is None:
                result.dropped["image missing"] = result.dropped.get("image missing", 0) + 1
                continue
            rel = image.relative_to(src).as_posix()
            _place_image(image, out_dir, rel)
            rows.append({"image": rel, "caption": (rec.get("description") or "").strip(), "item_id": item,
                         "link": (rec.get("link") or "").strip()})
    _write_captions(out_dir, rows, ["image", "caption", "item_id", "link"])
    result.rows = len(rows)
    return result


IMPORTERS = {"kaggle": import_kaggle, "research": import_research}
