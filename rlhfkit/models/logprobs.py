"""Log-probabilities of completions under a causal LM, for the offline preference trainers (DPO family, KTO)."""

from __future__ import annotations

import torch

from rlhfkit.models.head import next_token_stats
from rlhfkit.ops import masked_sum


def completion_logps(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], fused: bool = True, padding_free: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-probs (2B,), completion token counts (2B,)) of the completions in a collated pair batch.

    `fused`: from hidden states chunk by chunk (no (B, T, V) logits); `padding_free`: the rows packed into one
    (models.head.next_token_stats); both give the plain padded values to float tolerance."""
    ids = batch["input_ids"]
    stats = next_token_stats(
        model, ids, batch["attention_mask"], ids.shape[1] - 1, fused=fused, padding_free=padding_free
    )
    mask = batch["loss_mask"][:, 1:].float()  # (2B, T-1): token t+1 predicted from position t
    return masked_sum(stats.logprobs, mask, dim=-1), mask.sum(-1)
