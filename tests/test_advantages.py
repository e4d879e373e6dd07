"""Advantage estimators against plain scalar loops and hand values."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rlhfkit.advantages import (
    broadcast_to_tokens,
    discounted_returns,
    gae,
    group_normalized,
    leave_one_out,
    reinforce_pp,
    whiten_advantages,
)


def ragged_mask(lengths: list[int], T: int) -> torch.Tensor:
    return (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).long()


def gae_reference(rewards, values, mask, gamma, lam):
    """Scalar GAE over each row's valid positions (Schulman et al. 2016 eq. 10 and 16 written out)."""
    B, T = len(rewards), len(rewards[0])
    adv = [[0.0] * T for _ in range(B)]
    ret = [[0.0] * T for _ in range(B)]
    for b in range(B):
        steps = [t for t in range(T) if mask[b][t]]
        for i, t in enumerate(steps):
            # A_t = sum_l (gamma lam)^l delta_{t+l}, delta_s = r_s + gamma V_{s+1} - V_s, V after the last step = 0
            total = 0.0
            for l_, s in enumerate(steps[i:]):
                nxt = steps[i + l_ + 1] if i + l_ + 1 < len(steps) else None
                v_next = values[b][nxt] if nxt is not None else 0.0
                delta = rewards[b][s] + gamma * v_next - values[b][s]
                total += (gamma * lam) ** l_ * delta
            adv[b][t] = total
            ret[b][t] = total + values[b][t]
    return torch.tensor(adv), torch.tensor(ret)


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.99, 0.95), (0.9, 0.0), (0.8, 1.0)])
def test_gae_matches_scalar_loop_on_ragged_masks(gamma: float, lam: float) -> None:
    g = torch.Generator().manual_seed(0)
    B, T = 5, 9
    rewards, values = torch.randn(B, T, generator=g), torch.randn(B, T, generator=g)
    mask = ragged_mask([9, 1, 4, 7, 0], T)
    mask[0, 3] = 0  # a hole (e.g. tool output) in the middle of a response: skipped, not a step
    adv, ret = gae(rewards, values, mask, gamma, lam)
    ref_adv, ref_ret = gae_reference(rewards.tolist(), values.tolist(), mask.tolist(), gamma, lam)
    torch.testing.assert_close(adv, ref_adv, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ret, ref_ret, atol=1e-5, rtol=1e-5)
    assert (adv[mask == 0] == 0).all() and (ret[mask == 0] == 0).all()


def test_gae_ignores_whatever_padding_holds() -> None:
    g = torch.Generator().manual_seed(1)
    rewards, values = torch.randn(3, 6, generator=g), torch.randn(3, 6, generator=g)
    mask = ragged_mask([6, 2, 4], 6)
    noisy_r, noisy_v = rewards.clone(), values.clone()
    noisy_r[mask == 0] = 1e6
    noisy_v[mask == 0] = -1e6
    for a, b in zip(gae(rewards, values, mask, 0.99, 0.95), gae(noisy_r, noisy_v, mask, 0.99, 0.95)):
        torch.testing.assert_close(a, b)


def test_gae_lambda1_gamma1_is_return_to_go_minus_value() -> None:
    g = torch.Generator().manual_seed(2)
    rewards, values = torch.randn(4, 7, generator=g), torch.randn(4, 7, generator=g)
    mask = ragged_mask([7, 3, 5, 1], 7).bool()
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    r = torch.where(mask, rewards, 0.0)
    rtg = r.flip(1).cumsum(1).flip(1)  # sum_{k >= t} r_k
    torch.testing.assert_close(adv, torch.where(mask, rtg - values, 0.0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ret, torch.where(mask, rtg, 0.0), atol=1e-5, rtol=1e-5)


def test_gae_hand_values() -> None:
    # one row, two valid steps, gamma = 0.5, lam = 0.5: delta_1 = 2 - 1 = 1, delta_0 = 1 + 0.5*1 - 2 = -0.5
    # A_1 = 1, A_0 = -0.5 + 0.25 * 1 = -0.25
    adv, ret = gae(
        torch.tensor([[1.0, 2.0, 9.0]]), torch.tensor([[2.0, 1.0, 9.0]]), torch.tensor([[1, 1, 0]]), 0.5, 0.5
    )
    torch.testing.assert_close(adv, torch.tensor([[-0.25, 1.0, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[1.75, 2.0, 0.0]]))


def test_gae_does_not_track_gradients_and_checks_shapes() -> None:
    values = torch.randn(2, 3, requires_grad=True)
    adv, ret = gae(torch.randn(2, 3), values, torch.ones(2, 3), 1.0, 0.95)
    assert not adv.requires_grad and not ret.requires_grad
    with pytest.raises(ValueError, match="values has shape"):
        gae(torch.randn(2, 3), torch.randn(2, 4), torch.ones(2, 3), 1.0, 0.95)


def test_discounted_returns_hand_values() -> None:
    out = discounted_returns(torch.tensor([[1.0, 0.0, 2.0, 5.0]]), torch.tensor([[1, 1, 1, 0]]), gamma=0.5)
    torch.testing.assert_close(out, torch.tensor([[1.5, 1.0, 2.0, 0.0]]))


def test_whiten_advantages() -> None:
    adv = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 5.0, -7.0, 8.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    out = whiten_advantages(adv, mask, eps=0.0)
    vals = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])  # mean 3, unbiased var 10/4
    expected = (vals - 3.0) / math.sqrt(2.5)
    torch.testing.assert_close(out[mask.bool()], expected)
    assert (out[mask == 0] == 0).all()
    kept = whiten_advantages(adv, mask, shift_mean=False, eps=0.0)
    torch.testing.assert_close(kept[mask.bool()], expected + 3.0)


def test_whiten_advantages_fewer_than_two_tokens_do_not_raise() -> None:
    adv = torch.tensor([[1.5, 2.0, 3.0], [4.0, 5.0, 6.0]])
    # no valid token: all zeros (it used to raise)
    for shift in (True, False):
        assert torch.equal(whiten_advantages(adv, torch.zeros(2, 3), shift_mean=shift), torch.zeros(2, 3))
    one = torch.tensor([[0, 1, 0], [0, 0, 0]])
    # one valid token: the variance is undefined, so no rescaling: centered (0), or unchanged with shift_mean=False
    assert torch.equal(whiten_advantages(adv, one), torch.zeros(2, 3))
    torch.testing.assert_close(
        whiten_advantages(adv, one, shift_mean=False), torch.tensor([[0.0, 2.0, 0.0], [0.0, 0.0, 0.0]])
    )
    assert torch.equal(reinforce_pp(adv, torch.zeros(2, 3)), torch.zeros(2, 3))


def group_reference(scores: list[float], k: int, scale: bool, eps: float) -> list[float]:
    out = []
    for start in range(0, len(scores), k):
        grp = scores[start : start + k]
        mean = sum(grp) / k
        std = math.sqrt(sum((x - mean) ** 2 for x in grp) / (k - 1))
        out += [(x - mean) / (std + eps) if scale else x - mean for x in grp]
    return out


def loo_reference(scores: list[float], k: int) -> list[float]:
    out = []
    for start in range(0, len(scores), k):
        grp = scores[start : start + k]
        for i, x in enumerate(grp):
            others = [y for j, y in enumerate(grp) if j != i]
            out.append(x - sum(others) / len(others))
    return out


def test_group_normalized_hand_values() -> None:
    # group [1, 3]: mean 2, sample std sqrt(2); group [0, 0]: all zero (eps keeps it finite)
    out = group_normalized(torch.tensor([1.0, 3.0, 0.0, 0.0]), group_size=2, eps=1e-6)
    s = math.sqrt(2.0)
    torch.testing.assert_close(out, torch.tensor([-1 / (s + 1e-6), 1 / (s + 1e-6), 0.0, 0.0]))
    no_std = group_normalized(torch.tensor([1.0, 3.0, 0.0, 6.0]), group_size=2, scale_by_std=False)
    torch.testing.assert_close(no_std, torch.tensor([-1.0, 1.0, -3.0, 3.0]))


@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("scale", [True, False])
def test_group_normalized_matches_loop(k: int, scale: bool) -> None:
    scores = torch.randn(4 * k, generator=torch.Generator().manual_seed(k))
    out = group_normalized(scores, k, eps=1e-6, scale_by_std=scale)
    torch.testing.assert_close(out, torch.tensor(group_reference(scores.tolist(), k, scale, 1e-6)))
    # a constant shift of one group's scores leaves its advantages unchanged
    shifted = scores.clone()
    shifted[:k] += 10.0
    torch.testing.assert_close(group_normalized(shifted, k, eps=1e-6, scale_by_std=scale), out, atol=1e-5, rtol=1e-5)


def test_leave_one_out_hand_values() -> None:
    # group [1, 2, 6]: 1 - (2+6)/2 = -3, 2 - (1+6)/2 = -1.5, 6 - (1+2)/2 = 4.5
    out = leave_one_out(torch.tensor([1.0, 2.0, 6.0, 5.0, 5.0, 5.0]), group_size=3)
    torch.testing.assert_close(out, torch.tensor([-3.0, -1.5, 4.5, 0.0, 0.0, 0.0]))


@pytest.mark.parametrize("k", [2, 4, 5])
def test_leave_one_out_matches_loop(k: int) -> None:
    scores = torch.randn(3 * k, generator=torch.Generator().manual_seed(10 + k))
    out = leave_one_out(scores, k)
    torch.testing.assert_close(out, torch.tensor(loo_reference(scores.tolist(), k)))
    # identity: r_i - mean_{j != i} r_j = k/(k-1) (r_i - mean_group)
    torch.testing.assert_close(out, group_normalized(scores, k, scale_by_std=False) * k / (k - 1))


def test_group_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="not a whole number of groups"):
        group_normalized(torch.randn(5), group_size=2)
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        leave_one_out(torch.randn(4), group_size=1)
    with pytest.raises(ValueError, match=r"scores must be \(B,\)"):
        leave_one_out(torch.randn(2, 2), group_size=2)


def test_reinforce_pp_is_whitened_return_to_go() -> None:
    g = torch.Generator().manual_seed(3)
    rewards = torch.randn(4, 6, generator=g)
    mask = ragged_mask([6, 2, 5, 3], 6)
    out = reinforce_pp(rewards, mask, gamma=0.9)
    # reference: scalar return-to-go per row, then whitening over every valid token of the batch
    rtg = []
    for b in range(4):
        g_ = 0.0
        row = []
        for t in reversed(range(int(mask[b].sum()))):
            g_ = rewards[b, t].item() + 0.9 * g_
            row.append(g_)
        rtg += row[::-1]
    x = torch.tensor(rtg)
    expected = (x - x.mean()) / torch.sqrt(x.var(unbiased=True) + 1e-8)
    torch.testing.assert_close(out[mask.bool()], expected, atol=1e-5, rtol=1e-5)
    assert (out[mask == 0] == 0).all()
    assert abs(out[mask.bool()].mean().item()) < 1e-5


def test_broadcast_to_tokens() -> None:
    out = broadcast_to_tokens(torch.tensor([2.0, -1.0]), torch.tensor([[1, 1, 0], [1, 0, 0]]))
    torch.testing.assert_close(out, torch.tensor([[2.0, 2.0, 0.0], [-1.0, 0.0, 0.0]]))
    with pytest.raises(ValueError):
        broadcast_to_tokens(torch.tensor([1.0, 2.0, 3.0]), torch.ones(2, 3))


# ----------------------------------------------------------------------------------------------------------------------
# two processes (gloo on CPU), each holding half of the rows, give the single-process result on the full batch


def _distributed_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    adv = torch.randn(6, 5, generator=g) * 3 + 1
    # rank 1's rows hold fewer valid tokens than rank 0's, and one of its rows none at all
    return adv, ragged_mask([5, 4, 5, 1, 0, 2], 5)


def _whiten_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)

        def all_reduce(t: torch.Tensor) -> torch.Tensor:
            t = t.clone()
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            return t

        adv, mask = _distributed_batch()
        rows = slice(rank * 3, rank * 3 + 3)
        a, m = adv[rows], mask[rows]
        one_token = torch.zeros_like(m)
        one_token[0, 0] = int(rank == 0)
        out = {
            "shift": whiten_advantages(a, m, all_reduce=all_reduce),
            "keep": whiten_advantages(a, m, shift_mean=False, all_reduce=all_reduce),
            "rpp": reinforce_pp(a, m, gamma=0.9, all_reduce=all_reduce),
            "local": whiten_advantages(a, m),  # without all_reduce: this process's statistics only
            # only rank 0 holds a valid token: one token globally, centered to 0; the empty rank neither raises nor hangs
            "one": whiten_advantages(a, one_token, all_reduce=all_reduce),
        }
        torch.save(out, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_whitening_two_processes_equal_one(tmp_path: Path) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_whiten_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    parts = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    adv, mask = _distributed_batch()
    full = {
        "shift": whiten_advantages(adv, mask),
        "keep": whiten_advantages(adv, mask, shift_mean=False),
        "rpp": reinforce_pp(adv, mask, gamma=0.9),
    }
    for key, expected in full.items():
        got = torch.cat([parts[0][key], parts[1][key]])
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)
    # the test discriminates: per-process statistics differ from the global ones
    local = torch.cat([parts[0]["local"], parts[1]["local"]])
    assert (local - full["shift"]).abs().max() > 1e-2
    # a single valid token over both processes: centered to 0, no error on the rank without tokens
    assert torch.equal(parts[0]["one"], torch.zeros(3, 5)) and torch.equal(parts[1]["one"], torch.zeros(3, 5))
