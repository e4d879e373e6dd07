"""Encoded preference pairs and unpaired rows: what the reward model, DPO and KTO trainers train on."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rlhfkit.data.collate import collate_pairs, pad_batch


@dataclass(frozen=True)
class EncodedPair:
    """A tokenized preference pair and its feedback metadata."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    tie: bool = False
    strength: float = 0.0
    confidence: float = 1.0
    rater: str | None = None
    index: int = 0
    dimensions: tuple[tuple[str, str], ...] = ()
    """Per rubric dimension: "chosen", "rejected" or "tie" (see PreferenceExample)."""


def encode_pairs(examples: Sequence[Any], formatter: Any) -> list[EncodedPair]:
    """Tokenize preference examples; rows the truncation policy drops are skipped (the formatter counts them)."""
    out = []
    for i, ex in enumerate(examples):
        enc = formatter.encode_pair(ex)
        if enc is None:
            continue
        p, c, r = enc
        out.append(
            EncodedPair(
                p,
                c,
                r,
                tie=bool(ex.tie),
                strength=float(ex.strength or 0.0),
                confidence=1.0 if ex.confidence is None else float(ex.confidence),
                rater=ex.rater,
                index=i,
                dimensions=tuple(getattr(ex, "dimensions", ())),
            )
        )
    return out


def collate_pair_batch(rows: Sequence[EncodedPair], pad_id: int) -> dict[str, torch.Tensor]:
    """Chosen rows first, then rejected rows: one forward pass scores both. Adds tie/strength/confidence tensors."""
    batch = collate_pairs([(r.prompt_ids, r.chosen_ids, r.rejected_ids) for r in rows], pad_id)
    batch["tie"] = torch.tensor([r.tie for r in rows], dtype=torch.bool)
    batch["strength"] = torch.tensor([r.strength for r in rows], dtype=torch.float32)
    batch["confidence"] = torch.tensor([r.confidence for r in rows], dtype=torch.float32)
    batch["index"] = torch.tensor([r.index for r in rows], dtype=torch.long)
    return batch


PairRow = EncodedPair | tuple[EncodedPair, ...]
"""A training row: one pair, or (group_pairs=true) every pair of one prompt."""


def _pairs(rows: Sequence[PairRow]) -> list[EncodedPair]:
    return [p for row in rows for p in (row if isinstance(row, tuple) else (row,))]


def group_by_prompt(pairs: Sequence[EncodedPair], keys: Sequence[Any] | None = None) -> list[tuple[EncodedPair, ...]]:
    """Pairs of the same prompt as one row, in first-seen order. keys: one hashable prompt identity per pair (default:
    the prompt's token ids; pass the untruncated prompt when the ids keep only its end)."""
    groups: dict[Any, list[EncodedPair]] = {}
    for i, p in enumerate(pairs):
        groups.setdefault(keys[i] if keys is not None else tuple(p.prompt_ids), []).append(p)
    return [tuple(g) for g in groups.values()]


def collate_scored_pairs(rows: Sequence[PairRow], pad_id: int) -> dict[str, torch.Tensor]:
    """Each distinct prompt + response sequence once (right-padded), and for every pair the index of its chosen and
    rejected sequence: a response that is in several pairs (K responses, K(K-1)/2 pairs, several raters) is scored
    once. Adds the pairs' tie / strength / confidence / index tensors."""
    pairs = _pairs(rows)
    seqs: dict[tuple[int, ...], int] = {}
    where = [
        seqs.setdefault(tuple(p.prompt_ids) + tuple(side), len(seqs))
        for p in pairs
        for side in (p.chosen_ids, p.rejected_ids)
    ]
    ids, mask = pad_batch([list(s) for s in seqs], pad_id)
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "chosen_index": torch.tensor(where[0::2], dtype=torch.long),
        "rejected_index": torch.tensor(where[1::2], dtype=torch.long),
        "tie": torch.tensor([p.tie for p in pairs], dtype=torch.bool),
        "strength": torch.tensor([p.strength for p in pairs], dtype=torch.float32),
        "confidence": torch.tensor([p.confidence for p in pairs], dtype=torch.float32),
        "index": torch.tensor([p.index for p in pairs], dtype=torch.long),
    }


DIMENSION_SIGN = {"chosen": 1, "rejected": -1, "tie": 0}
"""A dimension's label as the sign of r_chosen - r_rejected it asks for (0: a tie)."""


def dimension_labels(rows: Sequence[PairRow], objectives: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(label (P, K) long in {+1 chosen won, -1 rejected won, 0 tie}, present (P, K) bool) for the pairs of `rows`, in
    the order of `collate_scored_pairs`, with one column per objective; a pair without that dimension is absent."""
    pairs = _pairs(rows)
    label = torch.zeros(len(pairs), len(objectives), dtype=torch.long)
    present = torch.zeros(len(pairs), len(objectives), dtype=torch.bool)
    column = {name: k for k, name in enumerate(objectives)}
    for i, p in enumerate(pairs):
        for name, value in p.dimensions:
            k = column.get(name)
            if k is not None:
                label[i, k], present[i, k] = DIMENSION_SIGN[value], True
    return label, present


@dataclass(frozen=True)
class UnpairedRow:
    prompt_ids: list[int]
    completion_ids: list[int]
    label: bool


def encode_unpaired(examples: Sequence[Any], formatter: Any) -> list[UnpairedRow]:
    out = []
    for ex in examples:
        enc = formatter.encode_unpaired(ex)
        if enc is not None:
            out.append(UnpairedRow(enc[0], enc[1], bool(ex.label)))
    return out


def encode_all(examples: Sequence[Any], encode: Any) -> list[Any]:
    """Encode rows, dropping the ones the truncation policy rejects (encode returns None)."""
    out = []
    for ex in examples:
        enc = encode(ex)
        if enc is not None:
            out.append(enc)
    return out
