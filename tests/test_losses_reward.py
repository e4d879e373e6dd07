"""rlhfkit.losses.reward: Bradley–Terry, margins, weights, Davidson / Rao–Kupper ties, magnitude penalty."""

from __future__ import annotations

import math

import pytest
import torch

from rlhfkit.losses.reward import (
    bradley_terry_loss,
    davidson_log_probs,
    rao_kupper_log_probs,
    reward_loss,
    tie_log_probs,
    tie_loss,
    win_log_probability_given_no_tie,
    win_probability_given_no_tie,
)


def _nll_sigmoid(x: float) -> float:
    return math.log(1 + math.exp(-x))  # -log σ(x)


RC = torch.tensor([1.0, 0.5, -2.0])
RR = torch.tensor([0.0, 1.5, -2.5])


def test_bradley_terry_hand_values() -> None:
    out = bradley_terry_loss(RC, RR)
    assert out.tolist() == pytest.approx([_nll_sigmoid(1.0), _nll_sigmoid(-1.0), _nll_sigmoid(0.5)], rel=1e-6)


def test_bradley_terry_margin_and_weight() -> None:
    margin = torch.tensor([0.5, 0.0, 1.0])
    weight = torch.tensor([1.0, 2.0, 0.5])
    out = bradley_terry_loss(RC, RR, margin=margin, weight=weight)
    expected = [_nll_sigmoid(1.0 - 0.5), 2 * _nll_sigmoid(-1.0), 0.5 * _nll_sigmoid(0.5 - 1.0)]
    assert out.tolist() == pytest.approx(expected, rel=1e-6)
    assert bradley_terry_loss(RC, RR, margin=0.25).tolist() == pytest.approx(
        [_nll_sigmoid(0.75), _nll_sigmoid(-1.25), _nll_sigmoid(0.25)], rel=1e-6
    )


def test_davidson_hand_values() -> None:
    # p = exp(r): r_a = log 3, r_b = 0 -> p_a = 3, p_b = 1; ν = 0.5: denom = 3 + 1 + 0.5 * sqrt 3
    nu = 0.5
    denom = 4 + nu * math.sqrt(3)
    win, loss, tie = tie_log_probs(torch.tensor([math.log(3)]), torch.tensor([0.0]), "davidson", nu)
    assert win.exp().item() == pytest.approx(3 / denom, rel=1e-6)
    assert loss.exp().item() == pytest.approx(1 / denom, rel=1e-6)
    assert tie.exp().item() == pytest.approx(nu * math.sqrt(3) / denom, rel=1e-6)


def test_rao_kupper_hand_values() -> None:
    # p_a = 3, p_b = 1, θ = 2: P(a≻b) = 3/(3+2), P(b≻a) = 1/(1+6), P(tie) = 3·3·1/(5·7)
    win, loss, tie = tie_log_probs(torch.tensor([math.log(3)]), torch.tensor([0.0]), "rao-kupper", 2.0)
    assert win.exp().item() == pytest.approx(3 / 5, rel=1e-6)
    assert loss.exp().item() == pytest.approx(1 / 7, rel=1e-6)
    assert tie.exp().item() == pytest.approx(9 / 35, rel=1e-6)


@pytest.mark.parametrize(
    ("fn", "param"), [(davidson_log_probs, 0.3), (davidson_log_probs, 2.0), (rao_kupper_log_probs, 1.5)]
)
def test_tie_probabilities_sum_to_one(fn, param: float) -> None:
    d = torch.tensor([-30.0, -3.0, -0.2, 0.0, 0.7, 5.0, 30.0], dtype=torch.float64)
    win, loss, tie = fn(d, param)
    total = win.exp() + loss.exp() + tie.exp()
    torch.testing.assert_close(total, torch.ones_like(total))
    assert torch.isfinite(win).all() and torch.isfinite(loss).all() and torch.isfinite(tie).all()
    torch.testing.assert_close(fn(-d, param)[2], tie)  # the tie probability is symmetric in a, b


def test_davidson_nu_to_zero_is_bradley_terry() -> None:
    no_tie = torch.zeros(3, dtype=torch.bool)
    bt = bradley_terry_loss(RC, RR)
    torch.testing.assert_close(tie_loss(RC, RR, no_tie, "davidson", 0.0), bt)
    torch.testing.assert_close(tie_loss(RC, RR, no_tie, "davidson", 1e-7), bt, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(reward_loss(RC, RR, tie=no_tie, tie_param=0.0), bt)


def test_tie_loss_rows_and_margin_only_on_non_ties() -> None:
    tie = torch.tensor([False, True, False])
    margin = torch.tensor([0.5, 3.0, 0.0])
    out = tie_loss(RC, RR, tie, "davidson", 1.0, margin=margin)
    # row 0: d = 1 - 0.5 = 0.5; P(win) = e^{0.25}/(e^{0.25} + e^{-0.25} + 1)
    row0 = -math.log(math.exp(0.25) / (math.exp(0.25) + math.exp(-0.25) + 1))
    # row 1 (tie, margin ignored): d = -1; P(tie) = 1/(e^{-0.5} + e^{0.5} + 1)
    row1 = -math.log(1 / (math.exp(-0.5) + math.exp(0.5) + 1))
    # row 2: d = 0.5, margin 0
    row2 = row0
    assert out.tolist() == pytest.approx([row0, row1, row2], rel=1e-6)


def test_reward_loss_weight_and_magnitude_penalty() -> None:
    weight = torch.tensor([1.0, 0.0, 2.0])
    out = reward_loss(RC, RR, weight=weight, magnitude_penalty=0.1)
    expected = [
        _nll_sigmoid(1.0) + 0.1 * (1.0 + 0.0) / 2,
        0.0 + 0.1 * (0.25 + 2.25) / 2,  # weight 0 drops the likelihood term, not the penalty
        2 * _nll_sigmoid(0.5) + 0.1 * (4.0 + 6.25) / 2,
    ]
    assert out.tolist() == pytest.approx(expected, rel=1e-6)


def test_reward_loss_rao_kupper_ties() -> None:
    tie = torch.tensor([True, False, False])
    out = reward_loss(RC, RR, tie=tie, tie_model="rao-kupper", tie_param=2.0)
    # row 0 tie, d = 1: (θ²-1) σ(d - log θ) σ(-d - log θ) = 3 · 1/(1+2e^{-1}) · 1/(1+2e^{1})
    row0 = -math.log(3 / (1 + 2 * math.exp(-1)) / (1 + 2 * math.exp(1)))
    row1 = -math.log(1 / (1 + 2 * math.exp(1.0)))  # d = -1: σ(-1 - log 2)
    row2 = -math.log(1 / (1 + 2 * math.exp(-0.5)))
    assert out.tolist() == pytest.approx([row0, row1, row2], rel=1e-6)


def test_gradients_push_chosen_up_and_learnable_tie_param() -> None:
    rc = RC.clone().requires_grad_(True)
    rr = RR.clone().requires_grad_(True)
    reward_loss(rc, rr).sum().backward()
    assert torch.all(rc.grad < 0) and torch.all(rr.grad > 0)

    log_nu = torch.tensor(0.0, requires_grad=True)  # a learnable Davidson ν = exp(log ν)
    tie = torch.tensor([True, True, False])
    reward_loss(RC, RR, tie=tie, tie_param=log_nu.exp()).sum().backward()
    assert log_nu.grad is not None and torch.isfinite(log_nu.grad)


def test_reward_errors() -> None:
    tie = torch.tensor([True, False, False])
    with pytest.raises(ValueError, match="θ must be > 1"):
        reward_loss(RC, RR, tie=tie, tie_model="rao-kupper", tie_param=1.0)
    with pytest.raises(ValueError, match="valid: \\['davidson', 'rao-kupper'\\]"):
        reward_loss(RC, RR, tie=tie, tie_model="thurstone")
    with pytest.raises(ValueError, match="ν must be >= 0"):
        tie_loss(RC, RR, tie, "davidson", -1.0)
    with pytest.raises(ValueError, match="shapes differ"):
        bradley_terry_loss(RC, RR[:2])


def test_win_probability_given_no_tie_hand_values() -> None:
    d = torch.tensor([math.log(3), 0.0, -2.0], dtype=torch.float64)
    sig = torch.sigmoid(d)
    torch.testing.assert_close(win_probability_given_no_tie(d), sig)
    torch.testing.assert_close(win_probability_given_no_tie(d, "davidson", 0.7), sig)  # ν cancels
    torch.testing.assert_close(win_probability_given_no_tie(d, "davidson"), sig)
    # Rao–Kupper θ = 2: p_a = 3, p_b = 1: P(a≻b) = 3/5, P(b≻a) = 1/7 -> 21/26; d = -2: 1/(1 + 2e^2) vs 1/(1 + 2e^-2)
    rk = win_probability_given_no_tie(d, "rao-kupper", 2.0)
    w, lo = 1 / (1 + 2 * math.exp(2)), 1 / (1 + 2 * math.exp(-2))
    assert rk.tolist() == pytest.approx([21 / 26, 0.5, w / (w + lo)], rel=1e-12)
    # consistent with the likelihood the loss uses: exp(log_win) / (exp(log_win) + exp(log_lose))
    log_win, log_lose, _ = rao_kupper_log_probs(d, 2.0)
    torch.testing.assert_close(rk, log_win.exp() / (log_win.exp() + log_lose.exp()))
    torch.testing.assert_close(win_log_probability_given_no_tie(d, "rao-kupper", 2.0), rk.log())
    with pytest.raises(ValueError, match="θ > 1"):
        win_probability_given_no_tie(d, "rao-kupper")
    with pytest.raises(ValueError, match="bradley-terry"):
        win_probability_given_no_tie(d, "thurstone")
