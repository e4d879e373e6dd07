"""DeepSpeed ZeRO-2 / ZeRO-3 through the CLI on 2 CPU processes (gloo, DeepSpeed's CPU accelerator): the losses,
gradient norms and final weights of 1 process with the same global batch; the summary says DEEPSPEED and its stage;
model/ loads with transformers alone; a run resumed under ZeRO-3 continues exactly; a non-finite gradient on one
process stops every process before the update. Online RL: PPO with a value head under ZeRO-3 equals 1 process (greedy
sampling) and resumes exactly; GRPO under ZeRO-2 (the shipped launch config) equals DDP. Skipped where deepspeed is
not installed."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhfkit.config import ShardingConfig, TrainConfig
from tests import test_distributed_cli as cli
from tests import test_fsdp_online as online
from tests.test_distributed_cli import ROOT, TORCHRUN, _accelerate, _args, _assert_same_run, _distributed, _run

work, baselines = cli.work, cli.baselines  # the shared fixtures: the tiny model, the data, the 1-process runs

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None,
    reason="deepspeed is not installed (pip install 'rlhfkit[deepspeed]')",
)


def _loads_equal(out: Path) -> None:
    """model/ is a plain Hugging Face directory: transformers alone loads exactly the saved weights."""
    from transformers import AutoModelForCausalLM

    loaded = dict(AutoModelForCausalLM.from_pretrained(out / "model").state_dict())
    saved = load_file(str(out / "model" / "model.safetensors"))
    assert saved and all(torch.equal(loaded[k], v) for k, v in saved.items())


def test_deepspeed_zero3_sft_two_processes_equal_one(work, baselines):
    """torchrun + train.deepspeed=3: parameters, gradients and AdamW state partitioned over 2 processes; the gathered
    final model equals 1 process's. (DPO under ZeRO-3: the resume test below, which runs it.)"""
    out = work / "zero3-sft"
    _run(TORCHRUN, _args(work, "sft", out, 2, "train.deepspeed=3"))
    assert _distributed(out) == {"processes": 2, "type": "DEEPSPEED", "zero_stage": 3}
    _assert_same_run(baselines["sft"], out, 1e-5)
    _loads_equal(out)


def test_deepspeed_zero2_accelerate_launch_config(work, baselines):
    """The shipped ZeRO-2 config through accelerate's launcher (its DEEPSPEED settings; fp32 here, as the baseline)."""
    out = work / "zero2-dpo"
    config = str(ROOT / "configs/accelerate/deepspeed_zero2.yaml")
    _run(_accelerate("--config_file", config, "--mixed_precision", "no"), _args(work, "dpo", out, 2))
    assert _distributed(out) == {"processes": 2, "type": "DEEPSPEED", "zero_stage": 2}
    _assert_same_run(baselines["dpo"], out, 1e-5)
    _loads_equal(out)


def test_deepspeed_zero3_dpo_resume_continues_exactly(work, baselines):
    """DPO under ZeRO-3: 2 steps, then --resume to 3, == 3 steps of 1 process (losses, norms, final weights). The fp32
    master weights and AdamW's state are gathered into the checkpoint in one process's layout and partitioned again on
    resume (with AdamW's moments lost, the last step would move the weights differently)."""
    out = work / "zero3-dpo-resume"
    _run(TORCHRUN, _args(work, "dpo", out, 2, "train.deepspeed=3", "train.max_steps=2"))
    ckpt = out / "checkpoints" / "step-000002"
    state = torch.load(ckpt / "optimizer.pt", weights_only=True)
    assert len(state["state"]) == len(load_file(str(ckpt / "trainable.safetensors")))  # one process's layout
    assert float(state["state"][0]["step"]) == 2 and float(state["state"][0]["exp_avg_sq"].abs().sum()) > 0
    _run(TORCHRUN, [*_args(work, "dpo", out, 2, "train.deepspeed=3"), "--resume"])
    assert _distributed(out) == {"processes": 2, "type": "DEEPSPEED", "zero_stage": 3}
    _assert_same_run(baselines["dpo"], out, 1e-5)
    _loads_equal(out)


def test_deepspeed_nan_gradient_on_one_process_stops_every_process(tmp_path):
    """Only rank 1's gradient turns NaN at step 3 (its loss stays finite): DeepSpeed's global norm skips the update on
    both processes, both raise at that step, and the checkpoint holds the finite weights from before it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, *TORCHRUN, "tests/deepspeed_worker.py", str(tmp_path / "run")]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out[-3000:]
    for rank in (0, 1):
        assert f"rank {rank}: step 2: gradient norm is inf" in out, out[-3000:]
    weights = load_file(str(tmp_path / "run" / "checkpoints" / "step-000002" / "trainable.safetensors"))
    assert weights and all(bool(torch.isfinite(w).all()) for w in weights.values())


# ----------------------------------------------------------------------------------------------------------------------
# online RL (the helpers of tests/test_fsdp_online.py: 4 prompts per rollout in all, a tiny reward model)


@pytest.fixture(scope="module")
def rl_work(tmp_path_factory) -> Path:
    return online.online_work(tmp_path_factory.mktemp("deepspeed-online"))


def test_deepspeed_zero3_ppo_two_processes_equal_one_and_resume_exactly(rl_work):
    """PPO with a value head (policy and critic one engine, two learning-rate groups), greedy sampling: ZeRO-3 on 2
    processes for 2 rollouts, then --resume to 3, == 3 rollouts of 1 process (every global number logged, the final
    weights, and AdamW's state in the checkpoint, numbered group after group as one process numbers it). The rollout
    engine samples from the policy gathered once per generate call; the reference and the reward model are replicated."""
    one, zero3 = rl_work / "ppo-one", rl_work / "ppo-zero3"
    online._run([], online._args(rl_work, "ppo", one, 4, 3, online.GREEDY))
    args = online._args(rl_work, "ppo", zero3, 2, 2, online.GREEDY, "train.deepspeed=3")
    online._run(TORCHRUN, args)
    online._run(TORCHRUN, [*online._args(rl_work, "ppo", zero3, 2, 3, online.GREEDY, "train.deepspeed=3"), "--resume"])
    assert _distributed(zero3) == {
        "processes": 2,
        "type": "DEEPSPEED",
        "zero_stage": 3,
        "rollout_weights": "gather",
        "frozen_models": "replicate",
    }
    online._assert_same_metrics(one, zero3, 3)
    online._assert_same_weights(one, zero3)
    _loads_equal(zero3)
    a, b = (torch.load(o / "checkpoints/step-000003/optimizer.pt", weights_only=True) for o in (one, zero3))
    assert [g["params"] for g in a["param_groups"]] == [g["params"] for g in b["param_groups"]]
    assert len(a["param_groups"]) == 2 and a["state"].keys() == b["state"].keys()  # the policy's, the value head's
    for i, x in a["state"].items():
        assert float(x["step"]) == float(b["state"][i]["step"]) == 3 * 4  # 4 PPO epochs of one mini-batch a rollout
        for k in ("exp_avg", "exp_avg_sq"):
            assert torch.allclose(x[k], b["state"][i][k], atol=1e-6), (i, k)


def test_deepspeed_zero2_grpo_launch_config_equals_ddp(rl_work):
    """GRPO (sampled, 2 samples per prompt) through the shipped ZeRO-2 launch config == the same under DDP: each
    process draws the same samples from the same weights, so every logged number and the final weights agree."""
    ddp, zero2 = rl_work / "grpo-ddp", rl_work / "grpo-zero2"
    more = ["algo.num_samples=2", "kl.coef=0.05"]
    online._run(TORCHRUN, online._args(rl_work, "grpo", ddp, 2, 2, *more))
    config = str(ROOT / "configs/accelerate/deepspeed_zero2.yaml")
    launch = _accelerate("--config_file", config, "--mixed_precision", "no")
    online._run(launch, online._args(rl_work, "grpo", zero2, 2, 2, *more))
    assert _distributed(ddp) == {"processes": 2, "type": "MULTI_CPU"}
    assert _distributed(zero2) == {
        "processes": 2,
        "type": "DEEPSPEED",
        "zero_stage": 2,
        "rollout_weights": "gather",
        "frozen_models": "replicate",
    }
    assert any(abs(r.get("train/loss", 0.0)) > 0 for r in online._rows(zero2))  # advantages were not all zero
    online._assert_same_metrics(ddp, zero2, 2)
    online._assert_same_weights(ddp, zero2)
    start = load_file(str(rl_work / "tiny" / "model.safetensors"))
    end = load_file(str(zero2 / "model" / "model.safetensors"))
    assert any(not torch.equal(start[k], end[k]) for k in start)  # the policy moved


def test_deepspeed_refuses_sharded_frozen_models():
    """sharding.frozen=shard is FSDP2's: under DeepSpeed it stops before any model loads (FSDP2 keeps it)."""
    from rlhfkit.trainers.sharding import check_online

    with pytest.raises(ValueError, match="sharding.frozen=shard is FSDP2's"):
        check_online(TrainConfig(deepspeed=2), ShardingConfig(frozen="shard"))
    check_online(TrainConfig(deepspeed=3), ShardingConfig(rollout="copy"))
    check_online(TrainConfig(fsdp=True), ShardingConfig(frozen="shard"))
