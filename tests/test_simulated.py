"""Simulated raters: Bradley–Terry labels against hand values and their expected rates, ties, bias, flips, seeding."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rlhfkit.data import DataError, PreferenceExample, load_examples, write_jsonl
from rlhfkit.feedback import RaterSpec, pairs_from_samples, simulate_preferences
from rlhfkit.feedback.simulated import preference_probability


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def make_pairs(gold_a: list[float], gold_b: list[float]):
    """Distinct response texts whose gold scores are looked up in a table: the gold function is exact and cheap."""
    table: dict[str, float] = {}
    a, b = [], []
    for i, (ga, gb) in enumerate(zip(gold_a, gold_b)):
        a.append(f"a{i}")
        b.append(f"b{i}")
        table[f"a{i}"], table[f"b{i}"] = float(ga), float(gb)
    prompts = [f"p{i}" for i in range(len(a))]

    def gold(_prompts: list[str], responses: list[str]) -> list[float]:
        return [table[r] for r in responses]

    return prompts, a, b, gold, table


def random_pairs(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return make_pairs(list(rng.normal(size=n)), list(rng.normal(size=n)))


def within_se(observed: float, expected_p: np.ndarray, k: float = 4.0) -> bool:
    """|mean of Bernoulli(p_i) draws - mean p_i| <= k standard errors of that mean."""
    se = math.sqrt(float(np.sum(expected_p * (1 - expected_p)))) / len(expected_p)
    return abs(observed - float(expected_p.mean())) <= k * se


def test_hand_values_one_pair():
    prompts, a, b, gold, _ = make_pairs([2.0], [1.0])
    [row] = simulate_preferences(prompts, a, b, gold, [RaterSpec("r", temperature=2.0)], seed=0)
    assert row["prompt"] == "p0" and row["rater"] == "r" and row["tie"] is False
    assert row["strength"] == pytest.approx(1.0)
    assert row["confidence"] == pytest.approx(sigmoid(0.5))  # max(p, 1-p), p = sigmoid(1 / 2)
    assert {row["chosen"], row["rejected"]} == {"a0", "b0"}


def test_probability_matches_sigmoid_and_step():
    gaps = np.array([-3.0, -0.5, 0.0, 0.5, 3.0, 800.0, -800.0])
    assert np.allclose(preference_probability(gaps, 1.5), [sigmoid(g / 1.5) for g in gaps[:5]] + [1.0, 0.0])
    assert preference_probability(gaps, 0.0).tolist() == [0.0, 0.0, 0.5, 1.0, 1.0, 1.0, 0.0]


def test_temperature_zero_picks_higher_gold():
    prompts, a, b, gold, table = random_pairs(500)
    rows = simulate_preferences(prompts, a, b, gold, [RaterSpec("greedy", temperature=0.0)], seed=3)
    assert len(rows) == 500
    assert all(table[r["chosen"]] > table[r["rejected"]] for r in rows)
    assert all(r["confidence"] == 1.0 for r in rows)


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_agreement_matches_mean_bradley_terry_probability(temperature: float):
    n = 4000
    prompts, a, b, gold, table = random_pairs(n, seed=1)
    rows = simulate_preferences(prompts, a, b, gold, [RaterSpec("bt", temperature=temperature)], seed=0)
    agree = np.mean([table[r["chosen"]] > table[r["rejected"]] for r in rows])
    gaps = np.abs([table[x] - table[y] for x, y in zip(a, b)])
    p_agree = 1.0 / (1.0 + np.exp(-gaps / temperature))  # P(the higher gold wins), pair by pair
    assert within_se(agree, p_agree), (agree, p_agree.mean())
    assert np.allclose([r["confidence"] for r in rows], p_agree)


def test_ties_exactly_below_margin():
    gaps = [0.05, 0.2, -0.1, 0.3, -0.29, 1.0]
    prompts, a, b, gold, _ = make_pairs(gaps, [0.0] * len(gaps))
    rows = simulate_preferences(prompts, a, b, gold, [RaterSpec("t", temperature=0.0, tie_margin=0.25)], seed=0)
    assert [r["tie"] for r in rows] == [abs(g) < 0.25 for g in gaps]
    # a tie keeps A first; a non-tie at temperature 0 puts the higher gold first
    assert [r["chosen"] for r in rows] == ["a0", "a1", "a2", "a3", "b4", "a5"]


def test_bias_shifts_choices_by_expected_amount():
    n, bias, temperature = 4000, 1.0, 1.0
    prompts, a, b, gold, _ = make_pairs([0.0] * n, [0.0] * n)  # equal gold: only the bias decides
    rows = simulate_preferences(prompts, a, b, gold, [RaterSpec("pos", temperature=temperature, bias=bias)], seed=0)
    rate_a = np.mean([r["chosen"].startswith("a") for r in rows])
    assert within_se(rate_a, np.full(n, sigmoid(bias / temperature)))
    unbiased = simulate_preferences(prompts, a, b, gold, [RaterSpec("none", temperature=temperature)], seed=0)
    assert within_se(np.mean([r["chosen"].startswith("a") for r in unbiased]), np.full(n, 0.5))
    # temperature 0: a bias of 1 overturns a gold deficit of 0.5 but not one of 1.5
    prompts, a, b, gold, _ = make_pairs([0.0, 0.0], [0.5, 1.5])
    rows = simulate_preferences(prompts, a, b, gold, [RaterSpec("pos", temperature=0.0, bias=1.0)], seed=0)
    assert [r["chosen"] for r in rows] == ["a0", "b1"]


def test_flip_rate():
    n, flip = 4000, 0.2
    prompts, a, b, gold, table = random_pairs(n, seed=2)
    rows = simulate_preferences(prompts, a, b, gold, [RaterSpec("noisy", temperature=0.0, flip=flip)], seed=0)
    wrong = np.mean([table[r["chosen"]] < table[r["rejected"]] for r in rows])
    assert within_se(wrong, np.full(n, flip))
    rows = simulate_preferences(prompts, a, b, gold, [RaterSpec("contrarian", temperature=0.0, flip=1.0)], seed=0)
    assert all(table[r["chosen"]] < table[r["rejected"]] for r in rows)


def test_ties_are_not_flipped():
    prompts, a, b, gold, _ = make_pairs([0.1, 0.1], [0.0, 0.0])
    rows = simulate_preferences(prompts, a, b, gold, [RaterSpec("t", temperature=0.0, tie_margin=1, flip=1)], seed=0)
    assert [(r["tie"], r["chosen"]) for r in rows] == [(True, "a0"), (True, "a1")]


def test_deterministic_in_seed_and_independent_of_other_raters():
    prompts, a, b, gold, _ = random_pairs(300, seed=4)
    alice, bob, carol = RaterSpec("alice"), RaterSpec("bob", temperature=0.3, flip=0.1), RaterSpec("carol", bias=0.5)
    first = simulate_preferences(prompts, a, b, gold, [alice, bob], seed=7)
    assert first == simulate_preferences(prompts, a, b, gold, [alice, bob], seed=7)
    assert first != simulate_preferences(prompts, a, b, gold, [alice, bob], seed=8)

    def by_rater(rows: list[dict], name: str) -> list[dict]:
        return [r for r in rows if r["rater"] == name]

    more = simulate_preferences(prompts, a, b, gold, [carol, bob, alice], seed=7)  # added and reordered
    for name in ("alice", "bob"):
        assert by_rater(more, name) == by_rater(first, name)
    # the two raters' streams differ: same spec under another name gives other labels
    twin = simulate_preferences(prompts, a, b, gold, [RaterSpec("alice2")], seed=7)
    assert [r["chosen"] for r in twin] != [r["chosen"] for r in by_rater(first, "alice")]


def test_per_pair_repeats_and_row_order():
    prompts, a, b, gold, table = random_pairs(200, seed=5)
    raters = [RaterSpec("x", temperature=1.0), RaterSpec("y", temperature=0.0)]
    rows = simulate_preferences(prompts, a, b, gold, raters, seed=0, per_pair=3)
    assert len(rows) == 200 * 2 * 3
    assert [(r["prompt"], r["rater"]) for r in rows[:6]] == [("p0", "x")] * 3 + [("p0", "y")] * 3
    x_first = [rows[6 * i + j]["chosen"] for i in range(200) for j in range(3)]
    assert len({tuple(x_first[3 * i : 3 * i + 3]) for i in range(200)}) > 2  # repeats are independent draws
    assert all(table[r["chosen"]] > table[r["rejected"]] for r in rows if r["rater"] == "y")


def test_identical_pairs_skipped_and_gold_called_once():
    calls = []

    def gold(prompts: list[str], responses: list[str]) -> list[float]:
        calls.append(list(responses))
        return [float(len(r)) for r in responses]

    rows = simulate_preferences(["p", "q", "r"], ["x", "same", "xyz"], ["yy", "same", "z"], gold, [RaterSpec("r", 0)])
    assert calls == [["x", "same", "xyz", "yy", "same", "z"]]
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in rows] == [("p", "yy", "x"), ("r", "xyz", "z")]


def test_rows_load_as_preference_examples(tmp_path):
    prompts, a, b, gold, _ = make_pairs([1.0, 0.0, 0.5], [0.0, 1.0, 0.45])
    rows = simulate_preferences(prompts, a, b, gold, [RaterSpec("r", temperature=0.5, tie_margin=0.1)], seed=0)
    path = tmp_path / "prefs.jsonl"
    assert write_jsonl(path, rows) == 3
    examples = load_examples(path, "preference")
    assert all(isinstance(e, PreferenceExample) for e in examples)
    for row, ex in zip(rows, examples):
        assert ex.prompt == ({"role": "user", "content": row["prompt"]},)
        assert (ex.chosen, ex.rejected, ex.tie, ex.rater) == (row["chosen"], row["rejected"], row["tie"], "r")
        assert ex.strength == pytest.approx(row["strength"]) and ex.confidence == pytest.approx(row["confidence"])
    assert [e.tie for e in examples] == [False, False, True]


def test_clear_errors():
    prompts, a, b, gold, _ = make_pairs([1.0], [0.0])
    with pytest.raises(ValueError, match="temperature"):
        RaterSpec("r", temperature=-1)
    with pytest.raises(ValueError, match="flip"):
        RaterSpec("r", flip=1.5)
    with pytest.raises(ValueError, match="unique.*dup"):
        simulate_preferences(prompts, a, b, gold, [RaterSpec("dup"), RaterSpec("dup")])
    with pytest.raises(ValueError, match="lengths 1, 1, 2"):
        simulate_preferences(prompts, a, b + ["x"], gold, [RaterSpec("r")])
    with pytest.raises(ValueError, match="gold returned 1 scores .* for 2 responses"):
        simulate_preferences(prompts, a, b, lambda p, r: [0.0], [RaterSpec("r")])
    with pytest.raises(ValueError, match="non-finite score nan for response 1"):
        simulate_preferences(prompts, a, b, lambda p, r: [0.0, float("nan")], [RaterSpec("r")])
    with pytest.raises(ValueError, match="per_pair"):
        simulate_preferences(prompts, a, b, gold, [RaterSpec("r")], per_pair=0)


# ---------------------------------------------------------------- pairs_from_samples


def test_pairs_chain_and_all():
    samples = [{"prompt": "p", "responses": ["r1", "r2", "r3", "r4"]}, {"prompt": "q", "responses": ["s1", "s2"]}]
    prompts, a, b = pairs_from_samples(samples)
    assert list(zip(prompts, a, b)) == [("p", "r1", "r2"), ("p", "r2", "r3"), ("p", "r3", "r4"), ("q", "s1", "s2")]
    prompts, a, b = pairs_from_samples(samples, mode="all")
    expected = [("p", f"r{i}", f"r{j}") for i in range(1, 5) for j in range(i + 1, 5)] + [("q", "s1", "s2")]
    assert list(zip(prompts, a, b)) == expected


def test_pairs_cap_is_a_seeded_subset_in_order():
    samples = [{"prompt": "p", "responses": [f"r{i}" for i in range(6)]}]
    all_pairs = list(zip(*pairs_from_samples(samples, mode="all")))
    capped = list(zip(*pairs_from_samples(samples, mode="all", max_pairs=4, seed=1)))
    assert len(capped) == 4 and capped == [p for p in all_pairs if p in capped]
    assert capped == list(zip(*pairs_from_samples(samples, mode="all", max_pairs=4, seed=1)))
    assert len(list(zip(*pairs_from_samples(samples, mode="chain", max_pairs=10)))) == 5  # cap above count: no-op


def test_pairs_drop_duplicate_responses():
    samples = [{"prompt": "p", "responses": ["x", "x", "y", "x"]}, {"prompt": "q", "responses": ["z", "z"]}]
    assert pairs_from_samples(samples) == (["p"], ["x"], ["y"])


def test_pairs_errors_name_the_row():
    with pytest.raises(DataError, match="samples row 1: .*at least 2 responses, got 1"):
        pairs_from_samples([{"prompt": "p", "responses": ["a", "b"]}, {"prompt": "q", "responses": ["a"]}])
    with pytest.raises(DataError, match='samples row 0: field "prompt" is missing'):
        pairs_from_samples([{"responses": ["a", "b"]}])
    with pytest.raises(DataError, match="entry 1 must be a string"):
        pairs_from_samples([{"prompt": "p", "responses": ["a", 3]}])
    with pytest.raises(ValueError, match="mode"):
        pairs_from_samples([], mode="random")


def test_samples_to_loadable_preferences(tmp_path):
    samples = [{"prompt": f"p{i}", "responses": ["good!!", "ok", "bad", "ok"]} for i in range(5)]
    prompts, a, b = pairs_from_samples(samples, mode="all")

    def gold(_p: list[str], responses: list[str]) -> list[float]:
        return [float(r.count("!") + len(r)) for r in responses]

    rows = simulate_preferences(prompts, a, b, gold, [RaterSpec("sim", temperature=0.0)], seed=0)
    write_jsonl(tmp_path / "prefs.jsonl.gz", rows)
    examples = load_examples(tmp_path / "prefs.jsonl.gz", "preference")
    assert len(examples) == 5 * 3
    assert {(e.chosen, e.rejected) for e in examples} == {("good!!", "ok"), ("good!!", "bad"), ("bad", "ok")}
