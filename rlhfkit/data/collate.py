"""Batching: padding, SFT labels, chosen/rejected pairs in one forward, and greedy sequence packing.

All masks are unshifted: ``loss_mask[b, t] = 1`` means token t is a target; the caller shifts (logits at t-1 predict t).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import torch

from rlhfkit.data.templates import Encoded

IGNORE_INDEX = -100  # what torch / HF cross-entropy ignores


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int, side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention_mask), both LongTensor (B, T) with T = longest sequence; left padding for generation."""
    if side not in ("right", "left"):
        raise ValueError(f'side must be "right" or "left", got {side!r}')
    if not seqs:
        raise ValueError("pad_batch needs at least one sequence")
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if not s:
            continue
        span = slice(0, len(s)) if side == "right" else slice(width - len(s), width)
        ids[i, span] = torch.as_tensor(list(s), dtype=torch.long)
        mask[i, span] = 1
    return ids, mask


def collate_sft(encoded: Sequence[Encoded], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """input_ids, attention_mask, labels (= input_ids, -100 outside the loss mask; unshifted, HF convention).

    Packed examples (with position_ids) also get ``position_ids`` (B, T), padded with 0.
    """
    ids, attention = pad_batch([e.input_ids for e in encoded], pad_id)
    loss_mask, _ = pad_batch([e.loss_mask for e in encoded], 0)
    batch = {"input_ids": ids, "attention_mask": attention, "labels": ids.masked_fill(loss_mask == 0, IGNORE_INDEX)}
    if all(e.position_ids is not None for e in encoded):
        batch["position_ids"], _ = pad_batch([e.position_ids for e in encoded], 0)  # type: ignore[misc]
    return batch


def collate_pairs(
    pairs: Sequence[tuple[Sequence[int], Sequence[int], Sequence[int]]], pad_id: int, side: str = "right"
) -> dict[str, torch.Tensor]:
    """Stack prompt+chosen rows then prompt+rejected rows, so one forward pass scores both sides.

    Returns input_ids, attention_mask, loss_mask (2B, T) -- rows 0..B-1 chosen, B..2B-1 rejected; loss_mask is 1 on
    completion tokens -- and prompt_lens (2B,), the prompt length of each row.
    """
    if not pairs:
        raise ValueError("collate_pairs needs at least one pair")
    rows = [list(p) + list(c) for p, c, _ in pairs] + [list(p) + list(r) for p, _, r in pairs]
    completion_masks = [[0] * len(p) + [1] * len(c) for p, c, _ in pairs]
    completion_masks += [[0] * len(p) + [1] * len(r) for p, _, r in pairs]
    ids, attention = pad_batch(rows, pad_id, side)
    loss_mask, _ = pad_batch(completion_masks, 0, side)
    prompt_lens = torch.tensor([len(p) for p, _, _ in pairs] * 2, dtype=torch.long)
    return {"input_ids": ids, "attention_mask": attention, "loss_mask": loss_mask, "prompt_lens": prompt_lens}


def pack_sequences(encoded: Sequence[Encoded], max_length: int) -> list[Encoded]:
    """Greedy best-fit-decreasing packing of sequences into rows of at most ``max_length`` tokens.

    Each packed row carries ``position_ids`` that restart at 0 per segment. That is all that separates segments:
    HF models with flash-attention 2 turn restarting position_ids (batch of one row, no padding mask) into
    variable-length attention, so segments do not see each other; with eager / SDPA attention a segment CAN attend to
    earlier segments of its row. The first token of every segment is never a target, so no loss crosses a boundary.
    """
    if max_length <= 0:
        raise ValueError(f"max_length must be positive, got {max_length}")
    for i, e in enumerate(encoded):
        if len(e.input_ids) > max_length:
            raise ValueError(f"sequence {i} has {len(e.input_ids)} tokens > max_length={max_length}; truncate first")
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i].input_ids))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # sorted (remaining capacity, bin index)
    for i in order:
        need = len(encoded[i].input_ids)
        if need == 0:
            continue
        k = bisect.bisect_left(free, (need, -1))  # tightest bin that still fits
        if k < len(free):
            room, b = free.pop(k)
        else:
            room, b = max_length, len(bins)
            bins.append([])
        bins[b].append(i)
        bisect.insort(free, (room - need, b))
    packed: list[Encoded] = []
    for members in bins:
        members.sort()  # keep the original order inside a row
        ids: list[int] = []
        mask: list[int] = []
        pos: list[int] = []
        for i in members:
            e = encoded[i]
            ids += e.input_ids
            mask += [0] + list(e.loss_mask[1:])
            pos += list(range(len(e.input_ids)))
        packed.append(Encoded(ids, mask, pos, any(encoded[i].truncated for i in members)))
    return packed
