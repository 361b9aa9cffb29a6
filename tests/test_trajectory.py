"""The joint space over epochs: snapshots written by training, maps aligned so that unchanged points stay put."""
from __future__ import annotations

import numpy as np
import pytest

from xmodal.evaluation.trajectory import aligned_maps, epoch_stats
from xmodal.training.snapshots import read_snapshots


def _snaps(rng, epochs=3, n=40, d=16):
    out, img = {}, rng.normal(size=(n, d)).astype(np.float32)
    for e in range(1, epochs + 1):
        txt = img + rng.normal(scale=2.0 / e, size=img.shape).astype(np.float32)  # pairs draw together
        out[e] = (img.copy(), txt)
    return out


def test_unchanged_points_keep_their_place_and_the_last_epoch_is_the_reference():
    rng = np.random.default_rng(0)
    snaps = _snaps(rng)
    maps = aligned_maps(snaps, "pca")
    n = len(snaps[1][0])
    for e in (1, 2):  # the photos never changed: their points coincide in every epoch's map
        assert np.allclose(maps[e][:n], maps[3][:n], atol=1e-4)
        assert not np.allclose(maps[e][n:], maps[3][n:], atol=1e-2)  # the titles moved
    stats = epoch_stats(snaps)
    assert [s["epoch"] for s in stats] == [1, 2, 3]
    assert stats[0]["pair_cosine"] < stats[1]["pair_cosine"] < stats[2]["pair_cosine"]
    assert stats[0]["modality_gap"] > 0 and stats[2]["rsum"] >= stats[0]["rsum"]


def test_umap_places_an_unchanged_epoch_where_the_reference_is():
    rng = np.random.default_rng(1)
    snaps = _snaps(rng, epochs=2, n=60)
    snaps[1] = (snaps[2][0].copy(), snaps[2][1].copy())  # epoch 1 identical to the last
    maps = aligned_maps(snaps, "umap")
    assert maps[1].shape == maps[2].shape == (120, 2)
    near = np.linalg.norm(maps[1] - maps[2], axis=1)
    spread = np.linalg.norm(maps[2] - maps[2].mean(0), axis=1).mean()
    assert np.median(near) < 0.25 * spread  # placed where the reference put them


def test_bad_inputs():
    with pytest.raises(ValueError, match="no snapshots"):
        aligned_maps({})
    with pytest.raises(ValueError, match="unknown projection"):
        aligned_maps(_snaps(np.random.default_rng(2)), "tsne")


def test_training_keeps_a_snapshot_per_epoch(trained_run, tmp_path):
    import shutil
    ids, snaps = read_snapshots(trained_run)
    assert sorted(snaps) == [1, 2] and len(ids) > 0
    img, txt = snaps[2]
    assert img.shape == txt.shape and img.shape[0] == len(ids)
    broken = tmp_path / "run"
    shutil.copytree(trained_run / "snapshots", broken / "snapshots")
    (broken / "snapshots" / "epoch_0002.safetensors").write_bytes(b"garbage")
    assert sorted(read_snapshots(broken)[1]) == [1]  # a damaged file is skipped alone


def test_procrustes_undoes_a_rotation_and_scale_and_small_snapshots_map_with_pca():
    from xmodal.evaluation.trajectory import _procrustes, method_used
    rng = np.random.default_rng(3)
    b = rng.normal(size=(30, 2))
    turn = np.array([[0.0, -1.0], [1.0, 0.0]])
    assert np.allclose(_procrustes(2.5 * b @ turn + 7.0, b), b, atol=1e-4)
    tiny = _snaps(rng, epochs=2, n=10)  # 20 points: too few for UMAP's graph
    assert method_used(tiny, "umap") == method_used(tiny, "aligned-umap") == "pca"
    assert np.allclose(aligned_maps(tiny, "umap")[1], aligned_maps(tiny, "pca")[1])
    with pytest.raises(ValueError, match="unknown projection"):
        method_used(tiny, "tsne")


def test_displacement_and_neighbour_preservation_measure_what_they_say():
    from xmodal.evaluation.trajectory import displacement, freeze, neighbour_preservation
    rng = np.random.default_rng(4)
    snaps = _snaps(rng, epochs=3, n=40)
    maps = aligned_maps(snaps, "pca")
    moved = displacement(snaps, maps)  # the photos never change: they are the still tenth, and PCA keeps them
    assert moved["still"] == pytest.approx(0.0, abs=1e-5) and moved["moving"] > 0.0
    held, mask = freeze(snaps, 0.25)
    assert mask.sum() == 10 and np.array_equal(held[1][1][mask], held[3][1][mask])
    assert not np.array_equal(held[1][1][~mask], held[3][1][~mask])
    moved = displacement(held, aligned_maps(held, "pca"), mask)  # titles held: they keep their place too
    assert moved["still"] == pytest.approx(0.0, abs=1e-5) and moved["moving"] > 0.0
    shuffled = {e: m[rng.permutation(len(m))] for e, m in maps.items()}  # every place meaningless
    assert displacement(snaps, shuffled)["still"] > 0.3
    kept = neighbour_preservation(snaps, maps)
    assert 0.0 <= neighbour_preservation(snaps, shuffled) < kept <= 1.0
    ring = {e: (np.pad(_unit(i[:, :2]), ((0, 0), (0, 14))), np.pad(_unit(t[:, :2]), ((0, 0), (0, 14))))
            for e, (i, t) in snaps.items()}  # points on a circle: cosine and map neighbours are the same
    assert neighbour_preservation(ring, {e: np.concatenate(s)[:, :2] for e, s in ring.items()}) == pytest.approx(1.0)


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)
