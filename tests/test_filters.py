"""Filtered search: exact top k among the products a filter keeps (equal to brute force on the subset), with
hubness reduction too, and one clear error for a filter that keeps nothing."""
from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def run(trained_run):
    from xmodal import load_run
    return load_run(trained_run)


def _brute(run, query_vec, keep, kind="images"):
    gallery = run.image_embeds if kind == "images" else run.text_embeds
    rows = np.flatnonzero(keep)
    scores = (gallery[rows] @ query_vec).numpy()
    return rows[np.argsort(-scores, kind="stable")].tolist()


def test_filtered_search_equals_brute_force_on_the_subset(run):
    attrs = run.catalogue.attributes
    column = "gender"
    value = attrs[column][0]
    keep = np.array([v == value for v in attrs[column]])
    query = run.catalogue.captions[3]
    hits = run.search_text(query, k=5, where={column: value})
    assert [h.index for h in hits] == _brute(run, run.embed_text(query), keep)[:5]
    assert all(attrs[column][h.index] == value for h in hits)
    photo = run.catalogue.image_path(2)
    hits = run.search_image(photo, k=4, where={column: [value]})
    assert [h.index for h in hits] == _brute(run, run.embed_image(photo), keep, "texts")[:4]
    composed = run.search(image=2, text="red", where={column: value.lower()})  # values compare as normalised text
    assert all(attrs[column][h.index] == value for h in composed) and 2 not in [h.index for h in composed]


def test_two_columns_and_more_k_than_kept(run):
    attrs = run.catalogue.attributes
    a, b = "gender", "master_category"
    where = {a: attrs[a][0], b: attrs[b][0]}
    keep = np.array([x == where[a] and y == where[b] for x, y in zip(attrs[a], attrs[b])])
    hits = run.search_text(run.catalogue.captions[0], k=1000, where=where)
    assert len(hits) == int(keep.sum()) and set(h.index for h in hits) == set(np.flatnonzero(keep).tolist())


def test_filters_with_hubness_reduction(run):
    from xmodal.retrieval.hubness import CSLS_WEIGHT, csls_offsets
    attrs = run.catalogue.attributes
    value = attrs["gender"][0]
    keep = np.array([v == value for v in attrs["gender"]])
    run.hubness = "csls"
    try:
        hits = run.search_text(run.catalogue.captions[5], k=5, where={"gender": value})
    finally:
        run.hubness = "none"
    scores = run.image_embeds @ run.embed_text(run.catalogue.captions[5]) - CSLS_WEIGHT * csls_offsets(
        run.text_embeds, run.image_embeds)
    scores[torch.from_numpy(~keep)] = -np.inf
    assert [h.index for h in hits] == torch.topk(scores, 5).indices.tolist()


@pytest.mark.parametrize("where, message", [
    ({"no_such_column": "x"}, "has no column"), ({"gender": "Martian"}, "keeps no product"),
    ({"gender": 3}, "must be a value"), ("gender=Women", "must be a dict"), ({"gender": []}, "must be a value"),
])
def test_bad_filters_say_what_is_wrong(run, where, message):
    with pytest.raises(ValueError, match=message):
        run.search_text(run.catalogue.captions[0], k=5, where=where)


@pytest.mark.parametrize("share", [0.05, 0.6])  # below and above DENSE_FILTER: the two ways of scoring
@pytest.mark.parametrize("csls", [False, True])
def test_sparse_and_dense_filters_equal_brute_force(share, csls):
    from xmodal.retrieval.filters import DENSE_FILTER, exact_rows
    assert 0.05 < DENSE_FILTER < 0.6  # the two shares take the two ways
    gen = torch.Generator().manual_seed(3)
    gallery = torch.nn.functional.normalize(torch.randn(2000, 16, generator=gen), dim=1)
    query = torch.nn.functional.normalize(torch.randn(16, generator=gen), dim=0)
    offsets = torch.rand(2000, generator=gen) if csls else None
    keep = np.random.default_rng(4).random(2000) < share
    scores, rows = exact_rows(gallery, query, 10, offsets, keep)
    want = (gallery @ query - (0.5 * offsets if csls else 0)).numpy()
    kept = np.flatnonzero(keep)
    best = kept[np.argsort(-want[kept], kind="stable")[:10]]
    assert rows[0].tolist() == best.tolist()
    np.testing.assert_allclose(scores[0].numpy(), want[best], rtol=1e-6)
