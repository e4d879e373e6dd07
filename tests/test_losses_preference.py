"""rlhfkit.losses.preference: every loss against hand arithmetic, the uniform table, gradients, errors."""

from __future__ import annotations

import math

import pytest
import torch

from rlhfkit.losses import PREFERENCE_LOSSES, REFERENCE_FREE
from rlhfkit.losses.preference import (
    dpo_loss,
    dpo_ties_loss,
    hinge_loss,
    ipo_loss,
    kto_loss,
    kto_reference_point,
    orpo_loss,
    robust_dpo_loss,
    simpo_loss,
)


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


# Two pairs of summed log-probs; h = (π_w - ref_w) - (π_l - ref_l):
# pair 0: (-10 + 11) - (-12 + 11.5) = 1 + 0.5 = 1.5;  pair 1: (-21 + 20.5) - (-19 + 18) = -0.5 + 1 = 0.5
PI_C = torch.tensor([-10.0, -21.0])
PI_R = torch.tensor([-12.0, -19.0])
REF_C = torch.tensor([-11.0, -20.5])
REF_R = torch.tensor([-11.5, -18.0])
H2 = [1.5, 0.5]
ARGS = (PI_C, PI_R, REF_C, REF_R)


def test_dpo_hand_values_and_rewards() -> None:
    beta = 0.1
    losses, rc, rr = dpo_loss(*ARGS, beta=beta)
    assert losses.tolist() == pytest.approx([-math.log(sig(beta * h)) for h in H2], rel=1e-6)
    assert rc.tolist() == pytest.approx([0.1 * 1.0, 0.1 * -0.5], rel=1e-6)
    assert rr.tolist() == pytest.approx([0.1 * -0.5, 0.1 * -1.0], rel=1e-6)
    assert not rc.requires_grad and not rr.requires_grad


def test_conservative_dpo_hand_values() -> None:
    beta, eps = 0.5, 0.2
    losses, _, _ = dpo_loss(*ARGS, beta=beta, label_smoothing=eps)
    expected = [-(1 - eps) * math.log(sig(beta * h)) - eps * math.log(sig(-beta * h)) for h in H2]
    assert losses.tolist() == pytest.approx(expected, rel=1e-6)


def test_robust_dpo_hand_values_and_reduces_to_dpo() -> None:
    beta, eps = 0.5, 0.2
    losses, _, _ = robust_dpo_loss(*ARGS, beta=beta, label_smoothing=eps)
    expected = [((1 - eps) * -math.log(sig(beta * h)) - eps * -math.log(sig(-beta * h))) / (1 - 2 * eps) for h in H2]
    assert losses.tolist() == pytest.approx(expected, rel=1e-6)
    torch.testing.assert_close(robust_dpo_loss(*ARGS, beta=beta)[0], dpo_loss(*ARGS, beta=beta)[0])
    with pytest.raises(ValueError, match="label_smoothing"):
        robust_dpo_loss(*ARGS, beta=beta, label_smoothing=0.5)


def test_ipo_hand_values() -> None:
    beta = 0.25  # target margin 1/(2β) = 2
    losses, _, _ = ipo_loss(*ARGS, beta=beta)
    assert losses.tolist() == pytest.approx([(1.5 - 2) ** 2, (0.5 - 2) ** 2], rel=1e-6)


def test_hinge_hand_values() -> None:
    losses, _, _ = hinge_loss(*ARGS, beta=1.0)
    assert losses.tolist() == pytest.approx([0.0, 0.5])  # relu(1 - 1.5), relu(1 - 0.5)


def test_simpo_hand_values() -> None:
    avg_c = torch.tensor([-0.5, -1.2])
    avg_r = torch.tensor([-0.9, -1.0])
    beta, gamma = 2.0, 0.5
    losses, rc, rr = simpo_loss(avg_c, avg_r, beta=beta, gamma=gamma)
    # logits = β(avg_w - avg_l) - γ = 2(0.4) - 0.5 = 0.3 and 2(-0.2) - 0.5 = -0.9
    assert losses.tolist() == pytest.approx([-math.log(sig(0.3)), -math.log(sig(-0.9))], rel=1e-6)
    assert rc.tolist() == pytest.approx([-1.0, -2.4]) and rr.tolist() == pytest.approx([-1.8, -2.0])
    smoothed, _, _ = simpo_loss(avg_c, avg_r, beta=beta, gamma=gamma, label_smoothing=0.1)
    assert smoothed[0].item() == pytest.approx(-0.9 * math.log(sig(0.3)) - 0.1 * math.log(sig(-0.3)), rel=1e-6)


def test_orpo_hand_values() -> None:
    avg_c = torch.tensor([-0.5, -2.0], dtype=torch.float64)
    avg_r = torch.tensor([-1.0, -0.01], dtype=torch.float64)
    lam = 0.1

    def log_odds(x: float) -> float:
        p = math.exp(x)
        return math.log(p / (1 - p))

    losses, rc, _ = orpo_loss(avg_c, avg_r, None, lam)
    expected = [
        0.5 - lam * math.log(sig(log_odds(-0.5) - log_odds(-1.0))),
        2.0 - lam * math.log(sig(log_odds(-2.0) - log_odds(-0.01))),
    ]
    assert losses.tolist() == pytest.approx(expected, rel=1e-6)
    assert rc.tolist() == pytest.approx([-0.05, -0.2])
    with_nll, _, _ = orpo_loss(avg_c, avg_r, torch.tensor([3.0, 4.0]), lam)
    assert (with_nll - losses).tolist() == pytest.approx([2.5, 2.0], rel=1e-6)


def test_orpo_stable_near_probability_one() -> None:
    avg_c = torch.tensor([-1e-9, -1e-4, -50.0], requires_grad=True)
    avg_r = torch.tensor([-3.0, -3.0, -60.0])
    losses, _, _ = orpo_loss(avg_c, avg_r, None, 1.0)
    losses.sum().backward()
    assert torch.isfinite(losses).all() and torch.isfinite(avg_c.grad).all()


def test_kto_hand_values() -> None:
    pi = torch.tensor([-5.0, -6.0, -7.0])
    ref = torch.tensor([-6.0, -5.5, -7.0])  # r = [1, -0.5, 0]
    label = torch.tensor([True, False, True])
    beta, z0 = 0.5, torch.tensor(0.2)
    losses, chosen, rejected = kto_loss(pi, ref, label, z0, beta, desirable_weight=1.0, undesirable_weight=2.0)
    expected = [1 - sig(0.5 * (1 - 0.2)), 2 * (1 - sig(0.5 * (0.2 + 0.5))), 1 - sig(0.5 * (0 - 0.2))]
    assert losses.tolist() == pytest.approx(expected, rel=1e-6)
    assert chosen.tolist() == pytest.approx([0.5, 0.0]) and rejected.tolist() == pytest.approx([-0.25])
    # a negative reference point is clamped to 0
    clamped, _, _ = kto_loss(pi, ref, label, torch.tensor(-3.0), beta)
    assert clamped[0].item() == pytest.approx(1 - sig(0.5), rel=1e-6)


def test_kto_reference_point_detached_and_clamped() -> None:
    pi = torch.tensor([-1.0, -2.0], requires_grad=True)
    z0 = kto_reference_point(pi, torch.tensor([-2.0, -2.0]))
    assert z0.item() == pytest.approx(0.5) and not z0.requires_grad
    assert kto_reference_point(torch.tensor([-3.0]), torch.tensor([-1.0])).item() == 0.0


@pytest.mark.parametrize("name", ["dpo", "robust", "ipo", "hinge"])
def test_gradient_sign_raising_chosen_lowers_loss(name: str) -> None:
    pi_c = PI_C.clone().requires_grad_(True)
    pi_r = PI_R.clone().requires_grad_(True)
    losses, _, _ = PREFERENCE_LOSSES[name](pi_c, pi_r, REF_C, REF_R, beta=0.1, label_smoothing=0.1)
    losses.sum().backward()
    assert torch.all(pi_c.grad < 0) and torch.all(pi_r.grad > 0)


def test_dpo_gradient_hand_value() -> None:
    # d/dπ_w of -log σ(β h) = -β (1 - σ(β h))
    pi_c = PI_C.clone().requires_grad_(True)
    dpo_loss(pi_c, PI_R, REF_C, REF_R, beta=0.1)[0].sum().backward()
    assert pi_c.grad.tolist() == pytest.approx([-0.1 * (1 - sig(0.1 * h)) for h in H2], rel=1e-6)


def test_uniform_table_matches_direct_calls() -> None:
    clen, rlen = torch.tensor([4.0, 5.0]), torch.tensor([2.0, 10.0])
    kw = dict(beta=0.2, chosen_len=clen, rejected_len=rlen)
    torch.testing.assert_close(PREFERENCE_LOSSES["dpo"](*ARGS, **kw)[0], dpo_loss(*ARGS, beta=0.2)[0])
    torch.testing.assert_close(PREFERENCE_LOSSES["hinge"](*ARGS, **kw)[0], hinge_loss(*ARGS, beta=0.2)[0])
    # IPO averages policy and reference log-probs per token when lengths are given (TRL's convention)
    averaged = (PI_C / clen, PI_R / rlen, REF_C / clen, REF_R / rlen)
    torch.testing.assert_close(PREFERENCE_LOSSES["ipo"](*ARGS, **kw)[0], ipo_loss(*averaged, beta=0.2)[0])
    torch.testing.assert_close(PREFERENCE_LOSSES["ipo"](*ARGS, beta=0.2)[0], ipo_loss(*ARGS, beta=0.2)[0])
    # reference-free losses take ref_* = None and average with the lengths
    simpo = PREFERENCE_LOSSES["simpo"](PI_C, PI_R, None, None, beta=2.0, gamma=0.3, chosen_len=clen, rejected_len=rlen)
    torch.testing.assert_close(simpo[0], simpo_loss(PI_C / clen, PI_R / rlen, 2.0, 0.3)[0])
    orpo = PREFERENCE_LOSSES["orpo"](PI_C, PI_R, None, None, beta=0.0, lam=0.3, chosen_len=clen, rejected_len=rlen)
    torch.testing.assert_close(orpo[0], orpo_loss(PI_C / clen, PI_R / rlen, None, 0.3)[0])
    assert REFERENCE_FREE == {"simpo", "orpo"}
    assert set(PREFERENCE_LOSSES) == {"dpo", "ipo", "robust", "hinge", "simpo", "orpo"}


def test_uniform_table_errors_name_the_missing_input() -> None:
    with pytest.raises(ValueError, match="chosen_len"):
        PREFERENCE_LOSSES["simpo"](PI_C, PI_R, None, None, beta=2.0)
    with pytest.raises(ValueError, match="reference log-probs"):
        PREFERENCE_LOSSES["dpo"](PI_C, PI_R, None, None, beta=0.1)


def test_bf16_inputs_give_fp32_losses() -> None:
    losses, rc, _ = dpo_loss(*(x.bfloat16() for x in ARGS), beta=0.1)
    assert losses.dtype == torch.float32 and rc.dtype == torch.float32


# ----------------------------------------------------------------------------------------------------------------------
# DPO with ties (Chen et al. 2024): d = β h under the reward model's Davidson / Rao–Kupper likelihood


def test_dpo_ties_davidson_hand_values() -> None:
    tie = torch.tensor([False, True])  # pair 0 (h = 1.5) preferred, pair 1 (h = 0.5) a tie
    losses, rc, rr = dpo_ties_loss(*ARGS, tie, beta=1.0, tie_model="davidson", tie_param=1.0)
    # ν = 1, d = 1.5: P(w≻l) = e^{0.75} / (e^{0.75} + e^{-0.75} + 1); d = 0.5: P(tie) = 1 / (e^{0.25} + e^{-0.25} + 1)
    row0 = -math.log(math.exp(0.75) / (math.exp(0.75) + math.exp(-0.75) + 1))
    row1 = math.log(math.exp(0.25) + math.exp(-0.25) + 1)
    assert losses.tolist() == pytest.approx([row0, row1], rel=1e-6)
    torch.testing.assert_close(rc, dpo_loss(*ARGS, beta=1.0)[1])  # the same implicit-reward diagnostics as DPO
    torch.testing.assert_close(rr, dpo_loss(*ARGS, beta=1.0)[2])
    assert not rc.requires_grad and not rr.requires_grad


def test_dpo_ties_rao_kupper_hand_values() -> None:
    tie = torch.tensor([False, True])
    beta = 0.5  # d = β h = 0.75 and 0.25
    losses, _, _ = dpo_ties_loss(*ARGS, tie, beta=beta, tie_model="rao-kupper", tie_param=2.0)
    # θ = 2: P(w≻l) = σ(d - log 2) = 1 / (1 + 2 e^{-d}); P(tie) = (θ² - 1) σ(d - log 2) σ(-d - log 2)
    row0 = math.log(1 + 2 * math.exp(-0.75))
    row1 = -math.log(3 / ((1 + 2 * math.exp(-0.25)) * (1 + 2 * math.exp(0.25))))
    assert losses.tolist() == pytest.approx([row0, row1], rel=1e-6)


def test_dpo_ties_without_ties_and_nu_zero_is_dpo() -> None:
    no_tie = torch.zeros(2, dtype=torch.bool)
    for beta in (0.1, 1.0, 3.0):
        torch.testing.assert_close(
            dpo_ties_loss(*ARGS, no_tie, beta=beta, tie_model="davidson", tie_param=0.0)[0],
            dpo_loss(*ARGS, beta=beta)[0],
        )


@pytest.mark.parametrize(("model", "param"), [("davidson", 1.0), ("davidson", 0.2), ("rao-kupper", 1.5)])
def test_dpo_ties_gradient_on_a_tie_pulls_the_margin_to_zero(model: str, param: float) -> None:
    # pair 0 has h = 1.5 > 0, pair 1 (swapped) has h = -1.5 < 0; both are ties
    pi_c = torch.tensor([-10.0, -12.0], requires_grad=True)
    pi_r = torch.tensor([-12.0, -10.0], requires_grad=True)
    ref_c, ref_r = torch.tensor([-11.0, -11.5]), torch.tensor([-11.5, -11.0])
    tie = torch.ones(2, dtype=torch.bool)
    losses, _, _ = dpo_ties_loss(pi_c, pi_r, ref_c, ref_r, tie, beta=0.5, tie_model=model, tie_param=param)
    losses.sum().backward()
    # gradient descent moves π_c by -grad: down where h > 0, up where h < 0; π_r the other way
    assert pi_c.grad[0] > 0 and pi_r.grad[0] < 0
    assert pi_c.grad[1] < 0 and pi_r.grad[1] > 0
    # the same pair, not a tie: the usual DPO direction (raise chosen, lower rejected)
    pi_c.grad = pi_r.grad = None
    dpo_ties_loss(pi_c, pi_r, ref_c, ref_r, ~tie, beta=0.5, tie_model=model, tie_param=param)[0].sum().backward()
    assert torch.all(pi_c.grad < 0) and torch.all(pi_r.grad > 0)


def test_dpo_ties_errors() -> None:
    with pytest.raises(ValueError, match="tie shape"):
        dpo_ties_loss(*ARGS, torch.zeros(3, dtype=torch.bool), beta=0.1)
    with pytest.raises(ValueError, match="θ must be > 1"):
        dpo_ties_loss(*ARGS, torch.zeros(2, dtype=torch.bool), beta=0.1, tie_model="rao-kupper", tie_param=1.0)
