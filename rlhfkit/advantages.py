"""Advantage estimators for online RL on language models: GAE (PPO), GRPO, RLOO, REINFORCE++.

Pure functions, torch only. Token tensors are (B, T) over the *response* tokens; ``mask`` is 1 on tokens the policy
generated and 0 elsewhere (right padding, and any holes such as tool output). Positions with mask 0 are not time
steps: they carry no reward, no value, no discount, and their outputs are exactly 0.

Advantages and returns are targets, never differentiated through, so every function here runs under ``no_grad``;
token-level outputs are float32 whatever the input dtype (long bf16 sums drift).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "broadcast_to_tokens",
    "discounted_returns",
    "gae",
    "group_normalized",
    "group_process_advantages",
    "leave_one_out",
    "reinforce_pp",
    "whiten_advantages",
]


def _check_token_shapes(mask: Tensor, **tensors: Tensor) -> None:
    if mask.dim() != 2:
        raise ValueError(f"mask must be (B, T), got shape {tuple(mask.shape)}")
    for name, t in tensors.items():
        if t.shape != mask.shape:
            raise ValueError(
                f"{name} has shape {tuple(t.shape)} but mask has shape {tuple(mask.shape)}; both must be (B, T)"
            )


def _check_groups(scores: Tensor, group_size: int) -> int:
    """Returns the number of groups; groups are consecutive blocks of ``group_size`` rows."""
    if scores.dim() != 1:
        raise ValueError(f"scores must be (B,), got shape {tuple(scores.shape)}")
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 (a group of one has no baseline), got {group_size}")
    if scores.numel() % group_size != 0:
        raise ValueError(
            f"batch of {scores.numel()} scores is not a whole number of groups of {group_size}; "
            "rows must be [prompt0 x group_size, prompt1 x group_size, ...]"
        )
    return scores.numel() // group_size


@torch.no_grad()
def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalized advantage estimation, Schulman et al. 2016 eq. 16: A_t = sum_l (gamma*lam)^l delta_{t+l},
    delta_t = r_t + gamma * V_{t+1} - V_t (eq. 10).

    rewards, values, mask: (B, T). The value after the last valid token is 0 (the episode ends at EOS).
    Returns (advantages (B, T), returns (B, T)) with returns = advantages + values, both 0 where mask is 0.
    """
    _check_token_shapes(mask, rewards=rewards, values=values)
    valid = mask.bool()
    B, T = rewards.shape
    rewards, values = rewards.float(), values.float()  # bf16 sums over long responses lose too much
    advantages = torch.zeros_like(rewards)
    next_value = rewards.new_zeros(B)  # V of the next *valid* token; 0 after the last one (terminal)
    next_adv = rewards.new_zeros(B)
    for t in reversed(range(T)):
        m = valid[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]  # eq. 10
        adv_t = delta + gamma * lam * next_adv  # eq. 16 in its recursive form
        advantages[:, t] = torch.where(m, adv_t, 0.0)
        # masked positions are skipped, not treated as steps: carry the successor's state through them
        next_adv = torch.where(m, adv_t, next_adv)
        next_value = torch.where(m, values[:, t], next_value)
    returns = torch.where(valid, advantages + values, 0.0)
    return advantages, returns


@torch.no_grad()
def discounted_returns(rewards: Tensor, mask: Tensor, gamma: float = 1.0) -> Tensor:
    """Return-to-go G_t = r_t + gamma * G_{t+1} over valid tokens (Sutton & Barto eq. 3.9); (B, T), 0 on padding."""
    _check_token_shapes(mask, rewards=rewards)
    valid = mask.bool()
    rewards = rewards.float()
    returns = torch.zeros_like(rewards)
    running = rewards.new_zeros(rewards.shape[0])
    for t in reversed(range(rewards.shape[1])):
        m = valid[:, t]
        g = rewards[:, t] + gamma * running
        returns[:, t] = torch.where(m, g, 0.0)
        running = torch.where(m, g, running)
    return returns


AllReduce = Callable[[Tensor], Tensor]
"""Sums a tensor over processes and returns the sum, e.g. ``lambda t: accelerator.reduce(t, "sum")``."""


@torch.no_grad()
def whiten_advantages(
    adv: Tensor,
    mask: Tensor,
    shift_mean: bool = True,
    eps: float = 1e-8,
    *,
    all_reduce: AllReduce | None = None,
) -> Tensor:
    """Normalize advantages over all valid tokens of the batch: (A - mean) / sqrt(var + eps), 0 on padding.

    mean and the unbiased variance (Bessel's n - 1) are taken over every valid token of the GLOBAL batch when
    ``all_reduce`` is given (it must sum over processes; every process must call this, even one without valid
    tokens), otherwise over this process's tokens only. Two passes (count and sum, then the sum of squared
    deviations from the global mean) avoid the cancellation of sum-of-squares formulas; statistics are in fp64.
    shift_mean=False keeps the original mean (only rescales), as TRL's ``whiten(shift_mean=False)``.
    With fewer than 2 valid tokens the variance is undefined: nothing is rescaled, the values are only centered
    (shift_mean=True; a single token becomes 0) or returned as they are (shift_mean=False). Returns (B, T) fp32.
    """
    _check_token_shapes(mask, adv=adv)
    valid = mask.bool()
    reduce = all_reduce if all_reduce is not None else (lambda t: t)
    x = torch.where(valid, adv.float(), 0.0)  # padding may hold anything
    xs = x.to(torch.float32 if x.device.type == "mps" else torch.float64)  # MPS has no fp64
    count_and_sum = reduce(torch.stack([valid.sum().to(xs.dtype), xs.sum()]))  # (2,) global n and sum
    n, mean = count_and_sum[0], count_and_sum[1] / count_and_sum[0].clamp(min=1)
    sq_dev = reduce(torch.where(valid, (xs - mean) ** 2, 0.0).sum())  # global sum of squared deviations
    var = sq_dev / (n - 1).clamp(min=1)  # unbiased
    # n < 2: undefined variance, scale 1 (no host sync: a tensor condition, not a Python branch)
    scale = torch.where(n >= 2, torch.rsqrt(var + eps), torch.ones_like(var))
    whitened = (xs - mean) * scale
    out = (whitened if shift_mean else whitened + mean).float()
    return torch.where(valid, out, 0.0)


@torch.no_grad()
def group_normalized(scores: Tensor, group_size: int, eps: float = 1e-6, scale_by_std: bool = True) -> Tensor:
    """GRPO outcome-supervision advantage, Shao et al. 2024 eq. 3 (§4.1.2): (r_i - mean(group)) / std(group).

    scores: (B,), consecutive blocks of ``group_size`` rows answer the same prompt. scale_by_std=False drops the
    division (Dr. GRPO, Liu et al. 2025 §3.1: the std term up-weights too-easy / too-hard prompts).
    The std is the unbiased sample std (torch.std default), as in TRL's and OpenRLHF's GRPO. Returns (B,).
    """
    n_groups = _check_groups(scores, group_size)
    g = scores.float().view(n_groups, group_size)
    adv = g - g.mean(dim=1, keepdim=True)
    if scale_by_std:
        adv = adv / (g.std(dim=1, keepdim=True) + eps)
    return adv.reshape(-1)


@torch.no_grad()
def group_process_advantages(
    token_rewards: Tensor,
    step_mask: Tensor,
    mask: Tensor,
    group_size: int,
    eps: float = 1e-6,
    scale_by_std: bool = True,
) -> Tensor:
    """GRPO process-supervision advantage, Shao et al. 2024 §4.1.3: every step reward of a group is normalized by the
    mean and std of ALL step rewards of that group's G responses, r~ = (r - mean(R)) / std(R), and token t's advantage
    is the sum of the normalized rewards of the steps ending at or after it, A_t = sum_{index(j) >= t} r~_index(j).

    token_rewards (B, T): step rewards at their end tokens, plus any per-token terms (a KL penalty placed in the
    reward); a step's reward is the sum from just after the previous step's end to its own end. step_mask (B, T): 1 at
    step-end tokens (kept only where mask is 1). Rows of one prompt are consecutive blocks of ``group_size``; the std
    is the unbiased sample std, as in ``group_normalized`` (scale_by_std=False drops it, Dr. GRPO); a group with fewer
    than 2 steps is only centered. Tokens after a row's last step end get 0. Returns (B, T) fp32, 0 on padding.
    """
    _check_token_shapes(mask, token_rewards=token_rewards, step_mask=step_mask)
    n_groups = _check_groups(token_rewards[:, 0], group_size)
    valid = mask.bool()
    ends = step_mask.bool() & valid
    B, T = mask.shape
    cum = torch.where(valid, token_rewards.float(), 0.0).cumsum(-1)  # (B, T)
    positions = torch.arange(T, device=mask.device).expand(B, T)
    last_end = torch.where(ends, positions, -1).cummax(-1).values  # last step end at or before t
    prev_end = torch.nn.functional.pad(last_end, (1, 0), value=-1)[:, :-1]  # ... strictly before t
    before = torch.where(prev_end >= 0, cum.gather(1, prev_end.clamp(min=0)), 0.0)
    steps = torch.where(ends, cum - before, 0.0)  # (B, T) each step's reward at its end token
    g_steps, g_ends = steps.view(n_groups, group_size * T), ends.view(n_groups, group_size * T).float()
    count = g_ends.sum(-1, keepdim=True)
    mean = g_steps.sum(-1, keepdim=True) / count.clamp(min=1)
    normalized = (g_steps - mean) * g_ends
    if scale_by_std:
        var = (normalized**2).sum(-1, keepdim=True) / (count - 1).clamp(min=1)
        normalized = normalized / torch.where(count >= 2, var.sqrt() + eps, torch.ones_like(var))
    normalized = normalized.view(B, T)
    adv = normalized.flip(-1).cumsum(-1).flip(-1)  # sum over steps ending at or after t
    return torch.where(valid, adv, 0.0)


@torch.no_grad()
def leave_one_out(scores: Tensor, group_size: int) -> Tensor:
    """RLOO baseline, Ahmadian et al. 2024 eq. 7 (Kool et al. 2019): A_i = r_i - 1/(k-1) * sum_{j != i} r_j.

    scores: (B,), consecutive blocks of ``group_size`` = k samples per prompt. Returns (B,).
    """
    n_groups = _check_groups(scores, group_size)
    g = scores.float().view(n_groups, group_size)
    others_mean = (g.sum(dim=1, keepdim=True) - g) / (group_size - 1)
    return (g - others_mean).reshape(-1)


@torch.no_grad()
def reinforce_pp(
    token_rewards: Tensor,
    mask: Tensor,
    gamma: float = 1.0,
    eps: float = 1e-8,
    *,
    all_reduce: AllReduce | None = None,
) -> Tensor:
    """REINFORCE++ advantage, Hu 2025 §3: per-token discounted return-to-go (the KL-shaped token rewards
    already include the score at EOS), then whitened over every valid token of the global batch.

    token_rewards, mask: (B, T). all_reduce: sums over processes (see ``whiten_advantages``); without it the
    whitening is over this process's tokens only. Returns (B, T), 0 on padding.
    """
    returns = discounted_returns(token_rewards, mask, gamma)
    return whiten_advantages(returns, mask, shift_mean=True, eps=eps, all_reduce=all_reduce)


def broadcast_to_tokens(seq_adv: Tensor, mask: Tensor) -> Tensor:
    """Give every valid token its sequence's advantage (GRPO / RLOO outcome supervision). (B,), (B, T) -> (B, T)."""
    if mask.dim() != 2 or seq_adv.shape != mask.shape[:1]:
        raise ValueError(f"seq_adv must be (B,) and mask (B, T); got {tuple(seq_adv.shape)} and {tuple(mask.shape)}")
    return torch.where(mask.bool(), seq_adv.unsqueeze(1), 0.0)
