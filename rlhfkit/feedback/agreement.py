"""Rater agreement (Cohen's kappa, Fleiss' kappa, Krippendorff's alpha), adjudication of several labels into one,
and a per-rater quality report for pairwise preference labels.

Labels are any hashable values (strings, ints, ...): the functions code them to integers first, so relabelling the
categories never changes a statistic. Preference choices are canonical strings: ``"0"`` (response 0 wins), ``"1"``
(response 1 wins), ``"tie"``; ints 0 / 1 are accepted and read as ``"0"`` / ``"1"``.

Degenerate case (one convention for all three statistics): when every rating falls in ONE category, chance agreement
is 1 and the chance-corrected statistic is 0 / 0. We return 1.0 there: the raters agree on every item, and a report
(or a JSON API) gets a number rather than NaN. This is the only case where expected agreement is 1, so any
disagreement at all goes through the usual formula.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Callable, Hashable, Mapping, Sequence
from itertools import combinations
from typing import Any

import krippendorff
import numpy as np
from sklearn.metrics import cohen_kappa_score
from statsmodels.stats.inter_rater import aggregate_raters
from statsmodels.stats.inter_rater import fleiss_kappa as sm_fleiss_kappa

__all__ = [
    "ADJUDICATORS",
    "CHOICES",
    "KRIPPENDORFF_LEVELS",
    "adjudicate",
    "cohen_kappa",
    "fleiss_kappa",
    "group_report",
    "krippendorff_alpha",
    "quality_report",
]

CHOICES = ("0", "1", "tie")
KRIPPENDORFF_LEVELS = ("nominal", "ordinal", "interval")


def _codes(values: Sequence[Hashable]) -> np.ndarray:
    """Integer codes by first appearance: makes mixed-type labels sortable and every statistic relabelling-invariant."""
    index: dict[Hashable, int] = {}
    return np.array([index.setdefault(v, len(index)) for v in values], dtype=np.int64)


def cohen_kappa(a: Sequence[Hashable], b: Sequence[Hashable]) -> float:
    """Cohen's kappa of two raters over the same items (Cohen 1960): (p_o - p_e) / (1 - p_e).

    a[i], b[i] are the two raters' labels of item i. 1.0 when both raters use one and the same category throughout
    (chance agreement is 1 there; see the module docstring).
    """
    a, b = list(a), list(b)
    if len(a) != len(b):
        raise ValueError(f"cohen_kappa: rater a has {len(a)} labels but rater b has {len(b)}; give one per item each")
    if not a:
        raise ValueError("cohen_kappa: no items to compare")
    codes = _codes(a + b)
    ca, cb = codes[: len(a)], codes[len(a) :]
    if np.unique(codes).size == 1:  # p_e = 1: single-category degenerate case
        return 1.0
    return float(cohen_kappa_score(ca, cb))


def fleiss_kappa(ratings: Sequence[Sequence[Hashable]]) -> float:
    """Fleiss' kappa (Fleiss 1971, eq. 1-9): ratings[i] = the labels item i received, the same number (>= 2) per item.

    Raters need not be the same people across items; only the category counts per item matter.
    """
    rows = [list(r) for r in ratings]
    if not rows:
        raise ValueError("fleiss_kappa: no items")
    m = len(rows[0])
    for i, r in enumerate(rows):
        if len(r) != m:
            raise ValueError(
                f"fleiss_kappa: item {i} has {len(r)} ratings but item 0 has {m}; every item needs as many"
            )
    if m < 2:
        raise ValueError(f"fleiss_kappa: each item needs at least 2 ratings, got {m}")
    codes = _codes([v for r in rows for v in r]).reshape(len(rows), m)  # (items, raters)
    if np.unique(codes).size == 1:
        return 1.0
    table, _ = aggregate_raters(codes)  # (items, categories) counts n_ij
    return float(sm_fleiss_kappa(table, method="fleiss"))


def krippendorff_alpha(ratings: Mapping[Hashable, Mapping[Hashable, Any]], level: str = "nominal") -> float:
    """Krippendorff's alpha (Krippendorff 2011, "Computing Krippendorff's alpha-reliability"): 1 - D_o / D_e.

    ratings[item][rater] = value; raters may skip items or give None (missing data). Units with a single rating are
    not pairable and do not count. ``level``: "nominal" (any hashable values), "ordinal" or "interval" (real numbers;
    ordinal uses their order only). 1.0 when all pairable values are equal (see the module docstring).
    """
    if level not in KRIPPENDORFF_LEVELS:
        raise ValueError(f"krippendorff_alpha: level must be one of {', '.join(KRIPPENDORFF_LEVELS)}, got {level!r}")
    ratings = {item: {r: v for r, v in row.items() if v is not None} for item, row in ratings.items()}  # None = missing
    items = list(ratings)
    raters = list(dict.fromkeys(r for item in items for r in ratings[item]))
    pairable = [item for item in items if len(ratings[item]) >= 2]
    if not pairable:
        raise ValueError("krippendorff_alpha: no item has two or more ratings, so agreement is undefined")
    values = [ratings[item][r] for item in pairable for r in ratings[item]]
    if level == "nominal":
        index: dict[Hashable, int] = {}
        for v in values:
            index.setdefault(v, len(index))
        to_float: Callable[[Any], float] = lambda v: float(index[v])  # noqa: E731
    else:
        for item in pairable:
            for r, v in ratings[item].items():
                if (
                    isinstance(v, bool)
                    or not isinstance(v, (int, float, np.integer, np.floating))
                    or not math.isfinite(v)
                ):
                    raise ValueError(
                        f"krippendorff_alpha: {level} level needs finite numbers; item {item!r} rater {r!r}: {v!r}"
                    )
        to_float = float
    if len(set(values)) == 1:
        return 1.0
    data = np.full((len(raters), len(pairable)), np.nan)  # (raters, units), NaN = missing, as the package expects
    col = {r: j for j, r in enumerate(raters)}
    for u, item in enumerate(pairable):
        for r, v in ratings[item].items():
            data[col[r], u] = to_float(v)
    return float(krippendorff.alpha(reliability_data=data, level_of_measurement=level))


# --- adjudication -----------------------------------------------------------------------------------------------


def _choice(value: Any, where: str) -> str:
    if isinstance(value, bool):
        raise ValueError(f"{where}: choice must be one of {', '.join(CHOICES)}, got {value!r}")
    text = str(value) if isinstance(value, (int, np.integer)) else value
    if text not in CHOICES:
        raise ValueError(f"{where}: choice must be one of {', '.join(CHOICES)}, got {value!r}")
    return text


def _strength(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{where}: strength must be a number >= 0, got {value!r}")
    s = float(value)
    if not (math.isfinite(s) and s >= 0):
        raise ValueError(f"{where}: strength must be a finite number >= 0, got {value!r}")
    return s


def _majority(labels: list[tuple[str, float]]) -> tuple[str, float]:
    """Plurality choice; a tie for the top count (e.g. two "0" vs two "1") is unresolved -> "tie"."""
    counts = Counter(c for c, _ in labels)
    top = max(counts.values())
    leaders = [c for c, n in counts.items() if n == top]
    choice = leaders[0] if len(leaders) == 1 else "tie"
    chosen = [s for c, s in labels if c == choice]
    return choice, float(statistics.median(chosen)) if chosen else 0.0  # nobody chose a split "tie": strength 0


def _median(labels: list[tuple[str, float]]) -> tuple[str, float]:
    """Median of signed strengths (+s for "0", -s for "1", 0 for "tie"); its sign picks the side."""
    sign = {"0": 1.0, "1": -1.0, "tie": 0.0}
    med = float(statistics.median(sign[c] * s for c, s in labels))
    return ("0" if med > 0 else "1" if med < 0 else "tie"), abs(med)


ADJUDICATORS: dict[str, Callable[[list[tuple[str, float]]], tuple[str, float]]] = {
    "majority": _majority,
    "median": _median,
}


def adjudicate(labels: Sequence[tuple[str, float]], method: str = "majority") -> tuple[str, float, bool]:
    """Several raters' (choice, strength) labels of one pair -> (choice, strength, disagreement).

    method "majority": the most common choice, a tie for the top count going to "tie"; strength = the median strength
    of the raters who made that choice (0.0 when the result is a split nobody chose).
    method "median": the median of signed strengths (+s for "0", -s for "1", 0 for "tie"); choice by its sign,
    strength = |median|. disagreement is True when the raters did not all make the same choice.
    """
    if method not in ADJUDICATORS:
        raise ValueError(f"adjudicate: method must be one of {', '.join(ADJUDICATORS)}, got {method!r}")
    clean: list[tuple[str, float]] = []
    for i, label in enumerate(labels):
        try:
            choice, strength = label
        except (TypeError, ValueError):
            raise ValueError(f"adjudicate: label {i} must be a (choice, strength) pair, got {label!r}") from None
        clean.append((_choice(choice, f"adjudicate: label {i}"), _strength(strength, f"adjudicate: label {i}")))
    if not clean:
        raise ValueError("adjudicate: no labels to adjudicate")
    choice, strength = ADJUDICATORS[method](clean)
    return choice, strength, len({c for c, _ in clean}) > 1


# --- quality report ---------------------------------------------------------------------------------------------


def _rate(hits: int, n: int) -> float | None:
    return hits / n if n else None


def quality_report(labels: Sequence[Mapping[str, Any]], gold: Mapping[Hashable, str] | None = None) -> dict[str, Any]:
    """Agreement summary of preference labels ``{"item", "rater", "choice"}`` (choice "0" / "1" / "tie").

    A rater who labelled an item twice counts once, with the later label (a re-label is a correction).
    Returns
      "cohen": {"r1|r2": kappa over the items both labelled} for every pair of raters sharing an item (names sorted),
      "fleiss": Fleiss' kappa over the items with the modal number of raters (the larger count on a tie for mode), or
                None when that number is below 2,
      "krippendorff": nominal alpha over all items (missing ratings allowed), or None when no item has 2 ratings,
      "raters": {rater: {"n": items labelled,
                         "majority_agreement": share of the rater's items (with other raters) where the rater's choice
                             equals the majority of the OTHER raters (adjudicate "majority", so a 1-1 split is "tie"),
                         "n_majority": how many items that share is over,
                         "gold_agreement": share of the rater's items in ``gold`` labelled as gold says (None without
                             gold or overlap), "n_gold": how many}},
      "items": distinct items, "disagreements": items with 2+ raters whose choices differ.
    Floats are None (not NaN) where undefined, so the report goes straight to JSON.
    """
    by_item: dict[Hashable, dict[Hashable, str]] = {}
    for n, row in enumerate(labels):
        for key in ("item", "rater", "choice"):
            if key not in row:
                raise ValueError(f"quality_report: label {n} has no {key!r} field")
        by_item.setdefault(row["item"], {})[row["rater"]] = _choice(row["choice"], f"quality_report: label {n}")
    gold_choice = {k: _choice(v, f"quality_report: gold item {k!r}") for k, v in (gold or {}).items()}

    by_rater: dict[Hashable, dict[Hashable, str]] = {}
    for item, votes in by_item.items():
        for rater, choice in votes.items():
            by_rater.setdefault(rater, {})[item] = choice

    cohen: dict[str, float] = {}
    for r1, r2 in combinations(sorted(by_rater, key=str), 2):
        shared = [item for item in by_rater[r1] if item in by_rater[r2]]
        if shared:
            cohen[f"{r1}|{r2}"] = cohen_kappa([by_rater[r1][i] for i in shared], [by_rater[r2][i] for i in shared])

    sizes = Counter(len(v) for v in by_item.values())
    modal = max(sizes, key=lambda m: (sizes[m], m)) if sizes else 0
    fleiss = fleiss_kappa([list(v.values()) for v in by_item.values() if len(v) == modal]) if modal >= 2 else None
    multi = {item: votes for item, votes in by_item.items() if len(votes) >= 2}
    kripp = krippendorff_alpha(multi, "nominal") if multi else None

    raters: dict[Hashable, dict[str, Any]] = {}
    for rater, mine in by_rater.items():
        maj_hits = maj_n = gold_hits = gold_n = 0
        for item, choice in mine.items():
            others = [(c, 1.0) for r, c in by_item[item].items() if r != rater]
            if others:
                maj_n += 1
                maj_hits += choice == adjudicate(others, "majority")[0]
            if item in gold_choice:
                gold_n += 1
                gold_hits += choice == gold_choice[item]
        raters[rater] = {
            "n": len(mine),
            "majority_agreement": _rate(maj_hits, maj_n),
            "n_majority": maj_n,
            "gold_agreement": _rate(gold_hits, gold_n),
            "n_gold": gold_n,
        }
    return {
        "cohen": cohen,
        "fleiss": fleiss,
        "krippendorff": kripp,
        "raters": raters,
        "items": len(by_item),
        "disagreements": sum(len(set(v.values())) > 1 for v in multi.values()),
    }


# --- rater groups (demographic audit) ----------------------------------------------------------------------------

UNSET = "(unset)"
"""The group of raters who have no value for an attribute."""


def group_report(
    labels: Sequence[Mapping[str, Any]],
    attributes: Mapping[Hashable, Mapping[str, str]],
    gold: Mapping[Hashable, str] | None = None,
) -> dict[str, Any]:
    """Agreement and label distributions per rater group, for every attribute any rater has (``{"age": "18-29"}``).

    labels: ``{"item", "rater", "choice"}`` as for :func:`quality_report` (a re-label replaces the rater's earlier one);
    attributes: {rater: {attribute: value}}; raters without a value for an attribute form the group UNSET.
    Returns {attribute: {"groups": {value: G}, "cross": {"v1|v2": C}}} where
      G = {"raters", "labels", "distribution": {"0", "1", "tie"} shares of the group's labels,
           "within_agreement": share of agreeing label pairs among pairs of the group's raters on the same item
               (None without such a pair), "n_within": how many pairs,
           "fleiss", "krippendorff": quality_report over the group's own labels,
           "gold_agreement": share of the group's labels on gold items that match gold, "n_gold"},
      C = {"pair_agreement": share of agreeing label pairs with one rater from each group on the same item, "n_pairs",
           "majority_agreement": share of the items both groups labelled where the groups' majorities (adjudicate
               "majority", a split being "tie") are the same, "n_items"}.
    Chance-corrected statistics need overlap within a group; the raw pair shares are defined whenever there is any.
    """
    by_item: dict[Hashable, dict[Hashable, str]] = {}
    for n, row in enumerate(labels):
        for key in ("item", "rater", "choice"):
            if key not in row:
                raise ValueError(f"group_report: label {n} has no {key!r} field")
        by_item.setdefault(row["item"], {})[row["rater"]] = _choice(row["choice"], f"group_report: label {n}")
    gold_choice = {k: _choice(v, f"group_report: gold item {k!r}") for k, v in (gold or {}).items()}
    raters = sorted({r for votes in by_item.values() for r in votes}, key=str)
    names = sorted({a for r in raters for a in (attributes.get(r) or {})})
    out: dict[str, Any] = {}
    for attr in names:
        group_of = {r: str((attributes.get(r) or {}).get(attr, UNSET)) for r in raters}
        values = sorted(set(group_of.values()))
        groups: dict[str, Any] = {}
        for g in values:
            members = {r for r in raters if group_of[r] == g}
            mine = [
                {"item": item, "rater": r, "choice": c}
                for item, votes in by_item.items()
                for r, c in votes.items()
                if r in members
            ]
            counts = Counter(x["choice"] for x in mine)
            same = pairs = gold_hits = gold_n = 0
            for item, votes in by_item.items():
                cs = [c for r, c in votes.items() if r in members]
                pairs += len(cs) * (len(cs) - 1) // 2
                same += sum(n * (n - 1) // 2 for n in Counter(cs).values())
                if item in gold_choice:
                    gold_n += len(cs)
                    gold_hits += sum(c == gold_choice[item] for c in cs)
            report = quality_report(mine) if mine else {"fleiss": None, "krippendorff": None}
            groups[g] = {
                "raters": len(members),
                "labels": len(mine),
                "distribution": {c: _rate(counts[c], len(mine)) for c in CHOICES},
                "within_agreement": _rate(same, pairs),
                "n_within": pairs,
                "fleiss": report["fleiss"],
                "krippendorff": report["krippendorff"],
                "gold_agreement": _rate(gold_hits, gold_n),
                "n_gold": gold_n,
            }
        cross: dict[str, Any] = {}
        for g1, g2 in combinations(values, 2):
            same = pairs = maj_same = maj_n = 0
            for votes in by_item.values():
                c1 = [c for r, c in votes.items() if group_of[r] == g1]
                c2 = [c for r, c in votes.items() if group_of[r] == g2]
                if not (c1 and c2):
                    continue
                pairs += len(c1) * len(c2)
                same += sum(a == b for a in c1 for b in c2)
                maj_n += 1
                maj_same += adjudicate([(c, 1.0) for c in c1])[0] == adjudicate([(c, 1.0) for c in c2])[0]
            cross[f"{g1}|{g2}"] = {
                "pair_agreement": _rate(same, pairs),
                "n_pairs": pairs,
                "majority_agreement": _rate(maj_same, maj_n),
                "n_items": maj_n,
            }
        out[attr] = {"groups": groups, "cross": cross}
    return out
