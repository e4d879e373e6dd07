"""Padding, SFT labels, chosen/rejected stacking, and packing (checked against plain loops and a real forward)."""

from __future__ import annotations

import random

import pytest
import torch

from rlhfkit.data import ChatFormatter, Encoded, SFTExample, collate_pairs, collate_sft, pack_sequences, pad_batch
from rlhfkit.models.tiny import tiny_causal_lm, tiny_tokenizer


def test_pad_batch_right_and_left() -> None:
    ids, mask = pad_batch([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert ids.dtype == torch.long and mask.dtype == torch.long
    ids, mask = pad_batch([[5, 6, 7], [8], []], pad_id=9, side="left")
    assert ids.tolist() == [[5, 6, 7], [9, 9, 8], [9, 9, 9]] and mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 0, 0]]
    with pytest.raises(ValueError, match="side"):
        pad_batch([[1]], 0, side="middle")
    with pytest.raises(ValueError, match="at least one"):
        pad_batch([], 0)


def test_collate_sft_labels() -> None:
    batch = collate_sft([Encoded([1, 2, 3, 4], [0, 0, 1, 1]), Encoded([5, 6], [0, 1])], pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4], [5, 6, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, -100, 3, 4], [-100, 6, -100, -100]]
    assert "position_ids" not in batch


def test_collate_pairs_matches_a_loop() -> None:
    rng = random.Random(0)
    pairs = [
        ([rng.randrange(3, 50) for _ in range(rng.randint(1, 6))], [7] * rng.randint(1, 5), [8] * rng.randint(1, 5))
        for _ in range(4)
    ]
    batch = collate_pairs(pairs, pad_id=0)
    B = len(pairs)
    assert batch["input_ids"].shape[0] == 2 * B and batch["prompt_lens"].tolist() == [len(p) for p, _, _ in pairs] * 2
    for row in range(2 * B):
        p, c, r = pairs[row % B]
        completion = c if row < B else r  # chosen rows first, then rejected rows
        n = len(p) + len(completion)
        assert batch["input_ids"][row, :n].tolist() == p + completion
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (batch["input_ids"].shape[1] - n)
        assert batch["loss_mask"][row].tolist() == [0] * len(p) + [1] * len(completion) + [0] * (
            batch["input_ids"].shape[1] - n
        )
    left = collate_pairs(pairs, pad_id=0, side="left")
    assert (left["loss_mask"].sum(1) == batch["loss_mask"].sum(1)).all()
    assert (left["input_ids"][:, -1] != 0).all()


def test_pack_sequences_fits_preserves_tokens_and_resets_positions() -> None:
    rng = random.Random(1)
    encoded = []
    for i in range(30):
        n = rng.randint(1, 20)
        encoded.append(Encoded([100 + i] * n, [0] + [rng.randint(0, 1) for _ in range(n - 1)]))
    packed = pack_sequences(encoded, max_length=32)
    assert all(len(p.input_ids) <= 32 for p in packed)
    assert len(packed) <= -(-sum(len(e.input_ids) for e in encoded) // 32) + 2  # near the lower bound
    segments = []
    for p in packed:
        assert len(p.input_ids) == len(p.loss_mask) == len(p.position_ids or [])
        starts = [i for i, pos in enumerate(p.position_ids or []) if pos == 0]
        for a, b in zip(starts, starts[1:] + [len(p.input_ids)]):
            segments.append((p.input_ids[a:b], p.loss_mask[a:b], (p.position_ids or [])[a:b]))
    assert sorted(s[0] for s in segments) == sorted(e.input_ids for e in encoded)  # every sequence exactly once
    by_ids = {tuple(e.input_ids): e for e in encoded}
    for ids, mask, pos in segments:
        assert pos == list(range(len(ids)))
        assert mask == [0] + by_ids[tuple(ids)].loss_mask[1:]  # segment starts are never targets
    with pytest.raises(ValueError, match="truncate first"):
        pack_sequences([Encoded([1] * 40, [1] * 40)], max_length=32)


def test_packed_segment_matches_unpacked_forward_with_flash_style_positions() -> None:
    """Position ids restart per segment: with a block-diagonal mask the packed forward equals separate forwards."""
    tok = tiny_tokenizer()
    model = tiny_causal_lm(tok).eval()
    fmt = ChatFormatter(tok, max_length=128, max_prompt_length=64)
    a = fmt.encode_sft(SFTExample(({"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"})))
    b = fmt.encode_sft(SFTExample(({"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"})))
    assert a is not None and b is not None
    [packed] = pack_sequences([a, b], max_length=128)
    batch = collate_sft([packed], pad_id=tok.pad_token_id)
    n_a = len(a.input_ids)
    T = len(packed.input_ids)
    # 4D additive mask: causal inside each segment, nothing across segments (what varlen flash attention does).
    seg = torch.tensor([0] * n_a + [1] * (T - n_a))
    allowed = (seg[:, None] == seg[None, :]) & torch.ones(T, T, dtype=torch.bool).tril()
    mask4d = torch.zeros(1, 1, T, T).masked_fill(~allowed, torch.finfo(torch.float32).min)
    with torch.no_grad():
        packed_logits = model(
            input_ids=batch["input_ids"], attention_mask=mask4d, position_ids=batch["position_ids"]
        ).logits[0]
        solo_a = model(input_ids=torch.tensor([a.input_ids])).logits[0]
        solo_b = model(input_ids=torch.tensor([b.input_ids])).logits[0]
    torch.testing.assert_close(packed_logits[:n_a], solo_a, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed_logits[n_a:], solo_b, atol=1e-5, rtol=1e-5)
