"""``python -m xmodal.export``: the parquet file reads back to the run's embeddings and metadata, the
Embedding Projector folder is well formed (row counts, sprite size, config paths) with catalogue text made
TSV-safe, bad arguments are one line and exit 2, and the Embeddings page's selection downloads."""
from __future__ import annotations

import csv
import io
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from xmodal.retrieval.export import (THUMB, clean_cell, frame_bytes, main, selection_frame, sprite_layout,
                           true_match_ranks)


@pytest.fixture(scope="module")
def run(trained_run):
    from xmodal.retrieval.run import load_run
    return load_run(trained_run)


def test_true_match_ranks_against_brute_force():
    rng = np.random.default_rng(0)
    img, txt = rng.normal(size=(40, 8)), rng.normal(size=(40, 8))
    captions = [f"title {i % 30}" for i in range(40)]  # items 30..39 share a title with 0..9
    txt[30:] = txt[:10]  # identical titles embed identically, as a model's text tower makes them
    ranks = true_match_ranks(img, txt, captions)
    sim = txt @ img.T
    for q in range(40):
        same = [j for j in range(40) if captions[j] == captions[q]]
        best_t2i, best_i2t = sim[q, same].max(), sim[same, q].max()
        assert ranks["t2i_rank"][q] == 1 + sum(sim[q, j] >= best_t2i for j in range(40) if j not in same)
        assert ranks["i2t_rank"][q] == 1 + sum(sim[j, q] >= best_i2t for j in range(40) if j not in same)


def test_parquet_round_trip(run, trained_run, tmp_path, capsys):
    assert main(["--run", str(trained_run), "--format", "parquet", "--out", str(tmp_path)]) == 0
    assert "wrote 60 items" in capsys.readouterr().out
    table = pq.read_table(tmp_path / "embeddings.parquet")
    cat = run.catalogue
    assert np.array_equal(np.stack(table["image_embedding"].to_numpy(zero_copy_only=False)), run.image_embeds.numpy())
    assert np.array_equal(np.stack(table["text_embedding"].to_numpy(zero_copy_only=False)), run.text_embeds.numpy())
    frame = table.drop(["image_embedding", "text_embedding"]).to_pandas()
    assert frame["item_id"].tolist() == cat.item_ids and frame["caption"].tolist() == cat.captions
    assert frame["image"].tolist() == cat.images
    for name, values in cat.attributes.items():
        assert frame[name].tolist() == values
    import json
    splits = json.loads((trained_run / "splits.json").read_text())
    for split in ("train", "val", "test"):
        assert sorted(frame.loc[frame["split"] == split, "item_id"]) == sorted(splits[split])
    ranks = true_match_ranks(run.image_embeds, run.text_embeds, cat.captions)
    assert frame["t2i_rank"].tolist() == ranks["t2i_rank"].tolist() and frame["i2t_rank"].min() >= 1
    meta = json.loads(table.schema.metadata[b"xmodal"])
    assert meta["model"] == "cmpm-efficientnet" and meta["run"] == trained_run.name
    assert meta["embed_dim"] == run.model.cfg.embed_dim == run.image_embeds.shape[1]


@pytest.fixture
def awkward_catalogue(tiny_catalogue, tmp_path) -> Path:
    """The tiny catalogue with tabs, line breaks and quotes in captions, ids and attribute values."""
    folder = tmp_path / "awkward"
    shutil.copytree(tiny_catalogue, folder)
    with open(folder / "captions.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for i, row in enumerate(rows):
        row["caption"] = f"{row['caption']}\twith a tab\nand a new line \"quoted\""
        row["colour"] = f"{row['colour']}\r\n\tx"
        if i % 5 == 0:
            row["item_id"] = f"id\t{i}\nnext"
    with open(folder / "captions.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return folder


def test_projector_folder_is_well_formed(run, trained_run, awkward_catalogue, tmp_path):
    assert main(["--run", str(trained_run), "--data", str(awkward_catalogue), "--format", "projector",
                 "--out", str(tmp_path)]) == 0
    folder = tmp_path / "projector"
    config = (folder / "projector_config.pbtxt").read_text()
    entries = re.findall(r"embeddings \{(.*?)\n\}", config, re.S)
    assert len(entries) == 2
    n = 60
    for entry in entries:
        paths = dict(re.findall(r'(tensor_path|metadata_path|image_path): "([^"]+)"', entry))
        assert set(paths) == {"tensor_path", "metadata_path", "image_path"}
        assert all((folder / p).is_file() for p in paths.values())  # relative to the config, inside the folder
        dims = [int(d) for d in re.findall(r"single_image_dim: (\d+)", entry)]
        assert dims == list(THUMB)
        tensors = np.loadtxt(folder / paths["tensor_path"], delimiter="\t", dtype=np.float32)
        assert tensors.shape == (n, run.model.cfg.embed_dim)
        assert np.allclose(np.linalg.norm(tensors, axis=1), 1, atol=1e-4)
    lines = (folder / "metadata.tsv").read_text(encoding="utf-8").split("\n")
    assert lines[-1] == "" and len(lines) == n + 2  # header, n rows, final newline
    header = lines[0].split("\t")
    assert header[:4] == ["item_id", "caption", "split", "image"] and header[-2:] == ["t2i_rank", "i2t_rank"]
    rows = [line.split("\t") for line in lines[1:-1]]
    assert all(len(r) == len(header) for r in rows)
    assert rows[0][0] == "id 0 next" and rows[0][1].endswith("with a tab and a new line \"quoted\"")
    split = header.index("split")
    assert all((r[split] == "") == r[0].startswith("id ") for r in rows)  # new ids: in no split of the run
    side = math.ceil(math.sqrt(n))
    with Image.open(folder / "sprite.png") as sprite:
        assert sprite.size == (side * THUMB[0], side * THUMB[1])
        cell = np.asarray(sprite.crop((0, 0, THUMB[0], THUMB[1])))
    assert cell.std() > 5  # the first product's photo is there, not a blank cell


def test_sprite_cells_shrink_for_big_catalogues():
    assert sprite_layout(10) == (4, THUMB)
    side, (w, h) = sprite_layout(100_000)
    assert side == 317 and side * h <= 8192 and side * w <= 8192 and w / h == pytest.approx(0.75, abs=0.05)


def test_clean_cell():
    assert clean_cell("a\tb\r\nc\x00d\u2028e") == "a b c d e"
    # metadata.tsv wrote =HYPERLINK(...) verbatim: a spreadsheet ran it
    assert clean_cell('=HYPERLINK("http://x", "y")') == '\'=HYPERLINK("http://x", "y")'
    assert [clean_cell(v) for v in ("+1", "-2", "@sum", " =x", "1-2")] == ["'+1", "'-2", "'@sum", "'=x", "1-2"]


@pytest.mark.parametrize("argv, says", [
    (["--run", "/no/such/run", "--format", "parquet"], "/no/such/run is not a folder"),
    (["--run", "RUN", "--format", "parquet", "--data", "/no/such/catalogue"], "/no/such/catalogue"),
    (["--run", "RUN", "--format", "csv"], "invalid choice: 'csv'"),
    (["--run", "RUN"], "required: --format"),
    (["--run", "EMPTY", "--format", "parquet"], "not a run folder")])
def test_bad_arguments_are_one_line_and_exit_2(trained_run, tmp_path, capsys, argv, says):
    argv = [str(trained_run) if a == "RUN" else str(tmp_path) if a == "EMPTY" else a for a in argv]
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and says in err, err
    assert not (Path(trained_run) / "export").exists()


def test_selection_downloads_round_trip():
    rng = np.random.default_rng(0)
    img, txt = rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=(3, 4)).astype(np.float32)
    frame = selection_frame(["a", "=HYPERLINK(1)", "c"], ["Red Shirt", "x,\"y\"\nz", "-1+1"], img, txt)
    back = pd.read_parquet(io.BytesIO(frame_bytes(frame, "parquet")))
    assert back["item_id"].tolist() == ["a", "=HYPERLINK(1)", "c"]
    assert np.array_equal(np.stack(back["image_embedding"]), img)
    table = pd.read_csv(io.BytesIO(frame_bytes(frame, "csv")))
    assert table.columns.tolist() == ["item_id", "caption", *[f"image_{j}" for j in range(4)],
                                      *[f"text_{j}" for j in range(4)]]
    assert table["item_id"].tolist() == ["a", "'=HYPERLINK(1)", "c"]  # a formula stays text in a spreadsheet
    assert table["caption"].tolist() == ["Red Shirt", "x,\"y\"\nz", "'-1+1"]
    assert np.allclose(table[[f"text_{j}" for j in range(4)]].to_numpy(), txt)
    with pytest.raises(ValueError, match="unknown format"):
        frame_bytes(frame, "xlsx")


def _download_script() -> None:
    import numpy as np

    from xmodal.dashboard.maps.export_view import selection_download
    data = {"item_ids": ["a", "b", "c"], "captions": ["Red <b>Shirt</b>", "Blue Kurta", "x"],
            "image_embeds": np.eye(3, 4, dtype=np.float32), "text_embeds": np.eye(3, 4, k=1, dtype=np.float32)}
    selection_download("run <1>", data, [0, 2])


def test_embeddings_page_download_button():
    at = AppTest.from_function(_download_script, default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.radio(key="emb_export_format").options == ["CSV", "Parquet"]
    buttons = at.get("download_button")
    assert len(buttons) == 1 and "2 item(s)" in buttons[0].proto.label
    at.radio(key="emb_export_format").set_value("Parquet").run()
    assert not at.exception and "Parquet" in at.get("download_button")[0].proto.label
