"""The reward-KL frontier of the IMDb sentiment task (Rafailov et al. 2023, sec. 6.1, Fig. 2) on the builtin model.

    python benchmarks/frontier.py --out runs/frontier [--seeds 0,1,2] [--methods ppo,grpo,rloo,online-dpo,dpo,best-of-n]
    python benchmarks/frontier.py --out runs/frontier --plot-only    # redraw from runs/frontier/frontier.jsonl

Prompts: review openings from ../shared/data/imdb (benchmarks/imdb_prompts.py; training and held-out openings are
disjoint). Gold: VADER's compound sentiment of the continuation (`reward kind: sentiment`), in [-1, 1]; the "positive
share" is the fraction of held-out continuations with compound > 0.05 (VADER's own threshold for positive).

As in the paper, the frontier measures how much reward each method buys per nat of KL, so every method optimizes the
gold scorer itself (no learned reward model in between: that is the demo's job):
- ppo (value head, KL k1 in the reward), grpo and rloo (4 samples per prompt, KL k3 in the loss): `kl.coef` = beta;
- online-dpo (best vs worst of 4 samples, judged by gold): `algo.dpo_beta` = beta;
- dpo: offline, on best-vs-worst pairs of 4 samples of the starting policy per training opening labelled by gold
  (`rlhfkit sample format=prefs`), `loss.beta` = beta, `--dpo-epochs` passes;
- DPO and online DPO train at `--dpo-lr` (default: `--lr`, as the policy-gradient methods); rows are keyed by
  method, knob, seed, learning rate (and offline DPO's epochs), so another rate or epoch count adds points;
- best-of-n: n samples per held-out opening, the best by gold kept; KL = log n - (n - 1) / n (Stiennon et al. 2020).
Every trained policy is then evaluated the same way: one sample per held-out opening (seeded), the gold score, the
positive share and KL(pi || ref) per sequence on the policy's own samples (k1 summed over tokens, the Monte-Carlo KL).
Rows go to OUT/frontier.jsonl (one per run, appended as they finish, so a killed run resumes where it stopped), the
plot to OUT/frontier.png; `--copy-results` also writes benchmarks/results/frontier.jsonl and docs/frontier.png.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
POSITIVE = 0.05  # VADER's threshold for a positive compound score

# the KL knob of each method and the values swept by default (small beta = more reward, more KL)
BETAS = {
    "ppo": [0.02, 0.05, 0.2],
    "grpo": [0.05, 0.15, 0.5],
    "rloo": [0.05, 0.15, 0.5],
    "online-dpo": [0.05, 0.1, 0.3],
    "dpo": [0.05, 0.1, 0.3],
}
BEST_OF = [2, 4, 8, 16]
SENTIMENT = "reward.sources=[{kind: sentiment}]"


def rlhfkit(*args: str, log: Path) -> None:
    with log.open("w") as f:
        r = subprocess.run([sys.executable, "-m", "rlhfkit.cli", *args], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if r.returncode:
        raise SystemExit(f"failed ({r.returncode}): rlhfkit {' '.join(args)}; see {log}")


def online_args(method: str, beta: float, a: argparse.Namespace) -> list[str]:
    common = [
        f"model.name_or_path={a.model}",
        f"model.trainable_layers={a.trainable_layers}",
        "data.max_prompt_length=96",
        f"train.max_steps={a.steps}",
        f"train.lr={a.lr}",
        "train.progress=false",
        f"sampling.max_new_tokens={a.tokens}",
        "eval_samples=0",
        "data.eval_fraction=0",
        SENTIMENT,
    ]
    if method == "ppo":  # one sample per prompt: 4x the prompts, the same samples per rollout as the group methods
        return common + [f"train.batch_size={4 * a.prompts_per_step}", "algo.num_samples=1", f"kl.coef={beta}"]
    group = [f"train.batch_size={a.prompts_per_step}", "algo.num_samples=4"]
    if method == "online-dpo":
        return common + group + [f"algo.dpo_beta={beta}", "kl.coef=0", f"train.lr={method_lr(method, a)}"]
    return common + group + [f"kl.coef={beta}", "kl.placement=loss", "kl.estimator=k3"]


def method_lr(method: str, a: argparse.Namespace) -> float | None:
    """The learning rate a method's rows are trained (and keyed) with; None for the untrained ones."""
    if method in ("reference", "best-of-n"):
        return None
    return a.dpo_lr if method in ("dpo", "online-dpo") and a.dpo_lr else a.lr


def series(row: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """A method's name, with its learning rate where the results hold the method at more than one."""
    lrs = {r.get("lr") for r in rows if r["method"] == row["method"]}
    return f"{row['method']} (lr {row.get('lr'):g})" if len(lrs) > 1 else row["method"]


def evaluate(policy: str, reference: str, prompts: list[Any], a: argparse.Namespace, seed: int) -> dict[str, float]:
    from rlhfkit.config import RewardSpec, SamplingConfig
    from rlhfkit.pipeline.evaluate import generate, scorer

    gen = generate(policy, prompts, SamplingConfig(max_new_tokens=a.tokens, batch_size=64), seed, reference)
    gold = scorer([RewardSpec(kind="sentiment")])(gen["messages"], gen["texts"])
    n = len(gold)
    return {
        "gold": sum(gold) / n,
        "positive_share": sum(g > POSITIVE for g in gold) / n,
        "kl": sum(gen["kl"]) / n,
        "length": sum(gen["lengths"]) / n,
        "example": gen["texts"][0],
    }


def best_of_n(n: int, prompts: list[Any], a: argparse.Namespace, seed: int) -> dict[str, float]:
    """Best of n samples per held-out opening by gold; the analytic KL of best-of-n sampling."""
    from rlhfkit.config import RewardSpec, SamplingConfig
    from rlhfkit.pipeline.evaluate import generate, scorer

    score = scorer([RewardSpec(kind="sentiment")])
    best = [-math.inf] * len(prompts)
    for k in range(n):  # n independent seeded draws of one sample per prompt
        gen = generate(a.model, prompts, SamplingConfig(max_new_tokens=a.tokens, batch_size=64), seed * 1000 + k)
        best = [max(b, g) for b, g in zip(best, score(gen["messages"], gen["texts"]))]
    return {
        "gold": sum(best) / len(best),
        "positive_share": sum(g > POSITIVE for g in best) / len(best),
        "kl": math.log(n) - (n - 1) / n,
    }


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for method in sorted({series(r, rows) for r in rows}):
        mine = [r for r in rows if series(r, rows) == method]
        for ax, key in zip(axes, ("gold", "positive_share")):
            ax.scatter([r["kl"] for r in mine], [r[key] for r in mine], s=14, alpha=0.45)
            # mean over seeds per beta, joined in KL order
            knobs = sorted({r["knob"] for r in mine})
            pts = sorted(
                (
                    sum(r["kl"] for r in mine if r["knob"] == k) / sum(r["knob"] == k for r in mine),
                    sum(r[key] for r in mine if r["knob"] == k) / sum(r["knob"] == k for r in mine),
                )
                for k in knobs
            )
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=method)
    for ax, label in zip(axes, ("gold (VADER compound, mean)", "positive share of continuations")):
        ax.set_xlabel("KL(pi || ref) per response, nats")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[1].axhline(0.9, color="grey", lw=0.8, ls="--")
    axes[0].legend(fontsize=8)
    fig.suptitle("IMDb sentiment, SmolLM2-135M-Instruct: reward against KL (points: seeds; lines: mean per beta / n)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/frontier")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--methods", default="ppo,grpo,rloo,online-dpo,dpo,best-of-n")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--betas", default="", help="override every method's sweep, e.g. 0.05,0.2")
    ap.add_argument("--train-prompts", type=int, default=128)
    ap.add_argument("--eval-prompts", type=int, default=96)
    ap.add_argument("--prompts-per-step", type=int, default=8)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument(
        "--dpo-lr", type=float, default=None,
        help="learning rate of DPO and online DPO (default: --lr; the rows of 2026-12-06 07:00 used --lr / 4)",
    )  # fmt: skip
    ap.add_argument(
        "--dpo-epochs", type=int, default=4, help="epochs of offline DPO over its pairs (the lr / 4 rows used 2)"
    )
    ap.add_argument("--trainable-layers", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=20)
    ap.add_argument("--plot-only", action="store_true")
    ap.add_argument("--copy-results", action="store_true", help="also to benchmarks/results and docs/")
    a = ap.parse_args()
    out = (ROOT / a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    results = out / "frontier.jsonl"
    rows = [json.loads(x) for x in results.read_text().splitlines()] if results.exists() else []
    if not a.plot_only:
        run(a, out, results, rows)
    plot(rows, out / "frontier.png")
    if a.copy_results:
        shutil.copy(results, ROOT / "benchmarks/results/frontier.jsonl")
        shutil.copy(out / "frontier.png", ROOT / "docs/frontier.png")
    print(table(rows))


def run(a: argparse.Namespace, out: Path, results: Path, rows: list[dict[str, Any]]) -> None:
    from rlhfkit.data import load_examples

    train, heldout = out / "prompts.jsonl", out / "prompts.eval.jsonl"
    if not heldout.exists():
        subprocess.run(
            [
                sys.executable, "benchmarks/imdb_prompts.py", "--n", str(a.train_prompts), "--eval",
                str(a.eval_prompts), "--out", str(train), "--eval-out", str(heldout),
            ],
            cwd=ROOT, check=True,
        )  # fmt: skip
    prompts = load_examples(str(heldout), "prompt")
    done = {(r["method"], r["knob"], r["seed"], r.get("lr"), r.get("epochs")) for r in rows}

    def record(method: str, knob: float, seed: int, fn: Any) -> None:
        lr = method_lr(method, a)
        epochs = a.dpo_epochs if method == "dpo" else None  # offline DPO's passes over its pairs
        if (method, knob, seed, lr, epochs) in done:
            return
        t = time.perf_counter()
        row = {
            "method": method,
            "knob": knob,
            "seed": seed,
            "lr": lr,
            **({"epochs": epochs} if epochs is not None else {}),
            **fn(),
            "seconds": round(time.perf_counter() - t, 1),
        }
        rows.append(row)
        with results.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)

    seeds = [int(s) for s in a.seeds.split(",")]
    methods = a.methods.split(",")
    record("reference", 0.0, seeds[0], lambda: evaluate(a.model, a.model, prompts, a, seeds[0]))
    # every method's sweep point i before any method's point i + 1: a partial run still spans the methods
    for seed in seeds:
        for i in range(max(len(BEST_OF), *(len(BETAS[m]) for m in methods if m in BETAS))):
            for method in methods:
                if method == "best-of-n":
                    if i < len(BEST_OF):
                        record(method, BEST_OF[i], seed, functools.partial(best_of_n, BEST_OF[i], prompts, a, seed))
                    continue
                betas = [float(b) for b in a.betas.split(",")] if a.betas else BETAS[method]
                if i < len(betas):
                    lr = method_lr(method, a)
                    run_dir = (
                        out / f"{method}-b{betas[i]}-s{seed}"
                        if lr == a.lr
                        else out / f"{method}-b{betas[i]}-lr{lr:g}-s{seed}"
                    )
                    job = functools.partial(train_and_eval, method, betas[i], seed, run_dir, a, train, prompts)
                    record(method, betas[i], seed, job)


def train_and_eval(
    method: str, beta: float, seed: int, run_dir: Path, a: argparse.Namespace, train: Path, prompts: list[Any]
) -> dict[str, Any]:
    out = run_dir.parent
    shutil.rmtree(run_dir, ignore_errors=True)  # a run killed before its row was recorded starts again
    if method == "dpo":
        pairs = out / f"pairs-s{seed}.jsonl"
        if not pairs.exists():
            rlhfkit(
                "sample", f"data.train={train}", f"model.name_or_path={a.model}", "num_samples=4", "format=prefs",
                f"sampling.max_new_tokens={a.tokens}", f"seed={seed}", SENTIMENT, "-o", str(pairs),
                log=out / f"pairs-s{seed}.log",
            )  # fmt: skip
        rlhfkit(
            "dpo", f"data.train={pairs}", f"model.name_or_path={a.model}", f"loss.beta={beta}",
            f"model.trainable_layers={a.trainable_layers}", "data.eval_fraction=0", f"train.epochs={a.dpo_epochs}",
            f"train.lr={method_lr(method, a)}", "train.batch_size=8", f"train.seed={seed}", "train.progress=false",
            "eval_kl_samples=0", "-o", str(run_dir), log=Path(f"{run_dir}.log"),
        )  # fmt: skip
    else:
        args = online_args(method, beta, a) + [f"train.seed={seed}", f"data.train={train}"]
        rlhfkit(method, *args, "-o", str(run_dir), log=Path(f"{run_dir}.log"))
    return evaluate(str(run_dir / "model"), a.model, prompts, a, seed)


def table(rows: list[dict[str, Any]]) -> str:
    """Mean (min-max over seeds) per method and knob."""
    lines = ["| method | beta / n | seeds | KL (nats) | gold | positive share |", "|---|---:|---:|---|---|---|"]
    keys = sorted({(series(r, rows), r["knob"]) for r in rows})
    for method, knob in keys:
        mine = [r for r in rows if series(r, rows) == method and r["knob"] == knob]

        def cell(k: str, mine: list[dict[str, Any]] = mine) -> str:
            v = [r[k] for r in mine]
            mean = sum(v) / len(v)
            return f"{mean:.3f}" if len(v) == 1 else f"{mean:.3f} ({min(v):.3f}-{max(v):.3f})"

        lines.append(
            f"| {method} | {knob:g} | {len(mine)} | {cell('kl')} | {cell('gold')} | {cell('positive_share')} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
