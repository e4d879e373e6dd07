"""Online RL under FSDP2 and DeepSpeed ZeRO: whole weights for the rollout engine, the frozen models sharded or
replicated.

The policy (with its value head or separate critic, one module) is sharded by the session like any trainer's model
(`distributed.prepare_sharded`: a unit per transformer block and one for the policy and for the critic). What online
RL adds:

- Generation runs many small forwards whose number differs between processes (each stops at its own EOS), so it
  cannot all-gather a block per forward: the engine needs the whole weights before it starts. `sharding.rollout`:
    gather: the policy's units are gathered once per generate call (FSDP2 `unshard`, kept unsharded through the
            call, resharded after). Costs one all-gather of the policy per rollout and the whole weights only
            while sampling; decoding goes through the FSDP-hooked modules.
    copy:   every process keeps an unsharded inference copy of the policy, synced (the same all-gather, then a copy
            of the trainable weights) before each generate call, i.e. once after each rollout step's updates. Costs
            a whole policy of memory per process for the whole run; the copy has no hooks, so rlhfkit's lean
            decoding path runs on it.
  Both give the same samples (tests); docs/benchmarks.md measures them.
- The frozen reference and reward models: `sharding.frozen=shard` (FSDP2 units too: each forward all-gathers, every
  process runs the same number of forwards: same micro-batches and reward batches) or `replicate` (a whole copy on
  every process, no communication). Under LoRA the reference is the policy with adapters disabled: sharded with it.

Under DeepSpeed the policy and its critic are one engine (`deepspeed.initialize` through the session). ZeRO-2 keeps
the weights whole on every process, so `gather` gathers nothing; under ZeRO-3 `gather` is `zero.whole_weights` (the
policy's parameters gathered once per generate call, the engine's per-module hooks lifted meanwhile) and `copy` syncs
the copy inside the same gather. The frozen models stay plain modules, whole on every process (`replicate`; `shard`
is refused before any model loads). Under LoRA the reference is the policy with adapters disabled: partitioned with it.
"""

from __future__ import annotations

import contextlib
import copy
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch.distributed.fsdp import FSDPModule, fully_shard

from rlhfkit.config import ShardingConfig, TrainConfig
from rlhfkit.rollout import Rollout, SamplingParams
from rlhfkit.trainers import zero
from rlhfkit.trainers.distributed import block_classes, full_model_state


@contextlib.contextmanager
def whole_weights(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Every FSDP unit inside `module` gathered (one all-gather each: a collective) and kept whole until the block
    ends, however many forwards run inside it (none of them communicates)."""
    units = [m for m in module.modules() if isinstance(m, FSDPModule)]
    for u in units:
        u.set_reshard_after_forward(False, recurse=False)
        u.unshard()
    try:
        yield module
    finally:
        for u in units:
            u.reshard()
            u.set_reshard_after_forward(True, recurse=False)


class ShardedEngine:
    """A rollout engine (`rollout.HFEngine`) over a sharded policy; `mode` is `sharding.rollout`, `whole` makes the
    policy's weights whole for a block (FSDP2's or ZeRO's; module docstring)."""

    def __init__(
        self,
        engine: Any,
        policy: torch.nn.Module,
        mode: str,
        whole: Callable[[torch.nn.Module], contextlib.AbstractContextManager] = whole_weights,
    ):
        self.inner, self.policy, self.mode, self.whole = engine, policy, mode, whole
        self.replica: torch.nn.Module | None = None
        if mode == "copy":  # made before the policy is sharded: the unsharded architecture, without hooks
            self.replica = copy.deepcopy(policy).requires_grad_(False).eval()
            engine.load_weights(self.replica)

    @property
    def model(self) -> torch.nn.Module:
        return self.inner.model

    def sync(self) -> None:
        """The copy takes the policy's current trainable weights (every process calls this together)."""
        assert self.replica is not None
        target = dict(self.replica.named_parameters())
        with self.whole(self.policy), torch.no_grad():
            for name, p in self.policy.named_parameters():
                if p.requires_grad:  # frozen weights (LoRA's base) never change
                    target[name].copy_(p)

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams, num_samples: int = 1) -> Rollout:
        if self.replica is not None:
            self.sync()
            return self.inner.generate(prompts, params, num_samples)
        with self.whole(self.policy):
            return self.inner.generate(prompts, params, num_samples)


def shard_frozen(model: torch.nn.Module) -> torch.nn.Module:
    """FSDP2 over a frozen model (no optimizer): a unit per transformer block, then the root; every forward gathers
    and frees its units again (a collective)."""
    blocks = set(block_classes(model))
    for m in model.modules():
        if type(m).__name__ in blocks:
            fully_shard(m, reshard_after_forward=True)
    fully_shard(model, reshard_after_forward=True)
    return model


def reward_models(source: Any) -> list[torch.nn.Module]:
    """The models inside a reward source and its composites (weighted sums, ensembles, normalization)."""
    found: list[torch.nn.Module] = []
    if isinstance(getattr(source, "model", None), torch.nn.Module):
        found.append(source.model)
    for inner in [getattr(source, "source", None), *getattr(source, "sources", []), *getattr(source, "members", [])]:
        if inner is not None:
            found += reward_models(inner)
    return found


def check_online(train: TrainConfig, sharding: ShardingConfig) -> None:
    """Before any model loads: what online RL does not run under DeepSpeed."""
    if zero.deepspeed_requested(train) and sharding.frozen == "shard":
        raise ValueError(
            "sharding.frozen=shard is FSDP2's: under DeepSpeed the frozen reference and reward models are replicated "
            "on every process (leave sharding.frozen=replicate)"
        )


def shard_online(run: Any, mode: str, frozen: str) -> dict[str, str]:
    """Before the session shards the policy: the engine gets whole weights, frozen models are sharded when asked.
    Returns what the summary records."""
    if zero.is_deepspeed(run.accelerator):  # frozen models replicated (check_online refused anything else)
        run.engine = ShardedEngine(run.engine, run.policy, mode, functools.partial(zero.whole_weights, run.accelerator))
        return {"rollout_weights": mode, "frozen_models": "replicate"}
    run.engine = ShardedEngine(run.engine, run.policy, mode)
    if frozen == "shard":
        models = reward_models(run.reward) + (reward_models(run.gold) if run.gold is not None else [])
        ref = run.reference.model
        for m in {id(m): m for m in [*models, *([ref] if ref is not None and ref is not run.policy else [])]}.values():
            shard_frozen(m)
    return {"rollout_weights": mode, "frozen_models": frozen}


def policy_state(acc: Any, module: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """Under FSDP, the policy's gathered full weights (a collective: rank 0 gets them, the others {}), keyed as the
    policy's own; else None (the policy itself holds them)."""
    full = full_model_state(acc, module)
    if full is None:
        return None
    return {k.removeprefix("policy."): v for k, v in full.items() if k.startswith("policy.")}
