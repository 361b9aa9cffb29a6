"""Sprite sheets for the map's hover photos (xmodal/dashboard/maps/sprites.py): each cell is its item's photo, in
map order across sheets; unreadable photos get a grey cell; the key follows the catalogue and the items."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from xmodal.dashboard.maps import sprites


def _photos(folder, n):
    """n photos of distinct solid colours (3:4), one broken file, one missing path."""
    folder.mkdir(parents=True, exist_ok=True)
    paths, colours = [], []
    rng = np.random.default_rng(0)
    for i in range(n):
        c = tuple(int(v) for v in rng.integers(0, 256, 3))
        p = folder / f"{i}.jpg"
        Image.new("RGB", (150, 200), c).save(p, quality=95)
        paths.append(str(p))
        colours.append(c)
    (folder / "broken.jpg").write_bytes(b"not a jpeg at all")
    return paths, colours


def _cell(folder, meta, i):
    sheet = Image.open(folder / meta["sheets"][i // meta["per_sheet"]]).convert("RGB")
    j = i % meta["per_sheet"]
    w, h = meta["cell"]
    x, y = (j % meta["cols"]) * w, (j // meta["cols"]) * h
    return np.asarray(sheet.crop((x, y, x + w, y + h)), dtype=np.float32)


def test_cells_hold_each_items_photo_in_map_order(tmp_path, monkeypatch):
    monkeypatch.setattr(sprites, "PER_SHEET", 6)  # several sheets, the last one partly filled
    monkeypatch.setattr(sprites, "COLS", 3)
    paths, colours = _photos(tmp_path / "img", 14)
    images = paths[:13] + [str(tmp_path / "img" / "broken.jpg"), str(tmp_path / "img" / "gone.jpg")]
    out = sprites.build(tmp_path / "s", images)
    meta = sprites.read_meta(out)
    assert meta["n"] == 15 and len(meta["sheets"]) == 3 and meta["unreadable"] == 2
    for i in range(13):
        centre = _cell(out, meta, i)[30:50, 20:40].mean((0, 1))
        assert np.abs(centre - np.array(colours[i])).max() < 12, (i, centre, colours[i])
    for i in (13, 14):  # unreadable: grey
        assert np.abs(_cell(out, meta, i).mean((0, 1)) - np.array(sprites.MISSING)).max() < 6
    first = (out / meta["sheets"][0]).stat().st_mtime_ns
    sprites.build(out, images)  # a complete set is kept as it is
    assert (out / meta["sheets"][0]).stat().st_mtime_ns == first


def test_an_incomplete_set_reads_as_missing(tmp_path):
    paths, _ = _photos(tmp_path / "img", 3)
    out = sprites.build(tmp_path / "s", paths)
    assert sprites.read_meta(out) is not None
    meta = json.loads((out / sprites.META).read_text())
    (out / meta["sheets"][0]).unlink()
    assert sprites.read_meta(out) is None
    (out / sprites.META).write_text(json.dumps({**meta, "sheets": ["../../etc/passwd"]}))
    assert sprites.read_meta(out) is None
    (out / sprites.META).write_text("{")
    assert sprites.read_meta(out) is None
    assert sprites.read_meta(sprites.build(tmp_path / "s", paths)) is not None  # made again


def test_key_follows_catalogue_and_items(tmp_path):
    a = sprites.sprite_key("f1", np.array([1, 2, 3]))
    assert a == sprites.sprite_key("f1", np.array([1, 2, 3], dtype=np.int32))
    assert a != sprites.sprite_key("f2", np.array([1, 2, 3]))
    assert a != sprites.sprite_key("f1", np.array([1, 3, 2]))
    run = tmp_path / "runs" / "r1"
    assert sprites.sprite_folder(run, "f1", np.array([1, 2, 3])).parent == tmp_path / "runs" / sprites.SHARED_DIR


def test_maps_too_large_get_no_sheets(tmp_path, monkeypatch):
    monkeypatch.setattr(sprites, "MAX_ITEMS", 2)
    assert sprites.build_for_map(tmp_path / "r", np.arange(3), ["x"] * 3) is None


@pytest.mark.parametrize("bad", [b"", b"\x89PNG\r\n\x1a\n" + b"\0" * 40])
def test_thumbnail_of_a_bad_file_is_none(tmp_path, bad):
    p = tmp_path / "x.png"
    p.write_bytes(bad)
    assert sprites.thumbnail(p) is None
