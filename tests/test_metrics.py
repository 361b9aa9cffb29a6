"""Retrieval metrics against a brute-force reference and hand-made cases."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from xmodal.metrics import first_match_ranks, rank_metrics, retrieval_metrics
from xmodal.pipeline import caption_groups


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


def test_reversed_order_is_worst():
    n = 10
    img = torch.eye(n)
    txt = torch.eye(n)[torch.arange(n - 1, -1, -1)]  # text i looks like image n-1-i
    m = retrieval_metrics(img, txt)
    assert m["text_to_image/R@1"] == pytest.approx(0.0) or n % 2 == 1
    assert m["text_to_image/R@10"] == 100.0  # gallery of 10


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
    from xmodal.report import table
    row = table([trained_run]).splitlines()[-1]
    assert "frozen" in row and "split" not in row.split("|")[1]


def test_report_val_table_reads_the_chosen_checkpoint(trained_run, capsys):
    from xmodal.report import main
    from xmodal.runs import read_best
    assert main(["--split", "val", str(trained_run)]) == 0
    row = capsys.readouterr().out.strip().splitlines()[-1]
    best = read_best(trained_run)
    assert f"{best['val']['caption']['rsum']:.1f}" in row and f"| {best['epoch']}/" in row
