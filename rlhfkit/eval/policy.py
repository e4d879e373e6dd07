"""Evaluating policies: sample held-out prompts, score with gold / a reward model, KL to the reference per sequence,
win rates against a baseline, and the run report that gathers every round.

`evaluate_round` is the pipeline's eval stage; `evaluate_policies` is `rlhfkit eval`; `write_run_report` builds
RUN/report.html and RUN/report.md from the stage records and artifacts.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlhfkit.config import DataConfig, RewardConfig, RewardSpec, SamplingConfig


def _prompt_rows(path: str | Path) -> list[Any]:
    from rlhfkit.data import load_examples

    return load_examples(str(path), "prompt")


@torch.no_grad()
def generate(
    model_path: str,
    examples: Sequence[Any],
    sampling: SamplingConfig,
    seed: int,
    reference: str | None = None,
    dtype: str = "float32",
) -> dict[str, Any]:
    """Sample one response per prompt; with `reference`, also KL(pi || ref) per sequence (k1 summed over tokens,
    on the policy's own samples, at the sampling temperature)."""
    from rlhfkit.data import ChatFormatter
    from rlhfkit.models import load_causal_lm, load_tokenizer
    from rlhfkit.trainers.loop import set_seed
    from rlhfkit.trainers.online import (
        disable_dropout,
        encode_prompts,
        make_engine,
        response_logits,
        rollout_forward,
        sampling_params,
    )

    set_seed(seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = load_tokenizer(model_path)
    model = load_causal_lm(model_path, dtype=dtype).to(device).eval()
    disable_dropout(model)
    d = DataConfig()
    prompts = encode_prompts(examples, ChatFormatter(tokenizer, d.max_length, d.max_prompt_length, d.truncation))
    engine = make_engine(model, tokenizer, sampling)
    params = sampling_params(sampling)
    ro = engine.generate([p.ids for p in prompts], params, 1).to(device)
    out: dict[str, Any] = {
        "messages": [p.messages for p in prompts],
        "texts": list(ro.texts),
        "lengths": ro.response_lengths.tolist(),
        "kl": [0.0] * len(prompts),
    }
    if reference is not None and str(Path(reference).resolve()) != str(Path(model_path).resolve()):
        micro = max(1, sampling.batch_size)
        t = params.logprob_temperature
        logp, _ = rollout_forward(lambda mb: (response_logits(model, mb), None), ro, t, micro)
        del model
        ref_model = load_causal_lm(reference, dtype=dtype).to(device).eval()
        ref, _ = rollout_forward(lambda mb: (response_logits(ref_model, mb), None), ro, t, micro)
        out["kl"] = ((logp - ref) * ro.response_mask).sum(-1).tolist()
    return out


def scorer(specs: Sequence[RewardSpec]) -> Callable[[Sequence[Any], Sequence[str]], list[float]]:
    """Build the reward sources once; returns score(prompts, responses) -> one float per response."""
    from rlhfkit.rewards import build_reward

    source = build_reward(RewardConfig(sources=list(specs)), device="cuda" if torch.cuda.is_available() else "cpu")
    return lambda prompts, responses: [float(x) for x in source(list(prompts), list(responses)).total.tolist()]


def model_scorer(rm_path: str) -> Callable[[Sequence[Any], Sequence[str]], list[float]]:
    return scorer([RewardSpec(kind="model", path=rm_path)])


def rm_quality(
    score: Callable[[Sequence[Any], Sequence[str]], list[float]], heldout: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """Reward-model accuracy, AUC, ECE and reliability bins on held-out preference rows."""
    from rlhfkit.eval.metrics import (
        calibration_curve_bins,
        expected_calibration_error,
        pairwise_accuracy,
        pairwise_auc,
    )

    rows = [r for r in heldout if not r.get("tie")]
    if not rows:
        return {}
    prompts = [r["prompt"] for r in rows]
    chosen = score(prompts, [r["chosen"] for r in rows])
    rejected = score(prompts, [r["rejected"] for r in rows])
    p = 1 / (1 + np.exp(-(np.array(chosen) - np.array(rejected))))  # Bradley-Terry P(chosen preferred)
    probs, labels = np.concatenate([p, 1 - p]), np.concatenate([np.ones_like(p), np.zeros_like(p)])
    bins = calibration_curve_bins(probs, labels)
    return {
        "pairs": len(rows),
        "accuracy": pairwise_accuracy(chosen, rejected),
        "auc": pairwise_auc(chosen, rejected),
        "ece": expected_calibration_error(probs, labels),
        "calibration": {
            "centers": bins.centers.tolist(),
            "accuracy": bins.accuracy.tolist(),
            "confidence": bins.confidence.tolist(),
            "counts": bins.counts.tolist(),
        },
    }


def _diversity(texts: Sequence[str]) -> dict[str, float]:
    from rlhfkit.eval.diversity import distinct_n

    return {"distinct_1": distinct_n(texts, 1), "distinct_2": distinct_n(texts, 2)}


def _win(policy: Sequence[float], baseline: Sequence[float], tie_margin: float) -> dict[str, Any]:
    from rlhfkit.eval.winrate import win_rate

    w = win_rate(policy, baseline, tie_margin=tie_margin)
    return {
        "wins": w.wins,
        "ties": w.ties,
        "losses": w.losses,
        "rate": w.rate,
        "ci_low": w.ci_low,
        "ci_high": w.ci_high,
    }


def evaluate_round(pl: Any, r: int, d: Path) -> dict[str, Any]:
    """The pipeline's eval stage: round 0 evaluates the baseline (SFT) policy, round r the policy after round r."""
    from rlhfkit.data import read_rows, write_jsonl
    from rlhfkit.pipeline import stage_seed

    cfg = pl.cfg
    examples = _prompt_rows(pl.p(0, "prompts", "eval.jsonl"))
    gen = generate(pl.policy(r), examples, cfg.eval.sampling, stage_seed(cfg.seed, 0, "eval"), pl.base_policy)
    messages, texts = gen["messages"], gen["texts"]
    has_gold = cfg.label.source == "simulated" or cfg.eval.judge == "gold"
    gold = scorer(cfg.label.gold)(messages, texts) if has_gold else None
    result: dict[str, Any] = {
        "round": r,
        "policy": "baseline" if r == 0 else f"round {r}",
        "prompts": len(texts),
        "kl": float(np.mean(gen["kl"])),
        "length": float(np.mean(gen["lengths"])),
        **_diversity(texts),
    }
    if gold is not None:
        result["gold"] = float(np.mean(gold))
    rows = [
        {"prompt": m, "response": t, "kl": k, "length": n} | ({"gold": g} if gold is not None else {})
        for m, t, k, n, g in zip(messages, texts, gen["kl"], gen["lengths"], gold or [None] * len(texts))
    ]
    if r > 0:
        rm_path = str(pl.p(r, "rm", "model"))
        has_rm = Path(rm_path).exists()
        baseline = [row for _, row in read_rows(pl.p(0, "eval", "responses.jsonl"))]
        base_texts = [b["response"] for b in baseline]
        if has_rm:
            rm = model_scorer(rm_path)  # loaded once for the policy, the baseline and the held-out labels
            proxy, base_proxy = rm(messages, texts), rm(messages, base_texts)
            result["proxy"], result["baseline_proxy"] = float(np.mean(proxy)), float(np.mean(base_proxy))
            for row, s in zip(rows, proxy):
                row["proxy"] = s
            heldout = [row for i in range(1, r + 1) for _, row in read_rows(pl.p(i, "label", "heldout.jsonl"))]
            result["reward_model"] = rm_quality(rm, heldout)
        judges = {"gold": (gold, [b.get("gold") for b in baseline])}
        if has_rm:
            judges["rm"] = (proxy, base_proxy)
        if cfg.eval.judge == "judge":
            judges["judge"] = _judge_scores(cfg, messages, texts, base_texts)
        score, base = judges.get(cfg.eval.judge) or judges["rm"]
        if score is not None and all(b is not None for b in base):
            result["win_rate"] = _win(score, base, cfg.eval.tie_margin) | {"judge": cfg.eval.judge}
        result["examples"] = [
            {"prompt": _text(m), "before": b, "after": t}
            | ({"gold_before": bl.get("gold"), "gold_after": g} if gold is not None else {})
            for m, b, t, g, bl in list(zip(messages, base_texts, texts, gold or [None] * len(texts), baseline))[
                : cfg.eval.examples
            ]
        ]
    if cfg.eval.safety and r == cfg.rounds:
        result["safety"] = _safety(pl.policy(r), cfg.eval.sampling)
    write_jsonl(d / "responses.jsonl", rows)
    (d / "eval.json").write_text(json.dumps(result, indent=2, default=str))
    return {k: v for k, v in result.items() if k not in ("examples",)}


def _judge_scores(cfg: Any, messages: list[Any], texts: list[str], base: list[str]) -> tuple[list[float], list[float]]:
    """An AI judge's debiased P(policy better) per prompt, as paired scores (p, 1 - p) for the win-rate code."""
    from rlhfkit.feedback.judge import Judge

    verdicts = Judge(cfg.label.judge).compare([_text(m) for m in messages], texts, base)
    p = [float(v.p_a) for v in verdicts]
    return p, [1 - x for x in p]


def _safety(model_path: str, sampling: SamplingConfig) -> dict[str, Any]:
    from rlhfkit.data.schemas import parse_prompt
    from rlhfkit.eval.safety import safety_eval

    def gen(prompts: list[str]) -> list[str]:
        return generate(model_path, [parse_prompt({"prompt": p}) for p in prompts], sampling, 0)["texts"]

    return safety_eval(gen)


def _text(messages: Any) -> str:
    if isinstance(messages, str):
        return messages
    return "\n".join(m.get("content", "") for m in messages if isinstance(m, dict))


# ----------------------------------------------------------------------------------------------------------------------
# the run report


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def report_data(run_dir: str | Path) -> dict[str, Any]:
    """Everything the report shows, from a run directory's records and artifacts."""
    from rlhfkit.eval.overopt import alarms, build_points
    from rlhfkit.eval.ratings import ratings_table
    from rlhfkit.pipeline import stage_records
    from rlhfkit.tracking import read_metrics

    run = Path(run_dir)
    recs = stage_records(run)
    data: dict[str, Any] = {"title": f"rlhfkit run {run.name}", "run_dir": str(run)}
    data["stages"] = [
        {
            "round": r["round"],
            "stage": r["stage"],
            "status": r["status"],
            "seconds": r.get("seconds"),
            "metrics": {k: v for k, v in (r.get("metrics") or {}).items() if _finite(v)},
        }
        for r in recs
    ]
    evals = {}
    for p in sorted(run.glob("round-*/eval/eval.json")):
        e = json.loads(p.read_text())
        evals[e["round"]] = e
    data["policies"] = [
        {
            "round": e["round"],
            "name": e["policy"],
            **{k: e[k] for k in ("gold", "proxy", "kl", "length", "distinct_1", "distinct_2") if k in e},
        }
        for e in evals.values()
    ]
    data["win_rates"] = [
        {"round": e["round"], "policy": e["policy"], "baseline": "baseline", **e["win_rate"]}
        for e in evals.values()
        if "win_rate" in e
    ]
    data["reward_model"] = []
    data["calibration"] = {}
    for e in evals.values():
        q = e.get("reward_model") or {}
        if q:
            rm_rec = next((r for r in recs if r["stage"] == "rm" and r["round"] == e["round"]), {})
            train_acc = ((rm_rec.get("metrics") or {}).get("eval") or {}).get("train_accuracy")
            data["reward_model"].append(
                {
                    "round": e["round"],
                    **{k: q[k] for k in ("accuracy", "auc", "ece", "pairs")},
                    "train_accuracy": train_acc,
                    "gap": train_acc - q["accuracy"] if _finite(train_acc) else None,
                }
            )
            data["calibration"][f"round {e['round']}"] = q["calibration"]
    last = max(evals) if evals else None
    if last is not None and evals[last].get("examples"):
        data["examples"] = evals[last]["examples"]
    if last is not None and evals[last].get("safety"):
        data["safety"] = {k: v for k, v in evals[last]["safety"].items() if _finite(v)}

    # training curves and the proxy-vs-gold curve from each round's optimizer log
    curves, eval_curves, overopt = {}, {}, []
    for p in sorted(run.glob("round-*/optimize/metrics.jsonl")):
        r = int(p.parent.parent.name.split("-")[1])
        rows = read_metrics(p)
        curves[f"round {r}"] = [
            {"step": x["step"], **{k[6:]: v for k, v in x.items() if k.startswith("train/") and _finite(v)}}
            for x in rows
            if any(k.startswith("train/") for k in x)
        ]
        ev = [
            {"step": x["step"], **{k[5:]: v for k, v in x.items() if k.startswith("eval/") and _finite(v)}}
            for x in rows
            if "eval/kl" in x
        ]
        eval_curves[f"round {r}"] = ev
        for x in ev:
            if "gold" in x and "score" in x:
                overopt.append(
                    {
                        "round": r,
                        "step": x["step"],
                        "sqrt_kl": math.sqrt(max(x["kl"], 0.0)),
                        "kl": x["kl"],
                        "proxy": x["score"],
                        "gold": x["gold"],
                        "length": x.get("response_length"),
                    }
                )
    data["training_curves"], data["eval_curves"], data["overopt"] = curves, eval_curves, overopt
    # one curve per round (each round starts from the previous policy); a curve of fewer than 4 held-out evaluations
    # is too short to tell a trend from sampling noise, so it raises no alarm
    per_round = {r: [x for x in overopt if x["round"] == r] for r in sorted({x["round"] for x in overopt})}
    data["alarms"] = [
        f"round {r}: {a}" for r, points in per_round.items() if len(points) >= 4 for a in alarms(build_points(points))
    ]
    policy_points = [
        {
            "step": e["round"],
            "kl": e["kl"],
            "proxy": e.get("proxy", float("nan")),
            "gold": e["gold"],
            "length": e["length"],
        }
        for e in sorted(evals.values(), key=lambda e: e["round"])
        if "gold" in e
    ]
    if len(policy_points) > 1:
        data["alarms"] += [f"across rounds: {a}" for a in alarms(policy_points)]

    # Elo / Bradley-Terry across checkpoints: every pair of policies compared on each held-out prompt by gold
    responses = {}
    for r in sorted(evals):
        path = run / f"round-{r}" / "eval" / "responses.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
        if rows and all("gold" in x for x in rows):
            responses[evals[r]["policy"]] = [x["gold"] for x in rows]
    names = list(responses)
    comparisons = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            for ga, gb in zip(responses[a], responses[b]):
                comparisons.append((a, b, 1.0 if ga > gb else 0.0 if ga < gb else 0.5))
    if len(names) > 1:
        data["ratings"] = ratings_table(comparisons)
    data["summary"] = _headlines(data, evals)
    return data


def _headlines(data: dict[str, Any], evals: dict[int, dict[str, Any]]) -> list[str]:
    out = []
    if 0 in evals and len(evals) > 1:
        first, last = evals[0], evals[max(evals)]
        if "gold" in first and "gold" in last:
            out.append(
                f"Gold score {first['gold']:.3f} -> {last['gold']:.3f} after {max(evals)} round(s), "
                f"at KL {last['kl']:.2f} nats per response to the reference."
            )
        if "win_rate" in last:
            w = last["win_rate"]
            out.append(
                f"Win rate of the final policy against the baseline ({w.get('judge')}): {w['rate']:.1%} "
                f"(95% CI {w['ci_low']:.1%}-{w['ci_high']:.1%})."
            )
        out.append(f"Response length {first['length']:.1f} -> {last['length']:.1f} tokens.")
    out += [f"ALARM: {a}" for a in data.get("alarms", [])]
    return out


def write_run_report(run_dir: str | Path) -> tuple[Path, Path]:
    from rlhfkit.eval.report import write_report

    return write_report(report_data(run_dir), run_dir)
