"""KL controllers against their closed form; KL penalty estimators and reward shaping by hand."""

from __future__ import annotations

import math

import pytest
import torch

from rlhfkit.kl import (
    AdaptiveKLController,
    FixedKLController,
    last_valid_index,
    make_kl_controller,
    per_token_kl_penalty,
    shape_rewards,
)


def adaptive_closed_form(beta0: float, target: float, horizon: float, kls: list[float], n_steps: int) -> float:
    """Ziegler et al. 2019 §2.2 unrolled: beta_N = beta_0 * prod_t (1 + n/H * clip(KL_t/target - 1, -0.2, 0.2))."""
    return beta0 * math.prod(1.0 + n_steps / horizon * min(max(kl / target - 1.0, -0.2), 0.2) for kl in kls)


def test_adaptive_controller_matches_closed_form() -> None:
    kls = [6.0, 12.0, 0.5, 5.5, 7.0, 100.0, 0.0, 6.6]  # in range, clipped above, clipped below, on target...
    ctl = AdaptiveKLController(init_coef=0.1, target=6.0, horizon=10_000)
    for i, kl in enumerate(kls, start=1):
        ctl.update(kl, n_steps=256)
        assert ctl.value == pytest.approx(adaptive_closed_form(0.1, 6.0, 10_000, kls[:i], 256), rel=1e-12)


def test_adaptive_controller_single_steps_by_hand() -> None:
    ctl = AdaptiveKLController(init_coef=0.2, target=4.0, horizon=100)
    ctl.update(current_kl=5.0, n_steps=50)  # e = 0.25 -> clipped 0.2; beta = 0.2 * (1 + 0.5 * 0.2) = 0.22
    assert ctl.value == pytest.approx(0.22)
    ctl.update(current_kl=3.6, n_steps=10)  # e = -0.1; beta = 0.22 * (1 - 0.01) = 0.2178
    assert ctl.value == pytest.approx(0.2178)
    ctl.update(current_kl=4.0, n_steps=1000)  # on target: unchanged
    assert ctl.value == pytest.approx(0.2178)


def test_controllers_state_round_trip() -> None:
    a = AdaptiveKLController(0.05, 6.0, 1000)
    a.update(9.0, 64)
    b = AdaptiveKLController(0.05, 6.0, 1000)
    b.load_state_dict(a.state_dict())
    assert b.value == a.value
    a.update(2.0, 64)
    b.update(2.0, 64)
    assert b.value == a.value  # resume continues the same trajectory
    f = FixedKLController(0.3)
    f.update(100.0, 1000)
    assert f.value == 0.3
    g = FixedKLController(0.0)
    g.load_state_dict(f.state_dict())
    assert g.value == 0.3
    with pytest.raises(KeyError, match="value"):
        g.load_state_dict({})


def test_factory_and_errors() -> None:
    assert isinstance(make_kl_controller("fixed", 0.1), FixedKLController)
    ctl = make_kl_controller("adaptive", 0.1, target=6.0, horizon=10_000)
    assert isinstance(ctl, AdaptiveKLController) and ctl.target == 6.0
    with pytest.raises(ValueError, match="choose one of"):
        make_kl_controller("pid", 0.1)
    with pytest.raises(ValueError, match="target and horizon"):
        make_kl_controller("adaptive", 0.1)
    with pytest.raises(ValueError, match="target must be > 0"):
        AdaptiveKLController(0.1, 0.0, 10)


def test_per_token_kl_penalty_estimators() -> None:
    logp = torch.tensor([[-1.0, -2.0, -0.5]])
    ref = torch.tensor([[-1.5, -1.0, float("-inf")]])  # -inf on padding must not leak
    mask = torch.tensor([[1, 1, 0]])
    k1 = per_token_kl_penalty(logp, ref, mask, coef=0.1, estimator="k1")
    torch.testing.assert_close(k1, torch.tensor([[0.05, -0.1, 0.0]]))
    k3 = per_token_kl_penalty(logp, ref, mask, coef=0.1, estimator="k3")
    # k3 = (ref/pi - 1) - log(ref/pi): log r = 0.5 -> e^-0.5 - 1 + 0.5; log r = -1 -> e^1 - 1 - 1
    expected = torch.tensor([[0.1 * (math.exp(-0.5) - 0.5), 0.1 * (math.e - 2.0), 0.0]])
    torch.testing.assert_close(k3, expected)
    k2 = per_token_kl_penalty(logp, ref, mask, coef=1.0, estimator="k2")
    torch.testing.assert_close(k2, torch.tensor([[0.125, 0.5, 0.0]]))
    with pytest.raises(ValueError, match="unknown KL estimator"):
        per_token_kl_penalty(logp, ref, mask, 0.1, estimator="k4")


def test_k1_and_k3_agree_in_expectation() -> None:
    # both are unbiased for KL(pi || ref) when tokens are sampled from pi
    g = torch.Generator().manual_seed(0)
    pi = torch.softmax(torch.randn(6, generator=g), 0)
    ref = torch.softmax(torch.randn(6, generator=g), 0)
    exact = (pi * (pi.log() - ref.log())).sum()
    idx = torch.multinomial(pi, 200_000, replacement=True, generator=g)[None, :]
    mask = torch.ones_like(idx)
    for est in ("k1", "k3"):
        mc = per_token_kl_penalty(pi.log()[idx], ref.log()[idx], mask, 1.0, est).mean()
        assert mc.item() == pytest.approx(exact.item(), abs=0.02)


def test_shape_rewards_puts_score_on_last_valid_token() -> None:
    scores = torch.tensor([1.0, -2.0, 0.5])
    kl = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.5, 0.0, 9.0, 9.0], [0.1, 9.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    out = shape_rewards(scores, kl, mask)
    expected = torch.tensor([[-0.1, -0.2, -0.3, 0.6], [-0.5, -2.0, 0.0, 0.0], [0.4, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(out, expected)
    # the total reward of a row is score - sum of its penalties
    torch.testing.assert_close(out.sum(1), scores - (kl * mask).sum(1))


def test_shape_rewards_errors() -> None:
    with pytest.raises(ValueError, match=r"rows \[1\] have no valid response token"):
        shape_rewards(torch.zeros(2), torch.zeros(2, 3), torch.tensor([[1, 0, 0], [0, 0, 0]]))
    with pytest.raises(ValueError, match="expected scores"):
        shape_rewards(torch.zeros(3), torch.zeros(2, 3), torch.ones(2, 3))
    assert last_valid_index(torch.tensor([[1, 1, 0], [1, 0, 1]])).tolist() == [1, 2]


def test_kl_penalty_clip_and_finite_gradients_with_padding() -> None:
    logp = torch.tensor([[-1.0, -30.0, float("-inf")]], requires_grad=True)
    ref = torch.tensor([[-1.0, -0.1, -2.0]])
    mask = torch.tensor([[1, 1, 0]])
    clipped = per_token_kl_penalty(logp, ref, mask, coef=1.0, estimator="k3", log_ratio_clip=10.0)
    # log r = -29.9 clamped to -10: k3 = e^10 - 1 - 10
    torch.testing.assert_close(clipped, torch.tensor([[0.0, math.exp(10.0) - 11.0, 0.0]]))
    clipped.sum().backward()
    assert torch.isfinite(logp.grad).all() and logp.grad[0, 2] == 0
