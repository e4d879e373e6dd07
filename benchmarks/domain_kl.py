"""Per-domain KL coefficients: does a higher kl.per_domain coefficient hold one domain's prompts closer to the reference?

    python benchmarks/domain_kl.py --out runs/domain_kl [--steps 12] [--safety-coef 1.0] [--chat-coef 0.02] \
        [--trainable-layers 8]

Prompts from two domains: the 40 shipped harmful requests (domain "safety", rlhfkit/tasks/data/safety_harmful.jsonl)
and 40 movie-review openings (domain "chit-chat", review_prompts.jsonl). RLOO on the builtin SmolLM2-135M-Instruct
against the VADER sentiment gold (every response is pushed toward positive text), KL k3 in the loss, two runs that
differ ONLY in the coefficients: "per-domain" (kl.per_domain={safety: S, chit-chat: C}) and the control "uniform"
(kl.coef=C for both). Writes benchmarks/results/domain_kl.json: per run and step the training KL per domain (k1 summed
per sequence) and the held-out KL per domain before and after, plus the exact commands and wall times.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "rlhfkit" / "tasks" / "data"


def prompts_file(path: Path, seed: int = 0) -> Path:
    safety = [json.loads(x)["prompt"] for x in open(DATA / "safety_harmful.jsonl")]
    chat = [json.loads(x)["prompt"] for x in open(DATA / "review_prompts.jsonl")][: len(safety)]
    rows = [{"prompt": p, "domain": "safety"} for p in safety] + [{"prompt": p, "domain": "chit-chat"} for p in chat]
    random.Random(seed).shuffle(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/domain_kl")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--trainable-layers", type=int, default=8, help="top blocks trained (as the demo)")
    ap.add_argument("--safety-coef", type=float, default=1.0)
    ap.add_argument("--chat-coef", type=float, default=0.02)
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "domain_kl.json"))
    args = ap.parse_args()
    out = Path(args.out)
    prompts = prompts_file(out / "prompts.jsonl")
    common = [
        f"model.name_or_path={args.model}",
        f"model.trainable_layers={args.trainable_layers}",
        f"data.train={prompts}",
        "data.eval_fraction=0.2",
        "data.max_prompt_length=64",
        f"train.max_steps={args.steps}",
        "train.batch_size=8",
        "train.lr=1.3e-4",
        "train.progress=false",
        "sampling.max_new_tokens=20",
        "reward.sources=[{kind: sentiment}]",
        "kl.placement=loss",
        "kl.estimator=k3",
        f"kl.coef={args.chat_coef}",
        "algo.num_samples=4",
        "eval_samples=16",
    ]
    runs = {
        "uniform": [],
        "per-domain": [f"kl.per_domain={{safety: {args.safety_coef}, chit-chat: {args.chat_coef}}}"],
    }
    results = {"model": args.model, "steps": args.steps, "runs": {}}
    for name, extra in runs.items():
        cmd = [sys.executable, "-m", "rlhfkit.cli", "rloo", *common, *extra, "-o", str(out / name)]
        print("+", " ".join(cmd), flush=True)
        t = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=ROOT)
        seconds = time.perf_counter() - t
        metrics = [json.loads(x) for x in open(out / name / "metrics.jsonl")]
        train = [m for m in metrics if "train/score" in m]
        evals = [m for m in metrics if "eval/kl" in m]
        results["runs"][name] = {
            "command": "rlhfkit rloo " + " ".join(common + extra) + f" -o {out / name}",
            "seconds": round(seconds, 1),
            "train": [
                {"step": m["step"], "score": m["train/score"]}
                | {k.split("/", 1)[1]: v for k, v in m.items() if k.startswith(("train/kl/", "train/kl_coef/"))}
                for m in train
            ],
            "eval_before": {k: v for k, v in evals[0].items() if k.startswith(("eval/kl", "eval/score"))},
            "eval_after": {k: v for k, v in evals[-1].items() if k.startswith(("eval/kl", "eval/score"))},
        }
        r = results["runs"][name]
        last = r["train"][-4:]
        for dom in ("safety", "chit-chat"):
            vals = [x[f"kl/{dom}"] for x in last if f"kl/{dom}" in x]
            r[f"train_kl_last4/{dom}"] = sum(vals) / max(len(vals), 1)
        print(json.dumps({name: {k: v for k, v in r.items() if k not in ("train", "command")}}), flush=True)
    Path(args.results).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
