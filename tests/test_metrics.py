"""The metrics core against a brute-force reference and hand-made cases: ranks, ties, non-finite scores,
title groups, the item-level ceiling, both ground truths at once, and the core importing without PyTorch.
Intervals, paired comparisons and seed spreads: tests/test_metrics_intervals.py."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from xmodal.evaluation import metrics
from xmodal.evaluation.metrics import first_match_ranks, rank_metrics, retrieval_metrics
from xmodal.evaluation.metrics import title_groups as caption_groups


def brute_force_ranks(sim: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Rank of the best correct match, ties against the model, one query at a time."""
    ranks = []
    for q in range(sim.shape[0]):
        correct = [g for g in range(sim.shape[1]) if groups[g] == groups[q]]
        best = max(sim[q, g] for g in correct)
        ranks.append(1 + sum(1 for g in range(sim.shape[1]) if groups[g] != groups[q] and sim[q, g] >= best))
    return np.array(ranks)


def test_perfect_match_gives_r1_100_and_median_rank_1():
    emb = F.normalize(torch.randn(20, 8), dim=1)
    m = retrieval_metrics(emb, emb)
    for d in ("text_to_image", "image_to_text"):
        assert m[f"{d}/R@1"] == 100.0
        assert m[f"{d}/median_rank"] == 1.0
        assert m[f"{d}/mean_rank"] == 1.0
    assert m["rsum"] == 600.0


def test_reversed_order_ranks_by_hand():
    n = 30
    img = torch.eye(n)
    txt = 0.5 * torch.eye(n) + torch.eye(n)[torch.arange(n - 1, -1, -1)]  # text i: mostly image n-1-i, a little i
    m = retrieval_metrics(F.normalize(img, dim=1), F.normalize(txt, dim=1))
    # every text query (but the middle-less even n) ranks its own image 2nd: only the mirrored image beats it
    assert m["text_to_image/R@1"] == 0.0 and m["text_to_image/R@5"] == 100.0
    assert m["text_to_image/median_rank"] == 2.0
    # image i: its own text scores 0.5, text n-1-i scores 1 -> also rank 2; R@10 of a 30-item gallery is 100 only
    # because every rank is 2 (checked against the ranks, not the gallery size)
    assert m["image_to_text/mean_rank"] == 2.0 and m["image_to_text/R@1"] == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = 40
    groups = rng.integers(0, 25, size=n)  # some duplicate captions
    img = F.normalize(torch.randn(n, 6, generator=torch.Generator().manual_seed(seed)), dim=1)
    txt = F.normalize(img + 0.8 * torch.randn(n, 6, generator=torch.Generator().manual_seed(seed + 9)), dim=1)
    sim = (txt @ img.t()).numpy()
    for direction, s in (("text_to_image", sim), ("image_to_text", sim.T)):
        ref = brute_force_ranks(s, groups)
        got = first_match_ranks(torch.from_numpy(s), torch.from_numpy(groups[:, None] == groups[None, :]))
        np.testing.assert_array_equal(got, ref)
        m = retrieval_metrics(img, txt, groups)
        for k in (1, 5, 10):
            assert m[f"{direction}/R@{k}"] == pytest.approx(100 * np.mean(ref <= k))
        assert m[f"{direction}/median_rank"] == np.floor(np.median(ref - 1)) + 1
        assert m[f"{direction}/mean_rank"] == pytest.approx(ref.mean())


def test_duplicate_captions_count_under_caption_level():
    # Two products share the caption; text 0 happens to score image 1 highest.
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    txt = torch.tensor([[0.0, 1.0], [0.0, 1.0], [-1.0, 0.0]])
    captions = ["Roadster Men Black Tshirt", "roadster men  black tshirt", "Nike Women Red Dress"]
    item = retrieval_metrics(img, txt)
    caption = retrieval_metrics(img, txt, caption_groups(captions))
    assert item["text_to_image/R@1"] == pytest.approx(200 / 3)
    assert caption["text_to_image/R@1"] == 100.0
    assert caption["image_to_text/R@1"] == 100.0


def test_ties_count_against_the_model():
    sim = torch.zeros(4, 4)  # a collapsed model scores everything the same
    ranks = first_match_ranks(sim, torch.eye(4, dtype=torch.bool))
    assert ranks.tolist() == [4, 4, 4, 4]


def test_median_rank_is_a_rank_not_a_percentage():
    m = rank_metrics(np.array([1, 1, 3, 7, 200]), "x")
    assert m["x/median_rank"] == 3.0
    assert m["x/R@5"] == 60.0


def test_query_without_match_is_an_error():
    with pytest.raises(ValueError, match="correct match"):
        first_match_ranks(torch.zeros(2, 2), torch.tensor([[True, False], [False, False]]))


def test_query_subset_scores_only_those_queries_against_the_whole_gallery():
    torch.manual_seed(3)
    img = torch.nn.functional.normalize(torch.randn(30, 8), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(30, 8), dim=-1)
    groups = np.arange(30) % 20  # some shared titles
    mask = np.zeros(30, dtype=bool)
    mask[[0, 3, 7, 21, 29]] = True
    sub = retrieval_metrics(img, txt, groups, queries=mask)
    sim = (txt @ img.t()).numpy()
    ranks = []
    for q in np.flatnonzero(mask):  # brute force: every gallery image, only the chosen text queries
        correct = groups == groups[q]
        best = sim[q][correct].max()
        ranks.append(1 + int(((sim[q] >= best) & ~correct).sum()))
    assert sub["text_to_image/R@1"] == 100.0 * np.mean(np.array(ranks) <= 1)
    assert sub["text_to_image/mean_rank"] == np.mean(ranks)
    with pytest.raises(ValueError, match="no query"):
        retrieval_metrics(img, txt, groups, queries=np.zeros(30, dtype=bool))


def test_unseen_title_metrics_in_test_json(trained_run):
    import json
    test = json.loads((trained_run / "test.json").read_text())
    assert "unseen_title" in test and test["unseen_queries"] <= test["gallery_size"]
    from xmodal.evaluation.report import table
    text = table([trained_run])
    row = text.splitlines()[2]
    assert "frozen" in row and "split" not in row.split("|")[1]
    assert "caption-level" in text.splitlines()[-1] and "bootstrap" in text.splitlines()[-1]


def test_report_val_table_reads_the_chosen_checkpoint(trained_run, capsys):
    from xmodal.evaluation.report import main
    from xmodal.runs import read_best
    assert main(["--split", "val", str(trained_run)]) == 0
    row = capsys.readouterr().out.strip().splitlines()[-1]
    best = read_best(trained_run)
    assert f"{best['val']['caption']['rsum']:.1f}" in row and f"| {best['epoch']}/" in row


# ---------------------------------------------------------------- the core's corner cases

def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_nan_embeddings_rank_last_not_first():
    """All-NaN embeddings scored R@1 100 and rsum 600 (a NaN similarity made ``sim >= best`` false)."""
    nan = np.full((20, 8), np.nan, dtype=np.float32)
    m = retrieval_metrics(nan, nan)
    assert m["rsum"] == 0.0
    assert m["text_to_image/median_rank"] == 20.0 and m["image_to_text/mean_rank"] == 20.0
    rng = np.random.default_rng(0)
    img = _unit(rng.normal(size=(20, 8)))
    txt = img.copy()
    img[3] = np.nan  # one broken image: its own text query ranks it last, everything else is unaffected
    txt[7] = np.inf
    r = metrics.query_ranks(img, txt)
    assert r["text_to_image"][3] == 20 and r["image_to_text"][3] == 20
    assert r["text_to_image"][7] == 20 and r["image_to_text"][7] == 20
    ok = np.setdiff1d(np.arange(20), [3, 7])
    assert (r["text_to_image"][ok] == 1).all() and (r["image_to_text"][ok] == 1).all()


def test_a_nan_wrong_entry_never_beats_a_finite_correct_one():
    sim = np.array([[0.1, np.nan, np.inf, -np.inf]], dtype=np.float32)
    assert first_match_ranks(sim, np.array([[True, False, False, False]])).tolist() == [1]
    # the correct entry itself non-finite: last place, behind every wrong entry
    assert first_match_ranks(sim, np.array([[False, True, False, False]])).tolist() == [4]


def test_identical_captions_tie_exactly_whatever_the_last_float_bit():
    """Identical captions embedded in different batches differ by an ulp; ties must still count against the
    model (item level), never in its favour half the time."""
    rng = np.random.default_rng(5)
    n = 200
    img = _unit(rng.normal(size=(n, 16)))
    base = _unit(rng.normal(size=(n // 2, 16)))
    txt = np.repeat(base, 2, axis=0)  # items 2j and 2j+1 share a title
    txt = txt * (1 + rng.choice([-1, 1], size=txt.shape) * np.float32(6e-8))  # the last-bit noise
    captions = [f"Brand Men Shirt {j}" for j in range(n // 2) for _ in range(2)]
    img[0::2] = txt[0::2]  # image 2j looks exactly like its text (and so like its twin's text)
    img[1::2] = txt[1::2]
    ranks = metrics.split_ranks(img, txt, captions, "item")
    # item level: every image finds two identical captions, its own and its twin's: rank 2, never 1
    assert (ranks["image_to_text"] == 2).all()
    assert metrics.split_ranks(img, txt, captions, "caption")["image_to_text"].tolist() == [1] * n


def test_tie_tolerance_is_tiny():
    sim = np.array([[0.5, 0.5 + 2e-6, 0.5 + 1e-3, 0.4]], dtype=np.float32)
    assert first_match_ranks(sim, np.array([[True, False, False, False]])).tolist() == [3]


def test_query_ranks_in_blocks_equal_brute_force_with_groups_and_queries(monkeypatch):
    rng = np.random.default_rng(1)
    img, txt = _unit(rng.normal(size=(50, 6))), _unit(rng.normal(size=(50, 6)))
    txt[10] = txt[11]
    groups = np.arange(50)
    groups[11] = 10
    mask = rng.random(50) < 0.4
    monkeypatch.setattr(metrics, "_BLOCK_SCORES", 50 * 7)  # blocks of 7 queries
    for g in (None, groups):
        gg = np.arange(50) if g is None else g
        ours = metrics.query_ranks(img, txt, g, queries=mask)
        sim = txt @ img.T
        np.testing.assert_array_equal(ours["text_to_image"], brute_force_ranks(sim, gg)[mask])
        np.testing.assert_array_equal(ours["image_to_text"], brute_force_ranks(sim.T, gg)[mask])
    seen = []
    metrics.query_ranks(img, txt, progress=seen.append)
    assert seen[-1] == 100 and seen == sorted(seen)  # both directions counted, never past the total


def test_caption_groups_count_as_correct_and_item_level_has_none():
    img = np.eye(3, dtype=np.float32)
    txt = np.array([[.2, 1, 0], [1, .2, 0], [0, 0, 1]], dtype=np.float32)  # captions 0 and 1 nearly swapped
    assert metrics.query_ranks(img, txt)["text_to_image"].tolist() == [2, 2, 1]
    groups = metrics.ground_truth_groups(["Red Shirt", "red  shirt", "Blue Cap"], "caption")
    assert groups.tolist() == [0, 0, 1]
    assert metrics.query_ranks(img, txt, groups)["text_to_image"].tolist() == [1, 1, 1]
    assert metrics.ground_truth_groups(["a", "a"], "item") is None
    with pytest.raises(ValueError, match="ground truth"):
        metrics.ground_truth_groups(["a"], "title")


def test_rank_of_match_counts_ties_against_the_model():
    scores = np.array([0.9, 0.5, 0.7, 0.5, 0.1])
    assert metrics.rank_of_match(scores, [1]) == (4, [0, 2, 3])
    assert metrics.rank_of_match(scores, [0]) == (1, [])
    assert metrics.rank_of_match(scores, [1, 0]) == (1, [])  # an identical caption ranked first
    assert metrics.rank_of_match(scores, [4], show=2) == (5, [0, 2])
    assert metrics.rank_of_match(np.array([np.nan, 0.2, 0.1]), [0]) == (3, [1, 2])


def test_one_title_grouping_for_split_ground_truth_and_training():
    from xmodal.data import splits
    from xmodal.dashboard import analysis
    captions = ["A  b", "a b", "C", " c ", "d"]
    assert metrics.title_groups(captions).tolist() == [0, 0, 1, 1, 2]
    assert splits.title_groups is not None and analysis.titles_coincide(["x", "y"])
    assert not analysis.titles_coincide(captions)


def test_item_level_ceiling_by_hand():
    from xmodal.evaluation.scoring import item_level_ceiling
    groups = np.array([0, 0, 0, 1, 2, 2, 3, 4, 5, 6])  # 10 items, 7 titles; sizes 3, 1, 2, 1, 1, 1, 1
    c = item_level_ceiling(groups)
    assert c["image_to_text/R@1"] == pytest.approx(50.0)  # only the 5 items with a title of their own
    assert c["text_to_image/R@1"] == pytest.approx(70.0)  # one query per title can find its image first
    assert c["image_to_text/R@5"] == 100.0 and c["text_to_image/R@5"] == 100.0


def test_the_ceiling_is_reached_by_a_perfect_model_with_shared_titles():
    from xmodal.evaluation.scoring import score_embeddings
    rng = np.random.default_rng(2)
    captions = ["a", "a", "b", "c", "c", "c", "d", "e"]
    groups = metrics.title_groups(captions)
    vec = _unit(rng.normal(size=(groups.max() + 1, 8)))
    img = txt = vec[groups]  # perfect: every item embeds exactly as its title
    res = score_embeddings(img, txt, captions, intervals=False)
    for key, ceiling in res["item_ceiling"].items():
        assert res["item"][key] <= ceiling + 1e-9
    assert res["item"]["image_to_text/R@1"] == pytest.approx(res["item_ceiling"]["image_to_text/R@1"])
    assert res["caption"]["rsum"] == 600.0


def test_metrics_core_imports_without_torch():
    import subprocess
    import sys
    code = ("import sys, xmodal.evaluation.metrics, xmodal.dashboard.analysis, xmodal.dashboard.slices; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_both_ground_truths_at_once_equal_each_alone():
    rng = np.random.default_rng(4)
    img, txt = _unit(rng.normal(size=(90, 8))), _unit(rng.normal(size=(90, 8)))
    img[5] = np.nan
    captions = [f"title {j % 60}" for j in range(90)]
    both = metrics.ranks_by_ground_truth(img, txt, captions)
    for gt in ("item", "caption"):
        alone = metrics.split_ranks(img, txt, captions, gt)
        for d in metrics.DIRECTIONS:
            np.testing.assert_array_equal(both[gt][d], alone[d])
