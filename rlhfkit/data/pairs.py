"""Encoded preference pairs and unpaired rows: what the reward model, DPO and KTO trainers train on."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rlhfkit.data.collate import collate_pairs


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
