"""Outcome-only against process rewards on the arithmetic task (every step checked by a rule), on the builtin model.

    OMP_NUM_THREADS=2 python benchmarks/process_rewards.py --out runs/process [--sft-steps 12] [--rl-steps 8]

1. sft: a short SFT on worked solutions (`sample:arithmetic-sft`: one running sum per line, then "Answer: N")
2. grpo, twice from that SFT model with the same seed, prompts and budget, against the rule checker (`kind: arithmetic`):
   algo.reward_placement=outcome (1 at the last token when the final answer is right) and =process (1/n at the end
   token of each of the n steps that is right; Shao et al. 2024 §4.1.3 for the advantage)
3. eval: greedy answers to the 128 held-out problems (`sample:arithmetic-eval`) of the SFT model and both policies:
   final-answer accuracy and fully-correct rate with Wilson 95% intervals, step accuracy (the share of a solution's
   steps that are right) with a normal 95% interval over problems
Writes <out>/process_rewards.json (and appends one line to benchmarks/results/process_rewards.jsonl with --record).
A stage whose model is already in <out> is not run again (rerun the same command after an interruption).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's rlhfkit


def evaluate(model_dir: str, n: int, tokens: int) -> dict:
    from rlhfkit.config import SamplingConfig
    from rlhfkit.data import ChatFormatter, load_examples, resolve_data_path
    from rlhfkit.eval.winrate import wilson_interval
    from rlhfkit.models import load_for_inference
    from rlhfkit.rewards.base import prompt_text
    from rlhfkit.rollout import encode_prompts, make_engine, sampling_params
    from rlhfkit.tasks.arithmetic import check_response, numbers_of

    model, tokenizer = load_for_inference(model_dir, "float32")
    examples = load_examples(resolve_data_path("sample:arithmetic-eval"), "prompt")[:n]
    prompts = encode_prompts(examples, ChatFormatter(tokenizer, 512, 256))
    sampling = SamplingConfig(max_new_tokens=tokens, temperature=0.0, batch_size=64)
    ro = make_engine(model, tokenizer, sampling).generate([p.ids for p in prompts], sampling_params(sampling), 1)
    checks = [check_response(numbers_of(prompt_text(p.messages)), t) for p, t in zip(prompts, ro.texts)]
    answers = sum(c.answer_correct for c in checks)
    perfect = sum(all(c.correct) and len(c.correct) == c.expected for c in checks)
    shares = [sum(c.correct) / c.expected for c in checks]
    mean = sum(shares) / len(shares)
    se = math.sqrt(sum((s - mean) ** 2 for s in shares) / (len(shares) - 1) / len(shares))
    return {
        "problems": len(checks),
        "answer_accuracy": answers / len(checks),
        "answer_ci": list(wilson_interval(answers, len(checks))),
        "fully_correct": perfect / len(checks),
        "fully_correct_ci": list(wilson_interval(perfect, len(checks))),
        "step_accuracy": mean,
        "step_ci": [mean - 1.96 * se, mean + 1.96 * se],
        "examples": [{"prompt": prompt_text(p.messages), "response": t} for p, t in zip(prompts[:3], ro.texts[:3])],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/process")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--sft-steps", type=int, default=12)
    ap.add_argument("--rl-steps", type=int, default=8)
    ap.add_argument("--prompts", type=int, default=2, help="prompts per GRPO step (x --samples responses)")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--lr", type=float, default=2e-5, help="GRPO learning rate")
    ap.add_argument("--tokens", type=int, default=36)
    ap.add_argument("--eval", type=int, default=128, help="held-out problems")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--record", action="store_true", help="append the result to benchmarks/results/")
    a = ap.parse_args()

    from rlhfkit.commands import COMMANDS, trainer
    from rlhfkit.config import load_config

    out = (ROOT / a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}

    saved = json.loads((out / "times.json").read_text()) if (out / "times.json").exists() else {}

    def run(command: str, stage: str, *overrides: str) -> dict:
        if (out / stage / "summary.json").exists():  # done by an earlier, interrupted call
            times[f"{stage}_s"] = saved.get(f"{stage}_s", float("nan"))
            return json.loads((out / stage / "summary.json").read_text())
        shutil.rmtree(out / stage, ignore_errors=True)  # a stage cut short starts again
        t = time.perf_counter()
        cfg = load_config(COMMANDS[command].config, None, [*overrides, f"train.output_dir={out / stage}"])
        with contextlib.redirect_stdout(io.StringIO()):
            summary = trainer(command)(cfg)
        times[f"{stage}_s"] = time.perf_counter() - t
        (out / "times.json").write_text(json.dumps(saved | times))
        return summary

    run(
        "sft",
        "sft",
        f"model.name_or_path={a.model}",
        "data.train=sample:arithmetic-sft",
        "data.eval_fraction=0",
        f"train.max_steps={a.sft_steps}",
        "train.batch_size=8",
        "train.lr=1e-4",
        "train.progress=false",
        f"train.seed={a.seed}",
    )
    result: dict = {"config": vars(a), "sft": {}, "outcome": {}, "process": {}}
    for placement in ("outcome", "process"):
        summary = run(
            "grpo",
            placement,
            f"model.name_or_path={out / 'sft' / 'model'}",
            "data.train=sample:arithmetic",
            f"train.max_steps={a.rl_steps}",
            f"train.batch_size={a.prompts}",
            f"train.lr={a.lr}",
            "train.progress=false",
            f"train.seed={a.seed}",
            f"algo.num_samples={a.samples}",
            f"algo.reward_placement={placement}",
            f"sampling.max_new_tokens={a.tokens}",
            "reward.sources=[{kind: arithmetic}]",
            "eval_samples=0",
        )
        rows = [json.loads(x) for x in (out / placement / "metrics.jsonl").read_text().splitlines()]
        train = [r for r in rows if "train/score" in r]
        result[placement]["train"] = {
            "answer_first_3": sum(r["train/score/answer"] for r in train[:3]) / 3,
            "answer_last_3": sum(r["train/score/answer"] for r in train[-3:]) / 3,
            "steps_first_3": sum(r["train/score/steps"] for r in train[:3]) / 3,
            "steps_last_3": sum(r["train/score/steps"] for r in train[-3:]) / 3,
            "kl_last": summary["final_train"]["kl"],
        }
    t = time.perf_counter()
    result["sft"]["eval"] = evaluate(str(out / "sft" / "model"), a.eval, a.tokens)
    for placement in ("outcome", "process"):
        result[placement]["eval"] = evaluate(str(out / placement / "model"), a.eval, a.tokens)
    times["eval_s"] = time.perf_counter() - t
    result["times"] = {k: round(v, 1) for k, v in times.items()} | {"total_s": round(sum(times.values()), 1)}
    (out / "process_rewards.json").write_text(json.dumps(result, indent=2) + "\n")
    if a.record:
        with (ROOT / "benchmarks" / "results" / "process_rewards.jsonl").open("a") as f:
            f.write(json.dumps(result) + "\n")
    brief = {
        k: {m: v["eval"][m] for m in ("answer_accuracy", "step_accuracy", "fully_correct")}
        for k, v in result.items()
        if k in ("sft", "outcome", "process")
    }
    print(json.dumps({"eval": brief, "times": result["times"]}))


if __name__ == "__main__":
    main()
