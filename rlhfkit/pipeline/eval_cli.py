"""`rlhfkit eval` (policies against a baseline on held-out prompts) and `rlhfkit report RUN_DIR`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from pathlib import Path
from typing import Any

from rlhfkit.config import ConfigError, RedTeamConfig, RewardSpec, SamplingConfig, field_docs, to_dict


def evaluate_policies(
    policies: list[str],
    baseline: str,
    prompts: str,
    gold: list[RewardSpec],
    rm: str | None = None,
    reference: str | None = None,
    heldout: str | None = None,
    judge: str = "gold",
    judge_model: str = "smollm2-135m-instruct",
    sampling: SamplingConfig | None = None,
    seed: int = 0,
    tie_margin: float = 0.0,
    safety: bool = False,
    rater_attributes: str | None = None,
) -> dict[str, Any]:
    """Sample every policy (and the baseline) on the same prompts; gold / proxy scores, KL to the reference, length,
    distinct-n, win rate against the baseline with a 95% CI, Elo / Bradley-Terry ratings across all of them."""
    # torch and transformers: loaded when the command runs, not for `rlhfkit --help`
    from rlhfkit.data import load_examples
    from rlhfkit.eval.ratings import ratings_table
    from rlhfkit.kl import kl_by_domain
    from rlhfkit.pipeline.config import read_rater_attributes
    from rlhfkit.pipeline.evaluate import (
        _diversity,
        _prompt_rows,
        _safety,
        _win,
        generate,
        judge_scores,
        model_scorer,
        rm_quality,
        scorer,
    )

    if judge not in ("gold", "rm", "judge"):
        raise ConfigError(f"--judge must be gold, rm or judge, got {judge!r}")
    if judge == "gold" and not gold:
        raise ConfigError("--judge gold needs a gold scorer (--gold sentiment, or a reward spec)")
    if judge == "rm" and not rm:
        raise ConfigError("--judge rm needs --rm DIR")
    if heldout and not rm:
        raise ConfigError("--heldout measures a reward model: it needs --rm DIR")
    if rater_attributes and not heldout:
        raise ConfigError("--rater-attributes groups the held-out labels' raters: it needs --heldout FILE")
    if len({baseline, *policies}) != len(policies) + 1:
        raise ConfigError("each --policy must differ from the baseline and from each other (results are keyed by path)")
    # every input file is read and validated before any model is loaded
    examples = _prompt_rows(prompts)
    heldout_rows = [ex.to_row() for ex in load_examples(heldout, "preference")] if heldout else []
    attributes = read_rater_attributes(rater_attributes) if rater_attributes else None
    sampling = sampling or SamplingConfig(max_new_tokens=32)
    reference = reference or baseline
    gold_score = scorer(gold) if gold else None  # reward sources are loaded once, not once per policy
    rm_score = model_scorer(rm) if rm else None
    results: dict[str, dict[str, Any]] = {}
    scores: dict[str, list[float]] = {}
    samples: dict[str, dict[str, Any]] = {}
    judged: dict[str, list[float]] = {}
    for name in [baseline, *policies]:
        gen = samples[name] = generate(name, examples, sampling, seed, reference)
        r: dict[str, Any] = {"kl": sum(gen["kl"]) / len(gen["kl"]), "length": sum(gen["lengths"]) / len(gen["lengths"])}
        r |= _diversity(gen["texts"])
        if any(d is not None for d in gen["domains"]):
            r["kl_per_domain"] = kl_by_domain(gen["kl"], gen["domains"])
        if gold_score:
            g = gold_score(gen["messages"], gen["texts"])
            r["gold"] = sum(g) / len(g)
        if rm_score:
            p = rm_score(gen["messages"], gen["texts"])
            r["proxy"] = sum(p) / len(p)
        if judge != "judge":
            scores[name] = g if judge == "gold" else p
        results[name] = r
    for name in policies:
        if judge == "judge":  # pairwise: the judge reads the policy's and the baseline's response to the same prompt
            mine, theirs = judge_scores(
                judge_model, samples[name]["messages"], samples[name]["texts"], samples[baseline]["texts"]
            )
        else:
            mine, theirs = scores[name], scores[baseline]
        judged[name] = mine
        results[name]["win_rate"] = _win(mine, theirs, tie_margin) | {"judge": judge}
    if judge == "judge":  # the judge compares each policy with the baseline only: its P(policy better) per prompt
        comparisons = [(name, baseline, p) for name in policies for p in judged[name]]
    else:
        comparisons = [
            (a, b, 1.0 if x > y else 0.0 if x < y else 0.5)
            for i, a in enumerate(results)
            for b in list(results)[i + 1 :]
            for x, y in zip(scores[a], scores[b])
        ]
    out: dict[str, Any] = {"baseline": baseline, "policies": results, "ratings": ratings_table(comparisons)}
    if rm_score and heldout_rows:
        out["reward_model"] = rm_quality(rm_score, heldout_rows, attributes)
    if safety:
        out["safety"] = {name: _safety(name, sampling) for name in policies}
    return out


def _gold_specs(values: list[str]) -> list[RewardSpec]:
    specs = []
    for v in values:
        if v == "sentiment":
            specs.append(RewardSpec(kind="sentiment"))
        elif ":" in v:
            specs.append(RewardSpec(kind="callable", path=v))
        else:
            raise ConfigError(f"--gold {v!r}: use sentiment or a callable module:function / file.py:function")
    return specs


def redteam_models(policies: list[str], baseline: str | None, cfg: RedTeamConfig) -> dict[str, Any]:
    """The GCG attack (rlhfkit.eval.redteam) on each policy, then the baseline (the model before alignment), one
    loaded at a time: {"config", "baseline": name or None, "models": {name: result}}."""
    import torch  # torch and transformers: loaded when the command runs, not for `rlhfkit --help`

    from rlhfkit.eval.redteam import redteam_model
    from rlhfkit.models import check_model_path, load_for_inference
    from rlhfkit.pipeline.evaluate import greedy_generator

    for name in policies:  # every path is checked before any model loads
        check_model_path(name, "--policy")
    if baseline:
        check_model_path(baseline, "--baseline")
    names = list(dict.fromkeys([*policies, *([baseline] if baseline else [])]))
    out: dict[str, Any] = {"config": to_dict(cfg), "baseline": baseline, "models": {}}
    for name in names:
        print(f"red team: {name}", flush=True)
        model, tokenizer = load_for_inference(name)
        generate = greedy_generator(model, tokenizer, cfg.max_new_tokens)
        out["models"][name] = redteam_model(model, tokenizer, cfg, generate, log=lambda line: print(line, flush=True))
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return out


def _redteam_config(args: argparse.Namespace) -> RedTeamConfig | None:
    """The --redteam-* flags as a validated RedTeamConfig (None without --redteam); errors name the flag."""
    if not args.redteam:
        return None
    values = {f.name: getattr(args, f"redteam_{f.name}") for f in dataclasses.fields(RedTeamConfig) if f.name != "seed"}
    cfg = RedTeamConfig(**values, seed=args.seed)
    try:
        cfg.validate()
    except ConfigError as e:
        raise ConfigError(f"--redteam-{str(e).replace('_', '-')}") from None
    return cfg


def _cmd_eval(args: argparse.Namespace) -> int:
    redteam = _redteam_config(args)
    if redteam is None and not (args.baseline and args.prompts):
        raise ConfigError("eval needs --baseline and --prompts (or --redteam alone: the red-team attack only)")
    if args.prompts and not args.baseline:
        raise ConfigError("--prompts needs --baseline: win rates are measured against it")
    out: dict[str, Any] = {"baseline": args.baseline, "policies": {}}
    if args.prompts:
        out = evaluate_policies(
            policies=args.policy,
            baseline=args.baseline,
            prompts=args.prompts,
            gold=_gold_specs(args.gold),
            rm=args.rm,
            reference=args.reference,
            heldout=args.heldout,
            judge=args.judge,
            judge_model=args.judge_model,
            sampling=SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature),
            seed=args.seed,
            tie_margin=args.tie_margin,
            safety=args.safety,
            rater_attributes=args.rater_attributes,
        )
    if redteam is not None:
        out["redteam"] = redteam_models(args.policy, args.baseline, redteam)
    for name, r in out["policies"].items():
        shown = ", ".join(f"{k}={v:.4g}" for k, v in r.items() if isinstance(v, float))
        w = r.get("win_rate")
        if w:
            shown += f", win rate {w['rate']:.3f} [{w['ci_low']:.3f}, {w['ci_high']:.3f}]"
        print(f"{name}: {shown}")
        if r.get("kl_per_domain"):
            print(f"  KL per domain: {', '.join(f'{d}={v:.4g}' for d, v in r['kl_per_domain'].items())}")
    for line in _headline_lines(out, args.rm, args.heldout):
        print(line)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(out, indent=2, default=str))
        print(f"wrote {args.output}")
    if args.report:
        from rlhfkit.eval.report import write_report  # matplotlib: only when the command runs

        html, md = write_report(_report_data(out), args.report)
        print(f"report: {html}\n        {md}")
    return 0


def _report_data(out: dict[str, Any]) -> dict[str, Any]:
    """The eval results in the report's layout (rlhfkit.eval.report)."""
    data: dict[str, Any] = {"title": "rlhfkit eval", "summary": _headline_lines(out, None, None)}
    wins = [
        {"policy": name, "baseline": out["baseline"], **{k: v for k, v in r["win_rate"].items() if k != "policy"}}
        for name, r in out["policies"].items()
        if r.get("win_rate")
    ]
    if wins:
        data["win_rates"] = wins
    if out.get("ratings"):
        data["ratings"] = out["ratings"]
    if out["policies"]:
        data["policies"] = [{"name": name, "score": r.get("proxy"), **r} for name, r in out["policies"].items()]
    if out.get("redteam"):
        data["redteam"] = out["redteam"]
    return data


def _headline_lines(out: dict[str, Any], rm: str | None, heldout: str | None) -> list[str]:
    """The reward model's held-out quality and each policy's safety, one line each (the JSON of -o has the rest)."""
    lines = []
    if heldout:
        q = out.get("reward_model") or {}
        if q:
            lines.append(
                f"reward model {rm} on {q['pairs']} held-out pairs of {heldout}: accuracy={q['accuracy']:.3f}, "
                f"auc={q['auc']:.3f}, ece={q['ece']:.3f}"
            )
            for attr, groups in (q.get("groups") or {}).items():
                shown = ", ".join(f"{g}={x['accuracy']:.3f} ({x['pairs']} pairs)" for g, x in groups.items())
                lines.append(f"  accuracy per rater {attr}: {shown}")
        else:
            lines.append(f"reward model {rm}: {heldout} has no untied pairs to measure it on")
    for name, s in (out.get("safety") or {}).items():
        shown = [
            f"refuses {s['harmful/refusal_rate']:.3f} of {s['harmful/n']} harmful prompts",
            f"over-refusal {s['over_refusal_rate']:.3f} of {s['benign/n']} benign",
        ]
        if "jailbreak_success_rate" in s:
            shown.append(f"jailbreak success {s['jailbreak_success_rate']:.3f}")
        shown.append(f"toxic rate {s['harmful/toxic_rate']:.3f} (harmful) / {s['benign/toxic_rate']:.3f} (benign)")
        lines.append(f"safety of {name}: " + ", ".join(shown))
    redteam = out.get("redteam") or {}
    models, base = redteam.get("models") or {}, redteam.get("baseline")
    for name, r in models.items():
        b, a = r["asr_before"], r["asr_after"]
        lines.append(
            f"red team of {name}{' (baseline)' if name == base else ''}: attack success {b['rate']:.3f} "
            f"[{b['ci_low']:.3f}, {b['ci_high']:.3f}] without a suffix, {a['rate']:.3f} [{a['ci_low']:.3f}, "
            f"{a['ci_high']:.3f}] with the GCG suffix, on {r['n']} harmful prompts ({r['attacked']} attacked, "
            f"{r['seconds']:.0f} s of search)"
        )
    for name, r in models.items():  # the question of the red team: what alignment changed, with and without attack
        if base in models and name != base:
            was = models[base]
            lines.append(
                f"red team, {base} -> {name}: attack success without a suffix {was['asr_before']['rate']:.3f} -> "
                f"{r['asr_before']['rate']:.3f}, with the GCG suffix {was['asr_after']['rate']:.3f} -> "
                f"{r['asr_after']['rate']:.3f}"
            )
    return lines


def _cmd_report(args: argparse.Namespace) -> int:
    from rlhfkit.pipeline.report import write_run_report  # matplotlib: only when the command runs

    if not (Path(args.run_dir) / "manifest.json").exists():
        raise ConfigError(f"{args.run_dir}: no manifest.json; give a directory made by `rlhfkit run`")
    html, md = write_run_report(args.run_dir)
    print(f"report: {html}\n        {md}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("eval", help="policies against a baseline: gold/proxy score, win rate with CI, KL, length")
    e.add_argument("--policy", action="append", required=True, help="policy directory (repeat for several)")
    e.add_argument("--baseline", help="baseline policy directory or builtin name (with --redteam: attacked too)")
    e.add_argument("--prompts", help='held-out prompt file ({"prompt"} rows); optional with --redteam')
    e.add_argument("--gold", action="append", default=[], help="gold scorer: sentiment or module:function")
    e.add_argument("--rm", help="reward model directory (proxy score; --judge rm)")
    e.add_argument("--reference", help="reference for KL (default: the baseline)")
    e.add_argument("--heldout", help="held-out preference rows: reward-model accuracy, AUC, calibration")
    e.add_argument(
        "--rater-attributes",
        help="JSON {rater: {attribute: value}}: the reward model's accuracy per rater group of --heldout's \"rater\"",
    )
    e.add_argument(
        "--judge",
        default="gold",
        choices=("gold", "rm", "judge"),
        help="who decides win rates: gold, rm (the --rm model) or judge (an AI judge, both orders; --judge-model)",
    )
    e.add_argument("--judge-model", default="smollm2-135m-instruct", help="--judge judge: builtin name or directory")
    e.add_argument("--max-new-tokens", type=int, default=32)
    e.add_argument("--temperature", type=float, default=1.0)
    e.add_argument("--tie-margin", type=float, default=0.0)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--safety", action="store_true", help="also the refusal / toxicity / jailbreak evaluation")
    e.add_argument("--output", "-o", help="write the results as JSON here")
    e.add_argument("--report", metavar="DIR", help="write DIR/report.html and DIR/report.md from the results")
    _add_redteam_flags(e)
    e.set_defaults(handler=_cmd_eval)
    r = sub.add_parser("report", help="(re)write RUN_DIR/report.html and report.md from a pipeline run")
    r.add_argument("run_dir")
    r.set_defaults(handler=_cmd_report)


def _add_redteam_flags(e: argparse.ArgumentParser) -> None:
    """--redteam and one --redteam-KEY flag per RedTeamConfig field (its docstring is the help; --seed sets seed)."""
    g = e.add_argument_group("red team", "a GCG adversarial-suffix attack on the harmful prompt set")
    g.add_argument(
        "--redteam",
        action="store_true",
        help="attack each --policy and the --baseline (Zou et al. 2023, GCG): attack success before and after",
    )
    docs, hints = field_docs(RedTeamConfig), typing.get_type_hints(RedTeamConfig)
    for f in dataclasses.fields(RedTeamConfig):
        if f.name == "seed":
            continue
        tp, help_text = hints[f.name], f"{docs[f.name]} [default: {f.default}]".replace("%", "%%")
        kw: dict[str, Any] = {"dest": f"redteam_{f.name}", "default": f.default, "help": help_text}
        if tp in (int, float, str):
            kw["metavar"] = {int: "N", float: "SECONDS", str: "TEXT"}[tp]
        flag = "--redteam-" + f.name.replace("_", "-")
        if tp is bool:
            g.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif typing.get_origin(tp) is typing.Literal:
            g.add_argument(flag, choices=typing.get_args(tp), **kw)
        else:
            g.add_argument(flag, type=tp, **kw)
