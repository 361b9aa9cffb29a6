"""Compare's hubs and failure clusters (issue 23 §2-3): the NumPy k-occurrence and its jackknife interval against
brute force, a group's items under another model, which run fixes a planted failure group, and the page drawn
with AppTest on two runs whose embeddings are planted (run A fails one colour, B fixes it; one photo is a
hub): its numbers, links, saved slice and escaped catalogue text."""
from __future__ import annotations

import csv
import re
import time
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from xmodal.evaluation.failures import _groups, failure_clusters, group_items
from xmodal.retrieval.hubness import skewness, skewness_interval, split_hubness, top_k

REPO = Path(__file__).resolve().parents[1]
HOSTILE = "Teal <img src=x>"  # the planted group's colour: catalogue text, shown escaped


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _brute_counts(queries, gallery, k):
    return np.bincount(np.argsort(-(queries @ gallery.T), axis=1, kind="stable")[:, :k].ravel(),
                       minlength=len(gallery))


def test_top_k_and_the_jackknife_interval_against_brute_force():
    rng = np.random.default_rng(0)
    q, g = _unit(rng.normal(size=(70, 8))), _unit(rng.normal(size=(50, 8)))
    assert (np.bincount(top_k(q, g, 5).ravel(), minlength=50) == _brute_counts(q, g, 5)).all()
    q[3, 0] = np.nan  # a non-finite query never puts anything in anyone's top k twice
    assert all(len(set(row)) == 5 for row in top_k(q, g, 5))
    q = _unit(rng.normal(size=(70, 8)))
    tops = top_k(q, g, 5)
    loo = np.array([skewness(np.bincount(np.delete(tops, i, 0).ravel(), minlength=50)) for i in range(70)])
    se = np.sqrt(69 / 70 * ((loo - loo.mean()) ** 2).sum())
    centre = skewness(np.bincount(tops.ravel(), minlength=50))
    assert skewness_interval(tops, 50) == pytest.approx((centre - 1.96 * se, centre + 1.96 * se), abs=1e-3)


def test_split_hubness_names_the_planted_hub_both_ways():
    rng = np.random.default_rng(1)
    img = _unit(np.eye(40, 48) + 0.01 * rng.normal(size=(40, 48)))
    txt = img.copy()
    img[7] = _unit(txt.sum(0, keepdims=True))[0]  # photo 7 sits amid every title: a hub for title queries
    res = split_hubness(img, txt, k=3, top=2)
    t2i = res["text_to_image"]
    assert t2i["top"][0] == [7, 40] and t2i["max_share"] == 100.0 and t2i["gallery"] == t2i["queries"] == 40
    assert t2i["skewness"] == pytest.approx(skewness(_brute_counts(txt, img, 3)))
    lo, hi = t2i["skewness_ci95"]
    assert lo <= t2i["skewness"] <= hi
    assert res["image_to_text"]["top"][0][1] < 40  # the titles have no hub


def test_group_items_are_the_groups_clusters_were_tested_on():
    rng = np.random.default_rng(2)
    n = 300
    attrs = {"colour": list(rng.choice(["Blue", "Red", " Black "], n)), "kind": list(rng.choice(["Kurta", "Shoe"], n))}
    captions = [f"{c} {k}" for c, k in zip(attrs["colour"], attrs["kind"])]
    for a in (attrs, {}):
        groups = _groups(a, captions, 3)
        for key in list(groups)[:20]:
            assert group_items([list(x) for x in key], a, captions) == groups[key]
    assert group_items([["colour", "Black"], ["size", "M"]], attrs, captions) == []


def test_a_run_that_fixes_a_planted_group_is_named_and_one_that_does_not_is_not():
    from xmodal.dashboard.failures_view import fix_table, rate_difference
    n = 120
    colour = ["Teal" if i < 20 else ("Red", "Blue", "Black")[i % 3] for i in range(n)]
    attrs, captions = {"colour": colour}, [f"{c} shirt {i}" for i, c in enumerate(colour)]
    good = np.ones(n)
    bad = np.where(np.arange(n) < 20, 50.0, 1.0)
    ranks = {"A": bad, "B": good, "C": bad.copy()}
    found = {label: failure_clusters(r, attrs, captions, k=10) for label, r in ranks.items()}
    assert [c["name"] for c in found["A"]["clusters"]] == ["Teal"] and not found["B"]["clusters"]
    row = fix_table(ranks, found, attrs, captions, 10).set_index("group").loc["Teal"]
    assert row["items"] == 20 and row["cluster under"] == "A, C"
    assert row["B"].startswith("0 of 20 · 0% [") and row["A"].startswith("20 of 20 · 100% [")
    assert row["fixed by"].startswith("B (-100 points") and row["not fixed by"].startswith("C (+0 points")
    d = rate_difference(np.r_[np.zeros(10), np.ones(10)], np.ones(20))
    assert d["difference"] == -50 and d["lo"] < -50 < d["hi"] < 0


# ---------------------------------------------------------------- the page

def _plant(run_dir: Path, catalogue: Path, fails: bool) -> list[str]:
    """Replace the run's catalogue embeddings by planted ones: every item in the test split, 12 of them coloured
    ``HOSTILE`` whose titles point away from their photos when ``fails``; the last photo a hub. Returns the ids."""
    from xmodal.dashboard.maps import embeds
    with open(catalogue / "captions.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    n = len(rows)
    rng = np.random.default_rng(3)
    img = _unit(np.eye(n, 64) + 0.02 * rng.normal(size=(n, 64)))
    txt = img.copy()
    colour = [HOSTILE if i < 12 else ("Red", "Blue", "Black")[i % 3] for i in range(n)]
    if fails:
        txt[:12] = _unit(-img[:12] + 0.02 * rng.normal(size=(12, 64)))
    img[n - 1] = _unit(txt[12:].sum(0, keepdims=True))[0]
    path = embeds.embeds_path(run_dir)
    np.savez(path, image=img, text=txt, item_ids=np.array([r["item_id"] for r in rows]),
             captions=np.array([f"{c} shirt {i}" for i, c in enumerate(colour)]),
             images=np.array([r["image"] for r in rows]), root=np.array(str(catalogue.resolve())),
             split=np.array(["test"] * n), attr_colour=np.array(colour))
    return [r["item_id"] for r in rows]


@pytest.fixture
def planted(trained_run, tiny_catalogue, tmp_path, monkeypatch) -> dict:
    from dashboard_runs import copy_run
    root = tmp_path / "ckpt"
    root.mkdir()
    now = time.time()
    runs = {}
    for i, (name, fails) in enumerate((("run-a", True), ("run-b", False))):
        runs[name] = copy_run(trained_run, root / name, created=now - i, shift=-i)  # a, then b by rsum
        ids = _plant(runs[name], tiny_catalogue, fails)
    monkeypatch.setenv("XMODAL_CHECKPOINTS", str(root))
    return {"root": root, "runs": runs, "ids": ids}


def _frame(at, column):
    """The first table with ``column`` (AppTest keeps the key of selectable tables only)."""
    return next(d.value for d in at.dataframe if column in d.value.columns)


def test_compare_shows_clusters_their_fixes_links_slices_and_hubs(planted, tiny_catalogue):
    from xmodal.dashboard import catalogues, slices
    from xmodal.runs import read_json
    at = AppTest.from_file(str(REPO / "dashboard.py"), default_timeout=120)
    at.session_state["cat_source"], at.session_state["cat_folder"] = "folder", str(tiny_catalogue)
    at.run()
    at.switch_page("pages/compare.py").run()
    assert not at.exception, [e.value for e in at.exception]
    at.multiselect(key="cmp_runs").set_value(["run-a", "run-b"]).run()
    assert not at.exception, [e.value for e in at.exception]
    label = {name: f"cmpm-efficientnet · {name}" for name in planted["runs"]}  # analysis.run_label
    fixes = _frame(at, "fixed by").set_index("group").loc[HOSTILE]
    assert fixes["items"] == 12 and fixes["fixed by"].startswith(f"{label['run-b']} (-100 points")
    assert fixes["cluster under"] == label["run-a"] and not fixes["not fixed by"]
    clusters = _frame(at, "x base rate")
    assert clusters["group"].tolist() == [HOSTILE] and clusters["failures"].iloc[0] == 12
    assert clusters["x base rate"].iloc[0].startswith("5.0x [")  # 12 of 12 against 12 of 60
    links = {p.proto.label: p.proto for p in at.get("page_link")}
    search = dict(re.findall(r"([^&=]+)=([^&]*)", links["Search a failed title"].query_string))
    assert search["search_run"] == "run-a" and search["search_q"].startswith("Teal+%3Cimg+src%3Dx%3E+shirt+")
    ringed = re.findall(r"focus=([^&]*)", links["Show its failures on the map"].query_string)
    assert sorted(ringed) == sorted(planted["ids"][:12])
    at.button(key="cmp_fail_slice_save").click().run()
    run_a = planted["runs"]["run-a"]
    folder = slices.slices_folder(run_a, catalogues.catalogue_id(read_json(run_a / "config.json")).fingerprint)
    saved = slices.load_slices(folder)
    assert list(saved.values()) == [planted["ids"][:12]] and "fails@10 run-a" in next(iter(saved))
    hubs = _frame(at, "never retrieved %")
    t2i = hubs[(hubs["run"] == label["run-a"]) & (hubs["queries"] == "text → image")].iloc[0]
    assert t2i["gallery"] == 60 and t2i["biggest hub: queries"] >= 48  # every good title retrieves the hub photo
    top = _frame(at, "retrieved by")
    assert top["item"].iloc[0] == planted["ids"][-1] and top["queries"].iloc[0] == "text → image"
    for kind in ("markdown", "caption", "info"):  # the hostile colour reached Markdown only escaped
        for e in at.get(kind):
            assert not re.search(r"(?<!\\)<", e.value), e.value
