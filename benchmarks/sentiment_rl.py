"""The sentiment task end to end on 2 CPU cores: does PPO against a LEARNED reward model raise the GOLD score?

    python benchmarks/sentiment_rl.py --out runs/sentiment [--model smollm2-135m-instruct] [--ppo-steps 30]

1. prompts: IMDb review prefixes (benchmarks/imdb_prompts.py, from ../shared/data/imdb)
2. sample: 2 responses per training prompt from the base policy (`rlhfkit sample`)
3. label: simulated raters (VADER compound score as gold, Bradley-Terry noise, ties under a margin, two raters)
4. rm: a reward model on those preferences (`rlhfkit rm`)
5. ppo: PPO with a value head against the reward model, VADER reported on held-out prompts as the gold score
Prints one JSON line with the gold and proxy scores before/after, KL and wall times; each stage's directory holds its
metrics.jsonl and summary.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def sh(*args: str) -> None:
    print("+", " ".join(args), flush=True)
    subprocess.run(args, check=True, cwd=ROOT)


def rlhfkit(*args: str) -> None:
    sh(sys.executable, "-m", "rlhfkit.cli", *args)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/sentiment")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=192)
    ap.add_argument("--rm-steps", type=int, default=24)
    ap.add_argument("--ppo-steps", type=int, default=30)
    ap.add_argument("--tokens", type=int, default=32)
    a = ap.parse_args()
    out = (ROOT / a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}

    t = time.perf_counter()
    sh(
        sys.executable,
        "benchmarks/imdb_prompts.py",
        "--n",
        str(a.prompts),
        "--eval",
        "32",
        "--out",
        str(out / "prompts.jsonl"),
    )
    rlhfkit(
        "sample",
        f"model.name_or_path={a.model}",
        f"data.train={out / 'prompts.jsonl'}",
        "num_samples=2",
        f"sampling.max_new_tokens={a.tokens}",
        "sampling.batch_size=32",
        "-o",
        str(out / "samples.jsonl"),
    )
    times["sample_s"] = time.perf_counter() - t

    t = time.perf_counter()
    from rlhfkit.data import read_rows, write_jsonl
    from rlhfkit.feedback.simulated import RaterSpec, pairs_from_samples, simulate_preferences
    from rlhfkit.tasks.sentiment import sentiment_scores

    prompts, ra, rb = pairs_from_samples([row for _, row in read_rows(out / "samples.jsonl")])
    raters = [RaterSpec("careful", temperature=0.1, tie_margin=0.05), RaterSpec("noisy", temperature=0.3, flip=0.1)]
    gold = lambda p, r: sentiment_scores(r)  # noqa: E731
    rows = simulate_preferences(prompts, ra, rb, gold, raters, seed=0)
    write_jsonl(out / "prefs.jsonl", rows)
    times["label_s"] = time.perf_counter() - t

    t = time.perf_counter()
    rlhfkit(
        "rm",
        f"model.name_or_path={a.model}",
        f"data.train={out / 'prefs.jsonl'}",
        "data.max_length=160",
        "data.max_prompt_length=96",
        "train.batch_size=8",
        f"train.max_steps={a.rm_steps}",
        "train.lr=2e-5",
        "-o",
        str(out / "rm"),
    )
    times["rm_s"] = time.perf_counter() - t

    t = time.perf_counter()
    rlhfkit(
        "ppo",
        f"model.name_or_path={a.model}",
        f"data.train={out / 'prompts.jsonl'}",
        f"data.eval={out / 'prompts.eval.jsonl'}",
        "data.max_prompt_length=96",
        f"reward.sources=[{{kind: model, path: '{out / 'rm' / 'model'}'}}]",
        "reward.normalize=true",
        "gold.sources=[{kind: sentiment}]",
        "eval_samples=24",
        f"sampling.max_new_tokens={a.tokens}",
        "train.batch_size=8",
        f"train.max_steps={a.ppo_steps}",
        "train.lr=3e-6",
        "train.eval_every=0",
        "algo.epochs=2",
        "algo.critic_lr=3e-5",
        "kl.coef=0.05",
        "-o",
        str(out / "ppo"),
    )
    times["ppo_s"] = time.perf_counter() - t

    rm = json.loads((out / "rm" / "summary.json").read_text())
    ppo = json.loads((out / "ppo" / "summary.json").read_text())
    e = ppo["eval"]
    print(
        json.dumps(
            {
                "pairs": len(rows),
                "rm_accuracy": rm["eval"].get("accuracy"),
                "rm_auc": rm["eval"].get("auc"),
                "gold_before": e.get("before/gold"),
                "gold_after": e.get("gold"),
                "proxy_before": e.get("before/score"),
                "proxy_after": e.get("score"),
                "kl_after": e.get("kl"),
                "length_before": e.get("before/response_length"),
                "length_after": e.get("response_length"),
                **{k: round(v, 1) for k, v in times.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
