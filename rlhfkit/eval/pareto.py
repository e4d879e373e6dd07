"""Pareto fronts of multi-objective results: which points no other point beats on every objective, the 2-D
hypervolume they enclose, and the weight vectors a sweep visits. numpy only."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np


def pareto_mask(points: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """(N,) bool: point i is non-dominated (every objective is maximized): no other point is >= on every objective and
    > on one. Equal points do not dominate each other."""
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"points must be (N, K), got shape {p.shape}")
    geq = (p[:, None, :] >= p[None, :, :]).all(-1)  # geq[j, i]: j >= i everywhere
    gt = (p[:, None, :] > p[None, :, :]).any(-1)
    dominated = (geq & gt).any(0)
    return ~dominated


def hypervolume_2d(points: Sequence[Sequence[float]] | np.ndarray, reference: Sequence[float]) -> float:
    """Area dominated by the points and bounded below by `reference` (two maximized objectives; Zitzler & Thiele
    1999): the usual one-number summary of a front; points not above the reference on both objectives add nothing."""
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 2:
        raise ValueError(f"hypervolume_2d needs (N, 2) points, got shape {p.shape}")
    ref = np.asarray(reference, dtype=np.float64)
    p = p[(p > ref).all(-1)]
    if not len(p):
        return 0.0
    p = p[np.argsort(-p[:, 0])]  # by the first objective, descending
    area, best_y = 0.0, ref[1]
    for x, y in p:
        if y > best_y:
            area += (x - ref[0]) * (y - best_y)
            best_y = y
    return float(area)


def weight_grid(k: int, steps: int) -> list[tuple[float, ...]]:
    """Every weight vector on the simplex with coordinates in {0, 1/steps, ..., 1} (for k = 2: steps + 1 vectors from
    (1, 0) to (0, 1)), in lexicographic order of the first weight descending."""
    if k < 2 or steps < 1:
        raise ValueError(f"weight_grid needs k >= 2 and steps >= 1, got k={k}, steps={steps}")
    out = [
        tuple(round(c / steps, 6) for c in (*combo, steps - sum(combo)))
        for combo in itertools.product(range(steps, -1, -1), repeat=k - 1)
        if sum(combo) <= steps
    ]
    return out
