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


def snap_weights(weights: np.ndarray, decimals: int = 2, levels: int = 0) -> np.ndarray:
    """Weights as the tag can show them: rounded to `decimals`, or with `levels` >= 2 words to the nearest of the
    grid 0, 1/(levels-1), ..., 1 (a row may then sum to 1 +- a rounding step)."""
    if levels >= 2:
        return np.round(np.asarray(weights, dtype=np.float64) * (levels - 1)) / (levels - 1)
    return np.round(np.asarray(weights, dtype=np.float64), decimals)


def draw_weights(
    n: int, k: int, alpha: float, seed: Sequence[int], decimals: int = 2, levels: int = 0, mirrored: bool = False
) -> np.ndarray:
    """(n, k) weight vectors ~ Dirichlet(alpha, ..., alpha), snapped to what the prompt shows (`snap_weights`).
    `seed` (e.g. (run seed, step, rank)) fixes the draw, so that a resumed run draws the same weights.
    `mirrored`: antithetic draws: the first ceil(n / 2) rows are drawn, row i + ceil(n / 2) is row i reversed (for two
    objectives (a, b) -> (b, a)); a symmetric Dirichlet gives the reversed vector the same law, so each row's
    distribution is unchanged, but the rows' mean is the uniform vector (exactly for even n): no objective outweighs
    the others in the draw as a whole."""
    rng = np.random.default_rng([int(s) for s in seed])
    if not mirrored:
        return snap_weights(rng.dirichlet([alpha] * k, size=n), decimals, levels)
    drawn = snap_weights(rng.dirichlet([alpha] * k, size=(n + 1) // 2), decimals, levels)
    return np.concatenate([drawn, drawn[: n // 2, ::-1]])


def format_weights(
    objectives: Sequence[str],
    weights: Sequence[float],
    template: str,
    decimals: int = 2,
    levels: Sequence[str] = (),
    entry: str = "{name}={weight}",
    separator: str = " ",
) -> str:
    """The tag the policy reads: template "[weights {weights}]" gives "[weights sentiment=0.70 brevity=0.30]"; with
    levels (words for the grid 0 .. 1, e.g. ["not", "slightly", "fairly", "very", "only"]), entry "{weight} {name}"
    and separator ", ", weights (0.75, 0.25) read "[weights very sentiment, slightly brevity]"."""
    if len(objectives) != len(weights):
        raise ValueError(f"{len(objectives)} objectives but {len(weights)} weights")

    def shown(w: float) -> str:
        if not levels:
            return f"{w:.{decimals}f}"
        return levels[min(len(levels) - 1, max(0, round(w * (len(levels) - 1))))]

    parts = (entry.replace("{name}", o).replace("{weight}", shown(w)) for o, w in zip(objectives, weights))
    return template.replace("{weights}", separator.join(parts))


def condition_messages(messages: Sequence[Any], tag: str) -> tuple[Any, ...]:
    """The chat turns with `tag` appended on its own line to the last user turn (the end of the prompt survives
    keep_end truncation, which cuts prompts from the left); without a user turn, a user turn holding the tag."""
    turns = [dict(m) for m in messages]
    for m in reversed(turns):
        if m.get("role") == "user":
            m["content"] = f"{m['content']}\n{tag}"
            return tuple(turns)
    return (*turns, {"role": "user", "content": tag})
