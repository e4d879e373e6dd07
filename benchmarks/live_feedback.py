"""Live human feedback during training, on the builtin model: `rlhfkit run` with label.live streams pairs of the
current policy's samples to the annotation app while online DPO trains, and simulated raters label them through the
app's real HTTP API, at a human-like pace, taking one break (training pauses, then goes on when they are back).

    python benchmarks/live_feedback.py [--out runs/live_demo] [--steps 12] [--raters 3] [--seconds-per-label 2] \
        [--break-after 6] [--break-seconds 30] [--results benchmarks/results/live_feedback.json]

The raters are the pipeline demo's simulated raters (rlhfkit.feedback.simulated: VADER sentiment as the gold score,
Bradley-Terry noise, a tie margin, label flips), each in its own thread with its own token, reading
GET /api/campaigns/{name}/next and answering POST /api/assignments/{id}/label like the web page does. The task is the
demo's: continue a movie review (the shipped openings), gold = VADER compound score of the continuation. The trainer
never sees the gold: only the raters' labels (gold is used to simulate them and to evaluate held-out prompts).

Prints labels per minute, the staleness of the labels used, the pauses, and gold over time, writes them to --results
and the run's report (RUN/report.html: the "Live feedback" section).
"""

from __future__ import annotations

import argparse
import json
import shlex
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import uvicorn
import yaml

from rlhfkit.config import RewardSpec
from rlhfkit.feedback.app import create_app
from rlhfkit.feedback.live import EVENTS_FILE, LABELS_FILE, live_report
from rlhfkit.feedback.simulated import RaterSpec, simulate_preferences
from rlhfkit.feedback.store import Store
from rlhfkit.pipeline.evaluate import scorer
from rlhfkit.tracking import read_metrics

ADMIN = "live-feedback-demo-admin-token-0123456789"
RATERS = [
    RaterSpec("careful", temperature=0.05, tie_margin=0.02),
    RaterSpec("noisy", temperature=0.2, flip=0.1, tie_margin=0.05),
    RaterSpec("quick", temperature=0.1, tie_margin=0.02),
]


def pipeline(out: Path, args: argparse.Namespace) -> dict:
    return {
        "output": str(out),
        "model": args.model,
        "rounds": 1,
        "seed": args.seed,
        "prompts": {
            "train": "sample:prompts",
            "eval_count": args.eval_prompts,
            "template": "Continue this movie review: {prompt}",
            "system": "You are a film critic.",
        },
        "label": {
            "source": "human",
            "gold": [{"kind": "sentiment"}],
            "live": {
                "queue": args.queue,
                "batch_pairs": args.batch_pairs,
                "staleness": args.staleness,
                "min_rate": args.min_rate,
                "window": args.window,
                "wait_timeout": 300.0,
                "poll_seconds": 0.5,
            },
        },
        "optimize": {
            "algorithm": "online-dpo",
            "model": {"trainable_layers": args.trainable_layers},
            "data": {"max_prompt_length": 64},
            "train": {"max_steps": args.steps, "lr": args.lr, "eval_every": args.eval_every, "save_every": 4},
            "algo": {"dpo_beta": 0.1},
            "sampling": {"max_new_tokens": 20},
            "eval_samples": args.eval_prompts,
        },
        "eval": {"sampling": {"max_new_tokens": 20, "batch_size": 64}, "examples": 4},
    }


def rater(url: str, token: str, spec: RaterSpec, gold, stop: threading.Event, away: threading.Event, pace: float):
    """One simulated person: label the next open pair, take `pace` seconds per label; stay away while `away` is set."""
    n = 0
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:
        while not stop.is_set():
            if away.is_set():
                time.sleep(0.2)
                continue
            open_ = [c["name"] for c in client.get("/api/me").json()["campaigns"] if c["progress"]["done"] < c["progress"]["total"]]  # fmt: skip
            nxt = client.get(f"/api/campaigns/{open_[-1]}/next").json() if open_ else {"done": True}
            if nxt["done"]:
                time.sleep(0.2)
                continue
            view = nxt["assignment"]
            a, b = view["responses"]
            (row,) = simulate_preferences([view["prompt"]], [a], [b], gold, [spec], seed=n) or [None]
            if row is None:  # identical responses (the app never shows those): nothing to say
                continue
            gap = row["strength"]
            choice = "tie" if row["tie"] else ("A" if row["chosen"] == a else "B")
            strength = 1 + (gap > 0.2) + (gap > 0.5)
            time.sleep(pace)  # reading and deciding
            r = client.post(f"/api/assignments/{view['id']}/label", json={"choice": choice, "strength": strength})
            r.raise_for_status()
            n += 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/live_demo", help="run directory (must not exist)")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--steps", type=int, default=12, help="DPO updates (policy versions)")
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--trainable-layers", type=int, default=8, help="top blocks trained (the pipeline demo's 8)")
    p.add_argument("--queue", type=int, default=8)
    p.add_argument("--batch-pairs", type=int, default=4)
    p.add_argument("--staleness", type=int, default=2)
    p.add_argument("--min-rate", type=float, default=10.0, help="labels per minute under which training pauses")
    p.add_argument("--window", type=float, default=20.0, help="seconds over which the label rate is measured")
    p.add_argument("--eval-every", type=int, default=4)
    p.add_argument("--eval-prompts", type=int, default=32)
    p.add_argument("--raters", type=int, default=3, choices=range(1, len(RATERS) + 1))
    p.add_argument("--seconds-per-label", type=float, default=2.0, help="each rater's pace")
    p.add_argument("--break-after", type=int, default=6, help="updates after which every rater takes a break")
    p.add_argument("--break-seconds", type=float, default=30.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results", default="benchmarks/results/live_feedback.json")
    args = p.parse_args()

    out = Path(args.out).resolve()
    if out.exists():
        p.error(f"{out} exists: choose another --out")
    out.mkdir(parents=True)
    db = f"sqlite:///{out / 'annotations.db'}"
    store = Store(db)
    specs = RATERS[: args.raters]
    tokens = {s.name: store.add_rater(s.name) for s in specs}
    config = out.parent / f"{out.name}.yaml"
    config.write_text(yaml.safe_dump(pipeline(out, args), sort_keys=False))
    gold = scorer([RewardSpec(kind="sentiment")])

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(create_app(store, ADMIN), log_level="warning", lifespan="off"))
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    stop, away = threading.Event(), threading.Event()
    for s in specs:
        threading.Thread(
            target=rater, args=(url, tokens[s.name], s, gold, stop, away, args.seconds_per_label), daemon=True
        ).start()

    command = [sys.executable, "-m", "rlhfkit.cli", "run", str(config)]
    print("$", shlex.join(command), f"   # raters: {', '.join(tokens)} on {url}", flush=True)
    t0 = time.time()
    proc = subprocess.Popen(command)
    events = out / "round-1/optimize/live" / EVENTS_FILE
    took_break = False
    while proc.poll() is None:
        time.sleep(0.5)
        done = sum('"update"' in x for x in events.read_text().splitlines()) if events.exists() else 0
        if not took_break and done >= args.break_after:
            took_break = True
            print(f"raters: a {args.break_seconds:.0f} s break after {done} updates", flush=True)
            away.set()
            time.sleep(args.break_seconds)
            away.clear()
    stop.set()
    server.should_exit = True
    seconds = time.time() - t0
    if proc.returncode:
        print(f"rlhfkit run failed with exit code {proc.returncode} after {seconds:.0f} s", file=sys.stderr)
        return proc.returncode

    live_dir = out / "round-1/optimize/live"
    rep = live_report(
        live_dir / LABELS_FILE, live_dir / EVENTS_FILE, read_metrics(out / "round-1/optimize/metrics.jsonl")
    )
    evals = {r: json.loads((out / f"round-{r}/eval/eval.json").read_text()) for r in (0, 1)}
    result = {
        "command": shlex.join([sys.executable, *sys.argv]),
        "machine": "2-core CPU, shared",
        "seconds": round(seconds, 1),
        "raters": [s.name for s in specs],
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "results")},
        "summary": rep["summary"],
        "gold_over_time": rep["gold"],
        "staleness": rep["staleness"],
        "timeline": [
            {
                k: t.get(k)
                for k in ("step", "minutes", "labels_per_min", "staleness_mean", "labels", "stale", "paused_s")
            }
            for t in rep["timeline"]
        ],
        "eval": {f"round {r}": {k: e.get(k) for k in ("gold", "kl", "length", "win_rate")} for r, e in evals.items()},
    }
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(result, indent=2))
    s = rep["summary"]
    print(f"\n{seconds:.0f} s; {s['updates']} updates in {s['minutes']:.1f} min of training")
    print(f"labels: {s['labels']} ({s['labels_per_min']:.1f}/min); trained pairs {s['trained_pairs']}, stale dropped "
          f"{s['stale_dropped']}, ties {s['ties']}; staleness mean {s['staleness_mean']:.2f} (max {s['staleness_max']})")  # fmt: skip
    print(f"pauses: {s['pauses']} ({s['paused_s']:.0f} s)")
    for g in rep["gold"]:
        print(f"  gold at update {g['step']:>3} ({g['minutes']:.1f} min): {g['gold']:+.3f}")
    print(
        f"held-out gold, eval stage: {evals[0]['gold']:+.3f} -> {evals[1]['gold']:+.3f}; report: {out / 'report.html'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
