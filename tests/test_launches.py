"""Safe launches from the sidebar: only the button starts a run, and a double click starts one run, not two."""
from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

from xmodal.dashboard.jobs import training as jobs

SUBMIT = "FormSubmitter:train_form-Start training"


def _app(tmp_path, monkeypatch, catalogue: Path) -> tuple[AppTest, list]:
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    monkeypatch.setenv("XMODAL_CHECKPOINTS", str(ckpt))
    started = []

    def fake_start(job, root=None):  # what start_training records, without a child process
        job.run_id = job.run_id or jobs.unique_run_id(job.model)
        run_dir = ckpt / job.run_id
        run_dir.mkdir()
        jobs.write_launch(run_dir, job)
        started.append(job)
        return run_dir

    monkeypatch.setattr(jobs, "start_training", fake_start)
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "dashboard.py"), default_timeout=60)
    at.session_state["cat_source"] = "folder"
    at.session_state["cat_folder"] = str(catalogue)
    return at.run(), started


def test_a_double_launch_starts_one_run(tiny_catalogue, tmp_path, monkeypatch):
    at, started = _app(tmp_path, monkeypatch, tiny_catalogue)
    at.button(key=SUBMIT).click().run()
    at.button(key=SUBMIT).click().run()
    assert not at.exception
    assert len(started) == 1
    assert any("an identical run" in w.value for w in at.warning), [w.value for w in at.warning]
    at.number_input(key="tf_epochs").set_value(3)  # a different run is a wish, not a double click
    at.button(key=SUBMIT).click().run()
    assert len(started) == 2 and started[1].epochs == 3


def test_enter_in_a_number_box_does_not_submit_the_form():
    import ast
    source = (Path(__file__).resolve().parents[1] / "xmodal" / "dashboard" / "sidebar.py").read_text()
    forms = [node for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Call)
             and getattr(node.func, "attr", "") == "form"]
    assert forms, "the training form"
    for form in forms:
        flags = {k.arg: getattr(k.value, "value", None) for k in form.keywords}
        assert flags.get("enter_to_submit") is False, "Enter would launch a run"


def test_an_identical_launch_from_another_session_is_refused_until_it_is_old(tiny_catalogue, tmp_path, monkeypatch):
    """Added by the issue 21 audit: the refusal is read from the runs' launch.json, so a second browser tab is
    refused too, and only within DOUBLE_LAUNCH_S seconds of the first launch."""
    import json

    from xmodal.dashboard import sidebar
    first, started = _app(tmp_path, monkeypatch, tiny_catalogue)
    first.button(key=SUBMIT).click().run()
    assert len(started) == 1
    second = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "dashboard.py"), default_timeout=60)
    second.session_state["cat_source"], second.session_state["cat_folder"] = "folder", str(tiny_catalogue)
    second.run().button(key=SUBMIT).click().run()
    assert not second.exception and len(started) == 1
    assert any("an identical run" in w.value for w in second.warning), [w.value for w in second.warning]
    launch = tmp_path / "ckpt" / started[0].run_id / jobs.LAUNCH_NAME
    rec = json.loads(launch.read_text())
    launch.write_text(json.dumps({**rec, "launched": rec["launched"] - sidebar.DOUBLE_LAUNCH_S - 1}))
    second.button(key=SUBMIT).click().run()
    assert len(started) == 2  # an old identical launch is a wish for another run
