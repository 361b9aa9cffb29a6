"""The caches of a run's gallery: its embeddings, a faiss index and the dashboard's projection are truncated,
garbled or replaced, and the next load must give the same values as a fresh computation and log one warning
naming the file; a full disk must leave no temporary file and the previous file intact."""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import cache_kit
from cache_kit import DAMAGE, damage, enospc, leftovers, notices
from xmodal import cachefile
from xmodal.retrieval.gallery import Gallery, GalleryConfig

disk_full = cache_kit.disk_full  # the kit's fixture, for this module's tests


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
