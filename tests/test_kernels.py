"""Exact search's product chosen by measuring: every candidate gives the same top k, the choice is the fastest
measured, and a float16 gallery halves the memory."""
from __future__ import annotations

import pytest
import torch

from xmodal.retrieval import kernels
from xmodal.retrieval.gallery import Gallery, GalleryConfig, exact_topk


def _unit(n, d, seed):
    return torch.nn.functional.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


def test_every_candidate_gives_the_same_scores(monkeypatch):
    monkeypatch.setattr(kernels, "CHUNK_ROWS", 1000)  # so that the chunked candidates really chunk
    g, q = _unit(2500, 32, 0), _unit(3, 32, 1)
    want = q @ g.T
    names = kernels.candidates(g)
    assert set(names) == {"torch", "numpy", "torch:chunked", "numpy:chunked"}
    for name in names:
        assert torch.allclose(kernels.scores(g, q, name), want, atol=1e-5), name
        s, i = exact_topk(g, q, 10, kernel=name)
        assert torch.equal(i, torch.topk(want, 10, dim=1).indices), name


def test_the_choice_is_the_fastest_measured(monkeypatch):
    monkeypatch.setattr(kernels, "MEASURE_ABOVE", 100)
    g = _unit(3000, 16, 2)
    name, timings = kernels.choose(g, reps=2)
    assert set(timings) == set(kernels.candidates(g)) and timings[name] == min(timings.values())
    assert kernels.choose(_unit(50, 16, 3)) == ("torch", {})  # too small to be worth timing


def test_gallery_records_its_kernel_and_fp16_halves_memory(monkeypatch):
    monkeypatch.setattr(kernels, "MEASURE_ABOVE", 100)
    g, q = _unit(4000, 64, 4), _unit(20, 64, 5)
    full = Gallery.build(g, "exact")
    half = Gallery.build(g, "exact", cfg=GalleryConfig(precision="fp16"))
    assert full.info["kernel"] in full.info["kernel_ms"] and full.kernel == full.info["kernel"]
    assert half.embeds.dtype == torch.float16 and half.info["precision"] == "fp16"
    assert half.embeds.element_size() * half.embeds.nelement() * 2 == g.element_size() * g.nelement()
    s16, i16 = half.search(q, 10)
    s32, i32 = full.search(q, 10)
    assert s16.dtype == torch.float32 and (s16 - s32).abs().max() < 2e-3
    assert torch.equal(i16[:, 0], i32[:, 0])  # random unit vectors: no near ties at the top
    with pytest.raises(ValueError, match="precision"):
        Gallery.build(g, "exact", cfg=GalleryConfig(precision="int8"))
