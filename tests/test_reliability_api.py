"""Damaged run files and bad arguments: one line naming the problem, never a traceback, never a coerced value
(issue 20 §3), and a training launch on a catalogue Home says cannot be used is refused at once."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from xmodal.retrieval.compose import main as compose_cli
from xmodal.training.cli import main as train_cli


def _copy(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns(".lock", "gallery_*", "projection_*", "embeds_*"))
    return dest


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("section, field, value", [
    ("train", "epochs", "ten"), ("train", "batch_size", 2.5), ("train", "lr", None), ("train", "finetune", "yes"),
    ("train", "split", [0.8, 0.2]), ("train", "batch_size", 0), ("model_config", "embed_dim", "big"),
    ("model_config", "dropout", [0.1]), ("data", None, ["a", "list"]),
])
def test_resume_with_wrong_types_in_config_is_one_line_naming_the_field(trained_run, tmp_path, capsys, section,
                                                                         field, value):
    run = _copy(trained_run, tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    if field is None:
        config[section] = value
    else:
        config[section][field] = value
    (run / "config.json").write_text(json.dumps(config))
    assert train_cli(["--resume", str(run), "--epochs", "3"]) == 2
    err = _one_line(capsys)
    assert "config.json" in err and (field or section) in err.replace("-", "_"), err


def test_compose_on_a_damaged_config_is_one_line(trained_run, tmp_path, capsys):
    run = _copy(trained_run, tmp_path / "run")
    for damage in ('{"model": "cmpm-efficientnet", "model_config": {"embed_dim": "x"}}', "[1, 2]", "{nope",
                   '{"model": 7}'):
        (run / "config.json").write_text(damage)
        assert compose_cli(["--run", str(run), "--n", "5"]) == 2, damage
        assert str(run) in _one_line(capsys)


@pytest.fixture(scope="module")
def run(trained_run):
    from xmodal import load_run
    return load_run(trained_run)


@pytest.mark.parametrize("call, message", [
    (lambda r: r.refine(r.search(text="red shirt"), good="12"), "good must be a list"),
    (lambda r: r.refine(r.search(text="red shirt"), good=[True]), "whole number"),
    (lambda r: r.refine(r.search(text="red shirt"), bad=[-1]), "outside the gallery"),
    (lambda r: r.refine(torch.zeros(r.image_embeds.shape[1])), "all zeros"),
    (lambda r: r.refine(torch.full((r.image_embeds.shape[1],), float("nan"))), "NaN"),
    (lambda r: r.refine(np.ones(3, dtype=np.float32)), "numbers"),
    (lambda r: r.search(image=-1), "outside the gallery"),
    (lambda r: r.search(image=True), "whole number"),
    (lambda r: r.search(text="red shirt", k=0), "k must be"),
    (lambda r: r.search(text="red shirt", k=2.5), "k must be"),
    (lambda r: r.search(text="red shirt", exclude="3"), "exclude must be a list"),
    (lambda r: r.search_text("red shirt", vector=torch.zeros(r.image_embeds.shape[1])), "all zeros"),
    (lambda r: r.search_image(None, vector=torch.full((r.image_embeds.shape[1],), float("inf"))), "NaN or inf"),
])
def test_the_api_refuses_bad_arguments_instead_of_coercing_them(run, call, message):
    with pytest.raises(ValueError, match=message):
        call(run)


@pytest.mark.parametrize("kwargs, message", [
    (dict(text="red shirt", image=-1), "outside the gallery"),
    (dict(text="red shirt", image=10**6), "outside the gallery"),
    (dict(text="red shirt", image=False), "whole number"),
    (dict(text=None, image=0), "text must be a string"),
    (dict(text="red shirt", image=0, grid=(0, 4)), "grid"),
])
def test_explain_refuses_bad_arguments(run, kwargs, message):
    from xmodal.retrieval.explain import explain
    with pytest.raises(ValueError, match=message):
        explain(run, **kwargs)


def test_a_launch_on_a_catalogue_home_cannot_use_is_refused_at_once(tmp_path, monkeypatch, tiny_catalogue):
    from streamlit.testing.v1 import AppTest

    from xmodal.dashboard.jobs import training as jobs
    monkeypatch.setenv("XMODAL_CHECKPOINTS", str(tmp_path / "ckpt"))
    (tmp_path / "ckpt").mkdir()
    bad = tmp_path / "bad"
    shutil.copytree(tiny_catalogue, bad)
    for image in (bad / "images").iterdir():  # every photo gone: captions.csv is there, no row is usable
        image.unlink()
    started = []
    monkeypatch.setattr(jobs, "start_training", lambda job: started.append(job) or tmp_path / "ckpt" / "x")
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "dashboard.py"), default_timeout=60)
    at.session_state["cat_source"] = "folder"
    at.session_state["cat_folder"] = str(bad)
    at.run()
    home = [e.value for e in at.error]
    assert any("cannot be used" in v for v in home), home
    at.button(key="FormSubmitter:train_form-Start training").click().run()
    assert not at.exception and started == []
    refused = [e.value for e in at.error if e.value.startswith("Cannot train")]
    assert refused and "cannot be used" in refused[0]
