"""rlhfkit.eval.metrics: reward-model accuracy, AUC, calibration and per-rater accuracy on hand-made scores."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rlhfkit.eval.metrics import (
    calibration_curve_bins,
    expected_calibration_error,
    pairwise_accuracy,
    pairwise_auc,
    pairwise_probabilities,
    per_group_accuracy,
)

RC = [2.0, 1.0, 0.5, 3.0, 0.0]
RR = [1.0, 1.0, 1.5, 0.0, 0.5]
# d = [1, 0, -1, 3, -0.5]: two right, one equal (1/2), two wrong


def test_pairwise_accuracy_hand_values() -> None:
    assert pairwise_accuracy(RC, RR) == pytest.approx(2.5 / 5)
    tie = [False, False, True, False, True]  # drops d = -1 and d = -0.5
    assert pairwise_accuracy(RC, RR, tie) == pytest.approx(2.5 / 3)
    assert math.isnan(pairwise_accuracy([1.0], [0.0], [True]))
    assert pairwise_accuracy(torch.tensor(RC, requires_grad=True), torch.tensor(RR)) == pytest.approx(0.5)


def test_pairwise_auc_hand_values() -> None:
    assert pairwise_auc([3.0, 2.0], [0.0, 1.0]) == 1.0  # every pair ordered correctly
    assert pairwise_auc([0.0, 1.0], [3.0, 2.0]) == 0.0
    # d = [2, -1]: scores (2,1) (-1,1) (-2,0) (1,0); positive/negative pairs: 2 beats both, -1 beats -2 only -> 3/4
    assert pairwise_auc([2.0, 0.0], [0.0, 1.0]) == pytest.approx(0.75)
    assert pairwise_auc([1.0, 1.0], [1.0, 1.0]) == pytest.approx(0.5)  # no information


def test_calibration_bins_hand_values() -> None:
    probs = [0.05, 0.15, 0.12, 0.95, 1.0, 0.5]
    labels = [0, 1, 0, 1, 1, 0]
    bins = calibration_curve_bins(probs, labels, n_bins=10)
    assert bins.counts.tolist() == [1, 2, 0, 0, 0, 1, 0, 0, 0, 2]  # 1.0 lands in the last bin, 0.5 in [0.5, 0.6)
    assert bins.centers[0] == pytest.approx(0.05) and bins.centers[-1] == pytest.approx(0.95)
    assert bins.accuracy[1] == pytest.approx(0.5) and bins.confidence[1] == pytest.approx(0.135)
    assert np.isnan(bins.accuracy[2])
    # ECE = (1/6)|0 - 0.05| + (2/6)|0.5 - 0.135| + (1/6)|0 - 0.5| + (2/6)|1 - 0.975|
    expected = (0.05 + 2 * 0.365 + 0.5 + 2 * 0.025) / 6
    assert expected_calibration_error(probs, labels, n_bins=10) == pytest.approx(expected)


def test_perfectly_calibrated_has_zero_ece() -> None:
    probs = [0.25] * 4 + [0.75] * 4
    labels = [1, 0, 0, 0, 1, 1, 1, 0]
    assert expected_calibration_error(probs, labels, n_bins=4) == pytest.approx(0.0)


def test_pairwise_probabilities_symmetrized() -> None:
    probs, labels = pairwise_probabilities([math.log(3)], [0.0])
    assert probs.tolist() == pytest.approx([0.75, 0.25]) and labels.tolist() == [1.0, 0.0]
    # one pair judged 3:1 and correct: bins [0.25] -> label 0, [0.75] -> label 1: gap 0.25 each
    assert expected_calibration_error(probs, labels) == pytest.approx(0.25)


def test_per_group_accuracy() -> None:
    groups = ["alice", "bob", "alice", "bob", "carol"]
    out = per_group_accuracy(RC, RR, groups)
    assert out == {"alice": (pytest.approx(0.5), 2), "bob": (pytest.approx(0.75), 2), "carol": (0.0, 1)}
    with_ties = per_group_accuracy(RC, RR, groups, tie=[False, False, False, False, True])
    assert with_ties["carol"][1] == 0 and math.isnan(with_ties["carol"][0])


def test_metric_errors() -> None:
    with pytest.raises(ValueError, match="r_rejected"):
        pairwise_accuracy([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        calibration_curve_bins([1.5], [1])
    with pytest.raises(ValueError, match="groups"):
        per_group_accuracy(RC, RR, ["a"])


def test_pairwise_probabilities_under_tie_models() -> None:
    d = [math.log(3), -math.log(3), 0.0]
    bt, labels = pairwise_probabilities(d, [0.0] * 3)
    assert bt.tolist() == pytest.approx([0.75, 0.25, 0.5, 0.25, 0.75, 0.5]) and labels.tolist() == [1.0] * 3 + [0.0] * 3
    # Davidson: P(win | no tie) = e^{d/2} / (e^{d/2} + e^{-d/2}) = σ(d), whatever ν
    dav, _ = pairwise_probabilities(d, [0.0] * 3, tie_model="davidson", tie_param=5.0)
    assert dav.tolist() == pytest.approx(bt.tolist(), rel=1e-12)
    # Rao–Kupper θ = 2, d = log 3 (p_w = 3, p_l = 1): P_win = 3/(3+2) = 3/5, P_lose = 1/(1+6) = 1/7,
    # P(win | no tie) = (3/5) / (3/5 + 1/7) = 21/26 (σ(d) would say 3/4); d = 0: 1/2 by symmetry
    rk, _ = pairwise_probabilities(d, [0.0] * 3, tie_model="rao-kupper", tie_param=2.0)
    assert rk.tolist() == pytest.approx([21 / 26, 5 / 26, 0.5, 5 / 26, 21 / 26, 0.5], rel=1e-12)
    # the calibration error changes accordingly: one correct 21:5 pair -> gaps |1 - 21/26| and |0 - 5/26|
    one, one_labels = pairwise_probabilities([math.log(3)], [0.0], tie_model="rao-kupper", tie_param=2.0)
    assert expected_calibration_error(one, one_labels) == pytest.approx(5 / 26)
    # tie-labelled pairs are excluded, as before
    kept, _ = pairwise_probabilities(d, [0.0] * 3, tie=[False, True, True], tie_model="rao-kupper", tie_param=2.0)
    assert kept.tolist() == pytest.approx([21 / 26, 5 / 26])
    with pytest.raises(ValueError, match="θ > 1"):
        pairwise_probabilities(d, [0.0] * 3, tie_model="rao-kupper")
    with pytest.raises(ValueError, match="unknown tie model"):
        pairwise_probabilities(d, [0.0] * 3, tie_model="thurstone")


def test_pairwise_probabilities_extreme_scores_are_finite_and_quiet() -> None:
    with np.errstate(all="raise"):  # the old 1 / (1 + exp(-d)) overflowed for d = -1000
        probs, _ = pairwise_probabilities([-1000.0, 1000.0], [0.0, 0.0])
    assert probs.tolist() == [0.0, 1.0, 1.0, 0.0]


def test_fp64_tensor_scores_are_not_rounded_to_fp32() -> None:
    # 1 + 1e-9 > 1 in fp64 but rounds to 1 in fp32, which turned a right answer into a half
    rc = torch.tensor([1.0 + 1e-9], dtype=torch.float64)
    rr = torch.tensor([1.0], dtype=torch.float64)
    assert pairwise_accuracy(rc, rr) == 1.0
    assert pairwise_accuracy(rc.bfloat16(), rr.bfloat16()) == 0.5  # lower precision still accepted
