"""Online RL (PPO, GRPO, RLOO, REINFORCE++, online DPO) on a tiny random model: learning, KL, invariances, resume, CLI."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhfkit.advantages import gae, whiten_advantages
from rlhfkit.commands import trainer
from rlhfkit.config import (
    AlgoConfig,
    GRPOConfig,
    OnlineDPOConfig,
    PPOConfig,
    ReinforceConfig,
    RLOOConfig,
    load_config,
)
from rlhfkit.data import write_jsonl
from rlhfkit.models.tiny import save_tiny, tiny_causal_lm, tiny_tokenizer
from rlhfkit.models.value import PolicyWithValue
from rlhfkit.rollout import Rollout
from rlhfkit.tracking import read_metrics
from rlhfkit.trainers.online import ADVANTAGES, UpdateContext, normalizer_count, policy_gradient_loss
from rlhfkit.trainers.rl_common import pair_rows

ROOT = Path(__file__).resolve().parents[1]
REWARD = "reward.sources=[{kind: callable, path: 'tests.toy:letter_reward'}]"
CLASSES = {
    "ppo": PPOConfig,
    "grpo": GRPOConfig,
    "rloo": RLOOConfig,
    "reinforce": ReinforceConfig,
    "online-dpo": OnlineDPOConfig,
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("online")
    save_tiny(root / "tiny", "causal")
    write_jsonl(root / "prompts.jsonl", [{"prompt": f"Write about film {i}."} for i in range(64)])
    return root / "tiny", root / "prompts.jsonl"


def _run(setup, out: Path, algo: str, *extra: str) -> dict:
    model, prompts = setup
    cfg = load_config(
        CLASSES[algo],
        None,
        [
            f"model.name_or_path={model}",
            f"data.train={prompts}",
            f"train.output_dir={out}",
            "train.max_steps=30",
            "train.batch_size=8",
            "train.lr=1e-2",
            "train.progress=false",
            "sampling.max_new_tokens=8",
            REWARD,
            "eval_samples=16",
            *extra,
        ],
    )
    with contextlib.redirect_stdout(io.StringIO()):
        return trainer(algo)(cfg)


def _train_metrics(out: Path) -> list[dict]:
    return [r for r in read_metrics(out / "metrics.jsonl") if "train/score" in r]


# ---------------------------------------------------------------------------------------------------------------------
# learning on a toy task (reward: share of the letter "e" in the response)


@pytest.mark.parametrize(
    "algo,extra",
    [
        ("grpo", ()),
        ("ppo", ("reward.sources=[{kind: callable, path: 'tests.toy:letter_reward', weight: 10}]", "kl.coef=0.01")),
        ("rloo", ()),
    ],
)
def test_toy_task_reward_rises(setup, tmp_path, algo, extra):
    summary = _run(setup, tmp_path / algo, algo, *extra)
    rows = _train_metrics(tmp_path / algo)
    first, last = sum(r["train/score"] for r in rows[:5]) / 5, sum(r["train/score"] for r in rows[-5:]) / 5
    assert last > 2 * first and last > first + 0.05, (first, last)
    ev = summary["eval"]
    assert ev["score"] > ev["before/score"] + 0.03  # held-out prompts too
    assert abs(ev["before/kl"]) < 1e-4  # before training the policy IS the reference
    assert all(torch.isfinite(torch.tensor(r["train/kl"])) for r in rows)
    for key in (
        "train/entropy",
        "train/clip_fraction",
        "train/approx_kl",
        "train/response_length",
        "train/time/generate",
    ):
        assert key in rows[-1]
    if algo == "ppo":
        assert "train/value_loss" in rows[-1] and "train/explained_variance" in rows[-1]


def test_kl_penalty_bounds_the_drift(setup, tmp_path):
    """Same run, a strong KL coefficient: the policy stays much closer to the reference."""
    loose = _run(setup, tmp_path / "loose", "rloo", "kl.coef=0.0", "train.max_steps=20")
    tight = _run(setup, tmp_path / "tight", "rloo", "kl.coef=1.0", "train.max_steps=20")
    assert tight["eval"]["kl"] < 0.5 * loose["eval"]["kl"], (tight["eval"]["kl"], loose["eval"]["kl"])


def test_adaptive_kl_coefficient_moves_toward_target(setup, tmp_path):
    _run(
        setup,
        tmp_path / "a",
        "rloo",
        "kl.controller=adaptive",
        "kl.coef=0.05",
        "kl.target=0.01",
        "kl.horizon=64",
        "train.max_steps=8",
    )
    coefs = [r["train/kl_coef"] for r in _train_metrics(tmp_path / "a")]
    kls = [r["train/kl"] for r in _train_metrics(tmp_path / "a")]
    # beta <- beta (1 + clip(KL/target - 1, -.2, .2) * n/horizon), n = 8 prompts x 4 samples (Ziegler et al. 2019)
    for c0, c1, kl in zip(coefs, coefs[1:], kls):
        assert c1 == pytest.approx(c0 * (1 + max(min(kl / 0.01 - 1, 0.2), -0.2) * 32 / 64), rel=1e-6)


@pytest.mark.parametrize("algo", ["reinforce", "online-dpo"])
def test_other_algorithms_run_and_move_the_policy(setup, tmp_path, algo):
    summary = _run(setup, tmp_path / algo, algo, "train.max_steps=6", "eval_samples=4")
    assert summary["steps"] == 6
    rows = _train_metrics(tmp_path / algo)
    assert all(r["train/updates"] >= 1 for r in rows)
    if algo == "online-dpo":
        assert "train/dpo/accuracy" in rows[-1]
    assert summary["eval"]["kl"] != 0.0  # it moved


# ---------------------------------------------------------------------------------------------------------------------
# the update: gradients, invariances


def _rollout(B: int = 4, P: int = 5, R: int = 6, seed: int = 0) -> Rollout:
    g = torch.Generator().manual_seed(seed)
    prompt_mask = torch.ones(B, P, dtype=torch.long)
    prompt_mask[0, :2] = 0  # left padding
    resp_mask = torch.ones(B, R)
    resp_mask[1, 3:] = 0  # right padding (an early EOS)
    resp_mask[2, 5:] = 0
    ro = Rollout(
        torch.randint(4, 300, (B, P), generator=g) * prompt_mask,
        prompt_mask,
        torch.randint(4, 300, (B, R), generator=g) * resp_mask.long(),
        resp_mask,
        torch.ones(B, dtype=torch.bool),
        torch.arange(B),
    )
    ro.logprobs = -torch.rand(B, R, generator=g) * 5 * resp_mask
    ro.ref_logprobs = -torch.rand(B, R, generator=g) * 5 * resp_mask
    ro.values = torch.randn(B, R, generator=g) * resp_mask
    ro.returns = torch.randn(B, R, generator=g) * resp_mask
    ro.advantages = torch.randn(B, R, generator=g) * resp_mask
    ro.kl_coef = torch.full((B,), 0.1)
    return ro


def test_gradients_reach_response_tokens_only():
    tok = tiny_tokenizer()
    module = PolicyWithValue(tiny_causal_lm(tok), "head")
    ro = _rollout()
    ctx = UpdateContext(AlgoConfig(entropy_coef=0.01), "k3", True, 0.7, False)
    emb = module.policy.get_input_embeddings()
    captured = {}

    def keep(module, inputs, output):
        output.retain_grad()
        captured["emb"] = output

    handle = emb.register_forward_hook(keep)
    total, count, _ = policy_gradient_loss(module, ro, ctx)
    (total / count).backward()
    handle.remove()
    grad = captured["emb"].grad.abs().sum(-1)  # (B, P + R): gradient w.r.t. each input position's embedding
    P = ro.prompt_ids.shape[1]
    # nothing flows into padded positions: the left padding of row 0, the right padding after EOS of rows 1-2
    assert grad[0, :2].max() == 0
    assert grad[1, P + 3 :].max() == 0 and grad[2, P + 5 :].max() == 0
    assert grad[1, P : P + 2].min() > 0  # real tokens do get gradient
    # changing what sits in padding changes nothing
    ro2 = _rollout()
    ro2.response_ids[1, 3:] = 7
    ro2.prompt_ids[0, :2] = 9
    ro2.logprobs[1, 3:] = -100.0
    a, _, _ = policy_gradient_loss(module, ro, ctx)
    b, _, _ = policy_gradient_loss(module, ro2, ctx)
    assert torch.allclose(a, b)


@pytest.mark.parametrize("aggregation", ["token-mean", "sequence-mean"])
def test_micro_batch_split_gives_the_same_gradient(aggregation):
    """The loop's recipe (each micro-batch's summed loss / the global count) == one forward over the whole batch."""
    tok = tiny_tokenizer()
    module = PolicyWithValue(tiny_causal_lm(tok), "head")
    ro = _rollout()
    a = AlgoConfig(aggregation=aggregation, entropy_coef=0.01)
    ctx = UpdateContext(a, "k3", True, 1.0, False)

    def grads() -> list[torch.Tensor]:
        out = [p.grad.clone() for p in module.parameters()]
        module.zero_grad()
        return out

    total, count, _ = policy_gradient_loss(module, ro, ctx)
    (total / count).backward()
    whole = grads()
    batches = [ro.select([i]).trimmed() for i in range(len(ro))]  # micro-batches of one row, each trimmed
    global_count = sum(normalizer_count(b, a) for b in batches)
    assert global_count == pytest.approx(float(count))
    for b in batches:
        (policy_gradient_loss(module, b, ctx)[0] / global_count).backward()
    split = grads()
    assert all(torch.allclose(x, y, atol=1e-6, rtol=1e-4) for x, y in zip(whole, split))
    assert any(x.abs().sum() > 0 for x in whole)


def test_ppo_advantages_are_whitened_gae():
    ro = _rollout()
    rewards = torch.randn(4, 6) * ro.response_mask
    a = AlgoConfig(gamma=0.9, lam=0.8)
    adv, ret = ADVANTAGES["ppo"](ro, rewards, a)
    ref_adv, ref_ret = gae(rewards, ro.values, ro.response_mask, 0.9, 0.8)
    assert torch.allclose(adv, whiten_advantages(ref_adv, ro.response_mask)) and torch.allclose(ret, ref_ret)
    valid = ro.response_mask.bool()
    assert adv[valid].mean().abs() < 1e-5 and adv[valid].std() == pytest.approx(1.0, abs=1e-4)


def test_grpo_and_rloo_advantages_by_hand():
    ro = _rollout()
    ro.response_mask = torch.ones(4, 6)
    rewards = torch.zeros(4, 6)
    rewards[:, -1] = torch.tensor([1.0, 3.0, 2.0, 2.0])  # two groups of two
    grpo, _ = ADVANTAGES["grpo"](ro, rewards, AlgoConfig(name="grpo", num_samples=2))
    s = torch.tensor(2.0).sqrt()  # std of {1, 3} (unbiased) = sqrt(2)
    assert torch.allclose(grpo[:, 0], torch.tensor([-1 / s, 1 / s, 0.0, 0.0]), atol=1e-5)
    rloo, _ = ADVANTAGES["rloo"](ro, rewards, AlgoConfig(name="rloo", num_samples=2, whiten_advantages=False))
    assert torch.allclose(rloo[:, 3], torch.tensor([-2.0, 2.0, 0.0, 0.0]))


def test_best_worst_pairs():  # online DPO's pairs
    scores = torch.tensor([0.1, 0.5, 0.3, 2.0, 2.0, 2.0, -1.0, 0.0, -3.0])
    assert pair_rows(scores, 3) == [1, 0, 7, 8]  # the all-equal group gives no pair


# ---------------------------------------------------------------------------------------------------------------------
# resume and the CLI


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "rlhfkit.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def test_cli_ppo_resume_matches_an_uninterrupted_run(setup, tmp_path):
    model, prompts = setup
    common = [
        f"model.name_or_path={model}",
        f"data.train={prompts}",
        "train.batch_size=4",
        "train.lr=1e-3",
        "train.progress=false",
        "sampling.max_new_tokens=6",
        "reward.sources=[{kind: callable, path: 'tests.toy:letter_reward'}]",
        "reward.normalize=true",
        "kl.controller=adaptive",
        "eval_samples=0",
        "algo.epochs=2",
        "algo.mini_batch_size=2",
    ]
    full = _cli("ppo", *common, "train.max_steps=4", "-o", str(tmp_path / "full"), cwd=ROOT)
    assert full.returncode == 0, full.stderr[-2000:]
    part = _cli("ppo", *common, "train.max_steps=2", "train.save_every=1", "-o", str(tmp_path / "part"), cwd=ROOT)
    assert part.returncode == 0, part.stderr[-2000:]
    state = json.loads((tmp_path / "part" / "checkpoints" / "step-000002" / "trainer_state.json").read_text())
    assert state["reward_normalizer"]["count"] == 8 and state["kl_controller"]["value"] != 0.05
    resumed = _cli("ppo", *common, "train.max_steps=4", "--resume", "-o", str(tmp_path / "part"), cwd=ROOT)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = load_file(str(tmp_path / "full" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "part" / "model" / "model.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    fm = [r["train/score"] for r in _train_metrics(tmp_path / "full")]
    pm = [r["train/score"] for r in _train_metrics(tmp_path / "part")]
    assert fm == pytest.approx(pm)  # same samples, same scores, step by step


def test_cli_sample_best_of_n_and_rejection_sampling_sft(setup, tmp_path):
    model, prompts = setup
    reward = "reward.sources=[{kind: callable, path: 'tests.toy:letter_reward'}]"
    base = [f"model.name_or_path={model}", f"data.train={prompts}", "data.max_rows=8", "sampling.max_new_tokens=8"]
    r = _cli("sample", *base, "num_samples=4", reward, "-o", str(tmp_path / "all.jsonl"), cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(x) for x in (tmp_path / "all.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and all(len(x["responses"]) == 4 and len(x["scores"]) == 4 for x in rows)
    before = (tmp_path / "all.jsonl").read_bytes()
    r = _cli("sample", *base, "num_samples=2", "-o", str(tmp_path / "all.jsonl"), cwd=ROOT)  # never overwritten
    assert r.returncode == 2 and "all.jsonl already exists" in r.stderr and "overwrite=true" in r.stderr, r.stderr
    assert "Loading" not in r.stderr and (tmp_path / "all.jsonl").read_bytes() == before
    r = _cli("sample", *base, "--best-of", "4", reward, "-o", str(tmp_path / "best.jsonl"), cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    best = [json.loads(x) for x in (tmp_path / "best.jsonl").read_text().splitlines()]
    # the same seed draws the same 4 samples: best-of-N keeps the maximum of each prompt's scores
    assert [b["score"] for b in best] == pytest.approx([max(x["scores"]) for x in rows])
    (tmp_path / "rft.jsonl").write_text("an earlier file\n")
    r = _cli(  # overwrite=true replaces an existing file
        "sample",
        *base,
        "num_samples=4",
        "format=sft",
        reward,
        "-o",
        str(tmp_path / "rft.jsonl"),
        "overwrite=true",
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    sft = _cli(
        "sft",
        f"model.name_or_path={model}",
        f"data.train={tmp_path / 'rft.jsonl'}",
        "data.eval_fraction=0",
        "train.max_steps=2",
        "train.batch_size=4",
        "train.progress=false",
        "-o",
        str(tmp_path / "sft"),
        cwd=ROOT,
    )
    assert sft.returncode == 0, sft.stderr[-2000:]
    r = _cli("sample", *base, "num_samples=2", "format=prefs", reward, "-o", str(tmp_path / "p.jsonl"), cwd=ROOT)
    assert r.returncode == 0 and all("chosen" in json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines())


def test_cli_rl_errors_are_one_line(setup, tmp_path):
    model, prompts = setup
    r = _cli("grpo", f"model.name_or_path={model}", f"data.train={prompts}", cwd=tmp_path)
    assert r.returncode == 2 and "reward.sources is empty" in r.stderr and "Traceback" not in r.stderr
    r = _cli("grpo", f"data.train={prompts}", REWARD, "algo.num_samples=1", cwd=tmp_path)
    assert r.returncode == 2 and "algo.num_samples >= 2" in r.stderr
    r = _cli(
        "ppo",
        f"data.train={prompts}",
        "reward.sources=[{kind: model, path: /nowhere/rm}]",
        f"model.name_or_path={model}",
        "-o",
        str(tmp_path / "o"),
        cwd=tmp_path,
    )
    assert r.returncode == 2 and "/nowhere/rm" in r.stderr and "Traceback" not in r.stderr
    r = _cli("ppo", "--help", cwd=tmp_path)
    assert r.returncode == 0 and "kl.target" in r.stdout and "algo.num_samples" in r.stdout


def test_target_kl_stops_the_epochs_and_missing_eos_is_penalized(setup, tmp_path):
    _run(
        setup,
        tmp_path / "ppo",
        "ppo",
        "train.max_steps=3",
        "eval_samples=0",
        "algo.epochs=4",
        "algo.mini_batch_size=4",
        "algo.target_kl=1e-12",  # any movement at all stops the rollout's remaining updates
        "algo.missing_eos_penalty=2.0",
        "sampling.max_new_tokens=3",
    )
    rows = _train_metrics(tmp_path / "ppo")
    assert all(r["train/stopped_early"] == 1.0 and r["train/updates"] < 8 for r in rows)
    for r in rows:  # reward = score - penalty x (share of responses that never reached EOS)
        assert r["train/reward"] == pytest.approx(r["train/score"] - 2.0 * (1 - r["train/finished"]), abs=1e-5)
    assert any(r["train/finished"] < 1 for r in rows)
