"""How well does a small local LLM judge agree with people on Anthropic hh-rlhf (harmless-base)?

    python benchmarks/judge_hh.py --pairs 150 [--model smollm2-135m-instruct] [--max-prompt-tokens 64]
        [--max-response-tokens 48] [--threads 1] [--out benchmarks/results/judge_hh.jsonl]

Takes a seeded sample of ``--pairs`` human-labelled pairs from ``/work/shared/data/hh-rlhf/harmless-base.jsonl.gz``
(the shared-prefix "Human:/Assistant:" format; rows with an empty response are skipped), judges each pair in BOTH orders
with :class:`rlhfkit.feedback.judge.Judge` and compares with the human choice:

- single-order accuracy: the verdict from one order only, either order (chosen shown first / second), and a seeded
  random order per pair (what a judge without the correction would score on randomly ordered data);
- debiased accuracy: the mean of both orders (p > 0.5), and with the tie margin (accuracy on decided pairs, ties);
- the position bias (mean P(first shown wins) - 0.5, share of verdicts that flip with order), Cohen's kappa.

Appends one summary row to ``--out`` and writes the per-pair probabilities next to it (``*_pairs.jsonl``).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = Path("/work/shared/data/hh-rlhf/harmless-base.jsonl.gz")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--pairs", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-prompt-tokens", type=int, default=64)
    ap.add_argument("--max-response-tokens", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--tie-margin", type=float, default=0.05)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/judge_hh.jsonl"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    from rlhfkit.data import load_examples
    from rlhfkit.feedback.judge import Judge, judge_agreement, position_bias

    examples = load_examples(a.data, "preference", errors="skip")
    rng = random.Random(a.seed)
    sample = rng.sample(examples, min(a.pairs, len(examples)))
    prompts = [list(e.prompt) for e in sample]
    chosen, rejected = [e.chosen for e in sample], [e.rejected for e in sample]

    t0 = time.perf_counter()
    judge = Judge(
        a.model,
        batch_size=a.batch_size,
        tie_margin=a.tie_margin,
        max_prompt_tokens=a.max_prompt_tokens,
        max_response_tokens=a.max_response_tokens,
    )
    load_s = time.perf_counter() - t0
    n_tokens = sum(
        len(judge._prefix_ids(p)) + len(judge._tokens(s))
        for c, x, y in zip(prompts, chosen, rejected)
        for p, s in [judge.request_parts(judge.rubrics[""], judge._conversation(c), x, y)]
    )
    t1 = time.perf_counter()
    verdicts = judge.compare(prompts, chosen, rejected)  # a = the human's chosen response
    judge_s = time.perf_counter() - t1

    agree = judge_agreement(verdicts, ["A"] * len(verdicts))
    bias = position_bias(verdicts)
    # one order per pair, picked by a seeded coin: chosen shown first -> p_a_first, else p_a_second
    coin = random.Random(a.seed + 1)
    single = [(v.p_a_first if coin.random() < 0.5 else v.p_a_second) > 0.5 for v in verdicts]
    summary = {
        "benchmark": "judge_hh",
        "model": a.model,
        "data": str(a.data),
        "pairs": len(verdicts),
        "seed": a.seed,
        "max_prompt_tokens": a.max_prompt_tokens,
        "max_response_tokens": a.max_response_tokens,
        "tie_margin": a.tie_margin,
        "accuracy_single_order_random": sum(single) / len(single),
        "accuracy_chosen_first": agree["accuracy_first_order"],
        "accuracy_chosen_second": agree["accuracy_second_order"],
        "accuracy_both_orders": agree["accuracy_debiased"],
        "accuracy_decided_with_margin": agree["accuracy"],
        "accuracy_ties_half": agree["accuracy_ties_half"],
        "judge_ties": agree["judge_ties"],
        "cohen_kappa_with_ties": agree["cohen_kappa"],
        "mean_p_human_choice": agree["mean_p_human"],
        "position_bias": bias["bias"],
        "flip_rate": bias["flip_rate"],
        "mean_order_gap": bias["mean_order_gap"],
        "forward_sequences": 2 * len(verdicts),
        "tokens_judged": 2 * n_tokens,
        "load_s": round(load_s, 1),
        "judge_s": round(judge_s, 1),
        "tokens_per_s": round(2 * n_tokens / judge_s, 1),
        "threads": a.threads,
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}",
    }
    summary = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in summary.items()}  # strict JSON
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as f:
        f.write(json.dumps(summary) + "\n")
    pairs_path = out.with_name(out.stem + "_pairs.jsonl")
    with pairs_path.open("w") as f:
        for i, v in enumerate(verdicts):
            f.write(
                json.dumps(
                    {
                        "i": i,
                        "p_chosen_first": v.p_a_first,
                        "p_chosen_second": v.p_a_second,
                        "p_chosen": v.p_a,
                        "choice": v.choice,
                    }
                )
                + "\n"
            )
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
