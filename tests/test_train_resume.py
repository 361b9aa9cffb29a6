"""``python -m xmodal.train --resume``: flags it refuses, a finished run left as it is, more epochs, a run stopped
in epoch 1, damaged run folders and a pickle in last.pt refused in one line, a changed catalogue refused, and a
cold feature cache that extracts the ImageNet backbone's features, not a random one's."""
from __future__ import annotations

import pickle
import shutil

import pytest

from train_kit import base, one_error_line
from xmodal.runs import read_json, read_metrics, read_status
from xmodal.training.cli import main as train_cli


def test_resume_flags_other_than_epochs_and_device_are_refused(trained_run, capsys):
    assert train_cli(["--resume", str(trained_run), "--model", "siamese"]) == 2
    assert "--model" in one_error_line(capsys)


def test_resume_of_a_finished_run_changes_nothing(tiny_catalogue, tmp_path, capsys):
    assert train_cli(base(tiny_catalogue, tmp_path, epochs=1)) == 0
    test_before = (tmp_path / "r" / "test.json").read_bytes()
    assert train_cli(["--resume", str(tmp_path / "r")]) == 0
    assert "nothing to do" in capsys.readouterr().err
    assert (tmp_path / "r" / "test.json").read_bytes() == test_before


def test_resume_honours_epochs_and_adds_train_time(tiny_catalogue, tmp_path):
    assert train_cli(base(tiny_catalogue, tmp_path, epochs=1)) == 0
    first = read_json(tmp_path / "r" / "test.json")["train_seconds"]
    assert train_cli(["--resume", str(tmp_path / "r"), "--epochs", "2"]) == 0
    epochs = [r["epoch"] for r in read_metrics(tmp_path / "r") if r["kind"] == "epoch"]
    assert epochs == [1, 2]
    assert read_json(tmp_path / "r" / "config.json")["train"]["epochs"] == 2
    assert read_json(tmp_path / "r" / "test.json")["train_seconds"] > first > 0


def test_stop_during_epoch_1_can_be_resumed(tiny_catalogue, tmp_path, monkeypatch):
    import xmodal.training.cli as train_mod
    real = train_mod.train_one_epoch

    def interrupted(*args, **kw):
        raise KeyboardInterrupt  # Ctrl-C during the first epoch: no last.pt yet
    monkeypatch.setattr(train_mod, "train_one_epoch", interrupted)
    assert train_cli(base(tiny_catalogue, tmp_path)) == 130
    assert not (tmp_path / "r" / "last.pt").exists() and read_status(tmp_path / "r")["state"] == "stopped"
    monkeypatch.setattr(train_mod, "train_one_epoch", real)
    assert train_cli(["--resume", str(tmp_path / "r")]) == 0
    assert [r["epoch"] for r in read_metrics(tmp_path / "r") if r["kind"] == "epoch"] == [1, 2]
    assert read_status(tmp_path / "r")["state"] == "finished"


def test_damaged_run_folders_are_one_line(trained_run, tmp_path, capsys):
    cases = {
        "config.json": (b"{not json", "config.json"),
        "last.pt": (b"\x80\x02garbage", "last.pt"),
        "vocab.json": (b"", "vocab.json"),
    }
    for name, (content, named) in cases.items():
        run = tmp_path / f"bad-{name}"
        shutil.copytree(trained_run, run)
        (run / ".lock").unlink(missing_ok=True)
        (run / name).write_bytes(content)
        assert train_cli(["--resume", str(run), "--epochs", "3"]) == 2, name
        assert named in one_error_line(capsys)
    assert train_cli(["--resume", str(tmp_path / "absent")]) == 2
    assert "no such run folder" in one_error_line(capsys)


class Payload:  # any Python object: torch.load(weights_only=True) must refuse to unpickle it
    pass


def test_a_pickle_in_last_pt_is_refused_without_suggesting_unsafe_loading(trained_run, tmp_path, capsys):
    import torch
    run = tmp_path / "pickled"
    shutil.copytree(trained_run, run)
    state = torch.load(run / "last.pt", weights_only=True)
    state["payload"] = Payload()
    torch.save(state, run / "last.pt", pickle_module=pickle)
    assert train_cli(["--resume", str(run), "--epochs", "3"]) == 2
    line = one_error_line(capsys)
    assert "refused: this file is not a safe checkpoint" in line and "weights_only=False" not in line


def test_resume_needs_the_same_catalogue(tiny_catalogue, tmp_path, capsys):
    cat = tmp_path / "cat"
    shutil.copytree(tiny_catalogue, cat)
    assert train_cli(base(cat, tmp_path / "runs", epochs=1)) == 0
    lines = (cat / "captions.csv").read_text().splitlines(keepends=True)
    (cat / "captions.csv").write_text("".join(lines[:-1]))  # one product removed
    assert train_cli(["--resume", str(tmp_path / "runs" / "r"), "--epochs", "2"]) == 2
    assert "changed since run" in one_error_line(capsys)


@pytest.mark.slow
def test_resume_with_a_cold_feature_cache_extracts_imagenet_features(tiny_catalogue, tmp_path, monkeypatch):
    """Regression: --resume used to extract features from a random backbone before loading last.pt."""
    import numpy as np
    import torch

    import xmodal.training.cli as train_mod
    from xmodal.image.backbones import create_backbone, image_transform
    from xmodal.image.extraction import extract_features
    from xmodal.data import load_catalogue
    real = train_mod.train_one_epoch

    def stop_at_2(*args, **kw):
        if args[6] == 2:
            raise KeyboardInterrupt
        return real(*args, **kw)
    monkeypatch.setattr(train_mod, "train_one_epoch", stop_at_2)
    assert train_cli(base(tiny_catalogue, tmp_path, model="cmpm-efficientnet")) == 130
    cache = tmp_path / "cold-cache"
    monkeypatch.setenv("XMODAL_CACHE", str(cache))  # another machine, or a cleared cache
    seen = []
    real_extract = train_mod.catalogue_features

    def spy(model, cat, device, progress=True):
        feats = real_extract(model, cat, device, progress)
        seen.append(feats)
        return feats
    monkeypatch.setattr(train_mod, "catalogue_features", spy)
    monkeypatch.setattr(train_mod, "train_one_epoch", real)
    assert train_cli(["--resume", str(tmp_path / "r")]) == 0
    cat = load_catalogue(tiny_catalogue)
    backbone, source = create_backbone("efficientnet")
    assert source and "imagenet" in source
    ref = extract_features(backbone, [cat.image_path(i) for i in range(4)], image_transform("efficientnet", (64, 48)),
                           torch.device("cpu"), progress=False)
    assert seen and np.allclose(seen[0][:4].numpy(), ref, atol=1e-4)
