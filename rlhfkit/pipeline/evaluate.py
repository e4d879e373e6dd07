"""Evaluating policies: sample held-out prompts, score with gold / a reward model, KL to the reference per sequence,
win rates against a baseline. `evaluate_round` is the pipeline's eval stage; `rlhfkit eval` (eval_cli.py) uses the
same pieces."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlhfkit.config import DataConfig, RewardConfig, RewardSpec, SamplingConfig
from rlhfkit.data import ChatFormatter, load_examples, read_rows, write_jsonl
from rlhfkit.data.schemas import parse_prompt
from rlhfkit.eval.diversity import distinct_n
from rlhfkit.eval.metrics import (
    calibration_curve_bins,
    expected_calibration_error,
    pairwise_accuracy,
    pairwise_auc,
    pairwise_probabilities,
    per_group_accuracy,
)
from rlhfkit.eval.safety import safety_eval
from rlhfkit.eval.winrate import win_rate
from rlhfkit.feedback.judge import Judge
from rlhfkit.kl import kl_by_domain
from rlhfkit.models import default_device, load_for_inference
from rlhfkit.pipeline.config import PipelineConfig
from rlhfkit.pipeline.layout import RunLayout
from rlhfkit.pipeline.runner import stage_seed
from rlhfkit.rewards import build_reward
from rlhfkit.rollout import encode_prompts, make_engine, sample_with_kl, sampling_params
from rlhfkit.seeding import set_seed


def _prompt_rows(path: str | Path) -> list[Any]:
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
    on the policy's own samples, at the sampling temperature). The reference is loaded only while it is used."""
    set_seed(seed)
    model, tokenizer = load_for_inference(model_path, dtype)
    d = DataConfig()
    prompts = encode_prompts(examples, ChatFormatter(tokenizer, d.max_length, d.prompt_length, d.truncation))
    same = reference is None or str(Path(reference).resolve()) == str(Path(model_path).resolve())

    @contextlib.contextmanager
    def load_reference() -> Iterator[torch.nn.Module]:
        ref_model, _ = load_for_inference(str(reference), dtype, next(model.parameters()).device)
        try:
            yield ref_model
        finally:
            del ref_model

    engine = make_engine(model, tokenizer, sampling)
    micro = max(1, sampling.batch_size)
    ro, kl = sample_with_kl(
        engine, [p.ids for p in prompts], sampling_params(sampling), None if same else load_reference, micro
    )
    return {
        "messages": [p.messages for p in prompts],
        "domains": [p.domain for p in prompts],
        "texts": list(ro.texts),
        "lengths": ro.response_lengths.tolist(),
        "kl": kl.tolist() if kl is not None else [0.0] * len(prompts),
    }


def scorer(specs: Sequence[RewardSpec]) -> Callable[[Sequence[Any], Sequence[str]], list[float]]:
    """Build the reward sources once; returns score(prompts, responses) -> one float per response."""
    source = build_reward(RewardConfig(sources=list(specs)), device=str(default_device()))
    return lambda prompts, responses: [float(x) for x in source(list(prompts), list(responses)).total.tolist()]


def model_scorer(rm_path: str) -> Callable[[Sequence[Any], Sequence[str]], list[float]]:
    return scorer([RewardSpec(kind="model", path=rm_path)])


def rm_quality(
    score: Callable[[Sequence[Any], Sequence[str]], list[float]],
    heldout: Sequence[dict[str, Any]],
    attributes: Mapping[str, Mapping[str, str]] | None = None,
) -> dict[str, Any]:
    """Reward-model accuracy, AUC, ECE and reliability bins on held-out preference rows (Bradley-Terry probabilities:
    a reward source does not say which tie model it was trained with). With rater ``attributes`` ({rater: {attribute:
    value}}), "groups" holds the accuracy on each rater group's labels (rows' "rater" field): {attribute: {value:
    {"accuracy", "pairs", "raters"}}}; labels of raters without the attribute (e.g. "adjudicated") are left out."""
    rows = [r for r in heldout if not r.get("tie")]
    if not rows:
        return {}
    chosen, rejected = _score_pairs(score, rows)
    probs, labels = pairwise_probabilities(chosen, rejected)
    bins = calibration_curve_bins(probs, labels)
    groups: dict[str, Any] = {}
    for attr in sorted({a for x in (attributes or {}).values() for a in x}):
        value = {r: x[attr] for r, x in (attributes or {}).items() if attr in x}
        idx = [i for i, r in enumerate(rows) if r.get("rater") in value]
        if idx:
            tags = [value[rows[i]["rater"]] for i in idx]
            acc = per_group_accuracy([chosen[i] for i in idx], [rejected[i] for i in idx], tags)
            groups[attr] = {
                g: {"accuracy": a, "pairs": n, "raters": len({r for r, v in value.items() if v == g})}
                for g, (a, n) in acc.items()
            }
    return ({"groups": groups} if groups else {}) | {
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


def _score_pairs(
    score: Callable[[Sequence[Any], Sequence[str]], list[float]], rows: Sequence[dict[str, Any]]
) -> tuple[list[float], list[float]]:
    """(chosen scores, rejected scores) of preference rows, each distinct (prompt, response) scored once: the held-out
    labels of k responses per prompt hold up to k(k-1) rows per rater over only k texts."""
    index: dict[tuple[str, str], int] = {}
    prompts: list[Any] = []
    responses: list[str] = []
    slots: list[tuple[int, int]] = []
    for r in rows:
        key = json.dumps(r["prompt"], sort_keys=True)
        pair = []
        for text in (r["chosen"], r["rejected"]):
            at = index.setdefault((key, text if isinstance(text, str) else json.dumps(text)), len(responses))
            if at == len(responses):
                prompts.append(r["prompt"])
                responses.append(text)
            pair.append(at)
        slots.append((pair[0], pair[1]))
    scores = score(prompts, responses) if responses else []
    return [scores[c] for c, _ in slots], [scores[j] for _, j in slots]


def _diversity(texts: Sequence[str]) -> dict[str, float]:
    return {"distinct_1": distinct_n(texts, 1), "distinct_2": distinct_n(texts, 2)}


def _win(policy: Sequence[float], baseline: Sequence[float], tie_margin: float) -> dict[str, Any]:
    w = win_rate(policy, baseline, tie_margin=tie_margin)
    return {
        "wins": w.wins,
        "ties": w.ties,
        "losses": w.losses,
        "rate": w.rate,
        "ci_low": w.ci_low,
        "ci_high": w.ci_high,
    }


def evaluate_round(
    cfg: PipelineConfig,
    layout: RunLayout,
    r: int,
    d: Path,
    policy: str,
    base_policy: str,
    attributes: Mapping[str, Mapping[str, str]] | None = None,
) -> dict[str, Any]:
    """The pipeline's eval stage: round 0 evaluates the baseline (SFT) policy, round r the policy after round r.
    ``attributes`` ({rater: {attribute: value}}) adds the reward model's held-out accuracy per rater group."""
    examples = _prompt_rows(layout.prompts("eval"))
    gen = generate(policy, examples, cfg.eval.sampling, stage_seed(cfg.seed, 0, "eval"), base_policy)
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
    domains = gen["domains"]
    if any(d is not None for d in domains):  # prompts tagged with a domain: KL to the reference per domain
        result["kl_per_domain"] = kl_by_domain(gen["kl"], domains)
    if gold is not None:
        result["gold"] = float(np.mean(gold))
    rows = [
        {"prompt": m, "response": t, "kl": k, "length": n}
        | ({"gold": g} if gold is not None else {})
        | ({"domain": dom} if dom is not None else {})
        for m, t, k, n, g, dom in zip(messages, texts, gen["kl"], gen["lengths"], gold or [None] * len(texts), domains)
    ]
    if r > 0:
        rm_path = str(layout.model(r, "rm"))
        has_rm = Path(rm_path).exists()
        baseline = [row for _, row in read_rows(layout.eval_responses(0))]
        base_texts = [b["response"] for b in baseline]
        if has_rm:
            rm = model_scorer(rm_path)  # loaded once for the policy, the baseline and the held-out labels
            proxy, base_proxy = rm(messages, texts), rm(messages, base_texts)
            result["proxy"], result["baseline_proxy"] = float(np.mean(proxy)), float(np.mean(base_proxy))
            for row, s in zip(rows, proxy):
                row["proxy"] = s
            heldout = [row for i in range(1, r + 1) for _, row in read_rows(layout.heldout(i))]
            result["reward_model"] = rm_quality(rm, heldout, attributes)
        judges = {"gold": (gold, [b.get("gold") for b in baseline])}
        if has_rm:
            judges["rm"] = (proxy, base_proxy)
        if cfg.eval.judge == "judge":
            judges["judge"] = judge_scores(cfg.label.judge, messages, texts, base_texts)
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
        result["safety"] = _safety(policy, cfg.eval.sampling)
    write_jsonl(d / "responses.jsonl", rows)
    (d / "eval.json").write_text(json.dumps(result, indent=2, default=str))
    return {k: v for k, v in result.items() if k not in ("examples",)}


def greedy_generator(
    model: torch.nn.Module, tokenizer: Any, max_new_tokens: int
) -> Callable[[list[list[int]]], list[str]]:
    """Prompt token ids -> greedy responses of at most max_new_tokens (the red team's judge of success)."""
    s = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0, batch_size=16, backend="hf")
    engine = make_engine(model, tokenizer, s)

    def generate(prompts: list[list[int]]) -> list[str]:
        return list(engine.generate(prompts, sampling_params(s)).texts)

    return generate


def judge_scores(judge: str, messages: list[Any], texts: list[str], base: list[str]) -> tuple[list[float], list[float]]:
    """An AI judge's (builtin name or directory) debiased P(policy better) per prompt, as paired scores (p, 1 - p) for
    the win-rate code."""
    verdicts = Judge(judge).compare([_text(m) for m in messages], texts, base)
    p = [float(v.p_a) for v in verdicts]
    return p, [1 - x for x in p]


def _safety(model_path: str, sampling: SamplingConfig) -> dict[str, Any]:
    def gen(prompts: list[str]) -> list[str]:
        return generate(model_path, [parse_prompt({"prompt": p}) for p in prompts], sampling, 0)["texts"]

    return safety_eval(gen)


def _text(messages: Any) -> str:
    if isinstance(messages, str):
        return messages
    return "\n".join(m.get("content", "") for m in messages if isinstance(m, dict))
