"""Losses against direct transcriptions of their papers' formulas (loops over plain floats), and against
numbers worked out by hand on two or three items."""
import math

import pytest
import torch

from xmodal.losses import (attribute_loss, cmpc_loss, cmpm_loss, contrastive_loss, corrnet_loss, correlation,
                           infonce_loss, max_violation_loss)


def _norm(v: torch.Tensor) -> list[float]:
    n = math.sqrt(sum(float(t) ** 2 for t in v))
    return [float(t) / n for t in v]


def _dot(a, b) -> float:
    return sum(float(x) * float(y) for x, y in zip(a, b))


def _log_softmax(logits: list[float]) -> list[float]:
    mx = max(logits)
    lse = mx + math.log(sum(math.exp(v - mx) for v in logits))
    return [v - lse for v in logits]


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


def cmpc_by_formula(x, z, labels, weight) -> tuple[float, float]:
    """Zhang & Lu (ECCV 2018), eq. 5-8: x_hat_i = (x_i . z_i/|z_i|) z_i/|z_i|, norm-softmax with |W_j| = 1 and
    no bias, mean cross-entropy over the batch; likewise z projected onto x's direction."""
    w = [_norm(row) for row in weight]
    out = []
    for a, b in ((x, z), (z, x)):  # image projected on text, then text projected on image
        loss = 0.0
        for i in range(len(labels)):
            b_unit = _norm(b[i])
            length = _dot(a[i], b_unit)
            proj = [length * u for u in b_unit]
            logits = [_dot(wj, proj) for wj in w]
            loss -= _log_softmax(logits)[int(labels[i])]
        out.append(loss / len(labels))
    return out[0], out[1]


def infonce_by_formula(x, z, labels, logit_scale: float) -> tuple[float, float]:
    """CLIP (Radford et al. 2021): cross-entropy over temperature-scaled cosine similarities, the scale exp(t)
    clipped at 100; a row's target spreads evenly over every item sharing its caption (soft targets)."""
    scale = min(math.exp(logit_scale), 100.0)
    n = len(labels)
    xs, zs = [_norm(v) for v in x], [_norm(v) for v in z]
    sim = [[scale * _dot(xs[i], zs[j]) for j in range(n)] for i in range(n)]
    out = []
    for rows in (sim, [list(col) for col in zip(*sim)]):  # image->text rows, then text->image rows
        loss = 0.0
        for i in range(n):
            matches = [j for j in range(n) if labels[j] == labels[i]]
            logp = _log_softmax(rows[i])
            loss -= sum(logp[j] for j in matches) / len(matches)
        out.append(loss / n)
    return out[0], out[1]


def correlation_by_formula(a, b) -> float:
    """Chandar et al. (2016), eq. 2, per code dimension, summed over the dimensions."""
    total = 0.0
    for d in range(a.shape[1]):
        u, v = [float(t) for t in a[:, d]], [float(t) for t in b[:, d]]
        mu, mv = sum(u) / len(u), sum(v) / len(v)
        num = sum((p - mu) * (q - mv) for p, q in zip(u, v))
        total += num / math.sqrt(sum((p - mu) ** 2 for p in u) * sum((q - mv) ** 2 for q in v))
    return total


def _sample(seed: int, n: int = 5, d: int = 4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)


# ------------------------------------------------------------------------------------------- CMPM

def test_cmpm_matches_formula():
    x, z = _sample(0)
    labels = torch.tensor([0, 1, 1, 2, 3])  # items 1 and 2 share a caption
    terms = cmpm_loss(x, z, labels)
    assert set(terms) == {"cmpm_i2t", "cmpm_t2i"}
    assert abs(float(sum(terms.values())) - cmpm_by_formula(x, z, labels)) < 1e-4
    # each direction on its own: the i2t term projects images on unit-norm texts, not the other way round
    t2i = cmpm_loss(z, x, labels)["cmpm_i2t"]
    assert float(terms["cmpm_t2i"]) == pytest.approx(float(t2i), abs=1e-6)


def test_cmpm_by_hand_on_two_items():
    """x = (2, 0), (0, 1); z = (3, 0), (0, 1/2). i2t logits x_i . z_j/|z_j| = [[2, 0], [0, 1]], t2i logits
    z_i . x_j/|x_j| = [[3, 0], [0, 1/2]]; distinct captions, so q is the identity and
    L_i = p_ii log p_ii + sum_{j != i} p_ij log(p_ij / eps)."""
    x = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    z = torch.tensor([[3.0, 0.0], [0.0, 0.5]])
    eps = 1e-8

    def row(a: float) -> float:  # logits [a, 0] (or [0, a]) with the match at logit a
        p, r = 1 / (1 + math.exp(-a)), 1 / (1 + math.exp(a))
        return p * math.log(p) + r * math.log(r / eps)
    terms = cmpm_loss(x, z, torch.tensor([0, 1]))
    assert float(terms["cmpm_i2t"]) == pytest.approx((row(2.0) + row(1.0)) / 2, rel=1e-5)
    assert float(terms["cmpm_t2i"]) == pytest.approx((row(3.0) + row(0.5)) / 2, rel=1e-5)


def test_cmpm_true_match_distribution_rows_sum_to_one():
    """Items 1 and 2 share a caption and an embedding: p splits 1/2, 1/2 over them, and so must q (y_ij
    normalised per row), making the loss 0. An unnormalised q (= y) would give -log 2 per duplicate row."""
    x = torch.tensor([[50.0, 0.0], [0.0, 50.0], [0.0, 50.0]])
    labels = torch.tensor([0, 1, 1])
    terms = cmpm_loss(x, x.clone(), labels)
    assert abs(float(sum(terms.values()))) < 1e-3
    assert abs(float(sum(terms.values())) - cmpm_by_formula(x, x.clone(), labels)) < 1e-4


# ------------------------------------------------------------------------------------------- CMPC

def test_cmpc_matches_formula():
    x, z = _sample(1, n=6)
    weight = torch.randn(4, 4, generator=torch.Generator().manual_seed(2)) * 3
    labels = torch.tensor([0, 3, 1, 1, 2, 0])
    terms = cmpc_loss(x, z, labels, weight)
    assert set(terms) == {"cmpc_i", "cmpc_t"}
    ref_i, ref_t = cmpc_by_formula(x, z, labels, weight)
    assert float(terms["cmpc_i"]) == pytest.approx(ref_i, abs=1e-5)
    assert float(terms["cmpc_t"]) == pytest.approx(ref_t, abs=1e-5)


def test_cmpc_by_hand_on_one_item():
    """x = (2, 1), z = (1, 0): x projected on z's direction is (2, 0), z on x's is (z . x/|x|) x/|x| = (0.8, 0.4).
    W = [(1, 0), (0, 3)] normalises to the identity (no bias), so the logits are the projections themselves."""
    x, z = torch.tensor([[2.0, 1.0]]), torch.tensor([[1.0, 0.0]])
    weight = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    terms = cmpc_loss(x, z, torch.tensor([0]), weight)
    assert float(terms["cmpc_i"]) == pytest.approx(math.log(1 + math.exp(0 - 2)), rel=1e-5)
    assert float(terms["cmpc_t"]) == pytest.approx(math.log(1 + math.exp(0.4 - 0.8)), rel=1e-5)
    terms = cmpc_loss(x, z, torch.tensor([1]), weight)  # the other class
    assert float(terms["cmpc_i"]) == pytest.approx(math.log(1 + math.exp(2 - 0)), rel=1e-5)


# ---------------------------------------------------------------------------------------- InfoNCE

def test_infonce_matches_formula_with_duplicate_titles():
    x, z = _sample(3, n=6)
    labels = torch.tensor([0, 1, 1, 2, 1, 3])  # three items share a title
    terms = infonce_loss(x, z, labels, torch.tensor(math.log(7.0)))
    assert set(terms) == {"infonce_i2t", "infonce_t2i"}
    ref_i2t, ref_t2i = infonce_by_formula(x, z, labels, math.log(7.0))
    assert float(terms["infonce_i2t"]) == pytest.approx(ref_i2t, abs=1e-5)
    assert float(terms["infonce_t2i"]) == pytest.approx(ref_t2i, abs=1e-5)
    assert ref_i2t != pytest.approx(ref_t2i, abs=1e-3)  # the two directions are not the same number here


def test_infonce_soft_targets_by_hand():
    """Three items, 0 and 1 share a title. Image 0 matches text 0 (cos 1), the rest are orthogonal, scale 1:
    row 0 is log-softmax [1, 0, 0] and its target is (1/2, 1/2, 0), so its loss is -(1 - lse)/2 - (0 - lse)/2
    with lse = log(e + 2); rows 1 and 2 (logits all 0 but text 2 for image 2) are worked out the same way."""
    img = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    txt = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 0.0, 1.0]])  # text 1 points away from image 2
    labels = torch.tensor([0, 0, 1])
    # sim (rows images, columns texts): [[1, 0, 0], [0, 0, 0], [0, -1, 1]]
    row0 = -0.5 * ((1 - math.log(math.e + 2)) + (0 - math.log(math.e + 2)))
    row1 = math.log(3)  # all logits 0: each log-softmax is -log 3, whatever the target
    row2 = -(1 - math.log(1 + math.exp(-1) + math.e))
    i2t = (row0 + row1 + row2) / 3
    # columns (texts as queries): text 0 [1, 0, 0] over images, target (1/2, 1/2, 0); text 1 [0, 0, -1] same
    # target; text 2 [0, 0, 1], target image 2
    col0 = row0
    col1 = -0.5 * 2 * (0 - math.log(2 + math.exp(-1)))
    col2 = -(1 - math.log(2 + math.e))
    t2i = (col0 + col1 + col2) / 3
    terms = infonce_loss(img, txt, labels, torch.tensor(0.0))
    assert float(terms["infonce_i2t"]) == pytest.approx(i2t, rel=1e-6)
    assert float(terms["infonce_t2i"]) == pytest.approx(t2i, rel=1e-6)


def test_infonce_logit_scale_is_clipped_at_100():
    """CLIP clips the temperature-scaled logits' multiplier exp(t) at 100: above it the loss is the loss at 100
    and t gets no gradient; below it exp(t) is used as it is and t learns."""
    x, z = _sample(4, n=4)
    labels = torch.arange(4)
    high = torch.tensor(math.log(1000.0), requires_grad=True)
    terms = infonce_loss(x, z, labels, high)
    values = {k: float(v.detach()) for k, v in terms.items()}
    at_100 = infonce_by_formula(x, z, labels, math.log(100.0))
    assert values["infonce_i2t"] == pytest.approx(at_100[0], abs=1e-4)
    assert values["infonce_t2i"] == pytest.approx(at_100[1], abs=1e-4)
    (grad,) = torch.autograd.grad(sum(terms.values()), high)
    assert float(grad) == 0.0
    low = torch.tensor(math.log(20.0), requires_grad=True)
    terms = infonce_loss(x, z, labels, low)
    assert float(terms["infonce_i2t"].detach()) == pytest.approx(infonce_by_formula(x, z, labels, math.log(20.0))[0],
                                                                 abs=1e-5)
    (grad,) = torch.autograd.grad(sum(terms.values()), low)
    assert float(grad) != 0.0


# ---------------------------------------------------------------------------------------- CorrNet

def test_correlation_perfect_and_batch_of_one():
    a = torch.randn(16, 3, generator=torch.Generator().manual_seed(5))
    assert abs(float(correlation(a, 2 * a + 1)) - 3.0) < 1e-3
    assert abs(float(correlation(a, -a)) + 3.0) < 1e-3
    assert torch.isfinite(correlation(a[:1], a[:1]))
    b = torch.randn(16, 3, generator=torch.Generator().manual_seed(6))
    assert float(correlation(a, b)) == pytest.approx(correlation_by_formula(a, b), abs=1e-5)


def test_corrnet_loss_by_hand():
    """Chandar et al. (2016): reconstruct both views from h(z), h(x) and h(y), minus lambda times the
    correlation of h(X) and h(Y). Here each view's reconstruction error is its mean squared error (each view
    weighs the same whatever its width) and the correlation is the mean over the code's dimensions (lambda =
    corr_weight / D in the paper's terms).

    Codes (3 items, 2 dims): h(x) = [[1, 1], [2, 2], [3, 3]], h(y) = [[2, 1], [4, 3], [6, 2]]: dimension 0 is
    perfectly correlated (1), dimension 1 centres to (-1, 0, 1) and (-1, 1, 0): 1 / sqrt(2 * 2) = 0.5."""
    img, txt = torch.zeros(3, 2), torch.zeros(3, 4)
    recon = {"both_img": torch.ones(3, 2), "both_txt": torch.zeros(3, 4),  # mse 1 and 0
             "img_img": torch.zeros(3, 2), "img_txt": torch.full((3, 4), 2.0),  # 0 and 4
             "txt_img": torch.full((3, 2), 3.0), "txt_txt": torch.tensor([[1.0, 0, 0, 0]] * 3)}  # 9 and 1/4
    code_img = torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    code_txt = torch.tensor([[2.0, 1.0], [4.0, 3.0], [6.0, 2.0]])
    terms = corrnet_loss(img, txt, recon, code_img, code_txt, corr_weight=0.1)
    assert set(terms) == {"recon_both", "recon_img", "recon_txt", "correlation"}
    assert float(terms["recon_both"]) == pytest.approx(1.0)
    assert float(terms["recon_img"]) == pytest.approx(4.0)
    assert float(terms["recon_txt"]) == pytest.approx(9.25)
    assert float(terms["correlation"]) == pytest.approx(-0.1 * (1.0 + 0.5) / 2, rel=1e-4)


# ------------------------------------------------------------------------------------ contrastive

def test_contrastive_pulls_pairs_and_pushes_within_margin():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    terms = contrastive_loss(a, a.clone(), torch.tensor([0, 1]), margin=0.5)
    assert abs(float(terms["contrastive_pos"])) < 1e-6
    assert float(terms["contrastive_neg"]) == 0.0  # distance sqrt(2) > margin
    close = contrastive_loss(a, torch.tensor([[0.0, 1.0], [1.0, 0.0]]), torch.tensor([0, 1]), margin=2.0)
    assert abs(float(close["contrastive_pos"]) - 2.0) < 1e-5  # each pair sqrt(2) apart
    assert abs(float(close["contrastive_neg"]) - 4.0) < 1e-5  # negatives coincide: (2 - 0)^2


def max_violation_by_formula(x, z, labels, margin):
    """VSE++ (Faghri et al., BMVC 2018), eq. 5, written out with loops; matches are never negatives."""
    n = len(labels)
    xs, zs = [_norm(v) for v in x], [_norm(v) for v in z]
    s = [[_dot(xs[i], zs[j]) for j in range(n)] for i in range(n)]
    i2t = t2i = 0.0
    for i in range(n):
        neg_row = [s[i][j] for j in range(n) if labels[j] != labels[i]]
        neg_col = [s[j][i] for j in range(n) if labels[j] != labels[i]]
        i2t += max(0.0, margin + max(neg_row) - s[i][i]) if neg_row else 0.0
        t2i += max(0.0, margin + max(neg_col) - s[i][i]) if neg_col else 0.0
    return i2t / n, t2i / n


def test_max_violation_matches_formula_and_skips_same_title_pairs():
    torch.manual_seed(3)
    x, z = torch.randn(6, 5), torch.randn(6, 5)
    labels = torch.tensor([0, 1, 1, 2, 3, 3])  # items 1-2 and 4-5 share a title: not each other's negative
    got = max_violation_loss(x, z, labels, margin=0.3)
    want = max_violation_by_formula(x, z, labels.tolist(), 0.3)
    assert got["hard_i2t"].item() == pytest.approx(want[0], abs=1e-6)
    assert got["hard_t2i"].item() == pytest.approx(want[1], abs=1e-6)
    # one title for the whole batch: no negative anywhere, so no loss (not margin + -inf)
    none = max_violation_loss(x, z, torch.zeros(6, dtype=torch.long), margin=0.3)
    assert none["hard_i2t"].item() == 0.0 and none["hard_t2i"].item() == 0.0


def test_attribute_loss_ignores_missing_values():
    logits = {"gender": torch.tensor([[2.0, 0.0], [0.0, 1.0], [5.0, -5.0]]),
              "colour": torch.tensor([[0.0, 0.0, 3.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])}
    targets = torch.tensor([[0, 2], [1, -1], [-1, -1]])  # row 3 knows nothing, row 2 no colour
    gender = -(_log_softmax([2.0, 0.0])[0] + _log_softmax([0.0, 1.0])[1]) / 2
    colour = -_log_softmax([0.0, 0.0, 3.0])[2]
    assert attribute_loss(logits, targets).item() == pytest.approx((gender + colour) / 2, abs=1e-6)
    assert attribute_loss(logits, torch.full((3, 2), -1)).item() == 0.0
