"""Where a command's rows come from: builtin sample names, loading + curation + the train / held-out split."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from rlhfkit.config import DataConfig
from rlhfkit.data.curation import curate
from rlhfkit.data.io import load_examples, train_eval_split

SAMPLE_DIR = Path(__file__).resolve().parent.parent / "tasks" / "data"
SAMPLES = {
    "sft": "sft.jsonl",
    "prefs": "prefs.jsonl",
    "prompts": "review_prompts.jsonl",
    "arithmetic": "arithmetic_prompts.jsonl",
    "arithmetic-eval": "arithmetic_eval.jsonl",
    "arithmetic-sft": "arithmetic_sft.jsonl",
    "arithmetic-steps": "arithmetic_steps.jsonl",
}


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
    if not data.train:
        raise FileNotFoundError("data.train is empty: give a data file, e.g. data.train=prefs.jsonl or sample:prefs")
    notes: list[str] = []
    errors = "skip" if data.skip_invalid else "raise"
    train = load_examples(resolve_data_path(data.train), kind, errors=errors, notes=notes)
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
        evals = load_examples(resolve_data_path(data.eval), kind, errors=errors, notes=notes)
    elif data.eval_fraction > 0:
        train, evals = train_eval_split(train, data.eval_fraction, seed)
    else:
        evals = []
    if data.max_rows is not None and len(train) > data.max_rows:
        keep = sorted(random.Random(seed).sample(range(len(train)), data.max_rows))
        train = [train[i] for i in keep]
        notes.append(f"max_rows: kept {data.max_rows} of the training rows, drawn with the seed")
    return train, evals, notes
