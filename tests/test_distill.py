"""The distilled offline start of backbones without pretrained weights (MobileNetV3 here, hub offline)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import TINY_SIZE
from xmodal.backbones import create_backbone, hub_reachable
from xmodal.data import load_catalogue, make_splits
from xmodal.distill import DistillConfig, distill, distilled_backbone, needs_distillation


def test_offline_means_no_hub_and_mobilenet_needs_a_start():
    assert not hub_reachable()  # HF_HUB_OFFLINE=1 in the tests: answered at once, no connection tried
    assert needs_distillation("mobilenet") and not needs_distillation("efficientnet")


def test_distillation_learns_and_is_cached(tiny_catalogue, monkeypatch):
    cat = load_catalogue(tiny_catalogue)
    train = make_splits(cat)["train"]
    cfg = DistillConfig(epochs=3, batch_size=16, size=(64, 48), lr=3e-3)
    teacher, _ = create_backbone("efficientnet")
    from xmodal.backbones import extract_features, image_transform
    targets = torch.from_numpy(extract_features(teacher, [cat.image_path(int(i)) for i in train],
                                                image_transform("efficientnet", (64, 48)), torch.device("cpu"),
                                                progress=False))
    _, history = distill("mobilenet", [cat.image_path(int(i)) for i in train], targets, torch.device("cpu"), cfg,
                         progress=False)
    assert history[-1] < history[0]  # the student moves towards the teacher's features
    state, note = distilled_backbone("mobilenet", cat, train, torch.device("cpu"), cfg, progress=False)
    assert "distilled from EfficientNet-Lite0" in note and "train split" in note
    student, _ = create_backbone("mobilenet", pretrained=False)
    student.load_state_dict(state)  # strict: the whole backbone

    def no_training(*a, **k):
        raise AssertionError("the cached student should be reused")
    monkeypatch.setattr("xmodal.distill.distill", no_training)
    again, _ = distilled_backbone("mobilenet", cat, train, torch.device("cpu"), cfg, progress=False)
    assert all(torch.equal(again[k], state[k]) for k in state)


def test_cmpm_mobilenet_run_records_its_distilled_start(tiny_catalogue, tmp_path, capsys):
    from xmodal.report import table
    from xmodal.train import main
    assert main(["--model", "cmpm-mobilenet", "--data", str(tiny_catalogue), "--epochs", "2", "--batch-size", "16",
                 "--out", str(tmp_path), "--run-id", "mob", *TINY_SIZE]) == 0
    config = json.loads((tmp_path / "mob" / "config.json").read_text())
    mc = config["model_config"]
    assert "distilled from EfficientNet-Lite0" in mc["weights_source"] and not mc["finetune"]
    assert "distilled from EfficientNet-Lite0" in capsys.readouterr().err
    assert "distilled from EfficientNet-Lite0" in table([tmp_path / "mob"]) and "frozen" in table([tmp_path / "mob"])
    test = json.loads((tmp_path / "mob" / "test.json").read_text())
    assert np.isfinite(test["caption"]["rsum"])


@pytest.mark.parametrize("flag", [["--set", "pretrained=false"]])
def test_asking_for_random_init_skips_distillation(flag, tiny_catalogue, tmp_path):
    from xmodal.train import main
    assert main(["--model", "cmpm-mobilenet", "--data", str(tiny_catalogue), "--epochs", "1", "--batch-size", "16",
                 "--out", str(tmp_path), "--run-id", "rand", *TINY_SIZE, *flag]) == 0
    mc = json.loads((tmp_path / "rand" / "config.json").read_text())["model_config"]
    assert mc["weights_source"] is None and mc["finetune"]
