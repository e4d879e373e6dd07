"""Diversity and length of a set of responses, and how they drift during training.

A policy that over-optimizes a reward model often collapses onto a few phrases (distinct-n falls) and grows or
shrinks its answers (length drifts); both are cheap to measure on the evaluation samples.

Tokens are whitespace-separated words by default; pass `tokenizer` to count model tokens instead: a callable
text -> tokens, or a Hugging Face tokenizer (its `encode(text, add_special_tokens=False)` is used).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["distinct_n", "diversity_stats", "drift", "length_stats", "tokenize"]

Tokenizer = Any  # a callable text -> tokens, or an object with .encode (Hugging Face tokenizer)


def tokenize(text: str, tokenizer: Tokenizer | None = None) -> list[Any]:
    """Tokens of one text: whitespace words, or the tokenizer's tokens / ids."""
    if not isinstance(text, str):
        raise ValueError(f"expected a response string, got {type(text).__name__}")
    if tokenizer is None:
        return text.split()
    if hasattr(tokenizer, "encode"):  # Hugging Face tokenizer: ids without BOS/EOS, which would be shared n-grams
        return list(tokenizer.encode(text, add_special_tokens=False))
    if callable(tokenizer):
        return list(tokenizer(text))
    raise ValueError(f"tokenizer must be None, a callable or have .encode, got {type(tokenizer).__name__}")


def _token_lists(texts: Sequence[str], tokenizer: Tokenizer | None) -> list[list[Any]]:
    if isinstance(texts, str):
        raise ValueError("texts must be a sequence of responses, not one string")
    out = []
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ValueError(f"texts[{i}] is a {type(t).__name__}, expected a string")
        out.append(tokenize(t, tokenizer))
    return out


def _distinct(tokens: list[list[Any]], n: int) -> float:
    seen: set[tuple[Any, ...]] = set()
    total = 0
    for toks in tokens:
        grams = [tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)]
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else float("nan")


def distinct_n(texts: Sequence[str], n: int, tokenizer: Tokenizer | None = None) -> float:
    """distinct-n (Li et al. 2016): unique n-grams / total n-grams, pooled over all responses (n-grams do not cross
    response boundaries). 1.0 = no n-gram repeats anywhere; NaN when no response has n tokens."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return _distinct(_token_lists(texts, tokenizer), n)


def length_stats(texts: Sequence[str], tokenizer: Tokenizer | None = None) -> dict[str, float]:
    """{mean, median, min, max} response length in tokens; NaN for an empty set."""
    lengths = np.array([len(t) for t in _token_lists(texts, tokenizer)], dtype=np.float64)
    if lengths.size == 0:
        return {k: float("nan") for k in ("mean", "median", "min", "max")}
    return {
        "mean": float(lengths.mean()),
        "median": float(np.median(lengths)),
        "min": float(lengths.min()),
        "max": float(lengths.max()),
    }


def diversity_stats(texts: Sequence[str], tokenizer: Tokenizer | None = None) -> dict[str, float]:
    """{n, mean_length, median_length, distinct_1, distinct_2} of a set of responses."""
    tokens = _token_lists(texts, tokenizer)
    lengths = np.array([len(t) for t in tokens], dtype=np.float64)
    return {
        "n": float(len(tokens)),
        "mean_length": float(lengths.mean()) if lengths.size else float("nan"),
        "median_length": float(np.median(lengths)) if lengths.size else float("nan"),
        "distinct_1": _distinct(tokens, 1),
        "distinct_2": _distinct(tokens, 2),
    }


def drift(
    before_texts: Sequence[str], after_texts: Sequence[str], tokenizer: Tokenizer | None = None
) -> dict[str, float]:
    """How responses changed between two policies (e.g. SFT vs. after PPO), on the same or comparable prompts.

    Returns length_before, length_after (mean tokens), length_ratio (after / before; NaN when before is 0),
    distinct_1_before / _after / _change and distinct_2_before / _after / _change (change = after - before).
    """
    b, a = diversity_stats(before_texts, tokenizer), diversity_stats(after_texts, tokenizer)
    lb, la = b["mean_length"], a["mean_length"]
    out = {
        "length_before": lb,
        "length_after": la,
        "length_ratio": la / lb if lb and math.isfinite(lb) else float("nan"),
    }
    for key in ("distinct_1", "distinct_2"):
        out[f"{key}_before"] = b[key]
        out[f"{key}_after"] = a[key]
        out[f"{key}_change"] = a[key] - b[key]
    return out
