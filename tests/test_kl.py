"""KL controllers against their closed form; KL penalty estimators and reward shaping by hand."""

from __future__ import annotations

import math

import pytest
import torch

from rlhfkit.kl import (
    LOSS_KL_ESTIMATORS,
    AdaptiveKLController,
    FixedKLController,
    kl_loss_term,
    last_valid_index,
    make_kl_controller,
    per_token_kl_penalty,
    shape_rewards,
)
from rlhfkit.ops import kl_estimate


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


# ----------------------------------------------------------------------------------------------------------------------
# KL in the loss: the EXACT expected gradient over a small softmax, sum_a pi(a) grad term(a), against grad KL(pi || ref)


def _exact_softmax(seed: int, vocab: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.nn.Parameter(torch.randn(vocab, generator=g, dtype=torch.float64))
    ref_logp = torch.log_softmax(torch.randn(vocab, generator=g, dtype=torch.float64) * 2, dim=0)
    return logits, ref_logp


def _expected_loss_gradient(term_fn, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(E_{a~pi}[grad term(log pi(a))], grad KL(pi || ref)) w.r.t. the logits, both exact (every token weighted)."""
    logits, ref_logp = _exact_softmax(seed)
    logp = torch.log_softmax(logits, dim=0)  # (V,): every token is a "sample", weighted by its probability below
    (logp.exp().detach() * term_fn(logp, ref_logp)).sum().backward()
    expected = logits.grad.clone()
    logits.grad = None
    logp = torch.log_softmax(logits, dim=0)
    (logp.exp() * (logp - ref_logp)).sum().backward()  # KL(pi || ref) = sum pi (log pi - log ref)
    return expected, logits.grad.clone()


@pytest.mark.parametrize("estimator", ["k2", "k3"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kl_loss_term_expected_gradient_is_grad_of_kl_pi_ref(estimator: str, seed: int) -> None:
    expected, exact = _expected_loss_gradient(lambda lp, ref: kl_loss_term(lp, ref, estimator), seed)
    torch.testing.assert_close(expected, exact, atol=1e-6, rtol=1e-6)
    assert exact.abs().max() > 1e-2  # a non-trivial case


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_old_k3_and_k1_in_the_loss_have_the_wrong_gradient(seed: int) -> None:
    # what the loss used before: ops.kl_estimate differentiated directly. k3 follows grad KL(ref || pi), k1 gives 0.
    k3_grad, exact = _expected_loss_gradient(lambda lp, ref: kl_estimate(lp, ref, "k3"), seed)
    assert (k3_grad - exact).abs().max() > 1e-2
    logits, ref_logp = _exact_softmax(seed)
    logp = torch.log_softmax(logits, dim=0)
    (-(ref_logp.exp() * logp).sum()).backward()  # grad KL(ref || pi) = grad of the cross-entropy -sum ref log pi
    torch.testing.assert_close(k3_grad, logits.grad, atol=1e-6, rtol=1e-6)
    k1_grad, _ = _expected_loss_gradient(lambda lp, ref: kl_estimate(lp, ref, "k1"), seed)
    torch.testing.assert_close(k1_grad, torch.zeros_like(k1_grad), atol=1e-12, rtol=0)


def test_kl_loss_term_values_k1_rejected_and_unknown() -> None:
    logp = torch.tensor([[-1.0, -2.0, -0.5]])
    ref = torch.tensor([[-1.5, -1.0, -0.5]])  # log ratio [0.5, -1, 0]
    torch.testing.assert_close(kl_loss_term(logp, ref, "k2"), torch.tensor([[0.125, 0.5, 0.0]]))
    # the k3 VALUE is logged: (r - 1) - log r with log r = -log ratio
    torch.testing.assert_close(kl_loss_term(logp, ref, "k3"), torch.tensor([[math.exp(-0.5) - 0.5, math.e - 2.0, 0.0]]))
    with pytest.raises(ValueError, match="zero expected gradient.*k2.*k3"):
        kl_loss_term(logp, ref, "k1")
    with pytest.raises(ValueError, match="unknown KL estimator"):
        kl_loss_term(logp, ref, "k4")
    assert LOSS_KL_ESTIMATORS == ("k2", "k3")


def test_kl_loss_term_k3_gradient_is_log_ratio() -> None:
    logp = torch.tensor([-1.0, -2.0, -0.5], requires_grad=True)
    ref = torch.tensor([-1.5, -1.0, -0.5], requires_grad=True)
    kl_loss_term(logp, ref, "k3").sum().backward()
    torch.testing.assert_close(logp.grad, torch.tensor([0.5, -1.0, 0.0]))  # d k2 / d log pi = log pi - log ref
    assert ref.grad is None  # the reference is a constant


def test_kl_loss_term_log_ratio_clip_and_mask() -> None:
    logp = torch.tensor([[-1.0, -30.0, float("-inf")]], requires_grad=True)
    ref = torch.tensor([[-1.0, -0.1, -2.0]])
    mask = torch.tensor([[1, 1, 0]])
    out = kl_loss_term(logp, ref, "k3", log_ratio_clip=10.0, mask=mask)
    # log ratio -29.9 clamped to -10: k3 value e^10 - 1 - 10 (unclipped it would be e^29.9 - 1 - 29.9)
    torch.testing.assert_close(out, torch.tensor([[0.0, math.exp(10.0) - 11.0, 0.0]]))
    out.sum().backward()
    assert torch.isfinite(logp.grad).all()
    assert logp.grad[0, 1] == 0 and logp.grad[0, 2] == 0  # clamped: no gradient; masked: no gradient
    k2 = kl_loss_term(torch.tensor([0.0]), torch.tensor([-30.0]), "k2", log_ratio_clip=10.0)
    torch.testing.assert_close(k2, torch.tensor([50.0]))
    with pytest.raises(ValueError, match="log_ratio_clip"):
        kl_loss_term(torch.zeros(1), torch.zeros(1), "k3", log_ratio_clip=-1.0)
