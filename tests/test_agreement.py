"""Agreement statistics against published worked examples and plain-loop references; adjudication; quality report."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest

from rlhfkit.feedback.agreement import (
    adjudicate,
    cohen_kappa,
    fleiss_kappa,
    krippendorff_alpha,
    quality_report,
)

# ---- plain-loop references (textbook formulas, no libraries) ------------------------------------------------------


def cohen_reference(a: list, b: list) -> float:
    """Cohen 1960: kappa = (p_o - p_e) / (1 - p_e), p_e = sum_k p_a(k) p_b(k)."""
    n = len(a)
    p_o = sum(x == y for x, y in zip(a, b)) / n
    ca, cb = Counter(a), Counter(b)
    p_e = sum(ca[k] * cb[k] for k in set(a) | set(b)) / n**2
    return (p_o - p_e) / (1 - p_e)


def fleiss_reference(table: list[list[int]]) -> float:
    """Fleiss 1971: P_i = (sum_j n_ij^2 - n) / (n (n - 1)), p_j = sum_i n_ij / (N n), kappa = (P - P_e) / (1 - P_e)."""
    big_n, n = len(table), sum(table[0])
    p_i = [(sum(x * x for x in row) - n) / (n * (n - 1)) for row in table]
    p_j = [sum(row[j] for row in table) / (big_n * n) for j in range(len(table[0]))]
    p_bar, p_e = sum(p_i) / big_n, sum(p * p for p in p_j)
    return (p_bar - p_e) / (1 - p_e)


def kripp_reference(ratings: dict, level: str) -> float:
    """Krippendorff 2011: coincidences o_ck over pairable units; alpha = 1 - (n-1) sum o_ck d_ck / sum n_c n_k d_ck."""
    units = [list(r.values()) for r in ratings.values() if len(r) >= 2]
    values = sorted({v for u in units for v in u}, key=lambda v: (str(type(v)), v))
    o = {(c, k): 0.0 for c in values for k in values}
    for u in units:
        m = len(u)
        for i in range(m):
            for j in range(m):
                if i != j:
                    o[u[i], u[j]] += 1.0 / (m - 1)
    n_c = {c: sum(o[c, k] for k in values) for c in values}
    n = sum(n_c.values())

    def delta(c, k) -> float:
        if level == "nominal":
            return float(c != k)
        if level == "interval":
            return float((c - k) ** 2)
        lo, hi = sorted((c, k))  # ordinal: (sum of n_g for g from c to k - (n_c + n_k) / 2)^2
        return (sum(n_c[g] for g in values if lo <= g <= hi) - (n_c[c] + n_c[k]) / 2) ** 2

    d_o = sum(o[c, k] * delta(c, k) for c in values for k in values)
    d_e = sum(n_c[c] * n_c[k] * delta(c, k) for c in values for k in values)
    return 1 - (n - 1) * d_o / d_e


def table_to_ratings(table: list[list[int]]) -> list[list[int]]:
    return [[j for j, count in enumerate(row) for _ in range(count)] for row in table]


def matrix_to_mapping(rows: list[list]) -> dict:
    """Raters x units matrix (None = missing) -> {unit: {rater: value}}."""
    return {u: {r: rows[r][u] for r in range(len(rows)) if rows[r][u] is not None} for u in range(len(rows[0]))}


# Wikipedia "Fleiss' kappa" worked example: 10 subjects, 14 raters, 5 categories; P = 0.378, P_e = 0.213, kappa = 0.210
FLEISS_WIKI = [
    [0, 0, 0, 0, 14],
    [0, 2, 6, 4, 2],
    [0, 0, 3, 5, 6],
    [0, 3, 9, 2, 0],
    [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0],
    [3, 2, 6, 3, 0],
    [2, 5, 3, 2, 2],
    [6, 5, 2, 1, 0],
    [0, 2, 2, 3, 7],
]

# Krippendorff 2011 ("Computing Krippendorff's alpha-reliability", sec. C): 4 observers, 12 units, missing data;
# published alpha: nominal 0.743, ordinal 0.815, interval 0.849
N = None
KRIPP_2011 = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, N, N, N],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, N, 3],
    [N, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, N],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, N],
]


# ---- Cohen ----------------------------------------------------------------------------------------------------------


def test_cohen_wikipedia_example() -> None:
    # 50 proposals: both yes 20, A yes / B no 5, A no / B yes 10, both no 15 -> p_o 0.7, p_e 0.5, kappa 0.4
    a = ["yes"] * 25 + ["no"] * 25
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4, abs=1e-12)


def test_cohen_small_hand_case_and_reference_loop() -> None:
    # (x,x), (x,y), (y,y): p_o = 2/3; marginals a = (2/3, 1/3), b = (1/3, 2/3) -> p_e = 4/9 -> kappa = 2/5
    # (Fleiss pools the marginals instead and gives 1/3 on the same table, see test_fleiss_two_raters_hand_value)
    assert cohen_kappa(["x", "x", "y"], ["x", "y", "y"]) == pytest.approx(0.4)
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = list(rng.integers(0, 3, 30))
        b = [x if rng.random() < 0.6 else int(rng.integers(0, 3)) for x in a]
        assert cohen_kappa(a, b) == pytest.approx(cohen_reference(a, b), abs=1e-12)


def test_cohen_invariant_to_relabelling_and_symmetric() -> None:
    a = ["0", "1", "tie", "0", "1", "1", "0", "tie"]
    b = ["0", "1", "0", "0", "tie", "1", "1", "tie"]
    rename = {"0": 7, "1": "left", "tie": ("t",)}
    k = cohen_kappa(a, b)
    assert cohen_kappa([rename[x] for x in a], [rename[x] for x in b]) == pytest.approx(k, abs=1e-12)
    assert cohen_kappa(b, a) == pytest.approx(k, abs=1e-12)


def test_cohen_perfect_chance_and_degenerate() -> None:
    assert cohen_kappa(["a", "b", "c", "a"], ["a", "b", "c", "a"]) == 1.0
    assert cohen_kappa(["a", "a", "b", "b"], ["a", "b", "a", "b"]) == pytest.approx(0.0)  # p_o = p_e = 1/2
    assert cohen_kappa(["a", "b"], ["b", "a"]) == pytest.approx(-1.0)
    # one category for both raters: p_e = 1, defined as 1.0 (perfect agreement), not NaN
    assert cohen_kappa(["tie"] * 5, ["tie"] * 5) == 1.0
    # one rater constant, the other not: the usual formula (p_e < 1) -> 0
    assert cohen_kappa(["0"] * 4, ["0", "1", "0", "0"]) == pytest.approx(0.0)


def test_cohen_errors() -> None:
    with pytest.raises(ValueError, match="rater a has 2 labels but rater b has 3"):
        cohen_kappa(["a", "b"], ["a", "b", "c"])
    with pytest.raises(ValueError, match="no items"):
        cohen_kappa([], [])


# ---- Fleiss ---------------------------------------------------------------------------------------------------------


def test_fleiss_wikipedia_example() -> None:
    kappa = fleiss_kappa(table_to_ratings(FLEISS_WIKI))
    assert round(kappa, 3) == 0.210
    assert kappa == pytest.approx(fleiss_reference(FLEISS_WIKI), abs=1e-12)


def test_fleiss_invariances() -> None:
    ratings = table_to_ratings(FLEISS_WIKI)
    base = fleiss_kappa(ratings)
    names = ["bad", "poor", "ok", "good", "great"]
    assert fleiss_kappa([[names[j] for j in row] for row in ratings]) == pytest.approx(base, abs=1e-12)
    rng = np.random.default_rng(1)
    shuffled = [list(rng.permutation(row)) for row in ratings]  # which rater said what does not matter to Fleiss
    assert fleiss_kappa(shuffled) == pytest.approx(base, abs=1e-12)
    assert fleiss_kappa(ratings[::-1]) == pytest.approx(base, abs=1e-12)


def test_fleiss_two_raters_hand_value() -> None:
    # items (x,x), (x,y), (y,y): P_i = 1, 0, 1 -> P = 2/3; p_x = p_y = 1/2 -> P_e = 1/2; kappa = 1/3
    assert fleiss_kappa([["x", "x"], ["x", "y"], ["y", "y"]]) == pytest.approx(1 / 3)


def test_fleiss_perfect_degenerate_and_errors() -> None:
    assert fleiss_kappa([["a", "a", "a"], ["b", "b", "b"], ["c", "c", "c"]]) == pytest.approx(1.0)
    assert fleiss_kappa([["tie"] * 3] * 4) == 1.0
    with pytest.raises(ValueError, match="item 1 has 2 ratings but item 0 has 3"):
        fleiss_kappa([["a", "a", "b"], ["a", "b"]])
    with pytest.raises(ValueError, match="at least 2 ratings"):
        fleiss_kappa([["a"], ["b"]])
    with pytest.raises(ValueError, match="no items"):
        fleiss_kappa([])


# ---- Krippendorff ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("level,published", [("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849)])
def test_krippendorff_2011_example(level: str, published: float) -> None:
    ratings = matrix_to_mapping(KRIPP_2011)
    alpha = krippendorff_alpha(ratings, level)
    assert round(alpha, 3) == published
    assert alpha == pytest.approx(kripp_reference(ratings, level), abs=1e-12)


def test_krippendorff_small_hand_case() -> None:
    # units (a,a), (a,b), (b,b): o_ab = o_ba = 1, n_a = n_b = 3, n = 6 -> alpha = 1 - 5 * 2 / 18 = 4/9
    ratings = {"u1": {"r1": "a", "r2": "a"}, "u2": {"r1": "a", "r2": "b"}, "u3": {"r1": "b", "r2": "b"}}
    assert krippendorff_alpha(ratings) == pytest.approx(4 / 9)
    # a unit with one rating is not pairable and changes nothing; None is a missing rating
    assert krippendorff_alpha({**ratings, "u4": {"r3": "a"}}) == pytest.approx(4 / 9)
    assert krippendorff_alpha({**ratings, "u4": {"r1": "b", "r2": None}}) == pytest.approx(4 / 9)


def test_krippendorff_random_missing_matches_reference() -> None:
    rng = np.random.default_rng(3)
    for _ in range(10):
        ratings = {}
        for u in range(15):
            truth = int(rng.integers(0, 4))
            row = {
                r: (truth if rng.random() < 0.7 else int(rng.integers(0, 4))) for r in range(4) if rng.random() < 0.7
            }
            ratings[u] = row
        for level in ("nominal", "ordinal", "interval"):
            assert krippendorff_alpha(ratings, level) == pytest.approx(kripp_reference(ratings, level), abs=1e-10)


def test_krippendorff_nominal_relabelling_and_degenerate() -> None:
    ratings = matrix_to_mapping(KRIPP_2011)
    names = {1: "one", 2: ("two",), 3: 3.5, 4: "four", 5: "five"}
    relabelled = {u: {r: names[v] for r, v in row.items()} for u, row in ratings.items()}
    assert krippendorff_alpha(relabelled) == pytest.approx(krippendorff_alpha(ratings), abs=1e-12)
    assert krippendorff_alpha({1: {"a": "x", "b": "x"}, 2: {"a": "x", "c": "x"}}) == 1.0  # one value only
    assert krippendorff_alpha({1: {"a": 1, "b": 1}, 2: {"a": 2, "b": 2}}, "interval") == pytest.approx(1.0)


def test_krippendorff_errors() -> None:
    with pytest.raises(ValueError, match="level must be one of nominal, ordinal, interval, got 'ratio'"):
        krippendorff_alpha({1: {"a": 1, "b": 2}}, "ratio")
    with pytest.raises(ValueError, match="interval level needs finite numbers; item 1 rater 'b': 'x'"):
        krippendorff_alpha({1: {"a": 1, "b": "x"}}, "interval")
    with pytest.raises(ValueError, match="no item has two or more ratings"):
        krippendorff_alpha({1: {"a": 1}, 2: {"b": 2}})


# ---- adjudication ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "labels,expected",
    [
        ([("0", 0.5), ("0", 1.5), ("1", 3.0)], ("0", 1.0, True)),  # 2 vs 1; median of the two "0" strengths
        ([("1", 1.0), ("1", 2.0), ("1", 4.0)], ("1", 2.0, False)),  # unanimous
        ([("0", 1.0), ("1", 2.0)], ("tie", 0.0, True)),  # 1-1 split: nobody chose "tie" -> strength 0
        ([("0", 2.0), ("0", 4.0), ("1", 1.0), ("1", 3.0), ("tie", 0.5)], ("tie", 0.5, True)),
        ([("tie", 0.0), ("tie", 0.2), ("0", 3.0)], ("tie", 0.1, True)),
        ([("0", 0.7)], ("0", 0.7, False)),
        ([(0, 1.0), (0, 2.0), (1, 1.0)], ("0", 1.5, True)),  # ints read as "0" / "1"
    ],
)
def test_adjudicate_majority(labels, expected) -> None:
    choice, strength, flag = adjudicate(labels)
    assert (choice, flag) == (expected[0], expected[2])
    assert strength == pytest.approx(expected[1])


@pytest.mark.parametrize(
    "labels,expected",
    [
        ([("0", 1.0), ("0", 3.0), ("1", 2.0)], ("0", 1.0, True)),  # signed 1, 3, -2 -> median 1
        ([("0", 1.0), ("1", 2.0)], ("1", 0.5, True)),  # signed 1, -2 -> median -0.5
        ([("0", 1.0), ("1", 1.0)], ("tie", 0.0, True)),
        ([("tie", 0.0), ("0", 2.0), ("1", 2.0)], ("tie", 0.0, True)),
        ([("1", 0.5), ("1", 1.5)], ("1", 1.0, False)),
        # strong minority pulls the median where majority does not: 0.1, 0.2 for "0" vs 5, 5, 5 for "1"
        ([("0", 0.1), ("0", 0.2), ("1", 5.0), ("1", 5.0), ("1", 5.0)], ("1", 5.0, True)),
    ],
)
def test_adjudicate_median(labels, expected) -> None:
    choice, strength, flag = adjudicate(labels, method="median")
    assert (choice, flag) == (expected[0], expected[2])
    assert strength == pytest.approx(expected[1])


@pytest.mark.parametrize("method", ["majority", "median"])
def test_adjudicate_mirror_and_order_invariance(method: str) -> None:
    rng = np.random.default_rng(5)
    swap = {"0": "1", "1": "0", "tie": "tie"}
    for _ in range(50):
        labels = [
            (str(rng.choice(["0", "1", "tie"])), float(rng.exponential())) for _ in range(int(rng.integers(1, 6)))
        ]
        choice, strength, flag = adjudicate(labels, method)
        m_choice, m_strength, m_flag = adjudicate([(swap[c], s) for c, s in labels], method)
        assert (m_choice, m_flag) == (swap[choice], flag) and m_strength == pytest.approx(strength)
        assert adjudicate(labels[::-1], method) == (choice, strength, flag)


def test_adjudicate_errors() -> None:
    with pytest.raises(ValueError, match="method must be one of majority, median, got 'mean'"):
        adjudicate([("0", 1.0)], "mean")
    with pytest.raises(ValueError, match="label 1: choice must be one of 0, 1, tie, got 'a'"):
        adjudicate([("0", 1.0), ("a", 1.0)])
    with pytest.raises(ValueError, match="label 0: strength must be a finite number >= 0, got -1"):
        adjudicate([("0", -1)])
    with pytest.raises(ValueError, match="strength must be a finite number >= 0, got nan"):
        adjudicate([("0", math.nan)])
    with pytest.raises(ValueError, match="label 0 must be a \\(choice, strength\\) pair"):
        adjudicate(["0"])
    with pytest.raises(ValueError, match="no labels"):
        adjudicate([])


# ---- quality report -------------------------------------------------------------------------------------------------

# item 1: a 0, b 0, c 0 | item 2: a 0, b 1, c 0 | item 3: a 1, b 1 | item 4: a tie, b 0, c 1
REPORT_LABELS = [
    {"item": 1, "rater": "a", "choice": "0"},
    {"item": 1, "rater": "b", "choice": "0"},
    {"item": 1, "rater": "c", "choice": "1"},  # corrected below: the later label wins
    {"item": 1, "rater": "c", "choice": "0"},
    {"item": 2, "rater": "a", "choice": "0"},
    {"item": 2, "rater": "b", "choice": "1"},
    {"item": 2, "rater": "c", "choice": "0"},
    {"item": 3, "rater": "a", "choice": "1"},
    {"item": 3, "rater": "b", "choice": "1"},
    {"item": 4, "rater": "a", "choice": "tie"},
    {"item": 4, "rater": "b", "choice": "0"},
    {"item": 4, "rater": "c", "choice": "1"},
]
GOLD = {1: "0", 2: "0", 3: "1", 4: "0"}


def test_quality_report_by_hand() -> None:
    rep = quality_report(REPORT_LABELS, GOLD)
    # a|b over items 1-4: a = 0 0 1 tie, b = 0 1 1 0: p_o = 1/2, p_e = (2*2 + 1*2) / 16 = 3/8 -> 0.2
    # a|c over 1, 2, 4: a = 0 0 tie, c = 0 0 1: p_o = 2/3, p_e = 4/9 -> 0.4
    # b|c over 1, 2, 4: b = 0 1 0, c = 0 0 1: p_o = 1/3, p_e = 5/9 -> -0.5
    assert rep["cohen"] == pytest.approx({"a|b": 0.2, "a|c": 0.4, "b|c": -0.5})
    # modal number of raters is 3 (items 1, 2, 4): counts (0,1,tie) = (3,0,0), (2,1,0), (1,1,1) -> P = 4/9,
    # p = (2/3, 2/9, 1/9) -> P_e = 41/81 -> kappa = (36 - 41) / 40 = -0.125
    assert rep["fleiss"] == pytest.approx(-0.125)
    # nominal alpha over all 4 items: n = 11, disagreeing coincidences 2 (item 2) + 3 (item 4) = 5,
    # n_0 = 6, n_1 = 4, n_tie = 1 -> sum_{c != k} n_c n_k = 68 -> alpha = 1 - 10 * 5 / 68
    assert rep["krippendorff"] == pytest.approx(1 - 50 / 68)
    # vs the majority of the others (a 1-1 split among the others is "tie"):
    # a: item1 0=0, item2 0 vs split(tie), item3 1=1, item4 tie vs split(tie) -> 3/4
    # b: item1 hit, item2 1 vs 0, item3 hit, item4 0 vs split(tie) -> 2/4;  c: item1 hit, item2 miss, item4 miss -> 1/3
    assert rep["raters"] == {
        "a": {"n": 4, "majority_agreement": 0.75, "n_majority": 4, "gold_agreement": 0.75, "n_gold": 4},
        "b": {"n": 4, "majority_agreement": 0.5, "n_majority": 4, "gold_agreement": 0.75, "n_gold": 4},
        "c": {
            "n": 3,
            "majority_agreement": pytest.approx(1 / 3),
            "n_majority": 3,
            "gold_agreement": pytest.approx(2 / 3),
            "n_gold": 3,
        },
    }
    assert rep["items"] == 4 and rep["disagreements"] == 2
    json.dumps(rep)  # plain types only


def test_quality_report_without_gold_and_sparse() -> None:
    rep = quality_report([{"item": "x", "rater": "a", "choice": "0"}, {"item": "y", "rater": "b", "choice": 1}])
    assert rep["cohen"] == {} and rep["fleiss"] is None and rep["krippendorff"] is None
    assert rep["raters"]["a"] == {
        "n": 1,
        "majority_agreement": None,
        "n_majority": 0,
        "gold_agreement": None,
        "n_gold": 0,
    }
    assert rep["items"] == 2 and rep["disagreements"] == 0


def test_quality_report_errors() -> None:
    with pytest.raises(ValueError, match="label 1 has no 'rater' field"):
        quality_report([{"item": 1, "rater": "a", "choice": "0"}, {"item": 1, "choice": "0"}])
    with pytest.raises(ValueError, match="label 0: choice must be one of 0, 1, tie, got 'A'"):
        quality_report([{"item": 1, "rater": "a", "choice": "A"}])
    with pytest.raises(ValueError, match="gold item 2: choice must be"):
        quality_report([{"item": 1, "rater": "a", "choice": "0"}], {2: "left"})
