"""A preference-vector policy on the builtin model: two cheap objectives, a short RLOO run on random weights, then the
Pareto front of the trained policy (and of the base model, with the same tags) on held-out prompts.

    python benchmarks/multi_objective.py --out runs/multi_objective [--pair opposed|brevity]
        [--tag words|numbers|instruction] [--mirrored]

Objectives (--pair): opposed = positive (VADER's compound score of the response, in [-1, 1]) and negative (its
negation), so that only reading the tag raises the reward; brevity = positive and short (-words / 16). Prompts: the
builtin movie-review openings (rlhfkit/tasks/data/review_prompts.jsonl), the last 48 held out. Each training prompt
gets weights w ~ Dirichlet(alpha) written into it (--tag words: "[quite positive, slightly negative]" on the 5-level
grid; numbers: "[weights positive=0.70 negative=0.30]") and its samples are rewarded w . r. Writes OUT/rloo (the run),
OUT/pareto (pareto.json, pareto.png, report.html / .md; 2 samples per held-out prompt and weight vector) and, with
--copy-results, benchmarks/results/multi_objective.json and docs/multi_objective_pareto.png.

--warm-start dpo|sft first trains the conditioned policy offline (the offline stage of Rewards-in-Context): `rlhfkit
sample` draws --warm-samples responses per training prompt from the base model (untagged), and for --warm-weights
vectors w per prompt writes the tagged prompt with the best vs worst response under w . r (dpo; the best alone for
sft); `rlhfkit dpo` / `rlhfkit sft` trains on those rows (OUT/warm), and the RLOO run starts from that model. The
Pareto sweep shows base, warm and trained (warm start + RLOO).

--mirrored sets preference.mirrored (antithetic weights): each RLOO step's second half of prompts carries the first
half's weight vectors reversed, so the step's reward has no net pull toward either objective, and with
--warm-weights 2 each opening's two warm rows carry a vector and its mirror (best and worst swapped).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ROOT / "rlhfkit/tasks/data/review_prompts.jsonl"
# the objectives (reward sources, named as the tag names them): "opposed" pulls the policy both ways on one axis
# (VADER compound and its negation), so that only reading the tag raises the reward; "brevity" is the earlier pair
# (VADER and -words / 16), which a policy can raise together without reading the tag
PAIRS = {
    "opposed": (
        "[positive, negative]",
        "{kind: sentiment, name: positive}\n    - {kind: sentiment, name: negative, params: {polarity: negative}}",
    ),
    "brevity": (
        "[positive, short]",
        "{kind: sentiment, name: positive}\n    - {kind: rule, path: length, name: short, params: {max_words: 0, coef: 0.0625}}",
    ),
}
# how the weights are written: numbers ("[weights positive=0.70 negative=0.30]"), words on a 5-level grid
# ("[very positive, slightly negative]", which an instruction-tuned model already half understands), or those words
# in an instruction ("Continue this review so that it sounds very positive and slightly negative.")
LEVELS = "levels: [not, slightly, moderately, quite, very], entry: '{weight} {name}'"
TAGS = {
    "numbers": "",
    "words": f", {LEVELS}, separator: ', ', format: '[{{weights}}]'",
    "instruction": f", {LEVELS}, separator: ' and ', format: 'Continue this review so that it sounds {{weights}}.'",
}


def rlhfkit(*args: str) -> None:
    print("+ rlhfkit", " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "rlhfkit.cli", *args], check=True, cwd=ROOT)


def steering(rows: list[dict], objectives: list[str]) -> dict:
    """Per policy, the weight vectors in order of the first weight: is each objective monotone in it (the first
    rising, the second falling), and how far apart are the two extremes, in standard errors of their difference."""
    out = {}
    for policy in dict.fromkeys(r["policy"] for r in rows):
        rs = sorted((r for r in rows if r["policy"] == policy), key=lambda r: r["weights"][0])
        lo, hi = rs[0], rs[-1]
        out[policy] = {
            o: {
                "monotone": all((b[o] - a[o]) * sign > 0 for a, b in zip(rs, rs[1:])),
                "extremes_diff": hi[o] - lo[o],
                "extremes_z": (hi[o] - lo[o]) / math.hypot(hi[o + "_se"], lo[o + "_se"]),
            }
            for o, sign in zip(objectives, (1, -1))
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/multi_objective")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--steps", type=int, default=24, help="RLOO rollouts")
    ap.add_argument("--prompts-per-step", type=int, default=6)
    ap.add_argument("--samples", type=int, default=4, help="RLOO group size")
    ap.add_argument("--tokens", type=int, default=24, help="max new tokens")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--kl", type=float, default=0.05, help="kl.coef (k3, in the loss)")
    ap.add_argument("--alpha", type=float, default=0.25, help="Dirichlet concentration of the training weights")
    ap.add_argument("--heldout", type=int, default=48)
    ap.add_argument("--pair", choices=sorted(PAIRS), default="opposed", help="the two objectives (see PAIRS)")
    ap.add_argument("--tag", choices=sorted(TAGS), default="words", help="weights as numbers, words or an instruction")
    ap.add_argument("--eval-samples", type=int, default=2, help="responses per held-out prompt and weight vector")
    ap.add_argument("--warm-start", choices=["none", "dpo", "sft"], default="none", help="conditioned offline stage")
    ap.add_argument("--warm-samples", type=int, default=8, help="responses per training prompt for the warm start")
    ap.add_argument("--warm-weights", type=int, default=2, help="weight vectors per training prompt (rows each)")
    ap.add_argument("--warm-lr", type=float, default=5e-5)
    ap.add_argument("--warm-epochs", type=float, default=1.0)
    ap.add_argument("--warm-beta", type=float, default=0.1, help="DPO beta of the warm start")
    ap.add_argument(
        "--warm-group", action="store_true",
        help="DPO warm start with group_same_responses: an opening's rows under its drawn tags share a step",
    )  # fmt: skip
    ap.add_argument(
        "--mirrored", action="store_true",
        help="preference.mirrored: half of each draw is the other half reversed (a step's prompts; a warm row pair)",
    )  # fmt: skip
    ap.add_argument("--seed", type=int, default=0, help="RLOO's train.seed (the held-out sweep keeps its seed)")
    ap.add_argument("--copy-results", action="store_true", help="write benchmarks/results and docs/ figures")
    a = ap.parse_args()
    out = (ROOT / a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    lines = PROMPTS.read_text().splitlines()
    (out / "train.jsonl").write_text("\n".join(lines[: -a.heldout]) + "\n")
    (out / "heldout.jsonl").write_text("\n".join(lines[-a.heldout :]) + "\n")
    sources = f"""reward:
  sources:
    - {PAIRS[a.pair][1]}
preference: {{objectives: {PAIRS[a.pair][0]}, dirichlet_alpha: {a.alpha}, mirrored: {str(a.mirrored).lower()}{TAGS[a.tag]}}}
"""
    times: dict[str, float] = {}
    start = a.model
    if a.warm_start != "none":
        start = str(out / "warm" / "model")
        t = time.perf_counter()
        (out / "sample.yaml").write_text(
            f"""model: {{name_or_path: {a.model}}}
data: {{train: train.jsonl, max_length: 160, max_prompt_length: 128}}
sampling: {{max_new_tokens: {a.tokens}, batch_size: 64}}
num_samples: {a.warm_samples}
format: {"prefs" if a.warm_start == "dpo" else "sft"}
weights_per_prompt: {a.warm_weights}
overwrite: true
{sources}"""
        )
        rlhfkit("sample", "--config", str(out / "sample.yaml"), "-o", str(out / "warm.jsonl"))
        times["warm_sample_s"] = round(time.perf_counter() - t, 1)
        t = time.perf_counter()
        shutil.rmtree(out / "warm", ignore_errors=True)
        loss = [f"loss.beta={a.warm_beta}", "eval_kl_samples=0"] if a.warm_start == "dpo" else []
        loss += ["group_same_responses=true"] if a.warm_group and a.warm_start == "dpo" else []
        rlhfkit(
            a.warm_start, f"model.name_or_path={a.model}", "model.trainable_layers=8", f"data.train={out / 'warm.jsonl'}",
            "data.max_length=160", "data.max_prompt_length=128", "data.eval_fraction=0", f"train.lr={a.warm_lr}",
            f"train.epochs={a.warm_epochs}", "train.batch_size=8", "train.progress=false", *loss, "-o", str(out / "warm"),
        )  # fmt: skip
        times["warm_train_s"] = round(time.perf_counter() - t, 1)
    (out / "rloo.yaml").write_text(
        f"""model: {{name_or_path: {start}, trainable_layers: 8}}
data: {{train: train.jsonl, eval: heldout.jsonl, max_length: 160, max_prompt_length: 128}}
train: {{batch_size: {a.prompts_per_step}, max_steps: {a.steps}, lr: {a.lr}, scheduler: constant, progress: false, \
seed: {a.seed}}}
sampling: {{max_new_tokens: {a.tokens}}}
algo: {{num_samples: {a.samples}}}
kl: {{coef: {a.kl}, estimator: k3, placement: loss}}
{sources}eval_samples: 8
"""
    )
    t = time.perf_counter()
    if (out / "rloo").exists():
        shutil.rmtree(out / "rloo")
    rlhfkit("rloo", "--config", str(out / "rloo.yaml"), "-o", str(out / "rloo"))
    times["rloo_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    sweep = ["pareto", "--run", str(out / "rloo"), "--prompts", str(out / "heldout.jsonl"), "-o", str(out / "pareto")]
    sweep += ["--samples", str(a.eval_samples), "--baseline", a.model]
    if a.warm_start != "none":
        sweep += ["--policy", f"warm={start}"]
    rlhfkit(*sweep)
    times["pareto_s"] = round(time.perf_counter() - t, 1)
    data = json.loads((out / "pareto" / "pareto.json").read_text())
    summary = json.loads((out / "rloo" / "summary.json").read_text())
    result = {
        "args": vars(a),
        "times": times,
        "train_eval": summary["eval"],
        "summary": data["summary"],
        "pareto": data["pareto"],
        "steering": steering(data["pareto"], data["pareto_objectives"]),
    }
    print(json.dumps(result))
    if a.copy_results:
        (ROOT / "benchmarks/results").mkdir(exist_ok=True)
        (ROOT / "benchmarks/results/multi_objective.json").write_text(json.dumps(result, indent=2) + "\n")
        shutil.copy(out / "pareto" / "pareto.png", ROOT / "docs/multi_objective_pareto.png")


if __name__ == "__main__":
    main()
