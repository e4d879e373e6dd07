"""Regression tests for the math and logic fixes of the review (each fails on the code before the fix): dropout off by
default, KL in the loss, per-sequence KL coefficients and the log-ratio clip in the loss, global whitening wired into
the advantages, min_new_tokens / robust DPO / k1-in-the-loss refused, ties in DPO, online DPO's scheduler length,
reward-model calibration under Rao-Kupper."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from rlhfkit.config import (
    AlgoConfig,
    ConfigError,
    DPOConfig,
    GRPOConfig,
    OnlineDPOConfig,
    PPOConfig,
    RewardLossConfig,
    load_config,
)
from rlhfkit.data import EncodedPair, write_jsonl
from rlhfkit.models.tiny import save_tiny, tiny_causal_lm, tiny_reward_model, tiny_tokenizer
from rlhfkit.models.value import PolicyWithValue
from rlhfkit.rollout import Rollout
from rlhfkit.trainers.online import ADVANTAGES, UpdateContext, policy_gradient_loss

REWARD = "reward.sources=[{kind: callable, path: 'tests.toy:letter_reward'}]"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("fixes") / "tiny", "causal")


def _prefs(path: Path, n: int = 16, ties_every: int = 0) -> Path:
    rows = [
        {
            "prompt": f"Say something about film number {i}.",
            "chosen": f"film {i} was wonderful and great",
            "rejected": f"film {i} was awful and dull",
            **({"tie": True} if ties_every and i % ties_every == 0 else {}),
        }
        for i in range(n)
    ]
    write_jsonl(path, rows)
    return path


def _dpo(tiny: Path, out: Path, data: Path, *extra: str) -> dict:
    from rlhfkit.trainers.dpo import train_dpo

    over = [
        f"model.name_or_path={tiny}",
        f"train.output_dir={out}",
        f"data.train={data}",
        "train.max_steps=2",
        "train.batch_size=4",
        "train.progress=false",
        "data.max_length=64",
        "data.max_prompt_length=32",
        "eval_kl_samples=0",
        *extra,
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        return train_dpo(load_config(DPOConfig, None, over))


def _first_loss(out: Path) -> float:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return next(r["train/loss"] for r in rows if "train/loss" in r)


# ---------------------------------------------------------------------------------------------------------------------
# dropout


def test_dropout_is_off_by_default_so_dpo_starts_at_log2(tiny_dir, tmp_path):
    drop = tmp_path / "dropout-model"
    save_tiny(drop, "causal")
    cfg = json.loads((drop / "config.json").read_text())
    (drop / "config.json").write_text(json.dumps(cfg | {"attention_dropout": 0.5}))
    data = _prefs(tmp_path / "p.jsonl")
    _dpo(drop, tmp_path / "off", data)
    assert _first_loss(tmp_path / "off") == pytest.approx(math.log(2), abs=1e-5)
    _dpo(drop, tmp_path / "on", data, "model.disable_dropout=false")  # the checkpoint's dropout: step 0 is not log 2
    assert abs(_first_loss(tmp_path / "on") - math.log(2)) > 1e-3


# ---------------------------------------------------------------------------------------------------------------------
# config refusals


@pytest.mark.parametrize(
    "cls, overrides, message",
    [
        (GRPOConfig, ["kl.estimator=k1"], "zero expected gradient in the loss"),
        (PPOConfig, ["sampling.min_new_tokens=4"], "min_new_tokens must be 0 for online RL"),
        (DPOConfig, ["loss.name=robust"], "label_smoothing must be > 0 for loss.name=robust"),
        (DPOConfig, ["loss.name=ipo", "loss.ties=davidson"], "needs loss.name=dpo"),
    ],
)
def test_silent_no_ops_are_refused(cls, overrides, message):
    over = [*overrides, REWARD] if cls is not DPOConfig else overrides
    with pytest.raises(ConfigError, match=message):
        load_config(cls, None, over)
    assert load_config(DPOConfig, None, ["loss.name=robust", "loss.label_smoothing=0.1"]).loss.label_smoothing == 0.1


# ---------------------------------------------------------------------------------------------------------------------
# the policy-gradient loss: per-sequence KL coefficients and the log-ratio clip reach the loss


def _rollout(ref_logprobs: torch.Tensor | None = None) -> Rollout:
    g = torch.Generator().manual_seed(0)
    B, P, R = 4, 3, 5
    mask = torch.ones(B, R)
    ro = Rollout(
        prompt_ids=torch.randint(3, 20, (B, P), generator=g),
        prompt_mask=torch.ones(B, P, dtype=torch.long),
        response_ids=torch.randint(3, 20, (B, R), generator=g),
        response_mask=mask,
        finished=torch.ones(B, dtype=torch.bool),
        group=torch.arange(B),
    )
    ro.logprobs = -torch.rand(B, R, generator=g) - 1
    ro.ref_logprobs = ref_logprobs if ref_logprobs is not None else -torch.rand(B, R, generator=g) - 1
    ro.advantages = torch.randn(B, R, generator=g)
    ro.kl_coef = torch.full((B,), 0.1)
    return ro


def test_kl_coefficient_per_sequence_reaches_the_loss():
    """kl.uncertainty_scale used to be ignored with placement=loss: the loss read one scalar coefficient."""
    module = PolicyWithValue(tiny_causal_lm(tiny_tokenizer()), "none")
    ctx = UpdateContext(AlgoConfig(name="grpo", critic="none"), "k3", True, 1.0, True)
    ro = _rollout()
    base, _, _ = policy_gradient_loss(module, ro, ctx)
    ro.kl_coef = torch.tensor([0.1, 0.1, 5.0, 0.1])  # one sequence where an ensemble disagrees
    scaled, _, _ = policy_gradient_loss(module, ro, ctx)
    assert float(scaled.detach()) > float(base.detach())


def test_log_ratio_clip_reaches_the_loss():
    """k3 = exp(ref - pi) - 1 - (ref - pi) overflows where the reference is far likelier; the clip was never passed."""
    module = PolicyWithValue(tiny_causal_lm(tiny_tokenizer()), "none")
    ro = _rollout(ref_logprobs=torch.full((4, 5), 0.0))  # log ref = 0 >> log pi: exp(~5) per token, finite
    ro.ref_logprobs[0, 0] = 200.0  # exp(200) overflows float32 without the clip
    clipped, _, _ = policy_gradient_loss(
        module, ro, UpdateContext(AlgoConfig(name="grpo", critic="none"), "k3", True, 1.0, True, 10.0)
    )
    unclipped, _, _ = policy_gradient_loss(
        module, ro, UpdateContext(AlgoConfig(name="grpo", critic="none"), "k3", True, 1.0, True, None)
    )
    assert torch.isfinite(clipped) and not torch.isfinite(unclipped)


def test_advantages_whiten_with_the_global_statistics():
    """The advantage functions take the process all-reduce: two identical halves must whiten like the whole batch."""
    ro = _rollout()
    ro.values = torch.zeros(4, 5)
    rewards = torch.randn(4, 5, generator=torch.Generator().manual_seed(1))
    a = AlgoConfig(gamma=1.0, lam=1.0)
    full, _ = ADVANTAGES["ppo"](ro, rewards, a)
    doubled = torch.cat([rewards, rewards])  # a 2-process world where both hold the same rows ...
    ro2 = ro.select([0, 1, 2, 3, 0, 1, 2, 3])
    ro2.values = torch.zeros(8, 5)
    whole, _ = ADVANTAGES["ppo"](ro2, doubled, a)
    half, _ = ADVANTAGES["ppo"](ro, rewards, a, lambda t: 2 * t)  # ... seen from one of them through the all-reduce
    assert torch.allclose(half, whole[:4], atol=1e-6)
    assert not torch.allclose(half, full, atol=1e-4)  # the unbiased variance over 40 tokens, not 20


# ---------------------------------------------------------------------------------------------------------------------
# ties in DPO


def test_dpo_drops_ties_by_default_and_counts_them(tiny_dir, tmp_path):
    data = _prefs(tmp_path / "p.jsonl", n=24, ties_every=4)
    summary = _dpo(tiny_dir, tmp_path / "drop", data, "data.eval_fraction=0")
    assert summary["tie_pairs"] == 6 and summary["train_rows"] == 18 and summary["ties"] == "drop"
    assert any("dropped 6 tie pairs" in n for n in summary["notes"])
    trained = _dpo(tiny_dir, tmp_path / "dav", data, "data.eval_fraction=0", "loss.ties=davidson")
    assert trained["train_rows"] == 24 and math.isfinite(trained["final_train"]["loss"])


def test_all_tie_data_says_how_to_train_it(tiny_dir, tmp_path):
    data = _prefs(tmp_path / "p.jsonl", n=8, ties_every=1)
    with pytest.raises(ValueError, match="every training pair is a tie.*loss.ties=davidson"):
        _dpo(tiny_dir, tmp_path / "ties", data, "data.eval_fraction=0")


# ---------------------------------------------------------------------------------------------------------------------
# online DPO: the scheduler counts the optimizer steps that can happen


def test_online_dpo_scheduler_length_counts_pair_mini_batches(tiny_dir, tmp_path):
    from rlhfkit.trainers.online_dpo import train_online_dpo

    prompts = tmp_path / "prompts.jsonl"
    write_jsonl(prompts, [{"prompt": f"Write about film {i}."} for i in range(32)])
    steps, batch, mini_rows = 3, 4, 4  # 4 prompts x 2 samples = 8 rows; <= 4 pairs; 2 pairs per optimizer step
    over = [
        f"model.name_or_path={tiny_dir}",
        f"data.train={prompts}",
        f"train.output_dir={tmp_path / 'od'}",
        f"train.max_steps={steps}",
        f"train.batch_size={batch}",
        "train.lr=1e-3",
        "train.scheduler=linear",
        "train.progress=false",
        "algo.num_samples=2",
        f"algo.mini_batch_size={mini_rows}",
        "sampling.max_new_tokens=6",
        "eval_samples=0",
        REWARD,
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        train_online_dpo(load_config(OnlineDPOConfig, None, over))
    rows = [json.loads(x) for x in (tmp_path / "od" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "train/updates" in r]
    taken = sum(r["train/updates"] for r in train)
    final_lr = train[-1]["train/lr"]
    assert taken > 0
    # linear decay: lr_final = lr * (1 - taken / total) -> the scheduler's length
    total = taken / (1 - final_lr / 1e-3)
    assert total == pytest.approx(steps * math.ceil(batch / (mini_rows // 2)), rel=1e-6)  # was steps * 8 / 4


# ---------------------------------------------------------------------------------------------------------------------
# reward-model calibration under the tie model it was trained with


def test_reward_model_ece_uses_the_tie_model():
    from rlhfkit.trainers.rm import RewardObjective, reward_model_report

    tok = tiny_tokenizer()
    model = tiny_reward_model(tok).eval()
    g = torch.Generator().manual_seed(0)
    rows = [
        EncodedPair(
            torch.randint(3, 30, (3,), generator=g).tolist(),
            torch.randint(3, 30, (4,), generator=g).tolist(),
            torch.randint(3, 30, (5,), generator=g).tolist(),
            tie=i == 0,
            index=i,
        )
        for i in range(12)
    ]
    eces = {}
    for tie_model, param in (("davidson", 1.0), ("rao-kupper", 3.0)):
        obj = RewardObjective(tok.pad_token_id, RewardLossConfig(tie_model=tie_model, tie_param=param), ties=True)
        eces[tie_model] = reward_model_report(obj, model, rows)["ece"]
    no_ties = RewardObjective(tok.pad_token_id, RewardLossConfig(), ties=False)
    bt = reward_model_report(no_ties, model, rows)["ece"]
    assert eces["davidson"] == pytest.approx(bt)  # Davidson's P(win | no tie) is sigma(d), as Bradley-Terry's
    assert not np.isclose(eces["rao-kupper"], bt)  # Rao-Kupper's is not


# ---------------------------------------------------------------------------------------------------------------------
# reward model: every pair of a prompt in one row, each distinct response scored once


def test_grouped_pairs_give_the_same_loss_and_gradient_with_fewer_forwards():
    from rlhfkit.data import collate_pair_batch, collate_scored_pairs, group_by_prompt
    from rlhfkit.trainers.rm import RewardObjective

    tok = tiny_tokenizer()
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 30, (4,), generator=g).tolist() for _ in range(2)]
    responses = [[torch.randint(3, 30, (n,), generator=g).tolist() for n in (3, 5, 4, 6)] for _ in prompts]
    pairs = [
        EncodedPair(p, rs[i], rs[j], tie=(i + j) % 5 == 0, strength=0.1 * i, confidence=0.5 + 0.1 * j, rater=r)
        for p, rs in zip(prompts, responses)
        for i in range(4)
        for j in range(i + 1, 4)
        for r in ("a", "b")  # two raters label every pair
    ]
    groups = group_by_prompt(pairs)
    assert len(groups) == 2 and sum(len(x) for x in groups) == len(pairs) == 24
    grouped = collate_scored_pairs(groups, tok.pad_token_id)
    assert grouped["input_ids"].shape[0] == 8  # 2 prompts x 4 responses, not 48 sequences

    def loss_and_grad(batch):
        model = tiny_reward_model(tok)
        obj = RewardObjective(tok.pad_token_id, RewardLossConfig(), ties=True)
        total, _ = obj.loss(model, batch)
        total.backward()
        return total.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    flat = collate_pair_batch(pairs, tok.pad_token_id)  # chosen rows then rejected rows, every pair forwarded
    n = len(pairs)
    flat["chosen_index"], flat["rejected_index"] = torch.arange(n), torch.arange(n, 2 * n)
    a, ga = loss_and_grad(grouped)
    b, gb = loss_and_grad(flat)
    assert a == pytest.approx(float(b), rel=1e-5)
    assert all(torch.allclose(x, y, atol=1e-5, rtol=1e-4) for x, y in zip(ga, gb))


def test_held_out_scoring_batches_a_prompts_pairs_together_and_keeps_row_order(monkeypatch):
    from rlhfkit.trainers import rm as rm_mod
    from rlhfkit.trainers.rm import MultiHeadRewardObjective, RewardObjective

    tok = tiny_tokenizer()
    model = tiny_reward_model(tok).eval()
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 30, (3,), generator=g).tolist() for _ in range(5)]
    responses = [[torch.randint(3, 30, (n,), generator=g).tolist() for n in (2, 4, 3, 5)] for _ in prompts]
    pairs = [
        EncodedPair(p, rs[i], rs[j], rater=r, index=k, dimensions=(("a", "chosen"), ("b", "tie" if i else "rejected")))
        for k, (p, rs) in enumerate(zip(prompts, responses))
        for i in range(4)
        for j in range(4)
        if i != j
        for r in ("x", "y")
    ]
    rows = [pairs[i] for i in torch.randperm(len(pairs), generator=g).tolist()]  # prompts interleaved
    obj = RewardObjective(tok.pad_token_id, RewardLossConfig(), eval_batch_size=4)
    seen = []
    forward = rm_mod.pair_scores
    monkeypatch.setattr(
        rm_mod, "pair_scores", lambda m, b, pf: seen.append(b["input_ids"].shape[0]) or forward(m, b, pf)
    )
    c, r = obj.score_pairs(model, rows)
    with torch.no_grad():  # the reference: one pair at a time
        one = [rm_mod.pair_scores(model, obj.collate([row]), False) for row in rows]
    assert c.shape == r.shape == (len(rows),)
    assert np.allclose(c, [float(x[0][0]) for x in one], atol=1e-5)
    assert np.allclose(r, [float(x[1][0]) for x in one], atol=1e-5)
    # 5 prompts x 4 responses = 20 distinct sequences, in chunks of at most 8 (two prompts each), not 2 x 120
    assert seen[:3] == [8, 8, 4] and sum(seen[:3]) == 20
    assert obj.score_pairs(model, [])[0].shape == (0,)
    heads = MultiHeadRewardObjective(tok.pad_token_id, RewardLossConfig(), ["a", "b"], eval_batch_size=4)
    two = tiny_reward_model(tok)
    two.score = torch.nn.Linear(two.config.hidden_size, 2, bias=False)
    hc, hr = heads.score_pairs(two.eval(), rows)
    assert hc.shape == (len(rows), 2)
    with torch.no_grad():
        first = rm_mod.pair_scores(two, heads.collate([rows[7]]), False)
    assert np.allclose(hc[7], first[0][0].numpy(), atol=1e-5) and np.allclose(hr[7], first[1][0].numpy(), atol=1e-5)


def test_curation_keeps_the_same_label_from_two_raters():
    from rlhfkit.data import dedupe_exact
    from rlhfkit.data.schemas import parse_preference

    row = {"prompt": "p", "chosen": "good", "rejected": "bad"}
    rows = [
        *parse_preference(row | {"rater": "a"}),
        *parse_preference(row | {"rater": "b"}),
        *parse_preference(row | {"rater": "a"}),
    ]
    kept, report = dedupe_exact(rows)
    assert len(kept) == 2 and report.exact_duplicates == 1  # two votes; the repeat of rater a's is a duplicate
