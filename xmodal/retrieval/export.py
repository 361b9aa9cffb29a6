"""Take a run's joint space with you: every item's embeddings and metadata, as parquet or for TensorBoard.

``python -m xmodal.export --run DIR [--data DIR] --format parquet|projector [--out DIR]``

- ``parquet``: ``embeddings.parquet``, one row per gallery item: ``item_id``, ``caption``, ``split`` (train / val
  / test from the run's ``splits.json``; empty for items the run never saw), ``image`` (the path inside the
  catalogue), the catalogue's attribute columns, ``image_embedding`` and ``text_embedding`` (fixed-size lists
  of float32, L2-normalised: the vectors search uses), and ``t2i_rank`` / ``i2t_rank``: the 1-based rank of
  the item's true match when its caption (photo) is the query over the whole exported gallery, identical
  titles counting as the true match (caption-level). The file's metadata names the model and the run.
- ``projector``: a folder that TensorBoard's Embedding Projector opens as it is (``tensorboard --logdir
  OUT/projector``): ``projector_config.pbtxt`` with two tensors (``image embeddings``, ``text embeddings``),
  ``image_tensors.tsv`` / ``text_tensors.tsv``, ``metadata.tsv`` (a header, then one row per item, the same
  columns as the parquet file but the embeddings; tabs and line breaks in catalogue text become spaces) and
  ``sprite.png``: the product photos as thumbnails, ``ceil(sqrt(n))`` to a side, row-major.

``--out`` defaults to ``<run>/export``. A bad ``--run``, ``--data`` or ``--format`` is one line on stderr and
exit code 2.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import re
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
from PIL import Image

from ..data.catalogue import SPLITS
from ..data.images import open_rgb
from ..evaluation import metrics
from ..runs import read_json

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from .run import Run

FORMATS = ("parquet", "projector")
THUMB = (48, 64)  # sprite cell (width, height): the catalogue's 3:4 portrait photos
MAX_SPRITE = 8192  # the Projector's largest sprite side: cells shrink to keep the sheet within it
_CONTROL = re.compile(r"[\t\r\n\x00-\x1f\x7f\u2028\u2029]+")


def clean_cell(value: object) -> str:
    """A metadata cell for a TSV file: tabs, line breaks and other control characters become one space, and a
    leading formula character is neutralised (:func:`spreadsheet_safe`): the file opens in spreadsheets too."""
    return spreadsheet_safe(_CONTROL.sub(" ", str(value)).strip())


def spreadsheet_safe(value: str) -> str:
    """A CSV cell that a spreadsheet shows as text: a leading ``= + - @`` (a formula) gets a ``'`` before it."""
    return f"'{value}" if value[:1] in ("=", "+", "-", "@") else value


def true_match_ranks(image_embeds, text_embeds, captions: Sequence[str]) -> dict[str, np.ndarray]:
    """1-based rank of each item's true match, both directions, over all items (caption-level ground truth,
    by the metrics core).

    Returns:
        ``{"t2i_rank": [N], "i2t_rank": [N]}`` (int64).
    """
    ranks = metrics.split_ranks(image_embeds, text_embeds, list(captions), "caption")
    return {"t2i_rank": ranks["text_to_image"], "i2t_rank": ranks["image_to_text"]}


def split_of_items(run_dir: str | Path, item_ids: Sequence[str]) -> list[str]:
    """Each of ``item_ids``' split in the run at ``run_dir`` (``train`` / ``val`` / ``test``, from its
    ``splits.json``; empty for an item the run never saw)."""
    splits = read_json(Path(run_dir) / "splits.json", default={}) or {}
    where = {x: s for s in SPLITS for x in (splits.get(s) or []) if isinstance(x, str)}
    return [where.get(x, "") for x in item_ids]


def item_splits(run: Run) -> list[str]:
    """Each gallery item's split in the run (``train`` / ``val`` / ``test``; empty when the run never saw it)."""
    return split_of_items(run.dir, run.catalogue.item_ids)


def metadata_columns(run: Run) -> dict[str, list]:
    """Every item's metadata: id, caption, split, image path, attributes and true-match ranks, in order."""
    cat = run.catalogue
    ranks = true_match_ranks(run.image_embeds, run.text_embeds, cat.captions)
    reserved = {"item_id", "caption", "split", "image", "t2i_rank", "i2t_rank", "image_embedding", "text_embedding"}
    attrs = {(k if k not in reserved else f"attr_{k}"): list(v) for k, v in cat.attributes.items()}
    return {"item_id": list(cat.item_ids), "caption": list(cat.captions), "split": item_splits(run),
            "image": list(cat.images), **attrs, "t2i_rank": ranks["t2i_rank"].tolist(),
            "i2t_rank": ranks["i2t_rank"].tolist()}


def _embedding_array(x: np.ndarray) -> pa.Array:
    import pyarrow as pa  # lazy: pyarrow, only when a parquet file is written
    x = np.ascontiguousarray(x, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1), type=pa.float32()), x.shape[1])


def embeddings_table(run: Run) -> pa.Table:
    """The parquet file's table (see the module docstring)."""
    import pyarrow as pa  # lazy: pyarrow, only when a parquet file is written
    cols = metadata_columns(run)
    arrays = {k: pa.array(v, type=pa.int64() if k.endswith("_rank") else pa.string()) for k, v in cols.items()}
    arrays["image_embedding"] = _embedding_array(run.image_embeds.numpy())
    arrays["text_embedding"] = _embedding_array(run.text_embeds.numpy())
    meta = {"model": run.name, "run": run.dir.name, "embed_dim": run.model.cfg.embed_dim,
            "catalogue": str(run.catalogue.root), "catalogue_fingerprint": run.catalogue.fingerprint,
            "ranks": "1-based rank of the true match over every exported item, identical titles count as it"}
    return pa.table(arrays).replace_schema_metadata({"xmodal": json.dumps(meta)})


def write_parquet(run: Run, out: Path) -> Path:
    """``out/embeddings.parquet``; returns its path."""
    import pyarrow.parquet as pq  # lazy: pyarrow, only when a parquet file is written
    out.mkdir(parents=True, exist_ok=True)
    path = out / "embeddings.parquet"
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(embeddings_table(run), tmp)
    os.replace(tmp, path)
    return path


def sprite_layout(n: int, thumb: tuple[int, int] = THUMB) -> tuple[int, tuple[int, int]]:
    """(cells per side, cell size (width, height)): ``ceil(sqrt(n))`` cells a side, each ``thumb`` or smaller
    so that the sheet stays within ``MAX_SPRITE`` pixels."""
    side = max(1, math.ceil(math.sqrt(n)))
    scale = min(1.0, MAX_SPRITE / (side * max(thumb)))
    return side, (max(1, int(thumb[0] * scale)), max(1, int(thumb[1] * scale)))


def sprite_image(paths: Sequence[Path], thumb: tuple[int, int] = THUMB) -> tuple[np.ndarray, tuple[int, int]]:
    """The sprite sheet ``[side * h, side * w, 3]`` (uint8) of the photos at ``paths``, each letterboxed into
    its cell on white; a photo that cannot be read leaves a grey cell. Returns the sheet and the cell size."""
    side, (w, h) = sprite_layout(len(paths), thumb)
    sheet = np.full((side * h, side * w, 3), 255, dtype=np.uint8)
    for i, path in enumerate(paths):
        r, c = divmod(i, side)
        try:
            im = open_rgb(path)
            im.thumbnail((w, h), Image.BILINEAR)
            cell = np.asarray(im, dtype=np.uint8)
            y, x = (h - cell.shape[0]) // 2, (w - cell.shape[1]) // 2
            sheet[r * h + y:r * h + y + cell.shape[0], c * w + x:c * w + x + cell.shape[1]] = cell
        except (OSError, ValueError):  # gone or corrupt since the catalogue was checked
            sheet[r * h:(r + 1) * h, c * w:(c + 1) * w] = 200
    return sheet, (w, h)


def _write_tensor_tsv(path: Path, x: np.ndarray) -> None:
    with open(path, "w", encoding="utf-8") as f:
        np.savetxt(f, np.asarray(x, dtype=np.float32), fmt="%.7g", delimiter="\t")


PBTXT_ENTRY = """embeddings {{
  tensor_name: "{name}"
  tensor_path: "{tensors}"
  metadata_path: "metadata.tsv"
  sprite {{
    image_path: "sprite.png"
    single_image_dim: {w}
    single_image_dim: {h}
  }}
}}
"""


def write_projector(run: Run, out: Path, thumb: tuple[int, int] = THUMB) -> Path:
    """The TensorBoard Embedding Projector folder ``out/projector`` (see the module docstring); returns it."""
    folder = out / "projector"
    folder.mkdir(parents=True, exist_ok=True)
    cols = metadata_columns(run)
    names = list(cols)
    with open(folder / "metadata.tsv", "w", encoding="utf-8", newline="") as f:
        f.write("\t".join(clean_cell(c) for c in names) + "\n")
        for row in zip(*cols.values()):
            f.write("\t".join(clean_cell(v) for v in row) + "\n")
    _write_tensor_tsv(folder / "image_tensors.tsv", run.image_embeds.numpy())
    _write_tensor_tsv(folder / "text_tensors.tsv", run.text_embeds.numpy())
    sheet, (w, h) = sprite_image([run.catalogue.image_path(i) for i in range(len(run.catalogue))], thumb)
    Image.fromarray(sheet).save(folder / "sprite.png")
    config = "".join(PBTXT_ENTRY.format(name=name, tensors=tensors, w=w, h=h) for name, tensors in
                     (("image embeddings", "image_tensors.tsv"), ("text embeddings", "text_tensors.tsv")))
    (folder / "projector_config.pbtxt").write_text(config, encoding="utf-8")
    return folder


# ------------------------------------------------------------------------------- a selection, as a download

def selection_frame(item_ids: Sequence[str], captions: Sequence[str], image_embeds, text_embeds) -> pd.DataFrame:
    """A table of chosen items: ``item_id``, ``caption``, ``image_embedding``, ``text_embedding`` (lists)."""
    import pandas as pd  # lazy: pandas, only for a download
    img, txt = np.asarray(image_embeds, np.float32), np.asarray(text_embeds, np.float32)
    return pd.DataFrame({"item_id": list(item_ids), "caption": list(captions),
                         "image_embedding": list(img), "text_embedding": list(txt)})


def frame_bytes(frame: pd.DataFrame, fmt: str) -> bytes:
    """``frame`` as a ``csv`` file (embeddings as columns ``image_0..``, ``text_0..``; text cells that a
    spreadsheet would read as a formula start with ``'``) or a ``parquet`` file (embeddings as lists)."""
    import pandas as pd  # lazy: pandas, only for a download
    if fmt == "parquet":
        buf = io.BytesIO()
        frame.to_parquet(buf, index=False)
        return buf.getvalue()
    if fmt != "csv":
        raise ValueError(f"unknown format {fmt!r}; choose csv or parquet")
    wide = [frame[["item_id", "caption"]].map(lambda v: spreadsheet_safe(str(v)))]
    for col, prefix in (("image_embedding", "image"), ("text_embedding", "text")):
        x = np.stack(frame[col].to_list()) if len(frame) else np.zeros((0, 0), np.float32)
        wide.append(pd.DataFrame(x, columns=[f"{prefix}_{j}" for j in range(x.shape[1])], index=frame.index))
    return pd.concat(wide, axis=1).to_csv(index=False).encode("utf-8")


# ----------------------------------------------------------------------------------------------------- CLI

class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def main(argv: list[str] | None = None) -> int:
    p = _Parser(prog="python -m xmodal.export", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="run folder (checkpoints/<run-id>)")
    p.add_argument("--data", help="catalogue whose items to export (default: the run's own)")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--out", help="output folder (default: <run>/export)")
    p.add_argument("--debug", action="store_true", help="show Python tracebacks (also XMODAL_DEBUG=1)")
    a = p.parse_args(argv)
    debug = a.debug or os.environ.get("XMODAL_DEBUG", "") not in ("", "0")
    from .run import RUN_INPUT_ERRORS, RunError, load_run, run_error_line  # lazy: PyTorch, only in the CLI
    try:
        if not Path(a.run).is_dir():
            raise RunError(f"{a.run} is not a folder: give a run folder (checkpoints/<run-id>)")
        run = load_run(a.run, data=a.data)
        out = Path(a.out) if a.out else Path(a.run) / "export"
        path = write_parquet(run, out) if a.format == "parquet" else write_projector(run, out)
    except RUN_INPUT_ERRORS as err:
        if debug:
            traceback.print_exc()
        print(f"error: {run_error_line(err, a.run)}", file=sys.stderr)
        return 2
    print(f"wrote {len(run.catalogue)} items of {run.name} ({run.dir.name}) to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
