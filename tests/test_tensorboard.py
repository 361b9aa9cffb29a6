"""--log tensorboard: the event files read back with TensorBoard's own reader."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("tensorboard")


def test_the_log_reads_back_with_tensorboards_reader(tmp_path, tiny_catalogue):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from xmodal.data import load_catalogue
    from xmodal.training.tblog import TensorBoardLog, thumbnails
    log = TensorBoardLog(tmp_path, {"model": "infonce-efficientnet", "lr": 0.001})
    for step in range(5):
        log.step(step, {"loss": 1.0 / (step + 1), "infonce": 0.5})
    log.epoch(1, {"rsum": 100.0, "text_to_image/R@1": 20.0, "bad": float("nan")})
    cat = load_catalogue(tiny_catalogue)
    paths = [cat.image_path(i) for i in range(6)]
    log.embeddings(torch.randn(6, 8), torch.randn(6, 8), cat.captions[:6], thumbnails(paths))
    log.close()
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()
    assert {"train/loss", "train/infonce", "val/rsum", "val/text_to_image/R@1"} <= set(tags["scalars"])
    assert "val/bad" not in tags["scalars"]
    assert [e.value for e in acc.Scalars("train/loss")] == pytest.approx([1.0, 0.5, 1 / 3, 0.25, 0.2])
    assert any("config" in t for t in tags["tensors"])
    projector = (tmp_path / "tensorboard" / "projector_config.pbtxt").read_text()
    assert "validation" in projector and "sprite" in projector


def test_train_with_log_tensorboard_writes_steps_epochs_and_the_projector(tiny_catalogue, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from xmodal.training.cli import main as train
    from conftest import TINY_SIZE
    assert train(["--model", "infonce-efficientnet", "--data", str(tiny_catalogue), "--epochs", "2",
                  "--batch-size", "16", "--out", str(tmp_path), "--run-id", "tb", "--log", "tensorboard",
                  *TINY_SIZE]) == 0
    acc = EventAccumulator(str(tmp_path / "tb" / "tensorboard"))
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    assert "train/loss" in scalars and "val/rsum" in scalars and "val/text_to_image/R@1" in scalars
    assert [e.step for e in acc.Scalars("val/rsum")] == [1, 2]
    assert "validation" in (tmp_path / "tb" / "tensorboard" / "projector_config.pbtxt").read_text()


def test_log_tensorboard_without_the_package_is_one_line(monkeypatch, tmp_path, capsys, tiny_catalogue):
    import sys

    from xmodal.training.cli import main as train
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    assert train(["--data", str(tiny_catalogue), "--log", "tensorboard", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install tensorboard" in err and not any(tmp_path.iterdir())
