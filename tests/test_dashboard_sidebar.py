"""The dashboard's sidebar with AppTest: the training form (refusing a folder without captions, the chosen
settings launched, the demo's five models queued), importing a Kaggle folder, a bad catalogue folder or a failed
import shown as one error line, a run's lock holder named, and a run's notes, tags, hiding and deletion."""
from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path

import pytest

from apptest_kit import _app, _ok, _shown


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
    from xmodal.dashboard.jobs import training as jobs
    calls = []
    monkeypatch.setattr(jobs, "start_queue", lambda js, root=None, name="queue", prepare=False: calls.append(
        (js, name, prepare)))
    at = _app(tiny_catalogue)
    next(b for b in at.button if b.label.startswith("Train all five")).click().run()
    _ok(at)
    (queued, name, prepare), = calls
    assert [j.model for j in queued] == list(jobs.DEMO_EPOCHS) and name == "demo" and prepare
    assert all(j.data == "demo" and j.epochs == jobs.DEMO_EPOCHS[j.model] for j in queued)
    assert all(j.command(empty)[-2:] == ["--word-vectors", "glove"] for j in queued)  # colour words read


def test_training_form_launches_the_chosen_settings(empty, tiny_catalogue, monkeypatch):
    from xmodal.dashboard.jobs import training as jobs
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_importing_a_missing_folder_shows_one_error_line(empty, tiny_catalogue, tmp_path):
    at = _app(tiny_catalogue)
    at.radio(key="cat_source").set_value("import").run()
    at.text_input(key="imp_src").input(str(tmp_path / "no-such-download")).run()
    at.button(key="imp_go").click().run()
    _ok(at)
    errors = [_shown(e.value) for e in at.error]
    assert len(errors) == 1 and errors[0].startswith("Import failed: ") and "import again" in errors[0], errors


# ---------------------------------------------------------------- a run's lock holder, notes, hiding, deletion

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


def test_manage_a_run_notes_hide_delete(eight, tiny_catalogue, tmp_path, monkeypatch):
    ckpt = tmp_path / "ckpt"
    for name in ("demo-run0", "demo-run1"):
        shutil.copytree(eight["root"] / name, ckpt / name, copy_function=shutil.copy2)
    monkeypatch.setenv("XMODAL_CHECKPOINTS", str(ckpt))
    at = _app(tiny_catalogue)
    at.selectbox(key="manage_run").set_value("demo-run1").run()
    at.text_area(key="notes_demo-run1").input("baseline, <b>lr</b> 1e-3")
    at.text_input(key="tags_demo-run1").input("baseline, demo")
    next(b for b in at.get("form_submit_button") if b.label == "Save notes and tags").click().run()
    _ok(at)
    from xmodal.dashboard import runmeta
    assert runmeta.read_meta(ckpt / "demo-run1") == {"notes": "baseline, <b>lr</b> 1e-3", "tags": ["baseline", "demo"],
                                                     "hidden": False}
    assert at.button(key="resume_demo-run1").disabled  # finished: nothing to resume
    at.button(key="hide_demo-run1").click().run()
    _ok(at)
    assert runmeta.read_meta(ckpt / "demo-run1")["hidden"]
    assert [d.value["run"].tolist() for d in at.dataframe if "run" in d.value.columns] == [["demo-run0"]]
    at.switch_page("pages/compare.py").run()
    assert at.multiselect(key="cmp_runs").options == ["demo-run0"]
    at = _app(tiny_catalogue)
    at.selectbox(key="manage_run").set_value("demo-run0").run()
    assert at.button(key="delete_demo-run0").disabled  # not confirmed yet
    at.checkbox(key="sure_demo-run0").check().run()
    at.button(key="delete_demo-run0").click().run()
    _ok(at)
    assert not (ckpt / "demo-run0").exists() and (ckpt / "demo-run1").exists()
