"""Log-probabilities of completions under a causal LM, for the offline preference trainers (DPO family, KTO)."""

from __future__ import annotations

import torch

from rlhfkit.ops import sequence_logprobs


def completion_logps(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-probs (2B,), completion token counts (2B,)) of the completions in a collated pair batch."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return sequence_logprobs(logits[:, :-1], batch["input_ids"][:, 1:], batch["loss_mask"][:, 1:].float())
