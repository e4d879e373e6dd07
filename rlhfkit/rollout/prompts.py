"""Prompts as the rollout engine takes them: chat turns (for reward sources) and their token ids (for the policy)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


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
