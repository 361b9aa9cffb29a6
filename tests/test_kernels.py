"""Exact search's product chosen by measuring: every candidate gives the same top k, the choice is the fastest
measured, a float16 gallery halves the memory, and an exact tie goes to the lower index whatever the kernel."""
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
    full = Gallery.build(g, "exact", cfg=GalleryConfig(precision="fp32"))
    half = Gallery.build(g, "exact", cfg=GalleryConfig(precision="fp16"))
    assert full.info["kernel"] in full.info["kernel_ms"] and full.kernel == full.info["kernel"]
    assert half.embeds.dtype == torch.float16 and half.info["precision"] == "fp16"
    assert half.embeds.element_size() * half.embeds.nelement() * 2 == g.element_size() * g.nelement()
    s16, i16 = half.search(q[:1], 10)  # one query: the float16 pass, re-scored in float32
    s32, i32 = full.search(q, 10)
    assert s16.dtype == torch.float32 and (s16 - s32[:1]).abs().max() < 2e-6 and torch.equal(i16, i32[:1])
    assert torch.equal(half.search(q, 10)[1], i32)  # a batch: the float32 rows
    with pytest.raises(ValueError, match="precision"):
        Gallery.build(g, "exact", cfg=GalleryConfig(precision="int8"))


def test_auto_precision_is_fp16_only_where_it_is_exact(monkeypatch):
    monkeypatch.setattr(kernels, "HALF_ABOVE", 1000)
    g = _unit(1500, 32, 8)
    assert GalleryConfig().precision == "auto"
    auto = Gallery.build(g, "exact")
    assert auto.info["precision"] == "fp16" and auto.rescored and auto.rows is g  # the caller's rows, not a copy
    for given in (g.double(), g[:900]):  # a copy made here (no float32 rows to keep), or too small to gain
        built = Gallery.build(given, "exact")
        assert built.info["precision"] == "fp32" and built.rescored and built.embeds.dtype == torch.float32


@pytest.mark.parametrize("block", [1 << 24, 700])  # one block, and gallery blocks merged
def test_exact_ties_go_to_the_lower_index(block):
    g = _unit(1000, 16, 6)
    q = _unit(2, 16, 7)
    best = torch.topk(q @ g.T, 12, dim=1).indices  # [2, 12]
    dup = g.clone()
    dup[900:912] = g[best[0]]  # copies of query 0's best 12 after them: exact ties straddling rank 10 and inside
    s, i = exact_topk(dup, q[:1], 10, block_scores=block)
    scores = (q[:1] @ dup.T)[0].tolist()
    want = sorted(range(len(dup)), key=lambda j: (-scores[j], j))[:10]  # by score, then the lower index
    assert i[0].tolist() == want and want[:2] == [int(best[0, 0]), 900]  # each original, then its copy
    values, cols = kernels.topk(torch.tensor([[1.0, 3.0, 2.0, 3.0, 3.0, 0.0]]), 2)
    assert cols.tolist() == [[1, 3]] and values.tolist() == [[3.0, 3.0]]
    half = Gallery.build(dup, "exact", cfg=GalleryConfig(precision="fp16"))
    assert torch.equal(half.search(q[0], 10)[1], i)  # the re-scored float16 path breaks ties the same way
