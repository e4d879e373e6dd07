"""The annotation web API through FastAPI's TestClient, and the `annotate` CLI commands in-process."""

from __future__ import annotations

import argparse
import json
import re
import shlex
from collections import Counter
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from rlhfkit.data.io import load_examples, write_jsonl
from rlhfkit.feedback import annotate_cli
from rlhfkit.feedback.app import STATIC, create_app
from rlhfkit.feedback.store import Store

ADMIN = "admin-secret-token-at-least-32-characters"
IMG = '<img src=x onerror="window.__pwned=1">'
SCRIPT = "<script>window.__pwned=2</script>"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture()
def env() -> tuple[TestClient, Store, dict[str, str]]:
    store = Store("sqlite://")
    client = TestClient(create_app(store, ADMIN))
    tokens = {}
    for name in ("ann", "bea", "cai"):
        r = client.post("/api/admin/raters", json={"name": name}, headers=bearer(ADMIN))
        assert r.status_code == 201 and r.json()["name"] == name
        tokens[name] = r.json()["token"]
    items = [{"prompt": f"p{i}", "responses": [f"r{i}-0", f"r{i}-1"]} for i in range(6)]
    items.append({"prompt": "gold", "responses": ["right", "wrong"], "gold": "0"})
    r = client.post(
        "/api/admin/campaigns",
        headers=bearer(ADMIN),
        json={"name": "c1", "items": items, "raters_per_item": 2, "rubric": "Pick the more helpful one.", "seed": 4},
    )
    assert r.status_code == 201, r.text
    assert r.json()["total_items"] == 7 and r.json()["required_labels"] == 14
    return client, store, tokens


def label_all(client: TestClient, token: str, campaign: str, answer) -> list[dict]:
    """Label every remaining item of `campaign` with answer(view) -> body; returns the responses' JSON."""
    out = []
    while True:
        nxt = client.get(f"/api/campaigns/{campaign}/next", headers=bearer(token)).json()
        if nxt["done"]:
            return out
        view = nxt["assignment"]
        r = client.post(f"/api/assignments/{view['id']}/label", headers=bearer(token), json=answer(view))
        assert r.status_code == 201, r.text
        out.append({"view": view, **r.json()})


def test_assignment_counts_and_what_a_rater_sees(env) -> None:
    client, store, tokens = env
    totals = {}
    for name, token in tokens.items():
        me = client.get("/api/me", headers=bearer(token)).json()
        assert me["rater"] == name
        (c,) = me["campaigns"]
        assert c["name"] == "c1" and c["rubric"] == "Pick the more helpful one." and c["progress"]["done"] == 0
        totals[name] = c["progress"]["total"]
        queue = client.get("/api/campaigns/c1/assignments", headers=bearer(token)).json()
        assert len(queue) == totals[name] and not any(q["labelled"] for q in queue)
    assert sum(totals.values()) == 14 and max(totals.values()) - min(totals.values()) <= 1
    admin = client.get("/api/admin/campaigns/c1", headers=bearer(ADMIN)).json()
    assert admin["labels"] == 0 and admin["total_items"] == 7 and admin["raters_per_item"] == 2


def test_randomization_recorded_and_labels_canonical(env) -> None:
    client, store, tokens = env
    for token in tokens.values():
        label_all(client, token, "c1", lambda v: {"choice": "A", "strength": 3, "reason": "first shown"})
    labels = client.get("/api/admin/campaigns/c1/labels", headers=bearer(ADMIN)).json()
    assert len(labels) == 14
    orders = Counter(tuple(lab["display_order"]) for lab in labels)
    assert set(orders) <= {(0, 1), (1, 0)} and len(orders) == 2  # both orders were shown
    for lab in labels:
        assert lab["shown"]["choice"] == "A"
        assert lab["choice"] == str(lab["display_order"][0])  # "A" stored as the response shown first
        assert lab["strength"] == 3 and lab["reason"] == "first shown"


def test_view_shows_responses_in_the_recorded_display_order(env) -> None:
    client, store, tokens = env
    nxt = client.get("/api/campaigns/c1/next", headers=bearer(tokens["ann"])).json()
    view = nxt["assignment"]
    assert "display_order" not in json.dumps(view)  # the canonical order is never sent to a rater
    client.post(
        f"/api/assignments/{view['id']}/label", headers=bearer(tokens["ann"]), json={"choice": "B", "strength": 1}
    )
    (lab,) = client.get("/api/admin/campaigns/c1/labels", headers=bearer(ADMIN)).json()
    item = int(view["prompt"][1:]) if view["prompt"] != "gold" else None
    originals = [f"r{item}-0", f"r{item}-1"] if item is not None else ["right", "wrong"]
    assert view["responses"] == [originals[i] for i in lab["display_order"]]
    assert lab["choice"] == str(lab["display_order"][1])


def test_resume_and_idempotent_resubmission(env) -> None:
    client, store, tokens = env
    h = bearer(tokens["bea"])
    first = client.get("/api/campaigns/c1/next", headers=h).json()["assignment"]
    r1 = client.post(f"/api/assignments/{first['id']}/label", headers=h, json={"choice": "tie"})
    assert r1.status_code == 201 and r1.json()["created"] and r1.json()["progress"]["done"] == 1
    # the same submission again (a retry after a lost response): the stored label comes back, nothing is added
    r2 = client.post(f"/api/assignments/{first['id']}/label", headers=h, json={"choice": "tie", "seconds": 9})
    assert r2.status_code == 200 and not r2.json()["created"] and r2.json()["label"]["choice"] == "tie"
    # a different answer (another tab): 409, the earlier answer stands and is sent back, nothing is changed
    r3 = client.post(f"/api/assignments/{first['id']}/label", headers=h, json={"choice": "A", "strength": 2})
    assert r3.status_code == 409 and not r3.json()["created"] and r3.json()["label"]["choice"] == "tie"
    assert "earlier answer stands" in r3.json()["detail"] and r3.json()["progress"]["done"] == 1
    assert r3.headers["x-frame-options"] == "DENY"
    r4 = client.post(f"/api/assignments/{first['id']}/label", headers=h, json={"choice": "tie", "reason": "new"})
    assert r4.status_code == 409  # a new reason is a changed answer too
    assert store.progress("c1")["labels"] == 1 and store.labels("c1")[0]["choice"] == "tie"
    assert store.labels("c1")[0]["reason"] == ""
    # a new session (fresh client = reloaded page) resumes at the first unlabelled item of the queue
    again = TestClient(client.app)
    queue = again.get("/api/campaigns/c1/assignments", headers=h).json()
    nxt = again.get("/api/campaigns/c1/next", headers=h).json()
    assert queue[0] == {"id": first["id"], "labelled": True}
    assert nxt["assignment"]["id"] == queue[1]["id"] and nxt["progress"]["done"] == 1
    seen = again.get(f"/api/assignments/{first['id']}", headers=h).json()
    assert seen["label"]["choice"] == "tie"


def test_export_and_quality_endpoints(env) -> None:
    client, store, tokens = env

    # ann and bea always pick response 0 of the item ("r3-0" < "r3-1", "right" < "wrong"); cai response 1
    def prefer(index: int):
        def answer(view: dict) -> dict:
            want = sorted(view["responses"])[index]
            return {"choice": "AB"[view["responses"].index(want)], "strength": 2}

        return answer

    for name, tok in tokens.items():
        label_all(client, tok, "c1", prefer(1 if name == "cai" else 0))
    rows = client.get("/api/admin/campaigns/c1/export?adjudication=none", headers=bearer(ADMIN)).json()
    assert len(rows) == 12 and "gold" not in {r["prompt"] for r in rows}  # the gold item's 2 labels are left out
    for row in rows:
        want_first = row["rater"] != "cai"
        assert (row["chosen"] < row["rejected"]) == want_first
        assert set(row) == {"prompt", "chosen", "rejected", "tie", "strength", "rater", "confidence"}
    majority = client.get("/api/admin/campaigns/c1/export", headers=bearer(ADMIN)).json()
    assert len(majority) == 6 and {r["rater"] for r in majority} == {"adjudicated"}
    q = client.get("/api/admin/campaigns/c1/quality", headers=bearer(ADMIN)).json()
    assert q["n_labels"] == 14 and set(q["raters"]) == {"ann", "bea", "cai"}
    assert q["cohen"].get("ann|bea", 1.0) == 1.0  # they always agree
    gold_rater = {r for r, v in q["raters"].items() if v["n_gold"]}
    for r in gold_rater:  # the gold item says response 0 ("right") wins
        assert q["raters"][r]["gold_agreement"] == (0.0 if r == "cai" else 1.0)
    assert q["adjudication"]["method"] == "majority"
    assert client.get("/api/admin/campaigns/c1/export?adjudication=mean", headers=bearer(ADMIN)).status_code == 422
    assert client.get("/api/admin/campaigns/nope/quality", headers=bearer(ADMIN)).status_code == 404


def test_401_and_403(env) -> None:
    client, store, tokens = env
    ann, bea = bearer(tokens["ann"]), bearer(tokens["bea"])
    for headers in ({}, bearer("wrong"), {"Authorization": tokens["ann"]}, {"Authorization": "Basic abc"}):
        r = client.get("/api/me", headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert client.get("/api/admin/campaigns", headers=headers).status_code == 401
    # a rater on admin endpoints
    for method, path in [
        ("get", "/api/admin/campaigns"),
        ("get", "/api/admin/campaigns/c1/export"),
        ("get", "/api/admin/campaigns/c1/quality"),
        ("get", "/api/admin/campaigns/c1/labels"),
        ("get", "/api/admin/raters"),
        ("post", "/api/admin/raters"),
    ]:
        kwargs = {"json": {"name": "evil"}} if method == "post" else {}
        assert getattr(client, method)(path, headers=ann, **kwargs).status_code == 403
    assert "evil" not in store.raters()
    # rater A on rater B's assignment: neither read nor write
    b_ids = {q["id"] for q in client.get("/api/campaigns/c1/assignments", headers=bea).json()}
    a_ids = {q["id"] for q in client.get("/api/campaigns/c1/assignments", headers=ann).json()}
    foreign = min(b_ids - a_ids)
    assert client.get(f"/api/assignments/{foreign}", headers=ann).status_code == 403
    assert client.post(f"/api/assignments/{foreign}/label", headers=ann, json={"choice": "tie"}).status_code == 403
    assert store.progress("c1")["labels"] == 0
    assert client.get("/api/assignments/99999", headers=ann).status_code == 404
    # the admin token is not a rater; unknown campaign 404, someone else's campaign 403
    assert client.get("/api/me", headers=bearer(ADMIN)).status_code == 403
    assert client.get("/api/campaigns/zzz/next", headers=ann).status_code == 404
    store.add_rater("dan")
    store.create_campaign("private", [{"prompt": "p", "responses": ["a", "b"]}], raters=["dan"])
    assert client.get("/api/campaigns/private/next", headers=ann).status_code == 403
    # no admin token configured: admin endpoints are closed to everyone
    closed = TestClient(create_app(store, None))
    assert closed.get("/api/admin/campaigns", headers=bearer(ADMIN)).status_code == 401
    assert closed.get("/api/admin/campaigns", headers=ann).status_code == 403


def test_invalid_labels_are_422_with_the_field(env) -> None:
    client, store, tokens = env
    h = bearer(tokens["cai"])
    view = client.get("/api/campaigns/c1/next", headers=h).json()["assignment"]
    for body, needle in [
        ({"choice": "C"}, "choice"),
        ({"choice": "A", "strength": 9}, "strength"),
        ({"choice": "A", "strength": "2"}, "strength"),
        ({"choice": "A", "strength": 2, "hack": 1}, "hack"),
        ({"choice": "A", "strength": 2, "reason": "x" * 10_001}, "reason"),
    ]:
        r = client.post(f"/api/assignments/{view['id']}/label", headers=h, json=body)
        assert r.status_code == 422 and needle in r.text
    assert store.progress("c1")["labels"] == 0
    r = client.post("/api/admin/campaigns", headers=bearer(ADMIN), json={"name": "c1", "items": []})
    assert r.status_code == 422 and "no items to label" in r.json()["detail"]
    r = client.post(
        "/api/admin/campaigns",
        headers=bearer(ADMIN),
        json={"name": "big", "items": [{"prompt": "p", "responses": ["a", "b"]}], "raters_per_item": 5},
    )
    assert r.status_code == 422 and "raters_per_item=5 but only 3" in r.json()["detail"]


def test_hostile_outputs_are_data_and_the_page_cannot_run_them() -> None:
    store = Store("sqlite://")
    token = store.add_rater("ann")
    store.create_campaign("x", [{"prompt": SCRIPT, "responses": [IMG, SCRIPT]}], rubric=IMG, seed=1)
    client = TestClient(create_app(store, ADMIN))
    view = client.get("/api/campaigns/x/next", headers=bearer(token)).json()["assignment"]
    assert sorted(view["responses"]) == sorted([IMG, SCRIPT]) and view["prompt"] == SCRIPT and view["rubric"] == IMG
    r = client.get("/api/campaigns/x/next", headers=bearer(token))
    assert r.headers["content-type"] == "application/json" and r.headers["x-content-type-options"] == "nosniff"
    # the page: static HTML with no data in it, served with a CSP that forbids inline script
    page = client.get("/")
    assert page.status_code == 200 and "onerror" not in page.text and "__pwned" not in page.text
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", page.text)  # no inline script blocks
    assert not re.search(r"\son[a-z]+=", page.text)  # no inline event handlers
    js = client.get("/static/app.js")
    assert js.status_code == 200 and js.headers["content-security-policy"] == csp
    code = re.sub(r"^\s*//[^\n]*", "", js.text, flags=re.M)  # comments may name the sinks they avoid
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in code, sink  # model text only ever goes through textContent
    assert "textContent" in code
    assert (STATIC / "style.css").is_file()
    rows = client.get("/api/admin/campaigns/x/export?adjudication=none&partial=true", headers=bearer(ADMIN)).json()
    assert rows == []


# ---------------------------------------------------------------- CLI


def run_cli(*argv: str) -> int:
    return annotate_cli.main(list(argv))


def test_cli_create_add_rater_export_quality_status(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    db = str(tmp_path / "ann.db")
    names = ["u1", "u2", "u3"]
    for n in names:
        assert run_cli("add-rater", n, "--db", db) == 0
    tokens = [line for line in capsys.readouterr().out.split()]
    assert len(tokens) == 3 and len(set(tokens)) == 3
    samples = tmp_path / "samples.jsonl"
    write_jsonl(samples, [{"prompt": f"p{i}", "responses": [f"a{i}", f"b{i}", f"c{i}"]} for i in range(4)])
    gold = tmp_path / "gold.jsonl"
    write_jsonl(gold, [{"prompt": "g", "chosen": "good", "rejected": "bad"}])
    rubric = tmp_path / "rubric.md"
    rubric.write_text("Which is more **helpful**?\n")
    rc = run_cli(
        "create", str(samples), "--db", db, "--name", "round1", "--raters-per-item", "3",
        "--rubric-file", str(rubric), "--dimensions", "helpful,harmless", "--strength-scale", "3",
        "--gold", str(gold),
    )  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0 and "9 items (1 gold)" in out and "27 labels" in out  # 4 x 2 chained pairs + 1 gold
    store = Store(db)
    assert store.campaign_info("round1")["rubric"] == "Which is more **helpful**?"
    assert store.campaign_info("round1")["dimensions"] == ["helpful", "harmless"]
    client = TestClient(create_app(store, ADMIN))
    for tok in tokens:
        label_all(
            client,
            tok,
            "round1",
            lambda v: {"choice": "B", "strength": 1, "dimensions": {"helpful": "B", "harmless": "A"}},
        )
    assert run_cli("status", "--db", db) == 0
    assert re.search(r"round1\s+pairwise\s+9/9\s+27/27", capsys.readouterr().out)
    out_file = tmp_path / "prefs.jsonl"
    assert run_cli("export", "--db", db, "--campaign", "round1", "-o", str(out_file), "--adjudication", "none") == 0
    assert "wrote 24 rows" in capsys.readouterr().out  # 27 labels less the gold item's 3
    prefs = load_examples(out_file, "preference")  # the preference loader accepts what export writes
    assert len(prefs) == 24 and {p.rater for p in prefs} == set(names)
    assert run_cli("export", "--db", db, "--campaign", "round1", "-o", str(out_file)) == 0
    rows = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert len(rows) == 8 and all(r["rater"] == "adjudicated" for r in rows)
    assert "good" not in {r["chosen"] for r in rows} | {r["rejected"] for r in rows}  # the gold pair
    assert run_cli("quality", "--db", db, "--campaign", "round1") == 0
    text = capsys.readouterr().out
    assert "Fleiss' kappa" in text and "Krippendorff's alpha" in text and "u1|u2" in text
    assert run_cli("quality", "--db", db, "--campaign", "round1", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["dimensions"]) == {"helpful", "harmless"} and report["n_labels"] == 27
    # errors: one line, exit 2
    assert run_cli("export", "--db", db, "--campaign", "nope", "-o", str(out_file)) == 2
    assert run_cli("add-rater", "u1", "--db", db) == 2
    assert run_cli("create", str(tmp_path / "missing.jsonl"), "--db", db, "--name", "x") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "rlhfkit annotate: error: no campaign named 'nope'",
        "rlhfkit annotate: error: rater 'u1' already exists: `rlhfkit annotate add-rater u1 --reset` gives them a "
        "new token",
        f"rlhfkit annotate: error: data file not found: {tmp_path / 'missing.jsonl'}",
    ]
    assert run_cli("add-rater", "u1", "--reset", "--db", db) == 0
    assert store.rater_by_token(tokens[0]) is None


def test_register_adds_annotate_to_the_main_cli() -> None:
    parser = argparse.ArgumentParser(prog="rlhfkit")
    annotate_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["annotate", "export", "--campaign", "c", "-o", "x.jsonl", "--adjudication", "median"])
    assert args.handler is annotate_cli._export and args.adjudication == "median" and args.db == "annotations.db"
    args = parser.parse_args(["annotate", "serve", "--db", "sqlite:///x.db", "--port", "9000", "--host", "0.0.0.0"])
    assert args.handler is annotate_cli._serve and args.port == 9000
    for sub in ("create", "add-rater", "quality", "status"):
        with pytest.raises(SystemExit):
            parser.parse_args(["annotate", sub, "--help"])


def test_cli_export_refuses_mid_campaign_and_warns_with_partial(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    db = str(tmp_path / "ann.db")
    store = Store(db)
    tokens = [store.add_rater(n) for n in ("u1", "u2")]
    store.create_campaign("r", [{"prompt": f"p{i}", "responses": ["a", "b"]} for i in range(3)], raters_per_item=2)
    client = TestClient(create_app(store, ADMIN))
    label_all(client, tokens[0], "r", lambda v: {"choice": "A", "strength": 1})  # u2 has not started
    out = tmp_path / "prefs.jsonl"
    assert run_cli("export", "--db", db, "--campaign", "r", "-o", str(out)) == 2
    err = capsys.readouterr().err
    assert "campaign 'r' is not fully labelled: 3 of 3 items have fewer than 2 label(s) (3/6 labels)" in err
    assert "--partial" in err and not out.exists()
    r = client.get("/api/admin/campaigns/r/export", headers=bearer(ADMIN))
    assert r.status_code == 409 and "not fully labelled" in r.json()["detail"]
    assert len(client.get("/api/admin/campaigns/r/export?partial=true", headers=bearer(ADMIN)).json()) == 3
    assert run_cli("export", "--db", db, "--campaign", "r", "-o", str(out), "--partial") == 0
    captured = capsys.readouterr()
    assert "warning: campaign 'r' is not fully labelled (0/3 items have all their labels, 3/6 labels)" in captured.err
    assert "wrote 3 rows" in captured.out and len(out.read_text().splitlines()) == 3


def test_cli_create_names_the_file_that_is_not_utf8(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    db = str(tmp_path / "ann.db")
    assert run_cli("add-rater", "u1", "--db", db) == 0
    good = tmp_path / "samples.jsonl"
    write_jsonl(good, [{"prompt": "p", "responses": ["a", "b"]}])
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes(
        b'{"prompt": "ok", "responses": ["a", "b"]}\n'
        + '{"prompt": "caf\xe9", "responses": ["a", "b"]}\n'.encode("latin-1")
    )
    rubric = tmp_path / "rubric.txt"
    rubric.write_bytes(b"\xff\xfe rubric")
    capsys.readouterr()
    assert run_cli("create", str(bad), "--db", db, "--name", "x") == 2
    assert run_cli("create", str(good), "--db", db, "--name", "x", "--gold", str(bad)) == 2
    assert run_cli("create", str(good), "--db", db, "--name", "x", "--rubric-file", str(rubric)) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"rlhfkit annotate: error: {bad}:2: not UTF-8 text (byte 0xe9 at column 16): save the file as UTF-8",
        f"rlhfkit annotate: error: {bad}:2: not UTF-8 text (byte 0xe9 at column 16): save the file as UTF-8",
        f"rlhfkit annotate: error: {rubric}:1: not UTF-8 text (byte 0xff at column 1): save the file as UTF-8",
    ]


def readme_annotate_commands() -> list[list[str]]:
    """The README's annotation walkthrough: its first bash block after the heading, as argument lists."""
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Human feedback: the annotation app", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    lines = block.replace("\\\n", " ").splitlines()
    return [shlex.split(line, comments=True) for line in lines if line.strip()]


def test_readme_annotate_walkthrough_runs_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(annotate_cli.DB_ENV, raising=False)
    write_jsonl("samples.jsonl", [{"prompt": f"p{i}", "responses": [f"a{i}", f"b{i}"]} for i in range(4)])
    write_jsonl("gold.jsonl", [{"prompt": "g", "chosen": "right", "rejected": "wrong"}])
    commands = readme_annotate_commands()
    assert [c[:3] for c in commands][0] == ["rlhfkit", "annotate", "add-rater"]
    tokens: list[str] = []
    for argv in commands:
        assert argv[:2] == ["rlhfkit", "annotate"], argv
        if argv[2] == "serve":  # the raters label in the browser meanwhile: here, through the API
            parser = argparse.ArgumentParser()
            annotate_cli.register(parser.add_subparsers(dest="command"))
            assert parser.parse_args(argv[1:]).handler is annotate_cli._serve
            client = TestClient(create_app(Store("annotations.db"), ADMIN))
            for token in tokens:
                label_all(client, token, "round1", lambda v: {"choice": "A", "strength": 2, "dimensions": {
                    "helpful": "A", "harmless": "tie"}})  # fmt: skip
            continue
        assert run_cli(*argv[2:]) == 0, (argv, capsys.readouterr().err)
        out = capsys.readouterr().out
        if argv[2] == "add-rater":
            tokens.append(out.split()[-1])
    assert len(tokens) == 3
    rows = load_examples("prefs.jsonl", "preference")
    assert len(rows) == 4 and {r.rater for r in rows} == {"adjudicated"}  # the gold item is not a training row
