"""KL control for RLHF: the coefficient of the per-token KL penalty to the reference policy, and reward shaping.

Ziegler et al. 2019 §2.2: the reward is R(x, y) = r(x, y) - beta * log(pi(y|x) / rho(y|x)); beta is either fixed or
adapted so that KL(pi || rho) tracks a target. Pure, torch only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor

from rlhfkit.ops import KL_ESTIMATORS, kl_estimate

__all__ = [
    "LOSS_KL_ESTIMATORS",
    "AdaptiveKLController",
    "DomainKL",
    "FixedKLController",
    "KLController",
    "kl_loss_term",
    "last_valid_index",
    "check_domains",
    "kl_by_domain",
    "make_kl_controller",
    "per_token_kl_penalty",
    "shape_rewards",
]


class KLController(Protocol):
    value: float

    def update(self, current_kl: float, n_steps: int) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def _load_value(owner: str, state: dict[str, Any]) -> float:
    if "value" not in state:
        raise KeyError(f"{owner}.load_state_dict: missing key 'value' (got keys {sorted(state)})")
    return float(state["value"])


class FixedKLController:
    """Constant beta (Ziegler et al. 2019 §2.2, the non-adaptive case)."""

    def __init__(self, coef: float) -> None:
        if coef < 0:
            raise ValueError(f"KL coefficient must be >= 0, got {coef}")
        self.value = float(coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """No-op; present so trainers call every controller the same way."""

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = _load_value(type(self).__name__, state)

    def __repr__(self) -> str:
        return f"FixedKLController(value={self.value:.6g})"


class AdaptiveKLController:
    """Proportional controller toward a target KL, Ziegler et al. 2019 §2.2:
    e_t = clip(KL_t / target - 1, -0.2, 0.2);  beta_{t+1} = beta_t (1 + K_beta e_t),  K_beta = n_steps / horizon.

    ``target`` is in the same units as ``current_kl`` (nats, summed per sequence in the paper); ``horizon`` is in
    the units of ``n_steps`` (typically samples, i.e. the batch size per update).
    """

    def __init__(self, init_coef: float, target: float, horizon: float) -> None:
        if init_coef <= 0:
            raise ValueError(f"adaptive KL needs init_coef > 0 (a zero beta can never grow), got {init_coef}")
        if target <= 0:
            raise ValueError(f"KL target must be > 0, got {target}")
        if horizon <= 0:
            raise ValueError(f"KL horizon must be > 0, got {horizon}")
        self.value = float(init_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)  # e_t, clipped so one batch moves beta <=20%
        self.value *= 1.0 + error * n_steps / self.horizon  # beta <- beta (1 + K_beta e_t)

    def state_dict(self) -> dict[str, Any]:
        # target / horizon come from the config on resume; saved only so a checkpoint is self-describing
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = _load_value(type(self).__name__, state)

    def __repr__(self) -> str:
        return f"AdaptiveKLController(value={self.value:.6g}, target={self.target:g}, horizon={self.horizon:g})"


def _fixed(coef: float, target: float | None, horizon: float | None) -> KLController:
    return FixedKLController(coef)


def _adaptive(coef: float, target: float | None, horizon: float | None) -> KLController:
    if target is None or horizon is None:
        raise ValueError("an adaptive KL controller needs both target and horizon")
    return AdaptiveKLController(coef, target, horizon)


KL_CONTROLLERS: dict[str, Callable[[float, float | None, float | None], KLController]] = {
    "fixed": _fixed,
    "adaptive": _adaptive,
}


def make_kl_controller(
    kind: str, coef: float, target: float | None = None, horizon: float | None = None
) -> KLController:
    """Build a controller by name ("fixed" | "adaptive"); ``coef`` is the (initial) beta."""
    if kind not in KL_CONTROLLERS:
        raise ValueError(f"unknown KL controller {kind!r}; choose one of {sorted(KL_CONTROLLERS)}")
    return KL_CONTROLLERS[kind](coef, target, horizon)


# ----------------------------------------------------------------------------------------------------------------------
# Per-domain KL ("higher penalties for safety-critical domains"): one controller per listed prompt domain

UNTAGGED = "untagged"
"""The metric name of prompts without a "domain" field."""


def check_domains(per_domain: Mapping[str, float], data_domains: Sequence[str | None], source: str) -> list[str]:
    """Check kl.per_domain against the domains of the training prompts (before any model loads); returns notes.

    A listed domain that no prompt carries is an error (a misspelt "saftey" would quietly leave the safety prompts at
    kl.coef); data domains without an entry use kl.coef, which the notes say."""
    present = sorted({d for d in data_domains if d is not None})
    if not per_domain:
        return []
    if not present:
        raise ValueError(f'kl.per_domain is set but no prompt of {source} has a "domain" field')
    missing = sorted(set(per_domain) - set(present))
    if missing:
        raise ValueError(
            f"kl.per_domain lists domain(s) {', '.join(map(repr, missing))} that no prompt of {source} carries "
            f"(its domains: {', '.join(present)})"
        )
    rest = [d for d in present if d not in per_domain] + ([UNTAGGED] if None in data_domains else [])
    return [f"domains without a kl.per_domain entry use kl.coef: {', '.join(rest)}"] if rest else []


def kl_by_domain(seq_kl: Sequence[float] | Tensor, domains: Sequence[str | None]) -> dict[str, float]:
    """Mean per-sequence KL of each domain (None: UNTAGGED), names sorted: {domain: mean}."""
    values = seq_kl.tolist() if isinstance(seq_kl, Tensor) else list(seq_kl)
    if len(values) != len(domains):
        raise ValueError(f"{len(values)} KL values but {len(domains)} domains")
    groups: dict[str, list[float]] = {}
    for v, d in zip(values, domains):
        groups.setdefault(UNTAGGED if d is None else d, []).append(float(v))
    return {name: sum(vs) / len(vs) for name, vs in sorted(groups.items())}


class DomainKL:
    """The KL coefficients of a run: one controller per domain of ``per_domain`` (fixed or adaptive, each tracking its
    own domain's KL with its own target), and the default controller (kl.coef, kl.target) for every other domain and
    untagged prompts. Without ``per_domain`` it is exactly one controller, as before.

    ``names``: every domain the run reports on (listed ones, the data's, and UNTAGGED when a prompt has no tag); a
    rollout row carries its domain as an index into ``names`` (``index``), so coefficients and per-domain means are
    tensor gathers and one all-reduce.
    """

    def __init__(
        self,
        kind: str,
        coef: float,
        target: float | None,
        horizon: float | None,
        per_domain: Mapping[str, float] | None = None,
        per_domain_target: Mapping[str, float] | None = None,
        data_domains: Sequence[str | None] = (),
    ) -> None:
        per_domain, targets = dict(per_domain or {}), dict(per_domain_target or {})
        self.default = make_kl_controller(kind, coef, target, horizon)
        self.controllers: dict[str, KLController] = {
            d: make_kl_controller(kind, c, targets.get(d, target), horizon) for d, c in sorted(per_domain.items())
        }
        tagged = sorted({d for d in data_domains if d is not None} | set(per_domain))
        self.names: list[str] = tagged + ([UNTAGGED] if None in data_domains or not tagged else [])
        self._slot = {name: i for i, name in enumerate(self.names)}

    @property
    def value(self) -> float:
        """The default controller's coefficient (kl.coef's)."""
        return self.default.value

    @property
    def tagged(self) -> bool:
        """Whether the run reports per domain (some prompt has a domain, or per_domain is set)."""
        return self.names != [UNTAGGED]

    def controller(self, name: str) -> KLController:
        return self.controllers.get(name, self.default)

    def index(self, domains: Sequence[str | None]) -> Tensor:
        """(B,) long: each row's domain as an index into ``names`` (None: UNTAGGED; an unseen name is an error)."""
        try:
            return torch.tensor([self._slot[UNTAGGED if d is None else d] for d in domains], dtype=torch.long)
        except KeyError as e:
            raise ValueError(f"domain {e.args[0]!r} is not among the run's domains ({', '.join(self.names)})") from None

    def coefs(self, index: Tensor) -> Tensor:
        """(B,) float32 KL coefficient of each row: its domain's controller's value."""
        values = torch.tensor([self.controller(n).value for n in self.names], dtype=torch.float32)
        return values.to(index.device)[index]

    def domain_means(
        self, seq_kl: Tensor, index: Tensor, all_reduce: Callable[[Tensor], Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
        """Per-domain (sum of seq_kl, count) over every process: two (D,) float64 tensors, D = len(names)."""
        d = len(self.names)
        sums = torch.zeros(d, dtype=torch.float64, device=seq_kl.device).index_add_(0, index, seq_kl.double())
        counts = torch.bincount(index, minlength=d).to(torch.float64)
        both = torch.stack([sums, counts])  # (2, D): one collective
        if all_reduce is not None:
            both = all_reduce(both)
        return both[0], both[1]

    def update(
        self, seq_kl: Tensor, index: Tensor, all_reduce: Callable[[Tensor], Tensor] | None = None, adapt: bool = True
    ) -> dict[str, float]:
        """Step 7 of a rollout: each controller adapts to the mean per-sequence KL of ITS sequences over every process,
        with n_steps = how many there were (Ziegler et al. 2019 §2.2, per domain); domains sharing the default
        controller are pooled. Returns {"kl/<domain>", "kl_coef/<domain>"} for the logs (coefficients as used for
        this batch, before the update) when the run is tagged, else {}; adapt=False only measures (no kl_coef)."""
        sums, counts = self.domain_means(seq_kl, index, all_reduce)
        out: dict[str, float] = {}
        if self.tagged:
            for i, name in enumerate(self.names):
                if counts[i] > 0:
                    out[f"kl/{name}"] = float(sums[i] / counts[i])
                if adapt:
                    out[f"kl_coef/{name}"] = self.controller(name).value
        if adapt:
            pooled: dict[int, list[float]] = {}
            for i, name in enumerate(self.names):
                ctl = self.controller(name)
                acc = pooled.setdefault(id(ctl), [0.0, 0.0])
                acc[0], acc[1] = acc[0] + float(sums[i]), acc[1] + float(counts[i])
            for ctl in [self.default, *self.controllers.values()]:
                total, n = pooled.get(id(ctl), [0.0, 0.0])
                if n > 0:
                    ctl.update(total / n, int(n))
        return out

    def report(self, seq_kl: Sequence[float] | Tensor, domains: Sequence[str | None]) -> dict[str, float]:
        """{"kl/<domain>": mean} of held-out samples when the run is tagged, else {}."""
        return {f"kl/{d}": v for d, v in kl_by_domain(seq_kl, domains).items()} if self.tagged else {}

    def state_dict(self) -> dict[str, Any]:
        """For a checkpoint: the default controller as ``kl_controller`` (as before per-domain KL existed) and the
        per-domain ones under ``kl_domains``."""
        return {
            "kl_controller": self.default.state_dict(),
            "kl_domains": {name: ctl.state_dict() for name, ctl in self.controllers.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.default.load_state_dict(state["kl_controller"])
        saved = state.get("kl_domains") or {}
        missing = sorted(set(self.controllers) - set(saved))
        if missing:
            raise KeyError(f"the checkpoint has no KL controller for domain(s) {missing} (saved: {sorted(saved)})")
        for name, ctl in self.controllers.items():
            ctl.load_state_dict(saved[name])

    def __repr__(self) -> str:
        return f"DomainKL(default={self.default!r}, per_domain={self.controllers!r})"


def per_token_kl_penalty(
    logprobs: Tensor,
    ref_logprobs: Tensor,
    mask: Tensor,
    coef: float,
    estimator: str = "k1",
    log_ratio_clip: float | None = None,
) -> Tensor:
    """coef * KL_t per token, (B, T) float32 (fp64 for fp64 inputs), 0 where mask is 0 (Ziegler et al. 2019 §2.2).

    logprobs / ref_logprobs: (B, T) log pi(a_t|s_t) and log ref(a_t|s_t) of the sampled tokens; pass detached
    rollout logprobs when the penalty goes into the reward. estimator: "k1" | "k2" | "k3" (Schulman 2020, see
    ``ops.kl_estimate``); log_ratio_clip optionally clamps log pi - log ref first (k3 overflows without it).
    """
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {estimator!r}; choose one of {sorted(KL_ESTIMATORS)}")
    if not (logprobs.shape == ref_logprobs.shape == mask.shape):
        raise ValueError(
            f"logprobs {tuple(logprobs.shape)}, ref_logprobs {tuple(ref_logprobs.shape)} and mask "
            f"{tuple(mask.shape)} must have the same (B, T) shape"
        )
    valid = mask.bool()
    # padding may hold -inf: zero both sides before the estimator so no inf/NaN reaches values or gradients
    lp, ref = torch.where(valid, logprobs, 0.0), torch.where(valid, ref_logprobs, 0.0)
    kl = kl_estimate(lp, ref, kind=estimator, log_ratio_clip=log_ratio_clip)
    return torch.where(valid, coef * kl, 0.0)


# ----------------------------------------------------------------------------------------------------------------------
# KL in the loss (GRPO, Shao et al. 2024 eq. 3-4; kl.placement=loss)
#
# In the loss, an estimator is differentiated at FIXED samples a ~ pi, so what matters is E_pi[grad term(a)], not
# E_pi[term(a)]. With lr = log pi(a) - log ref(a) and sum_a pi(a) grad log pi(a) = 0:
#   k1 = lr:                 E_pi[grad lr] = 0                                  -> no gradient at all
#   k2 = lr^2 / 2:           E_pi[lr grad log pi] = grad KL(pi || ref)          -> the right gradient
#   k3 = e^{-lr} - 1 + lr:   E_pi[(1 - ref/pi) grad log pi] = grad KL(ref || pi) -> the reverse KL's gradient
# so only k2 differentiates correctly; "k3" keeps k3's unbiased VALUE for logs with k2's gradient (straight-through).

LOSS_KL_ESTIMATORS = ("k2", "k3")


def kl_loss_term(
    logp: Tensor,
    ref_logp: Tensor,
    estimator: str,
    log_ratio_clip: float | None = None,
    *,
    mask: Tensor | None = None,
) -> Tensor:
    """Per-token KL(pi || ref) term to ADD TO THE LOSS (kl.placement=loss), same shape as logp, fp32 (fp64 for fp64).

    logp: differentiable log pi(a_t) of the sampled tokens; ref_logp: log ref(a_t) (treated as a constant).
      "k2": (log pi - log ref)^2 / 2; its gradient (log pi - log ref) grad log pi has expectation grad KL(pi || ref).
      "k3": the value of k3 = (r - 1) - log r, r = ref / pi (unbiased for KL, Schulman 2020), with k2's gradient:
            k2 + (k3 - k2).detach(). Differentiating k3 itself follows grad KL(ref || pi) instead.
      "k1": rejected: its gradient has expectation 0 under pi, so the KL term would silently do nothing.
    log_ratio_clip c clamps log pi - log ref to [-c, c] first (value and gradient, as ``ops.kl_estimate``).
    mask (same shape, optional): positions with mask 0 give exactly 0 with zero gradient, whatever logp holds there.
    """
    if estimator == "k1":
        raise ValueError(
            "KL estimator 'k1' in the loss has zero expected gradient (E_pi[grad log pi] = 0), so the KL penalty "
            f"would do nothing; use one of {list(LOSS_KL_ESTIMATORS)} for kl.placement=loss, or put k1 in the reward"
        )
    if estimator not in LOSS_KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {estimator!r} for the loss; valid: {list(LOSS_KL_ESTIMATORS)}")
    if logp.shape != ref_logp.shape or (mask is not None and mask.shape != logp.shape):
        shapes = f"logp {tuple(logp.shape)}, ref_logp {tuple(ref_logp.shape)}"
        raise ValueError(shapes + (f", mask {tuple(mask.shape)}" if mask is not None else "") + " must match")
    lp, ref = logp, ref_logp.detach()
    if mask is not None:  # padding may hold -inf: select before subtracting so no inf/NaN reaches the gradient
        valid = mask.bool()
        lp, ref = torch.where(valid, lp, 0.0), torch.where(valid, ref, 0.0)
    k2 = kl_estimate(lp, ref, "k2", log_ratio_clip)  # same shape as logp
    if estimator == "k2":
        return k2
    k3 = kl_estimate(lp.detach(), ref, "k3", log_ratio_clip)
    return k2 + (k3 - k2.detach())  # value k3, gradient of k2


def last_valid_index(mask: Tensor) -> Tensor:
    """(B, T) mask -> (B,) index of each row's last valid token (the EOS, or the cut-off token if truncated)."""
    valid = mask.bool()
    empty = ~valid.any(dim=1)
    if empty.any():
        rows = empty.nonzero().flatten().tolist()
        raise ValueError(f"rows {rows[:10]} have no valid response token; cannot place their score")
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(valid)
    return torch.where(valid, positions, -1).amax(dim=1)


def shape_rewards(scores: Tensor, kl_penalty: Tensor, mask: Tensor) -> Tensor:
    """Token rewards for PPO / REINFORCE++ (Ziegler et al. 2019 §2.2; Ouyang et al. 2022 eq. 2):
    r_t = -kl_penalty_t on every valid token, plus the sequence score on the last valid token (outcome reward), or
    plus scores_t on every valid token when scores is already per token (process reward: each step's reward at its
    end token, Lightman et al. 2023; Wang et al. 2024 §3.3).

    scores: (B,) or (B, T); kl_penalty: (B, T), already multiplied by the coefficient (see per_token_kl_penalty);
    mask: (B, T).
    """
    if mask.dim() != 2 or scores.shape not in (mask.shape[:1], mask.shape) or kl_penalty.shape != mask.shape:
        raise ValueError(
            f"expected scores (B,) or (B, T), kl_penalty (B, T), mask (B, T); got {tuple(scores.shape)}, "
            f"{tuple(kl_penalty.shape)}, {tuple(mask.shape)}"
        )
    rewards = torch.where(mask.bool(), -kl_penalty.float(), 0.0)
    if scores.dim() == 2:
        return rewards + torch.where(mask.bool(), scores.float(), 0.0)
    rows = torch.arange(mask.shape[0], device=mask.device)
    rewards[rows, last_valid_index(mask)] += scores.float()
    return rewards
