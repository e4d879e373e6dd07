"""Active selection of preference pairs: send raters the pairs the reward model is least sure about.

A reward model (or an ensemble) scores both responses of each candidate pair; under Bradley–Terry the model's belief
that response a beats b is P = sigmoid(r_a - r_b) (Bradley & Terry 1952; Christiano et al. 2017, eq. 1). Strategies
turn those beliefs into one "informativeness" number per pair (higher = label it sooner):

- "random":  uniform noise (the baseline; needs no scorer).
- "margin":  0.5 - |P - 0.5|: pairs the model calls a coin flip (uncertainty sampling, Lewis & Gale 1994).
- "entropy": binary entropy H(P) in nats. For two outcomes it is a monotone function of |P - 0.5|, so it ranks pairs
             exactly as "margin" does; it is here for its scale (nats) and as the first term of BALD.
- "ensemble": std across members of P_m (query by committee, Seung et al. 1992): pairs the members disagree on,
             i.e. epistemic rather than aleatoric uncertainty (Christiano et al. 2017, sec. 2.2.4 use the same idea).
- "bald":    H(mean_m P_m) - mean_m H(P_m), the mutual information between the label and the model (Houlsby et al.
             2011, eq. 2): large when members are confident but disagree.

With several members, "margin" and "entropy" use the ensemble's predictive P = mean_m P_m. "ensemble" needs spread:
a list of 2+ scorers, one scorer with a ``members`` list (e.g. ``rlhfkit.rewards.EnsembleSource``; its members are
called one by one), or one scorer whose ``Scores.uncertainty`` is set; in the last case the std of P is the delta
method sigma'(d) * sqrt(u_a^2 + u_b^2), which treats the errors on a and b as independent (cruder than members).
"bald" needs members.

A scorer is a ``RewardSource`` (returns ``Scores``) or any callable ``score(prompts, responses)`` returning one float
per response (list, numpy array or tensor). Each scorer is called once on all 2N responses (a's then b's).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["STRATEGIES", "PairBeliefs", "Strategy", "pair_beliefs", "pair_uncertainty", "select_pairs"]

Scorer = Callable[[Sequence[Any], Sequence[str]], Any]


@dataclass
class PairBeliefs:
    """What the scorers believe about N candidate pairs."""

    p: np.ndarray
    """(M, N) P_m(a beats b) = sigmoid(r_a - r_b) for each of M members."""
    p_std: np.ndarray | None = None
    """(N,) delta-method std of P from a single scorer's Scores.uncertainty, when that is the only spread there is."""


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # = 1 / (1 + exp(-x)), without overflow


def _entropy(p: np.ndarray) -> np.ndarray:
    """Binary entropy in nats, 0 at p in {0, 1}."""
    q = np.clip(p, 1e-12, 1 - 1e-12)
    return -(q * np.log(q) + (1 - q) * np.log1p(-q))


def _random(beliefs: PairBeliefs | None, n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.random(n)


def _margin(beliefs: PairBeliefs | None, n: int, rng: np.random.Generator) -> np.ndarray:
    assert beliefs is not None
    return 0.5 - np.abs(beliefs.p.mean(0) - 0.5)


def _entropy_strategy(beliefs: PairBeliefs | None, n: int, rng: np.random.Generator) -> np.ndarray:
    assert beliefs is not None
    return _entropy(beliefs.p.mean(0))


def _ensemble(beliefs: PairBeliefs | None, n: int, rng: np.random.Generator) -> np.ndarray:
    assert beliefs is not None
    if beliefs.p.shape[0] >= 2:
        return beliefs.p.std(0)  # population std across members
    assert beliefs.p_std is not None
    return beliefs.p_std


def _bald(beliefs: PairBeliefs | None, n: int, rng: np.random.Generator) -> np.ndarray:
    assert beliefs is not None
    return _entropy(beliefs.p.mean(0)) - _entropy(beliefs.p).mean(0)  # Houlsby et al. 2011, eq. 2


@dataclass(frozen=True)
class Strategy:
    fn: Callable[[PairBeliefs | None, int, np.random.Generator], np.ndarray]
    """(beliefs, N, rng) -> (N,) informativeness, higher = label sooner."""
    needs: str
    """"nothing", "scores" (any scorer), "spread" (members or uncertainty) or "members" (2+ members)."""


STRATEGIES: dict[str, Strategy] = {
    "random": Strategy(_random, "nothing"),
    "margin": Strategy(_margin, "scores"),
    "entropy": Strategy(_entropy_strategy, "scores"),
    "ensemble": Strategy(_ensemble, "spread"),
    "bald": Strategy(_bald, "members"),
}


def _check_candidates(candidates: Sequence[Mapping[str, Any]]) -> None:
    for i, c in enumerate(candidates):
        if not isinstance(c, Mapping):
            raise ValueError(f"candidate {i} must be a dict with prompt, a and b, got {type(c).__name__}")
        for key in ("prompt", "a", "b"):
            if key not in c:
                raise ValueError(f"candidate {i} has no {key!r} field")
        for key in ("a", "b"):
            if not isinstance(c[key], str):
                raise ValueError(f"candidate {i} field {key!r} must be a string, got {type(c[key]).__name__}")


def _to_array(values: Any, n: int, who: str) -> np.ndarray:
    if hasattr(values, "detach"):  # torch tensor; keeps this module importable without torch
        values = values.detach().float().cpu().numpy()
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.shape != (n,):
        raise ValueError(f"scorer {who} returned {arr.size} scores for {n} responses")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise ValueError(f"scorer {who} returned a non-finite score for response {int(bad[0])}")
    return arr


def _score(scorer: Scorer, prompts: list[Any], responses: list[str], who: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(2N,) scores and, for a RewardSource that sets it, (2N,) uncertainty."""
    out = scorer(prompts, responses)
    n = len(responses)
    if hasattr(out, "total"):  # a Scores object
        unc = getattr(out, "uncertainty", None)
        return _to_array(out.total, n, who), None if unc is None else _to_array(unc, n, f"{who} (uncertainty)")
    return _to_array(out, n, who), None


def _members(scorers: Scorer | Sequence[Scorer] | None, strategy: str) -> list[Scorer]:
    if scorers is None:
        raise ValueError(f"strategy {strategy!r} needs scorers (a reward source, a callable, or a list of them)")
    members = list(scorers) if isinstance(scorers, (list, tuple)) else [scorers]
    if not members:
        raise ValueError(f"strategy {strategy!r}: scorers is an empty list")
    for i, m in enumerate(members):
        if not callable(m):
            raise ValueError(f"scorers[{i}] is not callable: {type(m).__name__}")
    return members


def pair_beliefs(
    candidates: Sequence[Mapping[str, Any]], scorers: Scorer | Sequence[Scorer], expand_members: bool = False
) -> PairBeliefs:
    """Score every candidate pair with every member: P_m(a beats b) = sigmoid(r_a - r_b)  (Bradley–Terry).

    ``expand_members``: a single scorer with a ``members`` list is replaced by its members (for disagreement).
    """
    _check_candidates(candidates)
    members = _members(scorers, "scores")
    if expand_members and len(members) == 1 and isinstance(getattr(members[0], "members", None), (list, tuple)):
        members = list(members[0].members)
    n = len(candidates)
    if n == 0:  # nothing to score: do not call the scorers on empty batches
        return PairBeliefs(p=np.zeros((len(members), 0)))
    prompts = [c["prompt"] for c in candidates]
    responses = [c["a"] for c in candidates] + [c["b"] for c in candidates]
    p, p_std = [], None
    for j, scorer in enumerate(members):
        who = f"{j} ({getattr(scorer, 'name', getattr(scorer, '__name__', type(scorer).__name__))})"
        r, unc = _score(scorer, prompts + prompts, responses, who)
        p.append(_sigmoid(r[:n] - r[n:]))
        if len(members) == 1 and unc is not None:
            # delta method: dP/dd = P (1 - P); Var(r_a - r_b) = u_a^2 + u_b^2 if independent
            p_std = p[0] * (1 - p[0]) * np.sqrt(unc[:n] ** 2 + unc[n:] ** 2)
    return PairBeliefs(p=np.stack(p), p_std=p_std)


def pair_uncertainty(
    candidates: Sequence[Mapping[str, Any]],
    strategy: str,
    scorers: Scorer | Sequence[Scorer] | None = None,
    seed: int = 0,
) -> np.ndarray:
    """(N,) informativeness of each candidate pair under ``strategy`` (higher = label sooner); see the module doc."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    spec = STRATEGIES[strategy]
    _check_candidates(candidates)
    rng = np.random.default_rng(seed)
    if spec.needs == "nothing":
        return spec.fn(None, len(candidates), rng)
    beliefs = pair_beliefs(candidates, _members(scorers, strategy), expand_members=spec.needs in ("spread", "members"))
    m = beliefs.p.shape[0]
    if spec.needs == "members" and m < 2:
        raise ValueError(f"strategy {strategy!r} needs 2+ ensemble members (a list of scorers), got {m}")
    if spec.needs == "spread" and m < 2 and beliefs.p_std is None:
        raise ValueError(
            f"strategy {strategy!r} needs disagreement: 2+ scorers, a scorer with members, or Scores.uncertainty"
        )
    return spec.fn(beliefs, len(candidates), rng)


def select_pairs(
    candidates: Sequence[Mapping[str, Any]],
    k: int,
    strategy: str,
    scorers: Scorer | Sequence[Scorer] | None = None,
    audit: float = 0.0,
    seed: int = 0,
) -> list[int]:
    """Indices of the ``k`` candidate pairs ``{"prompt", "a", "b"}`` to label next.

    round(audit * k) of them are uniform random picks from all candidates (an unbiased audit sample, e.g. to measure
    rater quality or model accuracy without selection bias); the rest are the most informative of the remaining pairs
    under ``strategy``. Returned order: strategy picks, most informative first, then the audit picks. Equal
    informativeness is broken by a seeded random order, so the result is a function of (inputs, seed) alone.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    n = len(candidates)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise ValueError(f"k must be a non-negative integer, got {k!r}")
    if k > n:
        raise ValueError(f"k={k} is more than the {n} candidate pairs")
    if not (isinstance(audit, (int, float)) and 0.0 <= audit <= 1.0) or math.isnan(audit):
        raise ValueError(f"audit must be a share in [0, 1], got {audit!r}")
    if k == 0:
        _check_candidates(candidates)
        return []
    score = pair_uncertainty(candidates, strategy, scorers, seed)
    rng = np.random.default_rng([seed, 1])  # its own stream: the audit draw does not shift "random"'s scores
    n_audit = int(round(audit * k))
    audit_idx = rng.choice(n, size=n_audit, replace=False) if n_audit else np.zeros(0, dtype=np.int64)
    rest = np.setdiff1d(np.arange(n), audit_idx)
    tiebreak = rng.permutation(n)
    order = rest[np.lexsort((tiebreak[rest], -score[rest]))]  # by score descending, then the seeded tie-break
    return [int(i) for i in order[: k - n_audit]] + [int(i) for i in audit_idx]
