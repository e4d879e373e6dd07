"""Win rate of a policy against a baseline, with a confidence interval.

Each prompt yields one outcome for the policy: win (1), tie (1/2) or loss (0), either from paired per-prompt scores
(a reward model or gold scorer applied to both responses) or from a judge's verdicts. The win rate is the mean outcome,
(wins + ties / 2) / n.

Ties count as half a win, in the estimate and in the interval. The Wilson interval is computed as if there were
wins + ties / 2 successes in n Bernoulli trials. That is conservative: the variance of an outcome in {0, 1/2, 1} is
p(1 - p) - t / (4n) with t ties, never more than the Bernoulli variance p(1 - p), so the interval is at least as
wide as it needs to be (exact when there are no ties). The bootstrap option resamples prompts and needs no such
assumption.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

__all__ = ["WinRate", "wilson_interval", "win_rate", "win_rate_from_labels"]

METHODS = ("wilson", "bootstrap")
_LABEL_VALUES = {"win": 1.0, "tie": 0.5, "loss": 0.0}


@dataclass(frozen=True)
class WinRate:
    """Outcome counts over n prompts, the win rate and its confidence interval."""

    wins: int
    ties: int
    losses: int
    n: int
    rate: float  # (wins + ties / 2) / n
    ci_low: float
    ci_high: float
    method: str  # "wilson" or "bootstrap"
    confidence: float = 0.95

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _z(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)  # two-sided: 1.959964 for 0.95


def wilson_interval(successes: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson 1927; Brown, Cai & DasGupta 2001, eq. 4).

    centre = (p + z²/2n) / (1 + z²/n),  half width = z / (1 + z²/n) · sqrt(p(1 - p)/n + z²/4n²),  p = successes / n.
    `successes` may be fractional (ties counted as half).
    """
    if n <= 0:
        raise ValueError(f"wilson_interval needs n >= 1 trials, got {n}")
    if not 0.0 <= successes <= n:
        raise ValueError(f"successes must lie in [0, n={n}], got {successes}")
    z = _z(confidence)
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exact ends: the float difference leaves ~1e-17
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def _from_outcomes(outcomes: np.ndarray, method: str, confidence: float, n_boot: int, seed: int) -> WinRate:
    """outcomes: (n,) per-prompt values in {0, 0.5, 1}."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    n = int(outcomes.size)
    if n == 0:
        raise ValueError("win rate needs at least one prompt, got none")
    wins, ties = int(np.sum(outcomes == 1.0)), int(np.sum(outcomes == 0.5))
    losses = n - wins - ties
    rate = (wins + 0.5 * ties) / n
    if method == "wilson":
        lo, hi = wilson_interval(wins + 0.5 * ties, n, confidence)
    else:
        if n_boot < 1:
            raise ValueError(f"n_boot must be >= 1, got {n_boot}")
        _z(confidence)  # validates confidence
        # Resampling n prompts with replacement only changes how many wins/ties/losses are drawn, so drawing the
        # counts from Multinomial(n, observed frequencies) is the same paired bootstrap in O(n_boot) memory.
        rng = np.random.default_rng(seed)
        counts = rng.multinomial(n, [wins / n, ties / n, losses / n], size=n_boot)  # (n_boot, 3)
        rates = (counts[:, 0] + 0.5 * counts[:, 1]) / n
        alpha = 1.0 - confidence
        lo, hi = (float(q) for q in np.quantile(rates, [alpha / 2, 1 - alpha / 2]))  # percentile interval
    return WinRate(wins, ties, losses, n, rate, float(lo), float(hi), method, confidence)


def _scores(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, without importing torch here
        x = x.detach().cpu().double().numpy()
    arr = np.asarray(x, dtype=np.float64).reshape(-1)
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise ValueError(f"{name}[{bad[0]}] is {arr[bad[0]]}; scores must be finite")
    return arr


def win_rate(
    scores_policy: Any,
    scores_baseline: Any,
    tie_margin: float = 0.0,
    method: str = "wilson",
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> WinRate:
    """Win rate of the policy from paired per-prompt scores (element i of both arrays scores prompt i).

    The policy wins prompt i when s_policy - s_baseline > tie_margin, loses when it is < -tie_margin, ties otherwise
    (tie_margin = 0 makes only exactly equal scores ties). method "wilson" (default) or "bootstrap" (seeded, n_boot
    resamples of the prompts, percentile interval).
    """
    sp, sb = _scores(scores_policy, "scores_policy"), _scores(scores_baseline, "scores_baseline")
    if sp.shape != sb.shape:
        raise ValueError(f"scores_policy has {sp.size} scores but scores_baseline has {sb.size}; they must be paired")
    if not (math.isfinite(tie_margin) and tie_margin >= 0):
        raise ValueError(f"tie_margin must be a finite number >= 0, got {tie_margin}")
    d = sp - sb
    outcomes = np.where(d > tie_margin, 1.0, np.where(d < -tie_margin, 0.0, 0.5))
    return _from_outcomes(outcomes, method, confidence, n_boot, seed)


def win_rate_from_labels(
    labels: Sequence[str], method: str = "wilson", confidence: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> WinRate:
    """Win rate from a judge's per-prompt verdicts "win" / "tie" / "loss" (from the policy's side; case and
    surrounding spaces ignored)."""
    if isinstance(labels, str):
        raise ValueError("labels must be a sequence of 'win'/'tie'/'loss' strings, not one string")
    values = []
    for i, lab in enumerate(labels):
        key = lab.strip().lower() if isinstance(lab, str) else None
        if key not in _LABEL_VALUES:
            raise ValueError(f"labels[{i}] is {lab!r}; expected 'win', 'tie' or 'loss'")
        values.append(_LABEL_VALUES[key])
    return _from_outcomes(np.asarray(values, dtype=np.float64), method, confidence, n_boot, seed)
