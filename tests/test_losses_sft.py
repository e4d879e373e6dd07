"""rlhfkit.losses.sft and rlhfkit.losses.aggregation (how token losses become one scalar, accumulation-invariant)."""

from __future__ import annotations

import math

import pytest
import torch

from rlhfkit.losses import aggregate, aggregate_sum_and_count, sft_loss

# ----------------------------------------------------------------------------------------------------------------------
# sft_loss


def test_sft_loss_hand_value_and_mask() -> None:
    # vocabulary of 3; logits [0, 0, ln 2] -> p = [1/4, 1/4, 1/2]
    row = [0.0, 0.0, math.log(2)]
    logits = torch.tensor([[row, row, row]])  # (1, 3, 3)
    labels = torch.tensor([[2, 0, -100]])
    mask = torch.tensor([[1, 1, 0]])
    nll = sft_loss(logits, labels, mask)
    assert nll.dtype == torch.float32 and nll.shape == (1, 3)
    assert nll.tolist()[0] == pytest.approx([math.log(2), math.log(4), 0.0], rel=1e-6)
    masked = sft_loss(logits, labels, torch.tensor([[0, 1, 0]]))
    assert masked.tolist()[0] == pytest.approx([0.0, math.log(4), 0.0], rel=1e-6)
    assert sft_loss(logits, labels).tolist()[0] == pytest.approx([math.log(2), math.log(4), 0.0], rel=1e-6)


def test_sft_loss_matches_cross_entropy_on_shifted_tokens() -> None:
    g = torch.Generator().manual_seed(0)
    full_logits = torch.randn(2, 6, 9, generator=g, requires_grad=True)
    input_ids = torch.randint(0, 9, (2, 6), generator=g)
    mask = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 1, 0]])
    nll = sft_loss(full_logits[:, :-1], input_ids[:, 1:], mask, chunk_size=3)
    labels = input_ids[:, 1:].masked_fill(mask == 0, -100)
    ce = torch.nn.functional.cross_entropy(full_logits[:, :-1].reshape(-1, 9), labels.reshape(-1), reduction="sum")
    torch.testing.assert_close(nll.sum(), ce)
    (g1,) = torch.autograd.grad(nll.sum(), full_logits)
    (g2,) = torch.autograd.grad(ce, full_logits)
    torch.testing.assert_close(g1, g2)


def test_sft_loss_unshifted_inputs_raise() -> None:
    logits = torch.zeros(2, 6, 9)
    with pytest.raises(ValueError, match=r"input_ids\[:, 1:\]"):
        sft_loss(logits, torch.zeros(2, 5, dtype=torch.long), None)


# ----------------------------------------------------------------------------------------------------------------------
# aggregation

VALUES = torch.tensor([[1.0, 2.0, 3.0, 0.0], [4.0, 0.0, 0.0, 0.0], [5.0, 7.0, 0.0, 0.0]])
MASK = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 0, 0]])


def test_aggregate_modes_hand_values() -> None:
    assert aggregate(VALUES, MASK, "token-mean").item() == pytest.approx(22 / 6)
    assert aggregate(VALUES, MASK, "sequence-mean").item() == pytest.approx((2.0 + 4.0 + 6.0) / 3)
    assert aggregate(VALUES, MASK, "sum").item() == pytest.approx(22.0)
    assert aggregate(VALUES, MASK, "sum", normalizer=11.0).item() == pytest.approx(2.0)  # Dr. GRPO-style constant
    assert aggregate(VALUES, MASK, "token-mean", normalizer=torch.tensor(44.0)).item() == pytest.approx(0.5)


def test_aggregate_per_sequence_values_and_empty_rows() -> None:
    per_seq = torch.tensor([1.0, 2.0, 6.0])
    assert aggregate(per_seq, None, "token-mean").item() == pytest.approx(3.0)
    assert aggregate(per_seq, torch.tensor([1, 0, 1]), "sequence-mean").item() == pytest.approx(3.5)
    mask = MASK.clone()
    mask[1] = 0  # a sequence with no tokens counts neither as a token nor as a sequence
    assert aggregate(VALUES, mask, "sequence-mean").item() == pytest.approx((2.0 + 6.0) / 2)
    assert aggregate_sum_and_count(VALUES, mask, "sequence-mean")[1].item() == 2
    assert aggregate(VALUES, torch.zeros_like(MASK), "token-mean").item() == 0.0  # not NaN


@pytest.mark.parametrize("mode", ["token-mean", "sequence-mean", "sum"])
def test_global_normalizer_makes_accumulation_invariant(mode: str) -> None:
    g = torch.Generator().manual_seed(1)
    params = torch.randn(8, 5, generator=g, requires_grad=True)
    mask = (torch.rand(8, 5, generator=g) > 0.4).float()
    mask[:, 0] = 1

    full = aggregate(params**2, mask, mode)
    (g_full,) = torch.autograd.grad(full, params)

    # 4 micro-batches of 2: the trainer first collects the global denominator, then sums micro-batch losses.
    chunks = [slice(i, i + 2) for i in range(0, 8, 2)]
    if mode == "sum":
        normalizer = None
    else:
        normalizer = sum(aggregate_sum_and_count(params[s] ** 2, mask[s], mode)[1] for s in chunks)
    accumulated = sum(aggregate(params[s] ** 2, mask[s], mode, normalizer=normalizer) for s in chunks)
    (g_acc,) = torch.autograd.grad(accumulated, params)
    torch.testing.assert_close(accumulated, full)
    torch.testing.assert_close(g_acc, g_full)

    # a LOCAL mean per micro-batch is not invariant (this is why the normalizer exists)
    if mode == "token-mean":
        local = sum(aggregate(params[s] ** 2, mask[s], mode) for s in chunks) / len(chunks)
        assert not torch.allclose(local, full)


def test_aggregate_errors() -> None:
    with pytest.raises(ValueError, match="valid"):
        aggregate(VALUES, MASK, "mean")
    with pytest.raises(ValueError, match="mask shape"):
        aggregate(VALUES, MASK[:, :2], "token-mean")
    with pytest.raises(ValueError, match="normalizer"):
        aggregate(VALUES, MASK, "token-mean", normalizer=0)
