"""`rlhfkit <command>`: each training command takes `--config FILE.yaml` and dotted overrides `key.sub=value`."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import shutil
import sys
import typing
from pathlib import Path

from rlhfkit.commands import COMMAND_ALIASES, COMMANDS, canonical, trainer
from rlhfkit.config import ConfigError, keys_help, load_config, parse_overrides
from rlhfkit.errors import CollectiveTimeout, QuantizationUnavailableError, TrainingDiverged
from rlhfkit.rundir import RECORD_FILE, check_run_dir, default_output_dir, first_process, saved_run, write_record

# modules that add their own subcommands: each has `register(subparsers)`, and every parser it adds sets
# `handler=fn(args) -> int` with set_defaults; errors they raise get the same one-line treatment as the trainers'
COMMAND_MODULES = (
    "rlhfkit.pipeline.cli",  # run, status, demo
    "rlhfkit.pipeline.eval_cli",  # eval, report
    "rlhfkit.pipeline.pareto",  # pareto (a preference-conditioned policy's weight sweep)
    "rlhfkit.feedback.annotate_cli",  # annotate serve | create | export | quality
    "rlhfkit.feedback.label_cli",  # label (AI judge), constitution
)


def _example_overrides(config_cls: type) -> str:
    """Two overrides that are valid for this command's config (the help must never suggest a key it refuses)."""
    examples = []
    for key, value in (
        ("train.lr", "1e-5"),
        ("loss.beta", "0.2"),
        ("kl.coef", "0.05"),
        ("train.max_steps", "100"),
        ("num_samples", "4"),
    ):
        owner: type | None = config_cls
        *sections, leaf = key.split(".")
        for section in sections:
            owner = typing.get_type_hints(owner).get(section) if dataclasses.is_dataclass(owner) else None
        if dataclasses.is_dataclass(owner) and leaf in {f.name for f in dataclasses.fields(owner)}:
            examples.append(f"{key}={value}")
    return " ".join(examples[:2])


def _add_train_command(sub: argparse._SubParsersAction, name: str) -> None:
    c = COMMANDS[name]
    p = sub.add_parser(
        name,
        aliases=[alias for alias, target in COMMAND_ALIASES.items() if target == name],
        help=c.about,
        description=f"rlhfkit {name}: {c.about}.",
        epilog=keys_help(c.config),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--config", "-c", help="YAML file with the sections below (its relative input paths: from the file's folder)"
    )
    if name == "sample":
        p.add_argument("--output", "-o", help="the JSONL file the samples are written to (same as output=...)")
    else:
        p.add_argument(
            "--output", "-o", help="output directory (same as train.output_dir=...; default: outputs/<command>-<time>)"
        )
    if name == "sample":
        p.add_argument(
            "--best-of", type=int, help="keep the best of N responses per prompt (same as num_samples=N best_of=true)"
        )
    else:
        p.add_argument(
            "--resume",
            action="store_true",
            help="continue the run in the output directory from its newest checkpoint, with its saved config",
        )
    p.add_argument("overrides", nargs="*", help=f"key.sub=value overrides, e.g. {_example_overrides(c.config)}")


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
    name = canonical(name)
    extra = list(overrides)
    if name == "sample":
        if output:
            extra.append(f"output={output}")
        if best_of:
            extra += [f"num_samples={best_of}", "best_of=true"]
        return trainer(name)(load_config(COMMANDS[name].config, config, extra, command=name))
    if output:
        extra.append(f"train.output_dir={output}")
    if resume:
        extra.append("train.resume=true")
        cfg = _resumed_config(name, config, extra)
    else:
        cfg = load_config(COMMANDS[name].config, config, extra, command=name)
        if not cfg.train.output_dir:
            cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, output_dir=default_output_dir(name)))
    out, first = Path(cfg.train.output_dir), first_process()
    if first:  # refuse before the trainer (and torch) loads; the trainer checks again before it writes
        command = cfg.algo.name if COMMANDS[name].online else name  # what the trainer records in config.yaml
        check_run_dir(out, cfg, command)
        print(f"rlhfkit {name}: {'resuming' if resume else 'new run in'} {out}", flush=True)
        existed = out.exists()
        write_record(out, name, "running")  # `rlhfkit status DIR` tells a crashed run from a running one
    try:
        summary = trainer(name)(cfg)
    except BaseException as e:
        if first and not existed and out.is_dir() and {p.name for p in out.iterdir()} <= {RECORD_FILE}:
            shutil.rmtree(out)  # stopped before writing anything (bad input): leave no directory behind
        elif first:
            interrupted = isinstance(e, KeyboardInterrupt)
            write_record(out, name, "interrupted" if interrupted else "failed", None if interrupted else str(e))
        raise
    if first:
        write_record(out, name, "done")
    return summary


class NothingToResume(Exception):
    """`--resume` of a run that has finished: nothing to do (as `rlhfkit run --resume` skips finished stages)."""


def _resumed_config(name: str, config: str | None, extra: list[str]):
    """The saved run's config (config.yaml in the output directory) <- --config <- overrides: `rlhfkit dpo -o DIR
    --resume` needs nothing else; what is given again is checked against the saved run (rundir.check_run_dir)."""
    cls = COMMANDS[name].config
    given = [v for k, v in parse_overrides(extra) if k == "train.output_dir"]
    out = str(given[-1]) if given else ""
    if not out and config:  # the directory may come from the config file
        try:
            out = load_config(cls, config, extra, command=name).train.output_dir
        except ConfigError:
            out = ""
    if not out:
        raise ConfigError("--resume needs the run's directory: -o DIR")
    saved = saved_run(out)
    if saved is None:
        raise ConfigError(f"--resume: {out} holds no run to resume (no config.yaml); leave out --resume to start one")
    if canonical(saved.command) != name:
        raise ConfigError(
            f"--resume: {out} holds a run of `rlhfkit {saved.command}`, not `rlhfkit {name}`: "
            f"resume it with `rlhfkit {saved.command} -o {out} --resume`, or choose another output directory"
        )
    cfg = load_config(cls, config, extra, base=saved.config, command=name)
    length = [saved.config.get("train", {}).get(k) for k in ("max_steps", "epochs")]
    if (Path(out) / "summary.json").exists() and [cfg.train.max_steps, cfg.train.epochs] == length:
        raise NothingToResume(
            f"{out} is a finished run (summary.json): nothing to resume; to train it longer, raise train.max_steps"
        )
    return cfg


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
        args.command = canonical(args.command)
        run_command(args.command, args.config, args.overrides, args.output, resume, best_of)
        _finish_together()
    except NothingToResume as e:
        print(f"rlhfkit {args.command}: {e}")
        return 0
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
    finally:
        _leave_process_group()
    return 0


def _finish_together() -> None:
    """After a run that finished well on every process: wait until rank 0 has written the final model, so that no
    process tears its gloo group down while a peer still uses it (seen as "terminate called without an active
    exception" on a rank that left first). Not on errors: a failed peer would never arrive."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.barrier()


def _leave_process_group() -> None:
    """Leave the process group before the interpreter exits: a gloo group torn down by the exit itself can abort the
    process ("terminate called without an active exception") after the run has finished well."""
    dist = sys.modules.get("torch.distributed")  # only a command that ran loaded it; `--help` stays torch-free
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
