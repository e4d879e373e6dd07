"""Supervised fine-tuning on demonstrations: next-token NLL on the assistant's tokens."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from rlhfkit.config import SFTConfig, to_dict
from rlhfkit.data import ChatFormatter, collate_sft, encode_all, load_train_eval, pack_sequences
from rlhfkit.losses.aggregation import aggregate_sum_and_count
from rlhfkit.losses.sft import sft_nll
from rlhfkit.models.head import next_token_stats
from rlhfkit.trainers.common import check_models, check_rows, finish_run, load_for_training, write_run_files
from rlhfkit.trainers.loop import eval_batches, run_loop


def packed_attention_mask(position_ids: torch.Tensor, attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, 1, T, T) additive mask for packed rows: causal within each example (a segment starts where the position id
    restarts at 0), nothing across examples; padding attends to itself only, so no row of the mask is empty."""
    seg = torch.cumsum(position_ids == 0, dim=1) * attention_mask  # (B, T) segment number, 0 on padding
    t = seg.shape[1]
    causal = torch.tril(torch.ones(t, t, dtype=torch.bool, device=seg.device))
    allowed = (seg[:, :, None] == seg[:, None, :]) & causal & (seg[:, :, None] > 0)
    allowed |= torch.eye(t, dtype=torch.bool, device=seg.device)
    return torch.zeros(allowed.shape, dtype=dtype, device=seg.device).masked_fill(~allowed, torch.finfo(dtype).min)[
        :, None
    ]


class SFTObjective:
    """Token NLL of the labels (-100 = no loss), aggregated token-mean or sequence-mean with a global normalizer."""

    def __init__(
        self,
        pad_id: int,
        completion_only: bool,
        aggregation: str,
        eval_batch_size: int = 8,
        fused: bool = True,
        padding_free: bool = False,
    ):
        self.pad_id, self.completion_only, self.aggregation = pad_id, completion_only, aggregation
        self.eval_batch_size, self.fused, self.padding_free = eval_batch_size, fused, padding_free

    def collate(self, rows: Sequence[Any]) -> dict[str, torch.Tensor]:
        batch = collate_sft(list(rows), pad_id=self.pad_id)
        if not self.completion_only:
            batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
            if "position_ids" in batch:  # the first token of a packed example is not predicted from the one before
                batch["labels"] = batch["labels"].masked_fill(batch["position_ids"] == 0, -100)
        return batch

    def _token_nll(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, attention, positions = batch["input_ids"], batch["attention_mask"], batch.get("position_ids")
        if positions is not None and not self.padding_free:  # packed rows: each example attends to itself only
            attention = packed_attention_mask(positions, attention, next(model.parameters()).dtype)
        # token log-probs of labels 1..T-1 (-100: 0), from hidden states chunk by chunk unless model.fused_head=false
        stats = next_token_stats(
            model,
            ids,
            attention,
            ids.shape[1] - 1,
            labels=batch["labels"],
            position_ids=positions,
            fused=self.fused,
            padding_free=self.padding_free,
        )
        mask = (batch["labels"][:, 1:] != -100).float()  # (B, T-1): predict token t+1 from position t
        return sft_nll(stats.logprobs, mask), mask

    def count(self, batch: dict[str, torch.Tensor]) -> float:
        mask = batch["labels"][:, 1:] != -100
        return float(mask.sum()) if self.aggregation == "token-mean" else float(mask.any(-1).sum())

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        nll, mask = self._token_nll(model, batch)
        total, _ = aggregate_sum_and_count(nll, mask, self.aggregation)
        return total, {"nll": float((nll.detach() * mask).sum() / mask.sum().clamp(min=1))}

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, rows: Sequence[Any]) -> dict[str, float]:
        device = next(model.parameters()).device
        total, count = 0.0, 0.0
        for batch in eval_batches(self, rows, device, self.eval_batch_size):
            nll, mask = self._token_nll(model, batch)
            total += float((nll * mask).sum())
            count += float(mask.sum())
        mean = total / max(count, 1.0)
        return {"nll": mean, "perplexity": math.exp(min(mean, 50.0)), "tokens": count}


def train_sft(cfg: SFTConfig) -> dict[str, Any]:
    """Fine-tune cfg.model on cfg.data; writes cfg.train.output_dir and returns the summary."""
    out = Path(cfg.train.output_dir)
    # 1. data: load, validate, clean, split, before any model is loaded (a bad row costs no model load)
    train_ex, eval_ex, notes = load_train_eval(cfg.data, "sft", cfg.train.seed)
    check_rows(len(train_ex), cfg.train)
    check_models(cfg.model)
    write_run_files(out, cfg, "sft")
    # 2. model and tokenizer; tokenize with the chat template (loss on assistant tokens), optionally pack
    model, tokenizer = load_for_training(cfg.model, "causal", cfg.train.seed)
    fmt = ChatFormatter(tokenizer, cfg.data.max_length, cfg.data.prompt_length, cfg.data.truncation)
    train_rows = encode_all(train_ex, fmt.encode_sft)
    eval_rows = encode_all(eval_ex, fmt.encode_sft)
    notes.append(f"truncation: {fmt.report}")
    if cfg.data.packing:
        before = len(train_rows)
        train_rows = pack_sequences(train_rows, cfg.data.max_length)
        notes.append(f"packing: {before} examples into {len(train_rows)} sequences")
    # 3. the loop
    m = cfg.model
    objective = SFTObjective(
        tokenizer.pad_token_id, cfg.loss.completion_only, cfg.loss.aggregation, 8, m.fused_head, m.padding_free
    )
    result = run_loop(model, objective, train_rows, eval_rows, cfg.train, out, run_config=to_dict(cfg))
    # 4. save the model in Hugging Face format and summarize
    if not result.is_main:
        return {}
    return finish_run(out, "sft", model, tokenizer, result, notes, len(train_rows), len(eval_rows))
