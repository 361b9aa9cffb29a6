"""Slices of a catalogue as plain functions (xmodal.dashboard.slices): metrics per attribute value with Wilson
intervals, small slices flagged and ranked last, the attributes offered, saved slices with untrusted names and
shared by every run on the catalogue, and a csv export that keeps text as text."""
from __future__ import annotations

import io

import numpy as np
import pytest

from xmodal.dashboard import analysis, slices
from xmodal.evaluation import metrics


def test_slice_metrics_by_hand():
    ranks = {"text_to_image": np.array([1, 2, 10, 1]), "image_to_text": np.array([1, 1, 1, 30])}
    df = slices.slice_metrics(ranks, {"gender": ["Men", "Men", "Women", "Women"], "colour": ["", "", "", ""]},
                              min_n=1)
    assert set(df["attribute"]) == {"gender"}  # empty values are not a slice
    men = df[(df["value"] == "Men") & (df["direction"] == "text_to_image")].iloc[0]
    assert (men["n"], men["R@1"], men["R@5"], men["median_rank"]) == (2, 50.0, 100.0, 1.0)
    assert (men["R@1 lo"], men["R@1 hi"]) == tuple(round(x, 1) for x in metrics.wilson(1, 2))
    women = df[(df["value"] == "Women") & (df["direction"] == "image_to_text")].iloc[0]
    assert (women["R@1"], women["R@10"]) == (50.0, 50.0)
    assert df["small"].sum() == 0 and slices.slice_metrics(ranks, {"gender": ["Men"] * 4})["small"].all()


def test_small_slices_are_flagged_and_not_ranked():
    rng = np.random.default_rng(0)
    values = ["big"] * 40 + ["tiny"] * 3 + ["mid"] * 20
    ranks = {d: rng.integers(1, 30, len(values)) for d in analysis.DIRECTIONS}
    ranks["text_to_image"][43:] = 1  # "mid" is perfect
    ranks["text_to_image"][40:43] = 1  # "tiny" too, but on 3 queries
    df = slices.slice_metrics(ranks, {"type": values})
    t2i = df[df["direction"] == "text_to_image"]
    assert t2i["value"].tolist() == ["mid", "big", "tiny"]  # ranked by R@10, the small one last whatever its score
    assert t2i.set_index("value")["small"].to_dict() == {"mid": False, "big": False, "tiny": True}
    tiny = t2i.set_index("value").loc["tiny"]
    assert tiny["R@1"] == 100.0 and tiny["R@1 lo"] < 50  # perfect on 3 queries is a wide interval
    assert all(float(x) == round(float(x), 1) for x in df["R@10"])  # rounded
    lo, hi = slices.bootstrap_median(np.array([1, 1, 2, 3, 50]))
    assert 1 <= lo <= hi <= 50


def test_slice_attributes_offer_pattern_and_brand_and_skip_ids():
    n = 300
    attrs = {"brand": ["A", "B"] * (n // 2), "pattern": ["Solid", "Striped", "Dotted"] * (n // 3),
             "colour": ["Blue"] * n, "sku": [str(i) for i in range(n)], "zzz": ["x", "y", ""] * (n // 3),
             "gender": ["Men", "Women"] * (n // 2)}
    assert slices.slice_attributes(attrs) == ["pattern", "brand", "gender", "zzz"]  # known first; no constant, no ids


def test_saved_slices_round_trip_with_untrusted_names(tmp_path):
    bad = "<img src=x onerror=alert(1)>\n**name**"
    name = slices.save_slice(tmp_path, bad, ["a", "b", "a"])
    assert name == "<img src=x onerror=alert(1)> **name**"  # one line, kept as text (escaped where shown)
    assert slices.load_slices(tmp_path) == {name: ["a", "b"]}
    assert slices.save_slice(tmp_path, name, ["c"]) == name and slices.load_slices(tmp_path)[name] == ["c"]
    with pytest.raises(ValueError, match="name"):
        slices.save_slice(tmp_path, "  \t ", ["a"])
    with pytest.raises(ValueError, match="empty"):
        slices.save_slice(tmp_path, "x", [])
    assert slices.delete_slice(tmp_path, name) and not slices.delete_slice(tmp_path, name)
    (tmp_path / slices.SLICES_FILE).write_text('["not", "a", "dict"]')
    assert slices.load_slices(tmp_path) == {}
    (tmp_path / slices.SLICES_FILE).write_text('{"ok": ["1", 2, null, {"x": 1}], "bad": "no"}')
    assert slices.load_slices(tmp_path) == {"ok": ["1", "2"]}


def test_export_csv_keeps_text_as_text():
    import csv
    data = slices.export_csv(["1", "=HYPERLINK(1)"], ["Red, \"quoted\" shirt", "+cmd"], {"colour": ["-x", "Blue"]})
    rows = list(csv.reader(io.StringIO(data.decode("utf-8"))))
    assert rows == [["item_id", "title", "colour"], ["1", 'Red, "quoted" shirt', "'-x"],
                    ["'=HYPERLINK(1)", "'+cmd", "Blue"]]


def test_slices_belong_to_the_catalogue_not_the_run(tmp_path):
    from xmodal.runs import list_runs
    runs = tmp_path / "runs"
    a, b, other = runs / "run-a", runs / "run-b", runs / "run-c"
    shared = slices.slices_folder(a, "1a2B3c")
    assert shared == slices.slices_folder(b, "1a2B3c") != slices.slices_folder(other, "ffff")
    assert slices.slices_folder(a, "../../etc/<x>") == runs / slices.SHARED_DIR / "ec"  # only hex survives
    assert slices.slices_folder(a, "") == a  # no fingerprint: the run keeps its own
    slices.save_slice(shared, "blue tops", ["i1", "i2"])  # saved from run a's map...
    assert slices.load_slices(slices.slices_folder(b, "1a2B3c")) == {"blue tops": ["i1", "i2"]}  # ...seen from b
    assert slices.load_slices(slices.slices_folder(other, "ffff")) == {}
    assert list_runs(runs) == []  # the shared folder is not taken for a run
