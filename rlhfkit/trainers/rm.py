"""Reward model: a scalar head on a causal LM, trained with Bradley–Terry (ties, margins, confidence weights); with
`objectives`, one head per rubric dimension, each trained on the rows' per-dimension labels."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlhfkit.config import ConfigError, RewardLossConfig, RMConfig, to_dict
from rlhfkit.data import (
    ChatFormatter,
    EncodedPair,
    PairRow,
    collate_scored_pairs,
    encode_pairs,
    group_by_prompt,
    load_train_eval,
)
from rlhfkit.data.pairs import dimension_labels
from rlhfkit.eval.metrics import (
    expected_calibration_error,
    pairwise_accuracy,
    pairwise_auc,
    pairwise_probabilities,
    per_group_accuracy,
)
from rlhfkit.losses.reward import multi_head_reward_loss, reward_loss
from rlhfkit.models.head import sequence_scores
from rlhfkit.rewards.sources import ENCODING_FILE
from rlhfkit.trainers.common import check_models, check_rows, finish_run, load_for_training, write_run_files
from rlhfkit.trainers.loop import eval_batches, run_loop


def pair_scores(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], padding_free: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(r_chosen (B,), r_rejected (B,)) from one forward over the batch's distinct sequences (packed into one row
    when padding_free)."""
    scores = sequence_scores(model, batch["input_ids"], batch["attention_mask"], padding_free)
    return scores[batch["chosen_index"]], scores[batch["rejected_index"]]


class RewardObjective:
    """Bradley–Terry over pairs; with `ties=True` the tie model (Davidson / Rao–Kupper) replaces it for every pair."""

    def __init__(
        self,
        pad_id: int,
        loss_cfg: RewardLossConfig,
        eval_batch_size: int = 8,
        gap_rows: Sequence = (),
        ties: bool = True,
        padding_free: bool = False,
    ):
        self.pad_id, self.cfg, self.eval_batch_size, self.ties = pad_id, loss_cfg, eval_batch_size, ties
        self.padding_free = padding_free
        self.gap_rows = list(gap_rows)  # a training sample scored at evaluation for the train-held-out gap

    def collate(self, rows: Sequence[PairRow]) -> dict[str, torch.Tensor]:
        return collate_scored_pairs(rows, self.pad_id)

    def count(self, batch: dict[str, torch.Tensor]) -> float:
        return float(batch["tie"].numel())  # sequence-mean over pairs

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        r_c, r_r = pair_scores(model, batch, self.padding_free)
        c = self.cfg
        per_pair = reward_loss(
            r_c,
            r_r,
            tie=batch["tie"] if self.ties else None,  # data without ties: plain Bradley–Terry
            margin=batch["strength"] * c.margin_scale if c.use_margin else None,
            weight=batch["confidence"] if c.use_confidence else None,
            tie_model=c.tie_model,
            tie_param=c.tie_param,
            magnitude_penalty=c.magnitude_penalty,
        )
        decided = ~batch["tie"]
        acc = float((r_c > r_r).float()[decided].mean()) if decided.any() else float("nan")
        return per_pair.sum(), {"accuracy": acc, "margin": float((r_c - r_r).detach().mean())}

    @torch.no_grad()
    def score_pairs(self, model: torch.nn.Module, rows: Sequence[EncodedPair]) -> tuple[np.ndarray, np.ndarray]:
        """(chosen scores, rejected scores) in the order of `rows`. Pairs of one prompt go into the same batch, so
        each distinct sequence is scored once (K responses labelled pairwise by several raters: K forwards, not
        2 per label); a batch holds about 2 x eval_batch_size distinct sequences."""
        if not rows:
            return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.float32)
        device = next(model.parameters()).device
        chunks = _chunks_by_prompt(rows, 2 * self.eval_batch_size)
        chosen, rejected = [], []
        for batch in eval_batches(self, [tuple(rows[i] for i in c) for c in chunks], device, 1):
            r_c, r_r = pair_scores(model, batch, self.padding_free)
            chosen.append(r_c.cpu().numpy())
            rejected.append(r_r.cpu().numpy())
        at = np.array([i for c in chunks for i in c], dtype=np.int64)
        by_chunk_c, by_chunk_r = np.concatenate(chosen), np.concatenate(rejected)
        out_c, out_r = np.empty_like(by_chunk_c), np.empty_like(by_chunk_r)
        out_c[at], out_r[at] = by_chunk_c, by_chunk_r
        return out_c, out_r

    def evaluate(self, model: torch.nn.Module, rows: Sequence[EncodedPair]) -> dict[str, float]:
        return reward_model_report(self, model, rows, self.gap_rows)


def _chunks_by_prompt(rows: Sequence[EncodedPair], max_sequences: int) -> list[list[int]]:
    """Row positions in chunks: the pairs of one prompt (first-seen order) stay together, and prompts are added to a
    chunk until it holds `max_sequences` distinct sequences (one prompt with more is a chunk of its own)."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(tuple(r.prompt_ids), []).append(i)
    chunks: list[list[int]] = []
    size = 0
    for positions in groups.values():
        n = len({tuple(rows[i].chosen_ids) for i in positions} | {tuple(rows[i].rejected_ids) for i in positions})
        if not chunks or size + n > max_sequences:
            chunks.append([])
            size = 0
        chunks[-1].extend(positions)
        size += n
    return chunks


class MultiHeadRewardObjective(RewardObjective):
    """One Bradley–Terry term per (pair, head) whose dimension the pair labels; the normalizer counts those terms."""

    def __init__(self, pad_id: int, loss_cfg: RewardLossConfig, objectives: Sequence[str], **kwargs: Any):
        super().__init__(pad_id, loss_cfg, **kwargs)
        self.objectives = list(objectives)

    def collate(self, rows: Sequence[PairRow]) -> dict[str, torch.Tensor]:
        batch = collate_scored_pairs(rows, self.pad_id)
        batch["label"], batch["present"] = dimension_labels(rows, self.objectives)  # (P, K) each
        return batch

    def count(self, batch: dict[str, torch.Tensor]) -> float:
        return float(batch["present"].sum())

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        r_c, r_r = pair_scores(model, batch, self.padding_free)  # (P, K) each
        label, present = batch["label"], batch["present"]
        c = self.cfg
        per = multi_head_reward_loss(
            r_c,
            r_r,
            label,
            present,
            ties=self.ties,
            weight=batch["confidence"] if c.use_confidence else None,
            tie_model=c.tie_model,
            tie_param=c.tie_param,
            magnitude_penalty=c.magnitude_penalty,
        )  # (P, K)
        decided = present & (label != 0)
        right = ((r_c - r_r).sign() == label.to(r_c.dtype)) & decided
        acc = float(right.sum() / decided.sum()) if decided.any() else float("nan")
        return per.sum(), {"accuracy": acc}

    def evaluate(self, model: torch.nn.Module, rows: Sequence[EncodedPair]) -> dict[str, float]:
        """Per head: held-out accuracy and AUC on the pairs it has a decided label for; "accuracy" is their mean."""
        r_c, r_r = self.score_pairs(model, rows)  # (P, K) each
        label, present = (t.numpy() for t in dimension_labels(rows, self.objectives))
        out: dict[str, float] = {"pairs": float(len(rows))}
        accs = []
        for k, name in enumerate(self.objectives):
            d = present[:, k] & (label[:, k] != 0)
            if not d.any():
                continue
            win = np.where(label[d, k] > 0, r_c[d, k], r_r[d, k])
            lose = np.where(label[d, k] > 0, r_r[d, k], r_c[d, k])
            out[f"accuracy/{name}"] = float(pairwise_accuracy(win, lose))
            out[f"auc/{name}"] = float(pairwise_auc(win, lose))
            out[f"pairs/{name}"] = float(d.sum())
            out[f"score_mean/{name}"] = float(np.mean(np.concatenate([r_c[:, k], r_r[:, k]])))
            accs.append(out[f"accuracy/{name}"])
        if accs:
            out["accuracy"] = float(np.mean(accs))
        return out


def check_objectives(objectives: Sequence[str], examples: Sequence[Any], data_file: str) -> list[str]:
    """Before any model loads: every objective has labelled training pairs; returns notes (the pairs per objective)."""
    counts = dict.fromkeys(objectives, 0)
    seen: set[str] = set()
    unused = 0
    for ex in examples:
        names = {n for n, _ in ex.dimensions}
        seen |= names
        unused += not (names & counts.keys())
        for n in names & counts.keys():
            counts[n] += 1
    for name, n in counts.items():
        if n == 0:
            raise ConfigError(
                f'objectives: no training pair in {data_file} has a "dimensions" label for "{name}" '
                f"(dimensions in the rows: {', '.join(sorted(seen)) or 'none'})"
            )
    notes = ["objectives: " + ", ".join(f"{o} on {n} pairs" for o, n in counts.items())]
    if unused:
        notes.append(f"objectives: {unused} training pairs label none of them (they train nothing)")
    return notes


def reward_model_report(
    objective: RewardObjective, model: torch.nn.Module, rows: Sequence[EncodedPair], train_sample: Sequence = ()
) -> dict[str, float]:
    """Held-out accuracy, ROC AUC, calibration error, mean margin, per-rater accuracy and the train-held-out gap."""
    r_c, r_r = objective.score_pairs(model, rows)
    tie = np.array([r.tie for r in rows], dtype=bool)
    decided = ~tie
    out: dict[str, float] = {"pairs": float(len(rows)), "ties": float(tie.sum())}
    if decided.any():
        out["accuracy"] = float(pairwise_accuracy(r_c[decided], r_r[decided]))
        out["auc"] = float(pairwise_auc(r_c[decided], r_r[decided]))
        # P(chosen wins | not a tie) under the tie model the reward model was trained with (Bradley–Terry without ties)
        tie_model = objective.cfg.tie_model if objective.ties else "bradley-terry"
        probs = pairwise_probabilities(
            r_c[decided], r_r[decided], tie_model=tie_model, tie_param=objective.cfg.tie_param
        )
        out["ece"] = float(expected_calibration_error(*probs))
        out["margin"] = float(np.mean(r_c[decided] - r_r[decided]))
        raters = [r.rater for r, d in zip(rows, decided) if d]
        if any(raters):
            for rater, (acc, n) in per_group_accuracy(
                r_c[decided], r_r[decided], [x or "unknown" for x in raters]
            ).items():
                out[f"accuracy/{rater}"] = float(acc)
                out[f"pairs/{rater}"] = float(n)
    if train_sample:
        t_c, t_r = objective.score_pairs(model, train_sample)
        t_tie = np.array([r.tie for r in train_sample], dtype=bool)
        if (~t_tie).any():
            out["train_accuracy"] = float(pairwise_accuracy(t_c[~t_tie], t_r[~t_tie]))
            if "accuracy" in out:
                out["train_heldout_gap"] = out["train_accuracy"] - out["accuracy"]
    out["score_mean"] = float(np.mean(np.concatenate([r_c, r_r])))
    out["score_std"] = float(np.std(np.concatenate([r_c, r_r])))
    return {k: v for k, v in out.items() if not (isinstance(v, float) and math.isnan(v))}


def train_rm(cfg: RMConfig) -> dict[str, Any]:
    """Train a reward model; writes cfg.train.output_dir (model/ reloads with transformers alone)."""
    out = Path(cfg.train.output_dir)
    # 1. preference / ranking rows, validated before any model is loaded
    train_ex, eval_ex, notes = load_train_eval(cfg.data, "preference", cfg.train.seed)
    if cfg.group_pairs:
        check_rows(len({json.dumps(ex.prompt, sort_keys=True) for ex in train_ex}), cfg.train, "training prompts")
    else:
        check_rows(len(train_ex), cfg.train, "training pairs")
    objectives = [o.strip() for o in cfg.objectives]
    if objectives:
        notes += check_objectives(objectives, train_ex, cfg.data.train)
    check_models(cfg.model)
    write_run_files(out, cfg, "rm")
    # 2. base model with a scalar head (one per objective); rows -> tokenized pairs
    model, tokenizer = load_for_training(cfg.model, "reward", cfg.train.seed, heads=objectives or None)
    fmt = ChatFormatter(tokenizer, cfg.data.max_length, cfg.data.prompt_length, cfg.data.truncation)
    train_pairs, eval_rows = encode_pairs(train_ex, fmt), encode_pairs(eval_ex, fmt)
    notes.append(f"truncation: {fmt.report}")
    # a seeded training sample as large as the held-out set (capped) is scored too: the train-held-out gap
    gap = random.Random(cfg.train.seed).sample(train_pairs, min(len(eval_rows), 64, len(train_pairs)))
    ties = any(r.tie for r in train_pairs)
    notes.append(
        f"ties: {sum(r.tie for r in train_pairs)} tie pairs ({cfg.loss.tie_model} model)" if ties else "ties: none"
    )
    train_rows: list[PairRow] = list(train_pairs)
    if cfg.group_pairs:  # one row per prompt: each response is scored once per step, whatever its number of pairs
        keys = [json.dumps(train_ex[p.index].prompt, sort_keys=True) for p in train_pairs]  # before truncation
        train_rows = group_by_prompt(train_pairs, keys)
        notes.append(f"group_pairs: {len(train_pairs)} pairs of {len(train_rows)} prompts, a prompt per row")
    # 3. the loop
    kwargs: dict[str, Any] = {"padding_free": cfg.model.padding_free}
    if objectives:  # ties in any dimension switch on the tie model
        ties = any(v == "tie" for r in train_pairs for _, v in r.dimensions)
        objective: RewardObjective = MultiHeadRewardObjective(
            tokenizer.pad_token_id, cfg.loss, objectives, ties=ties, **kwargs
        )
    else:
        objective = RewardObjective(tokenizer.pad_token_id, cfg.loss, gap_rows=gap, ties=ties, **kwargs)
    result = run_loop(model, objective, train_rows, eval_rows, cfg.train, out, run_config=to_dict(cfg))
    # 4. save (Hugging Face sequence-classification format) and summarize
    if not result.is_main:
        return {}
    summary = finish_run(out, "rm", model, tokenizer, result, notes, len(train_pairs), len(eval_rows))
    # how pairs were encoded, so that a reward source scores new responses the same way (rewards/sources.py)
    encoding: dict[str, Any] = {"max_length": cfg.data.max_length, "max_prompt_length": cfg.data.prompt_length}
    if objectives:
        encoding["objectives"] = objectives
    (Path(summary["model"]) / ENCODING_FILE).write_text(json.dumps(encoding) + "\n")
    return summary
