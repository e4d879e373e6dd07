"""Ratings of many players (policies, checkpoints, prompts' responders) from pairwise comparisons: Elo and
Bradley–Terry.

A comparison is (player_a, player_b, outcome) -- a tuple or a mapping with those keys -- where outcome is player_a's
score: 1 win, 0.5 tie, 0 loss (any value in [0, 1] is accepted and read as a fractional win). Both rating systems are
put on the Elo scale, 1000 + 400·log10(strength), centred so the mean player sits at 1000: a 400-point gap means
10:1 odds.

Elo depends on the order of the games; we average several seeded random orders to take most of that out.
Bradley–Terry is the order-free maximum-likelihood fit of P(i beats j) = γ_i / (γ_i + γ_j) and is the number to
trust; Elo is shown because people expect it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

__all__ = ["BradleyTerry", "bradley_terry", "elo_ratings", "ratings_table"]

ELO_SCALE = 400.0  # rating points per factor 10 in odds
ELO_BASE = 1000.0


def _parse(comparisons: Sequence[Any]) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """-> (names sorted, index of a (G,), index of b (G,), outcome for a (G,))."""
    rows: list[tuple[str, str, float]] = []
    for g, c in enumerate(comparisons):
        if isinstance(c, Mapping):
            missing = [k for k in ("player_a", "player_b", "outcome") if k not in c]
            if missing:
                raise ValueError(f"comparisons[{g}] lacks key {missing[0]!r} (need player_a, player_b, outcome)")
            a, b, s = c["player_a"], c["player_b"], c["outcome"]
        elif isinstance(c, Sequence) and not isinstance(c, str) and len(c) == 3:
            a, b, s = c
        else:
            raise ValueError(f"comparisons[{g}] must be (player_a, player_b, outcome) or a mapping, got {c!r}")
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0.0 <= float(s) <= 1.0:
            raise ValueError(f"comparisons[{g}]: outcome must be 1 (a wins), 0.5 (tie) or 0 (b wins), got {s!r}")
        if str(a) == str(b):
            raise ValueError(f"comparisons[{g}]: player {str(a)!r} cannot play itself")
        rows.append((str(a), str(b), float(s)))
    if not rows:
        raise ValueError("ratings need at least one comparison, got none")
    names = sorted({r[0] for r in rows} | {r[1] for r in rows})
    index = {n: i for i, n in enumerate(names)}
    ia = np.array([index[r[0]] for r in rows])
    ib = np.array([index[r[1]] for r in rows])
    return names, ia, ib, np.array([r[2] for r in rows], dtype=np.float64)


def elo_ratings(
    comparisons: Sequence[Any], k: float = 32.0, passes: int = 10, seed: int = 0, initial: float = ELO_BASE
) -> dict[str, float]:
    """Elo ratings (Elo 1978): sequential updates r_a += K·(s_a - E_a), E_a = 1 / (1 + 10^((r_b - r_a)/400)).

    Each of `passes` runs starts every player at `initial` and plays all games once in a seeded random order; the
    result is the mean over runs (this removes most of Elo's dependence on game order), re-centred so the mean
    rating is `initial`. Returns {name: rating}.
    """
    if k <= 0 or not math.isfinite(k):
        raise ValueError(f"k (the Elo K factor) must be a positive number, got {k}")
    if passes < 1:
        raise ValueError(f"passes must be >= 1, got {passes}")
    names, ia, ib, s = _parse(comparisons)
    rng = np.random.default_rng(seed)
    total = np.zeros(len(names))
    a_list, b_list, s_list = ia.tolist(), ib.tolist(), s.tolist()
    for _ in range(passes):
        r = [initial] * len(names)
        for g in rng.permutation(len(s_list)).tolist():  # plain floats: a scalar loop is faster than numpy here
            a, b = a_list[g], b_list[g]
            expected_a = 1.0 / (1.0 + 10.0 ** ((r[b] - r[a]) / ELO_SCALE))
            delta = k * (s_list[g] - expected_a)
            r[a] += delta
            r[b] -= delta
        total += np.asarray(r)
    mean = total / passes
    mean += initial - mean.mean()
    return {n: float(v) for n, v in zip(names, mean)}


@dataclass(frozen=True)
class BradleyTerry:
    """A fitted Bradley–Terry model: P(i beats j) = σ(θ_i - θ_j), θ = log γ centred to mean 0."""

    names: tuple[str, ...]
    theta: np.ndarray  # (P,) centred log-strengths
    se: np.ndarray  # (P,) standard errors of theta from the observed Fisher information
    iterations: int  # MM iterations run
    converged: bool

    def ratings(self, base: float = ELO_BASE) -> dict[str, float]:
        """Elo-scale ratings base + 400·log10(γ_i) (mean `base`)."""
        return {n: base + ELO_SCALE / math.log(10) * float(t) for n, t in zip(self.names, self.theta)}

    def intervals(self, confidence: float = 0.95, base: float = ELO_BASE) -> dict[str, tuple[float, float]]:
        """Normal-approximation (Wald) intervals θ ± z·se, on the Elo scale."""
        if not 0.0 < confidence < 1.0:
            raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
        z = NormalDist().inv_cdf(0.5 + confidence / 2)
        c = ELO_SCALE / math.log(10)
        return {
            n: (base + c * float(t - z * e), base + c * float(t + z * e))
            for n, t, e in zip(self.names, self.theta, self.se)
        }

    def prob(self, a: str, b: str) -> float:
        """P(a beats b) under the fitted model."""
        i, j = self.names.index(a), self.names.index(b)
        return float(1.0 / (1.0 + math.exp(-(self.theta[i] - self.theta[j]))))


def _strongly_connected(beats: np.ndarray) -> bool:
    """beats[i, j] True when i took some score from j; the MLE exists iff this digraph is strongly connected
    (Zermelo 1929; Hunter 2004, Assumption 1)."""

    def reach(adj: np.ndarray) -> bool:
        seen = np.zeros(len(adj), dtype=bool)
        seen[0], frontier = True, [0]
        while frontier:
            nxt = np.flatnonzero(adj[frontier].any(0) & ~seen)
            seen[nxt] = True
            frontier = nxt.tolist()
        return bool(seen.all())

    return reach(beats) and reach(beats.T)


def bradley_terry(
    comparisons: Sequence[Any], prior: float = 1.0, max_iter: int = 100_000, tol: float = 1e-10
) -> BradleyTerry:
    """Maximum-likelihood Bradley–Terry strengths by the MM algorithm (Hunter 2004, eq. 3):

        γ_i ← W_i / Σ_j n_ij / (γ_i + γ_j),   W_i = wins of i (ties count 1/2), n_ij = games between i and j.

    prior > 0 adds, for every player, `prior` virtual games against a fixed reference player of strength 1 that all
    end in ties. This is a mild shrinkage towards the mean that keeps the estimate finite when a player won (or lost)
    every game; with prior = 0 the plain MLE is returned and must exist (every split of the players into two groups
    has each group scoring against the other), else ValueError.
    """
    if prior < 0 or not math.isfinite(prior):
        raise ValueError(f"prior must be a finite number >= 0, got {prior}")
    names, ia, ib, s = _parse(comparisons)
    p = len(names)
    wins = np.bincount(ia, weights=s, minlength=p) + np.bincount(ib, weights=1.0 - s, minlength=p)  # (P,)
    games = np.zeros((p, p))
    np.add.at(games, (ia, ib), 1.0)
    games += games.T  # (P, P) n_ij, symmetric
    if prior == 0:
        score = np.zeros((p, p))  # score[i, j]: points i took from j
        np.add.at(score, (ia, ib), s)
        np.add.at(score, (ib, ia), 1.0 - s)
        if p > 1 and not _strongly_connected(score > 0):
            raise ValueError(
                "Bradley-Terry MLE does not exist: some group of players never scored against the rest "
                "(e.g. a player won or lost every game); use prior > 0"
            )
    w = wins + prior / 2  # virtual ties: half a win each
    gamma = np.ones(p)
    converged, it = False, 0
    while it < max_iter:
        it += 1
        denom = (games / (gamma[:, None] + gamma[None, :])).sum(1) + prior / (gamma + 1.0)
        new = w / denom
        if prior == 0:
            new /= np.exp(np.mean(np.log(new)))  # fix the free scale: geometric mean 1
        step = np.max(np.abs(np.log(new) - np.log(gamma)))
        gamma = new
        if step < tol:
            converged = True
            break
    theta = np.log(gamma)
    # Observed Fisher information of θ: H_ii = Σ_j n_ij p_ij p_ji (+ prior p_iv p_vi), H_ij = -n_ij p_ij p_ji.
    pij = 1.0 / (1.0 + np.exp(-(theta[:, None] - theta[None, :])))
    info = games * pij * pij.T
    piv = 1.0 / (1.0 + np.exp(-theta))
    hess = np.diag(info.sum(1) + prior * piv * (1 - piv)) - info
    centre = np.eye(p) - 1.0 / p  # report θ - mean(θ); its covariance is C Σ C
    if prior > 0:
        cov = centre @ np.linalg.inv(hess) @ centre
    else:
        cov = np.linalg.pinv(hess)  # Laplacian with null space 1: pinv is the covariance under Σθ = 0
    se = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    return BradleyTerry(tuple(names), theta - theta.mean(), se, it, converged)


def ratings_table(
    comparisons: Sequence[Any],
    k: float = 32.0,
    passes: int = 10,
    seed: int = 0,
    prior: float = 1.0,
    confidence: float = 0.95,
) -> list[dict[str, Any]]:
    """One row per player, best Bradley–Terry rating first:
    {name, elo, bt, bt_ci_low, bt_ci_high, games, win_rate (score share, ties 1/2)}."""
    names, ia, ib, s = _parse(comparisons)
    p = len(names)
    elo = elo_ratings(comparisons, k=k, passes=passes, seed=seed)
    bt = bradley_terry(comparisons, prior=prior)
    bt_r, bt_ci = bt.ratings(), bt.intervals(confidence)
    games = np.bincount(ia, minlength=p) + np.bincount(ib, minlength=p)
    points = np.bincount(ia, weights=s, minlength=p) + np.bincount(ib, weights=1.0 - s, minlength=p)
    rows = [
        {
            "name": n,
            "elo": elo[n],
            "bt": bt_r[n],
            "bt_ci_low": bt_ci[n][0],
            "bt_ci_high": bt_ci[n][1],
            "games": int(games[i]),
            "win_rate": float(points[i] / games[i]),
        }
        for i, n in enumerate(names)
    ]
    return sorted(rows, key=lambda r: (-r["bt"], r["name"]))
