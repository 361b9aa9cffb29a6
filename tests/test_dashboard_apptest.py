"""Every dashboard page opened with Streamlit's AppTest, with a small trained run and with an empty
checkpoints folder: no exception, and the key elements are there."""
from __future__ import annotations

import json
import shutil
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
    assert len(results) == 8 and all("score" in r for r in results[:8])
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
    assert any("No captions.csv" in e.value for e in at.error)
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
