"""Live human feedback during training (online human feedback, as in RLOHF): fresh samples of the current policy stream
into an annotation campaign while training goes on, and the labels are folded in as they arrive. Torch-free: the
trainer (trainers/online_dpo.py) samples and updates; this module decides what goes to the raters and what comes back.

    push:   keep up to `queue` pairs waiting for raters: once `batch_pairs` of them are labelled (or stale), the current
            policy samples more, each pair tagged with the policy's version (the number of updates behind it)
    fold:   read the labels that came since the last read; a pair is decided once all its raters have answered
            (majority; a tie carries no preference and is not trained on)
    weigh:  age = version of the update - version that sampled the pair; age > K (`staleness`) is stale: dropped
            (stale=drop) or weighted stale_decay^(age - K) (stale=downweight); either way counted
    gate:   an update waits until `batch_pairs` usable pairs are in AND the label rate over the last `window` seconds
            is at least `min_rate` per minute: below it training pauses (logged, with the rate) instead of drifting on a
            trickle of labels; no update for `wait_timeout` seconds raises LiveTimeout
    log:    OUT/live/labels.jsonl (one row per decided pair), OUT/live/events.jsonl (push, pause, resume, update, timeout)

Nothing is lost on interruption: pairs and labels live in the store, and the checkpoint keeps which pairs were used,
so a resumed run folds in every label it has not trained on, those that came while it was down included.
"""

from __future__ import annotations

import json
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhfkit.config import LiveConfig
from rlhfkit.feedback.agreement import adjudicate
from rlhfkit.feedback.store import NotFoundError, Store

LIVE_DIR = "live"
LABELS_FILE = "labels.jsonl"
EVENTS_FILE = "events.jsonl"
STATE_FILE = "campaign.json"


class LiveTimeout(RuntimeError):
    """No update was possible for `live.wait_timeout` seconds (raters gone, or labelling below `live.min_rate`)."""


@dataclass(frozen=True)
class SampledPair:
    """Two responses of the current policy to one prompt, as the trainer hands them over."""

    prompt_index: int  # into the trainer's prompts
    prompt: Any  # what raters see: a string or a list of {"role", "content"} messages
    texts: tuple[str, str]
    ids: tuple[list[int], list[int]]  # the sampled response tokens (EOS included when sampled)


@dataclass(frozen=True)
class LabelledPair:
    """A decided pair ready for the DPO update."""

    item: int  # position in the campaign
    prompt_index: int
    chosen: list[int]
    rejected: list[int]
    version: int  # the policy version that sampled it
    age: int  # versions between that policy and the one it updates
    weight: float


def staleness_weight(age: int, staleness: int, mode: str, decay: float) -> float:
    """1 within `staleness` versions; beyond: 0 (drop) or decay^(age - staleness) (downweight)."""
    if age <= staleness:
        return 1.0
    return 0.0 if mode == "drop" else decay ** (age - staleness)


class RateMeter:
    """Events per minute over a sliding window of `window` seconds."""

    def __init__(self, window: float) -> None:
        self.window = window
        self.times: deque[float] = deque()

    def add(self, t: float, n: int = 1) -> None:
        self.times.extend([t] * n)

    def rate(self, now: float) -> float:
        while self.times and self.times[0] <= now - self.window:
            self.times.popleft()
        return len(self.times) * 60.0 / self.window


class LiveFeed:
    """The campaign side of a live run. `next_batch(version, sample)` blocks until an update may happen and returns its
    pairs; `state()` goes into checkpoints and `restore()` takes it back."""

    def __init__(
        self,
        cfg: LiveConfig,
        out_dir: str | Path,
        seed: int = 0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        log: Callable[[str], None] = print,
    ) -> None:
        """Opens the store and checks it has enough raters: call before any model is loaded."""
        self.cfg, self.seed, self.clock, self.sleep, self.say = cfg, seed, clock, sleep, log
        self.dir = Path(out_dir) / LIVE_DIR
        try:
            self.store = Store(cfg.db)
        except (ValueError, FileNotFoundError, ConnectionError) as e:
            raise ValueError(f"live.db={cfg.db!r}: {e}") from None
        raters = self.store.raters()
        if len(raters) < cfg.raters_per_item:
            raise ValueError(
                f"live.db={cfg.db!r} has {len(raters)} rater(s) but live.raters_per_item={cfg.raters_per_item}: add "
                f"raters first (rlhfkit annotate add-rater NAME --db {cfg.db})"
            )
        self.campaign = cfg.campaign.strip()
        self.version = 0
        self.n_prompts = 0
        self.cursor = 0  # prompts handed out so far (a seeded permutation per pass)
        self._order: tuple[int, list[int]] | None = None
        self.used: set[int] = set()  # decided pairs (trained, stale or tie)
        self.items: dict[int, dict[str, Any]] = {}  # position -> {"version", "prompt_index", "ids"}
        self.votes: dict[int, list[tuple[str, float, str]]] = {}  # position -> [(choice, strength, rater)]
        self.last_label = 0
        self.rate = RateMeter(cfg.window)
        self.pushed_at: dict[int, float] = {}
        self.counts = {"labels": 0, "pushed": 0, "trained": 0, "stale": 0, "downweighted": 0, "ties": 0}
        self.paused_s = 0.0
        self.started = time.time()

    # ------------------------------------------------------------ state

    def restore(self, state: dict[str, Any] | None, step: int, n_prompts: int, resume: bool) -> None:
        """Start (state None) or resume from a checkpoint's state at update `step`; rereads the campaign's pairs and
        labels, so labels that came while the run was down are folded in."""
        self.n_prompts, self.version = n_prompts, step
        self.dir.mkdir(parents=True, exist_ok=True)
        saved = self.dir / STATE_FILE
        if resume and saved.exists():  # the campaign of this run (an interrupted run before its first checkpoint too)
            self.campaign = json.loads(saved.read_text())["campaign"]
        else:
            taken = {c["name"] for c in self.store.campaigns()}
            base, n = self.campaign, 1
            while self.campaign in taken:  # an earlier run's campaign: its pairs are not this policy's
                n += 1
                self.campaign = f"{base}-{n}"
            if n > 1:
                self.say(f"live: campaign {base!r} belongs to an earlier run; streaming into {self.campaign!r}")
            saved.write_text(json.dumps({"campaign": self.campaign, "db": self.store.url, "started": self.started}))
        self.started = json.loads(saved.read_text()).get("started", self.started)
        if state:
            self.used = set(state["used"])
            self.cursor = int(state["cursor"])
            self.counts.update(state["counts"])
            self.paused_s = float(state["paused_s"])
        self._truncate(self.dir / LABELS_FILE, step)
        try:
            for item in self.store.items(self.campaign):
                self.items[item["position"]] = item["origin"]
        except NotFoundError:
            pass
        self._fold(count_rate=False)
        self._event("start" if not state else "resume_run", step=step)

    def state(self) -> dict[str, Any]:
        return {
            "used": sorted(self.used),
            "cursor": self.cursor,
            "counts": dict(self.counts),
            "paused_s": self.paused_s,
        }

    # ------------------------------------------------------------ the loop's one call

    def next_batch(self, version: int, sample: Callable[[list[int]], list[SampledPair]]) -> list[LabelledPair]:
        """Block until an update at `version` may happen; returns its pairs (each used once). sample(prompt indices)
        draws two responses per prompt from the current policy."""
        c = self.cfg
        self.version = version
        t0 = self.clock()
        paused_since: float | None = None
        while True:
            self._fold()
            self._refill(sample)
            pairs = self._usable()
            now = self.clock()
            rate = self.rate.rate(now)
            rate_ok = c.min_rate <= 0 or rate >= c.min_rate
            if rate_ok and paused_since is not None:
                self.paused_s += now - paused_since
                self._event("resume", paused_s=round(now - paused_since, 3), rate=rate)
                self.say(f"live: resumed at version {version} ({rate:.1f} labels/min)")
                paused_since = None
            if rate_ok and len(pairs) >= c.batch_pairs:
                return self._take(pairs, rate)
            if not rate_ok and paused_since is None:
                paused_since = now
                why = f"{rate:.1f} labels/min over the last {c.window:.0f} s < live.min_rate={c.min_rate:g}"
                self._event("pause", rate=rate, ready=len(pairs), reason=why)
                self.say(f"live: paused at version {version}: {why}; waiting for raters")
            if c.wait_timeout and now - t0 > c.wait_timeout:
                state = f"paused: {rate:.1f} labels/min < live.min_rate={c.min_rate:g}" if not rate_ok else "waiting"
                self._event("timeout", rate=rate, ready=len(pairs))
                raise LiveTimeout(
                    f"live: no update for {c.wait_timeout:.0f} s at version {version} ({state}; {len(pairs)} of "
                    f"live.batch_pairs={c.batch_pairs} labelled pairs ready, {self._pending()} waiting for raters in "
                    f"campaign {self.campaign!r} of {self.store!r})"
                )
            self.sleep(c.poll_seconds)

    def metrics(self) -> dict[str, float]:
        """Cumulative counts and the current rate, for the trainer's log (prefixed live/)."""
        return {
            "labels": float(self.counts["labels"]),
            "labels_per_min": self.rate.rate(self.clock()),
            "pushed": float(self.counts["pushed"]),
            "pending": float(self._pending()),
            "stale": float(self.counts["stale"]),
            "downweighted": float(self.counts["downweighted"]),
            "ties": float(self.counts["ties"]),
            "paused_s": self.paused_s,
            "minutes": (time.time() - self.started) / 60.0,
        }

    # ------------------------------------------------------------ internals

    def _age(self, position: int) -> int:
        # a pair sampled after the checkpoint a run resumed from came from weights since lost: as off-policy as its
        # distance in versions, in either direction
        return abs(self.version - int(self.items[position]["version"]))

    def _fold(self, count_rate: bool = True) -> None:
        try:
            new = self.store.new_labels(self.campaign, self.last_label)
        except NotFoundError:  # no pair pushed yet
            return
        for lab in new:
            self.last_label = max(self.last_label, lab["id"])
            self.votes.setdefault(lab["item"], []).append((lab["choice"], float(lab["strength"] or 0), lab["rater"]))
        if new and count_rate:
            self.rate.add(self.clock(), len(new))
        self.counts["labels"] = sum(len(v) for v in self.votes.values())

    def _decided(self, position: int) -> bool:
        return len(self.votes.get(position, ())) >= self.cfg.raters_per_item

    def _pending(self) -> int:
        """Pairs waiting for raters that are still worth labelling."""
        c = self.cfg
        return sum(
            1
            for p in self.items
            if p not in self.used and not self._decided(p) and (c.stale == "downweight" or self._age(p) <= c.staleness)
        )

    def _refill(self, sample: Callable[[list[int]], list[SampledPair]]) -> None:
        """Once batch_pairs of the queue are labelled (or stale), the current policy samples that many more (sampling
        in batches: one pair at a time would cost a generate call per label)."""
        n = self.cfg.queue - self._pending()
        if n < self.cfg.batch_pairs:
            return
        pairs = [p for p in sample(self._next_prompts(n)) if p.texts[0] != p.texts[1]]  # identical: no preference
        if not pairs:
            return
        rows = [
            {
                "prompt": p.prompt,
                "responses": list(p.texts),
                "origin": {"version": self.version, "prompt_index": p.prompt_index, "ids": [p.ids[0], p.ids[1]]},
            }
            for p in pairs
        ]
        if self.items or self.campaign in {c["name"] for c in self.store.campaigns()}:
            positions = self.store.append_items(self.campaign, rows)
        else:
            self.store.create_campaign(self.campaign, rows, raters_per_item=self.cfg.raters_per_item, seed=self.seed)
            positions = [x["position"] for x in self.store.items(self.campaign)]
        now = self.clock()
        for pos, row in zip(positions, rows):  # identical pairs were left out above: the store keeps every row
            self.items[pos] = row["origin"]
            self.pushed_at[pos] = now
        self.counts["pushed"] += len(positions)
        self._event("push", pairs=len(positions), pending=self._pending())

    def _next_prompts(self, n: int) -> list[int]:
        """The next n prompts of a seeded permutation, a fresh one per pass over the prompts."""
        out = []
        for _ in range(n):
            epoch, offset = divmod(self.cursor, self.n_prompts)
            if self._order is None or self._order[0] != epoch:
                order = list(range(self.n_prompts))
                random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
                self._order = (epoch, order)
            out.append(self._order[1][offset])
            self.cursor += 1
        return out

    def _usable(self) -> list[LabelledPair]:
        """Decided, unused pairs with their weights; ties and (stale=drop) stale pairs are retired here, counted."""
        c = self.cfg
        out = []
        for pos in sorted(p for p in self.votes if p not in self.used and self._decided(p) and p in self.items):
            votes = self.votes[pos]
            choice, _strength, _ = adjudicate([(v[0], v[1]) for v in votes], "majority")
            age = self._age(pos)
            weight = staleness_weight(age, c.staleness, c.stale, c.stale_decay)
            origin = self.items[pos]
            if choice == "tie" or weight == 0.0:
                status = "tie" if choice == "tie" else "stale"
                self.counts["ties" if status == "tie" else "stale"] += 1
                self._retire(pos, status, age, 0.0, votes)
                continue
            first = 0 if choice == "0" else 1
            ids = origin["ids"]
            out.append(
                LabelledPair(
                    pos, int(origin["prompt_index"]), ids[first], ids[1 - first], int(origin["version"]), age, weight
                )
            )
        return out

    def _take(self, pairs: Sequence[LabelledPair], rate: float) -> list[LabelledPair]:
        for p in pairs:
            self.counts["trained"] += 1
            self.counts["downweighted"] += p.weight < 1.0
            self._retire(p.item, "trained", p.age, p.weight, self.votes[p.item])
        ages = [p.age for p in pairs]
        self._event("update", pairs=len(pairs), rate=rate, staleness_mean=sum(ages) / len(ages))
        return list(pairs)

    def _retire(self, pos: int, status: str, age: int, weight: float, votes: list[tuple[str, float, str]]) -> None:
        self.used.add(pos)
        pushed = self.pushed_at.get(pos)
        row = {
            "item": pos,
            "step": self.version,
            "version": int(self.items[pos]["version"]),
            "age": age,
            "weight": weight,
            "status": status,
            "raters": [v[2] for v in votes],
            "wait_s": None if pushed is None else round(self.clock() - pushed, 3),
        }
        with open(self.dir / LABELS_FILE, "a") as f:
            f.write(json.dumps(row) + "\n")

    def _event(self, event: str, **fields: Any) -> None:
        row = {"time": time.time(), "event": event, "version": self.version, **fields}
        with open(self.dir / EVENTS_FILE, "a") as f:
            f.write(json.dumps(row) + "\n")

    @staticmethod
    def _truncate(path: Path, step: int) -> None:
        """Rows of updates after the checkpoint are redone on resume: drop them."""
        if not path.exists():
            return
        keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] < step]
        path.write_text("".join(line + "\n" for line in keep))


# ---------------------------------------------------------------- the report's view of a live run


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def live_report(labels: Path, events: Path, metrics: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A live run's labels per minute, staleness and gold over time, from its logs and its metrics.jsonl rows:
    {"summary": {...}, "timeline": [{step, minutes, labels_per_min, staleness_mean, labels, stale}], "gold":
    [{step, minutes, gold}], "staleness": [{age, trained, stale}]}; {} without a live log."""
    rows, evs = _jsonl(labels), _jsonl(events)
    if not rows and not evs:
        return {}
    timeline = [
        {
            "step": m["step"],
            **{k[len("train/live/") :]: v for k, v in m.items() if k.startswith("train/live/")},
        }
        for m in metrics
        if "train/live/minutes" in m
    ]
    minutes = {0: 0.0} | {t["step"]: t["minutes"] for t in timeline}
    gold = [
        {"step": m["step"], "minutes": minutes[m["step"]], "gold": m["eval/gold"]}
        for m in metrics
        if "eval/gold" in m and m["step"] in minutes
    ]
    ages = sorted({r["age"] for r in rows if r["status"] != "tie"})
    hist = [
        {
            "age": a,
            "trained": sum(r["age"] == a and r["status"] == "trained" for r in rows),
            "stale": sum(r["age"] == a and r["status"] == "stale" for r in rows),
        }
        for a in ages
    ]
    trained = [r for r in rows if r["status"] == "trained"]
    last = timeline[-1] if timeline else {}
    span = last.get("minutes") or 0.0
    summary = {
        "updates": len(timeline),
        "labels": last.get("labels", 0),
        "labels_per_min": (last.get("labels", 0) / span) if span > 0 else None,
        "trained_pairs": len(trained),
        "stale_dropped": sum(r["status"] == "stale" for r in rows),
        "downweighted": sum(r["weight"] < 1 for r in trained),
        "ties": sum(r["status"] == "tie" for r in rows),
        "staleness_mean": sum(r["age"] for r in trained) / len(trained) if trained else None,
        "staleness_max": max((r["age"] for r in trained), default=None),
        "pauses": sum(e["event"] == "pause" for e in evs),
        "paused_s": last.get("paused_s", 0.0),
        "minutes": span,
    }
    return {"summary": summary, "timeline": timeline, "gold": gold, "staleness": hist}
