"""What every offline trainer does before and after the loop: load and clean data, write the output directory."""

from __future__ import annotations

import json
import platform
import random
import time
from pathlib import Path
from typing import Any

import yaml

from rlhfkit.config import DataConfig, to_dict

SAMPLE_DIR = Path(__file__).resolve().parent.parent / "tasks" / "data"
SAMPLES = {"sft": "sft.jsonl", "prefs": "prefs.jsonl", "prompts": "review_prompts.jsonl"}


def resolve_data_path(source: str) -> str:
    """`sample:NAME` -> the file shipped in the package; anything else is returned unchanged."""
    if source.startswith("sample:"):
        name = source.split(":", 1)[1]
        if name not in SAMPLES:
            raise FileNotFoundError(
                f"unknown sample data {source!r}; choose one of: sample:" + ", sample:".join(SAMPLES)
            )
        return str(SAMPLE_DIR / SAMPLES[name])
    return source


def load_train_eval(data: DataConfig, kind: str, seed: int) -> tuple[list[Any], list[Any], list[str]]:
    """Load, curate and split; returns (train, eval, human-readable notes on what was dropped or changed)."""
    from rlhfkit.data import curate, load_examples, train_eval_split

    if not data.train:
        raise FileNotFoundError("data.train is empty: give a data file, e.g. data.train=prefs.jsonl or sample:prefs")
    notes: list[str] = []
    errors = "skip" if data.skip_invalid else "raise"
    train = load_examples(resolve_data_path(data.train), kind, errors=errors)
    c = data.curation
    train, report = curate(
        train,
        dedupe=c.dedupe,
        near_dedupe=c.near_dedupe,
        near_threshold=c.near_threshold,
        scrub_pii=c.scrub_pii,
        min_chars=c.min_chars,
        max_chars=c.max_chars,
    )
    notes.append(str(report))
    if data.eval:
        evals = load_examples(resolve_data_path(data.eval), kind, errors=errors)
    elif data.eval_fraction > 0:
        train, evals = train_eval_split(train, data.eval_fraction, seed)
    else:
        evals = []
    if data.max_rows is not None and len(train) > data.max_rows:
        keep = sorted(random.Random(seed).sample(range(len(train)), data.max_rows))
        train = [train[i] for i in keep]
        notes.append(f"max_rows: kept {data.max_rows} of the training rows, drawn with the seed")
    return train, evals, notes


def encode_all(examples: list[Any], encode: Any) -> list[Any]:
    """Encode rows, dropping the ones the truncation policy rejects (encode returns None)."""
    out = []
    for ex in examples:
        enc = encode(ex)
        if enc is not None:
            out.append(enc)
    return out


def is_main_process() -> bool:
    """True in the process that writes a run's files (the only one without accelerate launch)."""
    from accelerate import PartialState

    return PartialState().is_main_process


def write_run_files(out_dir: Path, cfg: Any, command: str) -> None:
    if not is_main_process():
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(yaml.safe_dump({"command": command, **to_dict(cfg)}, sort_keys=False))


def write_summary(out_dir: Path, command: str, summary: dict[str, Any]) -> str:
    """summary.json for machines and summary.md for people; returns the markdown."""
    import rlhfkit

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
    """Save the model in Hugging Face format (LoRA merged) and write / print the run's summary."""
    from rlhfkit.models import save_model

    save_model(model, tokenizer, out_dir / "model", merge_lora=True)
    summary = {
        "model": str(out_dir / "model"),
        **extra,
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


def load_for_training(model_cfg: Any, kind: str = "causal", seed: int = 0) -> tuple[Any, Any]:
    """(model, tokenizer) from a ModelConfig: a causal LM or a scalar-head reward model, with LoRA when enabled.

    Seeded first, so that newly initialized weights (a reward head, LoRA matrices) are the same on every run.
    """
    from rlhfkit.models import apply_lora, load_causal_lm, load_reward_model, load_tokenizer
    from rlhfkit.trainers.loop import set_seed

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
        from rlhfkit.models.loading import freeze_lower_layers

        freeze_lower_layers(model, model_cfg.trainable_layers)
    return model, tokenizer
