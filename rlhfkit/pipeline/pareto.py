"""`rlhfkit pareto`: sweep the weight vector of a preference-conditioned policy on held-out prompts and report each
objective's mean per weight vector, the Pareto front and a plot.

The run directory of an online trainer trained with `preference.objectives` holds everything needed: config.yaml
(the objectives, the tag format, the reward sources, the sampling and data settings) and model/. The base model is
swept too, with the same tags, so the plot shows what training added (an untrained model ignores the tag: a flat
front).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from rlhfkit.commands import COMMANDS
from rlhfkit.config import ConfigError, RLConfig, SamplingConfig, from_dict


def load_run_config(run_dir: str | Path) -> RLConfig:
    """The RL config a run directory was trained with (its config.yaml), checked to use a preference vector."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{run_dir}: no config.yaml; give the output directory of an online run (rlhfkit rloo ...)")
    tree = yaml.safe_load(path.read_text()) or {}
    command = tree.pop("command", None)
    if command not in COMMANDS or not COMMANDS[command].online:
        raise ConfigError(f"{path}: command {command!r} is not an online trainer; `rlhfkit pareto` needs one")
    cfg = from_dict(COMMANDS[command].config, tree, where=str(path))
    if not cfg.preference.objectives:
        raise ConfigError(
            f"{path}: preference.objectives is empty; the policy was not trained with a preference vector"
        )
    return cfg


def parse_weights(values: Sequence[str], k: int) -> list[tuple[float, ...]]:
    """--weights "0.7,0.3" values -> vectors of k non-negative numbers (kept as given: they are what the tag shows)."""
    out = []
    for v in values:
        try:
            w = tuple(float(x) for x in v.split(","))
        except ValueError:
            raise ConfigError(f"--weights {v!r}: give {k} comma-separated numbers, e.g. 0.7,0.3") from None
        if len(w) != k or not all(math.isfinite(x) and x >= 0 for x in w) or sum(w) <= 0:
            raise ConfigError(f"--weights {v!r}: give {k} non-negative numbers with a positive sum")
        out.append(w)
    return out


def sweep(
    policies: dict[str, str],
    cfg: RLConfig,
    prompts_file: str,
    weight_vectors: Sequence[Sequence[float]],
    sampling: SamplingConfig,
    samples: int = 1,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """For every policy (label -> model) and weight vector: `samples` responses per prompt under that vector's tag;
    each objective's mean and standard error, the scalarized reward w . r, the mean length in tokens. Every vector
    is sampled with the same seed (common random numbers), so differences come from the tag, not the draw."""
    # loaded when the command runs, not for `rlhfkit --help`
    from rlhfkit.data import ChatFormatter, load_examples
    from rlhfkit.models import load_for_inference
    from rlhfkit.rewards import build_reward
    from rlhfkit.rewards.preference import PreferenceConditioner, check_objectives, objective_scores
    from rlhfkit.rollout import encode_prompts, make_engine, sampling_params
    from rlhfkit.seeding import set_seed

    examples = load_examples(prompts_file, "prompt")  # validated before any model loads
    reward = build_reward(replace(cfg.reward, normalize=False, clip=None), dtype=cfg.model.dtype)
    rows: list[dict[str, Any]] = []
    for label, path in policies.items():
        model, tokenizer = load_for_inference(path, cfg.model.dtype)
        fmt = ChatFormatter(tokenizer, cfg.data.max_length, cfg.data.prompt_length, cfg.data.truncation)
        conditioner = PreferenceConditioner(cfg.preference, fmt)
        check_objectives(reward, conditioner.objectives)
        prompts = encode_prompts(examples, fmt)
        engine = make_engine(model, tokenizer, sampling)
        for w in weight_vectors:
            set_seed(seed)
            tagged, weights = conditioner.prepare(prompts, weights=w)
            ro = engine.generate([p.ids for p in tagged], sampling_params(sampling), samples)
            scored = reward([p.messages for p in prompts for _ in range(samples)], ro.texts)
            values = objective_scores(scored, conditioner.objectives)  # (P * samples, K)
            shown = weights[0]  # (K,) as the tag shows them (snapped to decimals or levels): what w . r uses
            row: dict[str, Any] = {"policy": label, "weights": [round(float(x), 6) for x in shown]}
            for k, o in enumerate(conditioner.objectives):
                col = values[:, k]
                row[o] = float(col.mean())
                row[f"{o}_se"] = float(col.std() / math.sqrt(len(col))) if len(col) > 1 else 0.0
            row["scalarized"] = float((values * shown).sum(-1).mean())
            row["length"] = float(ro.response_lengths.float().mean())
            row["example"] = ro.texts[0]  # the first prompt's first response: one opening read across the vectors
            rows.append(row)
        del model, engine
    return rows


def pareto_data(rows: list[dict[str, Any]], objectives: Sequence[str], title: str) -> dict[str, Any]:
    """Report data (eval/report.py's "pareto" section): rows marked on_front per policy, and the 2-D hypervolume."""
    from rlhfkit.eval.pareto import hypervolume_2d, pareto_mask

    by_policy: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_policy.setdefault(r["policy"], []).append(r)
    summary = []
    for policy, rs in by_policy.items():
        points = [[r[o] for o in objectives] for r in rs]
        for r, on in zip(rs, pareto_mask(points)):
            r["on_front"] = bool(on)
        spread = {o: max(p[k] for p in points) - min(p[k] for p in points) for k, o in enumerate(objectives)}
        line = (
            f"{policy}: {sum(r['on_front'] for r in rs)} of {len(rs)} weight vectors on its front; spread "
            + ", ".join(f"{o} {s:.3f}" for o, s in spread.items())
        )
        if len(objectives) == 2:
            all_points = [[r[o] for o in objectives] for r in rows]
            ref = [min(p[k] for p in all_points) for k in range(2)]  # the worst of every policy: a shared reference
            line += f"; hypervolume above the shared worst point {hypervolume_2d(points, ref):.4f}"
        summary.append(line)
    return {"title": title, "summary": summary, "pareto": rows, "pareto_objectives": list(objectives)}


def _cmd_pareto(args: argparse.Namespace) -> int:
    from rlhfkit.eval.pareto import weight_grid
    from rlhfkit.eval.report import pareto_png, write_report

    cfg = load_run_config(args.run)
    objectives = [o.strip() for o in cfg.preference.objectives]
    weights = parse_weights(args.weights, len(objectives)) if args.weights else weight_grid(len(objectives), args.steps)
    model_dir = Path(args.run) / "model"
    if not (model_dir / "config.json").is_file():
        raise ConfigError(f"{args.run}: no model/ (the run has not finished)")
    policies = {"trained": str(model_dir)}
    for entry in args.policy:  # more models read with the run's tags, e.g. a preference-conditioned warm start
        label, sep, path = entry.partition("=")
        if (
            not sep
            or not label
            or label in ("base", "trained", *policies)
            or not (Path(path) / "config.json").is_file()
        ):
            raise ConfigError(
                f"--policy {entry!r}: give LABEL=MODEL_DIR with a new label (not base / trained) and a model directory"
            )
        policies = {label: path, **policies}
    if not args.no_baseline:
        policies = {"base": args.baseline or cfg.model.name_or_path, **policies}
    sampling = replace(cfg.sampling, max_new_tokens=args.max_new_tokens or cfg.sampling.max_new_tokens)
    if args.temperature is not None:
        sampling = replace(sampling, temperature=args.temperature)
    rows = sweep(policies, cfg, args.prompts, weights, sampling, args.samples, args.seed)
    data = pareto_data(rows, objectives, f"Pareto front: {args.run}")
    out = Path(args.output or Path(args.run) / "pareto")
    out.mkdir(parents=True, exist_ok=True)
    (out / "pareto.json").write_text(json.dumps(data, indent=2) + "\n")
    html, md = write_report(data, out)
    png = pareto_png(rows, objectives)
    if png:
        (out / "pareto.png").write_bytes(png)
    for r in rows:
        shown = ", ".join(f"{o}={r[o]:.3f}±{r[o + '_se']:.3f}" for o in objectives)
        w = ",".join(f"{x:g}" for x in r["weights"])
        print(f"{r['policy']} w=({w}): {shown}, length={r['length']:.1f}{' *' if r['on_front'] else ''}")
    for line in data["summary"]:
        print(line)
    print(f"wrote {out / 'pareto.json'}" + (f", {out / 'pareto.png'}" if png else "") + f"\n      {html}\n      {md}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pareto", help="sweep a preference-conditioned policy's weights: objectives, Pareto front, plot")
    p.add_argument("--run", required=True, help="output directory of an online run trained with preference.objectives")
    p.add_argument("--prompts", required=True, help='held-out prompt file ({"prompt"} rows)')
    p.add_argument("--weights", action="append", default=[], help='a weight vector "0.7,0.3" (repeat); default: a grid')
    p.add_argument(
        "--steps", type=int, default=4, help="grid resolution when no --weights: 1/steps (4: 5 vectors for 2)"
    )
    p.add_argument("--samples", type=int, default=1, help="responses per prompt and weight vector")
    p.add_argument("--baseline", help="model swept beside the trained one (default: the run's model.name_or_path)")
    p.add_argument("--no-baseline", action="store_true", help="sweep the trained policy only")
    p.add_argument(
        "--policy",
        action="append",
        default=[],
        help="LABEL=MODEL_DIR: another model swept with the run's tags (repeat)",
    )
    p.add_argument("--max-new-tokens", type=int, default=0, help="default: the run's sampling.max_new_tokens")
    p.add_argument("--temperature", type=float, help="default: the run's sampling.temperature")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", "-o", help="where pareto.json and report.html / report.md go (default RUN/pareto)")
    p.set_defaults(handler=_cmd_pareto)
