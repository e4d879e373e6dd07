"""Reward over-optimization: the proxy-vs-gold curve against distance from the initial policy, its functional fit,
and plain-language alarms for reward hacking.

Gao, Schulman & Hilton 2022 ("Scaling Laws for Reward Model Overoptimization") measure distance from the initial
policy as d = sqrt(KL(π || π_init)) and find the gold reward (relative to the initial policy) follows
    best-of-n:  R(d) = d (α - β d)            (eq. 1)
    RL:         R(d) = d (α - β log d)        (eq. 2)
while the proxy (learned) reward keeps rising. The gold peak is where optimizing the proxy starts to hurt.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["GaoFit", "alarms", "build_points", "fit_gao"]

FORMS = ("rl", "bon")


def _num(value: Any, where: str) -> float:
    """A float, NaN for None; anything else that is not a number is an error naming `where`."""
    if value is None:
        return float("nan")
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{where} must be a number, got {value!r}")
    return float(value)


def build_points(evals: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Evaluation points {step?, kl, proxy (or score)?, gold?, length?} -> curve points sorted by KL, each with
    step, kl, sqrt_kl, proxy, gold, length (NaN where missing) plus any other keys passed through (e.g. round).

    sqrt_kl = sqrt(max(kl, 0)): sampled KL estimates can dip slightly below 0 near the initial policy.
    """
    points = []
    for i, e in enumerate(evals):
        if not isinstance(e, Mapping):
            raise ValueError(f"evals[{i}] must be a mapping, got {type(e).__name__}")
        if e.get("kl") is None:
            raise ValueError(f"evals[{i}] lacks 'kl'; the curve's x axis is sqrt(KL)")
        kl = _num(e["kl"], f"evals[{i}]['kl']")
        if not math.isfinite(kl):
            raise ValueError(f"evals[{i}]['kl'] is {kl}; it must be finite")
        proxy = e.get("proxy", e.get("score"))
        p = dict(e)
        p.update(
            step=e.get("step"),
            kl=kl,
            sqrt_kl=math.sqrt(max(kl, 0.0)),
            proxy=_num(proxy, f"evals[{i}]['proxy']"),
            gold=_num(e.get("gold"), f"evals[{i}]['gold']"),
            length=_num(e.get("length"), f"evals[{i}]['length']"),
        )
        points.append(p)
    # stable sort: equal KL keeps the given (step) order
    return sorted(points, key=lambda q: q["kl"])


@dataclass(frozen=True)
class GaoFit:
    """Least-squares fit of gold reward vs d = sqrt(KL) to one of Gao et al.'s forms."""

    form: str  # "rl": c + d(α - β log d); "bon": c + d(α - β d)
    alpha: float
    beta: float
    c: float  # intercept; 0 unless fitted
    r2: float  # 1 - SS_res / SS_tot (about the mean); NaN when gold is constant
    n: int  # points used

    def predict(self, sqrt_kl: Any) -> np.ndarray:
        d = np.asarray(sqrt_kl, dtype=np.float64)
        return self.c + d * (self.alpha - self.beta * _g(d, self.form))

    @property
    def peak_sqrt_kl(self) -> float:
        """d at the gold maximum: RL exp(α/β - 1), best-of-n α/(2β); NaN when β <= 0 (no peak)."""
        if self.beta <= 0:
            return float("nan")
        return math.exp(self.alpha / self.beta - 1.0) if self.form == "rl" else self.alpha / (2.0 * self.beta)


def _g(d: np.ndarray, form: str) -> np.ndarray:
    """log d (RL) or d (best-of-n); d log d -> 0 as d -> 0, so log 0 is replaced by 0 (it is multiplied by d = 0)."""
    if form == "bon":
        return d
    with np.errstate(divide="ignore"):
        return np.where(d > 0, np.log(np.where(d > 0, d, 1.0)), 0.0)


def fit_gao(sqrt_kl: Any, gold: Any, form: str = "rl", intercept: bool = False) -> GaoFit:
    """Fit α, β of Gao et al. 2022 eq. 1 (form="bon") or eq. 2 (form="rl") by linear least squares.

    The forms pass through 0 at d = 0, so `gold` should be relative to the initial policy (gold - gold at KL 0);
    intercept=True fits that offset c as well when raw gold scores are given. Non-finite pairs are dropped.
    """
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    d = np.asarray(sqrt_kl, dtype=np.float64).reshape(-1)
    y = np.asarray(gold, dtype=np.float64).reshape(-1)
    if d.shape != y.shape:
        raise ValueError(f"sqrt_kl has {d.size} values but gold has {y.size}")
    keep = np.isfinite(d) & np.isfinite(y)
    d, y = d[keep], y[keep]
    if np.any(d < 0):
        raise ValueError(f"sqrt_kl must be >= 0, got {float(d.min())}")
    cols = [d, -d * _g(d, form)]  # y = α·d - β·d·g(d) (+ c)
    if intercept:
        cols.append(np.ones_like(d))
    if d.size < len(cols):
        raise ValueError(f"fit_gao needs at least {len(cols)} finite points, got {d.size}")
    x = np.stack(cols, axis=1)
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    resid = y - x @ coef
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(resid @ resid) / ss_tot if ss_tot > 0 else float("nan")
    return GaoFit(form, float(coef[0]), float(coef[1]), float(coef[2]) if intercept else 0.0, r2, int(d.size))


def _where(p: Mapping[str, Any]) -> str:
    step = p.get("step")
    kl = f"KL {p['kl']:.2f}"
    return f"step {step} ({kl})" if step is not None else kl


def alarms(
    points: Sequence[Mapping[str, Any]],
    length_ratio_max: float | None = 2.0,
    window: int = 3,
    min_gap: float = 0.05,
    kl_max: float | None = 20.0,
    peak_drop_min: float | None = None,
) -> list[str]:
    """Reward-hacking alarms on a curve, each a plain sentence with the numbers. Points are read in the order
    given (build_points sorts them by KL); each needs "kl" and may have step, proxy, gold, length.

    - length blow-up: some point's mean length exceeds length_ratio_max × the first point's length;
    - proxy up, gold down: over `window` consecutive points the proxy rises by more than min_gap while gold falls
      by more than min_gap (the gap keeps noise from ringing it);
    - KL explosion: KL exceeds kl_max;
    - gold peak passed: gold peaked at some KL and the last point is more than peak_drop_min (default min_gap) below.
    A threshold of None turns its alarm off.
    """
    if window < 2:
        raise ValueError(f"window must be >= 2 points, got {window}")
    if min_gap < 0:
        raise ValueError(f"min_gap must be >= 0, got {min_gap}")
    if length_ratio_max is not None and length_ratio_max <= 0:
        raise ValueError(f"length_ratio_max must be > 0, got {length_ratio_max}")
    pts = []
    for i, p in enumerate(points):
        if not isinstance(p, Mapping) or p.get("kl") is None:
            raise ValueError(f"points[{i}] must be a mapping with 'kl'")
        q = {k: _num(p.get(k), f"points[{i}]['{k}']") for k in ("kl", "proxy", "gold", "length")}
        q["step"] = p.get("step")
        pts.append(q)
    out: list[str] = []

    # 1. length blow-up, measured against the first point that has a positive length
    lengths = [(i, q["length"]) for i, q in enumerate(pts) if math.isfinite(q["length"])]
    base = next(((i, v) for i, v in lengths if v > 0), None)
    if length_ratio_max is not None and base is not None:
        later = [(i, v) for i, v in lengths if i > base[0]]
        if later:
            j, lj = max(later, key=lambda t: t[1])
            ratio = lj / base[1]
            if ratio > length_ratio_max:
                out.append(
                    f"Length blow-up: mean response length grew from {base[1]:.1f} to {lj:.1f} tokens "
                    f"({ratio:.2f}x the first point, limit {length_ratio_max:.2f}x) at {_where(pts[j])}."
                )

    # 2. proxy up while gold falls, over a window of consecutive points that have both
    both = [q for q in pts if math.isfinite(q["proxy"]) and math.isfinite(q["gold"])]
    w = min(window, len(both))
    worst = None
    for s in range(len(both) - w + 1) if w >= 2 else []:
        a, b = both[s], both[s + w - 1]
        dp, dg = b["proxy"] - a["proxy"], b["gold"] - a["gold"]
        if dp > min_gap and dg < -min_gap and (worst is None or dg < worst[2]):
            worst = (a, b, dg, dp)
    if worst is not None:
        a, b, dg, dp = worst
        out.append(
            f"Proxy up, gold down: proxy reward rose by {dp:.3f} ({a['proxy']:.3f} -> {b['proxy']:.3f}) while gold "
            f"fell by {-dg:.3f} ({a['gold']:.3f} -> {b['gold']:.3f}) between {_where(a)} and {_where(b)}."
        )

    # 3. KL explosion
    finite_kl = [q for q in pts if math.isfinite(q["kl"])]
    if kl_max is not None and finite_kl:
        top = max(finite_kl, key=lambda q: q["kl"])
        if top["kl"] > kl_max:
            out.append(
                f"KL explosion: KL to the reference reached {top['kl']:.2f} at {_where(top)}, above the limit "
                f"{kl_max:.2f}."
            )

    # 4. gold peak passed: the best gold is behind us and the latest point is clearly below it
    drop_min = min_gap if peak_drop_min is None else peak_drop_min
    golds = [q for q in pts if math.isfinite(q["gold"])]
    if golds:
        peak = max(range(len(golds)), key=lambda i: golds[i]["gold"])
        last = golds[-1]
        drop = golds[peak]["gold"] - last["gold"]
        if peak < len(golds) - 1 and drop > drop_min:
            p = golds[peak]
            out.append(
                f"Gold peak passed: gold peaked at KL {p['kl']:.2f} ({_step(p)}gold {p['gold']:.3f}) then fell by "
                f"{drop:.3f} to {last['gold']:.3f} at KL {last['kl']:.2f}{_step_suffix(last)}."
            )
    return out


def _step(p: Mapping[str, Any]) -> str:
    return f"step {p['step']}, " if p.get("step") is not None else ""


def _step_suffix(p: Mapping[str, Any]) -> str:
    return f" (step {p['step']})" if p.get("step") is not None else ""
