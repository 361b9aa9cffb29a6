"""Composed queries and relevance feedback: the vector arithmetic against brute force, ``run.search`` /
``run.refine`` on a trained run, the benchmark and its CLI, and the Search page's photo + words tab (AppTest)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from streamlit.testing.v1 import AppTest

from xmodal.retrieval.compose import (DEFAULT_WEIGHT, ComposedResult, benchmark, benchmark_queries, choose_and_read,
                            compose_vectors, main, rocchio, score_spread)

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 120


def _unit(x):
    return F.normalize(torch.as_tensor(x, dtype=torch.float32), dim=-1)


def test_compose_weights_the_two_parts_as_z_scored_scores():
    """With the gallery given, ranking by the composed query is ranking by ``(1 - w) z(photo scores) +
    w z(word scores)`` (brute force); the ends are the photo alone and the words alone."""
    g = torch.Generator().manual_seed(0)
    gallery = _unit(torch.randn(300, 16, generator=g))
    img, txt = _unit(torch.randn(16, generator=g)), _unit(torch.randn(16, generator=g))
    assert torch.allclose(compose_vectors(img, txt, 0.0, gallery), img, atol=1e-6)
    assert torch.allclose(compose_vectors(img, txt, 1.0, gallery), txt, atol=1e-6)
    for w in (0.3, 0.5, 0.8):
        q = compose_vectors(img, txt, w, gallery)
        si, st_ = gallery @ img, gallery @ txt
        want = (1 - w) * (si - si.mean()) / si.std() + w * (st_ - st_.mean()) / st_.std()
        assert torch.equal((gallery @ q).argsort(descending=True)[:20], want.argsort(descending=True)[:20])
    plain = compose_vectors(img, txt, 0.5)  # no gallery: the unit vectors' mean direction
    assert torch.allclose(plain, _unit(img + txt), atol=1e-6)
    batch = compose_vectors(torch.stack([img, txt]), torch.stack([txt, img]), 0.4, gallery)  # [2, D]
    assert torch.allclose(batch[0], compose_vectors(img, txt, 0.4, gallery), atol=1e-6)
    assert score_spread(gallery, img).shape == ()
    with pytest.raises(ValueError, match="between 0"):
        compose_vectors(img, txt, 1.5)


def test_rocchio_by_hand():
    q0 = torch.tensor([1.0, 0.0, 0.0])
    good = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    bad = torch.tensor([[0.0, 0.0, 1.0]])
    want = _unit(torch.tensor([1.0, 0.0, 0.0]) + 0.75 * torch.tensor([0.0, 0.5, 0.5])
                 - 0.15 * torch.tensor([0.0, 0.0, 1.0]))
    assert torch.allclose(rocchio(q0, good, bad), want, atol=1e-6)
    assert torch.allclose(rocchio(q0, None, None), q0)


@pytest.fixture(scope="module")
def run(trained_run):
    from xmodal.retrieval.run import load_run
    return load_run(trained_run)


def test_search_photo_words_and_both(run):
    cat = run.catalogue
    words = run.search(text="red striped shirt", k=5)
    assert [h.index for h in words] == [h.index for h in run.search_text("red striped shirt", k=5)]
    photo = run.search(image=3, k=5)  # an item's own photo: left out of its results
    assert 3 not in [h.index for h in photo] and len(photo) == 5 and photo.exclude == [3]
    from_file = run.search(image=cat.image_path(3), k=6)  # the same photo from its file: found first
    assert from_file[0].index == 3 and [h.index for h in from_file[1:]] == [h.index for h in photo]
    both = run.search(image=3, text="red", weight=0.5, k=5)
    assert isinstance(both, ComposedResult) and 3 not in [h.index for h in both]
    gallery = run.image_embeds
    q = compose_vectors(gallery[3], run.embed_text("red"), 0.5, gallery)
    scores = (gallery @ q).numpy()
    scores[3] = -np.inf
    assert [h.index for h in both] == np.argsort(-scores, kind="stable")[:5].tolist()
    assert [h.index for h in run.search(image=3, text="red", weight=0.0, k=5)] == [h.index for h in photo]
    with pytest.raises(ValueError, match="photo, words, or both"):
        run.search()
    with pytest.raises(ValueError, match="between 0"):
        run.search(image=3, text="red", weight=2)
    with pytest.raises(ValueError, match="outside the gallery"):
        run.search(image=len(cat))


def test_refine_moves_towards_good_and_away_from_bad_over_rounds(run):
    first = run.search(image=3, text="striped", k=10)
    good, bad = first[5].index, first[0].index
    second = run.refine(first, good=[good], bad=[bad], k=10)
    assert second.round == 1 and second.good == [good] and second.bad == [bad]
    rank = {h.index: r for r, h in enumerate(second)}
    assert rank.get(good, 99) < 5 and rank.get(bad, 99) > 0  # the liked one up, the disliked one down
    assert 3 not in rank  # still leaves the query's own item out
    third = run.refine(second, good=[bad])  # judged again: its latest judgement counts
    assert third.round == 2 and sorted(third.good) == sorted([good, bad]) and third.bad == []
    assert torch.equal(third.origin, first.query_vector)
    by_vector = run.refine(first.query_vector, good=[good, bad], k=10)  # from a vector: one round, same query
    assert torch.allclose(by_vector.query_vector, third.query_vector, atol=1e-6)
    with pytest.raises(ValueError, match="outside the gallery"):
        run.refine(first, good=[10_000])


def test_benchmark_chooses_on_validation_and_reads_test_once(run):
    """The weight is swept on the validation split's items, never the test split's; test is read at the
    default weight alone."""
    from xmodal.runs import read_json
    splits = read_json(run.dir / "splits.json")
    items, _, _ = benchmark_queries(run, n=20)  # the default split
    assert items and {run.catalogue.item_ids[i] for i in items} <= set(splits["val"])
    test_items, _, _ = benchmark_queries(run, n=20, split="test")
    assert test_items and {run.catalogue.item_ids[i] for i in test_items} <= set(splits["test"])
    res = choose_and_read(run, n=20)
    assert res["val"]["split"] == "val" and res["test"]["split"] == "test"
    assert set(res["test"]["balanced"]) == {DEFAULT_WEIGHT} and len(res["val"]["balanced"]) > 1
    assert res["val_best_weight"] in res["val"]["balanced"]
    with pytest.raises(ValueError, match="unknown split"):
        benchmark_queries(run, split="validation")


def test_benchmark_ties_count_against_the_query(trained_run):
    """A collapsed model (every photo the same vector) ties every product: the first wanted one ranks behind
    all the others (``first_match_ranks``), so no query succeeds, whatever order a top-k would break ties in."""
    from xmodal.retrieval.run import load_run
    collapsed = load_run(trained_run)
    n, d = collapsed.image_embeds.shape
    collapsed._image_embeds = F.normalize(torch.ones(n, d), dim=-1)
    res = benchmark(collapsed, n=20)
    assert res["photo_only"][0] == 0 and res["words_only"][0] == 0 and res["balanced"][DEFAULT_WEIGHT][0] == 0


def test_benchmark_on_the_demo(run):
    res = benchmark(run, n=20)
    assert res["queries"] >= 1 and res["type_column"] == "master_category" and res["k"] == 10
    assert res["balanced"][0.0] == res["photo_only"] and res["balanced"][1.0] == res["words_only"]
    assert DEFAULT_WEIGHT in res["balanced"] and set(res["plain"]) == set(res["balanced"])
    assert all(0 <= s <= 100 and 0 <= p <= s for s, p in res["balanced"].values())


def test_benchmark_cli(trained_run, capsys):
    assert main(["--run", str(trained_run), "--n", "10"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| model |") and "| cmpm-efficientnet | tiny-cmpm |" in out and "success@10" in out
    assert "val: best w" in out and f"test: photo + words, w={DEFAULT_WEIGHT:g} (read once)" in out


@pytest.mark.parametrize("argv, says", [(["--run", "/no/such/run"], "not a run folder"),
                                        (["--run", "RUN", "--n", "0"], "--n must be at least 1"),
                                        (["--run", "RUN", "--data", "/no/such/catalogue"], "/no/such/catalogue"),
                                        (["--rnu", "x"], "required: --run")])
def test_benchmark_cli_errors_are_one_line(trained_run, capsys, argv, says):
    argv = [str(trained_run) if a == "RUN" else a for a in argv]
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and says in err, err


# ------------------------------------------------------------------------------------ the dashboard

@pytest.fixture
def search_page(trained_run, tiny_catalogue, tmp_path, monkeypatch) -> AppTest:
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / trained_run.name).symlink_to(trained_run, target_is_directory=True)
    monkeypatch.setenv("XMODAL_CHECKPOINTS", str(ckpt))
    at = AppTest.from_file(str(REPO / "dashboard.py"), default_timeout=TIMEOUT)
    at.session_state["cat_source"] = "folder"
    at.session_state["cat_folder"] = str(tiny_catalogue)
    at.run()
    at.switch_page("pages/search.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def test_search_page_photo_plus_words_and_feedback_rounds(search_page):
    at = search_page
    assert any("type a few words" in i.value for i in at.info)  # nothing searched before words are typed
    assert at.slider(key="search_compose_weight").value == DEFAULT_WEIGHT
    at.text_input(key="search_compose_text").input("red").run()
    _ok(at)
    heads = [m.value for m in at.markdown if m.value.startswith("**Photo")] + \
            [m.value for m in at.markdown if m.value.startswith("**Words")]
    assert heads == ["**Photo only**", "**Photo \\+ words \\(words 50\\%\\)**", "**Words only**"], heads
    assert any(c.value.startswith("Round 1:") for c in at.caption)
    goods = [c for c in at.checkbox if c.key.startswith("fb_good_1_")]
    bads = [c for c in at.checkbox if c.key.startswith("fb_bad_1_")]
    assert len(goods) == len(bads) == 8
    goods[3].check()
    bads[0].check()
    at.button(key="search_fb_refine").click().run()
    _ok(at)
    assert any(c.value.startswith("Round 2: 1 marked more like this, 1 less like this") for c in at.caption)
    liked = int(goods[3].key.rsplit("_", 1)[1])
    assert at.checkbox(key=f"fb_good_2_{liked}").value  # the judgement carries into the next round
    at.slider(key="search_compose_weight").set_value(0.8).run()  # a new query starts over
    _ok(at)
    assert any(c.value.startswith("Round 1:") for c in at.caption)
    at.button(key="search_fb_refine").click().run()  # nothing ticked: says so
    _ok(at)
    assert any("Tick" in i.value for i in at.info)
