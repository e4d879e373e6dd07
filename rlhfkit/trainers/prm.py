"""Process reward model: a scalar head read at the end token of every reasoning step, trained with a per-step binary
cross-entropy on step labels (Lightman et al. 2023, "Let's verify step by step", §2.6).

The saved directory is a plain sequence-classification model (transformers reads its score at the last token: the
final step's); `rlhfkit_encoding.json` beside it names the step delimiter, so that a `kind: model` reward source
scores every step of a response and algo.reward_placement=process rewards each step where it ends.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlhfkit.config import PRMConfig, to_dict
from rlhfkit.data import ChatFormatter, DataError, StepExample, load_train_eval, pad_batch
from rlhfkit.data.steps import encode_steps
from rlhfkit.eval.metrics import expected_calibration_error
from rlhfkit.losses.reward import process_reward_loss
from rlhfkit.models.head import token_scores
from rlhfkit.rewards.sources import ENCODING_FILE
from rlhfkit.trainers.common import check_models, check_rows, finish_run, load_for_training, write_run_files
from rlhfkit.trainers.loop import eval_batches, run_loop


@dataclass
class StepRow:
    ids: list[int]  # prompt + completion tokens
    positions: list[int]  # index of each labelled step's end token in ids
    labels: list[float]  # (steps,) in [0, 1]


def check_steps(examples: Sequence[StepExample], delimiter: str) -> None:
    """Before any model loads: no step may contain the delimiter (it would read as two steps with one label)."""
    for ex in examples:
        for k, step in enumerate(ex.steps):
            if delimiter in step:
                raise DataError(ex.source, f'field "steps[{k}]" contains the step delimiter {delimiter!r}')


def encode_step_rows(examples: Sequence[StepExample], fmt: ChatFormatter, delimiter: str) -> tuple[list[StepRow], int]:
    """Rows -> (StepRows, labels dropped because truncation cut their step off)."""
    rows, dropped = [], 0
    for ex in examples:
        enc = encode_steps(fmt, ex.prompt, delimiter.join(ex.steps), delimiter)
        dropped += len(ex.labels) - enc.seen
        if enc.seen:
            rows.append(StepRow(enc.ids, enc.positions[: enc.seen], list(ex.labels[: enc.seen])))
    return rows, dropped


class ProcessObjective:
    """Per-step BCE, step-mean over every labelled step of the global batch."""

    def __init__(self, pad_id: int, eval_batch_size: int = 8):
        self.pad_id, self.eval_batch_size = pad_id, eval_batch_size

    def collate(self, rows: Sequence[StepRow]) -> dict[str, torch.Tensor]:
        ids, mask = pad_batch([r.ids for r in rows], self.pad_id, side="right")
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "step_row": torch.tensor([i for i, r in enumerate(rows) for _ in r.positions], dtype=torch.long),
            "step_pos": torch.tensor([p for r in rows for p in r.positions], dtype=torch.long),
            "labels": torch.tensor([v for r in rows for v in r.labels], dtype=torch.float32),
        }

    def count(self, batch: dict[str, torch.Tensor]) -> float:
        return float(batch["labels"].numel())

    def step_logits(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        per_token = token_scores(model, batch["input_ids"], batch["attention_mask"])  # (B, T)
        return per_token[batch["step_row"], batch["step_pos"]]  # (steps,)

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        logits = self.step_logits(model, batch)
        labels = batch["labels"]
        per_step = process_reward_loss(logits, labels)
        acc = float(((logits.detach() > 0) == (labels >= 0.5)).float().mean())
        return per_step.sum(), {"step_accuracy": acc}

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, rows: Sequence[StepRow]) -> dict[str, float]:
        device = next(model.parameters()).device
        logits, labels = [], []
        for batch in eval_batches(self, rows, device, self.eval_batch_size):
            logits.append(self.step_logits(model, batch).float().cpu())
            labels.append(batch["labels"].cpu())
        return step_metrics(torch.cat(logits), torch.cat(labels))


def step_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Held-out steps: BCE, accuracy at P = 0.5, ROC AUC of correct vs wrong steps, calibration error."""
    from sklearn.metrics import roc_auc_score

    probs, good = torch.sigmoid(logits).numpy(), (labels >= 0.5).numpy()
    out = {
        "steps": float(len(probs)),
        "correct_steps": float(good.sum()),
        "bce": float(process_reward_loss(logits, labels).mean()),
        "step_accuracy": float(np.mean((probs > 0.5) == good)),
        "ece": float(expected_calibration_error(probs, good.astype(float))),
    }
    if 0 < good.sum() < len(good):
        out["auc"] = float(roc_auc_score(good, probs))
    return {k: v for k, v in out.items() if not math.isnan(v)}


def train_prm(cfg: PRMConfig) -> dict[str, Any]:
    """Train a process reward model on step rows; writes cfg.train.output_dir (model/ reloads with transformers)."""
    out = Path(cfg.train.output_dir)
    # 1. step rows, validated before any model is loaded
    train_ex, eval_ex, notes = load_train_eval(cfg.data, "steps", cfg.train.seed)
    check_steps([*train_ex, *eval_ex], cfg.delimiter)
    check_rows(len(train_ex), cfg.train, "training responses")
    check_models(cfg.model)
    write_run_files(out, cfg, "prm")
    # 2. base model with a scalar head; rows -> tokens with each step's end position
    model, tokenizer = load_for_training(cfg.model, "reward", cfg.train.seed)
    fmt = ChatFormatter(tokenizer, cfg.data.max_length, cfg.data.prompt_length, cfg.data.truncation)
    train_rows, cut = encode_step_rows(train_ex, fmt, cfg.delimiter)
    eval_rows, eval_cut = encode_step_rows(eval_ex, fmt, cfg.delimiter)
    labels = [v for r in train_rows for v in r.labels]
    notes.append(f"truncation: {fmt.report}; step labels cut off: {cut} train, {eval_cut} held-out")
    notes.append(f"steps: {len(labels)} labelled, {sum(v >= 0.5 for v in labels)} correct")
    # 3. the loop
    objective = ProcessObjective(tokenizer.pad_token_id)
    result = run_loop(model, objective, train_rows, eval_rows, cfg.train, out, run_config=to_dict(cfg))
    # 4. save (Hugging Face sequence-classification format), the encoding with the delimiter, the summary
    if not result.is_main:
        return {}
    summary = finish_run(out, "prm", model, tokenizer, result, notes, len(train_rows), len(eval_rows))
    encoding = {
        "max_length": cfg.data.max_length,
        "max_prompt_length": cfg.data.prompt_length,
        "process": {"delimiter": cfg.delimiter},
    }
    (Path(summary["model"]) / ENCODING_FILE).write_text(json.dumps(encoding) + "\n")
    return summary
