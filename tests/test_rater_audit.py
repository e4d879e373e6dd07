"""Rater demographics audit: attributes in the store (admins only), agreement and label distributions per group,
simulated rater groups with their own biases, and the reward model's held-out accuracy per group."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from rlhfkit.config import ConfigError
from rlhfkit.eval.metrics import pairwise_accuracy, pairwise_auc
from rlhfkit.feedback import annotate_cli
from rlhfkit.feedback.agreement import UNSET, group_report
from rlhfkit.feedback.app import create_app
from rlhfkit.feedback.simulated import RaterSpec, simulate_preferences
from rlhfkit.feedback.store import Store
from rlhfkit.pipeline.config import read_rater_attributes
from rlhfkit.pipeline.evaluate import rm_quality
from rlhfkit.pipeline.labellers import label_audit

ROOT = Path(__file__).resolve().parents[1]
ADMIN = "admin-secret-token-at-least-32-characters"
ATTRS = {"a1": {"region": "EU"}, "a2": {"region": "EU"}, "b1": {"region": "US"}}
LABELS = [  # item 1: EU 0 0, US 1; item 2: EU 0 1, US 1, unset tie; item 3: EU tie, US 0
    {"item": 1, "rater": "a1", "choice": "0"},
    {"item": 1, "rater": "a2", "choice": "0"},
    {"item": 1, "rater": "b1", "choice": "1"},
    {"item": 2, "rater": "a1", "choice": "0"},
    {"item": 2, "rater": "a2", "choice": "1"},
    {"item": 2, "rater": "b1", "choice": "1"},
    {"item": 2, "rater": "c", "choice": "tie"},
    {"item": 3, "rater": "a1", "choice": "tie"},
    {"item": 3, "rater": "b1", "choice": "0"},
]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# ---------------------------------------------------------------------------------------------------------------------
# the statistics, by hand


def test_group_report_by_hand():
    report = group_report(LABELS, ATTRS, gold={3: "0"})
    assert list(report) == ["region"]
    g, cross = report["region"]["groups"], report["region"]["cross"]
    assert list(g) == [UNSET, "EU", "US"]
    eu, us, unset = g["EU"], g["US"], g[UNSET]
    assert (eu["raters"], eu["labels"]) == (2, 5)
    assert eu["distribution"] == pytest.approx({"0": 3 / 5, "1": 1 / 5, "tie": 1 / 5})
    assert (eu["within_agreement"], eu["n_within"]) == (0.5, 2)  # item 1 agrees, item 2 does not
    assert (eu["gold_agreement"], eu["n_gold"]) == (0.0, 1)  # a1 said tie on gold item 3
    assert us["distribution"] == pytest.approx({"0": 1 / 3, "1": 2 / 3, "tie": 0.0})
    assert us["within_agreement"] is None and us["n_within"] == 0 and us["fleiss"] is None
    assert (us["gold_agreement"], us["n_gold"]) == (1.0, 1)
    assert unset["distribution"] == {"0": 0.0, "1": 0.0, "tie": 1.0} and unset["raters"] == 1
    # EU x US label pairs: item 1 (0,0)x1 -> 0/2, item 2 (0,1)x1 -> 1/2, item 3 tie x 0 -> 0/1: 1/5
    assert cross["EU|US"] == {"pair_agreement": 0.2, "n_pairs": 5, "majority_agreement": 0.0, "n_items": 3}
    # (unset) x EU on item 2: tie vs (0, 1) -> 0/2 pairs; EU's split majority is "tie" too -> majorities agree
    assert cross[f"{UNSET}|EU"] == {"pair_agreement": 0.0, "n_pairs": 2, "majority_agreement": 1.0, "n_items": 1}
    assert group_report(LABELS, {}) == {}


def test_simulated_rater_groups_carry_attributes_and_a_length_bias():
    gold = {"short": 0.6, "a much longer answer here": 0.5}  # B is 4 words longer and 0.1 worse
    raters = [
        RaterSpec("terse", temperature=0.0, attributes={"group": "gold-following"}),
        RaterSpec("verbose", temperature=0.0, length_bias=0.05, attributes={"group": "length-loving"}),
    ]
    rows = simulate_preferences(
        ["p"], ["short"], ["a much longer answer here"], lambda _p, rs: [gold[r] for r in rs], raters
    )
    # gap seen = g_A - g_B + length_bias (|A| - |B|): terse 0.1 > 0 -> A; verbose 0.1 + 0.05 * (1 - 5) = -0.1 -> B
    assert [(r["rater"], r["chosen"]) for r in rows] == [("terse", "short"), ("verbose", "a much longer answer here")]
    with pytest.raises(ValueError, match="length_bias must be a finite number"):
        RaterSpec("x", length_bias=float("nan"))
    audit = label_audit(rows, ["p"], ["short"], ["a much longer answer here"], {r.name: r.attributes for r in raters})
    assert audit["group"]["groups"]["gold-following"]["distribution"]["0"] == 1.0
    assert audit["group"]["groups"]["length-loving"]["distribution"]["1"] == 1.0
    assert audit["group"]["cross"]["gold-following|length-loving"]["pair_agreement"] == 0.0


def test_reward_model_accuracy_per_rater_group(tmp_path):
    rows = [  # the "reward model" below scores by length: it agrees with whoever prefers longer answers
        {"prompt": "p", "chosen": "long long long", "rejected": "short", "rater": "a1"},
        {"prompt": "p", "chosen": "short", "rejected": "long long long", "rater": "a2"},
        {"prompt": "p", "chosen": "long long", "rejected": "x", "rater": "b1"},
        {"prompt": "p", "chosen": "x", "rejected": "long long", "rater": "adjudicated"},
        {"prompt": "p", "chosen": "x", "rejected": "y", "rater": "b1", "tie": True},
    ]
    q = rm_quality(lambda prompts, texts: [float(len(t)) for t in texts], rows, ATTRS)
    assert q["pairs"] == 4 and q["accuracy"] == 0.5
    assert q["groups"] == {
        "region": {"EU": {"accuracy": 0.5, "pairs": 2, "raters": 2}, "US": {"accuracy": 1.0, "pairs": 1, "raters": 1}}
    }
    assert "groups" not in rm_quality(lambda p, t: [0.0] * len(t), rows)
    path = tmp_path / "attrs.json"
    path.write_text(json.dumps(ATTRS))
    assert read_rater_attributes(path) == ATTRS
    path.write_text(json.dumps({"a1": {"region": 3}}))
    with pytest.raises(ConfigError, match=r"attrs.json: rater 'a1': attributes must be an object of non-empty"):
        read_rater_attributes(path)


# ---------------------------------------------------------------------------------------------------------------------
# the store and the web app: admins see attributes, raters never do


def _answer_by_text(view: dict, wanted: str) -> dict:
    if wanted == "tie":
        return {"choice": "tie"}
    return {"choice": "AB"[view["responses"].index(wanted)], "strength": 1}


def test_attributes_never_reach_a_rater_through_the_api():
    store = Store("sqlite://")
    client = TestClient(create_app(store, ADMIN))
    tokens = {}
    secret = {"a1": {"region": "EU-secret-zone", "age": "18-29"}, "b1": {"region": "US-hidden-zone"}}
    for name in ("a1", "b1"):
        r = client.post("/api/admin/raters", json={"name": name, "attributes": secret[name]}, headers=bearer(ADMIN))
        assert r.status_code == 201, r.text
        tokens[name] = r.json()["token"]
    items = [{"prompt": f"p{i}", "responses": [f"r{i}-0", f"r{i}-1"]} for i in range(3)]
    r = client.post(
        "/api/admin/campaigns", headers=bearer(ADMIN), json={"name": "c", "items": items, "raters_per_item": 2}
    )
    assert r.status_code == 201, r.text
    seen = []
    for name, token in tokens.items():
        seen.append(client.get("/api/me", headers=bearer(token)).text)
        seen.append(client.get("/api/campaigns/c/assignments", headers=bearer(token)).text)
        while True:
            nxt = client.get("/api/campaigns/c/next", headers=bearer(token))
            seen.append(nxt.text)
            if nxt.json()["done"]:
                break
            view = nxt.json()["assignment"]
            seen.append(client.get(f"/api/assignments/{view['id']}", headers=bearer(token)).text)
            wanted = view["responses"][0] if name == "a1" else view["responses"][1]
            label = client.post(
                f"/api/assignments/{view['id']}/label", headers=bearer(token), json=_answer_by_text(view, wanted)
            )
            assert label.status_code == 201
            seen.append(label.text)
        for path in ("/api/admin/rater-attributes", "/api/admin/raters", "/api/admin/campaigns/c/quality"):
            r = client.get(path, headers=bearer(token))
            assert r.status_code == 403, (path, r.status_code)
            seen.append(r.text)
        r = client.put("/api/admin/raters/a1/attributes", headers=bearer(token), json={"attributes": {"x": "y"}})
        assert r.status_code == 403
    text = "\n".join(seen)
    for attrs in secret.values():
        for key, value in attrs.items():
            assert value not in text and f'"{key}"' not in text
    # the admin sees them, can change them, and the quality report groups by them
    assert client.get("/api/admin/rater-attributes", headers=bearer(ADMIN)).json() == secret
    r = client.put("/api/admin/raters/b1/attributes", headers=bearer(ADMIN), json={"attributes": {"region": "US"}})
    assert r.status_code == 200 and r.json() == {"name": "b1", "attributes": {"region": "US"}}
    q = client.get("/api/admin/campaigns/c/quality", headers=bearer(ADMIN)).json()
    assert set(q["groups"]) == {"age", "region"}
    assert set(q["groups"]["region"]["groups"]) == {"EU-secret-zone", "US"}
    assert q["groups"]["region"]["cross"]["EU-secret-zone|US"]["n_items"] == 3
    assert (
        client.put("/api/admin/raters/nobody/attributes", headers=bearer(ADMIN), json={"attributes": {}}).status_code
        == 404
    )
    bad = client.post("/api/admin/raters", json={"name": "z", "attributes": {"a=b": "c"}}, headers=bearer(ADMIN))
    assert bad.status_code == 422 and "must not contain '='" in bad.text


# ---------------------------------------------------------------------------------------------------------------------
# the CLI end to end


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "rlhfkit.feedback.annotate_cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_add_rater_with_attributes_and_quality_per_group(tmp_path, capsys):
    db = str(tmp_path / "a.db")
    for name, region in (("a1", "EU"), ("a2", "EU"), ("b1", "US")):
        assert annotate_cli.main(["add-rater", name, "--attr", f"region={region}", "--db", db]) == 0
    assert annotate_cli.main(["add-rater", "c", "--db", db]) == 0
    capsys.readouterr()
    assert annotate_cli.main(["add-rater", "d", "--attr", "region", "--db", db]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "rlhfkit annotate: error: --attr 'region': expected NAME=VALUE, e.g. --attr age=18-29"
    assert annotate_cli.main(["raters", "--db", db]) == 0
    assert capsys.readouterr().out.split("\n")[:4] == [
        f"{'a1':<24} region=EU",
        f"{'a2':<24} region=EU",
        f"{'b1':<24} region=US",
        "c",
    ]
    # label the items of LABELS through the store: item i's responses are (r{i}-0, r{i}-1); "0" = r{i}-0 won
    store = Store(db)
    items = [{"prompt": f"p{i}", "responses": [f"r{i}-0", f"r{i}-1"]} for i in (1, 2, 3)]
    store.create_campaign("c1", items, raters_per_item=4)
    for lab in LABELS:
        rater_id = next(i for i, n in enumerate(store.raters(), start=1) if n == lab["rater"])
        for entry in store.rater_queue(rater_id, "c1"):
            view = store.assignment_view(rater_id, entry["id"])
            if view["prompt"] == f"p{lab['item']}":
                wanted = "tie" if lab["choice"] == "tie" else f"r{lab['item']}-{lab['choice']}"
                store.submit(rater_id, entry["id"], _answer_by_text(view, wanted))
    store.close()
    out = _cli("quality", "--campaign", "c1", "--db", db, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "  rater groups by region:" in out.stdout
    # EU's Fleiss kappa over items 1 and 2 ([0, 0], [0, 1]): p_o = 1/2, p_e = (3/4)^2 + (1/4)^2 -> -1/3
    assert "    EU                    2      5  0.600  0.200  0.200   0.500  -0.333      -" in out.stdout
    assert "    US vs (unset)" not in out.stdout
    assert "    EU vs US: pair agreement 0.200 over 5 label pairs, majorities agree on 0.000 of 3 items" in out.stdout
    assert annotate_cli.main(["set-attributes", "c", "--attr", "region=US", "--db", db]) == 0
    assert capsys.readouterr().out == "rater 'c': attributes region=US\n"
    assert annotate_cli.main(["quality", "--campaign", "c1", "--db", db, "--json"]) == 0
    groups = json.loads(capsys.readouterr().out)["groups"]["region"]["groups"]
    assert set(groups) == {"EU", "US"} and groups["US"]["labels"] == 4  # c moved to US


# ---------------------------------------------------------------------------------------------------------------------
# the pipeline: domain-tagged prompts (KL per domain) and simulated rater groups (the audit), one round on a tiny model


def test_pipeline_reports_kl_per_domain_and_rater_groups(tmp_path):
    import yaml

    from rlhfkit.data import write_jsonl
    from rlhfkit.models.tiny import save_tiny
    from rlhfkit.pipeline import load_pipeline, run_pipeline
    from rlhfkit.pipeline.report import write_run_report

    save_tiny(tmp_path / "tiny", "causal")
    rows = [{"prompt": f"the film number {i} was", "domain": "safety" if i % 2 else "chat"} for i in range(30)]
    write_jsonl(tmp_path / "prompts.jsonl", rows)
    gold = [{"kind": "callable", "path": "tests.toy:letter_reward"}]
    d = {
        "output": str(tmp_path / "run"),
        "model": str(tmp_path / "tiny"),
        "rounds": 1,
        "prompts": {"train": str(tmp_path / "prompts.jsonl"), "eval_count": 8, "per_round": 8},
        "sample": {"num_samples": 3, "sampling": {"max_new_tokens": 6, "batch_size": 16}},
        "label": {
            "gold": gold,
            "pairs": "all",
            "heldout_fraction": 0.5,
            "raters": [
                {"name": "g1", "temperature": 0.01, "attributes": {"region": "EU"}},
                {"name": "g2", "temperature": 0.01, "attributes": {"region": "EU"}},
                {"name": "v1", "temperature": 0.01, "length_bias": 1.0, "attributes": {"region": "US"}},
            ],
        },
        "rm": {"train": {"max_steps": 2, "batch_size": 4}, "data": {"max_length": 64, "max_prompt_length": 32}},
        "optimize": {
            "algorithm": "rloo",
            "train": {"max_steps": 2, "batch_size": 4},
            "sampling": {"max_new_tokens": 6},
            "kl": {"per_domain": {"safety": 0.5, "chat": 0.01}},
            "eval_samples": 4,
        },
        "eval": {"sampling": {"max_new_tokens": 6, "batch_size": 16}, "examples": 1},
    }
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(d))
    run_pipeline(load_pipeline(tmp_path / "p.yaml"), "p.yaml", report=False)
    run = tmp_path / "run"
    assert {json.loads(x).get("domain") for x in open(run / "round-0/prompts/train.jsonl")} == {"safety", "chat"}
    for r in (0, 1):
        ev = json.loads((run / f"round-{r}/eval/eval.json").read_text())
        responses = [json.loads(x) for x in open(run / f"round-{r}/eval/responses.jsonl")]
        for dom in ("safety", "chat"):
            kls = [x["kl"] for x in responses if x["domain"] == dom]
            assert ev["kl_per_domain"][dom] == pytest.approx(sum(kls) / len(kls))
    audit = json.loads((run / "round-1/label/audit.json").read_text())["region"]
    assert audit["groups"]["EU"]["raters"] == 2 and audit["groups"]["US"]["raters"] == 1
    assert audit["groups"]["EU"]["within_agreement"] is not None and audit["cross"]["EU|US"]["n_items"] > 0
    groups = ev["reward_model"]["groups"]["region"]
    assert set(groups) == {"EU", "US"} and groups["EU"]["pairs"] > 0
    metrics = [json.loads(x) for x in open(run / "round-1/optimize/metrics.jsonl")]
    assert any("train/kl_coef/safety" in m and m["train/kl_coef/safety"] == 0.5 for m in metrics)
    _, md = write_run_report(run)
    text = Path(md).read_text()
    assert "KL per prompt domain" in text and "Rater groups (label audit)" in text and "rater attribute" in text


def test_reward_model_quality_scores_each_distinct_response_once():
    """k responses per prompt give k(k-1) labelled rows per rater: every (prompt, response) is scored once, and the
    figures equal scoring each row's two texts on their own."""
    rng = random.Random(0)
    prompts = ["p1", [{"role": "user", "content": "p2"}]]
    texts = [f"response {i} " + "x" * rng.randrange(8) for i in range(5)]
    rows = [
        {"prompt": p, "chosen": a, "rejected": b, "rater": r}
        for p in prompts
        for a in texts
        for b in texts
        if a != b
        for r in ("a1", "b1")
        if rng.random() < 0.7
    ]

    def value(prompt, text):  # depends on the prompt too, so a key that ignored it would show
        return float(len(text) + (0.5 if isinstance(prompt, list) else 0.0) + text.count("3"))

    calls = []

    def score(ps, ts):
        calls.append(len(ts))
        return [value(p, t) for p, t in zip(ps, ts)]

    q = rm_quality(score, rows, ATTRS)
    assert calls == [len({(str(r["prompt"]), t) for r in rows for t in (r["chosen"], r["rejected"])})]
    assert calls[0] <= 10
    chosen = [value(r["prompt"], r["chosen"]) for r in rows]  # the row-by-row scores
    rejected = [value(r["prompt"], r["rejected"]) for r in rows]
    assert q["pairs"] == len(rows)
    assert q["auc"] == pytest.approx(pairwise_auc(chosen, rejected))
    assert q["accuracy"] == pytest.approx(pairwise_accuracy(chosen, rejected))
    assert 0 < q["accuracy"] < 1
