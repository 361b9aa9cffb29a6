"""xmodal.retrieval.gallery: exact search against brute force, the faiss path's recall, its disk cache, edge cases."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from xmodal.retrieval.gallery import Gallery, GalleryConfig, exact_topk, recall_at_k


def unit(n: int, d: int, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


def clustered(n: int, d: int, seed: int = 0) -> torch.Tensor:
    """Unit vectors around 50 random centres: the neighbourhood structure real embeddings have."""
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(50, d, generator=g), dim=-1)
    which = torch.randint(0, 50, (n,), generator=g)
    return F.normalize(centres[which] + 1.2 * torch.randn(n, d, generator=g) / d ** 0.5, dim=-1)


def brute_force(gallery: torch.Tensor, queries: torch.Tensor, k: int):
    top = torch.topk(queries @ gallery.T, k, dim=1)
    return top.values, top.indices


@pytest.mark.parametrize("block", [1 << 24, 1000])  # one block, and many small gallery/query blocks
def test_exact_matches_brute_force(block):
    x, q = unit(3000, 32), unit(70, 32, seed=1)
    gallery = Gallery.build(x, kind="exact", cfg=GalleryConfig(block_scores=block))
    scores, idx = gallery.search(q, 10)
    ref_s, ref_i = brute_force(x, q, 10)
    assert scores.shape == idx.shape == (70, 10) and idx.dtype == torch.long
    assert torch.equal(idx, ref_i)
    torch.testing.assert_close(scores, ref_s)


def test_auto_picks_by_size():
    x = unit(300, 16)
    assert Gallery.build(x).kind == "exact"
    assert Gallery.build(x, cfg=GalleryConfig(faiss_above=100)).kind == "faiss"


def test_faiss_recall_with_small_threshold(tmp_path):
    data = clustered(4100, 64)
    x, q = data[:4000], data[4000:]  # queries from the same distribution, not in the gallery
    gallery = Gallery.build(x, cfg=GalleryConfig(faiss_above=1000), cache_path=tmp_path / "ix.npz")
    assert gallery.kind == "faiss" and gallery.info["nprobe"] < gallery.info["nlist"]
    scores, idx = gallery.search(q, 10)
    _, ref_i = brute_force(x, q, 10)
    assert recall_at_k(idx, ref_i) >= 0.95
    # scores are the true inner products of the returned items
    torch.testing.assert_close(scores, (q[:, None, :] * x[idx]).sum(-1), atol=1e-4, rtol=0)


def test_faiss_cache_round_trip(tmp_path):
    data = clustered(3020, 32)
    x, q = data[:3000], data[3000:]
    path = tmp_path / "run" / "ix.npz"
    first = Gallery.build(x, kind="faiss", cache_path=path)
    assert path.is_file() and not first.info["from_cache"]
    assert not list(path.parent.glob("*.tmp"))  # written atomically, nothing left behind
    again = Gallery.build(x, kind="faiss", cache_path=path)
    assert again.info["from_cache"] and again.info["nprobe"] == first.info["nprobe"]
    for a, b in zip(first.search(q, 10), again.search(q, 10)):
        assert torch.equal(a, b)
    changed = x.clone()
    changed[0] = F.normalize(torch.ones(32), dim=0)
    rebuilt = Gallery.build(changed, kind="faiss", cache_path=path)  # other embeddings: not the stale index
    assert not rebuilt.info["from_cache"]
    path.write_bytes(b"garbage")
    assert not Gallery.build(x, kind="faiss", cache_path=path).info["from_cache"]  # unreadable: rebuilt


@pytest.mark.parametrize("kind", ["exact", "faiss"])
def test_k_larger_than_gallery(kind):
    x = unit(40, 8)
    scores, idx = Gallery.build(x, kind=kind).search(unit(3, 8, seed=2), 100)
    assert scores.shape == idx.shape == (3, 40)
    assert all(sorted(row.tolist()) == list(range(40)) for row in idx)  # every item once
    assert (scores[:, :-1] >= scores[:, 1:] - 1e-6).all()  # best first


@pytest.mark.parametrize("kind", ["exact", "faiss"])
def test_batch_of_one(kind):
    data = clustered(2001, 16)
    x, q = data[:2000], data[2000:]
    gallery = Gallery.build(x, kind=kind)
    scores, idx = gallery.search(q, 5)
    assert scores.shape == idx.shape == (1, 5)
    vec_s, vec_i = gallery.search(q[0], 5)  # a bare [D] vector is a batch of one
    assert torch.equal(idx, vec_i) and torch.equal(scores, vec_s)
    assert idx[0, 0] == brute_force(x, q, 1)[1][0, 0]


def test_numpy_input_and_errors():
    x = unit(100, 8).numpy()
    gallery = Gallery.build(x)
    assert gallery.search(x[:2], 1)[1][:, 0].tolist() == [0, 1]
    with pytest.raises(ValueError, match="normalised"):
        Gallery.build(np.ones((10, 8), np.float32))
    with pytest.raises(ValueError, match="dims"):
        gallery.search(np.ones((1, 4), np.float32), 1)
    with pytest.raises(ValueError, match="kind"):
        Gallery.build(x, kind="hnsw")
    with pytest.raises(ValueError, match="k must"):
        gallery.search(x[:1], 0)
    with pytest.raises(ValueError, match="empty"):
        Gallery.build(np.zeros((0, 8), np.float32))


def test_exact_topk_helper_blocks_queries():
    x, q = unit(500, 8), unit(40, 8, seed=9)
    s, i = exact_topk(x, q, 7, block_scores=64)  # forces blocks over queries and gallery alike
    ref_s, ref_i = brute_force(x, q, 7)
    assert torch.equal(i, ref_i)


def test_run_search_uses_gallery(trained_run):
    from xmodal import load_run
    run = load_run(trained_run)
    hits = run.search_text("navy blue kurta", k=5)
    ref = torch.topk(run.image_embeds @ run.embed_text("navy blue kurta"), 5)
    assert [h.index for h in hits] == ref.indices.tolist()
    assert run.gallery("images").kind == "exact" and run.gallery("images") is run.gallery("images")
    image_hits = run.search_image(run.catalogue.image_path(0), k=3)
    assert len(image_hits) == 3 and image_hits[0].score >= image_hits[-1].score


def test_faiss_rows_whose_probed_lists_hold_fewer_than_k_items_are_answered_exactly():
    """One probed list of ~8 items cannot fill a top-50: those rows come from exact search, never -1."""
    x = clustered(800, 16)
    q = torch.cat([x[:3], unit(2, 16, seed=5)])  # gallery rows and random directions
    gallery = Gallery.build(x, cfg=GalleryConfig(faiss_above=100, nlist=100, nprobe=1))
    assert gallery.kind == "faiss"
    scores, idx = gallery.search(q, 50)
    ref_s, ref_i = brute_force(x, q, 50)
    assert (idx >= 0).all() and torch.equal(idx, ref_i)
    torch.testing.assert_close(scores, ref_s)
    single_s, single_i = gallery.search(q[0], 50)  # one query: the same answer as in the batch
    assert torch.equal(single_i[0], idx[0])


def across_the_gap(images: torch.Tensor, seed: int, offset: float = 4.0, noise: float = 0.3) -> torch.Tensor:
    """One caption vector per photo with a strong modality gap: the photo's vector plus a constant offset
    (the same for every caption) plus a little noise of its own, as a trained run's text queries sit off its
    image gallery."""
    g = torch.Generator().manual_seed(seed)
    d = images.shape[1]
    gap = F.normalize(torch.randn(d, generator=torch.Generator().manual_seed(123)), dim=0)
    return F.normalize(images + offset * gap + noise * torch.randn(images.shape, generator=g) / d ** 0.5, dim=-1)


def test_run_calibrates_faiss_on_the_other_modality(trained_run, tmp_path):
    """Calibrated on gallery rows plus noise, nprobe promises a recall that text queries across the modality
    gap do not get (here 0.984 promised, 0.93 measured); ``Run.gallery`` calibrates the image gallery on the
    catalogue's caption embeddings, and other captions of the same products then get what it promised."""
    import shutil

    from xmodal import load_run
    from xmodal.bench.common import product_like
    cfg = GalleryConfig(faiss_above=1000, threads=1)
    tolerance = 0.02  # 256 calibration queries: a recall measured on them is good to about +-0.01
    images, _ = product_like(20_000, 64, seed=1)  # [N, D]: the image gallery
    fresh = across_the_gap(images, seed=2)[:1000]  # other captions of the same products: the queries
    _, truth = exact_topk(images, fresh, 10)

    old = Gallery.build(images, kind="faiss", cfg=cfg)  # no queries given: gallery rows plus noise
    assert recall_at_k(old.search(fresh, 10)[1], truth) < cfg.target_recall - tolerance, "the gap is real"

    run = load_run(shutil.copytree(trained_run, tmp_path / "run"))
    run._image_embeds, run._text_embeds = images, across_the_gap(images, seed=1)  # the run's two galleries
    run.gallery_config = cfg
    gallery = run.gallery("images")
    assert gallery.kind == "faiss" and "caption" in gallery.info["calibrated_on"]
    assert gallery.info["calibration_recall@10"] >= cfg.target_recall
    assert recall_at_k(gallery.search(fresh, 10)[1], truth) >= cfg.target_recall - tolerance


def test_bench_recall_rows_use_a_trained_runs_captions(trained_run):
    """The bench's recall row: a trained run's held-out captions against its photos, the index calibrated on
    its other captions; the old calibration (gallery rows plus noise) beside it, without a target."""
    from xmodal.bench.search import real_query_recall
    new, old = real_query_recall(trained_run)
    assert "30 held-out captions of a trained run over its 60 photos" in new.measure
    assert "calibrated on other captions" in new.measure and new.target == ">= 0.95" and new.met is not None
    assert 0.0 <= float(new.measured) <= 1.0 and new.reference.startswith("calibration promised")
    assert "gallery rows plus noise" in old.measure and old.met is None
