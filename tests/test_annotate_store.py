"""The annotation store: assignment, display randomization, canonical labels, idempotent submission, export, quality."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from rlhfkit.data.io import load_examples, read_rows, write_jsonl
from rlhfkit.data.schemas import DataError
from rlhfkit.feedback.agreement import quality_report
from rlhfkit.feedback.store import (
    AnswerConflict,
    ForbiddenError,
    IncompleteError,
    NotFoundError,
    Store,
    adjudicate_ranking,
    normalize_url,
    rank_positions,
    rows_to_items,
)


def pairs(n: int, gold: dict[int, str] | None = None) -> list[dict]:
    items = [{"prompt": f"prompt {i}", "responses": [f"first {i}", f"second {i}"]} for i in range(n)]
    for i, g in (gold or {}).items():
        items[i]["gold"] = g
    return items


def make_store(raters: int = 3) -> tuple[Store, dict[str, str]]:
    store = Store("sqlite://")
    return store, {f"r{i}": store.add_rater(f"r{i}") for i in range(raters)}


def rater_id(store: Store, token: str) -> int:
    info = store.rater_by_token(token)
    assert info is not None
    return info.id


def assignments(store: Store, campaign: str) -> list[dict]:
    """(assignment id, item position, rater name, display order) for every assignment, straight from the tables."""
    with store.engine.connect() as con:
        rows = con.execute(
            text(
                "SELECT a.id, i.position, r.name, a.display_order FROM annotate_assignments a "
                "JOIN annotate_items i ON i.id = a.item_id JOIN annotate_raters r ON r.id = a.rater_id "
                "JOIN annotate_campaigns c ON c.id = a.campaign_id WHERE c.name = :n ORDER BY a.id"
            ),
            {"n": campaign},
        ).all()
    return [
        {"id": a, "item": p, "rater": r, "order": json.loads(o) if isinstance(o, str) else o} for a, p, r, o in rows
    ]


def answer_canonical(order: list[int], winner: str, strength: int = 2) -> dict:
    """The display-terms answer of a rater who prefers canonical response `winner` ("0" / "1" / "tie")."""
    if winner == "tie":
        return {"choice": "tie"}
    return {"choice": "AB"[order.index(int(winner))], "strength": strength}


# ---------------------------------------------------------------- raters and tokens


def test_tokens_are_stored_hashed_and_checked() -> None:
    store, tokens = make_store(2)
    with store.engine.connect() as con:
        stored = dict(con.execute(text("SELECT name, token_hash FROM annotate_raters")).all())
    for name, token in tokens.items():
        assert stored[name] == hashlib.sha256(token.encode()).hexdigest()
        assert token not in json.dumps(stored)
        assert store.rater_by_token(token).name == name
    assert store.rater_by_token("not-a-token") is None
    assert store.rater_by_token("") is None
    assert len(set(tokens.values())) == 2 and all(len(t) >= 40 for t in tokens.values())
    with pytest.raises(ValueError, match="rater 'r0' already exists"):
        store.add_rater("r0")
    new = store.reset_token("r0")
    assert store.rater_by_token(tokens["r0"]) is None and store.rater_by_token(new).name == "r0"
    with pytest.raises(NotFoundError, match="no rater named 'zed'"):
        store.reset_token("zed")
    with pytest.raises(ValueError, match="rater name"):
        store.add_rater("a|b")


# ---------------------------------------------------------------- assignment


@pytest.mark.parametrize("n_raters,per_item,n_items", [(3, 3, 10), (7, 3, 40), (5, 2, 9)])
def test_each_item_gets_exactly_raters_per_item_distinct_raters(n_raters: int, per_item: int, n_items: int) -> None:
    store, _ = make_store(n_raters)
    store.create_campaign("c", pairs(n_items), raters_per_item=per_item)
    rows = assignments(store, "c")
    by_item = defaultdict(list)
    for a in rows:
        by_item[a["item"]].append(a["rater"])
    assert sorted(by_item) == list(range(n_items))
    for raters in by_item.values():
        assert len(raters) == per_item == len(set(raters))  # exactly k, all distinct
    load = Counter(a["rater"] for a in rows)
    assert max(load.values()) - min(load.values()) <= 1  # least-loaded first keeps the work balanced
    assert sum(load.values()) == n_items * per_item
    p = store.progress("c")
    assert p == {"labelled_items": 0, "total_items": n_items, "labels": 0, "required_labels": n_items * per_item}


def test_same_item_twice_for_a_rater_is_refused_by_the_database() -> None:
    store, _ = make_store(2)
    store.create_campaign("c", pairs(2), raters_per_item=1)
    a = assignments(store, "c")[0]
    with store.engine.connect() as con, pytest.raises(IntegrityError):
        con.execute(
            text(
                "INSERT INTO annotate_assignments (campaign_id, item_id, rater_id, sequence, display_order) "
                "SELECT campaign_id, item_id, rater_id, 99, '[0, 1]' FROM annotate_assignments WHERE id = :id"
            ),
            {"id": a["id"]},
        )


def test_campaign_raters_pool_and_errors() -> None:
    store, _ = make_store(4)
    store.create_campaign("only", pairs(6), raters_per_item=2, raters=["r1", "r3"])
    assert {a["rater"] for a in assignments(store, "only")} == {"r1", "r3"}
    with pytest.raises(ValueError, match="raters_per_item=3 but only 2 rater"):
        store.create_campaign("x", pairs(2), raters_per_item=3, raters=["r0", "r1"])
    with pytest.raises(NotFoundError, match="no rater named 'nobody'"):
        store.create_campaign("x", pairs(2), raters=["nobody"])
    with pytest.raises(ValueError, match="campaign 'only' already exists"):
        store.create_campaign("only", pairs(2))
    with pytest.raises(ValueError, match="kind must be one of"):
        store.create_campaign("x", pairs(2), kind="likert")
    with pytest.raises(DataError, match=r'items\[1\]: field "responses"'):
        store.create_campaign("x", [pairs(1)[0], {"prompt": "p", "responses": "not a list"}])
    with pytest.raises(DataError, match=r'items\[0\]: field "gold" must be'):
        store.create_campaign("x", [{"prompt": "p", "responses": ["a", "b"], "gold": "A+"}])
    with pytest.raises(DataError, match="needs a pairwise campaign"):
        store.create_campaign("x", [{"prompt": "p", "responses": ["a", "b", "c"], "gold": "0"}], kind="ranking")
    with pytest.raises(ValueError, match="dimensions are for pairwise"):
        store.create_campaign("x", pairs(2), kind="ranking", dimensions=["helpful"])
    with pytest.raises(NotFoundError, match="no campaign named 'missing'"):
        store.progress("missing")
    assert [c["name"] for c in store.campaigns()] == ["only"]  # failed creations left nothing behind


def test_samples_become_pairs_chain_or_all_and_degenerate_items_are_skipped() -> None:
    store, _ = make_store(1)
    items = [
        {"prompt": "p", "responses": ["a", "b", "a", "c"]},  # duplicate "a" dropped -> a, b, c
        {"prompt": "q", "responses": ["same", "same"]},  # nothing to compare: skipped
    ]
    store.create_campaign("chain", items)
    store.create_campaign("all", items, pairs="all")
    store.create_campaign("rank", items, kind="ranking")
    _, chain = store._items("chain")
    _, every = store._items("all")
    _, rank = store._items("rank")
    assert [i.responses for i in chain] == [["a", "b"], ["b", "c"]]
    assert [i.responses for i in every] == [["a", "b"], ["a", "c"], ["b", "c"]]
    assert [i.responses for i in rank] == [["a", "b", "c"]]
    assert chain[1].origin["responses"] == [1, 3]  # indices into the original row
    with pytest.raises(ValueError, match="no items to label"):
        store.create_campaign("empty", [{"prompt": "q", "responses": ["x", "x"]}])


def test_display_order_is_randomized_per_rater_recorded_and_seeded() -> None:
    store, _ = make_store(3)
    store.create_campaign("c", pairs(60), raters_per_item=3, seed=1)
    store.create_campaign("same-seed", pairs(60), raters_per_item=3, seed=1)
    rows = assignments(store, "c")
    orders = Counter(tuple(a["order"]) for a in rows)
    assert set(orders) == {(0, 1), (1, 0)}
    assert 50 < orders[(0, 1)] < 130  # 180 fair coin flips
    by_item = defaultdict(set)
    for a in rows:
        by_item[a["item"]].add(tuple(a["order"]))
    assert any(len(s) == 2 for s in by_item.values())  # raters of one item see different orders
    # the seed (with the campaign name) fixes every draw: a campaign of another name draws differently
    assert [a["order"] for a in rows] != [a["order"] for a in assignments(store, "same-seed")]
    again, _ = make_store(3)
    again.create_campaign("c", pairs(60), raters_per_item=3, seed=1)
    assert [(a["item"], a["rater"], a["order"]) for a in assignments(again, "c")] == [
        (a["item"], a["rater"], a["order"]) for a in rows
    ]


# ---------------------------------------------------------------- labels


def test_pairwise_labels_are_canonical_and_submission_is_idempotent() -> None:
    store, tokens = make_store(1)
    store.create_campaign("c", pairs(8), dimensions=["helpful", "harmless"], strength_scale=3, seed=3)
    rid = rater_id(store, tokens["r0"])
    rows = assignments(store, "c")
    assert {tuple(a["order"]) for a in rows} == {(0, 1), (1, 0)}
    for a in rows:
        view = store.assignment_view(rid, a["id"])
        assert view["responses"] == [f"{w} {a['item']}" for w in (["first", "second"][i] for i in a["order"])]
        label, created = store.submit(
            rid, a["id"], {"choice": "A", "strength": 3, "dimensions": {"helpful": "B", "harmless": "tie"}}
        )
        assert created and label["choice"] == "A"
        retry = {"choice": "A", "strength": 3, "dimensions": {"helpful": "B", "harmless": "tie"}, "seconds": 4.0}
        again, created = store.submit(rid, a["id"], retry)
        assert not created and again == label  # a retry: the stored label, nothing added
        changed = {"choice": "B", "strength": 1, "dimensions": {"helpful": "B", "harmless": "tie"}}
        with pytest.raises(AnswerConflict, match="earlier answer stands") as info:
            store.submit(rid, a["id"], changed)
        assert info.value.label == label  # the earlier answer, which stands
    labels = {lab["item"]: lab for lab in store.labels("c")}
    assert len(store.labels("c")) == 8
    for a in rows:
        lab = labels[a["item"]]
        assert lab["choice"] == str(a["order"][0])  # "A" = whichever response was shown first
        assert lab["dimensions"] == {"helpful": str(a["order"][1]), "harmless": "tie"}
        assert lab["display_order"] == a["order"] and lab["shown"]["choice"] == "A"


def test_label_uniqueness_is_a_database_constraint() -> None:
    store, tokens = make_store(1)
    store.create_campaign("c", pairs(1))
    a = assignments(store, "c")[0]
    store.submit(rater_id(store, tokens["r0"]), a["id"], {"choice": "tie"})
    with store.engine.connect() as con, pytest.raises(IntegrityError):
        con.execute(text("INSERT INTO annotate_labels (assignment_id, reason) VALUES (:a, '')"), {"a": a["id"]})


def test_invalid_answers_and_foreign_assignments() -> None:
    store, tokens = make_store(2)
    store.create_campaign("c", pairs(2), dimensions=["helpful"], strength_scale=3, raters=["r0"])
    a = assignments(store, "c")[0]["id"]
    r0, r1 = rater_id(store, tokens["r0"]), rater_id(store, tokens["r1"])
    bad = [
        ({"choice": "C", "strength": 1, "dimensions": {"helpful": "A"}}, 'field "choice"'),
        (
            {"choice": "A", "strength": 4, "dimensions": {"helpful": "A"}},
            r'field "strength" must be an integer in \[1, 3\]',
        ),
        ({"choice": "A", "strength": True, "dimensions": {"helpful": "A"}}, 'field "strength"'),
        ({"choice": "A", "strength": 2}, "missing an answer for 'helpful'"),
        ({"choice": "A", "strength": 2, "dimensions": {"helpful": "A", "honest": "B"}}, "unknown dimension 'honest'"),
        ({"choice": "A", "strength": 2, "dimensions": {"helpful": "X"}}, 'field "dimensions.helpful"'),
        ({"choice": "tie", "dimensions": {"helpful": "A"}, "reason": 5}, 'field "reason"'),
    ]
    for answer, message in bad:
        with pytest.raises(ValueError, match=message):
            store.submit(r0, a, answer)
    assert store.labels("c") == []
    with pytest.raises(ForbiddenError, match=f"assignment {a} is not yours"):
        store.submit(r1, a, {"choice": "tie", "dimensions": {"helpful": "tie"}})
    with pytest.raises(ForbiddenError):
        store.assignment_view(r1, a)
    with pytest.raises(NotFoundError, match="no assignment 999"):
        store.submit(r0, 999, {"choice": "tie"})
    label, _ = store.submit(r0, a, {"choice": "tie", "strength": 3, "dimensions": {"helpful": "tie"}})
    assert store.labels("c")[0]["strength"] == 0  # a tie carries no margin


def test_ranking_labels_are_canonical_ranks() -> None:
    store, tokens = make_store(1)
    items = [{"prompt": "p", "responses": ["w", "x", "y", "z"]}, {"prompt": "q", "responses": ["1", "2", "3", "4"]}]
    store.create_campaign("r", items, kind="ranking", seed=5)
    a, b = sorted(assignments(store, "r"), key=lambda a: a["item"])
    rid = rater_id(store, tokens["r0"])
    shown = store.assignment_view(rid, a["id"])["responses"]
    assert shown == [["w", "x", "y", "z"][i] for i in a["order"]]
    # the rater ranks the displayed responses by their text, best first: z > y > x > w
    best_first = sorted(range(4), key=lambda p: shown[p], reverse=True)
    store.submit(rid, a["id"], {"order": best_first})
    assert store.labels("r")[0]["ranks"] == [4, 3, 2, 1]  # canonical: w is worst, z is best
    for order in ([0, 1, 2], [0, 0, 1, 2], [0, 1, 2, 4], "0123", [0, 1, 2, True]):
        with pytest.raises(ValueError, match='field "order" must list the 4 displayed positions'):
            store.submit(rid, b["id"], {"order": order})
    assert len(store.labels("r")) == 1


def test_export_refuses_below_quota_unless_partial_and_leaves_out_gold_items() -> None:
    store, tokens = make_store(2)
    store.create_campaign("c", pairs(3, gold={2: "1"}), raters_per_item=2, seed=1)
    ids = {name: rater_id(store, t) for name, t in tokens.items()}
    rows = assignments(store, "c")
    first, rest = [a for a in rows if a["item"] == 0], [a for a in rows if a["item"] != 0]
    store.submit(ids[first[0]["rater"]], first[0]["id"], answer_canonical(first[0]["order"], "0"))
    # one of two votes on item 0 and none elsewhere: majority would give that one vote confidence 1.0 unannounced
    for method in ("majority", "median", "none"):
        with pytest.raises(IncompleteError, match=r"'c' is not fully labelled: 3 of 3 items have fewer than 2 .*1/6"):
            store.export("c", method)
    (row,) = store.export("c", "majority", partial=True)
    assert row["chosen"] == "first 0" and row["confidence"] == 1.0
    for a in first[1:] + rest:
        store.submit(ids[a["rater"]], a["id"], answer_canonical(a["order"], "1"))
    assert store.progress("c")["labelled_items"] == 3
    # complete: exported without a flag; the gold item (2) is a quality check, never a training row
    rows_none = store.export("c", "none")
    assert sorted(r["prompt"] for r in rows_none) == ["prompt 0", "prompt 0", "prompt 1", "prompt 1"]
    assert [r["prompt"] for r in store.export("c", "majority")] == ["prompt 0", "prompt 1"]
    assert store.quality("c")["n_labels"] == 6  # ... while quality still scores raters on it
    assert {r: v["n_gold"] for r, v in store.quality("c")["raters"].items()} == {"r0": 1, "r1": 1}


def test_progress_counts_items_with_all_their_labels() -> None:
    store, tokens = make_store(2)
    store.create_campaign("c", pairs(3), raters_per_item=2)
    rows = assignments(store, "c")
    ids = {name: rater_id(store, t) for name, t in tokens.items()}
    item0 = [a for a in rows if a["item"] == 0]
    store.submit(ids[item0[0]["rater"]], item0[0]["id"], {"choice": "tie"})
    assert store.progress("c") == {"labelled_items": 0, "total_items": 3, "labels": 1, "required_labels": 6}
    store.submit(ids[item0[1]["rater"]], item0[1]["id"], {"choice": "tie"})
    assert store.progress("c") == {"labelled_items": 1, "total_items": 3, "labels": 2, "required_labels": 6}
    r = item0[0]["rater"]
    assert store.rater_progress(ids[r], 1) == {"done": 1, "total": 3}
    nxt = store.next_assignment(ids[r], "c")
    queue = store.rater_queue(ids[r], "c")
    assert nxt["id"] == next(q["id"] for q in queue if not q["labelled"])  # resume: first unlabelled in queue order


# ---------------------------------------------------------------- export


def labelled_store(votes: list[list[tuple[str, int]]], **kwargs) -> Store:
    """A campaign whose item i got the canonical votes[i] = [(winner, strength), ...] from raters r0, r1, ..."""
    store, tokens = make_store(max(len(v) for v in votes))
    store.create_campaign("c", pairs(len(votes)), raters_per_item=len(votes[0]), **kwargs)
    ids = {name: rater_id(store, t) for name, t in tokens.items()}
    seen: dict[int, int] = defaultdict(int)
    for a in sorted(assignments(store, "c"), key=lambda a: (a["item"], a["rater"])):
        winner, strength = votes[a["item"]][seen[a["item"]]]
        seen[a["item"]] += 1
        store.submit(ids[a["rater"]], a["id"], answer_canonical(a["order"], winner, strength))
    return store


def test_export_majority_median_none_hand_values() -> None:
    votes = [
        [("0", 3), ("0", 1), ("1", 2)],  # majority "0" (median of 3, 1 = 2); signed median of [3, 1, -2] = 1 -> "0"
        [("1", 1), ("1", 3), ("1", 2)],  # unanimous "1"
        [("tie", 0), ("0", 3), ("1", 1)],  # a 1-1-1 split: majority -> tie; signed median of [0, 3, -1] = 0 -> tie
    ]
    store = labelled_store(votes)
    majority = store.export("c", "majority")
    assert majority == [
        {"prompt": "prompt 0", "chosen": "first 0", "rejected": "second 0", "tie": False, "strength": 2.0,
         "rater": "adjudicated", "confidence": pytest.approx(2 / 3)},
        {"prompt": "prompt 1", "chosen": "second 1", "rejected": "first 1", "tie": False, "strength": 2.0,
         "rater": "adjudicated", "confidence": 1.0},
        {"prompt": "prompt 2", "chosen": "first 2", "rejected": "second 2", "tie": True, "strength": 0.0,
         "rater": "adjudicated", "confidence": pytest.approx(1 / 3)},
    ]  # fmt: skip
    median = store.export("c", "median")
    assert [(r["chosen"], r["tie"], r["strength"]) for r in median] == [
        ("first 0", False, 1.0),
        ("second 1", False, 2.0),
        ("first 2", True, 0.0),
    ]
    none = store.export("c", "none")
    assert len(none) == 9 and {r["confidence"] for r in none} == {1.0}
    assert Counter((r["chosen"], r["tie"], r["strength"]) for r in none[:3]) == Counter(
        [("first 0", False, 3.0), ("first 0", False, 1.0), ("second 0", False, 2.0)]
    )
    assert {r["rater"] for r in none} == {"r0", "r1", "r2"}
    with pytest.raises(ValueError, match="adjudication must be one of"):
        store.export("c", "mean")


def test_export_does_not_depend_on_display_order(tmp_path: Path) -> None:
    """Raters with fixed canonical preferences give the same export whatever order each of them was shown."""
    votes = [[("0", 2), ("1", 1)], [("1", 3), ("1", 3)], [("tie", 0), ("0", 1)]] * 4
    exports = []
    for seed in range(3):
        store = labelled_store(votes, seed=seed)
        orders = [tuple(a["order"]) for a in assignments(store, "c")]
        exports.append((orders, {m: store.export("c", m) for m in ("majority", "median", "none")}))
    assert len({tuple(o) for o, _ in exports}) == 3  # the seeds did shuffle differently
    assert exports[0][1] == exports[1][1] == exports[2][1]
    # and the rows load as preference data
    write_jsonl(tmp_path / "prefs.jsonl", exports[0][1]["none"])
    loaded = load_examples(tmp_path / "prefs.jsonl", "preference")
    assert len(loaded) == 24 and {ex.rater for ex in loaded} == {"r0", "r1"}


def test_export_per_dimension() -> None:
    store, tokens = make_store(1)
    store.create_campaign("c", pairs(2), dimensions=["helpful", "harmless"])
    rid = rater_id(store, tokens["r0"])
    for a in assignments(store, "c"):
        store.submit(rid, a["id"], {"choice": "A", "strength": 1, "dimensions": {"helpful": "B", "harmless": "tie"}})
    rows = {a["item"]: a["order"] for a in assignments(store, "c")}
    helpful = store.export("c", "none", dimension="helpful")
    assert [r["chosen"] for r in helpful] == [["first", "second"][rows[i][1]] + f" {i}" for i in range(2)]
    assert all("strength" not in r for r in helpful)
    assert all(r["tie"] for r in store.export("c", "majority", dimension="harmless"))
    with pytest.raises(ValueError, match="has no dimension 'honest'"):
        store.export("c", dimension="honest")


def test_ranking_export_and_borda() -> None:
    assert rank_positions([2.0, 1.0, 2.0, 3.5]) == [2, 1, 2, 4]
    ranks, agree, flag = adjudicate_ranking([[1, 2, 3], [1, 3, 2], [2, 1, 3]])
    # mean ranks [4/3, 2, 8/3] -> [1, 2, 3]; one of three rankings equals it
    assert ranks == [1, 2, 3] and agree == pytest.approx(1 / 3) and flag
    assert adjudicate_ranking([[3, 1, 2], [3, 2, 1], [3, 1, 2]], "median") == ([3, 1, 2], pytest.approx(2 / 3), True)
    store, tokens = make_store(3)
    store.create_campaign("r", [{"prompt": "p", "responses": ["a", "b", "c"]}], kind="ranking", raters_per_item=3)
    ids = {n: rater_id(store, t) for n, t in tokens.items()}
    wanted = {"r0": [1, 2, 3], "r1": [1, 3, 2], "r2": [2, 1, 3]}  # canonical ranks each rater means
    for a in assignments(store, "r"):
        ranks = wanted[a["rater"]]
        # displayed position p shows response order[p]; best first = positions sorted by that response's rank
        store.submit(ids[a["rater"]], a["id"], {"order": sorted(range(3), key=lambda p: ranks[a["order"][p]])})
    none = store.export("r", "none")
    assert sorted((r["rater"], r["ranks"]) for r in none) == sorted(wanted.items())
    (row,) = store.export("r", "majority")
    assert row == {"prompt": "p", "responses": ["a", "b", "c"], "ranks": [1, 2, 3], "rater": "adjudicated",
                   "confidence": pytest.approx(1 / 3)}  # fmt: skip
    q = store.quality("r")
    assert q["kind"] == "ranking" and q["adjudication"]["n_disagreements"] == 1
    assert set(q["raters"]) == {"r0", "r1", "r2"}


# ---------------------------------------------------------------- quality


def test_quality_matches_agreement_module_and_uses_gold() -> None:
    votes = [[("0", 1), ("0", 2)], [("1", 1), ("0", 2)], [("tie", 0), ("tie", 0)], [("1", 2), ("1", 1)]]
    store = labelled_store(votes)
    store_gold = labelled_store(votes + [[("0", 1), ("1", 1)]], dimensions=())
    report = store.quality("c")
    flat = [{"item": str(x["item"]), "rater": x["rater"], "choice": x["choice"]} for x in store.labels("c")]
    expected = quality_report(flat)
    for key in ("cohen", "fleiss", "krippendorff", "raters"):
        assert report[key] == expected[key]
    # two raters, four items, they agree on three: p_o = 3/4; over ("0", "1", "tie") r0 voted (1, 2, 1) and r1 (2, 1, 1)
    p_e = (1 * 2 + 2 * 1 + 1 * 1) / 16
    assert report["cohen"]["r0|r1"] == pytest.approx((0.75 - p_e) / (1 - p_e))
    assert report["adjudication"]["n_disagreements"] == 1
    assert report["adjudication"]["disagreements"][0]["item"] == 1
    assert report["n_items"] == 4 and report["n_labels"] == 8
    # gold: item 4 says "0"; whoever voted "0" there agrees with gold
    store_g = Store("sqlite://")
    toks = {n: store_g.add_rater(n) for n in ("r0", "r1")}
    store_g.create_campaign("g", pairs(2, gold={0: "0"}), raters_per_item=2)
    for a in assignments(store_g, "g"):
        winner = "0" if a["rater"] == "r0" else "1"
        store_g.submit(rater_id(store_g, toks[a["rater"]]), a["id"], answer_canonical(a["order"], winner))
    q = store_g.quality("g")
    assert q["raters"]["r0"]["gold_agreement"] == 1.0 and q["raters"]["r1"]["gold_agreement"] == 0.0
    assert store_gold.quality("c")["n_items"] == 5
    with pytest.raises(ValueError, match="adjudication must be majority or median"):
        store.quality("c", "none")


def test_quality_of_an_empty_campaign() -> None:
    store, _ = make_store(2)
    store.create_campaign("c", pairs(2), raters_per_item=2, dimensions=["helpful"])
    q = store.quality("c")
    assert q["fleiss"] is None and q["cohen"] == {} and q["n_labels"] == 0
    assert q["dimensions"]["helpful"]["krippendorff"] is None


# ---------------------------------------------------------------- files and URLs


def test_rows_to_items_accepts_samples_pairs_and_preferences(tmp_path: Path) -> None:
    f = tmp_path / "in.jsonl"
    rows = [
        {"prompt": "p1", "responses": ["a", "b", "c"], "scores": [1, 2, 3]},
        {"prompt": "p2", "a": "x", "b": "y", "gold": "b"},
        {"prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}], "chosen": "c", "rejected": "r"},
    ]  # fmt: skip
    write_jsonl(f, rows)
    items = rows_to_items(read_rows(f), "in.jsonl")
    assert [i["responses"] for i in items] == [["a", "b", "c"], ["x", "y"], ["c", "r"]]
    assert [i.get("gold") for i in items] == [None, "1", None]  # chosen/rejected rows are not gold by themselves
    assert items[2]["prompt"] == rows[2]["prompt"]
    gold = tmp_path / "gold.jsonl"
    write_jsonl(
        gold,
        [
            {"prompt": "g", "chosen": "good", "rejected": "bad"},
            {"prompt": "h", "chosen": "x", "rejected": "y", "tie": True},
        ],
    )
    assert [i["gold"] for i in rows_to_items(read_rows(gold), "gold.jsonl", gold=True)] == ["0", "tie"]
    write_jsonl(f, [{"prompt": "p", "a": "x", "b": "y"}, {"prompt": "p", "text": "?"}])
    with pytest.raises(DataError, match=r'in.jsonl:2: expected "responses"'):
        rows_to_items(read_rows(f), "in.jsonl")
    with pytest.raises(DataError, match="in.jsonl:1: gold row has no known answer"):
        rows_to_items(read_rows(f), "in.jsonl", gold=True)
    write_jsonl(f, [{"prompt": 3, "a": "x", "b": "y"}])
    with pytest.raises(DataError, match=r'in.jsonl:1: field "prompt" must be'):
        rows_to_items(read_rows(f), "in.jsonl")


def test_store_urls_and_sqlite_file(tmp_path: Path) -> None:
    assert normalize_url("annotations.db") == "sqlite:///annotations.db"
    assert normalize_url("sqlite:////x/y.db") == "sqlite:////x/y.db"
    assert normalize_url("postgresql://u@h/db").startswith(("postgresql+psycopg://", "postgresql://"))
    path = tmp_path / "a.db"
    store = Store(path)
    store.add_rater("x")
    store.create_campaign("c", pairs(2))
    store.close()
    with sqlite3.connect(path) as con:  # a plain SQLite file with the tables, in WAL mode
        assert con.execute("SELECT count(*) FROM annotate_items").fetchone() == (2,)
        assert con.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert Store(path).progress("c")["total_items"] == 2  # reopening keeps the data
    with pytest.raises(FileNotFoundError, match="database folder does not exist"):
        Store(tmp_path / "missing" / "a.db")
    with pytest.raises(ValueError, match="not a database URL"):
        Store("sqlite+nope:://x")
