"""rlhfkit.eval.overopt: curve points, Gao et al. 2022 fits on generated data, and each reward-hacking alarm."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from rlhfkit.eval.overopt import alarms, build_points, fit_gao


def test_build_points_sorts_by_kl_and_fills_gaps() -> None:
    evals = [
        {"step": 200, "kl": 4.0, "proxy": 1.0, "gold": 0.3, "length": 30, "round": 1},
        {"step": 0, "kl": -0.01, "score": 0.0, "gold": 0.1},  # sampled KL can dip below 0; "score" = proxy
        {"step": 100, "kl": 1.0, "proxy": 0.5, "gold": None, "length": 25},
    ]
    pts = build_points(evals)
    assert [p["step"] for p in pts] == [0, 100, 200]
    assert [p["sqrt_kl"] for p in pts] == [0.0, 1.0, 2.0]
    assert pts[0]["proxy"] == 0.0 and pts[0]["kl"] == -0.01
    assert math.isnan(pts[1]["gold"]) and math.isnan(pts[0]["length"])
    assert pts[2]["round"] == 1  # other keys pass through
    with pytest.raises(ValueError, match=r"evals\[0\] lacks 'kl'"):
        build_points([{"step": 1, "proxy": 0.2}])
    with pytest.raises(ValueError, match=r"evals\[0\]\['gold'\] must be a number"):
        build_points([{"kl": 1.0, "gold": "high"}])


@pytest.mark.parametrize(("form", "alpha", "beta"), [("rl", 1.5, 0.8), ("bon", 1.0, 0.3)])
def test_fit_recovers_known_parameters(form: str, alpha: float, beta: float) -> None:
    d = np.linspace(0.0, 4.0, 25)  # includes d = 0, where d log d -> 0
    g = np.log(np.where(d > 0, d, 1.0)) if form == "rl" else d
    gold = d * (alpha - beta * g)
    fit = fit_gao(d, gold, form=form)
    assert (fit.alpha, fit.beta, fit.c, fit.n) == pytest.approx((alpha, beta, 0.0, 25), abs=1e-9)
    assert fit.r2 == pytest.approx(1.0)
    assert fit.predict(d) == pytest.approx(gold, abs=1e-9)
    # with noise the estimates stay close and r2 drops below 1
    rng = np.random.default_rng(0)
    noisy = fit_gao(d, gold + rng.normal(0, 0.02, d.size), form=form)
    assert noisy.alpha == pytest.approx(alpha, abs=0.05) and noisy.beta == pytest.approx(beta, abs=0.05)
    assert 0.9 < noisy.r2 < 1.0
    # raw gold with an offset: the intercept soaks it up
    shifted = fit_gao(d, gold + 0.25, form=form, intercept=True)
    assert (shifted.alpha, shifted.beta, shifted.c) == pytest.approx((alpha, beta, 0.25), abs=1e-9)


def test_fit_peak_and_dropped_points() -> None:
    # RL: R'(d) = α - β log d - β = 0 at d* = exp(α/β - 1); best-of-n: d* = α / 2β
    d = np.array([0.5, 1.0, 1.5, 2.0, 3.0, float("nan")])
    rl = fit_gao(d, d * (1.0 - 0.5 * np.log(d)), form="rl")
    assert rl.n == 5 and rl.peak_sqrt_kl == pytest.approx(math.exp(1.0 / 0.5 - 1.0))
    bon = fit_gao(d, d * (1.0 - 0.25 * d), form="bon")
    assert bon.peak_sqrt_kl == pytest.approx(2.0)
    assert math.isnan(fit_gao([1.0, 2.0], [1.0, 2.0], form="bon").peak_sqrt_kl)  # β = 0: still rising
    with pytest.raises(ValueError, match="form"):
        fit_gao(d, d, form="ppo")
    with pytest.raises(ValueError, match="at least 3 finite points"):
        fit_gao([1.0, 2.0], [0.1, 0.2], intercept=True)
    with pytest.raises(ValueError, match=">= 0"):
        fit_gao([-1.0, 1.0], [0.1, 0.2])
    with pytest.raises(ValueError, match="sqrt_kl has 2 values but gold has 1"):
        fit_gao([1.0, 2.0], [0.1])


def _curve(**columns: list[Any]) -> list[dict[str, Any]]:
    n = len(next(iter(columns.values())))
    base = {"step": [100 * i for i in range(n)], "kl": [float(i) for i in range(n)]}
    base.update(columns)
    return [{k: v[i] for k, v in base.items()} for i in range(n)]


HEALTHY = _curve(
    proxy=[0.0, 0.2, 0.4, 0.6, 0.8], gold=[0.0, 0.1, 0.2, 0.25, 0.28], length=[20.0, 22.0, 24.0, 26.0, 30.0]
)


def test_healthy_curve_raises_no_alarm() -> None:
    assert alarms(HEALTHY) == []
    assert alarms([]) == []


def test_length_blow_up() -> None:
    pts = _curve(length=[20.0, 25.0, 45.0, 40.0])
    (msg,) = alarms(pts)
    assert msg.startswith("Length blow-up") and "from 20.0 to 45.0 tokens" in msg and "2.25x" in msg
    assert "step 200 (KL 2.00)" in msg
    assert alarms(pts, length_ratio_max=2.5) == []
    assert alarms(pts, length_ratio_max=None) == []
    assert alarms(_curve(length=[20.0, 25.0, 38.0, 39.0])) == []  # 1.95x: under the limit


def test_proxy_up_while_gold_falls() -> None:
    pts = _curve(proxy=[0.0, 0.2, 0.4, 0.6], gold=[0.1, 0.3, 0.25, 0.1])
    msgs = alarms(pts, peak_drop_min=1.0)  # only this alarm
    assert len(msgs) == 1
    assert msgs[0] == (
        "Proxy up, gold down: proxy reward rose by 0.400 (0.200 -> 0.600) while gold fell by 0.200 "
        "(0.300 -> 0.100) between step 100 (KL 1.00) and step 300 (KL 3.00)."
    )
    # a gold wobble smaller than min_gap is noise
    wobble = _curve(proxy=[0.0, 0.2, 0.4, 0.6], gold=[0.1, 0.3, 0.29, 0.28])
    assert alarms(wobble) == []
    # gold rising with the proxy is the healthy case
    assert alarms(_curve(proxy=[0.0, 0.2, 0.4], gold=[0.0, 0.1, 0.2])) == []


def test_kl_explosion() -> None:
    pts = _curve(kl=[0.0, 5.0, 25.0, 12.0])
    (msg,) = alarms(pts)
    assert msg == "KL explosion: KL to the reference reached 25.00 at step 200 (KL 25.00), above the limit 20.00."
    assert alarms(pts, kl_max=30.0) == []
    assert alarms(pts, kl_max=None) == []


def test_gold_peak_passed() -> None:
    pts = [
        {"kl": 0.0, "gold": 0.0},
        {"kl": 1.5, "gold": 0.3},
        {"kl": 3.1, "gold": 0.5},
        {"kl": 7.2, "gold": 0.35},
    ]
    (msg,) = alarms(pts)
    assert msg == "Gold peak passed: gold peaked at KL 3.10 (gold 0.500) then fell by 0.150 to 0.350 at KL 7.20."
    with_steps = alarms([dict(p, step=100 * i) for i, p in enumerate(pts)])
    assert with_steps[0].startswith("Gold peak passed: gold peaked at KL 3.10 (step 200, gold 0.500)")
    assert with_steps[0].endswith("at KL 7.20 (step 300).")
    assert alarms(pts, peak_drop_min=0.2) == []  # a smaller drop than asked for
    assert alarms(pts[:3]) == []  # the best point is the latest one
    # points without gold are skipped, not counted as a fall
    assert alarms(pts[:3] + [{"kl": 8.0, "gold": None}]) == []


def test_alarms_combine_on_a_hacked_run() -> None:
    evals = [
        {"step": 0, "kl": 0.0, "proxy": 0.0, "gold": 0.0, "length": 20},
        {"step": 100, "kl": 2.0, "proxy": 0.5, "gold": 0.3, "length": 24},
        {"step": 200, "kl": 9.0, "proxy": 1.0, "gold": 0.2, "length": 35},
        {"step": 300, "kl": 30.0, "proxy": 1.5, "gold": -0.1, "length": 60},
    ]
    kinds = [m.split(":")[0] for m in alarms(build_points(evals))]
    assert kinds == ["Length blow-up", "Proxy up, gold down", "KL explosion", "Gold peak passed"]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: alarms(HEALTHY, window=1), "window"),
        (lambda: alarms(HEALTHY, min_gap=-0.1), "min_gap"),
        (lambda: alarms(HEALTHY, length_ratio_max=0), "length_ratio_max"),
        (lambda: alarms([{"proxy": 1.0}]), r"points\[0\] must be a mapping with 'kl'"),
        (lambda: alarms([{"kl": 1.0, "length": "long"}]), r"points\[0\]\['length'\]"),
    ],
)
def test_validation_errors(call: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()
