"""Supervised fine-tuning: per-token negative log-likelihood of the demonstration tokens."""

from __future__ import annotations

from torch import Tensor

from rlhfkit.ops import token_logprobs

__all__ = ["sft_loss", "sft_nll"]


def sft_loss(logits: Tensor, labels: Tensor, mask: Tensor | None = None, chunk_size: int = 1024) -> Tensor:
    """Token NLL -log p(label_t), the maximum-likelihood objective of SFT (Ouyang et al. 2022, §3.5).

    Alignment is the CALLER's job: pass logits[:, :-1] (predictions for positions 1..T-1) and labels input_ids[:, 1:]
    (the tokens at those positions), so logits (B, T, V) and labels (B, T) line up index for index.
    mask: (B, T), 1 = train on this token (usually the response); None = every label in [0, V) (so -100 is skipped).
    Returns token_nll (B, T) fp32, 0 where mask is 0 or the label is ignored. Reduce with `aggregation.aggregate`.
    """
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(
            f"sft_loss expects logits (B, T, V) and labels (B, T) already shifted (logits[:, :-1], input_ids[:, 1:]); "
            f"got logits {tuple(logits.shape)} and labels {tuple(labels.shape)}"
        )
    if mask is not None and mask.shape != labels.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match labels shape {tuple(labels.shape)}")
    nll = -token_logprobs(logits, labels, chunk_size=chunk_size)  # (B, T); 0 at ignored labels
    if mask is None:
        return nll
    return nll.masked_fill(mask == 0, 0.0)


def sft_nll(token_logps: Tensor, mask: Tensor) -> Tensor:
    """Token NLL -log p(label_t) from per-token log-probs already computed (e.g. by the fused head, which never forms
    the logits): token_logps (B, T) and mask (B, T), 1 = train on this token. Returns (B, T) fp32, 0 where mask is 0."""
    if mask.shape != token_logps.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match log-probs shape {tuple(token_logps.shape)}")
    return (-token_logps.float()).masked_fill(mask == 0, 0.0)
