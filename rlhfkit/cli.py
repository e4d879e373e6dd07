"""`rlhfkit <command>`: each training command takes `--config FILE.yaml` and dotted overrides `key.sub=value`."""

from __future__ import annotations

import argparse
import importlib
import sys

from rlhfkit.commands import COMMANDS, trainer
from rlhfkit.config import ConfigError, keys_help, load_config
from rlhfkit.errors import CollectiveTimeout, QuantizationUnavailableError, TrainingDiverged

# modules that add their own subcommands: each has `register(subparsers)`, and every parser it adds sets
# `handler=fn(args) -> int` with set_defaults; errors they raise get the same one-line treatment as the trainers'
COMMAND_MODULES = (
    "rlhfkit.pipeline.cli",  # run, status, demo
    "rlhfkit.pipeline.eval_cli",  # eval, report
    "rlhfkit.feedback.annotate_cli",  # annotate serve | create | export | quality
    "rlhfkit.feedback.label_cli",  # label (AI judge), constitution
)


def _add_train_command(sub: argparse._SubParsersAction, name: str) -> None:
    c = COMMANDS[name]
    p = sub.add_parser(
        name,
        help=c.about,
        description=f"rlhfkit {name}: {c.about}.",
        epilog=keys_help(c.config),
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
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return parser


def run_command(
    name: str, config: str | None, overrides: list[str], output: str | None, resume: bool, best_of: int | None = None
) -> dict:
    extra = list(overrides)
    if output:
        extra.append(f"{'output' if name == 'sample' else 'train.output_dir'}={output}")
    if resume:
        extra.append("train.resume=true")
    if best_of:
        extra += [f"num_samples={best_of}", "best_of=true"]
    cfg = load_config(COMMANDS[name].config, config, extra)
    return trainer(name)(cfg)


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
        resume, best_of = getattr(args, "resume", False), getattr(args, "best_of", None)
        run_command(args.command, args.config, args.overrides, args.output, resume, best_of)
    except TrainingDiverged as e:
        print(f"rlhfkit {args.command}: training stopped: {e}", file=sys.stderr)
        return 3
    except CollectiveTimeout as e:
        print(f"rlhfkit {args.command}: error: {e}", file=sys.stderr)
        return 4
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
