"""Views as URLs and the numbers on them, with AppTest (issue 21 §1 and §2): URL parameters read only what a widget
offers, hostile values ignored and replaced, defaults that can change written anyway, a map link overriding the
session's earlier choices; one ground truth per map, used by its colours, filters and the clicked product's ranks;
every rank said out of what and where; runs still training badged wherever they appear.

The browser side (links clicked, URLs opened in a new session) is in ``tests/test_browser_links.py``.
"""
from __future__ import annotations

import base64
import csv
import json
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from conftest import TINY_SIZE
from apptest_kit import REPO, TIMEOUT, _app, _keys, _no_markup, _ok, _shown

from xmodal.dashboard import pickers
from xmodal.dashboard.maps import projection, view as mapview


@pytest.fixture
def eight(trained_run, tiny_catalogue, tmp_path_factory, monkeypatch) -> dict:
    """The eight runs on two catalogues of ``tests/dashboard_runs.py``, served from their checkpoints folder."""
    from dashboard_runs import two_catalogues
    runs = two_catalogues(trained_run, tiny_catalogue, tmp_path_factory)
    monkeypatch.setenv("XMODAL_CHECKPOINTS", str(runs["root"]))
    return runs


def _params(at: AppTest) -> dict[str, list[str]]:
    """The app's URL parameters, every value as a list."""
    return {k: v if isinstance(v, list) else [v] for k, v in at.query_params.items()}


def _visit(catalogue: Path, page: str, params: dict) -> AppTest:
    """A new session: Home, then ``page`` opened by a URL holding ``params``."""
    at = AppTest.from_file(str(REPO / "dashboard.py"), default_timeout=TIMEOUT)
    at.session_state["cat_source"], at.session_state["cat_folder"] = "folder", str(catalogue)
    at.run()
    at.query_params.clear()
    at.query_params.update(params)
    at.switch_page(page).run()
    _ok(at)
    return at


def _decode(values):
    """A plotly JSON array: a list, or a typed array ``{"dtype", "bdata"}``."""
    if isinstance(values, dict) and "bdata" in values:
        return np.frombuffer(base64.b64decode(values["bdata"]), dtype=np.dtype(values["dtype"])).tolist()
    return list(values)


# ---------------------------------------------------------------- reading URL parameters

def test_url_parameters_read_only_what_the_widget_offers():
    scope = pickers.choice(projection.SCOPES, projection.SCOPE_NAMES)
    assert scope.parse(["whole catalogue"]) == "all" and scope.parse(["all"]) == "all"  # both spellings
    assert scope.encode("all") == ["whole catalogue"] and scope.encode("test") == ["test split"]
    assert scope.parse(["<script>"]) is None and scope.parse([]) is None
    runs = pickers.choices(["demo-run0", "demo-run1", "demo-run2"])
    assert runs.parse(["demo-run2", "<img src=x>", "demo-run0", "demo-run2"]) == ["demo-run2", "demo-run0"]
    assert runs.parse(["second-run1"]) is None and runs.parse([""]) == [] and runs.encode([]) == [""]
    nn = pickers.number(2, 100, integer=True)
    assert nn.parse(["15"]) == 15 and nn.encode(15) == ["15"]
    assert [nn.parse([x]) for x in ("1e9", "1", "nan", "inf", "15.5", "abc", "")] == [None] * 7
    md = pickers.number(0.0, 0.95, step=0.05)
    assert md.parse(["0.35"]) == 0.35 and md.parse(["0.33"]) is None and md.parse(["-0.05"]) is None
    assert md.parse(md.encode(0.1)) == 0.1
    flag = pickers.flag()
    assert flag.parse(["true"]) is True and flag.parse(["0"]) is False and flag.parse(["yes"]) is None
    ranks = pickers.span(mapview.RANK_LABELS)
    assert ranks.parse(["2-5", "1"]) == ("1", "2-5") and ranks.parse(["1"]) is None
    assert ranks.parse(["1", "<b>x</b>"]) is None


def test_a_map_link_names_everything_its_view_needs(tmp_path):
    from xmodal.runs import RunInfo
    run = RunInfo(tmp_path / "run-a", {"model": "siamese", "data": {"name": "demo", "fingerprint": "ab" * 8}},
                  {"state": "finished"}, None, None)
    params = pickers.map_link_params(run, [f"id{i}" for i in range(500)], "colour = <b>Blue</b>" * 30,
                                     scope="all", ground_truth="item")
    assert params["cat"] == "demo-abababab" + "ab" and params["emb_run"] == "run-a"
    assert params["emb_scope"] == "whole catalogue" and params["emb_gt"] == "item"  # spelt as the page reads them
    assert len(params["focus"]) == pickers.MAX_FOCUS and len(params["focus_label"]) == 200
    for bad in ({"scope": "everything"}, {"ground_truth": "<b>"}):
        with pytest.raises(ValueError, match="choose one of"):
            pickers.map_link_params(run, ["x"], "x", **bad)


# ---------------------------------------------------------------- the map's URL

def test_hostile_map_urls_are_ignored_and_replaced(eight, tiny_catalogue):
    at = _visit(tiny_catalogue, "pages/embeddings.py", {
        "emb_run": "<script>x</script>", "emb_scope": "everything", "emb_method": "tsne", "emb_gt": "<b>x</b>",
        "emb_nn": "1e9", "emb_md": "0.33", "emb_colour": "<img src=x onerror=alert(1)>", "emb_lines": "maybe",
        "emb_f_colour": ["Blue", "<img src=x>"], "emb_f_rank": ["1", "<x>"], "emb_point": "nope",
        "emb_saved": "<b>slice</b>", "focus": ["<b>nope</b>"], "focus_label": "**x**"})
    assert at.selectbox(key="emb_run").value == "demo-run0"  # the default: the best healthy run
    assert (at.radio(key="emb_scope").value, at.radio(key="emb_method").value, at.radio(key="emb_gt").value) == (
        "test", "umap", "caption")
    assert (at.slider(key="emb_nn").value, at.slider(key="emb_md").value) == (15, 0.1)
    assert at.selectbox(key="emb_colour").value == "modality" and at.multiselect(key="emb_f_colour").value == ["Blue"]
    assert at.select_slider(key="emb_f_rank").value == ("1", "over 100")
    assert not any(m.label.startswith("Its photo") for m in at.metric)  # no clicked product
    url = _params(at)
    assert url["emb_run"] == ["demo-run0"] and url["emb_scope"] == ["test split"] and url["emb_gt"] == ["caption"]
    assert url["emb_nn"] == ["15"] and url["emb_colour"] == ["modality"] and url["emb_f_colour"] == ["Blue"]
    assert not any(k in url for k in ("emb_point", "emb_f_rank", "emb_saved"))  # bad values dropped, not echoed
    assert any("Located 0 of 1" in _shown(i.value) and "**x**" in _shown(i.value) for i in at.info)
    _no_markup(at)


def test_a_map_link_overrides_the_session_s_earlier_choices(eight, tiny_catalogue):
    """The session showed demo-run2's whole catalogue at item level; a link to demo-run0's test split (the map's
    default run, which Streamlit's URL binding dropped as 'the default') opens exactly that."""
    from xmodal.runs import list_runs
    at = _app(tiny_catalogue)
    at.switch_page("pages/embeddings.py").run()
    at.radio(key="emb_method").set_value("pca").run()
    at.selectbox(key="emb_run").set_value("demo-run2").run()
    at.radio(key="emb_scope").set_value("all").run()
    _ok(at)
    assert any(_shown(c.value).startswith("60 products of demo-run2") for c in at.caption)
    at.switch_page("pages/compare.py").run()
    run0 = next(r for r in list_runs(eight["root"]) if r.run_id == "demo-run0")
    ids = json.loads((run0.path / "splits.json").read_text())["test"][:2]
    link = {"cat": _keys(eight)[0], "emb_run": "demo-run0", "emb_scope": "test split", "emb_gt": "caption",
            "focus": ids, "focus_label": "two test items"}
    assert pickers.map_link_params(run0, ids, "two test items") == link  # what Compare's links send
    at.query_params.clear()
    at.query_params.update(link)
    at.switch_page("pages/embeddings.py").run()
    _ok(at)
    assert at.selectbox(key="emb_run").value == "demo-run0" and at.radio(key="emb_scope").value == "test"
    assert any(_shown(c.value).startswith("6 products of demo-run0") for c in at.caption)
    assert any("Located 2 of 2" in _shown(i.value) for i in at.info)


# ---------------------------------------------------------------- one ground truth, ranks out of what and where

@pytest.fixture(scope="module")
def twins(trained_run, tiny_catalogue, tmp_path_factory) -> dict:
    """A run on the tiny demo whose titles come in threes (items 3k, 3k+1, 3k+2 share one): caption- and item-level
    ranks differ. ``{"root", "catalogue", "run"}``; its map (PCA, test split) made."""
    folder = tmp_path_factory.mktemp("twins") / "cat"
    shutil.copytree(tiny_catalogue, folder)
    with open(folder / "captions.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for i, row in enumerate(rows):
        row["caption"] = rows[i - i % 3]["caption"]
    with open(folder / "captions.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    from xmodal.dashboard.maps import embeds
    from xmodal.training.cli import main
    root = folder.parent / "ckpt"
    assert main(["--model", "cmpm-efficientnet", "--data", str(folder), "--epochs", "2", "--batch-size", "16",
                 "--out", str(root), "--run-id", "twins", *TINY_SIZE]) == 0
    embeds.compute(root / "twins")
    projection.compute(root / "twins", projection.MapSettings("pca", "test"))
    return {"root": root, "catalogue": folder, "run": root / "twins"}


def test_the_map_stores_both_ground_truths_from_the_metrics_core(twins):
    from xmodal.evaluation import metrics
    data = projection.load(projection.projection_path(twins["run"], projection.MapSettings("pca", "test")))
    n = len(data["captions"])
    assert len(set(data["captions"])) < n  # the test split holds items that share a title
    for gt in projection.GROUND_TRUTHS:
        ranks = metrics.split_ranks(data["image_embeds"], data["text_embeds"], data["captions"], gt)
        for d in metrics.DIRECTIONS:
            assert mapview.ranks_of(data, d, gt).tolist() == ranks[d].tolist()
        for i in range(n):  # the click panel ranks as the map colours, under either ground truth
            nb = mapview.neighbours(data["image_embeds"], data["text_embeds"], i, 3, data["captions"], gt)
            assert (nb.photo_rank, nb.title_rank) == (mapview.ranks_of(data, "text_to_image", gt)[i],
                                                      mapview.ranks_of(data, "image_to_text", gt)[i])
    assert any(mapview.ranks_of(data, d, "item")[i] != mapview.ranks_of(data, d, "caption")[i]
               for d in metrics.DIRECTIONS for i in range(n))  # the choice matters here
    flt = mapview.MapFilter(rank_range=("2-5", "over 100"), ground_truth="item")
    assert flt.mask(data).tolist() == (mapview.ranks_of(data, "text_to_image", "item") >= 2).tolist()


@pytest.mark.parametrize("gt", ["caption", "item"])
def test_one_ground_truth_per_map_and_every_rank_says_out_of_what(twins, monkeypatch, gt):
    """The map page's ground truth (in its URL) is the one its colours, its rank filter and the clicked product's
    ranks use, and each says it: 'rank 3 of 6 (test split, item-level)'."""
    monkeypatch.setenv("XMODAL_CHECKPOINTS", str(twins["root"]))
    data = projection.load(projection.projection_path(twins["run"], projection.MapSettings("pca", "test")))
    n = len(data["captions"])
    t2i, i2t = (mapview.ranks_of(data, d, gt) for d in ("text_to_image", "image_to_text"))
    other = mapview.ranks_of(data, "text_to_image", "item" if gt == "caption" else "caption")
    item = int(np.argmax(t2i != other)) if (t2i != other).any() else 0  # an item whose rank the choice changes
    at = _visit(twins["catalogue"], "pages/embeddings.py", {
        "emb_method": "pca", "emb_gt": gt, "emb_colour": "rank: title → photo", "emb_point": data["item_ids"][item]})
    assert at.radio(key="emb_gt").value == gt
    metric = {m.label: m for m in at.metric}
    photo = metric["Its photo, for its title"]
    assert photo.value == f"rank {t2i[item]} of {n}" and photo.proto.delta == f"test split, {gt}-level"
    assert metric["Its title, for its photo"].value == f"rank {i2t[item]} of {n}"
    said = f"rank {t2i[item]} of {n} (test split, {gt}-level)"
    assert any(said in _shown(c.value) for c in at.caption), [c.value for c in at.caption]
    assert any(f"Ranks are {gt}-level among the {n} items of this map" in _shown(c.value) for c in at.caption)
    fig = json.loads(at.get("plotly_chart")[0].proto.spec)
    photos = next(t for t in fig["data"] if t.get("name") == "photos")
    colour = dict(zip(_decode(photos["customdata"]), _decode(photos["marker"]["color"])))
    assert colour[item] == pytest.approx(np.log10(t2i[item]))  # the colour is the panel's rank
    assert f"of {n} (test split, {gt}-level)" in photos["marker"]["colorbar"]["title"]["text"]
    assert _decode(photos["selectedpoints"]) == [_decode(photos["customdata"]).index(item)]  # drawn selected
    counts = at.select_slider(key="emb_f_rank").options
    assert counts[0] == f"1 ({int((t2i == 1).sum())})"  # the rank filter counts the same ranks
    _no_markup(at)


def test_search_says_what_the_true_match_s_rank_is_out_of(eight, tiny_catalogue):
    at = _app(tiny_catalogue)
    at.switch_page("pages/search.py").run()
    at.radio(key="search_image_src").set_value("A catalogue product (test split)").run()
    _ok(at)
    ranks = [m for m in at.metric if m.label == "True match landed at rank"]
    assert ranks and all(m.proto.delta == "of 60 (whole catalogue, caption-level)" for m in ranks)
    at.radio(key="search_gallery").set_value("test").run()
    _ok(at)
    ranks = [m for m in at.metric if m.label == "True match landed at rank"]
    assert ranks and all(m.proto.delta == "of 6 (test split, caption-level)" for m in ranks)


# ---------------------------------------------------------------- runs still training

@pytest.fixture
def live(eight, tmp_path, monkeypatch) -> Path:
    """The eight runs beside ``demo-live``: a copy of demo-run0 still training (epoch 1 of 5, this process its
    trainer), its best weights from an earlier attempt, no test metrics yet."""
    root = tmp_path / "ckpt"
    root.mkdir()
    for d in eight["demo"] + eight["second"]:
        (root / d.name).symlink_to(d, target_is_directory=True)
    run = root / "demo-live"
    shutil.copytree(eight["demo"][0], run, copy_function=shutil.copy2)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "run_id": "demo-live", "created": config["created"] + 99}))
    (run / "test.json").unlink()
    (run / "status.json").write_text(json.dumps({"state": "running", "pid": os.getpid(), "host": socket.gethostname(),
                                                 "phase": "training", "epoch": 1, "epochs": 5, "step": 1,
                                                 "steps_per_epoch": 3}))
    monkeypatch.setenv("XMODAL_CHECKPOINTS", str(root))
    return run


def test_runs_still_training_are_badged_wherever_they_appear(live, tiny_catalogue):
    from xmodal.dashboard.ui import ALL_RUNS
    from xmodal.runs import read_best
    BADGE = f"still training (epoch 1 of 5): its best weights so far, from epoch {read_best(live)['epoch']}"
    at = _visit(tiny_catalogue, "pages/embeddings.py", {"emb_run": "demo-live", "emb_method": "pca"})
    assert f"demo-live · {BADGE}" in at.selectbox(key="emb_run").options
    assert at.selectbox(key="emb_run").value == "demo-live"
    assert any(_shown(c.value).startswith(f"6 products of demo-live ({BADGE})") for c in at.caption)
    assert at.selectbox(key="emb_run").options[1:] == ["demo-run0", "demo-run1", "demo-run2", "demo-run3"]

    at.switch_page("pages/training.py").run()
    _ok(at)
    assert at.multiselect(key="train_runs").value == ["demo-live"]  # what is training now, badged
    assert f"demo-live · {BADGE}" in at.multiselect(key="train_runs").options

    at.switch_page("pages/search.py").run()
    at.selectbox(key="search_run").set_value(ALL_RUNS).run()
    at.text_input(key="search_query").input("red striped shirt").run()
    _ok(at)
    notes = [_shown(c.value) for c in at.caption if "is not finished" in _shown(c.value)]
    assert notes == [f"⚠ cmpm-efficientnet · demo-live is not finished, {BADGE}"]  # its column, side by side


# ---------------------------------------------------------------- Training's URL

def test_training_writes_its_choices_even_at_their_defaults(eight, tiny_catalogue):
    demo, _ = _keys(eight)
    at = _visit(tiny_catalogue, "pages/training.py", {})
    url = _params(at)
    assert url["cat"] == [demo] and url["train_runs"] == ["demo-run0", "demo-run1", "demo-run2"]  # the best three
    assert url["train_smooth"] == ["5"] and url["train_gt"] == ["caption"]
    val = len(json.loads((eight["demo"][0] / "splits.json").read_text())["val"])
    assert f"Recall and median rank among each run's validation split ({val} products), caption-level." in [
        _shown(c.value) for c in at.caption]  # what the validation ranks are out of
    at = _visit(tiny_catalogue, "pages/training.py", {"cat": demo, "train_runs": ["demo-run3", "<script>", "x"],
                                                      "train_smooth": "0", "train_gt": "<b>item</b>"})
    assert at.multiselect(key="train_runs").value == ["demo-run3"]  # a collapsed run, asked for by name
    assert at.slider(key="train_smooth").value == 5 and at.radio(key="train_gt").value == "caption"
    assert _params(at)["train_runs"] == ["demo-run3"] and _params(at)["train_smooth"] == ["5"]
    _no_markup(at)


# ---------------------------------------------------------------- added by the issue 21 audit (docs/issue21_audit.md)

def _link_params(at: AppTest, label: str) -> list[dict[str, list[str]]]:
    """The query parameters of every ``st.page_link`` labelled ``label``, decoded."""
    from urllib.parse import parse_qs
    return [parse_qs(p.proto.query_string) for p in at.get("page_link") if p.proto.label == label]


def test_search_s_map_link_over_the_whole_catalogue_opens_that_map(eight, tiny_catalogue):
    """§1: the link sent ``emb_scope=all``, which the map did not read: it opened the test split ('Located 0 of 8')."""
    demo = eight["demo"][0].name
    at = _visit(tiny_catalogue, "pages/search.py", {"search_run": demo, "search_q": "red striped shirt",
                                                    "search_gallery": "whole catalogue"})
    (link,) = _link_params(at, "Show these on the map")
    assert link["emb_scope"] == ["whole catalogue"] and link["emb_run"] == [demo] and link["emb_gt"] == ["caption"]
    assert link["cat"] == [_keys(eight)[0]] and len(link["focus"]) == 8
    at.query_params.clear()
    at.query_params.update({**link, "emb_method": "pca"})  # the projection is the session's, not the link's
    at.switch_page("pages/embeddings.py").run()
    _ok(at)
    assert at.radio(key="emb_scope").value == "all" and at.selectbox(key="emb_run").value == demo
    assert any("Located 8 of 8" in _shown(i.value) for i in at.info), [i.value for i in at.info]


def test_compare_s_map_link_carries_the_page_s_ground_truth(eight, tiny_catalogue):
    """§1-§2: Compare's slice link named no ground truth (commit ceb8525 added it, untested): the map then ranked
    its items caption-level while Compare's numbers were item-level. Compare says what its ranks are out of."""
    at = _visit(tiny_catalogue, "pages/compare.py", {"cat": _keys(eight)[0], "cmp_runs": ["demo-run1", "demo-run0"],
                                                     "cmp_gt": "item"})
    assert at.radio(key="cmp_gt").value == "item"
    assert "6 test items shared by 2 run(s); ranks are item-level." in [_shown(c.value) for c in at.caption]
    links = _link_params(at, "Show on the map")
    assert links, "no slice link"
    for link in links:
        assert link["emb_gt"] == ["item"] and link["emb_scope"] == ["test split"] and link["emb_run"] == ["demo-run1"]
        assert link["cat"] == [_keys(eight)[0]] and link["focus"]


def test_a_map_url_restores_the_projection_s_settings(eight, tiny_catalogue):
    """§1: the map's projection settings (neighbours, minimum distance) and its lines come back from a URL."""
    at = _visit(tiny_catalogue, "pages/embeddings.py", {"cat": _keys(eight)[0], "emb_run": "demo-run1",
                                                        "emb_method": "umap", "emb_nn": "30", "emb_md": "0.35",
                                                        "emb_lines": "false"})
    assert at.radio(key="emb_method").value == "umap"
    assert (at.slider(key="emb_nn").value, at.slider(key="emb_md").value) == (30, 0.35)
    assert at.checkbox(key="emb_lines").value is False
    url = _params(at)
    assert url["emb_nn"] == ["30"] and url["emb_md"] == ["0.35"] and url["emb_lines"] == ["false"]


def test_runs_still_training_are_left_out_of_compare_and_badged_in_search_s_results(live, tiny_catalogue):
    """§2: Compare compares test metrics, so a run without them is left out, never shown as finished; Search with
    that run alone says it is not finished above its results."""
    at = _visit(tiny_catalogue, "pages/compare.py", {})
    assert at.multiselect(key="cmp_runs").options and not any(
        "demo-live" in o for o in at.multiselect(key="cmp_runs").options)
    at.query_params.clear()
    at.query_params.update({"search_run": "demo-live", "search_q": "red striped shirt"})
    at.switch_page("pages/search.py").run()
    _ok(at)
    assert at.selectbox(key="search_run").value.endswith("demo-live")
    notes = [_shown(c.value) for c in at.caption if "is not finished" in _shown(c.value)]
    assert notes and "still training (epoch 1 of 5)" in notes[0], notes


def test_search_s_run_picker_badges_a_run_still_training(live, tiny_catalogue):
    at = _visit(tiny_catalogue, "pages/search.py", {})
    options = [o for o in at.selectbox(key="search_run").options if "demo-live" in o]
    assert options and all("still training (epoch 1 of 5)" in o for o in options), options
