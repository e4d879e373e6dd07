"""Prompts as the rollout engine takes them: chat turns (for reward sources) and their token ids (for the policy); the
preference-vector conditioning that writes objective weights into a prompt."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Prompt:
    messages: tuple[Any, ...]
    """The chat turns (what reward sources see)."""
    ids: list[int]
    """Tokenized, ending with the generation prompt (what the policy sees)."""
    domain: str | None = None
    """The row's optional domain tag (per-domain KL coefficients and metrics)."""


def encode_prompts(examples: Sequence[Any], formatter: Any) -> list[Prompt]:
    """Prompt rows -> Prompts; rows the truncation policy drops are skipped (the formatter counts them)."""
    out = []
    for ex in examples:
        ids = formatter.encode_prompt(ex.prompt)
        if ids is not None:
            out.append(Prompt(tuple(ex.prompt), ids, getattr(ex, "domain", None)))
    return out


# ----------------------------------------------------------------------------------------------------------------------
# preference-vector conditioning: objective weights written into the prompt


def draw_weights(n: int, k: int, alpha: float, seed: Sequence[int], decimals: int = 2) -> np.ndarray:
    """(n, k) weight vectors ~ Dirichlet(alpha, ..., alpha), rounded to `decimals` (so they are exactly what the prompt
    shows; a row may then sum to 1 +- k * 10^-decimals). `seed` (e.g. (run seed, step, rank)) fixes the draw, so that a
    resumed run draws the same weights."""
    rng = np.random.default_rng([int(s) for s in seed])
    return np.round(rng.dirichlet([alpha] * k, size=n), decimals)


def format_weights(objectives: Sequence[str], weights: Sequence[float], template: str, decimals: int = 2) -> str:
    """The tag the policy reads, e.g. "[weights sentiment=0.70 brevity=0.30]" for template "[weights {weights}]"."""
    if len(objectives) != len(weights):
        raise ValueError(f"{len(objectives)} objectives but {len(weights)} weights")
    return template.replace("{weights}", " ".join(f"{o}={w:.{decimals}f}" for o, w in zip(objectives, weights)))


def condition_messages(messages: Sequence[Any], tag: str) -> tuple[Any, ...]:
    """The chat turns with `tag` appended on its own line to the last user turn (the end of the prompt survives
    keep_end truncation, which cuts prompts from the left); without a user turn, a user turn holding the tag."""
    turns = [dict(m) for m in messages]
    for m in reversed(turns):
        if m.get("role") == "user":
            m["content"] = f"{m['content']}\n{tag}"
            return tuple(turns)
    return (*turns, {"role": "user", "content": tag})
