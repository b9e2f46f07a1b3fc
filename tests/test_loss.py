"""triplet_margin_hardest_negative and false_negative_mask against plain-Python loops and hand values."""

import math

import pytest
import torch
import torch.nn.functional as F

from tli.loss import batch_dynamics, false_negative_mask, info_nce, triplet_margin_hardest_negative


def _loop_loss(anchor, positive, margin, mask=None):
    """Direct double loop over (i, j) in plain Python floats."""
    a, p = anchor.tolist(), positive.tolist()
    n = len(a)
    dot = lambda u, v: sum(x * y for x, y in zip(u, v))  # noqa: E731
    total = 0.0
    for i in range(n):
        excluded = [j == i or (mask is not None and mask[i][j]) for j in range(n)]
        negatives = [dot(a[i], p[j]) for j in range(n) if not excluded[j]]
        if negatives:
            total += max(0.0, margin + max(negatives) - dot(a[i], p[i]))
    return total / n


def _unit(n, d, seed):
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), dim=1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_double_loop(seed):
    anchor, positive = _unit(7, 5, seed), _unit(7, 5, seed + 100)
    mask = torch.rand(7, 7, generator=torch.Generator().manual_seed(seed)) < 0.4
    for margin in (0.0, 0.2, 1.5):
        assert triplet_margin_hardest_negative(anchor, positive, margin).item() == pytest.approx(
            _loop_loss(anchor, positive, margin)
        )
        assert triplet_margin_hardest_negative(anchor, positive, margin, mask).item() == pytest.approx(
            _loop_loss(anchor, positive, margin, mask.tolist())
        )


def _hand_example():
    """Anchor = identity, so sim[i, j] = positive[j][i] = [[.8, .6, 0], [.6, .8, 0], [0, 0, 1]]."""
    anchor = torch.eye(3, dtype=torch.float64)
    positive = torch.tensor([[0.8, 0.6, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    return anchor, positive


def test_mask_excludes_false_negatives_by_hand():
    anchor, positive = _hand_example()
    # rows 0, 1: 0.5 + 0.6 - 0.8 = 0.3; row 2: max(0, 0.5 + 0 - 1) = 0  ->  0.6 / 3
    assert triplet_margin_hardest_negative(anchor, positive, 0.5).item() == pytest.approx(0.2)
    one = torch.zeros(3, 3, dtype=torch.bool)
    one[0, 1] = True  # row 0's hardest negative is now j = 2: max(0, 0.5 + 0 - 0.8) = 0
    assert triplet_margin_hardest_negative(anchor, positive, 0.5, one).item() == pytest.approx(0.1)
    row = torch.zeros(3, 3, dtype=torch.bool)
    row[0, 1] = row[0, 2] = True  # row 0 has no negative left: contributes 0, still divided by 3
    assert triplet_margin_hardest_negative(anchor, positive, 0.5, row).item() == pytest.approx(0.1)


def test_fully_masked_row_has_finite_gradient():
    anchor, positive = (t.clone().requires_grad_() for t in _hand_example())
    mask = torch.ones(3, 3, dtype=torch.bool)
    loss = triplet_margin_hardest_negative(anchor, positive, 0.5, mask)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(anchor.grad).all() and torch.isfinite(positive.grad).all()


@pytest.mark.parametrize("n", [0, 1])
def test_fewer_than_two_pairs_gives_attached_zero(n):
    anchor, positive = _unit(n, 4, 0).requires_grad_(), _unit(n, 4, 1).requires_grad_()
    loss = triplet_margin_hardest_negative(anchor, positive, 0.3)
    assert loss.ndim == 0 and loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(anchor.grad, torch.zeros_like(anchor))
    assert torch.equal(positive.grad, torch.zeros_like(positive))


def test_perfect_alignment_with_zero_margin_is_zero():
    vectors = _unit(6, 8, 3)
    assert triplet_margin_hardest_negative(vectors, vectors.clone(), 0.0).item() == 0.0
    eye = torch.eye(4)
    assert triplet_margin_hardest_negative(eye, eye, 0.0).item() == 0.0


def test_gradient_reaches_both_inputs():
    anchor, positive = _unit(5, 3, 4).requires_grad_(), _unit(5, 3, 5).requires_grad_()
    loss = triplet_margin_hardest_negative(anchor, positive, 1.0)
    assert loss.item() > 0
    loss.backward()
    assert anchor.grad.abs().sum() > 0 and positive.grad.abs().sum() > 0


def test_invalid_inputs():
    a = _unit(3, 4, 0)
    with pytest.raises(ValueError):
        triplet_margin_hardest_negative(a, _unit(3, 5, 1), 0.1)
    with pytest.raises(ValueError):
        triplet_margin_hardest_negative(a[0], a[0], 0.1)
    with pytest.raises(ValueError):
        triplet_margin_hardest_negative(a, a, -0.1)
    with pytest.raises(ValueError):
        triplet_margin_hardest_negative(a, a, 0.1, torch.zeros(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError):
        triplet_margin_hardest_negative(a, a, 0.1, torch.zeros(3, 3))


def test_false_negative_mask_shared_words():
    swahili = ["bahari", "bahari", "mti", "kubwa", "mkubwa"]
    english = ["ocean", "sea", "tree", "big", "big"]
    expected = torch.zeros(5, 5, dtype=torch.bool)
    expected[0, 1] = expected[1, 0] = True  # same Swahili word
    expected[3, 4] = expected[4, 3] = True  # same English word
    mask = false_negative_mask(swahili, english)
    assert mask.dtype == torch.bool and torch.equal(mask, expected)
    with pytest.raises(ValueError):
        false_negative_mask(["a"], [])


def test_false_negative_mask_removes_duplicate_from_loss():
    anchor, positive = _hand_example()
    mask = false_negative_mask(["bahari", "bahari", "mti"], ["ocean", "sea", "tree"])
    # rows 0 and 1 lose each other as negatives; only j = 2 (sim 0) is left -> every hinge is 0
    assert triplet_margin_hardest_negative(anchor, positive, 0.5, mask).item() == 0.0


def _loop_info_nce(anchor, positive, temperature, mask=None):
    """Both directions' -log softmax of the translation among the unmasked candidates, in plain Python floats."""
    a, p = anchor.tolist(), positive.tolist()
    n = len(a)
    sim = [[sum(x * y for x, y in zip(a[i], p[j])) / temperature for j in range(n)] for i in range(n)]
    hidden = [[i != j and mask is not None and bool(mask[i][j]) for j in range(n)] for i in range(n)]
    total = 0.0
    for i in range(n):  # Swahili word i picks among the English words, English word i among the Swahili words
        total += math.log(sum(math.exp(sim[i][j]) for j in range(n) if not hidden[i][j])) - sim[i][i]
        total += math.log(sum(math.exp(sim[j][i]) for j in range(n) if not hidden[j][i])) - sim[i][i]
    return total / (2 * n)


@pytest.mark.parametrize("seed", [0, 1])
def test_info_nce_matches_a_loop_and_has_its_invariants(seed):
    anchor, positive = _unit(6, 4, seed), _unit(6, 4, seed + 50)
    for temperature in (0.05, 0.5, 2.0):
        assert info_nce(anchor, positive, temperature).item() == pytest.approx(
            _loop_info_nce(anchor, positive, temperature)
        )
    mask = torch.rand(6, 6, generator=torch.Generator().manual_seed(seed)) < 0.3  # not symmetric
    assert info_nce(anchor, positive, 0.5, mask).item() == pytest.approx(_loop_info_nce(anchor, positive, 0.5, mask))
    order = torch.randperm(6, generator=torch.Generator().manual_seed(seed))  # pairs in another order: same loss
    assert info_nce(anchor[order], positive[order], 0.5).item() == pytest.approx(info_nce(anchor, positive, 0.5).item())
    swapped = info_nce(positive, anchor, 0.5).item()  # symmetric in the two languages
    assert swapped == pytest.approx(info_nce(anchor, positive, 0.5).item())
    # every candidate equally likely: log n; perfect, well-separated pairs at a low temperature: about 0
    assert info_nce(anchor[:1].expand(6, 4), anchor[:1].expand(6, 4), 0.5).item() == pytest.approx(math.log(6))
    assert info_nce(torch.eye(4), torch.eye(4), 0.01).item() == pytest.approx(0.0, abs=1e-6)


def test_info_nce_with_every_negative_masked_is_zero_and_rejects_bad_temperatures():
    anchor, positive = _unit(3, 4, 0), _unit(3, 4, 1)
    everything = ~torch.eye(3, dtype=torch.bool)
    assert info_nce(anchor, positive, 0.1, everything).item() == pytest.approx(0.0)
    assert info_nce(anchor[:1], positive[:1], 0.1).item() == 0.0
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="temperature"):
            info_nce(anchor, positive, bad)


def test_batch_dynamics_by_hand():
    anchor, positive = _hand_example()  # sim = [[.8, .6, 0], [.6, .8, 0], [0, 0, 1]]
    row = batch_dynamics(anchor, positive, 0.5)
    assert row["cos_positive"] == pytest.approx((0.8 + 0.8 + 1) / 3)
    assert row["cos_hardest_negative"] == pytest.approx((0.6 + 0.6 + 0) / 3)
    assert row["cos_negatives"] == pytest.approx((0.6 + 0 + 0.6 + 0 + 0 + 0) / 6)
    assert row["active_hinges"] == pytest.approx(2 / 3)  # rows 0, 1: 0.5 + 0.6 - 0.8 > 0; row 2: 0.5 + 0 - 1 < 0
    assert batch_dynamics(anchor, positive, 0.0)["active_hinges"] == 0.0
    one = torch.zeros(3, 3, dtype=torch.bool)
    one[0, 1] = True  # row 0's hardest negative becomes 0
    masked = batch_dynamics(anchor, positive, 0.5, one)
    assert masked["cos_hardest_negative"] == pytest.approx((0 + 0.6 + 0) / 3)
    assert masked["cos_negatives"] == pytest.approx(0.6 / 5) and masked["active_hinges"] == pytest.approx(1 / 3)


def test_batch_dynamics_centred_removes_a_shared_offset():
    anchor, positive = _unit(5, 6, 3), _unit(5, 6, 4)
    offset = torch.zeros(6, dtype=torch.float64)
    offset[0] = 20.0  # both languages share one large direction: raw cosines near 1, centred ones untouched
    shifted = [F.normalize(x * 0.05 + offset, dim=1) for x in (anchor, positive)]
    raw, moved = batch_dynamics(anchor, positive, 0.4), batch_dynamics(*shifted, 0.4)
    assert moved["cos_negatives"] > 0.99 and raw["cos_negatives"] < 0.9
    centred = [F.normalize(x - x.mean(0), dim=1) for x in shifted]
    direct = centred[0] @ centred[1].T
    assert moved["centered_cos_positive"] == pytest.approx(direct.diagonal().mean().item())
    assert moved["centered_cos_negatives"] == pytest.approx(direct[~torch.eye(5, dtype=torch.bool)].mean().item())
    assert abs(moved["centered_cos_negatives"]) < 0.5
