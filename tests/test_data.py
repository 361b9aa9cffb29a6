"""Catalogue loading and validation, splits, the demo generator and both importers."""
import csv
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import myntra_or_skip
from xmodal.data import CatalogueError, describe_split, generate_demo, load_catalogue, make_splits
from xmodal.data.__main__ import main as data_cli
from xmodal.data.demo import BRANDS, COLOURS, GARMENTS, PATTERNS
from xmodal.data.importers import import_kaggle, import_research


def write_catalogue(root: Path, rows: list[dict], header=("image", "caption", "item_id", "colour")) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "captions.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(header))
        w.writeheader()
        w.writerows(rows)
    return root


def jpeg(path: Path, colour=(200, 10, 10)) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (30, 40), colour).save(path)
    return path.name


def test_loader_reports_every_problem_and_keeps_the_rest(tmp_path):
    root = tmp_path / "cat"
    for i in range(4):
        jpeg(root / "images" / f"{i}.jpg")
    (root / "images" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    jpeg(tmp_path / "outside.jpg")
    rows = [
        {"image": "images/0.jpg", "caption": "Roadster Men Red Tshirt", "item_id": "a", "colour": "Red"},
        {"image": "images/1.jpg", "caption": "Nike Women Red Shoes", "item_id": "b", "colour": "Red"},
        {"image": "images/corrupt.jpg", "caption": "Broken Image", "item_id": "c", "colour": ""},
        {"image": "images/missing.jpg", "caption": "Missing File", "item_id": "d", "colour": ""},
        {"image": "images/2.jpg", "caption": "   ", "item_id": "e", "colour": ""},
        {"image": "../../x.jpg", "caption": "Escapes The Folder", "item_id": "f", "colour": ""},
        {"image": str(tmp_path / "outside.jpg"), "caption": "Absolute Path", "item_id": "g", "colour": ""},
        {"image": "images/3.jpg", "caption": "Duplicate Id", "item_id": "a", "colour": ""},
    ]
    cat = load_catalogue(write_catalogue(root, rows))
    assert cat.captions == ["Roadster Men Red Tshirt", "Nike Women Red Shoes"]
    assert cat.attributes["colour"] == ["Red", "Red"]
    rep = cat.report
    assert rep.total_rows == 8 and rep.kept == 2
    assert rep.skipped == {"corrupt image": 1, "missing image": 1, "empty caption": 1,
                           "image path outside the folder": 2, "duplicate item id": 1}
    assert "../../x.jpg" in " ".join(rep.examples["image path outside the folder"])
    assert "skipped 2 (image path outside the folder)" in rep.summary()


def test_broken_csv_row_is_skipped(tmp_path):
    root = tmp_path / "cat"
    jpeg(root / "a.jpg")
    (root / "captions.csv").write_text("image,caption\na.jpg,Good Title\na.jpg,Too,Many,Fields\n")
    cat = load_catalogue(root)
    assert len(cat) == 1 and cat.report.skipped == {"broken csv row (extra fields)": 1}


def test_no_usable_rows_and_missing_columns_are_clear_errors(tmp_path):
    with pytest.raises(CatalogueError, match="no captions.csv"):
        load_catalogue(tmp_path)
    write_catalogue(tmp_path / "a", [{"image": "x.jpg", "caption": "Gone"}], header=("image", "caption"))
    with pytest.raises(CatalogueError, match="no usable rows"):
        load_catalogue(tmp_path / "a")
    write_catalogue(tmp_path / "b", [{"img": "x.jpg", "title": "t"}], header=("img", "title"))
    with pytest.raises(CatalogueError, match="lacks column"):
        load_catalogue(tmp_path / "b")


def test_fingerprint_follows_content(tmp_path):
    root = tmp_path / "cat"
    jpeg(root / "a.jpg")
    write_catalogue(root, [{"image": "a.jpg", "caption": "Red Shirt"}], header=("image", "caption"))
    first = load_catalogue(root).fingerprint
    assert load_catalogue(root).fingerprint == first
    jpeg(root / "a.jpg", colour=(0, 0, 250))
    assert load_catalogue(root).fingerprint != first


def test_splits_seeded_item_level_or_from_csv(tiny_catalogue, tmp_path):
    cat = load_catalogue(tiny_catalogue)
    a, b = make_splits(cat, seed=3, grouping="item"), make_splits(cat, seed=3, grouping="item")
    assert all(np.array_equal(a[s], b[s]) for s in a)
    assert not np.array_equal(a["train"], make_splits(cat, seed=4, grouping="item")["train"])
    allidx = np.concatenate([a["train"], a["val"], a["test"]])
    assert sorted(allidx.tolist()) == list(range(len(cat)))  # disjoint and complete
    assert len(a["train"]) == 48 and len(a["val"]) == 6 and len(a["test"]) == 6
    perm = np.random.default_rng(3).permutation(60)  # the first releases' split, exactly
    assert a["train"].tolist() == sorted(perm[:48].tolist()) and a["test"].tolist() == sorted(perm[54:].tolist())
    root = tmp_path / "split"
    names = [jpeg(root / f"{i}.jpg") for i in range(4)]
    write_catalogue(root, [{"image": n, "caption": f"Item {i}", "split": s}
                           for i, (n, s) in enumerate(zip(names, ["test", "train", "val", "train"]))],
                    header=("image", "caption", "split"))
    sp = make_splits(load_catalogue(root))
    assert sp["test"].tolist() == [0] and sp["train"].tolist() == [1, 3] and sp["val"].tolist() == [2]
    assert describe_split(load_catalogue(root)) == "csv split column"
    assert describe_split(cat) == "seeded title-grouped split 80/10/10"
    assert describe_split(cat, grouping="item", fractions=(0.7, 0.15, 0.15)) == "seeded item-level split 70/15/15"


def test_demo_catalogue_is_rich_deterministic_and_fast(tmp_path):
    assert len(GARMENTS) >= 8 and len(COLOURS) >= 12 and len(PATTERNS) >= 4 and len(BRANDS) >= 4
    t = time.time()
    generate_demo(tmp_path / "a", n=200, seed=5)
    per_item = (time.time() - t) / 200
    generate_demo(tmp_path / "b", n=200, seed=5)
    assert (tmp_path / "a" / "captions.csv").read_text() == (tmp_path / "b" / "captions.csv").read_text()
    assert (tmp_path / "a/images/demo_00007.jpg").read_bytes() == (tmp_path / "b/images/demo_00007.jpg").read_bytes()
    cat = load_catalogue(tmp_path / "a")
    assert len(cat) == 200
    assert any(" & " in c for c in cat.captions), "two-colour items"
    assert any(g in cat.captions[0] for g in ("Men", "Women", "Unisex"))
    assert per_item < 0.1, f"{per_item:.3f} s per item"  # loose: 2000 items well within 30 s


def test_kaggle_importer_joins_titles_with_commas(tmp_path):
    src = tmp_path / "kaggle"
    for i in (1, 2, 3):
        jpeg(src / "images" / f"{i}.jpg")
    (src / "styles.csv").write_text(
        "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName\n"
        "1,Men,Apparel,Topwear,Tshirts,Navy Blue,Fall,2011,Casual,Turtle Check Men Navy Blue Shirt\n"
        "2,Women,Apparel,Topwear,Kurtas,Red,Summer,2012,Ethnic,Biba Women Red, Gold Kurta, Set\n"
        "3,Men,Footwear,Shoes,Casual Shoes,White,Summer,2012,Casual,Puma Men White Shoes\n"
        "4,Men,Footwear,Shoes,Casual Shoes,White,Summer,2012,Casual,No Image For This One\n")
    res = import_kaggle(src, tmp_path / "out")
    assert res.rows == 3 and res.dropped == {"image missing": 1}
    cat = load_catalogue(tmp_path / "out")
    assert cat.captions[1] == "Biba Women Red, Gold Kurta, Set"
    assert cat.attributes["colour"] == ["Navy Blue", "Red", "White"]
    assert cat.attributes["sub_category"][2] == "Shoes"
    assert data_cli(["import", "kaggle", str(src)]) == 0  # in place
    assert len(load_catalogue(src)) == 3


def test_research_importer(tmp_path):
    src = tmp_path / "research"
    jpeg(src / "10.jpg")
    jpeg(src / "11.jpg")
    with open(src / "images.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["link", "description", "id"])
        w.writerow(["http://shop/10", "Women Blue, White Printed Kurta", "10"])
        w.writerow(["http://shop/11", "Men Black Jeans", "11"])
        w.writerow(["http://shop/12", "Gone", "12"])
    res = import_research(src, tmp_path / "out")
    assert res.rows == 2
    cat = load_catalogue(tmp_path / "out")
    assert cat.captions == ["Women Blue, White Printed Kurta", "Men Black Jeans"]
    assert cat.item_ids == ["10", "11"]


def test_importer_errors_are_clear(tmp_path, capsys):
    assert data_cli(["import", "kaggle", str(tmp_path)]) == 2
    assert "styles.csv" in capsys.readouterr().err


def test_myntra_loads_cleanly():
    root = myntra_or_skip()
    cat = load_catalogue(root, check_images=False)
    assert len(cat) == 10100
    assert {"gender", "master_category", "sub_category", "colour"} <= set(cat.attributes)
