"""Reward-model losses: Bradley–Terry with margins and confidence weights, and two likelihoods that model ties.

All take per-pair scalar rewards r_chosen, r_rejected of shape (B,) and return per-pair losses (B,) fp32; reduce them
with `aggregation.aggregate(losses, None, "token-mean")` or a plain mean.
Notation: d = r_a - r_b, p = exp(r) (the "worth" of a response), σ = logistic sigmoid.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "TIE_MODELS",
    "bradley_terry_loss",
    "davidson_log_probs",
    "multi_head_reward_loss",
    "process_reward_loss",
    "rao_kupper_log_probs",
    "reward_loss",
    "tie_log_probs",
    "tie_loss",
    "win_log_probability_given_no_tie",
    "win_probability_given_no_tie",
]

Scalar = float | Tensor


def _difference(r_a: Tensor, r_b: Tensor) -> Tensor:
    if r_a.shape != r_b.shape:
        raise ValueError(f"reward shapes differ: {tuple(r_a.shape)} vs {tuple(r_b.shape)}")
    return r_a.float() - r_b.float()  # fp32 even for bf16 reward heads


def bradley_terry_loss(
    r_chosen: Tensor, r_rejected: Tensor, margin: Scalar | None = None, weight: Scalar | None = None
) -> Tensor:
    """Bradley & Terry 1952 pairwise NLL: -log σ(r_w - r_l - m) (Ouyang et al. 2022 eq. 1; margin m: Llama 2 §3.2.2).

    r_chosen, r_rejected: (B,). margin: float or (B,), e.g. larger for "significantly better" pairs.
    weight: float or (B,) per-pair confidence that multiplies the pair's loss. Returns (B,) fp32.
    """
    d = _difference(r_chosen, r_rejected)
    if margin is not None:
        d = d - margin
    loss = -F.logsigmoid(d)  # (B,)
    return loss if weight is None else loss * weight


# ----------------------------------------------------------------------------------------------------------------------
# ties


def _param(param: Scalar, like: Tensor) -> Tensor:
    return torch.as_tensor(param, dtype=like.dtype, device=like.device)


def davidson_log_probs(d: Tensor, nu: Scalar = 1.0) -> tuple[Tensor, Tensor, Tensor]:
    """Davidson 1970: log P(a≻b), log P(b≻a), log P(tie) for d = r_a - r_b, with ν >= 0.

    P(a≻b) = p_a / (p_a + p_b + ν√(p_a p_b)),  P(tie) = ν√(p_a p_b) / (same denominator).
    Dividing through by √(p_a p_b): denominator = e^{d/2} + e^{-d/2} + ν, computed with logsumexp.
    ν = 0 is Bradley–Terry exactly (no ties possible).
    """
    if isinstance(nu, (int, float)) and not nu >= 0:
        raise ValueError(f"Davidson ν must be >= 0, got {nu}")
    half = d / 2
    log_nu = torch.log(_param(nu, d)).expand_as(d)  # log 0 = -inf is fine inside logsumexp
    log_denom = torch.logsumexp(torch.stack([half, -half, log_nu]), dim=0)
    return half - log_denom, -half - log_denom, log_nu - log_denom


def rao_kupper_log_probs(d: Tensor, theta: Scalar = 2.0) -> tuple[Tensor, Tensor, Tensor]:
    """Rao & Kupper 1967: log P(a≻b), log P(b≻a), log P(tie) for d = r_a - r_b, with θ > 1.

    P(a≻b) = p_a / (p_a + θ p_b) = σ(d - log θ),
    P(tie) = (θ² - 1) p_a p_b / ((p_a + θ p_b)(p_b + θ p_a)) = (θ² - 1) σ(d - log θ) σ(-d - log θ).
    θ → 1 recovers Bradley–Terry (P(tie) → 0).
    """
    if isinstance(theta, (int, float)) and not theta > 1:
        raise ValueError(f"Rao–Kupper θ must be > 1 (θ = 1 allows no ties), got {theta}")
    theta_t = _param(theta, d)
    log_theta = torch.log(theta_t)
    log_win = -F.softplus(log_theta - d)  # log σ(d - log θ)
    log_loss = -F.softplus(log_theta + d)  # log σ(-d - log θ)
    log_theta_sq_m1 = torch.log(theta_t - 1) + torch.log1p(theta_t)  # log(θ² - 1) without cancellation near θ = 1
    return log_win, log_loss, log_theta_sq_m1 + log_win + log_loss


TIE_MODELS: dict[str, Callable[[Tensor, Scalar], tuple[Tensor, Tensor, Tensor]]] = {
    "davidson": davidson_log_probs,
    "rao-kupper": rao_kupper_log_probs,
}


def _tie_model(model: str) -> Callable[[Tensor, Scalar], tuple[Tensor, Tensor, Tensor]]:
    try:
        return TIE_MODELS[model]
    except KeyError:
        raise ValueError(f"unknown tie model {model!r}; valid: {sorted(TIE_MODELS)}") from None


def win_log_probability_given_no_tie(
    d: Tensor, tie_model: str = "bradley-terry", tie_param: Scalar | None = None
) -> Tensor:
    """log P(a≻b | not a tie) = log P(a≻b) - log(P(a≻b) + P(b≻a)) for d = r_a - r_b, same shape as d.

    tie_model "bradley-terry" (no ties): log σ(d). "davidson": also log σ(d) for every ν (the tie term cancels).
    "rao-kupper" (tie_param = θ > 1, required): log[σ(d - log θ) / (σ(d - log θ) + σ(-d - log θ))], which is
    NOT σ(d): the calibration of a Rao–Kupper reward model must use this.
    """
    if tie_model == "bradley-terry":
        return F.logsigmoid(d)
    if tie_model not in TIE_MODELS:
        raise ValueError(f"unknown tie model {tie_model!r}; valid: {['bradley-terry', *sorted(TIE_MODELS)]}")
    if tie_param is None:
        if tie_model == "rao-kupper":
            raise ValueError(
                "the Rao–Kupper model needs tie_param = θ > 1, the value the reward model was trained with"
            )
        tie_param = 1.0  # Davidson: P(a≻b | not a tie) does not depend on ν
    log_win, log_lose, _ = _tie_model(tie_model)(d, tie_param)
    return log_win - torch.logaddexp(log_win, log_lose)


def win_probability_given_no_tie(
    d: Tensor, tie_model: str = "bradley-terry", tie_param: Scalar | None = None
) -> Tensor:
    """P(a≻b | not a tie) for d = r_a - r_b; see `win_log_probability_given_no_tie`."""
    return win_log_probability_given_no_tie(d, tie_model, tie_param).exp()


def tie_log_probs(
    r_a: Tensor, r_b: Tensor, model: str = "davidson", param: Scalar = 1.0
) -> tuple[Tensor, Tensor, Tensor]:
    """(log P(a≻b), log P(b≻a), log P(tie)), each (B,), under `model` ("davidson": param = ν; "rao-kupper": θ)."""
    return _tie_model(model)(_difference(r_a, r_b), param)


def tie_loss(
    r_a: Tensor,
    r_b: Tensor,
    tie: Tensor,
    model: str = "davidson",
    param: Scalar = 1.0,
    margin: Scalar | None = None,
) -> Tensor:
    """Per-pair NLL under a tie-aware Bradley–Terry likelihood (Davidson 1970 or Rao & Kupper 1967).

    r_a, r_b: (B,) rewards, a = the preferred response on non-tie rows. tie: (B,) bool.
    Non-tie rows: -log P(a≻b) with d shifted by `margin` (float or (B,)); tie rows: -log P(tie) (symmetric in a, b).
    param: ν >= 0 for Davidson, θ > 1 for Rao–Kupper; a float or a learnable scalar tensor. Returns (B,) fp32.
    """
    d = _difference(r_a, r_b)
    tie = tie.to(device=d.device, dtype=torch.bool)
    if tie.shape != d.shape:
        raise ValueError(f"tie shape {tuple(tie.shape)} does not match rewards shape {tuple(d.shape)}")
    fn = _tie_model(model)
    if margin is not None:  # margins express "how much better", meaningless for ties
        d = d - torch.where(tie, torch.zeros_like(d), _param(margin, d).expand_as(d))
    log_win, _, log_tie = fn(d, param)
    return -torch.where(tie, log_tie, log_win)


def reward_loss(
    r_chosen: Tensor,
    r_rejected: Tensor,
    *,
    tie: Tensor | None = None,
    margin: Scalar | None = None,
    weight: Scalar | None = None,
    tie_model: str = "davidson",
    tie_param: Scalar = 1.0,
    magnitude_penalty: float = 0.0,
) -> Tensor:
    """The reward-model objective used by the trainer: per-pair losses (B,) fp32.

    tie None: Bradley–Terry with optional margin. tie (B,) bool: `tie_loss` under `tie_model` / `tie_param`
    (margins on non-tie rows only). weight (float or (B,)) multiplies each pair's likelihood term.
    magnitude_penalty c adds c·(r_w² + r_l²)/2 per pair, pulling rewards toward zero so their scale stays identifiable
    (BT only sees differences); the auxiliary zero-mean / reward-centering term of Eisenstein et al. 2023.
    """
    if tie is None:
        loss = bradley_terry_loss(r_chosen, r_rejected, margin=margin)
    else:
        loss = tie_loss(r_chosen, r_rejected, tie, model=tie_model, param=tie_param, margin=margin)
    if weight is not None:
        loss = loss * weight
    if magnitude_penalty:
        if magnitude_penalty < 0:
            raise ValueError(f"magnitude_penalty must be >= 0, got {magnitude_penalty}")
        loss = loss + magnitude_penalty * (r_chosen.float().square() + r_rejected.float().square()) / 2
    return loss


def multi_head_reward_loss(
    r_chosen: Tensor,
    r_rejected: Tensor,
    label: Tensor,
    present: Tensor,
    *,
    ties: bool = True,
    weight: Scalar | None = None,
    tie_model: str = "davidson",
    tie_param: float = 1.0,
    magnitude_penalty: float = 0.0,
) -> Tensor:
    """One Bradley–Terry likelihood per reward head (Ouyang et al. 2022 eq. 1 on each rubric dimension, as in
    multi-objective reward modelling, e.g. Wang et al. 2024 "ArmoRM"): per-(pair, head) losses (B, K) fp32, 0 where
    the pair has no label for that head.

    r_chosen, r_rejected: (B, K) head scores of the row's "chosen" and "rejected" response. label: (B, K) in {+1 (chosen
    won on head k), -1 (rejected won), 0 (tie)}. present: (B, K) bool. Head k of pair b is exactly `reward_loss` of the
    winner's and loser's k-th score (ties under `tie_model` when `ties`, else a tie label is an error); `weight`
    (float or (B,)) is each pair's confidence. No margin: strengths are collected for the overall choice only.
    """
    if r_chosen.shape != r_rejected.shape or r_chosen.shape != label.shape or label.shape != present.shape:
        raise ValueError(
            f"shapes differ: r_chosen {tuple(r_chosen.shape)}, r_rejected {tuple(r_rejected.shape)}, "
            f"label {tuple(label.shape)}, present {tuple(present.shape)}"
        )
    if not ties and bool(((label == 0) & present).any()):
        raise ValueError("a present tie label with ties=False: pass ties=True to model ties")
    flip = label < 0  # (B, K) the "rejected" response won on this head: swap the sides
    winner = torch.where(flip, r_rejected, r_chosen).reshape(-1)  # (B*K,)
    loser = torch.where(flip, r_chosen, r_rejected).reshape(-1)
    w = None
    if weight is not None:  # one weight per pair, shared by its heads
        n, k = r_chosen.shape
        w = torch.as_tensor(weight, dtype=torch.float32, device=winner.device).expand(n)[:, None].expand(n, k)
        w = w.reshape(-1)
    per = reward_loss(
        winner,
        loser,
        tie=(label == 0).reshape(-1) if ties else None,
        weight=w,
        tie_model=tie_model,
        tie_param=tie_param,
        magnitude_penalty=magnitude_penalty,
    )
    return torch.where(present.reshape(-1), per, torch.zeros_like(per)).view(r_chosen.shape)


# ----------------------------------------------------------------------------------------------------------------------
# process supervision


def process_reward_loss(step_logits: Tensor, labels: Tensor, weight: Scalar | None = None) -> Tensor:
    """Per-step binary cross-entropy of a process reward model (Lightman et al. 2023 §2.6: the PRM predicts each step's
    correctness at the step's last token; Uesato et al. 2022 §3): -[y log σ(s) + (1 - y) log σ(-s)].

    step_logits: (N,) the model's score at each step's end token; labels: (N,) in [0, 1] (1 = correct step; a fraction
    is a soft label, e.g. Math-Shepherd's share of completions reaching the right answer, Wang et al. 2024 eq. 2).
    weight: float or (N,) multiplies each step's loss. Returns (N,) fp32.
    """
    if step_logits.shape != labels.shape:
        raise ValueError(f"step_logits {tuple(step_logits.shape)} and labels {tuple(labels.shape)} must match")
    loss = F.binary_cross_entropy_with_logits(step_logits.float(), labels.float(), reduction="none")  # (N,)
    return loss if weight is None else loss * weight
