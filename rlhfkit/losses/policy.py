"""Policy-gradient surrogate losses for online RL (PPO, GRPO, RLOO, REINFORCE++ all use the clipped surrogate).

Pure, torch only. Per-token losses come back unreduced (B, T) so the caller chooses the aggregation
(token-mean, sequence-mean, global normalizers across micro-batches).
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlhfkit.ops import masked_mean

__all__ = ["ppo_clip_loss", "rollout_mismatch_stats", "tis_weights"]


def tis_weights(old_logprobs: Tensor, rollout_logprobs: Tensor, mask: Tensor, cap: float) -> Tensor:
    """Truncated importance-sampling weights, Yao et al. 2025 ("Your efficient RL framework secretly brings you
    off-policy RL training", the TIS estimator): w_t = min(pi_old_train(a_t|s_t) / pi_rollout(a_t|s_t), C), detached.

    The rollout engine samples a_t from pi_rollout, the trainer's forward computes pi_old_train of the same weights by
    other kernels; w_t corrects the policy gradient for the gap, the cap C bounds its variance. old_logprobs,
    rollout_logprobs, mask: (B, T). Returns (B, T) float, 0 where mask is 0, no gradient.
    """
    if cap <= 0:
        raise ValueError(f"cap must be > 0, got {cap}")
    valid = mask.bool()
    log_w = torch.where(valid, old_logprobs.detach() - rollout_logprobs.detach(), 0.0)  # (B, T) before exp: no inf
    return torch.where(valid, torch.exp(log_w).clamp(max=cap), 0.0)


@torch.no_grad()
def rollout_mismatch_stats(
    old_logprobs: Tensor, rollout_logprobs: Tensor, mask: Tensor, cap: float | None = None
) -> dict[str, Tensor]:
    """The rollout-trainer mismatch of one batch, over its mask: mean and max per-token |log pi_old_train -
    log pi_rollout|, the importance ratio's mean, and with a TIS cap the share of tokens capped and the mean TIS weight
    (detached scalars)."""
    valid = mask.bool()
    gap = torch.where(valid, old_logprobs - rollout_logprobs, 0.0)  # (B, T)
    ratio = torch.exp(gap)
    stats = {
        "mismatch/gap_abs_mean": masked_mean(gap.abs(), valid),
        "mismatch/gap_abs_max": gap.abs().max() if gap.numel() else gap.new_zeros(()),
        "mismatch/ratio_mean": masked_mean(ratio, valid),
    }
    if cap is not None:
        stats["tis/capped_fraction"] = masked_mean((ratio > cap).float(), valid)
        stats["tis/weight_mean"] = masked_mean(tis_weights(old_logprobs, rollout_logprobs, mask, cap), valid)
    return stats


def ppo_clip_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 0.2,
    clip_high: float | None = None,
    dual_clip: float | None = None,
    rollout_logprobs: Tensor | None = None,
    tis_cap: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped surrogate, Schulman et al. 2017 eq. 7, as a loss: max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high)).

    logprobs: (B, T) log pi_theta(a_t|s_t), differentiable; old_logprobs: (B, T) log pi_old from the rollout;
    advantages: (B, T); mask: (B, T), 1 on response tokens. clip_high=None means symmetric clipping; a larger
    clip_high is DAPO's "clip-higher" (Yu et al. 2025 §3.1). dual_clip=c > 1 bounds the loss of negative-advantage
    tokens by -c A (Ye et al. 2020 eq. 5), so a huge ratio on a bad token cannot blow up the update.
    tis_cap=C with rollout_logprobs (B, T) (log pi_rollout of the engine that sampled the tokens): each token's loss is
    multiplied by the detached truncated importance weight min(pi_old / pi_rollout, C) (`tis_weights`, Yao et al. 2025,
    their PPO form), correcting for the sampler's kernels differing from the trainer's.

    Returns (per_token_loss (B, T), stats). The loss and its gradient are exactly 0 where mask is 0, whatever the
    inputs hold there. Stats are detached scalar masked means: clip_fraction (tokens whose gradient the clip
    removed), approx_kl (k3 estimate of KL(pi_old || pi_theta), Schulman 2020), ratio_mean, dual_clip_fraction.
    """
    if not (logprobs.shape == old_logprobs.shape == advantages.shape == mask.shape) or mask.dim() != 2:
        raise ValueError(
            f"logprobs {tuple(logprobs.shape)}, old_logprobs {tuple(old_logprobs.shape)}, advantages "
            f"{tuple(advantages.shape)} and mask {tuple(mask.shape)} must all be the same (B, T)"
        )
    clip_high = clip_low if clip_high is None else clip_high
    if not 0.0 < clip_low < 1.0:
        raise ValueError(f"clip_low must be in (0, 1), got {clip_low}")
    if clip_high <= 0.0:
        raise ValueError(f"clip_high must be > 0, got {clip_high}")
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1 (Ye et al. 2020), got {dual_clip}")
    if tis_cap is not None and (rollout_logprobs is None or rollout_logprobs.shape != mask.shape):
        got = None if rollout_logprobs is None else tuple(rollout_logprobs.shape)
        raise ValueError(f"tis_cap needs rollout_logprobs of the shape {tuple(mask.shape)}, got {got}")

    valid = mask.bool()
    # select before exp: padding may hold -inf / garbage, and where() after exp would still leak NaN gradients
    log_ratio = torch.where(valid, logprobs - old_logprobs.detach(), 0.0)  # (B, T)
    adv = torch.where(valid, advantages.detach(), 0.0)  # (B, T)
    ratio = torch.exp(log_ratio)  # r_t(theta), eq. 6
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(unclipped, clipped)  # eq. 7, negated: pessimistic bound
    if dual_clip is not None:
        bound = -adv * dual_clip  # (B, T); applies only where A < 0, for A > 0 the ordinary clip already bounds it
        dual_active = (adv < 0) & (loss > bound)
        loss = torch.where(dual_active, bound, loss)
    else:
        dual_active = torch.zeros_like(valid)
    if tis_cap is not None:  # Yao et al. 2025: E_{a ~ pi_rollout}[min(pi_old / pi_rollout, C) * PPO term]
        loss = tis_weights(old_logprobs, rollout_logprobs, mask, tis_cap) * loss
    loss = torch.where(valid, loss, 0.0)

    with torch.no_grad():
        stats = {
            "clip_fraction": masked_mean((clipped > unclipped).float(), valid),
            "approx_kl": masked_mean(torch.expm1(log_ratio) - log_ratio, valid),  # k3 with r = pi_theta / pi_old
            "ratio_mean": masked_mean(ratio, valid),
            "dual_clip_fraction": masked_mean(dual_active.float(), valid),
        }
    return loss, stats
