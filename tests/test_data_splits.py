"""Bad splits: the split column's synonyms, unknown values and empty cells, csv splits without val or test,
fractions that leave a split empty, tiny catalogues, and the title-grouped split (identical titles kept in one
split, too few distinct titles refused, no title leakage on Myntra)."""
from pathlib import Path

import numpy as np
import pytest

from catalogue_kit import folder, one_line
from tests.conftest import myntra_or_skip
from xmodal.data import (CatalogueError, describe_split, load_catalogue, make_splits, normalise_caption,
                         unseen_title_mask)


# --- the split column ------------------------------------------------------------------------------------

def split_csv(tmp_path: Path, values: list[str]) -> Path:
    rows = "".join(f"images/{i}.jpg,Item {i},{v}\n" for i, v in enumerate(values))
    return folder(tmp_path, "image,caption,split\n" + rows, n_images=len(values))


def test_split_synonyms_are_accepted(tmp_path):
    cat = load_catalogue(split_csv(tmp_path, ["Training", " train ", "VALIDATION", "dev", "Testing", "holdout",
                                              "valid", "Test"]))
    assert cat.split_column == ["train", "train", "val", "val", "test", "test", "val", "test"]
    sp = make_splits(cat)
    assert sp["train"].tolist() == [0, 1] and sp["val"].tolist() == [2, 3, 6] and sp["test"].tolist() == [4, 5, 7]
    assert describe_split(cat) == "csv split column"


def test_unknown_split_values_are_refused_with_lines_and_values(tmp_path):
    with pytest.raises(CatalogueError) as err:
        load_catalogue(split_csv(tmp_path, ["train", "tset", "val", "eval", "test", "tset"]))
    msg = one_line(err)
    assert "'tset' on line(s) 3, 7" in msg and "'eval' on line(s) 5" in msg
    assert "Accepted: train, val, test" in msg and "captions.csv" in msg


def test_empty_split_cells_are_refused_with_lines(tmp_path):
    with pytest.raises(CatalogueError, match=r"split column is empty on line\(s\) 3, 5") as err:
        load_catalogue(split_csv(tmp_path, ["train", "", "val", "  ", "test"]))
    one_line(err)


@pytest.mark.parametrize("values, missing", [
    (["train", "train", "train", "test"], "val"),
    (["train", "train", "val", "val"], "test"),
    (["train", "val", "val", "test"], "train"),
])
def test_csv_split_without_val_or_test_is_refused(tmp_path, values, missing):
    cat = load_catalogue(split_csv(tmp_path, values))
    with pytest.raises(CatalogueError, match=f"too few items in {missing}") as err:
        make_splits(cat)
    assert "captions.csv: the csv split column" in one_line(err)


def test_fractions_that_leave_a_split_empty_are_refused(tiny_catalogue):
    cat = load_catalogue(tiny_catalogue)
    for grouping in ("title", "item"):
        with pytest.raises(CatalogueError, match=r"fractions \(0.9, 0.1, 0.0\) leave no test items") as err:
            make_splits(cat, fractions=(0.9, 0.1, 0.0), grouping=grouping)
        one_line(err)
    with pytest.raises(ValueError, match="sum to 1"):
        make_splits(cat, fractions=(0.5, 0.1, 0.1))
    with pytest.raises(ValueError, match="unknown split grouping 'caption'; choose one of title, item"):
        make_splits(cat, grouping="caption")


@pytest.mark.parametrize("n", [1, 2, 3])
def test_tiny_catalogues_are_refused_with_the_count_and_minimum(tmp_path, n):
    cat = load_catalogue(folder(tmp_path, "image,caption\n" + "".join(f"images/{i}.jpg,Item {i}\n"
                                                                       for i in range(n)), n_images=n))
    with pytest.raises(CatalogueError, match=f"only {n} usable item\\(s\\); .* at least 4") as err:
        make_splits(cat)
    one_line(err)


# --- title-grouped split ---------------------------------------------------------------------------------

def dup_catalogue(tmp_path: Path, n_titles: int = 60, seed: int = 0) -> Path:
    """A catalogue whose titles repeat 1-6 times (like shop titles shared across colours)."""
    rng = np.random.default_rng(seed)
    titles = [t for k in range(n_titles) for t in [f"Brand{k} Men Shirt"] * int(rng.integers(1, 7))]
    titles = [t.upper() if i % 3 == 0 else t for i, t in enumerate(titles)]  # same title, other case
    rows = "".join(f"images/0.jpg,{t},id{i}\n" for i, t in enumerate(titles))
    return folder(tmp_path, "image,caption,item_id\n" + rows, n_images=1)


def test_title_grouped_split_keeps_identical_titles_together(tmp_path):
    cat = load_catalogue(dup_catalogue(tmp_path))
    sp = make_splits(cat, seed=0)  # title grouping is the default
    assert sorted(np.concatenate(list(sp.values())).tolist()) == list(range(len(cat)))
    key = [normalise_caption(c) for c in cat.captions]
    train = {key[i] for i in sp["train"]}
    assert not train & {key[i] for i in sp["val"]} and not train & {key[i] for i in sp["test"]}
    assert not {key[i] for i in sp["val"]} & {key[i] for i in sp["test"]}
    assert unseen_title_mask(cat, sp["test"], sp["train"]).all()
    n = len(cat)
    assert abs(len(sp["train"]) - 0.8 * n) <= 6 and abs(len(sp["test"]) - 0.1 * n) <= 6
    again = make_splits(cat, seed=0)
    assert all(np.array_equal(sp[s], again[s]) for s in sp)
    assert not np.array_equal(sp["test"], make_splits(cat, seed=1)["test"])
    item = make_splits(cat, seed=0, grouping="item")
    assert not unseen_title_mask(cat, item["test"], item["train"]).all()  # the item split leaks titles


def test_title_split_refuses_too_few_distinct_titles(tmp_path):
    root = folder(tmp_path, "image,caption\n" + "images/0.jpg,Same Shirt\n" * 5 + "images/0.jpg,Other\n", 1)
    cat = load_catalogue(root)
    with pytest.raises(CatalogueError, match="2 distinct titles.*item-level grouping") as err:
        make_splits(cat)
    one_line(err)
    assert sum(map(len, make_splits(cat, grouping="item").values())) == 6


def test_unseen_title_mask():
    from xmodal.data import Catalogue, LoadReport
    cat = Catalogue(root=Path("."), images=["a"] * 4, captions=["Red Shirt", "red  shirt", "Blue Jeans", "Cap"],
                    item_ids=list("abcd"), attributes={}, split_column=None, report=LoadReport(), fingerprint="x")
    assert unseen_title_mask(cat, [1, 2, 3], [0]).tolist() == [False, True, True]
    assert unseen_title_mask(cat, [], [0]).dtype == bool


def test_myntra_title_split_has_no_title_leakage():
    cat = load_catalogue(myntra_or_skip(), check_images=False)
    sp = make_splits(cat, seed=0)
    assert not (~unseen_title_mask(cat, sp["test"], sp["train"])).any()
    assert not (~unseen_title_mask(cat, sp["val"], sp["train"])).any()
    n = len(cat)
    assert all(abs(len(sp[s]) - f * n) <= 0.01 * n for s, f in zip(("train", "val", "test"), (0.8, 0.1, 0.1)))
