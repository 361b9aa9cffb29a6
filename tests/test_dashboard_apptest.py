"""Every dashboard page opened with Streamlit's AppTest, with a small trained run and with an empty
checkpoints folder: no exception, and the key elements are there; a failed run shows its error, a young run
what it is doing, and Home and Training draw without PyTorch. The sidebar, hostile text, two catalogues and
the Embeddings page have modules of their own (tests/test_dashboard_*.py)."""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time

import pytest

from apptest_kit import PAGES, REPO, TIMEOUT, _app, _hit_captions, _ok, _shown


def test_home_with_a_run(with_run, tiny_catalogue, trained_run):
    at = _app(tiny_catalogue)
    _ok(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Products"] == "60" and metrics["Rows skipped"] == "0" and metrics["test split"] == "6"
    table = at.dataframe[0].value
    assert table["run"].tolist() == [trained_run.name] and table["status"].tolist() == ["finished"]
    test = json.loads((trained_run / "test.json").read_text())["caption"]
    assert table["test t2i R@10"].iloc[0] == pytest.approx(test["text_to_image/R@10"])
    assert any("usable" in s.value for s in at.success)
    assert len(at.sidebar.get("form_submit_button")) == 1  # the sidebar training form


def test_every_page_survives_run_files_with_any_bytes(with_run, tiny_catalogue, trained_run, monkeypatch):
    """A status.json or metrics.jsonl with non-UTF-8 bytes crashed every page (UnicodeDecodeError): the run is
    shown as damaged with the reason, and the good run beside it works."""
    import shutil
    from xmodal.dashboard.maps import embeds, projection, sprite_job
    for module in (embeds, projection, sprite_job):  # no background job may outlive the test (shared run files)
        monkeypatch.setattr(module, "start", lambda *a, **k: True)
    bad = with_run / "damaged-run"
    shutil.copytree(trained_run, bad)
    (bad / "status.json").write_bytes(b'{"state": "fin\xff\xfeished"}')
    (bad / "metrics.jsonl").write_bytes(b"\xff\xfe\x00garbage\n" + (trained_run / "metrics.jsonl").read_bytes())
    at = _app(tiny_catalogue)
    _ok(at)
    table = at.dataframe[0].value.set_index("run")
    assert table.loc[trained_run.name, "status"] == "finished"
    assert "status.json is damaged (not UTF-8 text)" in table.loc["damaged-run", "error"]
    for page in ("pages/training.py", "pages/compare.py", "pages/search.py"):  # the pages that read run files
        at.switch_page(page).run()  # (Embeddings draws maps into the shared tiny run: its own tests cover it)
        _ok(at)


def test_home_when_empty_offers_demo_training(empty, tiny_catalogue):
    at = _app(tiny_catalogue)
    _ok(at)
    assert any(b.label.startswith("Train all five") for b in at.button)
    assert not at.dataframe  # no runs table


@pytest.mark.parametrize("page", PAGES)
def test_pages_when_empty(empty, tiny_catalogue, page):
    at = _app(tiny_catalogue)
    at.switch_page(page).run()
    _ok(at)
    assert any("No trained run yet" in i.value for i in at.info)


def test_training_page(with_run, tiny_catalogue):
    at = _app(tiny_catalogue)
    at.switch_page("pages/training.py").run()
    _ok(at)
    assert len(at.get("plotly_chart")) == 3  # loss terms, validation R@K / median rank, pos vs neg
    assert at.multiselect(key="train_runs").value


def test_home_and_training_draw_without_torch(with_run, tiny_catalogue):
    """On a fresh server, Home, Training and the sidebar never wait for PyTorch to load."""
    code = f"""
import sys
from streamlit.testing.v1 import AppTest
from xmodal.dashboard import jobs, state
jobs.gpu_may_exist = lambda: False  # on a GPU machine the device list asks torch.cuda, by design
state.warm_pytorch = lambda: None  # the background import after each page, by design
at = AppTest.from_file({str(REPO / "dashboard.py")!r}, default_timeout={TIMEOUT})
at.session_state["cat_source"] = "folder"
at.session_state["cat_folder"] = {str(tiny_catalogue)!r}
at.run()
assert not at.exception and at.dataframe, [e.value for e in at.exception]
at.switch_page("pages/training.py").run()
assert not at.exception and len(at.get("plotly_chart")) == 3, [e.value for e in at.exception]
assert "torch" not in sys.modules, "Home or Training imported torch"
"""
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]


def test_compare_page(with_run, tiny_catalogue, trained_run):
    at = _app(tiny_catalogue)
    at.switch_page("pages/compare.py").run()
    _ok(at)
    # the tiny run trips the collapse alarm (flat loss, pos/neg similarity alike): never chosen unasked
    assert at.multiselect(key="cmp_runs").value == []
    assert any(_shown(c.value).startswith("⚠ Not chosen unless you pick them: tiny-cmpm (collapsed")
               for c in at.caption)
    at.multiselect(key="cmp_runs").set_value([trained_run.name]).run()
    _ok(at)
    table = at.dataframe[0].value
    test = json.loads((trained_run / "test.json").read_text())
    lo, hi = test["ci95"]["caption"]["text_to_image/R@1"]
    assert table["t2i R@1"].iloc[0] == f"{test['caption']['text_to_image/R@1']:.1f} [{lo:.1f}-{hi:.1f}]"
    assert float(table["i2t median rank"].iloc[0].split()[0]) == test["caption"]["image_to_text/median_rank"]
    lo, hi = test["ci95"]["dedup"]["rsum"]  # the proxy for new products sits beside the split's own figures
    assert table["dedup rsum"].iloc[0] == f"{test['dedup']['rsum']:.1f} [{lo:.1f}-{hi:.1f}]"
    assert table["dedup gallery"].iloc[0] == test["dedup_gallery_size"]
    assert at.selectbox(key="cmp_attr").options  # the demo catalogue has slices
    at.radio(key="cmp_gt").set_value("item").run()
    _ok(at)
    assert float(at.dataframe[0].value["t2i R@1"].iloc[0].split()[0]) == pytest.approx(
        round(test["item"]["text_to_image/R@1"], 1))


def test_embeddings_page(with_run, tiny_catalogue):
    at = _app(tiny_catalogue)
    at.switch_page("pages/embeddings.py").run()
    _ok(at)
    assert len(at.get("plotly_chart")) == 2  # the map and the modality gap
    assert {m.label for m in at.metric} >= {"Paired distance (mean)", "Centroid gap"}
    at.selectbox(key="emb_colour").set_value("colour").run()
    _ok(at)


def test_search_page_text_and_catalogue_image(with_run, tiny_catalogue):
    at = _app(tiny_catalogue)
    at.switch_page("pages/search.py").run()
    _ok(at)
    at.text_input(key="search_query").input("red striped shirt").run()
    _ok(at)
    results = [c for c in _hit_captions(at) if c.startswith("**#")]
    assert len(results) == 8 and all(re.search(r"\nscore -?\d\.\d{3}$", c) for c in results), results
    at.radio(key="search_image_src").set_value("A catalogue product (test split)").run()
    _ok(at)
    assert any(m.label == "True match landed at rank" for m in at.metric)
    at.radio(key="search_text_src").set_value("A catalogue title (test split)").run()
    _ok(at)
    assert len([m for m in at.metric if m.label == "True match landed at rank"]) == 2
    assert any(_shown(c.value).startswith("Searched the whole catalogue: 60 products of ") for c in at.caption)
    at.radio(key="search_gallery").set_value("test").run()  # only the run's test products: Compare's gallery
    _ok(at)
    test_ids = set(json.loads((with_run / "tiny-cmpm" / "splits.json").read_text())["test"])
    assert any(_shown(c.value).startswith(f"Searched its test split: {len(test_ids)} products of ") for c in at.caption)
    hits = [_shown(c.value).rsplit(" · ", 1)[1] for c in at.caption
            if c.value.startswith("score ") and " · " in c.value]
    assert len(hits) >= len(test_ids) and set(hits) <= test_ids  # image -> captions: test products only
    assert all(1 <= int(m.value) <= len(test_ids) for m in at.metric if m.label == "True match landed at rank")
    links = [p.proto for p in at.get("page_link") if p.proto.label == "Show these on the map"]
    assert links and all("embeddings" in p.page for p in links)  # each result list can be located on the map
    assert all("emb_scope=test" in p.query_string for p in links), [p.query_string for p in links]


def test_a_failed_run_shows_its_error(empty, tiny_catalogue):
    run = empty / "siamese-broken"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model": "siamese", "created": time.time(),
                                                 "data": {"name": "demo"}, "train": {"epochs": 3}}))
    (run / "status.json").write_text(json.dumps({"state": "failed", "error": "RuntimeError: out of memory",
                                                 "updated": time.time()}))
    (run / "error.log").write_text("Traceback (most recent call last):\nRuntimeError: out of memory\n")
    at = _app(tiny_catalogue)
    _ok(at)
    assert any("out of memory" in e.value for e in at.error)
    at.switch_page("pages/training.py").run()
    _ok(at)
    assert any("out of memory" in e.value for e in at.error)


def test_training_page_says_what_a_young_run_is_doing(empty, tiny_catalogue):
    young = empty / "siamese-young"
    young.mkdir()
    (young / "launch.json").write_text(json.dumps({"model": "siamese", "data": "demo"}))
    (young / "status.json").write_text(json.dumps({"state": "running", "pid": os.getpid(), "host": socket.gethostname(),
                                                   "phase": "extracting image features (cached for later runs)"}))
    (young / "train.log").write_text("image features:  40%|####      | 4/10 [00:20<00:30,  2.0s/batch]")
    at = _app(tiny_catalogue)
    _ok(at)
    assert not any("No run folders yet" in c.value for c in at.caption)
    progress = [p.proto.text for p in at.get("progress")]
    assert any("siamese-young" in _shown(t) and "40%" in t and "00:30" in _shown(t) for t in progress), progress
    at.switch_page("pages/training.py").run()
    _ok(at)
    assert not any("No trained run yet" in i.value for i in at.info)
    assert any("extracting image features" in _shown(p.proto.text) for p in at.get("progress"))


def test_training_page_draws_no_empty_axes_before_epoch_one(empty, tiny_catalogue, trained_run):
    run = empty / "cmpm-efficientnet-early"
    shutil.copytree(trained_run, run, copy_function=shutil.copy2)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows if r.get("kind") == "step"
                                               and r.get("epoch") == 1))
    (run / "status.json").write_text(json.dumps({"state": "running", "pid": os.getpid(), "host": socket.gethostname(),
                                                 "phase": "training", "epoch": 1, "epochs": 2, "step": 2,
                                                 "steps_per_epoch": 3}))
    at = _app(tiny_catalogue)
    at.switch_page("pages/training.py").run()
    _ok(at)
    assert len(at.get("plotly_chart")) == 1  # the loss only
    assert any("when the first epoch ends" in i.value for i in at.info)
    assert any("is training: epoch 1" in _shown(c.value) for c in at.caption)
