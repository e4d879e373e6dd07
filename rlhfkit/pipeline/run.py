"""Running a pipeline (or continuing one) and the status table."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml

from rlhfkit.config import ConfigError, to_dict
from rlhfkit.pipeline.config import PipelineConfig
from rlhfkit.pipeline.runner import Runner, _git_commit, _versions, _write_json, stage_records
from rlhfkit.pipeline.stages import Pipeline
from rlhfkit.rundir import owner, owner_alive, shown_status


def run_pipeline(
    cfg: PipelineConfig, where: str = "<pipeline>", resume: bool = False, force: bool = False, report: bool = True
) -> Path:
    """Run (or continue) a pipeline; returns the run directory."""
    pl = Pipeline(cfg, where)
    manifest_path = pl.layout.manifest
    ours = (pl.layout.pipeline_file.name, pl.layout.annotations_db.name)  # what may precede the manifest
    foreign = [p.name for p in pl.dir.iterdir() if not p.name.startswith(ours)] if pl.dir.is_dir() else []
    if foreign and not manifest_path.exists():
        raise ConfigError(f"{pl.dir} holds files of something else (no manifest.json): choose another output directory")
    if manifest_path.exists():  # two processes in one run directory would delete each other's stages
        old = json.loads(manifest_path.read_text())
        mine = (old.get("owner") or {}).get("pid") == owner()["pid"]  # an earlier call of this process that raised
        if old.get("status") == "running" and owner_alive(old.get("owner")) and not mine:
            who = old["owner"]
            raise ConfigError(
                f"{pl.dir} is being run by process {who['pid']} on {who['host']} (started {old.get('started')}): "
                "wait for it to finish, or stop it first"
            )
    pl.dir.mkdir(parents=True, exist_ok=True)
    pl.layout.pipeline_file.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    runner = Runner(pl.dir, resume, force)
    t0 = time.perf_counter()
    manifest = {
        "config": to_dict(cfg),
        "config_file": where,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "versions": _versions(),
        "git_commit": _git_commit(),
        "seed": cfg.seed,
        "stages": [],
        "status": "running",
        "owner": owner(),
    }
    _write_json(manifest_path, manifest)
    for stage in pl.stages():
        rec = runner(stage)
        manifest["stages"].append(
            {k: rec.get(k) for k in ("stage", "round", "status", "seconds", "fingerprint", "inputs", "outputs")}
        )
        _write_json(manifest_path, manifest)
    manifest.update(status="done", seconds=round(time.perf_counter() - t0, 2))
    _write_json(manifest_path, manifest)
    if report:
        from rlhfkit.pipeline.report import write_run_report  # matplotlib: only when a report is written

        html, md = write_run_report(pl.dir)
        print(f"report: {html}\n        {md}")
    return pl.dir


def status_table(run_dir: str | Path) -> str:
    recs = stage_records(run_dir)
    if not recs:
        raise ConfigError(f"{run_dir}: no stage records (round-*/*/stage.json); is this a run directory?")
    lines = [f"{'stage':<22} {'status':<11} {'seconds':>8}  metrics"]
    for r in recs:
        m = r.get("metrics") or {}
        shown = ", ".join(f"{k}={_short(v)}" for k, v in list(_headline(r["stage"], m).items())[:4])
        secs = f"{r['seconds']:.1f}" if isinstance(r.get("seconds"), (int, float)) else "-"
        lines.append(f"round-{r['round']}/{r['stage']:<14} {shown_status(r):<11} {secs:>8}  {shown}")
    return "\n".join(lines)


HEADLINES = {
    "prompts": ("train_prompts", "eval_prompts"),
    "sample": ("rows", "mean_length", "generated_tokens_per_s"),
    "label": ("pairs", "ties", "heldout_pairs"),
    "rm": ("eval.accuracy", "eval.auc", "seconds"),
    "optimize": ("eval.gold", "eval.score", "eval.kl", "seconds"),
    "sft": ("eval.loss", "seconds"),
    "eval": ("gold", "win_rate", "kl", "length"),
}


def _headline(stage: str, metrics: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key in HEADLINES.get(stage, ()):
        v: Any = metrics
        for part in key.split("."):
            v = v.get(part) if isinstance(v, dict) else None
        if v is not None:
            out[key] = v
    return out


def _short(v: Any) -> str:
    if isinstance(v, dict) and {"rate", "ci_low", "ci_high"} <= set(v):  # a win rate: rate [95% CI] (of n)
        n = sum(v.get(k, 0) for k in ("wins", "ties", "losses"))
        return f"{v['rate']:.3f} (95% CI {v['ci_low']:.3f}-{v['ci_high']:.3f}" + (f", n={n})" if n else ")")
    return f"{v:.4g}" if isinstance(v, float) else str(v)
