"""A float16 gallery (issue 24 §2) returns float32's exact top k: on a small real run, on galleries built to put
hundreds of items within float16's rounding of each other at rank k (where a plain float16 pass does swap), from a
memory-mapped float32 file; the bound behind it holds on every item; without float32 rows it says it is plain."""
from __future__ import annotations

import numpy as np
import torch

from xmodal.bench.search import FP16_IDENTICAL, FP16_R10_POINTS, fp16_agreement, fp16_agreement_row, held_out_captions
from xmodal.retrieval import kernels
from xmodal.retrieval.gallery import Gallery, GalleryConfig, exact_topk
from xmodal.retrieval.run import load_run

FP16 = GalleryConfig(precision="fp16")
FP32 = GalleryConfig(precision="fp32")


def _assert_float32s(half: Gallery, full: Gallery, queries: torch.Tensor, k: int) -> torch.Tensor:
    """``half`` (one query at a time, as Run searches) gives ``full``'s indices and scores; the candidate counts."""
    assert half.rescored and half.embeds.dtype == torch.float16 and half.embeds.nbytes * 2 == full.embeds.nbytes
    s32, i32 = full.search(queries, k)
    for q in range(len(queries)):
        s16, i16 = half.search(queries[q], k)
        assert torch.equal(i16[0], i32[q]), q
        torch.testing.assert_close(s16[0], s32[q], rtol=0, atol=2e-6)  # float32's scores (kernels differ in ulps)
    s16, i16, used = kernels.rescored_topk(half.embeds, half.rows, queries, k, half.error)  # the batched path
    assert torch.equal(i16, i32)
    return used


def test_real_run_gets_float32s_top10(trained_run):
    split = held_out_captions(trained_run)
    full, half = Gallery.build(split.images, "exact", cfg=FP32), Gallery.build(split.images, "exact", cfg=FP16)
    assert half.info["rescored_from"] == "the caller's float32 rows" and half.rows is split.images  # no copy
    _assert_float32s(half, full, split.held, 10)
    # the bound: no item's float32 score lies above what its float16 score allows (the proof's one premise)
    s16 = kernels.scores(half.embeds, split.held)  # [Q, N], float16 values
    s32 = split.held @ split.images.T
    upper = half.error.upper(s16, half.error.slack(split.held)[:, None])
    assert (s32.double() <= upper).all() and float((upper - s32.double()).max()) < 2e-3  # true, and not vacuous

    counts = fp16_agreement(split.images, split.held, split.items)
    assert counts["queries"] == counts["same_set"] == counts["same_order"] == len(split.held)
    assert counts["hit16"] == counts["hit32"] and counts["changed"] == 0 and counts["bytes16"] * 2 == counts["bytes32"]
    assert counts["plain_same_set"] <= counts["same_set"] and counts["most_rescored"] >= 10
    # R@10's ground truth: held-out caption i is the caption of photo ``items[i]``, the same item's row
    run = load_run(trained_run)
    assert torch.equal(split.held, run.text_embeds[torch.as_tensor(split.items)])
    assert torch.equal(split.images, run.image_embeds) and len(set(split.items.tolist())) == len(split.items)


def _near_ties(n: int = 1200, d: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Items whose scores for the query ``e0`` are 0.5 + j * 1e-6 (j = 0..n-1, each a distinct float32): float16 keeps
    one value per 2^-11 = 4.9e-4, so hundreds of them share the float16 score of rank 10."""
    j = torch.arange(n, dtype=torch.float64)
    cos = 0.5 + j * 1e-6
    rows = torch.zeros(n, d, dtype=torch.float64)
    rows[:, 0] = cos
    rows[torch.arange(n), 1 + torch.arange(n) % (d - 1)] = (1 - cos ** 2).sqrt()
    rows = rows[torch.randperm(n, generator=torch.Generator().manual_seed(0))]  # the order says nothing
    queries = torch.zeros(3, d, dtype=torch.float64)
    queries[0, 0] = 1.0
    queries[1:] = torch.nn.functional.normalize(queries[0] + 1e-3 * torch.randn(2, d, dtype=torch.float64), dim=1)
    return rows.float().contiguous(), queries.float()


def test_adversarial_near_ties_widen_the_candidates_and_stay_exact():
    rows, queries = _near_ties()
    full, half = Gallery.build(rows, "exact", cfg=FP32), Gallery.build(rows, "exact", cfg=FP16)
    s16 = kernels.scores(half.embeds, queries[:1])[0]
    kth = torch.topk(s16, 10).values[-1]
    assert int((s16 == kth).sum()) > 100  # the trap: >100 items share the float16 score at rank 10
    assert not torch.equal(exact_topk(half.embeds, queries, 10)[1].sort(1).values, full.search(queries, 10)[1].sort(1)
                           .values)  # and a plain float16 pass falls into it
    used = _assert_float32s(half, full, queries, 10)
    assert used[0] > 42  # the query e0 needed more than the first k + 32 candidates


def test_memory_mapped_rows_and_the_plain_fallback(tmp_path):
    rows, queries = _near_ties(400, 32)
    np.save(tmp_path / "rows.npy", rows.numpy())
    mapped = np.load(tmp_path / "rows.npy", mmap_mode="r")
    half = Gallery.build(mapped, "exact", cfg=FP16)
    assert half.info["rescored_from"] == "a memory-mapped float32 file" and half.rescored
    _assert_float32s(half, Gallery.build(rows, "exact", cfg=FP32), queries, 5)
    for given in (rows.double(), rows.half(), rows.T.contiguous().T):  # copies made here: not kept, so plain fp16
        plain = Gallery.build(given, "exact", cfg=FP16)
        assert not plain.rescored and plain.rows is None and plain.info["rescored_from"] is None
        assert plain.search(queries, 5)[1].shape == (3, 5)
    assert Gallery.build(rows, "exact", cfg=FP32).rescored and Gallery.build(rows, "exact", cfg=FP32).rows is None


def test_the_agreement_row_holds_fp16_to_the_issues_target(trained_run):
    split = held_out_captions(trained_run)
    row = fp16_agreement_row(split)
    counts = fp16_agreement(split.images, split.held, split.items)
    same = 100 * counts["same_set"] / counts["queries"]
    moved = 100 * abs(counts["hit16"] - counts["hit32"]) / counts["queries"]
    assert row.score == f"{same:.1f} %" == "100.0 %" and "held-out captions of a trained run over its 60 photos" \
        in row.measure
    assert row.met == (same >= 100 * FP16_IDENTICAL and moved <= FP16_R10_POINTS) is True
    assert "identical top-10 sets" in row.measured and "R@10" in row.reference and "[" in row.measured
    assert "float32 re-score" in row.measured and "plain fp16 (no re-score)" in row.reference


def test_csls_over_an_fp16_gallery_passes_over_float32_rows_with_their_own_kernel(trained_run, monkeypatch):
    """Run's CSLS (and dense filtered) pass reads the float32 rows in one pass, never a copy, with a kernel measured
    on those rows once: an fp16 gallery's kernel was measured on float16 (on this AMD host torch's float32 product
    is ~3x numpy's; its float16 one is not)."""
    run = load_run(trained_run)
    run.gallery_config, run.hubness = GalleryConfig(precision="fp16"), "csls"
    plain = [h.index for h in run.search_text(run.catalogue.captions[3], 5)]  # measured by the real kernels.choose
    measured, used = [], []
    monkeypatch.setattr(kernels, "choose", lambda rows, *a, **k: measured.append(rows) or ("numpy", {}))
    real = kernels.scores
    monkeypatch.setattr(kernels, "scores", lambda g, q, kernel="torch", raw=False: used.append((g, kernel))
                        or real(g, q, kernel, raw))
    run.gallery("images").info.pop("rows_kernel")
    hits = [h.index for h in run.search_text(run.catalogue.captions[3], 5)]
    assert run.gallery("images").embeds.dtype == torch.float16 and run.rows_kernel("images") == "numpy"
    assert len(measured) == 1 and measured[0] is run.image_embeds  # the float32 rows, once
    assert [(g is run.image_embeds, kernel) for g, kernel in used] == [(True, "numpy")]  # one pass, no copy
    assert hits == plain  # the same ranking whichever kernel scores it
