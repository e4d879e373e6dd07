"""Process rewards on tokens: each step's reward on the token that ends the step (algo.reward_placement=process).

A process source returns, per response, (end, reward) pairs with `end` a character offset in the response text
(``Scores.steps``); here they become a (B, R) tensor over the response tokens the policy generated, with the step ends
found in the tokenizer's own decoding of those tokens (``rlhfkit.data.steps``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from rlhfkit.data.steps import step_end_tokens, token_char_ends
from rlhfkit.rewards.base import Scores, step_rewards

__all__ = ["place_step_rewards", "process_token_scores"]


def place_step_rewards(
    steps: Sequence[Sequence[tuple[int, float]]], response_ids: Tensor, response_mask: Tensor, tokenizer: Any
) -> tuple[Tensor, Tensor]:
    """(token_scores (B, R) float32, step_mask (B, R) float32) for B responses.

    steps[i]: (end, reward) of response i's steps, ends as character offsets in the response's decoded text (special
    tokens skipped, as rollout texts are); rewards of steps ending on the same token add up. Each row's last valid
    token always ends a step (reward 0 if none ends there), so every generated token belongs to a step.
    """
    if len(steps) != response_ids.shape[0]:
        raise ValueError(f"{len(steps)} step lists for {response_ids.shape[0]} responses")
    scores = torch.zeros(response_mask.shape, dtype=torch.float32)
    ends = torch.zeros(response_mask.shape, dtype=torch.float32)
    lengths = response_mask.sum(-1).long().tolist()
    for i, (row, n) in enumerate(zip(steps, lengths)):
        if n == 0:
            continue
        ids = response_ids[i, :n].tolist()
        text = tokenizer.decode(ids, skip_special_tokens=True)
        char_ends = token_char_ends(tokenizer, ids)
        tokens = step_end_tokens(text, char_ends, [e for e, _ in row], n)
        for t, (_, reward) in zip(tokens, row):
            scores[i, t] += float(reward)
            ends[i, t] = 1.0
        ends[i, n - 1] = 1.0
    return scores.to(response_mask.device), ends.to(response_mask.device)


def process_token_scores(
    scored: Scores, texts: Sequence[str], response_ids: Tensor, response_mask: Tensor, tokenizer: Any, last: Tensor
) -> tuple[Tensor, Tensor]:
    """(token_scores, step_mask) of a rollout: the sources' step rewards at their end tokens (an outcome-only source's
    score on the last token), plus `last` (B,) on each row's last token (e.g. a missing-EOS penalty)."""
    scores, ends = place_step_rewards(step_rewards(scored, texts), response_ids, response_mask, tokenizer)
    rows = torch.arange(len(texts), device=scores.device)
    final = (response_mask.sum(-1).long() - 1).clamp(min=0)
    scores[rows, final] += last.to(scores.device).float() * (response_mask.sum(-1) > 0)
    return scores, ends
