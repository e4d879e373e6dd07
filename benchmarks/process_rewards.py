"""Outcome-only against process rewards on the arithmetic task (every step checked by a rule), on the builtin model.

    OMP_NUM_THREADS=2 python benchmarks/process_rewards.py --out runs/process --trainable-layers 8

1. sft: a short SFT on worked solutions (`sample:arithmetic-sft`: one running sum per line, then "Answer: N")
2. grpo, twice from that SFT model with the same seed, prompts and budget, against the rule checker (`kind: arithmetic`):
   algo.reward_placement=outcome (1 at the last token when the final answer is right) and =process (1/n at the end
   token of each of the n steps that is right; Shao et al. 2024 §4.1.3 for the advantage)
3. eval: greedy answers to the 128 held-out problems (`sample:arithmetic-eval`) of the SFT model and both policies:
   final-answer accuracy and fully-correct rate with Wilson 95% intervals, step accuracy (the share of a solution's
   steps that are right) with a normal 95% interval over problems; then the same from --sampled-eval answers per
   problem at the training temperature (what GRPO optimizes), and every model paired against SFT and process against
   outcome (per-problem differences on the same problems and draws, 95% interval)
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


def mean_ci(values: list[float]) -> tuple[float, list[float]]:
    """Mean and normal 95% interval (over problems)."""
    mean = sum(values) / len(values)
    if len(values) < 2:  # no spread to measure
        return mean, [math.nan, math.nan]
    se = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values))
    return mean, [mean - 1.96 * se, mean + 1.96 * se]


def paired(result: dict, evaluation: str) -> dict:
    """Per-problem differences (same problems, same draws) of answer and step accuracy: outcome and process against
    SFT, process against outcome, each a mean with its 95% interval: tighter than comparing the models' intervals."""
    out = {}
    for a, b in (("outcome", "sft"), ("process", "sft"), ("process", "outcome")):
        for metric in ("answer", "steps"):
            x, y = result[a][evaluation]["per_problem"][metric], result[b][evaluation]["per_problem"][metric]
            mean, ci = mean_ci([u - v for u, v in zip(x, y)])
            out[f"{a}-{b} {metric}"] = {"mean": mean, "ci": ci}
    return out


def evaluate(model_dir: str, n: int, tokens: int, settings: dict[str, tuple[float, int]]) -> dict[str, dict]:
    """Accuracy of `model_dir` on the first `n` held-out problems, one result per setting name -> (temperature,
    samples): greedy is (0, 1); `samples` answers each at a temperature is what GRPO optimizes. Intervals over
    problems. The model is loaded once for all settings."""
    from rlhfkit.data import ChatFormatter, load_examples, resolve_data_path
    from rlhfkit.models import load_for_inference
    from rlhfkit.rollout import encode_prompts

    model, tokenizer = load_for_inference(model_dir, "float32")
    examples = load_examples(resolve_data_path("sample:arithmetic-eval"), "prompt")[:n]
    prompts = encode_prompts(examples, ChatFormatter(tokenizer, 512, 256))
    return {
        name: score(model, tokenizer, prompts, tokens, temperature, samples)
        for name, (temperature, samples) in settings.items()
    }


def score(model, tokenizer, prompts: list, tokens: int, temperature: float, samples: int) -> dict:
    """One evaluation setting of `evaluate`."""
    import torch

    from rlhfkit.config import SamplingConfig
    from rlhfkit.eval.winrate import wilson_interval
    from rlhfkit.rewards.base import prompt_text
    from rlhfkit.rollout import make_engine, sampling_params
    from rlhfkit.tasks.arithmetic import check_response, numbers_of

    sampling = SamplingConfig(max_new_tokens=tokens, temperature=temperature, batch_size=64)
    torch.manual_seed(0)  # the same draws for every model evaluated
    ro = make_engine(model, tokenizer, sampling).generate([p.ids for p in prompts], sampling_params(sampling), samples)
    checks = [  # a prompt's samples are consecutive
        check_response(numbers_of(prompt_text(prompts[i // samples].messages)), t) for i, t in enumerate(ro.texts)
    ]

    def per_problem(values: list[float]) -> list[float]:
        return [sum(values[i : i + samples]) / samples for i in range(0, len(values), samples)]

    answers = per_problem([float(c.answer_correct) for c in checks])
    perfect = per_problem([float(all(c.correct) and len(c.correct) == c.expected) for c in checks])
    shares = per_problem([sum(c.correct) / c.expected for c in checks])

    result: dict = {"problems": len(prompts), "samples": samples, "temperature": temperature}
    for key, ci_key, values, binary in (
        ("answer_accuracy", "answer_ci", answers, True),
        ("fully_correct", "fully_correct_ci", perfect, True),
        ("step_accuracy", "step_ci", shares, False),
    ):
        mean, ci = mean_ci(values)
        if samples == 1 and binary:  # one 0/1 outcome per problem: Wilson
            ci = list(wilson_interval(round(mean * len(values)), len(values)))
        result[key], result[ci_key] = mean, ci
    result["per_problem"] = {"answer": answers, "steps": shares}  # for the paired comparisons
    result["examples"] = [
        {"prompt": prompt_text(prompts[i // samples].messages), "response": ro.texts[i]}
        for i in range(0, min(3, len(prompts)) * samples, samples)
    ]
    return result


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
    ap.add_argument("--temperature", type=float, default=1.0, help="GRPO sampling temperature")
    ap.add_argument(
        "--trainable-layers",
        type=int,
        default=None,
        help="GRPO trains only the top N blocks (default: the whole model)",
    )
    ap.add_argument(
        "--sampled-eval",
        type=int,
        default=4,
        help="answers per held-out problem sampled at --temperature (what GRPO optimizes); 0: greedy only",
    )
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
            f"sampling.temperature={a.temperature}",
            *([f"model.trainable_layers={a.trainable_layers}"] if a.trainable_layers is not None else []),
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
    settings = {"eval": (0.0, 1)} | ({"sampled_eval": (a.temperature, a.sampled_eval)} if a.sampled_eval else {})
    for stage in ("sft", "outcome", "process"):
        result[stage] |= evaluate(str(out / stage / "model"), a.eval, a.tokens, settings)
    times["eval_s"] = time.perf_counter() - t
    result["paired"] = {e: paired(result, e) for e in ("eval", "sampled_eval") if e in result["sft"]}
    result["times"] = {k: round(v, 1) for k, v in times.items()} | {"total_s": round(sum(times.values()), 1)}
    (out / "process_rewards.json").write_text(json.dumps(result, indent=2) + "\n")
    if a.record:
        with (ROOT / "benchmarks" / "results" / "process_rewards.jsonl").open("a") as f:
            f.write(json.dumps(result) + "\n")
    brief = {
        f"{k} {e}": {m: round(v[e][m], 4) for m in ("answer_accuracy", "step_accuracy", "fully_correct")}
        for k, v in result.items()
        if k in ("sft", "outcome", "process")
        for e in ("eval", "sampled_eval")
        if e in v
    }
    diffs = {e: {k: round(v["mean"], 4) for k, v in d.items()} for e, d in result["paired"].items()}
    print(json.dumps({"eval": brief, "paired": diffs, "times": result["times"]}))


if __name__ == "__main__":
    main()
