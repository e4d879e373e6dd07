"""Reward-model quality on held-out preference pairs: accuracy, AUC, calibration, per-group (per-rater) accuracy.

Inputs are array-likes of per-pair scores (lists, numpy arrays, or torch tensors on any device); outputs are plain
Python floats / numpy arrays so they go straight into reports and JSON.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from rlhfkit.losses.reward import win_probability_given_no_tie

__all__ = [
    "CalibrationBins",
    "calibration_curve_bins",
    "expected_calibration_error",
    "pairwise_accuracy",
    "pairwise_auc",
    "pairwise_probabilities",
    "per_group_accuracy",
]


def _array(x: Any, dtype: type = np.float64) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, on any device
        # .double(), not .float(): fp64 scores must not be rounded to fp32 (bf16 / fp16 are upcast exactly)
        x = x.detach().cpu().double().numpy() if dtype is not bool else x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype).reshape(-1)


def _pairs(r_chosen: Any, r_rejected: Any, tie: Any = None) -> np.ndarray:
    """Score differences d = r_w - r_l of the non-tie pairs."""
    rc, rr = _array(r_chosen), _array(r_rejected)
    if rc.shape != rr.shape:
        raise ValueError(f"r_chosen has {rc.size} scores but r_rejected has {rr.size}")
    d = rc - rr
    if tie is not None:
        tie_arr = _array(tie, bool)
        if tie_arr.shape != d.shape:
            raise ValueError(f"tie has {tie_arr.size} entries but there are {d.size} pairs")
        d = d[~tie_arr]
    return d


def pairwise_accuracy(r_chosen: Any, r_rejected: Any, tie: Any = None) -> float:
    """Fraction of pairs where the chosen response scores higher; equal scores count 1/2; tie-labelled pairs are
    excluded. NaN when no pair is left."""
    d = _pairs(r_chosen, r_rejected, tie)
    if d.size == 0:
        return float("nan")
    return float(np.mean((d > 0) + 0.5 * (d == 0)))


def pairwise_auc(r_chosen: Any, r_rejected: Any, tie: Any = None) -> float:
    """ROC AUC of "score difference -> chosen comes first".

    Each pair enters twice, as (d, 1) and (-d, 0), so both classes exist and the AUC does not depend on which
    response was listed first; it then measures how well larger |d| separates correct from incorrect orderings.
    0.5 = chance, 1 = every pair ordered correctly. NaN when no pair is left.
    """
    d = _pairs(r_chosen, r_rejected, tie)
    if d.size == 0:
        return float("nan")
    scores = np.concatenate([d, -d])
    labels = np.concatenate([np.ones_like(d), np.zeros_like(d)])
    return float(roc_auc_score(labels, scores))


def pairwise_probabilities(
    r_chosen: Any,
    r_rejected: Any,
    tie: Any = None,
    *,
    tie_model: str = "bradley-terry",
    tie_param: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities that the chosen response wins GIVEN that the pair is not a tie, symmetrized for calibration.

    tie_model / tie_param: the likelihood the reward model was trained with (``losses.reward``). Bradley–Terry and
    Davidson (any ν) give σ(r_w - r_l); Rao–Kupper (tie_param = θ > 1, required) gives
    P_win / (P_win + P_lose) with P_win = σ(d - log θ), P_lose = σ(-d - log θ).
    Returns (probs (2N,), labels (2N,)): each non-tie pair as (P(w≻l | no tie), 1) and (P(l≻w | no tie), 0), so a
    model that is always right but overconfident is penalized the same way whichever response is listed first.
    """
    d = _pairs(r_chosen, r_rejected, tie)
    d_t = torch.from_numpy(d)  # fp64
    p = win_probability_given_no_tie(d_t, tie_model, tie_param).numpy()
    q = win_probability_given_no_tie(-d_t, tie_model, tie_param).numpy()  # = 1 - p, without rounding 1 - p near 1
    return np.concatenate([p, q]), np.concatenate([np.ones_like(p), np.zeros_like(p)])


@dataclass(frozen=True)
class CalibrationBins:
    """Reliability-diagram data; empty bins hold NaN accuracy / confidence and count 0."""

    edges: np.ndarray  # (n_bins + 1,) equal-width bin edges on [0, 1]
    centers: np.ndarray  # (n_bins,)
    accuracy: np.ndarray  # (n_bins,) fraction of label 1 in the bin
    confidence: np.ndarray  # (n_bins,) mean predicted probability in the bin
    counts: np.ndarray  # (n_bins,) int


def calibration_curve_bins(probs: Any, labels: Any, n_bins: int = 10) -> CalibrationBins:
    """Bin predicted probabilities into `n_bins` equal-width bins on [0, 1] (the last bin includes 1.0).

    probs: predicted P(label = 1), e.g. σ(r_w - r_l) from `pairwise_probabilities`; labels: 0/1 outcomes.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    p, y = _array(probs), _array(labels)
    if p.shape != y.shape:
        raise ValueError(f"probs has {p.size} entries but labels has {y.size}")
    if p.size and (p.min() < 0 or p.max() > 1):
        raise ValueError("probs must lie in [0, 1]")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.searchsorted(edges[1:-1], p, side="right")  # bin i holds [edges[i], edges[i+1]) (sklearn's rule)
    counts = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.bincount(idx, weights=y, minlength=n_bins) / counts
        confidence = np.bincount(idx, weights=p, minlength=n_bins) / counts
    return CalibrationBins(edges, (edges[:-1] + edges[1:]) / 2, accuracy, confidence, counts)


def expected_calibration_error(probs: Any, labels: Any, n_bins: int = 10) -> float:
    """ECE = Σ_b (n_b / N)·|accuracy_b - confidence_b| over equal-width bins (Naeini et al. 2015; Guo et al. 2017).
    NaN when there are no predictions."""
    bins = calibration_curve_bins(probs, labels, n_bins)
    total = bins.counts.sum()
    if total == 0:
        return float("nan")
    filled = bins.counts > 0
    gaps = np.abs(bins.accuracy[filled] - bins.confidence[filled])
    return float(np.sum(bins.counts[filled] / total * gaps))


def per_group_accuracy(
    r_chosen: Any, r_rejected: Any, groups: Sequence[Hashable], tie: Any = None
) -> dict[str, tuple[float, int]]:
    """Pairwise accuracy within each group (e.g. rater id): {str(group): (accuracy, number of non-tie pairs)}.

    Groups whose pairs are all ties map to (nan, 0). Keys are sorted for stable reports.
    """
    rc, rr = _array(r_chosen), _array(r_rejected)
    group_list = [str(g) for g in (groups.tolist() if hasattr(groups, "tolist") else groups)]
    if len(group_list) != rc.size:
        raise ValueError(f"groups has {len(group_list)} entries but there are {rc.size} pairs")
    tie_arr = np.zeros(rc.size, dtype=bool) if tie is None else _array(tie, bool)
    keys = np.asarray(group_list, dtype=object)
    out: dict[str, tuple[float, int]] = {}
    for g in sorted(set(group_list)):
        sel = keys == g
        n = int(np.sum(sel & ~tie_arr))
        out[g] = (pairwise_accuracy(rc[sel], rr[sel], tie_arr[sel]), n)
    return out
