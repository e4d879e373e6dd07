"""Direct preference optimization and its family (IPO, robust/conservative DPO, hinge, SimPO, ORPO).

Chosen and rejected sequences go through the policy in ONE forward pass (stacked on the batch dimension). The reference
log-probs are computed once before training (`loss.reference=precompute`; with LoRA the reference is the same network with
adapters disabled, so no second copy is held) or in every step (`live`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlhfkit.config import DPOConfig, PreferenceLossConfig, SamplingConfig, to_dict
from rlhfkit.data import ChatFormatter, EncodedPair, collate_pair_batch, encode_pairs, load_train_eval
from rlhfkit.losses import PREFERENCE_LOSSES, REFERENCE_FREE, dpo_ties_loss
from rlhfkit.models import Reference, build_reference, completion_logps
from rlhfkit.rollout import make_engine, sample_with_kl, sampling_params
from rlhfkit.trainers.common import check_models, check_rows, finish_run, load_for_training, write_run_files
from rlhfkit.trainers.loop import eval_batches, make_accelerator, run_loop


@dataclass(frozen=True)
class DPORow:
    pair: EncodedPair
    ref_chosen: float = 0.0
    ref_rejected: float = 0.0


def same_response_groups(pairs: Sequence[EncodedPair]) -> list[frozenset[tuple[int, ...]]]:
    """One key per pair: the unordered pair of its two responses' tokens (the prompt and which side won ignored)."""
    return [frozenset((tuple(p.chosen_ids), tuple(p.rejected_ids))) for p in pairs]


class DPOObjective:
    def __init__(
        self,
        pad_id: int,
        loss_cfg: PreferenceLossConfig,
        reference: Reference | None,
        eval_batch_size: int = 8,
        fused: bool = True,
        padding_free: bool = False,
    ):
        self.pad_id, self.cfg, self.reference, self.eval_batch_size = pad_id, loss_cfg, reference, eval_batch_size
        self.forward = {"fused": fused, "padding_free": padding_free}  # models.head.next_token_stats
        self.loss_fn = PREFERENCE_LOSSES[loss_cfg.name]
        self.live = loss_cfg.reference == "live" and loss_cfg.name not in REFERENCE_FREE

    def collate(self, rows: Sequence[DPORow]) -> dict[str, torch.Tensor]:
        batch = collate_pair_batch([r.pair for r in rows], self.pad_id)
        batch["ref_chosen"] = torch.tensor([r.ref_chosen for r in rows], dtype=torch.float32)
        batch["ref_rejected"] = torch.tensor([r.ref_rejected for r in rows], dtype=torch.float32)
        return batch

    def count(self, batch: dict[str, torch.Tensor]) -> float:
        return float(batch["ref_chosen"].numel())

    def _losses(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]):
        logps, counts = completion_logps(model, batch, **self.forward)
        b = logps.shape[0] // 2
        ref_c, ref_r = batch["ref_chosen"], batch["ref_rejected"]
        if self.live:
            with torch.no_grad(), self.reference() as ref_model:
                ref_logps, _ = completion_logps(ref_model, batch, **self.forward)
            ref_c, ref_r = ref_logps[:b], ref_logps[b:]
        c = self.cfg
        if c.ties != "drop":  # Chen et al. 2024: tie rows under the tie model, the others as DPO's chosen-over-rejected
            losses, r_c, r_r = dpo_ties_loss(
                logps[:b], logps[b:], ref_c, ref_r, batch["tie"], c.beta, tie_model=c.ties, tie_param=c.tie_param
            )
            return losses, r_c, r_r, logps[:b], logps[b:]
        losses, r_c, r_r = self.loss_fn(
            logps[:b],
            logps[b:],
            ref_c,
            ref_r,
            beta=c.beta,
            label_smoothing=c.label_smoothing,
            gamma=c.gamma,
            lam=c.lam,
            chosen_len=counts[:b],
            rejected_len=counts[b:],
        )
        return losses, r_c, r_r, logps[:b], logps[b:]

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        losses, r_c, r_r, pi_c, pi_r = self._losses(model, batch)
        decided = ~batch["tie"]
        metrics = {
            "rewards/chosen": float(r_c.mean()),
            "rewards/rejected": float(r_r.mean()),
            "rewards/accuracy": float((r_c > r_r)[decided].float().mean()) if decided.any() else float("nan"),
            "rewards/margin": float((r_c - r_r).mean()),
            "logps/chosen": float(pi_c.detach().mean()),
            "logps/rejected": float(pi_r.detach().mean()),
        }
        return losses.sum(), metrics

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, rows: Sequence[DPORow]) -> dict[str, float]:
        device = next(model.parameters()).device
        parts: dict[str, list[np.ndarray]] = {"loss": [], "r_c": [], "r_r": []}
        for batch in eval_batches(self, rows, device, self.eval_batch_size):
            losses, r_c, r_r, _, _ = self._losses(model, batch)
            parts["loss"].append(losses.cpu().numpy())
            parts["r_c"].append(r_c.cpu().numpy())
            parts["r_r"].append(r_r.cpu().numpy())
        loss, r_c, r_r = (np.concatenate(parts[k]) for k in ("loss", "r_c", "r_r"))
        decided = ~np.array([r.pair.tie for r in rows], dtype=bool)
        return {
            "loss": float(loss.mean()),
            "rewards/accuracy": float((r_c > r_r)[decided].mean()) if decided.any() else float("nan"),
            "rewards/margin": float((r_c - r_r).mean()),
            "rewards/chosen": float(r_c.mean()),
            "rewards/rejected": float(r_r.mean()),
        }


@torch.no_grad()
def precompute_reference(
    rows: Sequence[EncodedPair],
    reference: Reference,
    pad_id: int,
    batch_size: int = 8,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    fused: bool = True,
    padding_free: bool = False,
) -> list[DPORow]:
    """One pass of the reference over every pair (under the training precision's autocast); logps stored on the rows."""
    out: list[DPORow] = []
    with reference() as ref_model, autocast():
        device = next(ref_model.parameters()).device
        was_training = ref_model.training
        ref_model.eval()
        for i in range(0, len(rows), batch_size):
            chunk = rows[i : i + batch_size]
            batch = {k: v.to(device) for k, v in collate_pair_batch(chunk, pad_id).items()}
            logps, _ = completion_logps(ref_model, batch, fused, padding_free)
            b = len(chunk)
            out.extend(DPORow(p, float(c), float(r)) for p, c, r in zip(chunk, logps[:b], logps[b:]))
        ref_model.train(was_training)
    return out


def train_dpo(cfg: DPOConfig) -> dict[str, Any]:
    """Optimize cfg.model on preference pairs with cfg.loss; writes cfg.train.output_dir."""
    out = Path(cfg.train.output_dir)
    # 1. data, validated before any model is loaded
    train_ex, eval_ex, notes = load_train_eval(cfg.data, "preference", cfg.train.seed)
    drop_ties = cfg.loss.ties == "drop"  # a tie trained as chosen-over-rejected would teach an arbitrary order
    decided = sum(not ex.tie for ex in train_ex)
    if drop_ties and decided == 0:
        raise ValueError(
            f"{cfg.data.train}: every training pair is a tie ({len(train_ex)}), and loss.ties=drop drops ties: "
            "train them with loss.ties=davidson (or rao-kupper)"
        )
    check_rows(decided if drop_ties else len(train_ex), cfg.train, "training pairs")
    check_models(cfg.model, cfg.reference)
    write_run_files(out, cfg, "dpo")
    # 2. policy, and the reference: adapters off under LoRA, else a frozen copy (or another checkpoint)
    model, tokenizer = load_for_training(cfg.model, "causal", cfg.train.seed)
    accelerator = make_accelerator(cfg.train)
    keep = cfg.loss.reference == "live" or cfg.eval_kl_samples > 0
    reference = build_reference(model, cfg.model, cfg.reference, keep, accelerator.device)
    # 3. rows -> tokenized pairs
    fmt = ChatFormatter(tokenizer, cfg.data.max_length, cfg.data.prompt_length, cfg.data.truncation)
    train_pairs, eval_pairs = encode_pairs(train_ex, fmt), encode_pairs(eval_ex, fmt)
    notes.append(f"truncation: {fmt.report}")
    n_ties = sum(p.tie for p in train_pairs)
    if drop_ties:
        train_pairs, eval_pairs = [p for p in train_pairs if not p.tie], [p for p in eval_pairs if not p.tie]
        notes.append(f"ties: dropped {n_ties} tie pairs from training (loss.ties=drop)")
    else:
        notes.append(f"ties: {n_ties} tie pairs trained with the {cfg.loss.ties} tie model (Chen et al. 2024)")
    # 4. reference log-probs once, before the policy moves
    pad = tokenizer.pad_token_id
    if cfg.loss.name in REFERENCE_FREE or cfg.loss.reference == "live":
        train_rows, eval_rows = [DPORow(p) for p in train_pairs], [DPORow(p) for p in eval_pairs]
    else:
        fwd = {"autocast": accelerator.autocast, "fused": cfg.model.fused_head, "padding_free": cfg.model.padding_free}
        train_rows = precompute_reference(train_pairs, reference, pad, **fwd)
        eval_rows = precompute_reference(eval_pairs, reference, pad, **fwd)
    # 5. the loop
    objective = DPOObjective(pad, cfg.loss, reference, 8, cfg.model.fused_head, cfg.model.padding_free)
    groups = same_response_groups(train_pairs) if cfg.group_same_responses else None
    if groups is not None:
        notes.append(
            f"group_same_responses: {len(train_pairs)} pairs in {len(set(groups))} groups of the same two responses"
        )
    result = run_loop(
        model,
        objective,
        train_rows,
        eval_rows,
        cfg.train,
        out,
        run_config=to_dict(cfg),
        accelerator=accelerator,
        groups=groups,
    )
    if not result.is_main:
        return {}
    # 6. KL to the reference on the policy's own samples (held-out prompts)
    kl = {}
    if result.model_state is not None and cfg.eval_kl_samples > 0:  # sampling would need every process's shards
        notes.append("eval_kl_samples: skipped under FSDP / ZeRO-3 (the sampled KL needs whole weights in one process)")
    elif eval_pairs and cfg.eval_kl_samples > 0:
        kl = _sampled_kl(model, tokenizer, reference, [p.prompt_ids for p in eval_pairs[: cfg.eval_kl_samples]], cfg)
    # 7. save and summarize
    return finish_run(
        out,
        "dpo",
        model,
        tokenizer,
        result,
        notes,
        len(train_rows),
        len(eval_rows),
        eval_extra=kl,
        loss=cfg.loss.name,
        tie_pairs=n_ties,
        ties=cfg.loss.ties,
    )


def _sampled_kl(model: Any, tokenizer: Any, reference: Reference, prompts: list[list[int]], cfg: DPOConfig):
    """KL(pi || ref) on the policy's own samples of held-out prompts (temperature 1, no truncation)."""
    sampling = SamplingConfig(max_new_tokens=cfg.eval_kl_tokens, batch_size=8, backend="hf")
    with torch.random.fork_rng():
        torch.manual_seed(cfg.train.seed)
        ro, kl = sample_with_kl(
            make_engine(model, tokenizer, sampling), prompts, sampling_params(sampling), reference, 8
        )
    length = ro.response_mask.sum(-1)
    return {
        "kl/kl_per_sequence": float(kl.mean()),
        "kl/kl_per_token": float(kl.sum() / length.sum().clamp(min=1)),
        "kl/sample_length": float(length.float().mean()),
    }
