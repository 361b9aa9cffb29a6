"""The Embeddings page's selection download (issue 21 §5): it takes what *Find in the selection* keeps, as
*Export CSV* does, and carries each item's split and attributes beside its embeddings. Drawn with AppTest the
way pages/embeddings.py draws it: the selection panel, then the download."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
from streamlit.testing.v1 import AppTest

TIMEOUT = 60


def _data(catalogue: str) -> dict:
    import csv
    with open(Path(catalogue) / "captions.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))[:6]
    captions = ["Navy Blue Striped Shirt", "Red Kurta", "=navy shirt for men", "Navy Jeans", "White Shirt",
                "Blue T-Shirt"]
    rng = np.random.default_rng(0)
    return {"item_ids": [r["item_id"] if r.get("item_id") else r["image"] for r in rows], "captions": captions,
            "images": [str(Path(catalogue) / r["image"]) for r in rows],
            "split": ["train", "test", "test", "val", "train", "test"],
            "attributes": {"colour": ["Navy Blue", "Red", "Navy Blue", "Navy Blue", "White", "Blue"],
                           "brand": ["Roadster", "Kaveri", "+Nivora", "Roadster", "Solace", "Peakline"]},
            "image_embeds": rng.normal(size=(6, 4)).astype(np.float32),
            "text_embeds": rng.normal(size=(6, 4)).astype(np.float32)}


def _page_script(catalogue: str, folder: str) -> None:
    from pathlib import Path

    from test_selection_download import _data
    from xmodal.dashboard.maps import panels as mapui
    from xmodal.dashboard.maps.export_view import selection_download
    data = _data(catalogue)
    chosen = [0, 1, 2, 3, 4, 5]
    mapui.selection(Path(folder), data, chosen)  # as pages/embeddings.py: the panel, then the download
    selection_download("run-1", data, chosen)


def test_the_download_takes_what_find_keeps_and_carries_the_attributes(tiny_catalogue, tmp_path):
    """The download held all six selected items (the Find box ignored) and no split or attribute column."""
    at = AppTest.from_function(_page_script, args=(str(tiny_catalogue), str(tmp_path)), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    download = next(b for b in at.get("download_button") if b.proto.id.endswith("emb_export_embeddings"))
    assert "6 item(s)" in download.proto.label
    at.text_input(key="emb_sel_find").input("navy shirt").run()
    assert not at.exception, [e.value for e in at.exception]
    labels = [b.proto.label for b in at.get("download_button")]
    assert any(lb.startswith("Download 2 item(s) with their embeddings") for lb in labels), labels
    assert any("item id, title, split, colour, brand, then both embeddings" in c.value for c in at.caption)


def test_the_downloaded_rows_are_the_found_items_with_their_attributes(tiny_catalogue):
    from xmodal.dashboard.maps.export_view import found, selection_bytes
    data = _data(str(tiny_catalogue))
    kept = found(data, range(6), "navy shirt")
    assert kept == [0, 2]
    table = pd.read_csv(io.BytesIO(selection_bytes(data, kept, "csv")), dtype=str, keep_default_na=False)
    assert table.columns[:5].tolist() == ["item_id", "caption", "split", "colour", "brand"]
    assert table["caption"].tolist() == ["Navy Blue Striped Shirt", "'=navy shirt for men"]  # formulas stay text
    assert table["brand"].tolist() == ["Roadster", "'+Nivora"] and table["split"].tolist() == ["train", "test"]
    assert np.allclose(table[[f"text_{j}" for j in range(4)]].astype(float).to_numpy(), data["text_embeds"][kept])
    back = pd.read_parquet(io.BytesIO(selection_bytes(data, kept, "parquet")))
    assert back["colour"].tolist() == ["Navy Blue", "Navy Blue"]
    assert np.array_equal(np.stack(back["image_embedding"]), data["image_embeds"][kept])
