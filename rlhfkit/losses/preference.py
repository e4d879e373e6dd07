"""Direct preference losses (DPO family, SLiC, SimPO, ORPO, KTO).

Inputs are sequence log-probabilities of shape (B,): `pi_*` from the policy, `ref_*` from the frozen reference,
summed over response tokens unless a function says "avg" (sum / number of response tokens). Every paired loss
returns (losses (B,), chosen_rewards (B,), rejected_rewards (B,)); rewards are detached diagnostics, β·(log π - log ref)
for reference-based losses (the DPO implicit reward) and the loss's own implicit reward for reference-free ones.
Notation: h = (π_w - ref_w) - (π_l - ref_l), the difference of chosen and rejected policy/reference log-ratios.
`PREFERENCE_LOSSES` in `rlhfkit.losses` maps names to the `uniform_*` wrappers at the bottom, which share one signature.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from rlhfkit.losses.reward import Scalar, tie_loss

__all__ = [
    "REFERENCE_FREE",
    "dpo_loss",
    "dpo_ties_loss",
    "hinge_loss",
    "ipo_loss",
    "kto_loss",
    "kto_reference_point",
    "orpo_loss",
    "robust_dpo_loss",
    "simpo_loss",
]

LossOutput = tuple[Tensor, Tensor, Tensor]

# Losses that need no reference model; a trainer can skip computing reference log-probs for them.
REFERENCE_FREE = frozenset({"simpo", "orpo"})


def _log_ratio_difference(pi_chosen: Tensor, pi_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor) -> Tensor:
    return (pi_chosen.float() - ref_chosen.float()) - (pi_rejected.float() - ref_rejected.float())  # h, (B,)


def _implicit_rewards(
    pi_chosen: Tensor, pi_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor, beta: float
) -> tuple[Tensor, Tensor]:
    # DPO implicit reward β log(π/ref) (Rafailov et al. 2023, eq. 5), for logging only.
    chosen = beta * (pi_chosen.float() - ref_chosen.float())
    rejected = beta * (pi_rejected.float() - ref_rejected.float())
    return chosen.detach(), rejected.detach()


def _check_smoothing(label_smoothing: float, upper: float) -> None:
    if not 0.0 <= label_smoothing < upper:
        raise ValueError(f"label_smoothing must be in [0, {upper}), got {label_smoothing}")


def dpo_loss(
    pi_chosen: Tensor,
    pi_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    beta: float,
    label_smoothing: float = 0.0,
) -> LossOutput:
    """DPO, Rafailov et al. 2023 eq. 7: -log σ(β h). Inputs (B,) summed log-probs.

    label_smoothing ε > 0 is conservative DPO (Mitchell 2023): the label is assumed flipped with probability ε,
    loss = -(1-ε) log σ(β h) - ε log σ(-β h).
    """
    _check_smoothing(label_smoothing, 0.5 + 1e-12)  # ε = 0.5 is allowed (the loss becomes flat in expectation)
    logits = beta * _log_ratio_difference(pi_chosen, pi_rejected, ref_chosen, ref_rejected)  # (B,)
    losses = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return (losses, *_implicit_rewards(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta))


def dpo_ties_loss(
    pi_chosen: Tensor,
    pi_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    tie: Tensor,
    beta: float,
    tie_model: str = "davidson",
    tie_param: Scalar = 1.0,
) -> LossOutput:
    """DPO with ties, Chen et al. 2024 ("On Extending Direct Preference Optimization to Accommodate Ties"): DPO-D
    (tie_model "davidson", tie_param = ν >= 0) and DPO-RK ("rao-kupper", tie_param = θ > 1).

    The Bradley–Terry likelihood of DPO is replaced by the tie model of the reward losses (``reward.tie_loss``, same
    parameterization), applied to the DPO implicit reward difference d = β h (Rafailov et al. 2023 eq. 5):
    non-tie rows (chosen preferred) -log P(w≻l; β h), tie rows -log P(tie; β h), which is largest at h = 0, so
    ties pull the margin toward 0. Davidson ν = 0 with no ties is plain DPO; ν = 0 gives tie rows an infinite loss.
    Inputs (B,) summed log-probs; tie (B,) bool. Returns (losses (B,), chosen_rewards, rejected_rewards) like
    ``dpo_loss``; on tie rows "chosen" / "rejected" are just the two responses (the tie term is symmetric).
    """
    chosen = beta * (pi_chosen.float() - ref_chosen.float())  # (B,) implicit rewards β log π/ref
    rejected = beta * (pi_rejected.float() - ref_rejected.float())
    losses = tie_loss(chosen, rejected, tie, model=tie_model, param=tie_param)  # d = chosen - rejected = β h
    return losses, chosen.detach(), rejected.detach()


def robust_dpo_loss(
    pi_chosen: Tensor,
    pi_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    beta: float,
    label_smoothing: float = 0.0,
) -> LossOutput:
    """rDPO, Chowdhury et al. 2024 ("Provably Robust DPO"): unbiased DPO loss under labels flipped with known probability ε < 1/2.

    loss = ((1-ε)·(-log σ(β h)) - ε·(-log σ(-β h))) / (1 - 2ε). ε = label_smoothing; ε = 0 is plain DPO.
    """
    _check_smoothing(label_smoothing, 0.5)
    eps = label_smoothing
    logits = beta * _log_ratio_difference(pi_chosen, pi_rejected, ref_chosen, ref_rejected)
    losses = (-(1 - eps) * F.logsigmoid(logits) + eps * F.logsigmoid(-logits)) / (1 - 2 * eps)
    return (losses, *_implicit_rewards(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta))


def ipo_loss(
    pi_chosen: Tensor,
    pi_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    beta: float,
) -> LossOutput:
    """IPO, Azar et al. 2023 eq. 17: (h - 1/(2β))², a squared loss that keeps h bounded even on deterministic labels.

    The log-probs are used as given: TRL and the paper's experiments pass per-token AVERAGED log-probs for IPO
    (sum / length); `uniform_ipo` does that averaging when lengths are passed. β here is the paper's τ.
    """
    if beta <= 0:
        raise ValueError(f"IPO needs beta > 0, got {beta}")
    h = _log_ratio_difference(pi_chosen, pi_rejected, ref_chosen, ref_rejected)
    losses = (h - 1 / (2 * beta)) ** 2
    return (losses, *_implicit_rewards(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta))


def hinge_loss(
    pi_chosen: Tensor,
    pi_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    beta: float,
) -> LossOutput:
    """SLiC-HF rank-calibration hinge, Zhao et al. 2023, on the reference-normalized margin (as TRL): relu(1 - β h)."""
    h = _log_ratio_difference(pi_chosen, pi_rejected, ref_chosen, ref_rejected)
    losses = torch.relu(1 - beta * h)
    return (losses, *_implicit_rewards(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta))


def simpo_loss(
    pi_chosen_avg: Tensor,
    pi_rejected_avg: Tensor,
    beta: float,
    gamma: float,
    label_smoothing: float = 0.0,
) -> LossOutput:
    """SimPO, Meng et al. 2024 eq. 6: -log σ(β·avg log π(y_w) - β·avg log π(y_l) - γ). No reference model.

    Inputs (B,) per-token AVERAGED policy log-probs; γ is the target reward margin. label_smoothing ε mixes in the
    flipped label as in conservative DPO. Rewards are the SimPO implicit reward β·avg log π (eq. 4).
    """
    _check_smoothing(label_smoothing, 0.5 + 1e-12)
    chosen = beta * pi_chosen_avg.float()
    rejected = beta * pi_rejected_avg.float()
    logits = chosen - rejected - gamma  # (B,)
    losses = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return losses, chosen.detach(), rejected.detach()


def _log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x < 0, accurate everywhere (Mächler 2012): expm1 near 0, log1p far from it."""
    x = x.clamp(max=-1e-7)  # avg log-prob 0 would mean probability 1 and infinite odds
    return torch.where(x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def orpo_loss(
    pi_chosen_avg: Tensor,
    pi_rejected_avg: Tensor,
    nll_chosen: Tensor | None = None,
    lam: float = 0.1,
) -> LossOutput:
    """ORPO, Hong et al. 2024 eq. 6-7: L_SFT - λ·log σ(log odds(y_w) - log odds(y_l)), odds(y) = P / (1 - P).

    Inputs (B,) per-token AVERAGED policy log-probs (P = exp(avg log-prob), as in the paper); no reference model.
    nll_chosen (B,): the SFT term; None = -pi_chosen_avg (the paper's length-normalized NLL of the chosen response).
    log(1 - P) is computed stably via log1p / expm1. Rewards are λ·avg log π (TRL's convention).
    """
    chosen = pi_chosen_avg.float()
    rejected = pi_rejected_avg.float()
    log_odds = (chosen - _log1mexp(chosen)) - (rejected - _log1mexp(rejected))  # (B,) eq. 7
    nll = -chosen if nll_chosen is None else nll_chosen.float()
    losses = nll - lam * F.logsigmoid(log_odds)
    return losses, (lam * chosen).detach(), (lam * rejected).detach()


def kto_reference_point(pi_kl_logps: Tensor, ref_kl_logps: Tensor) -> Tensor:
    """KTO reference point z0 = max(0, mean(log π - log ref)) over MISMATCHED (prompt, response) pairs (Ethayarajh et
    al. 2024 §4.1), detached. In data-parallel training, all-reduce the mean across processes before use."""
    return (pi_kl_logps.float() - ref_kl_logps.float()).mean().clamp(min=0).detach()


def kto_loss(
    pi_logps: Tensor,
    ref_logps: Tensor,
    label: Tensor,
    kl_ref_point: Tensor | float,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> LossOutput:
    """KTO, Ethayarajh et al. 2024 eq. 8, for UNPAIRED feedback.

    pi_logps, ref_logps: (B,) summed log-probs; label: (B,) bool, True = desirable. r = log π - log ref,
    z0 = kl_ref_point (detached, clamped >= 0; see `kto_reference_point`).
      desirable:   λ_D·(1 - σ(β(r - z0)))      undesirable: λ_U·(1 - σ(β(z0 - r)))
    Returns (losses (B,), chosen_rewards, rejected_rewards) where the rewards β·r are split by label
    (shapes (n_desirable,), (n_undesirable,)), as TRL does.
    """
    r = pi_logps.float() - ref_logps.float()  # (B,)
    z0 = torch.as_tensor(kl_ref_point, dtype=r.dtype, device=r.device).detach().clamp(min=0)
    label = label.to(device=r.device, dtype=torch.bool)
    if label.shape != r.shape:
        raise ValueError(f"label shape {tuple(label.shape)} does not match log-prob shape {tuple(r.shape)}")
    desirable = desirable_weight * (1 - torch.sigmoid(beta * (r - z0)))
    undesirable = undesirable_weight * (1 - torch.sigmoid(beta * (z0 - r)))
    losses = torch.where(label, desirable, undesirable)
    rewards = (beta * r).detach()
    return losses, rewards[label], rewards[~label]


# ----------------------------------------------------------------------------------------------------------------------
# uniform wrappers: one signature for every paired loss, so a trainer calls PREFERENCE_LOSSES[name](...) blindly.
# pi_* / ref_* are SUMMED log-probs (B,); chosen_len / rejected_len are response token counts (B,).


def _average(logps: Tensor, length: Tensor | None, loss: str, which: str) -> Tensor:
    if length is None:
        raise ValueError(f"{loss} averages log-probs over tokens: pass {which}_len (response token counts, shape (B,))")
    return logps.float() / length.float().clamp(min=1)


def _require_ref(name: str, ref_chosen: Tensor | None, ref_rejected: Tensor | None) -> tuple[Tensor, Tensor]:
    if ref_chosen is None or ref_rejected is None:
        raise ValueError(
            f"{name} needs reference log-probs (ref_chosen, ref_rejected); only {sorted(REFERENCE_FREE)} "
            "are reference-free"
        )
    return ref_chosen, ref_rejected


def uniform_dpo(
    pi_chosen: Tensor,
    pi_rejected: Tensor,
    ref_chosen: Tensor | None,
    ref_rejected: Tensor | None,
    *,
    beta: float,
    label_smoothing: float = 0.0,
    gamma: float = 0.0,
    chosen_len: Tensor | None = None,
    rejected_len: Tensor | None = None,
    nll_chosen: Tensor | None = None,
    lam: float = 0.1,
) -> LossOutput:
    """`dpo_loss` on summed log-probs; label_smoothing > 0 = conservative DPO."""
    ref_c, ref_r = _require_ref("dpo", ref_chosen, ref_rejected)
    return dpo_loss(pi_chosen, pi_rejected, ref_c, ref_r, beta, label_smoothing)


def uniform_robust(
    pi_chosen: Tensor,
    pi_rejected: Tensor,
    ref_chosen: Tensor | None,
    ref_rejected: Tensor | None,
    *,
    beta: float,
    label_smoothing: float = 0.0,
    gamma: float = 0.0,
    chosen_len: Tensor | None = None,
    rejected_len: Tensor | None = None,
    nll_chosen: Tensor | None = None,
    lam: float = 0.1,
) -> LossOutput:
    """`robust_dpo_loss` on summed log-probs; label_smoothing = assumed flip rate ε."""
    ref_c, ref_r = _require_ref("robust", ref_chosen, ref_rejected)
    return robust_dpo_loss(pi_chosen, pi_rejected, ref_c, ref_r, beta, label_smoothing)


def uniform_ipo(
    pi_chosen: Tensor,
    pi_rejected: Tensor,
    ref_chosen: Tensor | None,
    ref_rejected: Tensor | None,
    *,
    beta: float,
    label_smoothing: float = 0.0,
    gamma: float = 0.0,
    chosen_len: Tensor | None = None,
    rejected_len: Tensor | None = None,
    nll_chosen: Tensor | None = None,
    lam: float = 0.1,
) -> LossOutput:
    """`ipo_loss`; with lengths, policy and reference log-probs are averaged per token first (as TRL does)."""
    ref_c, ref_r = _require_ref("ipo", ref_chosen, ref_rejected)
    if chosen_len is not None or rejected_len is not None:
        pi_chosen, ref_c = (_average(x, chosen_len, "ipo", "chosen") for x in (pi_chosen, ref_c))
        pi_rejected, ref_r = (_average(x, rejected_len, "ipo", "rejected") for x in (pi_rejected, ref_r))
    return ipo_loss(pi_chosen, pi_rejected, ref_c, ref_r, beta)


def uniform_hinge(
    pi_chosen: Tensor,
    pi_rejected: Tensor,
    ref_chosen: Tensor | None,
    ref_rejected: Tensor | None,
    *,
    beta: float,
    label_smoothing: float = 0.0,
    gamma: float = 0.0,
    chosen_len: Tensor | None = None,
    rejected_len: Tensor | None = None,
    nll_chosen: Tensor | None = None,
    lam: float = 0.1,
) -> LossOutput:
    """`hinge_loss` (SLiC) on summed log-probs."""
    ref_c, ref_r = _require_ref("hinge", ref_chosen, ref_rejected)
    return hinge_loss(pi_chosen, pi_rejected, ref_c, ref_r, beta)


def uniform_simpo(
    pi_chosen: Tensor,
    pi_rejected: Tensor,
    ref_chosen: Tensor | None,
    ref_rejected: Tensor | None,
    *,
    beta: float,
    label_smoothing: float = 0.0,
    gamma: float = 0.0,
    chosen_len: Tensor | None = None,
    rejected_len: Tensor | None = None,
    nll_chosen: Tensor | None = None,
    lam: float = 0.1,
) -> LossOutput:
    """`simpo_loss` on summed log-probs divided by chosen_len / rejected_len (required); ref_* are ignored."""
    avg_c = _average(pi_chosen, chosen_len, "simpo", "chosen")
    avg_r = _average(pi_rejected, rejected_len, "simpo", "rejected")
    return simpo_loss(avg_c, avg_r, beta, gamma, label_smoothing)


def uniform_orpo(
    pi_chosen: Tensor,
    pi_rejected: Tensor,
    ref_chosen: Tensor | None,
    ref_rejected: Tensor | None,
    *,
    beta: float,
    label_smoothing: float = 0.0,
    gamma: float = 0.0,
    chosen_len: Tensor | None = None,
    rejected_len: Tensor | None = None,
    nll_chosen: Tensor | None = None,
    lam: float = 0.1,
) -> LossOutput:
    """`orpo_loss` on summed log-probs divided by chosen_len / rejected_len (required); λ = lam, β and ref_* unused.

    nll_chosen None = the length-normalized NLL of the chosen response, -pi_chosen / chosen_len.
    """
    avg_c = _average(pi_chosen, chosen_len, "orpo", "chosen")
    avg_r = _average(pi_rejected, rejected_len, "orpo", "rejected")
    return orpo_loss(avg_c, avg_r, nll_chosen, lam)
