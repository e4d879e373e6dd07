"""Active pair selection: hand-built scorers where the right pairs are known, strategy values vs hand formulas,
audit share, seeding, and errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rlhfkit.feedback.active import STRATEGIES, pair_uncertainty, select_pairs
from rlhfkit.rewards.base import Scores, as_scores
from rlhfkit.rewards.sources import EnsembleSource


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def entropy(p: float) -> float:
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


def table_scorer(table: dict[str, float]):
    """A plain callable: response text -> score from a table (list of floats)."""

    def score(prompts, responses):
        assert len(prompts) == len(responses)
        return [table[r] for r in responses]

    return score


class TableSource:
    """A RewardSource: Scores with a (B,) tensor and optional uncertainty from tables."""

    def __init__(self, table: dict[str, float], unc: dict[str, float] | None = None, name: str = "table") -> None:
        self.table, self.unc, self.name, self.calls = table, unc, name, []

    def __call__(self, prompts, responses) -> Scores:
        self.calls.append(len(responses))
        s = as_scores([self.table[r] for r in responses], self.name)
        if self.unc is not None:
            s.uncertainty = torch.tensor([self.unc[r] for r in responses])
        return s


def pairs_with_gaps(gaps: list[float]):
    """Candidates i = (a_i, b_i) with r(a_i) - r(b_i) = gaps[i]."""
    table, cands = {}, []
    for i, g in enumerate(gaps):
        table[f"a{i}"], table[f"b{i}"] = 0.3 * i + g, 0.3 * i
        cands.append({"prompt": f"p{i}", "a": f"a{i}", "b": f"b{i}"})
    return cands, table


GAPS = [3.0, 0.1, -0.2, 2.0, 0.0, -4.0, 1.0]


def test_margin_picks_the_coin_flips_and_matches_hand_values() -> None:
    cands, table = pairs_with_gaps(GAPS)
    u = pair_uncertainty(cands, "margin", table_scorer(table))
    assert u == pytest.approx([0.5 - abs(sigmoid(g) - 0.5) for g in GAPS], abs=1e-12)
    assert select_pairs(cands, 3, "margin", table_scorer(table)) == [4, 1, 2]  # |gap| 0, 0.1, 0.2


def test_entropy_values_and_same_ranking_as_margin() -> None:
    cands, table = pairs_with_gaps(GAPS)
    u = pair_uncertainty(cands, "entropy", table_scorer(table))
    assert u == pytest.approx([entropy(sigmoid(g)) for g in GAPS], abs=1e-12)
    assert u[4] == pytest.approx(math.log(2))
    for k in range(len(GAPS) + 1):
        assert select_pairs(cands, k, "entropy", table_scorer(table)) == select_pairs(
            cands, k, "margin", table_scorer(table)
        )


def test_reward_source_and_plain_callable_agree() -> None:
    cands, table = pairs_with_gaps(GAPS)
    src = TableSource(table)
    numpy_fn = lambda p, r: np.array([table[x] for x in r])  # noqa: E731
    tensor_fn = lambda p, r: torch.tensor([table[x] for x in r])  # noqa: E731
    ref = pair_uncertainty(cands, "margin", table_scorer(table))
    for scorer in (src, numpy_fn, tensor_fn):
        assert pair_uncertainty(cands, "margin", scorer) == pytest.approx(ref, abs=1e-6)
    assert src.calls == [2 * len(GAPS)]  # one call on all a's then b's


def ensemble_members():
    """Two members agree on pairs 0, 1, 3 (both confident or both unsure) and disagree confidently on pairs 2, 4."""
    cands, t1 = pairs_with_gaps([3.0, 0.0, 4.0, -2.0, -3.0])
    _, t2 = pairs_with_gaps([3.0, 0.0, -4.0, -2.0, 3.0])
    return cands, t1, t2


def test_ensemble_std_and_bald_pick_disagreement_margin_does_not() -> None:
    cands, t1, t2 = ensemble_members()
    members = [table_scorer(t1), table_scorer(t2)]
    std = pair_uncertainty(cands, "ensemble", members)
    p1 = np.array([sigmoid(g) for g in [3.0, 0.0, 4.0, -2.0, -3.0]])
    p2 = np.array([sigmoid(g) for g in [3.0, 0.0, -4.0, -2.0, 3.0]])
    assert std == pytest.approx(np.abs(p1 - p2) / 2, abs=1e-12)  # population std of two values
    bald = pair_uncertainty(cands, "bald", members)
    hand = [entropy((a + b) / 2) - (entropy(a) + entropy(b)) / 2 for a, b in zip(p1, p2)]
    assert bald == pytest.approx(hand, abs=1e-12)
    assert bald[1] == pytest.approx(0.0, abs=1e-12)  # both members say 0.5: all aleatoric, nothing to learn
    assert sorted(select_pairs(cands, 2, "ensemble", members)) == [2, 4]
    assert sorted(select_pairs(cands, 2, "bald", members)) == [2, 4]
    # the mean prediction is 0.5 on pairs 1, 2 and 4: margin ranks them equal, ahead of the agreed pairs
    assert sorted(select_pairs(cands, 3, "margin", members)) == [1, 2, 4]


def test_ensemble_source_members_are_expanded() -> None:
    cands, t1, t2 = ensemble_members()
    ens = EnsembleSource([TableSource(t1, name="m1"), TableSource(t2, name="m2")])
    ref = pair_uncertainty(cands, "ensemble", [table_scorer(t1), table_scorer(t2)])
    assert pair_uncertainty(cands, "ensemble", ens) == pytest.approx(ref, abs=1e-6)
    assert pair_uncertainty(cands, "bald", ens) == pytest.approx(
        pair_uncertainty(cands, "bald", [table_scorer(t1), table_scorer(t2)]), abs=1e-6
    )


def test_single_source_uncertainty_uses_the_delta_method() -> None:
    cands, table = pairs_with_gaps([0.0, 2.0, 0.0])
    unc = {"a0": 0.1, "b0": 0.1, "a1": 1.0, "b1": 2.0, "a2": 3.0, "b2": 4.0}
    u = pair_uncertainty(cands, "ensemble", TableSource(table, unc))
    hand = [sigmoid(g) * (1 - sigmoid(g)) * math.hypot(unc[f"a{i}"], unc[f"b{i}"]) for i, g in enumerate([0, 2, 0])]
    assert u == pytest.approx(hand, rel=1e-6)
    assert select_pairs(cands, 1, "ensemble", TableSource(table, unc)) == [2]


def test_vectorized_matches_loop_on_random_ensemble() -> None:
    rng = np.random.default_rng(0)
    n, m = 40, 4
    cands = [{"prompt": "p", "a": f"a{i}", "b": f"b{i}"} for i in range(n)]
    tables = [{f"{s}{i}": float(rng.normal(scale=2)) for i in range(n) for s in "ab"} for _ in range(m)]
    members = [table_scorer(t) for t in tables]
    for strategy in ("margin", "entropy", "ensemble", "bald"):
        got = pair_uncertainty(cands, strategy, members)
        for i in range(n):
            ps = [sigmoid(t[f"a{i}"] - t[f"b{i}"]) for t in tables]
            mean = sum(ps) / m
            want = {
                "margin": 0.5 - abs(mean - 0.5),
                "entropy": entropy(mean),
                "ensemble": math.sqrt(sum((p - mean) ** 2 for p in ps) / m),
                "bald": entropy(mean) - sum(entropy(p) for p in ps) / m,
            }[strategy]
            assert got[i] == pytest.approx(want, abs=1e-12), (strategy, i)


def test_audit_share_is_respected_and_unbiased() -> None:
    n, k = 100, 20
    cands, table = pairs_with_gaps([0.05 * i for i in range(n)])  # informativeness falls with the index
    scorer = table_scorer(table)
    top = set(range(k))
    in_top_half = 0
    for seed in range(50):
        picked = select_pairs(cands, k, "margin", scorer, audit=0.25, seed=seed)
        assert len(picked) == k == len(set(picked))
        strategy_part, audit_part = picked[:15], picked[15:]  # round(0.25 * 20) = 5 audit picks at the end
        rest = sorted(set(range(n)) - set(audit_part))
        assert strategy_part == rest[:15]  # the most informative among the non-audit pairs, in order
        in_top_half += sum(i < n // 2 for i in audit_part)
    assert 0.35 < in_top_half / (50 * 5) < 0.65  # audit picks are uniform over all pairs, not the top
    assert set(select_pairs(cands, k, "margin", scorer, audit=0.0)) == top
    assert select_pairs(cands, 10, "margin", scorer, audit=0.04) == list(range(10))  # round(0.4) = 0 audit picks
    assert set(select_pairs(cands, k, "margin", scorer, audit=1.0, seed=3)) != top


def test_seeded_and_deterministic() -> None:
    cands, table = pairs_with_gaps([0.0] * 30)  # every pair equally informative: the seed breaks ties
    scorer = table_scorer(table)
    for strategy, s in (("random", None), ("margin", scorer)):
        a = select_pairs(cands, 10, strategy, s, audit=0.3, seed=7)
        assert a == select_pairs(cands, 10, strategy, s, audit=0.3, seed=7)
        assert a != select_pairs(cands, 10, strategy, s, audit=0.3, seed=8)
    assert np.array_equal(pair_uncertainty(cands, "random", seed=1), pair_uncertainty(cands, "random", seed=1))


def test_random_needs_no_scorer_and_covers_all_pairs() -> None:
    cands = [{"prompt": "p", "a": f"a{i}", "b": f"b{i}"} for i in range(10)]
    counts = np.zeros(10)
    for seed in range(300):
        for i in select_pairs(cands, 3, "random", seed=seed):
            counts[i] += 1
    assert counts.sum() == 900 and counts.min() > 50  # expected 90 each
    assert select_pairs(cands, 10, "random") != list(range(10))
    assert sorted(select_pairs(cands, 10, "random")) == list(range(10))


def test_k_zero_and_all() -> None:
    cands, table = pairs_with_gaps(GAPS)
    assert select_pairs(cands, 0, "margin", table_scorer(table)) == []
    assert sorted(select_pairs(cands, len(GAPS), "margin", table_scorer(table))) == list(range(len(GAPS)))


def test_strategies_table() -> None:
    assert set(STRATEGIES) == {"random", "margin", "entropy", "ensemble", "bald"}


def test_errors() -> None:
    cands, table = pairs_with_gaps(GAPS)
    scorer = table_scorer(table)
    with pytest.raises(ValueError, match="unknown strategy 'smart'; choose one of random, margin, entropy"):
        select_pairs(cands, 2, "smart", scorer)
    with pytest.raises(ValueError, match="unknown strategy 'smart'"):
        pair_uncertainty(cands, "smart", scorer)
    with pytest.raises(ValueError, match="k=8 is more than the 7 candidate pairs"):
        select_pairs(cands, 8, "margin", scorer)
    with pytest.raises(ValueError, match="k must be a non-negative integer, got -1"):
        select_pairs(cands, -1, "margin", scorer)
    with pytest.raises(ValueError, match="audit must be a share in \\[0, 1\\], got 1.5"):
        select_pairs(cands, 2, "margin", scorer, audit=1.5)
    with pytest.raises(ValueError, match="strategy 'margin' needs scorers"):
        select_pairs(cands, 2, "margin")
    with pytest.raises(ValueError, match="strategy 'bald' needs 2\\+ ensemble members"):
        select_pairs(cands, 2, "bald", scorer)
    with pytest.raises(ValueError, match="strategy 'ensemble' needs disagreement"):
        select_pairs(cands, 2, "ensemble", [scorer])
    with pytest.raises(ValueError, match="returned 3 scores for 14 responses"):
        select_pairs(cands, 2, "margin", lambda p, r: [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="non-finite score for response 0"):
        select_pairs(cands, 2, "margin", lambda p, r: [math.nan] * len(r))
    with pytest.raises(ValueError, match="candidate 1 has no 'b' field"):
        select_pairs([{"prompt": "p", "a": "x", "b": "y"}, {"prompt": "p", "a": "x"}], 1, "random")
    with pytest.raises(ValueError, match="scorers\\[1\\] is not callable"):
        select_pairs(cands, 2, "ensemble", [scorer, 3])


def test_empty_pool() -> None:
    def boom(prompts, responses):
        raise AssertionError("a scorer must not be called on an empty pool")

    assert pair_uncertainty([], "margin", boom).shape == (0,)
    assert pair_uncertainty([], "ensemble", [boom, boom]).shape == (0,)
    assert select_pairs([], 0, "bald", [boom, boom]) == []
