"""Rollout-trainer mismatch and truncated importance sampling (Yao et al. 2025): the engines' own log-probs of the
tokens they sampled (`Rollout.rollout_logprobs`) against the training forward, the TIS-weighted clipped surrogate
against hand values, its weights detached and capped, the trainer's use of it and `algo.tis_cap` through the CLI."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlhfkit.config import AlgoConfig, ConfigError, GRPOConfig, load_config
from rlhfkit.data import ChatFormatter, write_jsonl
from rlhfkit.losses.policy import ppo_clip_loss, rollout_mismatch_stats, tis_weights
from rlhfkit.models.tiny import save_tiny, tiny_causal_lm, tiny_tokenizer
from rlhfkit.models.value import PolicyWithValue
from rlhfkit.rollout import HFEngine, Rollout, SamplingParams, model_logprobs
from rlhfkit.tracking import read_metrics
from rlhfkit.trainers.online import UpdateContext, policy_gradient_loss

ROOT = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------------------------------------------------
# the loss: hand values, detached weights, the cap

# four tokens: PPO ratio r = pi_theta / pi_old, TIS ratio pi_old / pi_rollout, advantage A; clip 0.2, cap 2.
# by hand (Schulman et al. 2017 eq. 7 negated, times w = min(pi_old / pi_rollout, 2), Yao et al. 2025):
#   r=1.1 A=1:  max(-1.1, -1.1) = -1.1, w=1.5 -> -1.65, d/dlogp = -A r w = -1.65
#   r=1.0 A=-1: max(1.0, 1.0) = 1.0,   w=2 (3 capped) -> 2.0, d/dlogp = 2.0
#   r=1.5 A=1:  max(-1.5, -1.2) = -1.2 (clipped), w=0.5 -> -0.6, d/dlogp = 0
#   r=0.5 A=2:  max(-1.0, -1.6) = -1.0, w=1 -> -1.0, d/dlogp = -A r w = -1.0
PPO_RATIOS, TIS_RATIOS, ADVANTAGES = [1.1, 1.0, 1.5, 0.5], [1.5, 3.0, 0.5, 1.0], [1.0, -1.0, 1.0, 2.0]
LOSS, GRAD = [-1.65, 2.0, -0.6, -1.0], [-1.65, 2.0, 0.0, -1.0]


def _inputs():
    old = torch.tensor([[-1.0, -2.0, -0.5, -3.0, -1.0]])  # the last column is padding
    new = (old + torch.tensor([[*PPO_RATIOS, 1.0]]).log()).requires_grad_(True)
    rollout = (old - torch.tensor([[*TIS_RATIOS, 1.0]]).log()).clone()
    rollout[0, -1] = -math.inf  # padding may hold anything
    adv = torch.tensor([[*ADVANTAGES, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]])
    return new, old, rollout, adv, mask


def test_tis_loss_equals_hand_values():
    new, old, rollout, adv, mask = _inputs()
    loss, _ = ppo_clip_loss(new, old, adv, mask, clip_low=0.2, rollout_logprobs=rollout, tis_cap=2.0)
    torch.testing.assert_close(loss, torch.tensor([[*LOSS, 0.0]]))
    loss.sum().backward()
    torch.testing.assert_close(new.grad, torch.tensor([[*GRAD, 0.0]]))
    stats = rollout_mismatch_stats(old, rollout, mask, cap=2.0)
    assert stats["tis/capped_fraction"].item() == pytest.approx(0.25)  # only the 3.0
    assert stats["tis/weight_mean"].item() == pytest.approx((1.5 + 2.0 + 0.5 + 1.0) / 4)
    assert stats["mismatch/ratio_mean"].item() == pytest.approx(sum(TIS_RATIOS) / 4)
    gaps = [abs(math.log(r)) for r in TIS_RATIOS]
    assert stats["mismatch/gap_abs_mean"].item() == pytest.approx(sum(gaps) / 4)
    assert stats["mismatch/gap_abs_max"].item() == pytest.approx(math.log(3.0))
    assert "tis/weight_mean" not in rollout_mismatch_stats(old, rollout, mask)  # no cap: mismatch only


def test_tis_weights_are_detached_and_scale_the_gradient():
    """d(TIS loss)/d logp = w * d(plain loss)/d logp token by token; no gradient reaches the log-probs in w."""
    g = torch.Generator().manual_seed(0)
    B, T = 3, 7
    mask = (torch.rand(B, T, generator=g) > 0.2).float()
    old = -torch.rand(B, T, generator=g) * 3
    new = (old + torch.randn(B, T, generator=g) * 0.3).requires_grad_(True)
    old_leaf = old.clone().requires_grad_(True)
    rollout = (old + torch.randn(B, T, generator=g) * 0.8).requires_grad_(True)
    adv = torch.randn(B, T, generator=g)
    plain, _ = ppo_clip_loss(new, old, adv, mask)
    (g_plain,) = torch.autograd.grad(plain.sum(), new)
    weighted, _ = ppo_clip_loss(new, old_leaf, adv, mask, rollout_logprobs=rollout, tis_cap=2.0)
    g_new, g_old, g_roll = torch.autograd.grad(weighted.sum(), [new, old_leaf, rollout], allow_unused=True)
    w = tis_weights(old, rollout, mask, 2.0)
    assert not w.requires_grad and ((w > 0) == mask.bool()).all() and (w <= 2.0).all()
    assert (w == 2.0).any() and (w < 1.0).any()  # both sides of 1 and the cap are exercised
    torch.testing.assert_close(g_new, w * g_plain)
    torch.testing.assert_close(weighted, w * plain)
    assert g_old is None and g_roll is None


def test_tis_cap_bounds_the_weight():
    """Weights follow pi_old / pi_rollout up to the cap and stay there however large the ratio; a huge cap is plain
    importance sampling; exact rollout log-probs give weight 1 (the loss unchanged)."""
    old = torch.zeros(1, 6)
    ratios = torch.tensor([[0.25, 1.0, 1.9, 2.1, 50.0, 1e6]])
    rollout = old - ratios.log()
    mask = torch.ones(1, 6)
    torch.testing.assert_close(tis_weights(old, rollout, mask, 2.0), ratios.clamp(max=2.0))
    torch.testing.assert_close(tis_weights(old, rollout, mask, 1e9), ratios)
    assert rollout_mismatch_stats(old, rollout, mask, 2.0)["tis/capped_fraction"].item() == pytest.approx(3 / 6)
    new, adv = torch.randn(1, 6), torch.randn(1, 6)
    same, _ = ppo_clip_loss(new, old, adv, mask, rollout_logprobs=old.clone(), tis_cap=2.0)
    torch.testing.assert_close(same, ppo_clip_loss(new, old, adv, mask)[0])
    with pytest.raises(ValueError, match="rollout_logprobs"):
        ppo_clip_loss(new, old, adv, mask, tis_cap=2.0)
    with pytest.raises(ValueError, match="cap"):
        tis_weights(old, rollout, mask, 0.0)


def test_tis_cap_config_checks():
    assert AlgoConfig().tis_cap is None  # the default (docs/benchmarks.md: the engines are near-exact on CPU)
    for cap, match in [(0.5, "tis_cap must be >= 1"), (0.0, "tis_cap must be >= 1")]:
        with pytest.raises(ConfigError, match=match):
            AlgoConfig(tis_cap=cap).validate()
    with pytest.raises(ConfigError, match="online-dpo"):
        AlgoConfig(name="online-dpo", num_samples=2, tis_cap=2.0).validate()
    AlgoConfig(name="grpo", num_samples=2, tis_cap=2.0).validate()


# ----------------------------------------------------------------------------------------------------------------------
# the engines' rollout log-probs against the training forward


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


EOS_BIAS = torch.zeros(1)  # the EOS logit's shift, set per case: rows then finish at different steps


@pytest.fixture(scope="module")
def model(tok):
    m = tiny_causal_lm(tok, seed=3).eval()
    eos = torch.nn.functional.one_hot(torch.tensor(tok.eos_token_id), len(tok)).float()
    m.lm_head.register_forward_hook(lambda mod, inp, out: out * 4 + EOS_BIAS * eos)  # peaked: top-k cuts real mass
    return m


@pytest.fixture(scope="module")
def prompts(tok) -> list[list[int]]:
    fmt = ChatFormatter(tok, 256, 128)
    return [fmt.encode_prompt(m) for m in ["hello there", "a", "the movie was great and", "What is 2 + 2?"]]


@pytest.mark.parametrize("decoder", ["loop", "generate"])
@pytest.mark.parametrize(
    "params,eos_bias",
    [
        (SamplingParams(max_new_tokens=10, temperature=1.0), 4.0),
        (SamplingParams(max_new_tokens=10, temperature=0.7), 2.5),
        (SamplingParams(max_new_tokens=10, temperature=0.7, top_k=5, top_p=0.9), 1.0),  # truncation: left out
        (SamplingParams(max_new_tokens=10, temperature=0.0), 1.0),  # greedy: log-probs at temperature 1
        (SamplingParams(max_new_tokens=10, min_new_tokens=3, temperature=1.0), 5.0),  # EOS suppressed, still counted
    ],
    ids=["t1", "t0.7", "t0.7-topk5-topp0.9", "greedy", "min_new_tokens"],
)
def test_rollout_logprobs_match_the_training_forward(tok, model, prompts, decoder, params, eos_bias):
    """Each engine's rollout log-probs of its sampled tokens equal the training forward's (the trainer's path, one
    pass over prompt + response) at params.logprob_temperature, before top-k / top-p: they differ by float rounding
    only; they are 0 on padding; the wrong temperature disagrees (the test can fail)."""
    EOS_BIAS.fill_(eos_bias)
    torch.manual_seed(11)
    ro = HFEngine(model, tok, batch_size=3, decoder=decoder).generate(prompts, params, num_samples=3)
    assert ro.rollout_logprobs is not None and ro.rollout_logprobs.shape == ro.response_ids.shape
    valid = ro.response_mask.bool()
    assert ro.finished.any() and int(valid.sum()) > len(ro)  # rows end at EOS, after more than the EOS
    if params.min_new_tokens:
        assert (ro.response_lengths >= params.min_new_tokens + 1).all()  # the suppression still applied
    train = model_logprobs(model, ro, params.logprob_temperature, micro=4)
    gap = (train - ro.rollout_logprobs)[valid].abs()
    assert gap.max() < 1e-4, gap.max()
    assert (ro.rollout_logprobs[~valid] == 0).all() and (ro.rollout_logprobs[valid] < 0).all()
    other = 1.3 if params.logprob_temperature != 1.3 else 1.0
    wrong = model_logprobs(model, ro, other, micro=4)
    assert (wrong - ro.rollout_logprobs)[valid].abs().max() > 1e-2


def test_the_engines_give_the_same_greedy_rollout_logprobs(tok, model, prompts):
    """The loop, generate and generate with a static KV cache (prompts padded to 64 columns: the recorder counts the
    steps from the padded width) give the same greedy tokens and rollout log-probs."""
    EOS_BIAS.fill_(0.0)
    params = SamplingParams(max_new_tokens=8, temperature=0.0)
    a = HFEngine(model, tok, batch_size=4, decoder="loop").generate(prompts, params)
    for engine in (HFEngine(model, tok, batch_size=2, decoder="generate"), HFEngine(model, tok, static_cache=True)):
        b = engine.generate(prompts, params)
        assert torch.equal(a.response_ids, b.response_ids)
        torch.testing.assert_close(a.rollout_logprobs, b.rollout_logprobs, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------------------------------------
# the trainer


def _rollout(B: int = 4, P: int = 5, R: int = 6) -> Rollout:
    g = torch.Generator().manual_seed(0)
    resp_mask = torch.ones(B, R)
    resp_mask[1, 3:] = 0
    ro = Rollout(
        torch.randint(4, 300, (B, P), generator=g),
        torch.ones(B, P, dtype=torch.long),
        torch.randint(4, 300, (B, R), generator=g) * resp_mask.long(),
        resp_mask,
        torch.ones(B, dtype=torch.bool),
        torch.arange(B),
    )
    ro.ref_logprobs = -torch.rand(B, R, generator=g) * 5 * resp_mask
    ro.advantages = torch.randn(B, R, generator=g) * resp_mask
    ro.kl_coef = torch.zeros(B)
    return ro


@pytest.mark.parametrize("reuse_old", [True, False])
def test_trainer_weights_the_policy_gradient(tok, reuse_old):
    """policy_gradient_loss with algo.tis_cap: rollout log-probs log(1/3) below the old ones make every weight the cap
    2, so the loss and its gradient are exactly twice the uncorrected ones; the mismatch is in the stats when the old
    log-probs come from the update's own forward (reuse_old)."""
    module = PolicyWithValue(tiny_causal_lm(tok, seed=0), "none")
    ro = _rollout()
    with torch.no_grad():
        old, _, _ = module(ro.input_ids, ro.attention_mask, ro.position_ids, ro.response_ids)
    ro.logprobs = old * ro.response_mask
    ro.rollout_logprobs = (old - math.log(3.0)) * ro.response_mask

    def loss_and_grad(cap):
        algo = AlgoConfig(name="grpo", num_samples=2, critic="none", tis_cap=cap)
        module.zero_grad()
        total, count, stats = policy_gradient_loss(module, ro, UpdateContext(algo, "k3", False, 1.0, reuse_old))
        total.backward()
        return total.detach(), [p.grad.clone() for p in module.parameters() if p.grad is not None], stats

    plain, g_plain, s_plain = loss_and_grad(None)
    tis, g_tis, s_tis = loss_and_grad(2.0)
    assert plain.abs() > 1e-3
    torch.testing.assert_close(tis, 2 * plain)
    assert len(g_tis) == len(g_plain) > 0
    for a, b in zip(g_tis, g_plain):
        torch.testing.assert_close(a, 2 * b, rtol=1e-4, atol=1e-7)
    if reuse_old:
        assert s_tis["tis/weight_mean"].item() == pytest.approx(2.0)
        assert s_tis["tis/capped_fraction"].item() == pytest.approx(1.0)
        assert s_tis["mismatch/gap_abs_max"].item() == pytest.approx(math.log(3.0), abs=1e-5)
        assert "tis/weight_mean" not in s_plain and "mismatch/gap_abs_mean" in s_plain
    else:
        assert not any(k.startswith(("tis/", "mismatch/")) for k in s_tis)  # measured once per rollout instead


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "rlhfkit.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.parametrize("algo,extra", [("grpo", []), ("ppo", ["algo.epochs=2"])])
def test_cli_online_run_with_tis_cap(tmp_path, algo, extra):
    """`rlhfkit grpo|ppo ... algo.tis_cap=2` end to end: the run finishes and every rollout logs
    the mismatch (engine vs training log-probs: float rounding on this CPU, fp32) and the TIS weights (~1, none
    capped). grpo takes its old log-probs from the update's forward, ppo from the rollout forward."""
    save_tiny(tmp_path / "tiny", "causal")
    write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Write about film {i}."} for i in range(16)])
    out = tmp_path / "run"
    r = _cli(
        algo,
        f"model.name_or_path={tmp_path / 'tiny'}",
        f"data.train={tmp_path / 'prompts.jsonl'}",
        "reward.sources=[{kind: callable, path: 'tests.toy:letter_reward'}]",
        "train.max_steps=2",
        "train.batch_size=4",
        "train.lr=1e-2",
        "train.progress=false",
        "sampling.max_new_tokens=6",
        "eval_samples=0",
        "algo.num_samples=2",
        "algo.tis_cap=2",
        *extra,
        "-o",
        str(out),
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [m for m in read_metrics(out / "metrics.jsonl") if "train/score" in m]
    assert len(rows) == 2
    for m in rows:
        assert 0 <= m["train/mismatch/gap_abs_max"] < 1e-3 and m["train/mismatch/gap_abs_mean"] < 1e-4
        assert m["train/tis/weight_mean"] == pytest.approx(1.0, abs=1e-3)
        assert m["train/tis/capped_fraction"] == 0.0
    assert (out / "model" / "model.safetensors").exists()
    bad = _cli(algo, "algo.tis_cap=0.5", cwd=tmp_path)
    assert bad.returncode != 0 and "tis_cap must be >= 1" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_grpo_config_reads_tis_cap():
    cfg = load_config(GRPOConfig, None, ["algo.tis_cap=2", "reward.sources=[{kind: rule, path: length}]"])
    assert cfg.algo.tis_cap == 2.0
