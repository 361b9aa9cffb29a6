"""Every dashboard page opened with Streamlit's AppTest, with a small trained run and with an empty
checkpoints folder: no exception, and the key elements are there. Bad catalogue folders give one error
line; catalogue and run-folder text reaches Markdown escaped; a run's lock holder is named."""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

REPO = Path(__file__).resolve().parents[1]
PAGES = ["pages/training.py", "pages/compare.py", "pages/embeddings.py", "pages/search.py"]
TIMEOUT = 120  # seconds per script run: the CPU may be shared


def _app(catalogue: Path) -> AppTest:
    at = AppTest.from_file(str(REPO / "dashboard.py"), default_timeout=TIMEOUT)
    at.session_state["cat_source"] = "folder"
    at.session_state["cat_folder"] = str(catalogue)
    return at.run()


def _ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def _shown(value: str) -> str:
    """What the browser shows for escaped Markdown: backslash escapes undone, invisible word joiners dropped."""
    return re.sub(r"\\(.)", r"\1", value).replace("\u2060", "")


def _markdown_values(at: AppTest) -> list[str]:
    """The body of every element Streamlit renders as Markdown."""
    return [e.value for kind in ("markdown", "caption", "error", "warning", "info", "success") for e in at.get(kind)]


def _no_markup(at: AppTest) -> None:
    """No Markdown element holds an unescaped ``<`` (raw HTML) or an image or link opener."""
    for value in _markdown_values(at):
        assert not re.search(r"(?<!\\)<|(?<!\\)!(?<!\\)\[|(?<!\\)\]\(", value), value


@pytest.fixture
def with_run(trained_run, tiny_catalogue, tmp_path, monkeypatch) -> Path:
    """A checkpoints folder holding the tiny trained run."""
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / trained_run.name).symlink_to(trained_run, target_is_directory=True)
    monkeypatch.setenv("XMODAL_CHECKPOINTS", str(ckpt))
    return ckpt


@pytest.fixture
def empty(tmp_path, monkeypatch) -> Path:
    ckpt = tmp_path / "empty"
    ckpt.mkdir()
    monkeypatch.setenv("XMODAL_CHECKPOINTS", str(ckpt))
    return ckpt


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
    assert len(at.get("form_submit_button")) == 1  # the sidebar training form


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
    table = at.dataframe[0].value
    test = json.loads((trained_run / "test.json").read_text())
    assert table["t2i R@1"].iloc[0] == pytest.approx(test["caption"]["text_to_image/R@1"])
    assert table["i2t median rank"].iloc[0] == test["caption"]["image_to_text/median_rank"]
    assert at.selectbox(key="cmp_attr").options  # the demo catalogue has slices
    at.radio(key="cmp_gt").set_value("item").run()
    _ok(at)
    assert at.dataframe[0].value["t2i R@1"].iloc[0] == pytest.approx(test["item"]["text_to_image/R@1"])


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
    results = [m.value for m in at.markdown if m.value.startswith("**#")]
    assert len(results) == 8 and sum(c.value.startswith("score ") for c in at.caption) == 8
    at.radio(key="search_image_src").set_value("A catalogue product (test split)").run()
    _ok(at)
    assert any(m.label == "True match landed at rank" for m in at.metric)
    at.radio(key="search_text_src").set_value("A catalogue title (test split)").run()
    _ok(at)
    assert len([m for m in at.metric if m.label == "True match landed at rank"]) == 2


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


def test_training_form_refuses_a_folder_without_captions(empty, tiny_catalogue, tmp_path):
    at = _app(tiny_catalogue)
    at.text_input(key="cat_folder").input(str(tmp_path)).run()
    _ok(at)
    assert any("no captions.csv" in _shown(e.value).lower() for e in at.error)
    at.get("form_submit_button")[0].click().run()
    _ok(at)
    assert any("Cannot train" in e.value for e in at.error)
    assert not [d for d in empty.iterdir()]  # nothing was launched


def test_train_all_five_button_queues_the_demo_models(empty, tiny_catalogue, monkeypatch):
    from xmodal.dashboard import jobs
    calls = []
    monkeypatch.setattr(jobs, "start_queue", lambda js, root=None, name="queue", prepare=False: calls.append(
        (js, name, prepare)))
    at = _app(tiny_catalogue)
    next(b for b in at.button if b.label.startswith("Train all five")).click().run()
    _ok(at)
    (queued, name, prepare), = calls
    assert [j.model for j in queued] == list(jobs.DEMO_EPOCHS) and name == "demo" and prepare
    assert all(j.data == "demo" and j.epochs == jobs.DEMO_EPOCHS[j.model] for j in queued)


def test_training_form_launches_the_chosen_settings(empty, tiny_catalogue, monkeypatch):
    from xmodal.dashboard import jobs
    launched = []
    monkeypatch.setattr(jobs, "start_training", lambda job, root=None: launched.append(job) or empty / "x")
    at = _app(tiny_catalogue)
    at.selectbox(key="tf_model").set_value("corrnet")
    at.number_input(key="tf_epochs").set_value(3)
    at.number_input(key="tf_batch").set_value(32)
    at.checkbox(key="tf_finetune").check()
    assert at.selectbox(key="tf_device").options[:2] == ["auto", "cpu"]
    at.get("form_submit_button")[0].click().run()
    _ok(at)
    (job,) = launched
    assert (job.model, job.data, job.epochs, job.batch_size, job.finetune) == ("corrnet", str(tiny_catalogue), 3,
                                                                               32, True)


def test_import_a_kaggle_folder_from_the_sidebar(empty, tiny_catalogue, tmp_path):
    src = tmp_path / "kaggle"
    (src / "images").mkdir(parents=True)
    rows = ["id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName"]
    for i, img in enumerate(sorted((tiny_catalogue / "images").iterdir())[:8]):
        shutil.copy(img, src / "images" / f"{100 + i}.jpg")
        rows.append(f"{100 + i},Men,Apparel,Topwear,Tshirts,Blue,Summer,2012,Casual,Blue Tee number {i}")
    (src / "styles.csv").write_text("\n".join(rows) + "\n")
    at = _app(tiny_catalogue)
    at.radio(key="cat_source").set_value("import").run()
    at.text_input(key="imp_src").input(str(src)).run()
    at.text_input(key="imp_out").input(str(tmp_path / "imported")).run()
    at.button(key="imp_go").click().run()
    _ok(at)
    assert at.radio(key="cat_source").value == "folder"
    assert at.text_input(key="cat_folder").value == str(tmp_path / "imported")
    assert any("Imported 8 rows" in s.value for s in at.success)
    assert {m.label: m.value for m in at.metric}["Products"] == "8"


# ---------------------------------------------------------------- bad catalogues: one error line, no traceback

def _bad_folder(kind: str, root: Path, good: Path) -> Path:
    """A catalogue folder that cannot be used, of the given kind."""
    if kind == "missing":
        return root / "no-such-folder"
    if kind == "file":
        (root / "captions.csv").write_text("image,caption\n")
        return root / "captions.csv"
    folder = root / kind
    shutil.copytree(good / "images", folder / "images")
    rows = {"empty csv": "", "missing columns": "image,title\nimages/demo_00000.jpg,Red Shirt\n",
            "no usable row": "image,caption\nimages/none.jpg,Red Shirt\n,\n"}[kind]
    (folder / "captions.csv").write_text(rows)
    return folder


@pytest.mark.parametrize("kind, says", [("missing", "does not exist"), ("file", "is a file, not a folder"),
                                        ("empty csv", "captions.csv"), ("missing columns", "caption"),
                                        ("no usable row", "no usable rows")])
def test_a_bad_catalogue_folder_shows_one_error_line(empty, tiny_catalogue, tmp_path, kind, says):
    folder = _bad_folder(kind, tmp_path, tiny_catalogue)
    at = _app(folder)
    _ok(at)
    errors = [e.value for e in at.error]
    assert len(errors) == 1, errors
    assert "\n" not in errors[0] and says in _shown(errors[0]), errors[0]
    assert str(folder) in _shown(errors[0])  # names the folder
    assert not at.metric  # no half-drawn catalogue section


def test_importing_a_missing_folder_shows_one_error_line(empty, tiny_catalogue, tmp_path):
    at = _app(tiny_catalogue)
    at.radio(key="cat_source").set_value("import").run()
    at.text_input(key="imp_src").input(str(tmp_path / "no-such-download")).run()
    at.button(key="imp_go").click().run()
    _ok(at)
    errors = [_shown(e.value) for e in at.error]
    assert len(errors) == 1 and errors[0].startswith("Import failed: ") and "import again" in errors[0], errors


# ---------------------------------------------------------------- catalogue and run text is shown as text

HOSTILE = ['<script>window.__xss=1</script>', '<img src=x onerror="window.__xss=1">',
           '<iframe srcdoc="<script>parent.__xss=1</script>">', '![x](http://203.0.113.5/pixel.png)',
           '[click](javascript:window.__xss=1)', '<a href="http://203.0.113.5/">', '<svg onload=window.__xss=1>']


@pytest.fixture
def hostile_catalogue(tiny_catalogue, tmp_path) -> Path:
    """The tiny catalogue with a hostile string after every caption, and one row whose image is missing."""
    folder = tmp_path / "hostile"
    shutil.copytree(tiny_catalogue, folder)
    with open(folder / "captions.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for i, row in enumerate(rows):
        row["caption"] = f"{row['caption']} {HOSTILE[i % len(HOSTILE)]}"
    rows.append({**rows[0], "image": "images/<img src=x onerror=alert(1)>.jpg", "item_id": "missing-photo"})
    with open(folder / "captions.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return folder


def test_home_shows_hostile_captions_as_text(empty, hostile_catalogue):
    at = _app(hostile_catalogue)
    _ok(at)
    _no_markup(at)
    grid = [_shown(c.value) for c in at.caption]
    assert sum(any(h in c for h in HOSTILE) for c in grid) == 12  # every sampled product, caption literal
    assert {m.label: m.value for m in at.metric}["Rows skipped"] == "1"


def test_widgets_escape_catalogue_and_run_text(tmp_path, tiny_catalogue):
    """Result cards, product grids and failure boxes, fed hostile captions, ids and run names."""
    def script():
        from pathlib import Path
        from types import SimpleNamespace

        import streamlit as st

        from xmodal.dashboard import ui
        bad, image = st.session_state["bad"], st.session_state["image"]
        hit = SimpleNamespace(caption=bad, item_id=bad, score=0.5, image=Path(image))
        ui.hit_card(hit, title="#1")
        ui.hit_grid([hit, SimpleNamespace(caption=bad, item_id=bad, score=0.25, image=Path("http://203.0.113.5/x"))])
        ui.product_grid([image], [bad])
        ui.show_failure(Path(st.session_state["run"]), {"error": bad})

    for bad in HOSTILE:
        run = tmp_path / bad.replace("/", "_")
        at = AppTest.from_function(script, default_timeout=TIMEOUT)
        at.session_state["bad"], at.session_state["run"] = bad, str(run)
        at.session_state["image"] = str(next((tiny_catalogue / "images").iterdir()))
        at.run()
        _ok(at)
        _no_markup(at)
        shown = [_shown(v) for v in _markdown_values(at)]
        assert sum(bad in v for v in shown) >= 5, shown  # card, grid, product caption, failure (name and error)
        assert any("photo missing" in c.value for c in at.caption)  # a URL is never handed to st.image
        assert len(at.get("image")) == 3


def test_a_running_run_shows_who_holds_its_lock(empty, tiny_catalogue, monkeypatch):
    import xmodal.runs
    run = empty / "cmpm-efficientnet-locked"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model": "cmpm-efficientnet", "created": time.time(),
                                                 "data": {"name": "demo"}, "train": {"epochs": 3}}))
    (run / "status.json").write_text(json.dumps({
        "state": "running", "pid": os.getpid(), "host": socket.gethostname(), "updated": time.time(),
        "phase": "training", "epoch": 1, "epochs": 3, "step": 2, "steps_per_epoch": 4, "loss": 1.5, "eta_s": 30}))
    holder = {"pid": 4242, "host": "trainer-box", "started": time.time() - 90, "command": "python -m xmodal.train"}
    monkeypatch.setattr(xmodal.runs, "read_lock", lambda d: holder if Path(d).name == run.name else None,
                        raising=False)
    at = _app(tiny_catalogue)
    _ok(at)
    table = at.dataframe[0].value
    assert table["held by"].iloc[0].startswith("4242@trainer-box since ") and "ago" in table["held by"].iloc[0]
    assert any(_shown(c.value).startswith("lock held by 4242@trainer-box since") for c in at.sidebar.caption)
