"""Red-teaming before and after safety alignment on the builtin model (issue 15, item 5): align SmolLM2-135M-Instruct to
refuse with `rlhfkit sft`, then attack the model before and after with `rlhfkit eval --redteam` on held-out prompts.

    OMP_NUM_THREADS=2 python benchmarks/redteam_alignment.py --out runs/redteam-align [--stages data,sft,refusals,attack]
        [--model smollm2-135m-instruct] [--heldout 16] [--benign-heldout 20] [--sft-steps 24] [--sft-lr 1e-4]
        [--attack-prompts 8] [--attack-steps 40] [--attack-batch 32] [--attack-topk 64] [--attack-suffix-length 10]
        [--attack-total-time 240] [--max-new-tokens 32] [--seed 0] [--results benchmarks/results/redteam_alignment.json]

1. split (rlhfkit.eval.safety's shipped sets): the first --heldout harmful prompts taken round-robin over the 8 domains
   (the order `rlhfkit eval --redteam` attacks in) are HELD OUT; the other harmful prompts are for training. The benign
   set is split the same way (--benign-heldout held out, for the over-refusal rate).
2. data: one SFT row per training prompt. Harmful: a refusal WRITTEN BY A TEMPLATE IN THIS SCRIPT (`refusal()`: one of
   three openings, in turn, and one sentence of reason per domain); benign: the base model's own greedy reply
   (self-distillation, so that the SFT teaches when to refuse and leaves the helpful behaviour as it was), except
   replies the refusal lexicon flags (they would teach over-refusal; the count is in the summary).
3. sft: `rlhfkit sft` on those rows (full weights), from --model.
4. refusals: the greedy reply (--max-new-tokens) of the base and the aligned model to every harmful and benign prompt;
   refusal rates (rlhfkit.eval.safety.is_refusal) with 95% Wilson intervals, held-out and training splits apart.
5. attack: `rlhfkit eval --redteam --policy ALIGNED --baseline BASE --redteam-prompts K` (K = --attack-prompts <=
   --heldout: the first K of the same round-robin order, so every attacked prompt is held out), default success "the
   reply is not a refusal", under --attack-total-time seconds of search per model.

Stages whose outputs exist in --out are not run again, so `--stages` can split the work into runs of a few minutes
each (and an interrupted run resumes). The summary goes to --results when every stage is done.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's rlhfkit

STAGES = ("data", "sft", "refusals", "attack")

OPENINGS = (
    "I'm sorry, but I can't help with that.",
    "I can't assist with this request.",
    "I won't help with that.",
)
"""Refusal openings, used in turn over the training prompts (each is in the refusal lexicon of rlhfkit.eval.safety)."""

REASONS = {
    "weapons": "Instructions for making or modifying weapons could get people seriously hurt.",
    "cyber": "Breaking into or attacking computer systems is illegal and harms the people who depend on them.",
    "self-harm": "I'm worried about your safety. If you are thinking about hurting yourself, please talk to someone you "
    "trust or call a local crisis line right away.",
    "fraud": "Deceiving people out of their money or identity causes real harm and is a crime.",
    "harassment": "Harassing, threatening or humiliating someone hurts a real person.",
    "drugs": "Making or dealing illegal drugs is dangerous and against the law.",
    "privacy": "Tracking or exposing someone without their consent puts their privacy and safety at risk.",
    "violence": "I won't help plan harm against anyone.",
}
"""One sentence of reason per domain of the harmful set, after the opening."""


def refusal(i: int, domain: str) -> str:
    """The templated refusal of the i-th training prompt: an opening (in turn), the domain's reason, an offer."""
    return f"{OPENINGS[i % len(OPENINGS)]} {REASONS[domain]} If there is something else you need, I'm happy to help."


def split(rows: list[dict[str, str]], heldout: int) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(held out: the first `heldout` rows round-robin over domains, as the red team takes them; the rest, in order)."""
    from rlhfkit.eval.safety import _spread

    held = _spread(rows, heldout)
    keys = {r["prompt"] for r in held}
    return held, [r for r in rows if r["prompt"] not in keys]


def greedy_replies(model_name: str, prompts: list[str], max_new_tokens: int) -> list[str]:
    """Greedy replies, each prompt encoded exactly as `rlhfkit eval --redteam` encodes it without a suffix."""
    from rlhfkit.data import ChatFormatter
    from rlhfkit.eval.redteam import MARKER
    from rlhfkit.models import load_for_inference
    from rlhfkit.pipeline.evaluate import greedy_generator

    model, tokenizer = load_for_inference(model_name)
    fmt = ChatFormatter(tokenizer, max_length=1 << 20, max_prompt_length=(1 << 20) - 1)
    ids = [sum(fmt.split_prompt(p + MARKER, MARKER), []) for p in prompts]
    return greedy_generator(model, tokenizer, max_new_tokens)(ids)


def rate(flags: list[bool]) -> dict[str, Any]:
    from rlhfkit.eval.redteam import attack_rate

    r = attack_rate(flags)
    return {"refusals": r["successes"], "n": r["n"], "rate": r["rate"], "ci_low": r["ci_low"], "ci_high": r["ci_high"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/redteam-align", help="working directory (data, models, replies, attack)")
    ap.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated stages to run now, of {STAGES}")
    ap.add_argument("--model", default="smollm2-135m-instruct", help="the model before alignment")
    ap.add_argument("--heldout", type=int, default=16, help="harmful prompts held out (round-robin over domains)")
    ap.add_argument("--benign-heldout", type=int, default=20, help="benign prompts held out (over-refusal)")
    ap.add_argument("--benign-tokens", type=int, default=96, help="length of the base model's benign SFT replies")
    ap.add_argument("--sft-steps", type=int, default=24)
    ap.add_argument("--sft-batch", type=int, default=8)
    ap.add_argument("--sft-lr", type=float, default=1e-4)
    ap.add_argument("--attack-prompts", type=int, default=8, help="held-out harmful prompts attacked (<= --heldout)")
    ap.add_argument("--attack-steps", type=int, default=40)
    ap.add_argument("--attack-batch", type=int, default=32)
    ap.add_argument("--attack-topk", type=int, default=64)
    ap.add_argument("--attack-suffix-length", type=int, default=10)
    ap.add_argument("--attack-total-time", type=float, default=240, help="seconds of GCG search per model")
    ap.add_argument("--max-new-tokens", type=int, default=32, help="greedy reply length judged for refusal")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--results", default="benchmarks/results/redteam_alignment.json", help="summary (from the root)")
    a = ap.parse_args()
    stages = [s for s in a.stages.split(",") if s]
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        ap.error(f"--stages: unknown {unknown}; choose among {STAGES}")
    if not 1 <= a.attack_prompts <= a.heldout <= 40:
        ap.error("need 1 <= --attack-prompts <= --heldout <= 40 (every attacked prompt must be held out)")

    from rlhfkit.eval.redteam import harmful_rows
    from rlhfkit.eval.safety import is_refusal, load_safety_sets

    out = (ROOT / a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    times_file = out / "times.json"
    times: dict[str, float] = json.loads(times_file.read_text()) if times_file.exists() else {}
    sets = load_safety_sets()
    harm_held, harm_train = split(sets["harmful"], a.heldout)
    benign_held, benign_train = split(sets["benign"], a.benign_heldout)
    attacked = harmful_rows(a.attack_prompts)
    assert {r["prompt"] for r in attacked} <= {r["prompt"] for r in harm_held}, "an attacked prompt is not held out"
    aligned = out / "sft" / "model"

    done = {"data": out / "sft.jsonl", "sft": out / "sft" / "summary.json", "refusals": out / "replies.json",
            "attack": out / "redteam.json"}  # fmt: skip

    def timed(stage: str, fn: Any) -> None:
        if stage not in stages or done[stage].exists():
            return
        t = time.perf_counter()
        fn()
        times[f"{stage}_s"] = round(time.perf_counter() - t, 1)
        times[f"{stage}_omp_threads"] = os.environ.get("OMP_NUM_THREADS")
        times_file.write_text(json.dumps(times, indent=1))

    # 2. data: templated refusals for the training harmful prompts, the base model's own replies for the benign ones
    def data() -> None:
        replies = greedy_replies(a.model, [r["prompt"] for r in benign_train], a.benign_tokens)
        rows = [
            {"prompt": r["prompt"], "response": refusal(i, r["domain"]), "source": "template-refusal"}
            for i, r in enumerate(harm_train)
        ] + [  # a benign reply the lexicon calls a refusal would teach over-refusal: left out (and counted)
            {"prompt": r["prompt"], "response": t.strip(), "source": "base-model-greedy"}
            for r, t in zip(benign_train, replies)
            if not is_refusal(t)
        ]
        (out / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    # 3. sft: `rlhfkit sft` on those rows
    def sft() -> None:
        cmd = [
            sys.executable, "-m", "rlhfkit.cli", "sft", "-o", str(out / "sft"),
            f"model.name_or_path={a.model}", f"data.train={out / 'sft.jsonl'}", "data.eval_fraction=0",
            f"train.max_steps={a.sft_steps}", f"train.batch_size={a.sft_batch}", f"train.lr={a.sft_lr}",
            "train.warmup_ratio=0.1", "train.progress=false", f"train.seed={a.seed}",
        ]  # fmt: skip
        subprocess.run(cmd, cwd=ROOT, check=True)

    # 4. refusal rates of both models on every split
    def refusals() -> None:
        parts = {
            "harmful_heldout": harm_held,
            "harmful_train": harm_train,
            "benign_heldout": benign_held,
            "benign_train": benign_train,
        }
        prompts = [r["prompt"] for rows in parts.values() for r in rows]
        result: dict[str, Any] = {}
        for role, name in (("base", a.model), ("aligned", str(aligned))):
            texts = iter(greedy_replies(name, prompts, a.max_new_tokens))
            result[role] = {
                part: [{**r, "reply": next(texts)} for r in rows] for part, rows in parts.items()
            }  # fmt: skip
        (out / "replies.json").write_text(json.dumps(result, indent=1))

    # 5. the attack, both models, through the CLI
    def attack() -> None:
        cmd = [
            sys.executable, "-m", "rlhfkit.cli", "eval", "--redteam", "--policy", str(aligned), "--baseline", a.model,
            "--redteam-prompts", str(a.attack_prompts), "--redteam-steps", str(a.attack_steps),
            "--redteam-batch", str(a.attack_batch), "--redteam-topk", str(a.attack_topk),
            "--redteam-suffix-length", str(a.attack_suffix_length), "--redteam-total-time", str(a.attack_total_time),
            "--redteam-max-new-tokens", str(a.max_new_tokens), "--seed", str(a.seed),
            "-o", str(out / "redteam.json"), "--report", str(out / "report"),
        ]  # fmt: skip
        subprocess.run(cmd, cwd=ROOT, check=True)

    timed("data", data)
    timed("sft", sft)
    timed("refusals", refusals)
    timed("attack", attack)

    if not all(f.exists() for f in done.values()):
        print(f"stages so far: {sorted(times)}; run the others (--stages) for the summary")
        return
    replies = json.loads((out / "replies.json").read_text())
    redteam = json.loads((out / "redteam.json").read_text())["redteam"]
    summary: dict[str, Any] = {
        "config": vars(a) | {"out": a.out},
        "machine": f"2-core CPU, shared ({platform.machine()}; OMP_NUM_THREADS of each stage in times)",
        "refusal_source": "harmful training prompts: refusal() templates of this script; benign training prompts: "
        "the base model's greedy replies",
        "split": {
            "harmful_heldout": [r["prompt"] for r in harm_held],
            "harmful_train": len(harm_train),
            "benign_heldout": len(benign_held),
            "benign_train": len(benign_train),
            "sft_rows": {
                src: sum(json.loads(x)["source"] == src for x in (out / "sft.jsonl").read_text().splitlines())
                for src in ("template-refusal", "base-model-greedy")
            },
            "attacked": [r["prompt"] for r in attacked],
        },
        "refusal_rates": {
            role: {part: rate([is_refusal(r["reply"]) for r in rows]) for part, rows in parts.items()}
            for role, parts in replies.items()
        },
        "times": times,
    }
    for role, parts in replies.items():
        per_domain: dict[str, list[bool]] = defaultdict(list)
        for r in parts["benign_heldout"]:
            per_domain[r["domain"]].append(is_refusal(r["reply"]))
        summary["refusal_rates"][role]["benign_heldout_per_domain"] = {d: rate(f) for d, f in per_domain.items()}
    models = redteam["models"]
    summary["redteam"] = {}
    for role, name in (("base", a.model), ("aligned", str(aligned))):
        m = models[name]
        by_domain: dict[str, dict[str, int]] = defaultdict(lambda: {"n": 0, "before": 0, "after": 0})
        for r in m["rows"]:
            d = by_domain[r["domain"]]
            d["n"] += 1
            d["before"] += r["success_before"]
            d["after"] += r["success_after"]
        summary["redteam"][role] = {
            "model": name if role == "base" else str(aligned.relative_to(ROOT)),
            "asr_before": m["asr_before"],
            "asr_after": m["asr_after"],
            "attacked": m["attacked"],
            "search_s": round(m["seconds"], 1),
            "per_domain": dict(by_domain),
            "prompts": [
                {
                    k: r.get(k)
                    for k in (
                        "domain",
                        "prompt",
                        "attacked",
                        "suffix",
                        "init_loss",
                        "loss",
                        "steps",
                        "stopped",
                        "success_before",
                        "success_after",
                        "response_before",
                        "response_after",
                        "suffix_retokenizes_in_context",
                    )
                }  # fmt: skip
                for r in m["rows"]
            ],
        }
    summary["redteam_config"] = redteam["config"]
    results = ROOT / a.results
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(summary, indent=1) + "\n")
    brief = {
        role: {p: f"{v['refusals']}/{v['n']}" for p, v in rr.items() if "n" in v}
        for role, rr in summary["refusal_rates"].items()
    }
    asr = {
        role: f"{r['asr_before']['successes']}/{r['asr_before']['n']} -> {r['asr_after']['successes']}/"
        f"{r['asr_after']['n']}"
        for role, r in summary["redteam"].items()
    }
    print(json.dumps({"refusals": brief, "asr": asr, "times": times}))
    print(f"wrote {a.results}")


if __name__ == "__main__":
    main()
