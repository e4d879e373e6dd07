"""KTO (Ethayarajh et al. 2024) on unpaired feedback: each row is one response labelled desirable or not.

The reference point z0 (the policy's KL to the reference) is estimated on MISMATCHED pairs inside each micro-batch:
prompt i with response i+1. Matched and mismatched sequences go through the policy in one forward, and through the
frozen reference (a copy, or the policy with LoRA adapters disabled) in another, every step.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from rlhfkit.config import KTOConfig, KTOLossConfig, to_dict
from rlhfkit.data import ChatFormatter, UnpairedRow, collate_pairs, encode_unpaired, load_train_eval
from rlhfkit.losses import kto_loss, kto_reference_point
from rlhfkit.models import Reference, build_reference, completion_logps
from rlhfkit.trainers.common import check_models, check_rows, finish_run, load_for_training, write_run_files
from rlhfkit.trainers.loop import eval_batches, make_accelerator, run_loop


class KTOObjective:
    def __init__(
        self,
        pad_id: int,
        loss_cfg: KTOLossConfig,
        reference: Reference,
        eval_batch_size: int = 8,
        fused: bool = True,
        padding_free: bool = False,
    ):
        self.pad_id, self.cfg, self.reference, self.eval_batch_size = pad_id, loss_cfg, reference, eval_batch_size
        self.forward = {"fused": fused, "padding_free": padding_free}  # models.head.next_token_stats

    def collate(self, rows: Sequence[UnpairedRow]) -> dict[str, torch.Tensor]:
        n = len(rows)
        # (prompt_i, response_i, response_{i+1}): matched rows first, then the mismatched rows for the KL estimate
        triples = [(r.prompt_ids, r.completion_ids, rows[(i + 1) % n].completion_ids) for i, r in enumerate(rows)]
        batch = collate_pairs(triples, self.pad_id)
        batch["label"] = torch.tensor([r.label for r in rows], dtype=torch.bool)
        return batch

    def count(self, batch: dict[str, torch.Tensor]) -> float:
        return float(batch["label"].numel())

    def _losses(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]):
        b = batch["label"].numel()
        logps, _ = completion_logps(model, batch, **self.forward)  # (2B,)
        with torch.no_grad(), self.reference() as ref_model:
            ref_logps, _ = completion_logps(ref_model, batch, **self.forward)
        z0 = kto_reference_point(logps[b:].detach(), ref_logps[b:])
        if torch.distributed.is_available() and torch.distributed.is_initialized():  # one z0 for all processes
            torch.distributed.all_reduce(z0)
            z0 = z0 / torch.distributed.get_world_size()
        c = self.cfg
        losses, _, _ = kto_loss(
            logps[:b], ref_logps[:b], batch["label"], z0, c.beta, c.desirable_weight, c.undesirable_weight
        )
        rewards = (c.beta * (logps[:b] - ref_logps[:b])).detach().float()  # both labels, in row order
        return losses, rewards, z0

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        losses, rewards, z0 = self._losses(model, batch)
        label = batch["label"]
        metrics = {"kl_ref_point": float(z0)}
        if label.any():
            metrics["rewards/desirable"] = float(rewards[label].mean())
        if (~label).any():
            metrics["rewards/undesirable"] = float(rewards[~label].mean())
        return losses.sum(), metrics

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, rows: Sequence[UnpairedRow]) -> dict[str, float]:
        device = next(model.parameters()).device
        losses, rewards = [], []
        for batch in eval_batches(self, rows, device, self.eval_batch_size):
            loss, reward, _ = self._losses(model, batch)
            losses.append(loss.cpu().numpy())
            rewards.append(reward.cpu().numpy())
        r, labels = np.concatenate(rewards), np.array([row.label for row in rows])
        out = {"loss": float(np.concatenate(losses).mean())}
        if labels.any() and (~labels).any():
            out["rewards/margin"] = float(r[labels].mean() - r[~labels].mean())
            out["rewards/auc"] = float(roc_auc_score(labels, r))  # P(desirable scored above undesirable)
        return out


def train_kto(cfg: KTOConfig) -> dict[str, Any]:
    """Optimize cfg.model on unpaired desirable / undesirable responses; writes cfg.train.output_dir."""
    out = Path(cfg.train.output_dir)
    # 1. data, validated before any model is loaded
    train_ex, eval_ex, notes = load_train_eval(cfg.data, "unpaired", cfg.train.seed)
    check_rows(len(train_ex), cfg.train)
    check_models(cfg.model, cfg.reference)
    write_run_files(out, cfg, "kto")
    # 2. policy and a frozen reference on the training device
    model, tokenizer = load_for_training(cfg.model, "causal", cfg.train.seed)
    accelerator = make_accelerator(cfg.train)
    reference = build_reference(model, cfg.model, cfg.reference, True, accelerator.device)
    # 3. data -> (prompt, response, label) token rows
    fmt = ChatFormatter(tokenizer, cfg.data.max_length, cfg.data.prompt_length, cfg.data.truncation)
    train_rows, eval_rows = encode_unpaired(train_ex, fmt), encode_unpaired(eval_ex, fmt)
    notes.append(f"truncation: {fmt.report}")
    desirable = sum(r.label for r in train_rows)
    notes.append(f"labels: {desirable} desirable, {len(train_rows) - desirable} undesirable")
    # 4. the loop
    m = cfg.model
    objective = KTOObjective(tokenizer.pad_token_id, cfg.loss, reference, 8, m.fused_head, m.padding_free)
    result = run_loop(
        model, objective, train_rows, eval_rows, cfg.train, out, run_config=to_dict(cfg), accelerator=accelerator
    )
    # 5. save and summarize
    if not result.is_main:
        return {}
    return finish_run(out, "kto", model, tokenizer, result, notes, len(train_rows), len(eval_rows))
