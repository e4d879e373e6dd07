"""Live human feedback during training: the feed's rules on an in-memory store with a fake clock (push, fold, staleness,
pause, timeout, resume), the store's growing campaigns, the weighted DPO loss, and `rlhfkit run` with label.live on a
tiny model while rater threads label through the real HTTP API of a uvicorn server."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch
import uvicorn

from rlhfkit.config import ConfigError, LiveConfig, resolve
from rlhfkit.data import write_jsonl
from rlhfkit.feedback.app import create_app
from rlhfkit.feedback.live import (
    EVENTS_FILE,
    LABELS_FILE,
    LiveFeed,
    LiveTimeout,
    RateMeter,
    SampledPair,
    staleness_weight,
)
from rlhfkit.feedback.store import Store
from rlhfkit.losses import PREFERENCE_LOSSES
from rlhfkit.models.tiny import save_tiny
from rlhfkit.pipeline import load_pipeline, run_pipeline, stage_records

ADMIN = "admin-secret-token-at-least-32-characters"


def vowel_share(prompts: list, responses: list[str]) -> list[float]:
    """The raters' rule (and the run's gold): share of a response's characters that are lower-case vowels."""
    return [sum(ch in "aeiou" for ch in r) / max(len(r), 1) for r in responses]


# ---------------------------------------------------------------------------------------------------------------------
# pure rules


def test_staleness_weight_and_rate_by_hand() -> None:
    assert staleness_weight(0, 2, "drop", 0.5) == staleness_weight(2, 2, "drop", 0.5) == 1.0
    assert staleness_weight(3, 2, "drop", 0.5) == 0.0
    assert staleness_weight(3, 2, "downweight", 0.5) == 0.5 and staleness_weight(5, 2, "downweight", 0.5) == 0.125
    meter = RateMeter(window=30.0)
    meter.add(0.0, 3)
    meter.add(20.0, 2)
    assert meter.rate(25.0) == pytest.approx(5 * 60 / 30)  # 5 labels in the last 30 s
    assert meter.rate(30.0) == pytest.approx(2 * 60 / 30)  # the first 3 left the window
    assert meter.rate(60.0) == 0.0


def test_live_settings_are_checked_at_load() -> None:
    with pytest.raises(ConfigError, match="batch_pairs=9 must be <= queue=8"):
        resolve(LiveConfig(db="x", batch_pairs=9))
    with pytest.raises(ConfigError, match="stale_decay"):
        resolve(LiveConfig(db="x", stale="downweight", stale_decay=0.0))


# ---------------------------------------------------------------------------------------------------------------------
# the feed on an in-memory store, with a fake clock


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, dt: float) -> None:
        self.t += dt


def sampler(calls: list[list[int]]):
    """Fake policy: response ids [10 + prompt, k] for k in (1, 2); the texts say which is which."""

    def sample(rows: list[int]) -> list[SampledPair]:
        calls.append(list(rows))
        return [SampledPair(i, f"prompt {i}", (f"a{i}", f"b{i}"), ([10 + i, 1], [10 + i, 2])) for i in rows]

    return sample


def label_all(store: Store, campaign: str, prefer: str = "b") -> int:
    """Every rater labels their open items, preferring the response whose text starts with `prefer`."""
    n = 0
    for name in store.raters():
        rid = store.rater_by_token(TOKENS[name]).id
        while (a := store.next_assignment(rid, campaign)) is not None:
            choice = "A" if a["responses"][0].startswith(prefer) else "B"
            store.submit(rid, a["id"], {"choice": choice, "strength": 1})
            n += 1
    return n


TOKENS: dict[str, str] = {}


def make_feed(tmp_path: Path, clock: Clock, out: str = "out", **cfg) -> tuple[LiveFeed, Store]:
    db = f"sqlite:///{tmp_path / 'a.db'}"
    store = Store(db)
    for name in ("ann", "bob"):
        if name not in store.raters():
            TOKENS[name] = store.add_rater(name)
    c = resolve(LiveConfig(db=db, campaign="c", **({"queue": 4, "batch_pairs": 2, "poll_seconds": 1.0} | cfg)))
    feed = LiveFeed(c, tmp_path / out, seed=1, clock=clock, sleep=clock.sleep, log=lambda _: None)
    return feed, store


def raters_answer_while_waiting(feed: LiveFeed, store: Store, clock: Clock, prefer: str = "b") -> None:
    """The feed's sleep: time passes, then every rater labels what is open."""

    def sleep(dt: float) -> None:
        clock.sleep(dt)
        label_all(store, feed.campaign, prefer)

    feed.sleep = sleep


def log_rows(tmp_path: Path, name: str = LABELS_FILE, out: str = "out") -> list[dict]:
    return [json.loads(x) for x in (tmp_path / out / "live" / name).read_text().splitlines()]


def test_feed_pushes_folds_and_orders_pairs_by_the_label(tmp_path: Path) -> None:
    clock, calls = Clock(), []
    feed, store = make_feed(tmp_path, clock)
    feed.restore(None, 0, n_prompts=10, resume=False)
    raters_answer_while_waiting(feed, store, clock, prefer="b")
    pairs = feed.next_batch(0, sampler(calls))
    # `queue` pairs pushed at once, from 4 distinct prompts, each to one rater; once labelled, the queue is refilled
    # before the update (raters keep working while it trains): 8 pairs of version 0
    assert [len(set(c)) for c in calls] == [4, 4] and not set(calls[0]) & set(calls[1])
    items = store.items("c")
    assert len(items) == 8 and {it["origin"]["version"] for it in items} == {0}
    assert sum(len(store.rater_queue(store.rater_by_token(t).id, "c")) for t in TOKENS.values()) == 8
    # the raters prefer "b" = ids [10 + prompt, 2]: chosen and rejected follow the label, not the display order
    assert len(pairs) == 4 and all(p.chosen == [10 + p.prompt_index, 2] and p.rejected[-1] == 1 for p in pairs)
    assert all(p.version == 0 and p.age == 0 and p.weight == 1.0 for p in pairs)
    assert sorted(r["item"] for r in log_rows(tmp_path)) == [0, 1, 2, 3]
    # after the update the pairs sampled before it come back one version old; used pairs never come back
    raters_answer_while_waiting(feed, store, clock, prefer="a")
    again = feed.next_batch(1, sampler(calls))
    assert sorted(p.item for p in again) == [4, 5, 6, 7] and all(p.chosen[-1] == 1 for p in again)
    assert all(p.version == 0 and p.age == 1 for p in again)
    assert len(calls) == 3 and {it["origin"]["version"] for it in store.items("c")[8:]} == {1}
    assert feed.metrics()["labels"] == 8.0 and feed.metrics()["pushed"] == 12.0


@pytest.mark.parametrize("mode", ["drop", "downweight"])
def test_stale_labels_are_dropped_or_downweighted_and_counted(tmp_path: Path, mode: str) -> None:
    clock = Clock()
    feed, store = make_feed(tmp_path, clock, staleness=1, stale=mode, stale_decay=0.5, wait_timeout=3.0)
    feed.restore(None, 0, n_prompts=10, resume=False)
    feed.version = 0
    feed._refill(sampler([]))  # 4 pairs of version 0 ...
    label_all(store, "c")  # ... labelled only when the policy is at version 3: age 3 > K = 1
    if mode == "drop":
        with pytest.raises(LiveTimeout, match="0 of live.batch_pairs=2 labelled pairs ready"):
            feed.next_batch(3, lambda rows: [])  # stale labels never make a batch
        assert [r["status"] for r in log_rows(tmp_path)] == ["stale"] * 4
        assert all(r["age"] == 3 and r["weight"] == 0 for r in log_rows(tmp_path))
        assert feed.metrics()["stale"] == 4.0 and feed.metrics()["pending"] == 0.0
    else:
        pairs = feed.next_batch(3, sampler([]))
        assert len(pairs) == 4 and all(p.age == 3 and p.weight == pytest.approx(0.5**2) for p in pairs)
        assert feed.metrics()["downweighted"] == 4.0 and feed.metrics()["stale"] == 0.0


def test_pause_below_the_minimum_rate_then_resume_then_timeout(tmp_path: Path) -> None:
    clock = Clock()
    # at least 2 labels a minute (over a 60 s window), or training waits even with a batch ready
    feed, store = make_feed(tmp_path, clock, min_rate=2.0, window=60.0, wait_timeout=300.0, poll_seconds=10.0)
    feed.restore(None, 0, n_prompts=10, resume=False)
    ann = store.rater_by_token(TOKENS["ann"]).id

    def sleep(dt: float) -> None:  # one label at t=20 s, one at t=40 s: the rate reaches 2/min at 40 s
        clock.sleep(dt)
        if clock.t in (20.0, 40.0):
            a = store.next_assignment(ann, "c")
            store.submit(ann, a["id"], {"choice": "A", "strength": 1})

    feed.sleep = sleep
    pairs = feed.next_batch(0, sampler([]))
    events = log_rows(tmp_path, EVENTS_FILE)
    assert [e["event"] for e in events if e["event"] in ("pause", "resume", "update")] == ["pause", "resume", "update"]
    pause = next(e for e in events if e["event"] == "pause")
    assert pause["rate"] == 0.0 and "live.min_rate=2" in pause["reason"]
    resume = next(e for e in events if e["event"] == "resume")
    assert resume["rate"] == pytest.approx(2.0) and feed.paused_s == pytest.approx(40.0)
    assert len(pairs) == 2 and clock.t == pytest.approx(40.0)
    # raters gone: the rate falls under the minimum as the window passes, and the wait ends in a clear error
    feed.sleep = clock.sleep
    with pytest.raises(LiveTimeout, match=r"no update for 300 s at version 1 \(paused: 0.0 labels/min"):
        feed.next_batch(1, sampler([]))
    assert log_rows(tmp_path, EVENTS_FILE)[-1]["event"] == "timeout"


def test_resume_refolds_what_the_checkpoint_had_not_used_and_reuses_nothing(tmp_path: Path) -> None:
    clock = Clock()
    feed, store = make_feed(tmp_path, clock)
    feed.restore(None, 0, n_prompts=10, resume=False)
    raters_answer_while_waiting(feed, store, clock)
    first = feed.next_batch(0, sampler([]))
    state = json.loads(json.dumps(feed.state()))  # what the checkpoint after update 0 holds
    lost = feed.next_batch(1, sampler([]))  # the run dies before the checkpoint of update 1
    again, _ = make_feed(tmp_path, clock)
    again.restore(state, 1, n_prompts=10, resume=True)
    assert again.campaign == "c" and again.cursor == state["cursor"] == 8  # the same campaign, the prompt order on
    redo = again.next_batch(1, sampler([]))
    assert {p.item for p in redo} == {p.item for p in lost} and not {p.item for p in redo} & {p.item for p in first}
    items = [r["item"] for r in log_rows(tmp_path)]
    assert sorted(items) == sorted(set(items)) == list(range(8))  # each pair logged once
    # a fresh run never streams into an earlier run's campaign
    other, _ = make_feed(tmp_path, clock, out="other")
    other.restore(None, 0, n_prompts=10, resume=False)
    assert other.campaign == "c-2"


def test_append_items_grow_a_campaign_for_every_rater_in_order(tmp_path: Path) -> None:
    store = Store("sqlite://")
    tokens = {n: store.add_rater(n) for n in ("ann", "bob")}
    store.create_campaign("c", [{"prompt": "p0", "responses": ["x", "y"]}], raters_per_item=1)
    tokens["cy"] = store.add_rater("cy")  # joins mid-run: gets the next items first (least loaded)
    pos = store.append_items("c", [{"prompt": f"p{i}", "responses": [f"x{i}", f"y{i}"]} for i in (1, 2, 3, 4)])
    assert pos == [1, 2, 3, 4] and [it["position"] for it in store.items("c")] == [0, 1, 2, 3, 4]
    loads = {n: len(store.rater_queue(store.rater_by_token(t).id, "c")) for n, t in tokens.items()}
    assert sorted(loads.values()) == [1, 2, 2] and loads["cy"] == 2
    rid = store.rater_by_token(tokens["cy"]).id
    seen = []
    while (a := store.next_assignment(rid, "c")) is not None:
        seen.append(a["prompt"])
        store.submit(rid, a["id"], {"choice": "tie"})
    assert len(seen) == 2 and seen == sorted(seen)  # appended items queue in order
    new = store.new_labels("c")
    assert [x["rater"] for x in new] == ["cy", "cy"] and store.new_labels("c", after=new[-1]["id"]) == []


def test_weighted_dpo_loss_is_the_weighted_sum_by_hand() -> None:
    from rlhfkit.trainers.online_dpo import online_dpo_loss

    class Module(torch.nn.Module):
        def forward(self, input_ids, attention_mask, position_ids, response_ids, temperature, values=False):
            return self.logp, None, None

    m = Module()
    m.logp = torch.tensor([[-1.0, -1.0], [-2.0, -1.0], [-0.5, -0.5], [-1.0, -3.0]])  # rows: c0, r0, c1, r1
    ro = _pairs(4)
    ro.ref_logprobs = torch.full((4, 2), -1.5)
    w = torch.tensor([1.0, 0.25])
    loss, _ = online_dpo_loss(m, (ro, w), beta=0.5, temperature=1.0)
    ref = ro.ref_logprobs.sum(-1)
    seq = m.logp.sum(-1)
    per_pair, _, _ = PREFERENCE_LOSSES["dpo"](seq[0::2], seq[1::2], ref[0::2], ref[1::2], beta=0.5)
    by_hand = [-torch.nn.functional.logsigmoid(torch.tensor(0.5 * ((-2.0 + 3.0) - (-3.0 + 3.0)))),
               -torch.nn.functional.logsigmoid(torch.tensor(0.5 * ((-1.0 + 3.0) - (-4.0 + 3.0))))]  # fmt: skip
    assert per_pair.tolist() == pytest.approx([float(x) for x in by_hand])
    assert float(loss) == pytest.approx(float(by_hand[0] + 0.25 * by_hand[1]))


def _pairs(n: int):
    from rlhfkit.rollout import rollout_from_ids

    ro = rollout_from_ids([[5, 6]] * n, [[7, 8]] * n, pad_id=0, eos_ids=[8])
    assert ro.finished.all() and ro.response_mask.sum() == 2 * n
    return ro


# ---------------------------------------------------------------------------------------------------------------------
# `rlhfkit run` with label.live: a real uvicorn server, rater threads on its HTTP API


class Server:
    def __init__(self, db: str) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(create_app(Store(db), ADMIN), log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        t0 = time.monotonic()
        while not self.server.started:
            assert time.monotonic() - t0 < 30, "the annotation server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def read_events(events: Path) -> list[dict]:
    return [json.loads(x) for x in events.read_text().splitlines() if x.strip()] if events.exists() else []


def updates(events: Path) -> int:
    return sum(e["event"] == "update" for e in read_events(events))


def rater(url: str, token: str, done: threading.Event, active: threading.Event, hold=None, log=None) -> None:
    """Label through the HTTP API: prefer the response with the larger vowel share (a tie when equal). `hold(view)`
    blocks before answering (a slow rater)."""
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
        while not done.is_set():
            if not active.wait(0.05):
                continue
            open_ = [c["name"] for c in client.get("/api/me").json()["campaigns"] if c["progress"]["done"] < c["progress"]["total"]]  # fmt: skip
            nxt = client.get(f"/api/campaigns/{open_[0]}/next").json() if open_ else {"done": True}
            if nxt["done"]:
                time.sleep(0.05)
                continue
            view = nxt["assignment"]
            if hold is not None:
                hold(view)
            a, b = vowel_share([], view["responses"])
            choice = "A" if a > b else "B" if b > a else "tie"
            r = client.post(f"/api/assignments/{view['id']}/label", json={"choice": choice, "strength": 2})
            assert r.status_code == 201, r.text
            if log is not None:
                log.append(view["id"])


def test_run_with_live_feedback_through_the_http_api(tmp_path: Path) -> None:
    root = tmp_path
    save_tiny(root / "tiny", "causal")
    write_jsonl(root / "prompts.jsonl", [{"prompt": f"the film number {i} was"} for i in range(40)])
    db = f"sqlite:///{root / 'annotations.db'}"
    store = Store(db)
    tokens = {n: store.add_rater(n) for n in ("fast1", "fast2", "slow")}
    out, K, steps = root / "run", 1, 8
    gold = [{"kind": "callable", "path": "tests.test_live:vowel_share"}]
    d = {
        "output": str(out),
        "model": str(root / "tiny"),
        "rounds": 1,
        "seed": 3,
        "prompts": {"train": str(root / "prompts.jsonl"), "eval_count": 6, "template": "Say: {prompt}"},
        "label": {
            "source": "human",
            "db": db,
            "gold": gold,
            "live": {
                "queue": 6,
                "batch_pairs": 3,
                "staleness": K,
                "min_rate": 30.0,
                "window": 2.0,
                "wait_timeout": 120.0,
                "poll_seconds": 0.1,
            },
        },  # fmt: skip
        "optimize": {
            "algorithm": "online-dpo",
            "train": {"max_steps": steps, "lr": 3e-3, "eval_every": 4, "save_every": 2},
            "algo": {"dpo_beta": 0.5},
            "sampling": {"max_new_tokens": 6},
            "eval_samples": 6,
        },
        "eval": {"sampling": {"max_new_tokens": 6, "batch_size": 16}, "examples": 2},
    }
    (root / "p.yaml").write_text(json.dumps(d))
    cfg = load_pipeline(root / "p.yaml")
    events = out / "round-1/optimize/live" / EVENTS_FILE
    done, active = threading.Event(), threading.Event()
    slow_labelled: list[int] = []

    def hold(view: dict) -> None:  # the slow rater answers its first pair only once the policy moved past it
        if not slow_labelled:
            while updates(events) < K + 2 and not done.is_set():
                time.sleep(0.05)

    errors: list[BaseException] = []

    def pipeline() -> None:
        try:
            run_pipeline(cfg, str(root / "p.yaml"))
        except BaseException as e:  # surfaced below
            errors.append(e)

    with Server(db) as server:
        threads = [
            threading.Thread(
                target=rater,
                args=(server.url, tokens[n], done, active),
                kwargs={"hold": hold, "log": slow_labelled} if n == "slow" else {},
                daemon=True,
            )
            for n in tokens
        ]
        for t in threads:
            t.start()
        trainer = threading.Thread(target=pipeline)
        trainer.start()
        active.set()
        try:
            # raters stop after 4 updates: training pauses instead of drifting on old labels ...
            t0 = time.monotonic()
            while updates(events) < 4:
                assert trainer.is_alive() and time.monotonic() - t0 < 240, errors
                time.sleep(0.05)
            active.clear()
            stopped = updates(events)
            while not any(e["event"] == "pause" and e["version"] >= stopped for e in read_events(events)):
                assert trainer.is_alive() and time.monotonic() - t0 < 240, errors
                time.sleep(0.05)
            paused_at = updates(events)
            time.sleep(1.0)
            assert updates(events) == paused_at  # no update while paused
            active.set()  # ... and goes on when they come back
            trainer.join(timeout=300)
        finally:
            done.set()
            active.set()
    assert not trainer.is_alive() and not errors, errors

    # labels were folded in, each pair once; nothing older than K versions trained; the stale ones counted
    rows = [json.loads(x) for x in (out / "round-1/optimize/live" / LABELS_FILE).read_text().splitlines()]
    trained = [r for r in rows if r["status"] == "trained"]
    stale = [r for r in rows if r["status"] == "stale"]
    assert len(trained) >= 3 * steps and len({r["item"] for r in rows}) == len(rows)
    assert all(r["age"] <= K for r in trained) and stale and all(r["age"] > K for r in stale)
    assert any("slow" in r["raters"] for r in stale)
    metrics = [json.loads(x) for x in (out / "round-1/optimize/metrics.jsonl").read_text().splitlines()]
    train = [m for m in metrics if "train/live/labels" in m]
    assert len(train) == steps and train[-1]["train/live/stale"] == len(stale)
    assert 3 * steps <= train[-1]["train/live/labels"] <= len(store.new_labels(f"{out.name}-round-1"))  # raters go on
    evs = [e for e in read_events(events) if e["event"] in ("pause", "resume", "update")]
    i = next(i for i, e in enumerate(evs) if e["event"] == "pause" and e["version"] >= 4)  # the raters' break
    assert evs[i]["rate"] < 30 and evs[i + 1]["event"] == "resume" and "update" in [e["event"] for e in evs[i + 2 :]]
    assert evs[i + 1]["paused_s"] >= 1.0 and train[-1]["train/live/paused_s"] >= 1.0

    # DPO moved the policy toward the raters' preference: the implicit reward margin of the labelled pairs is positive
    margin = implicit_margin(root / "tiny", out / "round-1/optimize/model", store, f"{out.name}-round-1", rows)
    assert margin > 0, margin

    # the run's stages and its report: labels per minute, staleness, gold over time
    assert [f"{r['round']}/{r['stage']}" for r in stage_records(out)] == ["0/prompts", "0/eval", "1/optimize", "1/eval"]
    md = (out / "report.md").read_text()
    assert "Live feedback" in md and "labels_per_min" in md and "stale_dropped" in md
    assert 'id="live"' in (out / "report.html").read_text()


@torch.no_grad()
def implicit_margin(ref_dir: Path, policy_dir: Path, store: Store, campaign: str, rows: list[dict]) -> float:
    """Mean over trained pairs of (log pi - log pi_ref)(chosen) - (log pi - log pi_ref)(rejected)."""
    from rlhfkit.models import load_for_inference
    from rlhfkit.rollout import response_logprobs, rollout_from_ids

    items = {it["position"]: it for it in store.items(campaign)}
    labels = {x["item"]: x["choice"] for x in store.new_labels(campaign)}
    trained = [r["item"] for r in rows if r["status"] == "trained"]
    policy, tok = load_for_inference(str(policy_dir), "float32")
    ref, _ = load_for_inference(str(ref_dir), "float32")
    from rlhfkit.data import ChatFormatter
    from rlhfkit.data.schemas import parse_prompt

    fmt = ChatFormatter(tok, 1024, 256, "keep_end")
    prompts, responses = [], []
    for i in trained:
        ids = items[i]["origin"]["ids"]
        first = 0 if labels[i] == "0" else 1
        p = fmt.encode_prompt(parse_prompt({"prompt": items[i]["prompt"]}).prompt)
        prompts += [p, p]
        responses += [ids[first], ids[1 - first]]
    ro = rollout_from_ids(prompts, responses, tok.pad_token_id or 0, [tok.eos_token_id])
    diff = (response_logprobs(policy, ro, 1.0) - response_logprobs(ref, ro, 1.0)) * ro.response_mask
    seq = diff.sum(-1)
    return float((seq[0::2] - seq[1::2]).mean())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"label": {"source": "simulated"}}, "label.live needs source=human, got source=simulated"),
        ({"optimize": {"algorithm": "ppo"}}, "label.live trains with optimize.algorithm=online-dpo, got ppo"),
        ({"eval": {"judge": "rm"}}, "label.live trains no reward model: eval.judge must be gold or judge"),
        ({"label": {"live": {"queue": 2, "batch_pairs": 3}}}, "label.live.batch_pairs=3 must be <= queue=2"),
        ({"optimize": {"train": {"max_steps": 0}}}, "live feedback: train.max_steps (updates) must be set"),
    ],
)
def test_live_pipeline_settings_fail_at_load_naming_the_key(tmp_path: Path, change: dict, message: str) -> None:
    from rlhfkit.config import deep_merge

    d = {
        "output": str(tmp_path / "run"),
        "label": {"source": "human", "live": {"queue": 8}},
        "optimize": {"algorithm": "online-dpo", "train": {"max_steps": 4}},
    }
    (tmp_path / "p.yaml").write_text(json.dumps(deep_merge(d, change)))
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_pipeline(tmp_path / "p.yaml")
