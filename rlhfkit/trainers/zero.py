"""DeepSpeed ZeRO-2 / ZeRO-3 through accelerate, for every trainer (SFT, reward model, DPO family, KTO, online RL).

- `deepspeed_plugin(cfg, world)`: accelerate's `DeepSpeedPlugin` when `train.deepspeed` is 2 or 3, or `accelerate
  launch --config_file configs/accelerate/deepspeed_zero{2,3}.yaml` asks for DeepSpeed; else None. What the one
  optimizer step decides comes from rlhfkit's `train.*` fields (micro-batch, accumulation, clipping), replacing the
  launcher's values. deepspeed is imported only then; absent, the run stops with "pip install 'rlhfkit[deepspeed]'".
- `use_deepspeed(acc, plugin)`: accelerate selects DeepSpeed on accelerators only; on CPU DeepSpeed's own CPU
  accelerator runs ZeRO over gloo, so take the same accelerate path there (as `make_accelerator` does for FSDP).
  Models are loaded whole and partitioned by `deepspeed.initialize` (zero3_init_flag off), and transformers is not
  told of ZeRO-3: a model loaded later (a reference) or sampled from stays an ordinary module.
- The one optimizer step (step.py) drives the engine as DeepSpeed documents for accumulation driven by the caller:
  the boundary set before each micro-batch's backward (ZeRO reduces the gradients in the last one), then, after the
  finite-loss check on every process, ONE `engine.step()`: it measures the global gradient norm, skips the update when
  the norm is not finite (nothing changes; step.py then stops the run), else clips to `gradient_clipping` (=
  train.max_grad_norm) and steps AdamW. The learning-rate scheduler stays rlhfkit's.
- Checkpoints hold the same files as one process writes: the fp32 master weights and AdamW's state gathered to full
  tensors (`deepspeed.utils.safe_get_full_*`: collectives, every process calls them), numbered as one process numbers
  them, written by rank 0 and partitioned again on resume. The final model: ZeRO-3 gathers it on rank 0 (the
  engine's consolidated state dict); under ZeRO-2 every process holds it whole. The optimizer's parameter groups (online
  RL: the policy's and the critic's learning rates) are numbered as one process's AdamW numbers them.
- Online RL (sharding.py): `whole_weights(acc, policy)` gives the rollout engine the policy's whole weights under
  ZeRO-3 (one gather per generate call); the frozen reference and reward models stay plain, replicated modules.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator
from typing import Any

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DeepSpeedPlugin, DistributedType

from rlhfkit.config import TrainConfig

INSTALL = "pip install 'rlhfkit[deepspeed]'"
_ADAM_STATE = ("exp_avg", "exp_avg_sq")


def launched_with_deepspeed() -> bool:
    """`accelerate launch` with a DeepSpeed config (the launcher sets this for every process)."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def deepspeed_requested(cfg: TrainConfig) -> bool:
    return bool(cfg.deepspeed) or launched_with_deepspeed()


def deepspeed_plugin(cfg: TrainConfig, world: int) -> DeepSpeedPlugin | None:
    if not deepspeed_requested(cfg):
        return None
    if importlib.util.find_spec("deepspeed") is None:
        raise ImportError(f"DeepSpeed was asked for but is not installed: {INSTALL}")
    if launched_with_deepspeed():
        plugin = DeepSpeedPlugin()  # the launcher's DEEPSPEED settings (stage, offload, config file)
        if cfg.deepspeed and cfg.deepspeed != plugin.zero_stage:
            raise ValueError(
                f"train.deepspeed={cfg.deepspeed} but the accelerate config asks for ZeRO-{plugin.zero_stage}: "
                "leave train.deepspeed at 0 under a DeepSpeed launch config"
            )
    else:
        plugin = DeepSpeedPlugin(zero_stage=cfg.deepspeed, zero3_init_flag=False)
    if plugin.zero_stage not in (2, 3):
        raise ValueError(f"rlhfkit runs DeepSpeed ZeRO stage 2 or 3, not {plugin.zero_stage}")
    plugin.zero3_init_flag = False  # models are loaded whole, then partitioned by deepspeed.initialize
    ds = plugin.deepspeed_config
    # the one optimizer step's settings: rlhfkit's train.* decide them, whatever the launch config says
    ds["train_micro_batch_size_per_gpu"] = cfg.micro
    ds["gradient_accumulation_steps"] = cfg.grad_accum
    ds["train_batch_size"] = cfg.batch_size * world
    ds["gradient_clipping"] = cfg.max_grad_norm
    ds.setdefault("zero_optimization", {})["stage3_gather_16bit_weights_on_model_save"] = True
    return plugin


def use_deepspeed(acc: Accelerator, plugin: DeepSpeedPlugin, mixed_precision: str) -> None:
    """Make `acc` a DeepSpeed accelerator (on CPU, where accelerate would not), and keep transformers unaware of
    ZeRO-3 (see the module docstring)."""
    if acc.distributed_type != DistributedType.DEEPSPEED:  # CPU: DeepSpeed's CPU accelerator over gloo
        plugin.set_mixed_precision(mixed_precision)
        plugin.select(_from_accelerator_state=True)
        acc.state.deepspeed_plugins = plugin
        acc.state.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.DEEPSPEED
        acc.native_amp = False  # DeepSpeed casts the model itself (bf16 section of its config)
    if acc.mixed_precision == "bf16":  # a non-finite gradient norm then also skips the update (ZeRO-2 would not)
        plugin.deepspeed_config["bf16"]["check_grad_overflow"] = True
    from transformers.integrations import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()


def is_deepspeed(acc: Accelerator) -> bool:
    return acc.distributed_type == DistributedType.DEEPSPEED


def zero_stage(acc: Accelerator) -> int:
    return acc.state.deepspeed_plugin.zero_stage


def _engine(acc: Accelerator, model: Any) -> Any:
    engine = acc.deepspeed_engine_wrapped.engine
    assert model is engine or acc.unwrap_model(model) is engine.module, "not the model DeepSpeed prepared"
    return engine


def _trainable(engine: Any) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in engine.module.named_parameters() if p.requires_grad]


def _groups(engine: Any) -> list[list[torch.nn.Parameter]]:
    """The trainable parameters of each of the optimizer's groups, in order: as one process's AdamW numbers them."""
    opt = engine.optimizer
    if not hasattr(opt, "sub_group_to_group_id"):  # ZeRO-2 keeps each group's parameters in their order
        return [list(g) for g in opt.bit16_groups]
    groups: dict[int, list[torch.nn.Parameter]] = {}  # ZeRO-3 cuts a large group into consecutive sub-groups
    for i, sub in enumerate(opt.fp16_groups):
        groups.setdefault(opt.sub_group_to_group_id[i], []).extend(sub)
    return [groups[k] for k in sorted(groups)]


def master_weights(acc: Accelerator, model: Any) -> dict[str, torch.Tensor]:
    """The full fp32 master weights of the trainable parameters (a collective; rank 0 gets them, others {})."""
    from deepspeed.utils import safe_get_full_fp32_param

    out: dict[str, torch.Tensor] = {}
    for name, p in _trainable(_engine(acc, model)):
        full = safe_get_full_fp32_param(p)
        if acc.is_main_process:
            out[name] = full.detach().to("cpu").contiguous().clone()
    return out


def load_master_weights(acc: Accelerator, model: Any, weights: dict[str, torch.Tensor]) -> None:
    """Full trainable weights into the model's (partitioned) parameters and DeepSpeed's fp32 master copies."""
    from deepspeed import zero

    engine = _engine(acc, model)
    for name, p in _trainable(engine):
        value = weights[name].to(acc.device)
        gathered = zero.GatheredParameters([p], modifier_rank=0) if hasattr(p, "ds_id") else contextlib.nullcontext()
        with gathered, torch.no_grad():  # ZeRO-3: whole while inside, repartitioned (from rank 0) on exit
            p.copy_(value.to(p.dtype))
        _set_full(p, value.float())


def _set_full(p: torch.nn.Parameter, value: torch.Tensor, key: str | None = None) -> None:
    """A full fp32 value into DeepSpeed's master copy of `p` (key=None) or into its AdamW state `key`. ZeRO-3: this
    process's partition of the value padded as ZeRO-3 pads it (deepspeed 0.19.8's `safe_set_full_*` does not pad,
    and fails on a parameter whose size the process count does not divide, e.g. a value head's bias)."""
    from deepspeed.utils import (
        safe_set_full_fp32_param,
        safe_set_full_optimizer_state,
        safe_set_local_fp32_param,
        safe_set_local_optimizer_state,
    )

    if not hasattr(p, "ds_id"):  # ZeRO-2
        return safe_set_full_fp32_param(p, value) if key is None else safe_set_full_optimizer_state(p, value, key)
    n = p.ds_tensor.numel()  # the partition's size, padding included
    group = p.ds_process_group
    rank, world = torch.distributed.get_rank(group), torch.distributed.get_world_size(group)
    local = torch.nn.functional.pad(value.flatten(), (0, n * world - value.numel()))[rank * n : (rank + 1) * n]
    safe_set_local_fp32_param(p, local) if key is None else safe_set_local_optimizer_state(p, local, key)


def full_optimizer_state(acc: Accelerator, model: Any) -> dict[str, Any]:
    """AdamW's state as one process's `optimizer.state_dict()` (parameters numbered in order, group after group),
    gathered from the partitions (a collective; rank 0 gets the tensors)."""
    from deepspeed.utils import safe_get_full_optimizer_state

    engine = _engine(acc, model)
    base = engine.optimizer.optimizer  # the torch AdamW over DeepSpeed's flat fp32 partitions
    groups = [{k: v for k, v in g.items() if k != "params"} for g in base.param_groups]
    params = _groups(engine)
    if len(groups) != len(params):
        raise ValueError(f"DeepSpeed's optimizer has {len(groups)} parameter groups for {len(params)} of the model's")
    first = 0
    for g, ps in zip(groups, params):
        g["params"] = list(range(first, first + len(ps)))
        first += len(ps)
    started = [s for s in base.state.values() if "step" in s]
    if started:
        _link_state(engine.optimizer)
    state: dict[int, dict[str, torch.Tensor]] = {}
    for i, p in enumerate(p for ps in params for p in ps):
        if started:
            full = {k: safe_get_full_optimizer_state(p, k) for k in _ADAM_STATE}
            step = started[0]["step"]
            state[i] = {"step": step.detach().clone(), **{k: v.detach().to("cpu").clone() for k, v in full.items()}}
    return {"state": state if acc.is_main_process else {}, "param_groups": groups}


def _link_state(opt: Any) -> None:
    """ZeRO-2 reads and writes AdamW's state through per-parameter views, linked once: after the first group's first
    step (deepspeed 0.19.8), when a second group (a critic's) has no state yet. Link every group's now."""
    if hasattr(opt, "_hp_optimizer_states_linked"):
        opt._hp_optimizer_states_linked = False
        opt._lazy_init_hp_params_optimizer_state()


def load_full_optimizer_state(acc: Accelerator, model: Any, saved: dict[str, Any]) -> None:
    """Partition a full AdamW state (as `full_optimizer_state` writes it) into DeepSpeed's optimizer."""
    engine = _engine(acc, model)
    base = engine.optimizer.optimizer
    for group, hyper in zip(base.param_groups, saved["param_groups"]):
        group.update({k: v for k, v in hyper.items() if k != "params"})  # lr, betas, ...: as one process restores
    if not saved["state"]:
        return
    step = next(iter(saved["state"].values()))["step"]
    opt = engine.optimizer  # ZeRO-3 hands AdamW its flat fp32 partitions only while stepping: take them from ZeRO
    flats = opt.fp32_partitioned_groups_flat if zero_stage(acc) == 3 else opt.single_partition_of_fp32_groups
    for flat in flats:  # AdamW creates its state lazily, at its first step: create it as AdamW would
        st = base.state[flat]
        st.setdefault("step", torch.zeros((), dtype=torch.float32))
        for k in _ADAM_STATE:
            st.setdefault(k, torch.zeros_like(flat, memory_format=torch.preserve_format))
        st["step"].fill_(float(step))
    _link_state(opt)
    for i, p in enumerate(p for ps in _groups(engine) for p in ps):
        for k in _ADAM_STATE:
            _set_full(p, saved["state"][i][k].to(acc.device).float(), k)


def gathered_model_state(acc: Accelerator, model: Any) -> dict[str, torch.Tensor] | None:
    """ZeRO-3: the whole model's weights gathered on rank 0 (a collective; other ranks get {}); ZeRO-2: None (every
    process holds the whole model)."""
    engine = _engine(acc, model)
    if zero_stage(acc) < 3:
        return None
    state = engine._zero3_consolidated_16bit_state_dict()  # layer by layer; "16bit" is the training dtype
    return dict(state) if state is not None else {}


@contextlib.contextmanager
def whole_weights(acc: Accelerator, module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """`module` (the policy inside the engine) with whole weights until the block ends, however many forwards run
    inside it (the rollout engine's: their number differs between processes, so none may communicate). ZeRO-3: its
    parameters gathered once (a collective), the engine's module hooks (which would gather and release them again
    around every sub-module's forward) lifted meanwhile and registered again after, as DeepSpeed's own
    `deepspeed.runtime.zero.unwrap_model_for_generation` does for the whole engine. ZeRO-2: whole already."""
    if zero_stage(acc) < 3:
        yield module
        return
    from deepspeed import zero

    offload = acc.deepspeed_engine_wrapped.engine.optimizer.parameter_offload
    with zero.GatheredParameters(list(module.parameters())):
        for hook in offload.forward_hooks + offload.backward_hooks:
            hook.remove()
        offload.forward_hooks, offload.backward_hooks = [], []
        try:
            yield module
        finally:
            offload._register_deepspeed_module(offload.module)
