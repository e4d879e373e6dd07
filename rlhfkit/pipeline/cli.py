"""`rlhfkit run` and `rlhfkit status`."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import yaml

from rlhfkit.commands import canonical
from rlhfkit.config import ConfigError, keys_help
from rlhfkit.pipeline.config import DEMO_PIPELINE, PipelineConfig, load_pipeline
from rlhfkit.pipeline.layout import RunLayout
from rlhfkit.pipeline.run import run_pipeline, status_table
from rlhfkit.rundir import run_status, saved_run, shown_status


def _cmd_run(args: argparse.Namespace) -> int:
    if args.pipeline and "=" in args.pipeline and not Path(args.pipeline).exists():
        args.overrides, args.pipeline = [args.pipeline, *args.overrides], None  # overrides only, no file
    cfg = load_pipeline(args.pipeline, list(args.overrides) + ([f"output={args.output}"] if args.output else []))
    run_pipeline(cfg, args.pipeline or "<overrides>", resume=args.resume, force=args.force)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    if not RunLayout(Path(args.run_dir)).manifest.exists() and saved_run(args.run_dir) is not None:
        print(run_status(args.run_dir))  # one command's output directory, not a pipeline's
        return 0
    print(status_table(args.run_dir))
    manifest = RunLayout(Path(args.run_dir)).manifest
    if manifest.exists():
        m = json.loads(manifest.read_text())
        print(f"run: {shown_status(m)}, started {m.get('started')}, commit {m.get('git_commit') or '-'}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    """The builtin demo: the closed loop of `rlhfkit run` on the shipped review openings (rlhfkit/tasks/data/demo.yaml)."""
    from rlhfkit.pipeline.report import report_data  # matplotlib: only when the demo runs

    out = RunLayout(Path(args.output))
    if out.dir.exists() and any(out.dir.iterdir()) and not out.manifest.exists():
        raise ConfigError(f"{out.dir} exists and is not a run directory: choose another --output")
    cfg = load_pipeline(DEMO_PIPELINE, [f"output={args.output}", f"model={args.model}", *args.overrides])
    t0 = time.perf_counter()
    run_dir = run_pipeline(cfg, str(DEMO_PIPELINE), resume=True)
    print(f"\ndemo finished in {(time.perf_counter() - t0) / 60:.1f} min")
    for line in report_data(run_dir)["summary"]:
        print(f"  {line}")
    print(
        f"open {run_dir / 'report.html'} (or read {run_dir / 'report.md'}); "
        f"`rlhfkit status {args.output}` lists the stages"
    )
    return 0


def _demo_help() -> str:
    """What the demo runs, read from its pipeline file (so the help cannot drift from it)."""
    demo = yaml.safe_load(DEMO_PIPELINE.read_text()) or {}
    rounds = demo.get("rounds", PipelineConfig().rounds)
    algo = canonical(str((demo.get("optimize") or {}).get("algorithm", "ppo")))
    steps = "sample/label/rm/" + (algo.upper() if algo in ("ppo", "grpo", "rloo", "dpo") else algo) + "/eval"
    return f"the closed loop on the builtin model: SFT, {rounds} round{'s' if rounds != 1 else ''} of {steps}, report"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="the closed loop: sft -> (sample -> label -> rm -> optimize -> eval) x rounds -> report",
        description="rlhfkit run: run or continue a pipeline; finished stages with unchanged inputs are skipped.",
        epilog=keys_help(PipelineConfig),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("pipeline", nargs="?", help="pipeline YAML file (its relative input paths: from the file's folder)")
    p.add_argument("--output", "-o", help="run directory (same as output=...)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted training stage from its checkpoint")
    p.add_argument("--force", action="store_true", help="run every stage again, even when unchanged")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. rounds=3 label.source=judge")
    p.set_defaults(handler=_cmd_run)
    s = sub.add_parser(
        "status", help="stages of a pipeline run (status, time, headline metrics), or how one command's run stands"
    )
    s.add_argument("run_dir")
    s.set_defaults(handler=_cmd_status)
    demo = sub.add_parser("demo", help=_demo_help())
    demo.add_argument("--output", "-o", default="runs/demo", help="run directory")
    demo.add_argument("--model", default="smollm2-135m-instruct", help="builtin name or local model directory")
    demo.add_argument("overrides", nargs="*", help="pipeline overrides, e.g. rounds=1 optimize.train.max_steps=20")
    demo.set_defaults(handler=_cmd_demo)
