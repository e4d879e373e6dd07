"""`rlhfkit <command>`: each training command takes `--config FILE.yaml` and dotted overrides `key.sub=value`."""

from __future__ import annotations

import argparse
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rlhfkit.config import (
    ConfigError,
    DPOConfig,
    GRPOConfig,
    KTOConfig,
    OnlineDPOConfig,
    PPOConfig,
    ReinforceConfig,
    RLOOConfig,
    RMConfig,
    SampleConfig,
    SFTConfig,
    describe,
    load_config,
)
from rlhfkit.errors import QuantizationUnavailableError, TrainingDiverged

# command -> (config class, trainer import path, one-line description)
COMMANDS: dict[str, tuple[type, str, str]] = {
    "sft": (SFTConfig, "rlhfkit.trainers.sft:train_sft", "supervised fine-tuning on demonstrations"),
    "rm": (RMConfig, "rlhfkit.trainers.rm:train_rm", "train a Bradley-Terry reward model on preferences"),
    "dpo": (DPOConfig, "rlhfkit.trainers.dpo:train_dpo", "DPO / IPO / robust / hinge / SimPO / ORPO on preferences"),
    "kto": (KTOConfig, "rlhfkit.trainers.kto:train_kto", "KTO on unpaired desirable / undesirable responses"),
    "ppo": (PPOConfig, "rlhfkit.trainers.online:train_rl", "PPO with a critic, GAE and a KL penalty to the reference"),
    "grpo": (GRPOConfig, "rlhfkit.trainers.online:train_rl", "GRPO: group-normalized advantages, KL in the loss"),
    "rloo": (RLOOConfig, "rlhfkit.trainers.online:train_rl", "RLOO: REINFORCE with a leave-one-out baseline"),
    "reinforce": (ReinforceConfig, "rlhfkit.trainers.online:train_rl", "REINFORCE++: whitened return-to-go"),
    "online-dpo": (OnlineDPOConfig, "rlhfkit.trainers.online:train_rl", "online DPO on best/worst samples"),
    "sample": (SampleConfig, "rlhfkit.sampling:sample", "sample responses; best-of-N; rejection-sampling data"),
}


# modules that add their own subcommands: each has `register(subparsers)`, and every parser it adds sets
# `handler=fn(args) -> int` with set_defaults; errors they raise get the same one-line treatment as the trainers'
COMMAND_MODULES = (
    "rlhfkit.pipeline",  # run, status
    "rlhfkit.eval.cli",  # eval, report
    "rlhfkit.feedback.annotate_cli",  # annotate serve | create | export | quality
    "rlhfkit.feedback.label_cli",  # label (AI judge), constitution
)


def trainer_from_path(path: str) -> Callable[[Any], dict[str, Any]]:
    import importlib

    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def _keys_help(cls: type) -> str:
    rows = describe(cls)
    width = max(len(k) for k, _, _ in rows)
    lines = ["configuration keys (YAML sections or key.sub=value overrides):"]
    for key, default, doc in rows:
        wrapped = textwrap.wrap(f"{doc} [default: {default}]", 100 - width) or [""]
        lines.append(f"  {key:<{width}}  {wrapped[0]}")
        lines.extend(f"  {'':<{width}}  {w}" for w in wrapped[1:])
    return "\n".join(lines)


def _add_train_command(sub: argparse._SubParsersAction, name: str) -> None:
    cls, _, about = COMMANDS[name]
    p = sub.add_parser(
        name,
        help=about,
        description=f"rlhfkit {name}: {about}.",
        epilog=_keys_help(cls),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", "-c", help="YAML file with the sections below")
    p.add_argument("--output", "-o", help="output directory (same as train.output_dir=...)")
    if name == "sample":
        p.add_argument(
            "--best-of", type=int, help="keep the best of N responses per prompt (same as num_samples=N best_of=true)"
        )
    else:
        p.add_argument(
            "--resume", action="store_true", help="continue from the newest checkpoint in the output directory"
        )
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. train.lr=1e-5 loss.beta=0.2")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlhfkit", description="The whole RLHF loop for Hugging Face causal language models."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        _add_train_command(sub, name)
    import importlib

    for module in COMMAND_MODULES:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            continue  # not built yet in this checkout
        mod.register(sub)
    demo = sub.add_parser(
        "demo", help="the closed loop on the builtin model: SFT, 2 rounds of sample/label/rm/PPO/eval, report"
    )
    demo.add_argument("--output", "-o", default="runs/demo", help="run directory")
    demo.add_argument("--model", default="smollm2-135m-instruct", help="builtin name or local model directory")
    demo.add_argument("overrides", nargs="*", help="pipeline overrides, e.g. rounds=1 optimize.train.max_steps=20")
    return parser


def run_command(
    name: str, config: str | None, overrides: list[str], output: str | None, resume: bool, best_of: int | None = None
) -> dict:
    cls, trainer, _ = COMMANDS[name]
    extra = list(overrides)
    if output:
        extra.append(f"{'output' if name == 'sample' else 'train.output_dir'}={output}")
    if resume:
        extra.append("train.resume=true")
    if best_of:
        extra += [f"num_samples={best_of}", "best_of=true"]
    cfg = load_config(cls, config, extra)
    return trainer_from_path(trainer)(cfg)


def demo(output: str, model: str, overrides: list[str]) -> None:
    """The builtin demo: the closed loop of `rlhfkit run` on the shipped review openings (rlhfkit/tasks/data/demo.yaml)."""
    from rlhfkit.eval.policy import report_data
    from rlhfkit.pipeline import DEMO_PIPELINE, load_pipeline, run_pipeline

    out = Path(output)
    if out.exists() and any(out.iterdir()) and not (out / "manifest.json").exists():
        raise ConfigError(f"{out} exists and is not a run directory: choose another --output")
    cfg = load_pipeline(DEMO_PIPELINE, [f"output={output}", f"model={model}", *overrides])
    t0 = time.perf_counter()
    run_dir = run_pipeline(cfg, str(DEMO_PIPELINE), resume=True)
    print(f"\ndemo finished in {(time.perf_counter() - t0) / 60:.1f} min")
    for line in report_data(run_dir)["summary"]:
        print(f"  {line}")
    print(
        f"open {run_dir / 'report.html'} (or read {run_dir / 'report.md'}); `rlhfkit status {output}` lists the stages"
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    # key=value overrides may also follow an option (`--best-of 4 reward.sources=...`): argparse leaves them over
    if unknown and hasattr(args, "overrides") and all("=" in u and not u.startswith("-") for u in unknown):
        args.overrides = [*args.overrides, *unknown]
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        if getattr(args, "handler", None) is not None:
            return int(args.handler(args) or 0)
        if args.command == "demo":
            demo(args.output, args.model, args.overrides)
        else:
            resume, best_of = getattr(args, "resume", False), getattr(args, "best_of", None)
            run_command(args.command, args.config, args.overrides, args.output, resume, best_of)
    except TrainingDiverged as e:
        print(f"rlhfkit {args.command}: training stopped: {e}", file=sys.stderr)
        return 3
    except (ConfigError, OSError, ImportError, UnicodeError, QuantizationUnavailableError) as e:
        # missing / unreadable files, bad encodings, a missing optional package: one line, no traceback
        print(f"rlhfkit {args.command}: error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:  # data errors (DataError) and bad settings: one line, no traceback
        if type(e).__module__.startswith("rlhfkit") or type(e) is ValueError:
            print(f"rlhfkit {args.command}: error: {e}", file=sys.stderr)
            return 2
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
