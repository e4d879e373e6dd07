"""rlhfkit.ops: chunked log-probs / entropy against naive full-vocabulary references, masked statistics, KL estimators."""

from __future__ import annotations

import math

import pytest
import torch

from rlhfkit.ops import (
    KL_ESTIMATORS,
    entropy_from_logits,
    kl_estimate,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
    sequence_logprobs,
    token_logprobs,
)

B, T, V = 3, 5, 11


def _naive_logprobs(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)  # full (B, T, V) fp32: the thing ops avoids
    valid = labels >= 0
    picked = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return torch.where(valid, picked, torch.zeros_like(picked))


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g, dtype=torch.float64) * 3
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[0, 1] = -100
    labels[2, 4] = -100
    return logits, labels


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 4, 7, B * T, 1000])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_logprobs_matches_naive_values_and_gradients(chunk_size: int, temperature: float) -> None:
    logits, labels = _inputs()
    weights = torch.randn(B, T, generator=torch.Generator().manual_seed(10), dtype=torch.float64)  # upstream gradient

    x1 = logits.clone().requires_grad_(True)
    out = token_logprobs(x1, labels, temperature=temperature, chunk_size=chunk_size)
    assert out.dtype == torch.float32 and out.shape == (B, T)
    (out.double() * weights).sum().backward()

    x2 = logits.clone().requires_grad_(True)
    ref = _naive_logprobs(x2, labels, temperature)
    (ref.double() * weights).sum().backward()

    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-5, atol=1e-6)


def test_token_logprobs_ignored_labels_are_zero_with_zero_gradient() -> None:
    logits, labels = _inputs()
    labels[1, :] = -1  # any negative value is ignored, not only -100
    x = logits.clone().requires_grad_(True)
    out = token_logprobs(x, labels, chunk_size=4)
    assert out[0, 1] == 0 and out[2, 4] == 0 and torch.all(out[1] == 0)
    out.sum().backward()
    assert torch.all(x.grad[1] == 0) and torch.all(x.grad[0, 1] == 0)
    assert torch.all(out[labels >= 0] < 0)


def test_token_logprobs_hand_value() -> None:
    # logits [0, ln 2, ln 3] / T=2 -> probabilities proportional to [1, sqrt 2, sqrt 3]
    logits = torch.tensor([[[0.0, math.log(2), math.log(3)]]])
    out = token_logprobs(logits, torch.tensor([[2]]), temperature=2.0)
    expected = math.log(math.sqrt(3) / (1 + math.sqrt(2) + math.sqrt(3)))
    assert out.item() == pytest.approx(expected, rel=1e-6)


def test_token_logprobs_bf16_and_noncontiguous_slice() -> None:
    logits, labels = _inputs(1)
    full = torch.cat([logits, logits[:, :1]], dim=1).bfloat16()  # (B, T+1, V); the slice below is non-contiguous
    sliced = full[:, :-1]
    assert not sliced.is_contiguous()
    x = sliced.detach().requires_grad_(True)
    out = token_logprobs(x, labels, chunk_size=4)
    assert out.dtype == torch.float32
    ref = _naive_logprobs(sliced.float(), labels, 1.0)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)  # bf16 inputs, fp32 math: exact up to fp32 rounding
    out.sum().backward()
    assert x.grad.dtype == torch.bfloat16 and x.grad.shape == sliced.shape


def test_inputs_are_not_modified_in_place() -> None:
    logits = _inputs()[0].float().requires_grad_(True)
    before = logits.detach().clone()
    token_logprobs(logits, _inputs()[1], temperature=0.5).sum().backward()
    entropy_from_logits(logits, temperature=0.5).sum().backward()
    assert torch.equal(logits.detach(), before)


def test_token_logprobs_shape_errors() -> None:
    logits, labels = _inputs()
    with pytest.raises(ValueError, match="shift"):
        token_logprobs(logits, labels[:, 1:])
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(logits, labels, temperature=0.0)
    with pytest.raises(ValueError, match="chunk_size"):
        token_logprobs(logits, labels, chunk_size=0)


def test_sequence_logprobs_sums_and_counts() -> None:
    logits, labels = _inputs(2)
    labels = labels.clamp(min=0)
    mask = torch.tensor([[0, 1, 1, 1, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]])
    total, count = sequence_logprobs(logits, labels, mask, temperature=0.9)
    ref = _naive_logprobs(logits, labels, 0.9)
    torch.testing.assert_close(total, (ref * mask).sum(-1).float(), rtol=1e-5, atol=1e-5)
    assert count.tolist() == [3.0, 5.0, 0.0]


@pytest.mark.parametrize("chunk_size", [1, 4, 1000])
def test_entropy_matches_naive_values_and_gradients(chunk_size: int) -> None:
    logits, _ = _inputs(3)
    weights = torch.randn(B, T, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    x1 = logits.clone().requires_grad_(True)
    out = entropy_from_logits(x1, chunk_size=chunk_size)
    (out.double() * weights).sum().backward()

    x2 = logits.clone().requires_grad_(True)
    logp = torch.log_softmax(x2, dim=-1)
    ref = -(logp.exp() * logp).sum(-1)
    (ref * weights).sum().backward()

    # fp32 math inside against an fp64 reference
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-4, atol=1e-5)


def test_entropy_hand_values() -> None:
    uniform = torch.zeros(1, 1, 4)
    assert entropy_from_logits(uniform).item() == pytest.approx(math.log(4))
    peaked = torch.tensor([[[100.0, 0.0, 0.0]]])
    assert entropy_from_logits(peaked).item() == pytest.approx(0.0, abs=1e-6)


def test_masked_sum_mean_hand_values_and_nan_safety() -> None:
    x = torch.tensor([[1.0, 2.0, float("nan")], [4.0, float("inf"), 6.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 1]])
    assert masked_sum(x, mask).item() == 13.0
    assert masked_mean(x, mask).item() == pytest.approx(13 / 4)
    assert masked_mean(x, mask, dim=1).tolist() == [1.5, 5.0]
    assert masked_mean(x, torch.zeros_like(mask)).item() == 0.0  # empty mask: 0, not NaN


def test_masked_var_hand_value() -> None:
    x = torch.tensor([1.0, 2.0, 3.0, 100.0])
    mask = torch.tensor([1, 1, 1, 0])
    assert masked_var(x, mask).item() == pytest.approx(1.0)  # unbiased var of 1,2,3
    assert masked_var(x, mask, unbiased=False).item() == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="one element"):
        masked_var(x, torch.tensor([0, 1, 0, 0]))
    with pytest.raises(ValueError, match="no elements"):
        masked_var(x, torch.zeros(4))


def test_masked_whiten_mean_zero_var_one_on_mask() -> None:
    g = torch.Generator().manual_seed(4)
    x = torch.randn(4, 6, generator=g, dtype=torch.float64) * 5 + 3
    mask = (torch.rand(4, 6, generator=g) > 0.3).double()
    w = masked_whiten(x, mask)
    assert masked_mean(w, mask).item() == pytest.approx(0.0, abs=1e-9)
    assert masked_var(w, mask).item() == pytest.approx(1.0, rel=1e-6)
    kept = masked_whiten(x, mask, shift_mean=False)  # only rescaled: the mean stays
    assert masked_mean(kept, mask).item() == pytest.approx(masked_mean(x, mask).item())


def test_kl_estimators_hand_values() -> None:
    logp = torch.tensor([-1.0, -2.0, -0.5])
    ref = torch.tensor([-1.5, -1.0, -0.5])
    # log_ratio = logp - ref = [0.5, -1.0, 0.0]
    assert kl_estimate(logp, ref, "k1").tolist() == pytest.approx([0.5, -1.0, 0.0])
    assert kl_estimate(logp, ref, "k2").tolist() == pytest.approx([0.125, 0.5, 0.0])
    # k3: r = exp(ref - logp); (r - 1) - log r
    k3 = [(math.exp(-0.5) - 1) + 0.5, (math.exp(1.0) - 1) - 1.0, 0.0]
    assert kl_estimate(logp, ref, "k3").tolist() == pytest.approx(k3)


def test_kl_k3_nonnegative_and_unbiased_direction() -> None:
    g = torch.Generator().manual_seed(5)
    logp, ref = torch.randn(1000, generator=g) * 3, torch.randn(1000, generator=g) * 3
    assert torch.all(kl_estimate(logp, ref, "k3") >= 0)
    assert torch.all(kl_estimate(logp, ref, "k2") >= 0)
    # sampling from pi, k1 and k3 both average to the true KL(pi || ref)
    pi = torch.tensor([0.6, 0.3, 0.1])
    rf = torch.tensor([0.2, 0.5, 0.3])
    true_kl = float((pi * (pi / rf).log()).sum())
    for kind in ("k1", "k3"):
        per_token = kl_estimate(pi.log(), rf.log(), kind)
        assert float((pi * per_token).sum()) == pytest.approx(true_kl, rel=1e-5)


def test_kl_unknown_kind_and_clip() -> None:
    with pytest.raises(ValueError, match=r"valid: \['k1', 'k2', 'k3'\]"):
        kl_estimate(torch.zeros(2), torch.zeros(2), "k4")
    assert set(KL_ESTIMATORS) == {"k1", "k2", "k3"}
    clipped = kl_estimate(torch.tensor([-200.0]), torch.tensor([0.0]), "k3", log_ratio_clip=10.0)
    assert clipped.item() == pytest.approx(math.expm1(10.0) - 10.0, rel=1e-5)


def test_kl_estimate_keeps_fp64_and_upcasts_bf16() -> None:
    # a log ratio of 1e-10 is lost if fp64 inputs are rounded to fp32 (it used to return 0 here)
    logp = torch.tensor([-1.0 - 1e-10], dtype=torch.float64)
    ref = torch.tensor([-1.0], dtype=torch.float64)
    out = kl_estimate(logp, ref, "k1")
    assert out.dtype == torch.float64 and out.item() == pytest.approx(-1e-10, rel=1e-5)
    assert kl_estimate(logp.bfloat16(), ref.bfloat16(), "k2").dtype == torch.float32
