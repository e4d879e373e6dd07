"""rlhfkit.eval.ratings: Elo and Bradley–Terry by hand, ordering, recovery of known strengths, symmetry."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest

from rlhfkit.eval.ratings import bradley_terry, elo_ratings, ratings_table


def _simulate(theta: np.ndarray, games_per_pair: int, seed: int) -> list[tuple[str, str, float]]:
    """Round robin under Bradley–Terry: P(i beats j) = σ(θ_i - θ_j); a few ties mixed in."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(len(theta)):
        for j in range(i + 1, len(theta)):
            p = 1.0 / (1.0 + math.exp(-(theta[i] - theta[j])))
            for _ in range(games_per_pair):
                out.append((f"p{i}", f"p{j}", float(rng.random() < p)))
    return out


def test_elo_hand_values() -> None:
    assert elo_ratings([("A", "B", 1)], k=32, passes=1) == {"A": 1016.0, "B": 984.0}
    assert elo_ratings([("A", "B", 0.5)], k=32, passes=1) == {"A": 1000.0, "B": 1000.0}
    # second win: E_A = 1 / (1 + 10^(-32/400)) = 0.545922, so A gains 32 · 0.454078 = 14.5305
    two = elo_ratings([("A", "B", 1), ("A", "B", 1)], k=32, passes=1)
    assert two["A"] == pytest.approx(1030.5305, abs=1e-4) and two["B"] == pytest.approx(969.4695, abs=1e-4)
    r = elo_ratings(_simulate(np.array([0.0, 1.0, 2.0]), 20, seed=0), passes=5)
    assert sum(r.values()) / 3 == pytest.approx(1000.0)  # mean-centred


def test_bradley_terry_hand_values() -> None:
    # A beats B three times and they tie once: A scores 3.5 of 4, so σ(θ_A - θ_B) = 7/8, θ_A - θ_B = log 7
    bt = bradley_terry([("A", "B", 1)] * 3 + [("A", "B", 0.5)], prior=0)
    assert bt.converged
    assert bt.theta.tolist() == pytest.approx([math.log(7) / 2, -math.log(7) / 2])
    assert bt.prob("A", "B") == pytest.approx(7 / 8)
    r = bt.ratings()
    assert r["A"] - r["B"] == pytest.approx(400 * math.log10(7)) and r["A"] + r["B"] == pytest.approx(2000)
    # Fisher information of θ_A - θ_B is 4·(7/8)(1/8) = 7/16; under θ_A = -θ_B, var θ_A = 1/(4 · 7/16) = 4/7
    assert bt.se.tolist() == pytest.approx([math.sqrt(4 / 7)] * 2)
    lo, hi = bt.intervals()["A"]
    half = 1.959963984540054 * math.sqrt(4 / 7) * 400 / math.log(10)
    assert (lo, hi) == pytest.approx((r["A"] - half, r["A"] + half))


def test_bradley_terry_solves_the_likelihood_equations() -> None:
    comps = _simulate(np.array([0.0, 0.4, -0.3, 1.0, 0.2]), 15, seed=3)
    comps += [("p0", "p3", 0.5), ("p2", "p4", 0.5)]
    bt = bradley_terry(comps, prior=0)
    # at the MLE each player's points equal their expected points: W_i = Σ_games σ(θ_i - θ_opponent)
    idx = {n: i for i, n in enumerate(bt.names)}
    scored, expected = np.zeros(5), np.zeros(5)
    for a, b, s in comps:
        p = bt.prob(a, b)
        scored[idx[a]] += s
        scored[idx[b]] += 1 - s
        expected[idx[a]] += p
        expected[idx[b]] += 1 - p
    assert scored == pytest.approx(expected, abs=1e-7)


def test_strictly_ordered_players_get_ordered_ratings() -> None:
    names = ["e", "d", "c", "b", "a"]  # "a" is best: the later name always beats the earlier one
    comps = [(names[j], names[i], 1.0) for i in range(5) for j in range(i + 1, 5) for _ in range(3)]
    table = ratings_table(comps)
    assert [row["name"] for row in table] == ["a", "b", "c", "d", "e"]
    elo = [row["elo"] for row in table]
    bt = [row["bt"] for row in table]
    assert all(x > y for x, y in zip(elo, elo[1:])) and all(x > y for x, y in zip(bt, bt[1:]))
    assert [row["win_rate"] for row in table] == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert all(row["games"] == 12 for row in table)
    assert all(row["bt_ci_low"] < row["bt"] < row["bt_ci_high"] for row in table)
    # the plain MLE is infinite here: refused, with the way out named
    with pytest.raises(ValueError, match="prior > 0"):
        bradley_terry(comps, prior=0)


def test_bradley_terry_recovers_known_strengths() -> None:
    theta = np.array([-1.0, -0.5, 0.0, 0.3, 0.7, 0.5])
    theta -= theta.mean()
    bt = bradley_terry(_simulate(theta, 300, seed=0), prior=0)
    err = bt.theta - theta[[bt.names.index(f"p{i}") for i in range(6)]]
    assert np.max(np.abs(err)) < 0.2
    assert np.all(np.abs(err) < 3 * bt.se)  # the standard errors are honest
    assert np.all((bt.se > 0.03) & (bt.se < 0.1))  # ~1/sqrt(games·p(1-p)) with 1500 games each
    # Elo (order-dependent, noisier) still ranks the clearly separated players the same way
    elo = elo_ratings(_simulate(theta, 300, seed=0), k=8, passes=10)
    assert elo["p0"] < elo["p1"] < elo["p2"] < elo["p4"]


def test_symmetry() -> None:
    comps = _simulate(np.array([0.0, 0.5, -0.5, 1.0]), 10, seed=5)
    flipped = [(b, a, 1.0 - s) for a, b, s in comps]  # the same games, written from the other side
    assert bradley_terry(flipped).ratings() == pytest.approx(bradley_terry(comps).ratings(), abs=1e-8)
    assert elo_ratings(flipped, seed=3) == pytest.approx(elo_ratings(comps, seed=3), abs=1e-9)
    # mirror records give ratings mirrored about 1000
    mirror = [("A", "B", 1), ("A", "B", 1), ("A", "B", 0), ("B", "C", 1), ("C", "B", 0), ("B", "C", 0)]
    r = bradley_terry(mirror).ratings()
    assert r["A"] - 1000 == pytest.approx(1000 - r["C"]) and r["B"] == pytest.approx(1000)
    # mappings and tuples are the same input
    as_dicts = [{"player_a": a, "player_b": b, "outcome": s} for a, b, s in comps]
    assert ratings_table(as_dicts) == ratings_table(comps)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: ratings_table([]), "at least one comparison"),
        (lambda: elo_ratings([("A", "A", 1)]), r"comparisons\[0\].*itself"),
        (lambda: elo_ratings([("A", "B", 1), ("A", "B", 2)]), r"comparisons\[1\]: outcome"),
        (lambda: elo_ratings([("A", "B", "win")]), "outcome"),
        (lambda: elo_ratings([("A", "B")]), r"comparisons\[0\] must be"),
        (lambda: elo_ratings([{"player_a": "A", "outcome": 1}]), "lacks key 'player_b'"),
        (lambda: elo_ratings([("A", "B", 1)], k=0), "K factor"),
        (lambda: elo_ratings([("A", "B", 1)], passes=0), "passes"),
        (lambda: bradley_terry([("A", "B", 1)], prior=-1), "prior"),
    ],
)
def test_validation_errors(call: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()
