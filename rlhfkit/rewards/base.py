"""The one interface every reward source implements.

A source maps (prompts, responses) to one float per response. Prompts are chat turns (the `prompt` of a prompt row:
a sequence of {"role", "content"} mappings); responses are the decoded completions without the EOS token.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

Messages = Sequence[Mapping[str, str]]


@dataclass
class Scores:
    total: Tensor
    """(B,) float32 reward of each response (what the optimizer sees)."""
    parts: dict[str, Tensor] = field(default_factory=dict)
    """(B,) float32 per named component before weighting, for logging (e.g. {"helpful": ..., "length": ...})."""
    uncertainty: Tensor | None = None
    """(B,) float32 disagreement of an ensemble (std across members), or None for a single source."""
    steps: list[list[tuple[int, float]]] | None = None
    """Process sources (a process reward model, the arithmetic rule): for each response, (end, reward) of each of its
    steps, `end` = the character offset just past the step's text in the response (``data.steps.split_steps``).
    algo.reward_placement=process puts each reward on the token that ends its step. None: outcome only."""


def step_rewards(scores: Scores, responses: Sequence[str]) -> list[list[tuple[int, float]]]:
    """Every response's (end, reward) steps; an outcome-only source's score is one step ending with the response."""
    if scores.steps is not None:
        return scores.steps
    return [[(len(r), float(v))] for r, v in zip(responses, scores.total.tolist())]


class RewardSource(Protocol):
    name: str

    def __call__(self, prompts: Sequence[Messages], responses: Sequence[str]) -> Scores:
        """Score each (prompt, response); len(prompts) == len(responses)."""


def prompt_text(prompt: Messages) -> str:
    """The last user turn of a prompt (what rule functions and plain callables receive as the prompt)."""
    for m in reversed(list(prompt)):
        if m.get("role") == "user":
            return str(m.get("content", ""))
    return str(prompt[-1].get("content", "")) if len(prompt) else ""


def as_messages(prompt: Any, where: str) -> list[dict[str, str]]:
    """A prompt as chat turns: a string is one user turn."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, Sequence) and prompt and all(isinstance(m, Mapping) and "content" in m for m in prompt):
        return [{"role": str(m.get("role", "user")), "content": str(m["content"])} for m in prompt]
    raise ValueError(f"{where}: a prompt must be a string or a list of {{role, content}} messages, got {prompt!r:.60}")


def as_scores(values: Sequence[float] | Tensor, name: str) -> Scores:
    t = torch.as_tensor(values, dtype=torch.float32).flatten().cpu()
    return Scores(total=t, parts={name: t})
