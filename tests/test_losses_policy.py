"""PPO clipped surrogate and clipped value loss against hand values; gradients where clipped or masked."""

from __future__ import annotations

import math

import pytest
import torch

from rlhfkit.losses.policy import ppo_clip_loss
from rlhfkit.losses.value import clipped_value_loss, explained_variance


def logps_for(ratios: list[float], old: float = -1.3) -> tuple[torch.Tensor, torch.Tensor]:
    """(new logprobs with requires_grad, old logprobs) such that exp(new - old) = ratios."""
    old_lp = torch.full((1, len(ratios)), old)
    new_lp = (old_lp + torch.tensor([ratios]).log()).requires_grad_(True)
    return new_lp, old_lp


# (ratio, advantage, expected loss, expected d loss / d logprob, clipped?) with clip 0.2, Schulman et al. 2017 eq. 7:
# loss = max(-A r, -A clip(r, 0.8, 1.2)); d(-A r)/d log r = -A r, and 0 where the clipped branch wins.
PPO_CASES = [
    (1.1, 1.0, -1.1, -1.1, False),  # inside the range
    (1.5, 1.0, -1.2, 0.0, True),  # A > 0, ratio above 1 + eps: clipped, no gradient
    (0.5, 1.0, -0.5, -0.5, False),  # A > 0, ratio below 1 - eps: pessimistic branch is the unclipped one
    (0.5, -1.0, 0.8, 0.0, True),  # A < 0, ratio below 1 - eps: clipped, no gradient
    (1.5, -1.0, 1.5, 1.5, False),  # A < 0, ratio above 1 + eps: unclipped, still pushed down
    (0.9, -2.0, 1.8, 1.8, False),  # inside, negative advantage
]


def test_ppo_clip_hand_values_and_gradients() -> None:
    ratios, advs, losses, grads, clipped = zip(*PPO_CASES)
    new_lp, old_lp = logps_for(list(ratios))
    adv = torch.tensor([advs])
    loss, stats = ppo_clip_loss(new_lp, old_lp, adv, torch.ones_like(adv), clip_low=0.2)
    torch.testing.assert_close(loss, torch.tensor([losses]))
    loss.sum().backward()
    torch.testing.assert_close(new_lp.grad, torch.tensor([grads]))
    assert stats["clip_fraction"].item() == pytest.approx(sum(clipped) / len(clipped))
    assert stats["ratio_mean"].item() == pytest.approx(sum(ratios) / len(ratios))
    k3 = [r - 1 - math.log(r) for r in ratios]  # Schulman 2020 k3 of KL(old || new), r = new / old
    assert stats["approx_kl"].item() == pytest.approx(sum(k3) / len(k3))
    assert not any(v.requires_grad for v in stats.values())


def test_ppo_clip_at_ratio_one_is_policy_gradient() -> None:
    # on-policy (first epoch): loss = -A, gradient = -A, nothing clipped, approx_kl = 0
    new_lp, old_lp = logps_for([1.0, 1.0, 1.0])
    adv = torch.tensor([[0.3, -2.0, 1.0]])
    loss, stats = ppo_clip_loss(new_lp, old_lp, adv, torch.ones_like(adv))
    loss.sum().backward()
    torch.testing.assert_close(loss, -adv)
    torch.testing.assert_close(new_lp.grad, -adv)
    assert stats["clip_fraction"].item() == 0.0 and stats["approx_kl"].item() == pytest.approx(0.0, abs=1e-7)


def test_ppo_clip_higher_is_asymmetric() -> None:
    new_lp, old_lp = logps_for([1.25, 0.75])
    adv = torch.tensor([[1.0, -1.0]])
    mask = torch.ones_like(adv)
    sym, _ = ppo_clip_loss(new_lp, old_lp, adv, mask, clip_low=0.2)
    torch.testing.assert_close(sym, torch.tensor([[-1.2, 0.8]]))
    dapo, _ = ppo_clip_loss(new_lp, old_lp, adv, mask, clip_low=0.2, clip_high=0.28)  # DAPO clip-higher
    torch.testing.assert_close(dapo, torch.tensor([[-1.25, 0.8]]))  # upper bound moved, lower bound unchanged


def test_ppo_dual_clip_bounds_negative_advantages_only() -> None:
    new_lp, old_lp = logps_for([5.0, 5.0, 2.0])
    adv = torch.tensor([[-1.0, 1.0, -1.0]])
    loss, stats = ppo_clip_loss(new_lp, old_lp, adv, torch.ones_like(adv), clip_low=0.2, dual_clip=3.0)
    # A<0, r=5: max(5, 1.2) = 5 > 3|A| -> 3, no gradient; A>0, r=5: ordinary clip -1.2; A<0, r=2: 2 < 3 -> 2
    torch.testing.assert_close(loss, torch.tensor([[3.0, -1.2, 2.0]]))
    loss.sum().backward()
    torch.testing.assert_close(new_lp.grad, torch.tensor([[0.0, 0.0, 2.0]]))
    assert stats["dual_clip_fraction"].item() == pytest.approx(1 / 3)


def test_ppo_gradient_is_exactly_zero_at_masked_positions() -> None:
    g = torch.Generator().manual_seed(0)
    B, T = 3, 6
    mask = torch.tensor([[0, 0, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1], [0, 0, 0, 1, 0, 0]])  # prompt + padding
    old_lp = -torch.rand(B, T, generator=g) * 3
    new_lp = old_lp + 0.3 * torch.randn(B, T, generator=g)
    adv = torch.randn(B, T, generator=g)
    # garbage where the mask is 0: -inf logprobs, huge advantages; neither may reach the loss or the gradient
    new_lp[mask == 0] = float("-inf")
    old_lp[mask == 0] = 50.0
    adv[mask == 0] = 1e30
    new_lp.requires_grad_(True)
    loss, stats = ppo_clip_loss(new_lp, old_lp, adv, mask, clip_low=0.2, dual_clip=3.0)
    (loss.sum() / mask.sum()).backward()
    assert torch.isfinite(loss).all() and torch.isfinite(new_lp.grad).all()
    assert (loss[mask == 0] == 0).all()
    assert (new_lp.grad[mask == 0] == 0).all()
    assert (new_lp.grad[mask == 1] != 0).any()
    assert all(torch.isfinite(v) for v in stats.values())


def test_ppo_does_not_differentiate_through_old_logprobs_or_advantages() -> None:
    old_lp = torch.zeros(1, 2, requires_grad=True)
    adv = torch.ones(1, 2, requires_grad=True)
    new_lp = torch.zeros(1, 2, requires_grad=True)
    loss, _ = ppo_clip_loss(new_lp, old_lp, adv, torch.ones(1, 2))
    loss.sum().backward()
    assert old_lp.grad is None and adv.grad is None and new_lp.grad is not None


def test_ppo_argument_errors() -> None:
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="same"):
        ppo_clip_loss(x, x, torch.zeros(2, 4), torch.ones(2, 3))
    with pytest.raises(ValueError, match="clip_low"):
        ppo_clip_loss(x, x, x, torch.ones(2, 3), clip_low=1.5)
    with pytest.raises(ValueError, match="dual_clip"):
        ppo_clip_loss(x, x, x, torch.ones(2, 3), dual_clip=0.9)


def test_clipped_value_loss_hand_values_and_gradients() -> None:
    # clip 0.2; loss = 0.5 max((V-R)^2, (clip(V, V_old +- 0.2) - R)^2)
    values = torch.tensor([[1.0, 1.5, 1.5, 7.0]], requires_grad=True)
    old = torch.tensor([[0.9, 1.0, 1.0, 0.0]])
    returns = torch.tensor([[2.0, 2.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    loss = clipped_value_loss(values, old, returns, mask, clip=0.2)
    # inside the clip range: 0.5*1 = 0.5; moved too far toward R: clipped 1.2 -> 0.5*0.64; moved away: 0.5*2.25
    torch.testing.assert_close(loss, torch.tensor([[0.5, 0.32, 1.125, 0.0]]))
    loss.sum().backward()
    torch.testing.assert_close(values.grad, torch.tensor([[-1.0, 0.0, 1.5, 0.0]]))
    unclipped = clipped_value_loss(values.detach(), old, returns, mask, clip=None)
    torch.testing.assert_close(unclipped, torch.tensor([[0.5, 0.125, 1.125, 0.0]]))
    with pytest.raises(ValueError, match="value clip"):
        clipped_value_loss(values, old, returns, mask, clip=0.0)


def test_explained_variance() -> None:
    returns = torch.tensor([[1.0, 2.0, 3.0, 99.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    assert explained_variance(returns.clone(), returns, mask).item() == pytest.approx(1.0)
    assert explained_variance(torch.full_like(returns, 2.0), returns, mask).item() == pytest.approx(0.0)
    # V = [2, 2, 4]: R-V = [-1, 0, -1], var 2/9 -> 2/3
    assert explained_variance(torch.tensor([[2.0, 2.0, 4.0, 0.0]]), returns, mask).item() == pytest.approx(2 / 3)
    assert math.isnan(explained_variance(returns, torch.ones(1, 4), mask).item())


def test_value_loss_ignores_garbage_at_padding() -> None:
    values = torch.tensor([[0.1, float("inf")]], requires_grad=True)  # inside the clip range of V_old = 0
    loss = clipped_value_loss(
        values, torch.tensor([[0.0, float("nan")]]), torch.tensor([[1.0, 1e30]]), torch.tensor([[1, 0]])
    )
    torch.testing.assert_close(loss, torch.tensor([[0.405, 0.0]]))  # 0.5 * 0.9^2
    loss.sum().backward()
    torch.testing.assert_close(values.grad, torch.tensor([[-0.9, 0.0]]))
