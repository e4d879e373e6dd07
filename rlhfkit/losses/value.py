"""Value-function loss and diagnostics for PPO. Pure, torch only."""

from __future__ import annotations

import torch
from torch import Tensor

from rlhfkit.ops import masked_var

__all__ = ["clipped_value_loss", "explained_variance"]


def _check(mask: Tensor, **tensors: Tensor) -> None:
    if mask.dim() != 2 or any(t.shape != mask.shape for t in tensors.values()):
        shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in tensors.items())
        raise ValueError(f"{shapes} and mask {tuple(mask.shape)} must all be the same (B, T)")


def clipped_value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip: float | None = 0.2
) -> Tensor:
    """0.5 * max((V - R)^2, (clip(V, V_old - eps, V_old + eps) - R)^2) per token, (B, T), 0 where mask is 0.

    The clipped value objective of the PPO reference code, as used for RLHF in Huang et al. 2024 ("The N
    implementation details of RLHF with PPO", detail on value clipping). values: (B, T) differentiable V_theta;
    old_values: (B, T) rollout values; returns: (B, T) targets, e.g. from GAE. clip=None gives the plain 0.5 (V - R)^2.
    """
    _check(mask, values=values, old_values=old_values, returns=returns)
    if clip is not None and clip <= 0:
        raise ValueError(f"value clip must be > 0 (or None to disable), got {clip}")
    valid = mask.bool()
    v = torch.where(valid, values, 0.0)  # keep garbage at padding out of the graph
    old = torch.where(valid, old_values.detach(), 0.0)
    ret = torch.where(valid, returns.detach(), 0.0)
    loss = (v - ret) ** 2
    if clip is not None:
        v_clipped = old + torch.clamp(v - old, -clip, clip)
        loss = torch.maximum(loss, (v_clipped - ret) ** 2)
    return torch.where(valid, 0.5 * loss, 0.0)


@torch.no_grad()
def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """1 - Var[R - V] / Var[R] over valid tokens (scalar tensor): 1 is a perfect critic, 0 no better than the mean,
    negative worse. NaN when the returns have zero variance, where the ratio is undefined."""
    _check(mask, values=values, returns=returns)
    valid = mask.bool()
    var_r = masked_var(returns.float(), valid, unbiased=False)
    ev = 1.0 - masked_var((returns - values).float(), valid, unbiased=False) / var_r
    return torch.where(var_r > 0, ev, torch.full_like(ev, float("nan")))
