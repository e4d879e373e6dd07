"""Simulated raters: preference labels from a gold reward, as in the gold-vs-proxy setting of Gao et al. 2022.

A gold function scores every response; each simulated rater compares two responses A and B with Bradley–Terry noise,

    P(A preferred) = sigmoid((g_A + bias + length_bias (|A| - |B|) - g_B) / temperature)   # Bradley & Terry 1952;
                                                                                            # Gao et al. 2022, sec. 2

(|A|: A's length in words; a verbosity bias, Singhal et al. 2023), then calls a tie when the gap it sees is below
``tie_margin`` and flips its answer with probability ``flip`` (label noise). Raters may carry ``attributes`` (e.g.
{"region": "EU"}) so that groups with different biases can be audited (``agreement.group_report``). The rows it returns are in the preference format (``prompt``, ``chosen``, ``rejected``, ``tie``, ``strength``,
``rater``, ``confidence``), ready for ``write_jsonl`` and the reward-model trainer.

Randomness: every rater draws from its own generator, seeded by ``(seed, sha256(rater name))``, so adding, removing or
reordering raters never changes another rater's labels.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from rlhfkit.data.schemas import DataError

log = logging.getLogger(__name__)

GoldFn = Callable[[list[Any], list[str]], Sequence[float]]
"""gold(prompts, responses) -> one score per response (higher = better)."""

PAIR_MODES = ("chain", "all")


@dataclass(frozen=True)
class RaterSpec:
    """One simulated rater.

    name: written to each row's ``rater`` field and used to seed this rater's random stream (names must be unique).
    temperature: Bradley–Terry noise, P(A) = sigmoid((g_A + bias - g_B) / temperature); 0 = always the higher gold.
    bias: added to A's (the first shown response's) gold: position bias, or a systematic bias if A is always one policy.
    tie_margin: the rater calls a tie when the gap it sees, |g_A + bias + length_bias (|A| - |B|) - g_B|, is below this.
    flip: probability of reversing the rater's choice afterwards (uniform label noise; ties are never flipped).
    length_bias: gold units added per word that A is longer than B (a verbosity bias; negative: prefers brevity).
    attributes: e.g. {"region": "EU"}: not used to label, carried for audits per rater group.
    """

    name: str
    temperature: float = 1.0
    bias: float = 0.0
    tie_margin: float = 0.0
    flip: float = 0.0
    length_bias: float = 0.0
    attributes: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"RaterSpec.name must be a non-empty string, got {self.name!r}")
        for key, low, high in (("temperature", 0.0, math.inf), ("tie_margin", 0.0, math.inf), ("flip", 0.0, 1.0)):
            value = getattr(self, key)
            if not (isinstance(value, (int, float)) and low <= value <= high) or math.isnan(value):
                raise ValueError(f"RaterSpec {self.name!r}: {key} must be in [{low}, {high}], got {value!r}")
        for key in ("bias", "length_bias"):
            value = getattr(self, key)
            if not (isinstance(value, (int, float)) and math.isfinite(value)):
                raise ValueError(f"RaterSpec {self.name!r}: {key} must be a finite number, got {value!r}")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in dict(self.attributes).items()):
            raise ValueError(
                f"RaterSpec {self.name!r}: attributes must map strings to strings, got {self.attributes!r}"
            )


def preference_probability(gap: np.ndarray, temperature: float) -> np.ndarray:
    """P(A preferred) = sigmoid(gap / temperature) (Bradley–Terry); temperature 0 is the step function (0.5 at gap 0)."""
    gap = np.asarray(gap, dtype=np.float64)
    if temperature == 0:
        return np.where(gap > 0, 1.0, np.where(gap < 0, 0.0, 0.5))
    return 0.5 * (1.0 + np.tanh(gap / (2.0 * temperature)))  # = sigmoid(gap / T), without overflow in exp


def rater_rng(seed: int, name: str) -> np.random.Generator:
    """This rater's own generator: depends on the seed and the rater's name only, never on the other raters."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    name_key = int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "little")
    return np.random.default_rng([seed, name_key])


def _gold_scores(gold: GoldFn, prompts: list[Any], responses: list[str]) -> np.ndarray:
    scores = np.asarray(list(gold(prompts, responses)), dtype=np.float64)
    if scores.shape != (len(responses),):
        raise ValueError(f"gold returned {scores.size} scores (shape {scores.shape}) for {len(responses)} responses")
    bad = np.flatnonzero(~np.isfinite(scores))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"gold returned a non-finite score {scores[i]} for response {i}: {responses[i][:60]!r}")
    return scores


def simulate_preferences(
    prompts: Sequence[Any],
    responses_a: Sequence[str],
    responses_b: Sequence[str],
    gold: GoldFn,
    raters: Sequence[RaterSpec],
    seed: int = 0,
    per_pair: int = 1,
) -> list[dict[str, Any]]:
    """Label every pair (prompts[i], responses_a[i], responses_b[i]) by every rater, ``per_pair`` times each.

    Returns preference rows ordered pair by pair, then rater, then repeat. ``strength`` is the true gold gap |g_A - g_B|
    (a margin the reward model may use); ``confidence`` is max(p, 1 - p) of the rater's Bradley–Terry probability p
    (what the rater believes, before any flip). A tie keeps A as "chosen". Pairs whose two responses are identical
    carry no preference (and the loader rejects them), so they are skipped with a logged count.
    Gold is called once, on all A responses followed by all B responses, so a batched scorer sees one batch.
    """
    prompts, responses_a, responses_b = list(prompts), list(responses_a), list(responses_b)
    if not (len(prompts) == len(responses_a) == len(responses_b)):
        raise ValueError(
            f"prompts, responses_a and responses_b must have one entry per pair, got lengths "
            f"{len(prompts)}, {len(responses_a)}, {len(responses_b)}"
        )
    if isinstance(per_pair, bool) or not isinstance(per_pair, int) or per_pair < 1:
        raise ValueError(f"per_pair must be a positive integer, got {per_pair!r}")
    raters = list(raters)
    if not raters:
        raise ValueError("raters is empty: give at least one RaterSpec")
    for r in raters:
        if not isinstance(r, RaterSpec):
            raise TypeError(f"raters must be RaterSpec objects, got {type(r).__name__}")
    names = [r.name for r in raters]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"rater names must be unique (they seed each rater's stream): {', '.join(duplicates)}")
    for i, (a, b) in enumerate(zip(responses_a, responses_b)):
        if not isinstance(a, str) or not isinstance(b, str):
            side, value = ("responses_a", a) if not isinstance(a, str) else ("responses_b", b)
            raise TypeError(f"{side}[{i}] must be a string, got {type(value).__name__}")
    n = len(prompts)
    if n == 0:
        return []

    scores = _gold_scores(gold, prompts + prompts, responses_a + responses_b)
    g_a, g_b = scores[:n], scores[n:]
    words = np.array([len(x.split()) - len(y.split()) for x, y in zip(responses_a, responses_b)], dtype=np.float64)
    keep = np.array([a != b for a, b in zip(responses_a, responses_b)])
    if not keep.all():
        log.warning("simulate_preferences: skipped %d of %d pairs with identical responses", int((~keep).sum()), n)

    # labels[r], ties[r], conf[r]: (n, per_pair) for rater r. The draws cover every pair (skipped ones too), so a
    # rater's label for pair i depends only on (seed, name, i, inputs), never on the other raters.
    labels, ties, conf = [], [], []
    for r in raters:
        rng = rater_rng(seed, r.name)
        u_choice = rng.random((n, per_pair))
        u_flip = rng.random((n, per_pair))
        seen_gap = (g_a + r.bias + r.length_bias * words - g_b)[:, None]  # (n, 1) the gap this rater perceives
        p = preference_probability(seen_gap, r.temperature)  # (n, 1) P(A preferred)
        a_wins = (u_choice < p) ^ (u_flip < r.flip)  # Bernoulli(p), then flipped with probability `flip`
        labels.append(a_wins)
        ties.append(np.broadcast_to(np.abs(seen_gap) < r.tie_margin, (n, per_pair)))
        conf.append(np.broadcast_to(np.maximum(p, 1.0 - p), (n, per_pair)))

    strength = np.abs(g_a - g_b)
    rows: list[dict[str, Any]] = []
    for i in np.flatnonzero(keep):
        for k, r in enumerate(raters):
            for j in range(per_pair):
                tie = bool(ties[k][i, j])
                a_first = tie or bool(labels[k][i, j])
                rows.append(
                    {
                        "prompt": prompts[i],
                        "chosen": responses_a[i] if a_first else responses_b[i],
                        "rejected": responses_b[i] if a_first else responses_a[i],
                        "tie": tie,
                        "strength": float(strength[i]),
                        "rater": r.name,
                        "confidence": float(conf[k][i, j]),
                    }
                )
    return rows


def simulate_dimensions(
    prompts: Sequence[Any],
    responses_a: Sequence[str],
    responses_b: Sequence[str],
    golds: Mapping[str, GoldFn],
    raters: Sequence[RaterSpec],
    seed: int = 0,
    per_pair: int = 1,
    overall: GoldFn | None = None,
) -> list[dict[str, Any]]:
    """Rubric-dimension labels: `simulate_preferences` rows (the overall choice, from `overall`, default the sum of
    the dimension golds) with ``"dimensions": {dim: "chosen" | "rejected" | "tie"}``, each dimension labelled by the
    same raters on its own gold (one gold per dimension: e.g. sentiment and brevity), relative to the row's order.

    Each (rater, dimension) draws from its own stream, seeded by the rater's name + "/" + the dimension, so the
    dimensions' label noise is independent of each other and of the overall choice. Rows are the training data of a
    multi-objective reward model (`rlhfkit rm objectives=[...]`).
    """
    if not golds:
        raise ValueError("golds is empty: give one gold function per dimension")

    def summed(ps: list[Any], rs: list[str]) -> np.ndarray:
        return sum(_gold_scores(g, ps, rs) for g in golds.values())

    rows = simulate_preferences(prompts, responses_a, responses_b, overall or summed, raters, seed, per_pair)
    for dim, gold in golds.items():
        named = [replace(r, name=f"{r.name}/{dim}") for r in raters]
        labels = simulate_preferences(prompts, responses_a, responses_b, gold, named, seed, per_pair)
        for row, lab in zip(rows, labels):  # the same pairs, raters and repeats in the same order
            won = "tie" if lab["tie"] else "chosen" if lab["chosen"] == row["chosen"] else "rejected"
            row.setdefault("dimensions", {})[dim] = won
    return rows


def pairs_from_samples(
    rows: Iterable[Mapping[str, Any]],
    mode: str = "chain",
    max_pairs: int | None = None,
    seed: int = 0,
) -> tuple[list[Any], list[str], list[str]]:
    """Sample rows ``{"prompt": ..., "responses": [r1, ..., rK]}`` (K >= 2) -> (prompts, responses_a, responses_b).

    Duplicate responses of a prompt are dropped first (keeping the first occurrence); a prompt left with fewer than two
    distinct responses gives no pairs. Then, per prompt:
    - mode "chain": (r1, r2), (r2, r3), ..., (r_{K-1}, r_K): K - 1 pairs that connect all K responses, so the labels
      still order the whole group under Bradley–Terry, at linear cost;
    - mode "all": all K (K - 1) / 2 pairs (i < j), in order.
    ``max_pairs`` caps the pairs per prompt: a seeded random subset (kept in their original order). Within a pair, A is
    the earlier sample; samples of one prompt are exchangeable, so a rater's position bias adds noise, not a side.
    """
    if mode not in PAIR_MODES:
        raise ValueError(f"mode must be one of {', '.join(PAIR_MODES)}, got {mode!r}")
    if max_pairs is not None and (isinstance(max_pairs, bool) or not isinstance(max_pairs, int) or max_pairs < 1):
        raise ValueError(f"max_pairs must be a positive integer or None, got {max_pairs!r}")
    rng = random.Random(seed)
    prompts: list[Any] = []
    out_a: list[str] = []
    out_b: list[str] = []
    for n, row in enumerate(rows):
        where = f"samples row {n}"
        if not isinstance(row, Mapping):
            raise DataError(where, f"expected an object with prompt and responses, got {type(row).__name__}")
        if row.get("prompt") is None:
            raise DataError(where, 'field "prompt" is missing')
        responses = row.get("responses")
        if not isinstance(responses, (list, tuple)):
            raise DataError(where, 'field "responses" must be a list of strings')
        if len(responses) < 2:
            raise DataError(where, f'field "responses" needs at least 2 responses, got {len(responses)}')
        for i, r in enumerate(responses):
            if not isinstance(r, str):
                raise DataError(where, f'field "responses": entry {i} must be a string, got {type(r).__name__}')
        distinct = list(dict.fromkeys(responses))  # ordered dedupe
        if mode == "chain":
            pairs = [(i, i + 1) for i in range(len(distinct) - 1)]
        else:
            pairs = [(i, j) for i in range(len(distinct)) for j in range(i + 1, len(distinct))]
        if max_pairs is not None and len(pairs) > max_pairs:
            pairs = [pairs[i] for i in sorted(rng.sample(range(len(pairs)), max_pairs))]
        for i, j in pairs:
            prompts.append(row["prompt"])
            out_a.append(distinct[i])
            out_b.append(distinct[j])
    return prompts, out_a, out_b
