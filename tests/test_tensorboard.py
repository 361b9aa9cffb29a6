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
