"""What every trainer does before and after its loop: load the model to train, write the output directory, save the
model and the summary."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

import yaml

import rlhfkit
from rlhfkit.config import TrainConfig, to_dict
from rlhfkit.errors import TooFewRowsError
from rlhfkit.models import (
    apply_lora,
    check_model_path,
    disable_dropout,
    freeze_lower_layers,
    load_causal_lm,
    load_reward_model,
    load_tokenizer,
    save_model,
)
from rlhfkit.rundir import check_run_dir
from rlhfkit.seeding import set_seed
from rlhfkit.trainers.distributed import plain_copy, start_processes


def check_rows(n_rows: int, train: TrainConfig, what: str = "training rows") -> None:
    """Before any model is loaded: at least one global batch (train.batch_size x processes) of rows to train on."""
    global_batch = train.batch_size * start_processes(train).num_processes  # as the accelerator will see them
    if n_rows < global_batch:
        raise TooFewRowsError(n_rows, global_batch, what=what)


def check_models(model_cfg: Any, reference: str | None = None) -> None:
    """Before any model is loaded: the policy and reference directories exist (builtin names pass)."""
    check_model_path(model_cfg.name_or_path, "model.name_or_path")
    if reference:
        check_model_path(reference, "reference")


def write_run_files(out_dir: Path, cfg: Any, command: str) -> None:
    # joins the run's processes as the accelerator will (a bare PartialState() here settled on no distribution)
    if not start_processes(cfg.train).is_main_process:
        return
    for note in check_run_dir(out_dir, cfg, command):  # refuses before anything is written (rundir.py)
        print(note)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(yaml.safe_dump({"command": command, **to_dict(cfg)}, sort_keys=False))


def write_summary(out_dir: Path, command: str, summary: dict[str, Any]) -> str:
    """summary.json for machines and summary.md for people; returns the markdown."""
    full = {
        "command": command,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        "rlhfkit": rlhfkit.__version__,
        "python": platform.python_version(),
        **summary,
    }
    (out_dir / "summary.json").write_text(json.dumps(full, indent=2, default=str))
    lines = [f"# rlhfkit {command}: {out_dir}", ""]
    for k, v in full.items():
        if isinstance(v, dict):
            lines.append(f"- **{k}**:")
            lines.extend(f"  - {kk}: {_fmt(vv)}" for kk, vv in v.items())
        elif isinstance(v, list):
            lines.append(f"- **{k}**:")
            lines.extend(f"  - {_fmt(x)}" for x in v)
        else:
            lines.append(f"- **{k}**: {_fmt(v)}")
    md = "\n".join(lines) + "\n"
    (out_dir / "summary.md").write_text(md)
    return md


def finish_run(
    out_dir: Path,
    command: str,
    model: Any,
    tokenizer: Any,
    result: Any,
    notes: list[str],
    train_rows: int,
    eval_rows: int,
    eval_extra: dict[str, float] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Save the model in Hugging Face format (LoRA merged, and the adapters alone in adapter/; under FSDP the
    gathered weights) and write / print the run's summary."""
    state = result.model_state
    if state is not None and hasattr(model, "peft_config"):  # sharded LoRA: merged from an unsharded copy
        model, state = plain_copy(model, state), None
    save_model(model, tokenizer, out_dir / "model", merge_lora=True, state_dict=state)
    adapter = {}
    if hasattr(model, "peft_config"):
        adapter = {"adapter": str(save_model(model, None, out_dir / "adapter"))}
    summary = {
        "model": str(out_dir / "model"),
        **adapter,
        **extra,
        "distributed": result.distributed,
        "train_rows": train_rows,
        "eval_rows": eval_rows,
        "steps": result.steps,
        "seconds": round(result.seconds, 2),
        "tokens_per_second": round(result.tokens_per_second, 1),
        "final_train": result.last_metrics,
        "eval": {**result.eval_metrics, **(eval_extra or {})},
        "notes": notes,
    }
    print(write_summary(out_dir, command, summary))
    return summary


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def load_for_training(
    model_cfg: Any, kind: str = "causal", seed: int = 0, heads: list[str] | None = None
) -> tuple[Any, Any]:
    """(model, tokenizer) from a ModelConfig: a causal LM or a reward model (scalar, or one head per name in `heads`),
    with LoRA when enabled.

    Seeded first, so that newly initialized weights (a reward head, LoRA matrices) are the same on every run.
    """
    set_seed(seed)

    tokenizer = load_tokenizer(model_cfg.name_or_path, trust_remote_code=model_cfg.trust_remote_code)
    lora = model_cfg.lora
    if kind == "causal":
        model = load_causal_lm(
            model_cfg.name_or_path,
            dtype=model_cfg.dtype,
            trust_remote_code=model_cfg.trust_remote_code,
            gradient_checkpointing=model_cfg.gradient_checkpointing,
            load_in_4bit=lora.enabled and lora.load_in_4bit,
            num_layers=model_cfg.num_layers,
        )
    else:
        model = load_reward_model(
            model_cfg.name_or_path,
            dtype=model_cfg.dtype,
            trust_remote_code=model_cfg.trust_remote_code,
            gradient_checkpointing=model_cfg.gradient_checkpointing,
            load_in_4bit=lora.enabled and lora.load_in_4bit,
            num_layers=model_cfg.num_layers,
            heads=heads,
        )
    if lora.enabled:
        targets = lora.target_modules if lora.target_modules == "all-linear" else lora.target_modules.split(",")
        model = apply_lora(
            model,
            r=lora.r,
            alpha=lora.alpha,
            dropout=lora.dropout,
            target_modules=targets,
            task_type="CAUSAL_LM" if kind == "causal" else "SEQ_CLS",
        )
    if model_cfg.trainable_layers is not None:
        freeze_lower_layers(model, model_cfg.trainable_layers)
    if model_cfg.disable_dropout:
        disable_dropout(model)
    return model, tokenizer
