"""Losses against direct transcriptions of their formulas on small cases."""
import math

import torch

from xmodal.losses import cmpc_loss, cmpm_loss, contrastive_loss, correlation, infonce_loss


def cmpm_by_formula(x, z, labels, eps=1e-8):
    """Zhang & Lu (ECCV 2018), eq. 1-4, written out with loops."""
    n = len(labels)
    total = 0.0
    for a, b in ((x, z), (z, x)):  # image->text, then text->image
        loss = 0.0
        for i in range(n):
            logits = [float(a[i] @ (b[j] / b[j].norm())) for j in range(n)]
            mx = max(logits)
            den = sum(math.exp(v - mx) for v in logits)
            p = [math.exp(v - mx) / den for v in logits]
            y = [1.0 if labels[i] == labels[j] else 0.0 for j in range(n)]
            q = [v / sum(y) for v in y]
            loss += sum(p[j] * (math.log(p[j]) - math.log(q[j] + eps)) for j in range(n))
        total += loss / n
    return total


def test_cmpm_matches_formula():
    g = torch.Generator().manual_seed(0)
    x, z = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    labels = torch.tensor([0, 1, 1, 2, 3])  # items 1 and 2 share a caption
    terms = cmpm_loss(x, z, labels)
    assert set(terms) == {"cmpm_i2t", "cmpm_t2i"}
    assert abs(float(sum(terms.values())) - cmpm_by_formula(x, z, labels)) < 1e-4


def test_cmpm_true_match_distribution_rows_sum_to_one():
    # With perfectly separated, matching embeddings the loss goes to ~0 even with duplicate labels.
    x = torch.tensor([[50.0, 0.0], [0.0, 50.0], [0.0, 50.0]])
    labels = torch.tensor([0, 1, 1])
    terms = cmpm_loss(x, x.clone(), labels)
    assert float(sum(terms.values())) < 1e-3


def test_contrastive_pulls_pairs_and_pushes_within_margin():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    terms = contrastive_loss(a, a.clone(), torch.tensor([0, 1]), margin=0.5)
    assert abs(float(terms["contrastive_pos"])) < 1e-6
    assert float(terms["contrastive_neg"]) == 0.0  # distance sqrt(2) > margin
    close = contrastive_loss(a, torch.tensor([[0.0, 1.0], [1.0, 0.0]]), torch.tensor([0, 1]), margin=2.0)
    assert abs(float(close["contrastive_pos"]) - 2.0) < 1e-5  # each pair sqrt(2) apart
    assert abs(float(close["contrastive_neg"]) - 4.0) < 1e-5  # negatives coincide: (2 - 0)^2


def test_correlation_perfect_and_batch_of_one():
    a = torch.randn(16, 3)
    assert abs(float(correlation(a, 2 * a + 1)) - 3.0) < 1e-3
    assert torch.isfinite(correlation(a[:1], a[:1]))


def test_cmpc_and_infonce_are_finite_and_prefer_matches():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 4, generator=g)
    labels = torch.arange(6)
    good = infonce_loss(x, x.clone(), labels, torch.tensor(math.log(10.0)))
    bad = infonce_loss(x, x.flip(0), labels, torch.tensor(math.log(10.0)))
    assert sum(good.values()) < sum(bad.values())
    cls = cmpc_loss(x, x.clone(), labels, torch.randn(6, 4, generator=g))
    assert all(torch.isfinite(v) for v in cls.values())
