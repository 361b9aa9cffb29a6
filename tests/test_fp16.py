"""A float16 gallery on a small real run (issue 24 §2): against float32 exact search, its top-10 changes only where
float32's scores are within float16's rounding of each other, and the bench's agreement row counts what it says."""
from __future__ import annotations

import torch

from xmodal.bench.search import FP16_IDENTICAL, FP16_R10_POINTS, fp16_agreement, fp16_agreement_row, held_out_captions
from xmodal.retrieval.gallery import Gallery, GalleryConfig
from xmodal.retrieval.run import load_run

# float16 keeps 11 significant bits: a unit vector's entries round by at most 2^-11 of themselves, so a score
# (a sum of |g_i q_i| <= 1) moves by at most about 2 * 2^-11 ~ 1e-3; twice that is the near-tie band
NEAR_TIE = 2e-3


def test_fp16_top10_differs_from_fp32_only_at_near_ties(trained_run):
    split = held_out_captions(trained_run)
    full = Gallery.build(split.images, kind="exact")
    half = Gallery.build(split.images, kind="exact", cfg=GalleryConfig(precision="fp16"))
    s32, i32 = full.search(split.held, 10)
    s16, i16 = half.search(split.held, 10)
    assert half.embeds.dtype == torch.float16 and half.embeds.nbytes * 2 == full.embeds.nbytes
    assert (s16 - s32).abs().max() < NEAR_TIE / 2  # the k-th best scores agree to float16's rounding
    every = split.held @ split.images.T  # [Q, N] float32 scores, the ground for what a swap costs
    for q in range(len(i32)):
        swapped_in = set(i16[q].tolist()) - set(i32[q].tolist())
        for item in swapped_in:  # an item fp16 ranks in the top 10 that fp32 does not: a near-tie with fp32's 10th
            assert float(s32[q, -1] - every[q, item]) < NEAR_TIE, (q, item)

    counts = fp16_agreement(split.images, split.held, split.items)
    own = torch.as_tensor(split.items).reshape(-1, 1)
    hit32, hit16 = (i32 == own).any(1), (i16 == own).any(1)
    assert counts["queries"] == len(split.held) == len(split.items)
    assert counts["same_set"] == sum(set(a) == set(b) for a, b in zip(i32.tolist(), i16.tolist()))
    assert counts["same_order"] == int((i32 == i16).all(1).sum()) <= counts["same_set"]
    assert (counts["hit32"], counts["hit16"]) == (int(hit32.sum()), int(hit16.sum()))
    assert counts["changed"] == int((hit32 != hit16).sum()) and counts["bytes16"] * 2 == counts["bytes32"]
    # R@10's ground truth: held-out caption i is the caption of photo ``items[i]``, the same item's row
    run = load_run(trained_run)
    assert torch.equal(split.held, run.text_embeds[torch.as_tensor(split.items)])
    assert torch.equal(split.images, run.image_embeds) and len(set(split.items.tolist())) == len(split.items)


def test_the_agreement_row_holds_fp16_to_the_issues_target(trained_run):
    split = held_out_captions(trained_run)
    row = fp16_agreement_row(split)
    counts = fp16_agreement(split.images, split.held, split.items)
    same = 100 * counts["same_set"] / counts["queries"]
    moved = 100 * abs(counts["hit16"] - counts["hit32"]) / counts["queries"]
    assert row.score == f"{same:.1f} %" and "held-out captions of a trained run over its 60 photos" in row.measure
    assert row.met == (same >= 100 * FP16_IDENTICAL and moved <= FP16_R10_POINTS)
    assert "identical top-10 sets" in row.measured and "R@10" in row.reference and "[" in row.measured

