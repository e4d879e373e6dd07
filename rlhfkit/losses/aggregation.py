"""How per-token or per-sequence losses become one scalar, with a denominator the trainer can make global.

Why a separate normalizer: with gradient accumulation over micro-batches (and data parallelism over processes), a
local mean weights each micro-batch equally whatever its token count, so 1 micro-batch of 8 and 8 micro-batches of 1
give different gradients. Dividing every micro-batch's *sum* by the *global* count (all micro-batches, all processes)
makes the accumulated gradient identical to the full-batch one. `aggregate_sum_and_count` returns the local pieces;
the trainer sums the counts (and all-reduces them) and passes the total back as `normalizer`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlhfkit.ops import masked_sum

__all__ = ["AGGREGATION_MODES", "aggregate", "aggregate_sum_and_count"]

AGGREGATION_MODES = ("token-mean", "sequence-mean", "sum")


def _prepare(values: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    # Per-sequence values (B,) are treated as sequences of one token, so every mode accepts them.
    if values.dim() == 1:
        values = values.unsqueeze(-1)
        mask = None if mask is None else mask.reshape(values.shape)
    if values.dim() != 2:
        raise ValueError(f"values must have shape (B, T) or (B,), got {tuple(values.shape)}")
    if mask is None:
        mask = torch.ones_like(values)
    if mask.shape != values.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match values shape {tuple(values.shape)}")
    return values, mask.to(values.dtype if values.is_floating_point() else torch.float32)


def aggregate_sum_and_count(values: Tensor, mask: Tensor | None, mode: str) -> tuple[Tensor, Tensor]:
    """Local (numerator, denominator) of `mode`, both scalar tensors; aggregate = numerator / denominator.

    values: (B, T) per-token losses or (B,) per-sequence losses; mask: same shape (1 = counts), None = all ones.
      token-mean:    (sum of masked values,               number of masked tokens)
      sequence-mean: (sum over sequences of their token mean, number of sequences with at least one masked token)
      sum:           (sum of masked values,               1)
    Sum the denominators over micro-batches and processes to get the global normalizer for `aggregate`.
    """
    values, mask = _prepare(values, mask)
    if mode == "token-mean":
        return masked_sum(values, mask), mask.sum()
    if mode == "sequence-mean":
        seq_count = mask.sum(-1)  # (B,)
        has_tokens = seq_count > 0
        seq_mean = masked_sum(values, mask, dim=-1) / torch.where(has_tokens, seq_count, torch.ones_like(seq_count))
        return seq_mean.sum(), has_tokens.to(seq_mean.dtype).sum()
    if mode == "sum":
        return masked_sum(values, mask), torch.ones((), dtype=mask.dtype, device=values.device)
    raise ValueError(f"unknown aggregation mode {mode!r}; valid: {list(AGGREGATION_MODES)}")


def aggregate(
    values: Tensor, mask: Tensor | None, mode: str = "token-mean", normalizer: float | Tensor | None = None
) -> Tensor:
    """Reduce per-token (B, T) or per-sequence (B,) losses to a scalar.

    mode:
      "token-mean"    sum over all masked tokens / number of masked tokens (long sequences weigh more; TRL/verl default)
      "sequence-mean" mean over sequences of each sequence's token mean (every sequence weighs the same; GRPO paper)
      "sum"           plain sum (pass a constant `normalizer`, e.g. batch size x max length, for Dr. GRPO,
                      Liu et al. 2025, which avoids length bias)
    normalizer: replaces the local denominator; pass the GLOBAL count (summed over micro-batches and processes, from
    `aggregate_sum_and_count`) so gradient accumulation and data parallelism do not change the result.
    A zero denominator gives 0 rather than NaN (the numerator is then 0 too).
    """
    numerator, denominator = aggregate_sum_and_count(values, mask, mode)
    if normalizer is not None:
        if isinstance(normalizer, (int, float)) and not normalizer > 0:
            raise ValueError(f"normalizer must be > 0, got {normalizer}")
        denominator = torch.as_tensor(normalizer, dtype=numerator.dtype, device=numerator.device)
    return numerator / torch.where(denominator != 0, denominator, torch.ones_like(denominator))
