"""rlhfkit.eval.winrate: outcome counting, Wilson bounds by hand, bootstrap against a resampling loop and Wilson."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch

from rlhfkit.eval.winrate import WinRate, wilson_interval, win_rate, win_rate_from_labels


def test_wilson_hand_values() -> None:
    # 7 of 10: p = 0.7, z² = 3.841459; centre = (0.7 + z²/20) / (1 + z²/10) = 0.644494
    # half = z / (1 + z²/10) · sqrt(0.7·0.3/10 + z²/400) = 1.416010 · 0.174939 = 0.247715
    lo, hi = wilson_interval(7, 10)
    assert lo == pytest.approx(0.396778, abs=1e-6) and hi == pytest.approx(0.892209, abs=1e-6)
    # 0 of 10: [0, z² / (n + z²)] = [0, 0.277533]; 10 of 10 mirrors it
    assert wilson_interval(0, 10) == pytest.approx((0.0, 3.841459 / 13.841459), abs=1e-6)
    # exactly, not a float remainder such as 2.8e-17
    assert wilson_interval(0, 7)[0] == 0.0 and wilson_interval(7, 7)[1] == 1.0
    assert wilson_interval(10, 10) == pytest.approx((1 - 3.841459 / 13.841459, 1.0), abs=1e-6)
    # the formula written out once more, for a fractional count (ties as half) and another confidence
    p, n, z = 5.5 / 9, 9, 1.6448536269514722  # 90%
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert wilson_interval(5.5, 9, confidence=0.90) == pytest.approx((centre - half, centre + half))


def test_counts_margin_and_ties_as_half() -> None:
    policy = [1.0, 0.5, 0.0, 0.30, 2.0]
    baseline = [0.0, 0.5, 2.0, 0.25, 1.0]  # d = [1, 0, -2, 0.05, 1]
    exact = win_rate(policy, baseline)
    assert (exact.wins, exact.ties, exact.losses, exact.n) == (3, 1, 1, 5)
    assert exact.rate == pytest.approx(3.5 / 5)
    margin = win_rate(policy, baseline, tie_margin=0.1)  # d = 0.05 is now a tie
    assert (margin.wins, margin.ties, margin.losses) == (2, 2, 1)
    assert margin.rate == pytest.approx(3 / 5)
    # the interval is Wilson's for wins + ties/2 successes out of n
    assert (margin.ci_low, margin.ci_high) == pytest.approx(wilson_interval(3.0, 5))
    assert margin.method == "wilson" and margin.confidence == 0.95
    assert margin.as_dict()["wins"] == 2


def test_policy_baseline_swap_is_antisymmetric() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=50).round(1), rng.normal(size=50).round(1)  # rounding makes some ties
    ab, ba = win_rate(a, b), win_rate(b, a)
    assert (ab.wins, ab.ties, ab.losses) == (ba.losses, ba.ties, ba.wins)
    assert ab.rate == pytest.approx(1 - ba.rate)
    assert ab.ci_low == pytest.approx(1 - ba.ci_high) and ab.ci_high == pytest.approx(1 - ba.ci_low)


def test_all_ties_is_one_half() -> None:
    w = win_rate([1.0] * 20, [1.0] * 20)
    assert (w.wins, w.ties, w.losses, w.rate) == (0, 20, 0, 0.5)
    assert w.ci_low == pytest.approx(1 - w.ci_high) and w.ci_low < 0.5 < w.ci_high  # symmetric about 1/2
    b = win_rate([1.0] * 20, [1.0] * 20, method="bootstrap")
    assert (b.rate, b.ci_low, b.ci_high) == (0.5, 0.5, 0.5)  # every resample is all ties
    assert win_rate_from_labels(["tie"] * 3).rate == 0.5


def _outcomes(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    u = rng.random(n)
    policy = np.where(u < 0.55, 1.0, np.where(u < 0.65, 0.5, 0.0))  # 55% wins, 10% ties, 35% losses
    return policy, np.full(n, 0.5)


def test_bootstrap_agrees_with_wilson_on_a_large_sample() -> None:
    policy, baseline = _outcomes(4000, seed=1)
    wil = win_rate(policy, baseline)
    boot = win_rate(policy, baseline, method="bootstrap", n_boot=4000, seed=0)
    assert boot.rate == wil.rate and boot.method == "bootstrap"
    assert boot.ci_low == pytest.approx(wil.ci_low, abs=0.005)
    assert boot.ci_high == pytest.approx(wil.ci_high, abs=0.005)
    # ties shrink the true variance, so Wilson-with-half-ties is the (slightly) wider of the two
    assert wil.ci_high - wil.ci_low >= (boot.ci_high - boot.ci_low) * 0.97


def test_bootstrap_matches_a_prompt_resampling_loop_and_is_seeded() -> None:
    policy, baseline = _outcomes(300, seed=2)
    outcome = np.where(policy > baseline, 1.0, np.where(policy < baseline, 0.0, 0.5))
    rng = np.random.default_rng(123)
    rates = [outcome[rng.integers(0, 300, 300)].mean() for _ in range(4000)]  # resample prompts, literally
    ref_lo, ref_hi = np.quantile(rates, [0.025, 0.975])
    boot = win_rate(policy, baseline, method="bootstrap", n_boot=4000, seed=7)
    assert boot.ci_low == pytest.approx(ref_lo, abs=0.01) and boot.ci_high == pytest.approx(ref_hi, abs=0.01)
    assert win_rate(policy, baseline, method="bootstrap", n_boot=4000, seed=7) == boot
    assert win_rate(policy, baseline, method="bootstrap", n_boot=200, seed=8) != boot


def test_labels_match_scores_and_accept_tensors() -> None:
    labels = ["win", "tie", "loss", " WIN ", "win"]
    from_labels = win_rate_from_labels(labels)
    from_scores = win_rate(torch.tensor([1.0, 0.0, -1.0, 1.0, 1.0]), torch.zeros(5))
    assert isinstance(from_labels, WinRate)
    assert from_labels == from_scores
    assert (from_labels.wins, from_labels.ties, from_labels.losses, from_labels.rate) == (3, 1, 1, 0.7)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: win_rate([1.0, 2.0], [1.0]), "paired"),
        (lambda: win_rate([], []), "at least one prompt"),
        (lambda: win_rate([1.0, float("nan")], [0.0, 0.0]), r"scores_policy\[1\]"),
        (lambda: win_rate([1.0], [0.0], tie_margin=-0.1), "tie_margin"),
        (lambda: win_rate([1.0], [0.0], method="exact"), "method"),
        (lambda: win_rate([1.0], [0.0], confidence=1.5), "confidence"),
        (lambda: win_rate([1.0], [0.0], method="bootstrap", n_boot=0), "n_boot"),
        (lambda: win_rate_from_labels(["win", "draw"]), r"labels\[1\] is 'draw'"),
        (lambda: win_rate_from_labels("win"), "not one string"),
        (lambda: wilson_interval(3, 0), "n >= 1"),
        (lambda: wilson_interval(11, 10), "successes"),
    ],
)
def test_validation_errors(call: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()
