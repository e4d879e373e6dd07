"""Online RL under FSDP2 through the CLI on 2 CPU processes (gloo), against 1 process with the same global batch:
PPO's losses, gradient norms, KL and held-out metrics to 1e-5 with greedy sampling (samples then do not depend on how
prompts are split over processes); resume continues exactly; LoRA + a separate critic with the inference-copy engine;
online DPO, GRPO, RLOO and REINFORCE++ sharded equal the same replicated (DDP: the same per-process sampling streams); a hung process in the
online loop is an error naming rank and step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhfkit.data import write_jsonl
from rlhfkit.models.tiny import save_tiny

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = ["-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone"]
TOL = 1e-5


def online_work(d: Path) -> Path:
    """A tiny causal LM (the policy), a tiny reward model and 16 prompts in `d` (tests/test_deepspeed.py shares it)."""
    save_tiny(d / "tiny", kind="causal")
    save_tiny(d / "rm", kind="reward")
    write_jsonl(d / "prompts.jsonl", [{"prompt": f"Write about film {i}."} for i in range(16)])
    return d


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return online_work(tmp_path_factory.mktemp("fsdp-online"))


def _args(work: Path, command: str, out: Path, per_process: int, steps: int, *more: str) -> list[str]:
    """4 prompts per rollout in all (per_process x processes), a tiny reward model, 2 held-out prompts."""
    return [
        command,
        f"model.name_or_path={work / 'tiny'}",
        f"data.train={work / 'prompts.jsonl'}",
        "data.eval_fraction=0.25",
        "eval_samples=2",
        f"reward.sources=[{{kind: model, path: {work / 'rm'}}}]",
        f"train.batch_size={per_process}",
        f"train.max_steps={steps}",
        "train.lr=1e-3",
        "train.progress=false",
        "sampling.max_new_tokens=6",
        "-o",
        str(out),
        *more,
    ]


def _run(launcher: list[str], args: list[str], ok: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [sys.executable, *launcher, "-m", "rlhfkit.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=900,
    )  # fmt: skip
    if ok:
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-4000:]
    return r


def _rows(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


# global over processes (train/score and the per-row statistics are the logging process's own rows)
SAME = ("train/loss", "train/grad_norm", "train/kl", "train/kl_coef", "eval/score", "eval/kl", "eval/response_length")


def _by_step(out: Path) -> dict[int, dict]:
    merged: dict[int, dict] = {}
    for r in _rows(out):
        assert not (set(r) - {"step", "time"}) & set(merged.get(r["step"], {})), r  # one writer: nothing logged twice
        merged.setdefault(r["step"], {}).update(r)
    return merged


def _assert_same_metrics(a: Path, b: Path, steps: int) -> None:
    """Every global number both runs logged at the same step agrees to TOL (held-out metrics: at the end of each)."""
    ma, mb = _by_step(a), _by_step(b)
    assert {s for s, r in mb.items() if "train/loss" in r} == set(range(1, steps + 1))
    compared = 0
    for step, y in mb.items():
        x = ma.get(step, {})
        for k in SAME:
            if k in x and k in y:
                assert abs(x[k] - y[k]) <= TOL, (step, k, x[k], y[k])
                compared += 1
    assert compared >= 4 * steps


def _assert_same_weights(a: Path, b: Path, name: str = "model/model.safetensors") -> None:
    wa, wb = load_file(str(a / name)), load_file(str(b / name))
    assert wa.keys() == wb.keys()
    diff = torch.cat([(wa[k].float() - wb[k].float()).abs().flatten() for k in wa])
    # Adam divides by sqrt(v): an eps-sized gradient's rounding can move a few elements by ~lr/20 (test_distributed_cli)
    assert float(diff.max()) <= 1e-3 and int((diff > 1e-6).sum()) <= max(1, diff.numel() // 1_000)


def _distributed(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())["distributed"]


GREEDY = "sampling.temperature=0"


@pytest.fixture(scope="module")
def ppo_one(work) -> Path:
    """1 process, 4 prompts per rollout, 4 rollouts; PPO with a value head."""
    out = work / "ppo-one"
    _run([], _args(work, "ppo", out, 4, 4, GREEDY))
    assert _distributed(out) == {"processes": 1, "type": "NO"}
    return out


@pytest.fixture(scope="module")
def ppo_fsdp(work) -> Path:
    """FSDP2 on 2 processes, 3 rollouts (then resumed to 4 by the resume test), reference and reward model sharded."""
    out = work / "ppo-fsdp"
    _run(TORCHRUN, _args(work, "ppo", out, 2, 3, GREEDY, "train.fsdp=true", "sharding.frozen=shard"))
    return out


def test_fsdp_ppo_two_processes_equal_one(ppo_one, ppo_fsdp):
    assert _distributed(ppo_fsdp) == {
        "processes": 2,
        "type": "FSDP",
        "fsdp_version": 2,
        "rollout_weights": "gather",
        "frozen_models": "shard",
    }
    _assert_same_metrics(ppo_one, ppo_fsdp, 3)
    assert (ppo_fsdp / "checkpoints" / "step-000003" / "trainable.safetensors").exists()
    assert not (ppo_fsdp / "checkpoints" / "step-000003" / "rng-2.json").exists()  # one file per process, no more


def test_fsdp_ppo_resume_continues_exactly(work, ppo_one, ppo_fsdp):
    """3 rollouts under FSDP2, then --resume to 4 == 4 straight in 1 process; the final model is a plain HF dir."""
    _run(
        TORCHRUN, [*_args(work, "ppo", ppo_fsdp, 2, 4, GREEDY, "train.fsdp=true", "sharding.frozen=shard"), "--resume"]
    )
    _assert_same_metrics(ppo_one, ppo_fsdp, 4)
    _assert_same_weights(ppo_one, ppo_fsdp)
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(ppo_fsdp / "model")
    saved = load_file(str(ppo_fsdp / "model" / "model.safetensors"))
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in saved.items())


def test_fsdp_lora_separate_critic_copy_engine_saves_peft_adapters(work):
    """LoRA policy + a separate critic (sharded like the policy), the inference-copy engine: 2 processes == 1; the
    adapters load with peft and equal those of 1 process; model/ is the merged plain model."""
    more = ["model.lora.enabled=true", "algo.critic=separate", f"algo.critic_path={work / 'rm'}", GREEDY]
    one, two = work / "lora-one", work / "lora-fsdp"
    _run([], _args(work, "ppo", one, 4, 2, *more))
    _run(TORCHRUN, _args(work, "ppo", two, 2, 2, *more, "train.fsdp=true", "sharding.rollout=copy"))
    assert _distributed(two)["rollout_weights"] == "copy"
    _assert_same_metrics(one, two, 2)
    _assert_same_weights(one, two, "adapter/adapter_model.safetensors")
    _assert_same_weights(one, two)
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(work / "tiny"), two / "adapter")
    merged = AutoModelForCausalLM.from_pretrained(two / "model")
    ids = torch.tensor([[5, 9, 13, 2, 7]])
    with torch.no_grad():
        assert torch.allclose(peft(input_ids=ids).logits, merged(input_ids=ids).logits, atol=1e-5)


def test_fsdp_online_dpo_equals_ddp(work):
    """Online DPO (sampled, 2 samples per prompt) sharded with the frozen models sharded == replicated (DDP): each
    process draws the same samples from the same weights, so every logged number agrees."""
    ddp, fsdp = work / "odpo-ddp", work / "odpo-fsdp"
    more = ["algo.num_samples=2"]
    _run(TORCHRUN, _args(work, "online-dpo", ddp, 2, 2, *more))
    _run(TORCHRUN, _args(work, "online-dpo", fsdp, 2, 2, *more, "train.fsdp=true", "sharding.frozen=shard"))
    assert _distributed(ddp) == {"processes": 2, "type": "MULTI_CPU"}
    assert _distributed(fsdp)["type"] == "FSDP"
    pairs = [r["train/pairs"] for r in _rows(fsdp) if "train/pairs" in r]
    assert pairs and all(p >= 1 for p in pairs)  # it trained on pairs (the same number on both processes)
    _assert_same_metrics(ddp, fsdp, 2)
    _assert_same_weights(ddp, fsdp)


@pytest.mark.parametrize("command", ["grpo", "rloo", "reinforce++"])
def test_fsdp_group_methods_equal_ddp(work, command):
    """GRPO, RLOO and REINFORCE++ (sampled, 2 samples per prompt: groups with a spread, so the policy moves) sharded
    with the frozen models sharded == replicated (DDP): the same samples from the same weights on each process, so
    every logged number and the final weights agree."""
    ddp, fsdp = work / f"{command}-ddp", work / f"{command}-fsdp"
    more = ["algo.num_samples=2", "kl.coef=0.05"]
    _run(TORCHRUN, _args(work, command, ddp, 2, 2, *more))
    _run(TORCHRUN, _args(work, command, fsdp, 2, 2, *more, "train.fsdp=true", "sharding.frozen=shard"))
    assert _distributed(ddp) == {"processes": 2, "type": "MULTI_CPU"}
    assert _distributed(fsdp)["type"] == "FSDP"
    assert any(abs(r.get("train/loss", 0.0)) > 0 for r in _rows(fsdp))  # advantages were not all zero
    _assert_same_metrics(ddp, fsdp, 2)
    _assert_same_weights(ddp, fsdp)
    start = load_file(str(work / "tiny" / "model.safetensors"))
    end = load_file(str(fsdp / "model" / "model.safetensors"))
    assert any(not torch.equal(start[k], end[k]) for k in start)  # the policy moved


def test_fsdp_online_hung_process_is_an_error_naming_rank_and_step(work, tmp_path):
    """Rank 1's reward stalls in rollout 2 past train.collective_timeout=3 s: rank 0 stops with an error naming rank 0
    and step 2 instead of waiting for ever."""
    args = _args(work, "grpo", tmp_path / "o", 2, 3, "train.fsdp=true", "train.collective_timeout=3")
    args = [a for a in args if not a.startswith(("reward.sources", "eval_samples"))]
    args += ["eval_samples=0", "reward.sources=[{kind: callable, path: 'tests.stall_reward:stall_on_rank_1'}]"]
    r = _run(TORCHRUN, args, ok=False)
    assert r.returncode != 0
    assert "error: rank 0, step 2: a collective with the other processes failed" in r.stderr, r.stderr[-4000:]
    assert "train.collective_timeout=3s" in r.stderr


def test_separate_critic_values_are_its_head_on_every_response_position():
    """The separate critic runs its own forward (what FSDP needs) and still gives the head's value at each position
    that predicts a response token, with gradients to the whole critic; a forward hook left behind would leak."""
    from rlhfkit.models.tiny import tiny_causal_lm, tiny_reward_model
    from rlhfkit.models.value import PolicyWithValue

    torch.manual_seed(0)
    policy, critic = tiny_causal_lm(), tiny_reward_model()
    module = PolicyWithValue(policy, "separate", critic)
    ids = torch.randint(3, 60, (3, 9))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # a left-padded row
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    r = 4
    _, _, values = module(ids, mask, pos, ids[:, -r:])
    h = critic.model(input_ids=ids, attention_mask=mask, position_ids=pos).last_hidden_state[:, -(r + 1) : -1]
    assert values.shape == (3, r)
    assert torch.allclose(values, critic.score(h).squeeze(-1), atol=1e-6)
    values.sum().backward()
    assert critic.score.weight.grad is not None and critic.model.embed_tokens.weight.grad.abs().sum() > 0
    assert not critic._forward_hooks and not critic.score._forward_hooks
