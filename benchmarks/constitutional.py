"""Constitutional AI critique-and-revise with the builtin 135M model: does the revision get preferred?

    python benchmarks/constitutional.py --prompts 16 [--model smollm2-135m-instruct] [--max-new-tokens 48]
        [--judge smollm2-135m-instruct] [--threads 1] [--out benchmarks/results/constitutional.jsonl]

1. prompts: the first human turn of ``--prompts`` seeded-random single-turn red-team dialogues from
   ``/work/shared/data/hh-rlhf/harmless-base.jsonl.gz`` (the requests Bai et al. 2022 revise against);
2. critique-and-revise (greedy by default) against a principle drawn from the package's constitution;
3. the judge (both orders, rubric = the constitution's comparison questions) compares revision with original: the
   share where it prefers the revision, its mean P(revision better), position bias; plus the lexicon refusal rate and
   toxicity proxy of original vs revision (rlhfkit.eval.safety).

Appends one summary row to ``--out`` and writes every trace to ``*_samples_<layout>.jsonl`` next to it.
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
    ap.add_argument("--judge", default="smollm2-135m-instruct")
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--layout", default="paper", choices=("paper", "quoted"))
    ap.add_argument("--rm", help="also report how often this reward model scores the revision above the original")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/constitutional.jsonl"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    from rlhfkit.data import load_examples
    from rlhfkit.eval.safety import is_refusal, toxicity
    from rlhfkit.feedback.constitution import (
        ChatGenerator,
        critique_and_revise,
        judge_revisions,
        load_constitution,
        preference_rows,
        rubric_from_constitution,
    )
    from rlhfkit.feedback.judge import Judge, position_bias

    single_turn = [e for e in load_examples(a.data, "preference", errors="skip") if len(e.prompt) == 1]
    prompts = [e.prompt[0]["content"] for e in random.Random(a.seed).sample(single_turn, a.prompts)]
    constitution = load_constitution()

    t0 = time.perf_counter()
    gen = ChatGenerator(a.model, a.max_new_tokens, a.temperature, batch_size=a.batch_size, max_prompt_length=512,
                        seed=a.seed)  # fmt: skip
    records = critique_and_revise(gen, prompts, constitution, rounds=1, seed=a.seed, layout=a.layout)
    gen_s = time.perf_counter() - t0

    t1 = time.perf_counter()
    judge = Judge(a.judge, rubric=rubric_from_constitution(constitution), batch_size=a.batch_size,
                  max_prompt_tokens=96, max_response_tokens=a.max_new_tokens + 16)  # fmt: skip
    rows, verdicts = judge_revisions(judge, records)
    judge_s = time.perf_counter() - t1

    usable = [r for r in records if r.revision.strip() and r.response.strip() and r.revision != r.response]
    rm_rate = float("nan")
    if a.rm and usable:
        from rlhfkit.rewards.sources import RewardModelSource

        rm = RewardModelSource.from_path(a.rm)
        prompts_u = [list(r.prompt) for r in usable]
        revised = rm(prompts_u, [r.revision for r in usable]).total
        original = rm(prompts_u, [r.response for r in usable]).total
        rm_rate = float((revised > original).float().mean())
    k = len(verdicts)
    bias = position_bias(verdicts)

    def rate(xs: list[bool]) -> float:
        return sum(xs) / len(xs) if xs else float("nan")

    summary = {
        "benchmark": "constitutional",
        "model": a.model,
        "judge": a.judge,
        "prompts": len(records),
        "seed": a.seed,
        "max_new_tokens": a.max_new_tokens,
        "temperature": a.temperature,
        "layout": a.layout,
        "pref_pairs": len(preference_rows(records)),
        "unchanged_or_empty": len(records) - len(usable),
        "judge_prefers_revision": rate([v.p_a > 0.5 for v in verdicts]),
        "rm": a.rm,
        "rm_prefers_revision": rm_rate,
        "judge_prefers_revision_first_order_only": rate([v.p_a_first > 0.5 for v in verdicts]),
        "judge_mean_p_revision": sum(v.p_a for v in verdicts) / k if k else float("nan"),
        "judge_ties": sum(v.choice == "tie" for v in verdicts),
        "position_bias": bias["bias"],
        "flip_rate": bias["flip_rate"],
        "refusal_rate_original": rate([is_refusal(r.response) for r in records]),
        "refusal_rate_revision": rate([is_refusal(r.revision) for r in records]),
        "toxicity_original": sum(toxicity(r.response) for r in records) / len(records),
        "toxicity_revision": sum(toxicity(r.revision) for r in records) / len(records),
        "mean_words_original": sum(len(r.response.split()) for r in records) / len(records),
        "mean_words_revision": sum(len(r.revision.split()) for r in records) / len(records),
        "generate_s": round(gen_s, 1),
        "judge_s": round(judge_s, 1),
        "threads": a.threads,
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}",
    }
    summary = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in summary.items()}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as f:
        f.write(json.dumps(summary) + "\n")
    p_by_prompt = {json.dumps(list(r.prompt)): v.p_a for r, v in zip(usable, verdicts)}
    with out.with_name(f"{out.stem}_samples_{a.layout}.jsonl").open("w") as f:
        for r in records:
            f.write(json.dumps({**r.to_row(), "p_revision_better": p_by_prompt.get(json.dumps(list(r.prompt)))}) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
