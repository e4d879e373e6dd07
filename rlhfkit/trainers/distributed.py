"""How the processes of one run train together, through accelerate (DDP, FSDP2, DeepSpeed ZeRO-2/3: `zero.py`).

- `start_processes(cfg)` joins the run's processes, once per process, exactly as the accelerator will (CPU unless CUDA
  is there, the collective timeout). Whatever asks "am I the main process?" before the accelerator exists goes through
  it: a bare `PartialState()` would settle accelerate on "no distribution" for the whole process, and every process of
  `accelerate launch --cpu` or `torchrun` would then train alone and write the same output directory.
- `make_accelerator(cfg)`: the run's accelerator; FSDP2 (`fully_shard` per transformer block) when `train.fsdp` is on
  or `accelerate launch --config_file fsdp2.yaml` asks for it, DeepSpeed ZeRO when `train.deepspeed` or a DeepSpeed
  launch config does (`zero.py`). accelerate picks FSDP and DeepSpeed on accelerators only; on CPU the same accelerate
  paths run over gloo (that is how the CPU tests prove them).
- Under FSDP and ZeRO the weights and the optimizer state live in shards: `trainable_state` / `optimizer_state` gather
  the full state (a collective: every process calls them; rank 0 gets the tensors), `load_trainable` /
  `load_optimizer` shard a full state back. Without sharding they are the plain `named_parameters` / `state_dict`.
- `prepare_sharded(acc, model, optimizer)`: FSDP2 over every transformer block, and over every Hugging Face model
  held inside a wrapper (the online trainers' policy + critic module): such a model is called on its own too (the
  rollout engine, the reference as the policy with adapters disabled), so it must be a unit whose forward gathers
  its own weights. LoRA shards like full fine-tuning (frozen and trainable parameters share units).
- `plain_copy(model, state)`: on rank 0, an unsharded model of the same architecture holding gathered full weights
  (what a LoRA model is merged and saved from).
- `collective_guard(rank, step, timeout)`: a collective that timed out (a hung or dead peer) becomes a
  `CollectiveTimeout` naming this rank and the step.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin, InitProcessGroupKwargs
from peft import PeftModel, get_peft_model
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule
from transformers import PreTrainedModel

from rlhfkit.config import TrainConfig
from rlhfkit.errors import CollectiveTimeout
from rlhfkit.trainers import zero


def _on_cpu() -> bool:
    return not torch.cuda.is_available()


def _process_group_kwargs(cfg: TrainConfig) -> InitProcessGroupKwargs:
    return InitProcessGroupKwargs(timeout=timedelta(seconds=cfg.collective_timeout))


def start_processes(cfg: TrainConfig) -> PartialState:
    """This process's place in the run (joining the process group on first call), as the accelerator will see it."""
    return PartialState(cpu=_on_cpu(), **_process_group_kwargs(cfg).to_kwargs())


def _fsdp_plugin(cfg: TrainConfig) -> FullyShardedDataParallelPlugin | None:
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":  # accelerate launch --config_file fsdp2.yaml
        plugin = FullyShardedDataParallelPlugin()  # reads the launcher's FSDP_* settings
        if plugin.fsdp_version != 2:
            raise ValueError("rlhfkit shards with FSDP2: set fsdp_version: 2 in the accelerate config")
        return plugin
    if not cfg.fsdp:
        return None
    return FullyShardedDataParallelPlugin(
        fsdp_version=2,
        auto_wrap_policy="transformer_based_wrap",  # one unit per block of the model's `_no_split_modules`
        state_dict_type="FULL_STATE_DICT",
        reshard_after_forward=True,
        cpu_ram_efficient_loading=False,
    )


def make_accelerator(cfg: TrainConfig) -> Accelerator:
    """The accelerator a trainer shares with the loop, so that models it prepares itself land on the same device."""
    state = start_processes(cfg)
    plugin = _fsdp_plugin(cfg)
    ds_plugin = zero.deepspeed_plugin(cfg, state.num_processes)
    if plugin is not None and ds_plugin is not None:
        raise ValueError("FSDP and DeepSpeed are both asked for (train.fsdp, train.deepspeed, the launch config)")
    acc = Accelerator(
        mixed_precision=cfg.mixed_precision,
        cpu=_on_cpu(),
        kwargs_handlers=[_process_group_kwargs(cfg)],
        fsdp_plugin=plugin,
        deepspeed_plugin=ds_plugin,
    )
    if plugin is not None and acc.distributed_type == DistributedType.MULTI_CPU:
        # accelerate selects FSDP on accelerators only; fully_shard runs on CPU with gloo, so take the same path there
        acc.state.fsdp_plugin = plugin
        if acc.mixed_precision != "no":
            plugin.set_mixed_precision(acc.mixed_precision)
        acc.state.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    if ds_plugin is not None:
        zero.use_deepspeed(acc, ds_plugin, cfg.mixed_precision)
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true" and acc.num_processes == 1 and acc.is_main_process:
        acc.print(
            "note: `accelerate launch --cpu` starts one process unless given --mpirun_hostfile; for data parallelism "
            "on CPU use `accelerate launch --multi_gpu --num_processes N` (gloo without CUDA) or torchrun"
        )
    return acc


def is_sharded(acc: Accelerator) -> bool:
    """FSDP (DTensor shards); DeepSpeed is `zero.is_deepspeed`."""
    return acc.distributed_type == DistributedType.FSDP


def prepared_together(acc: Accelerator) -> bool:
    """FSDP and DeepSpeed replace the parameters: the model and its optimizer are prepared in one call."""
    return is_sharded(acc) or zero.is_deepspeed(acc)


def distributed_info(acc: Accelerator) -> dict[str, Any]:
    """What the run's summary records: how many processes trained together, and how."""
    info: dict[str, Any] = {"processes": acc.num_processes, "type": acc.distributed_type.value}
    if is_sharded(acc):
        info["fsdp_version"] = acc.state.fsdp_plugin.fsdp_version
    if zero.is_deepspeed(acc):
        info["zero_stage"] = zero.zero_stage(acc)
    return info


_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)  # rank 0 gets the whole state on CPU, others {}


def block_classes(model: torch.nn.Module) -> list[str]:
    """Names of the transformer-block classes (`_no_split_modules`) of every Hugging Face model inside `model`."""
    found = {type(m).__name__ for m in model.modules()}
    names: list[str] = []
    for m in model.modules():
        if isinstance(m, PreTrainedModel):
            names += [n for n in (m._no_split_modules or []) if n in found and n not in names]
    return names


def inner_models(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The outermost Hugging Face (or peft) models strictly inside a wrapper module; [] when `model` is one."""
    if isinstance(model, (PreTrainedModel, PeftModel)):
        return []
    out: list[torch.nn.Module] = []
    for child in model.children():
        out += [child] if isinstance(child, (PreTrainedModel, PeftModel)) else inner_models(child)
    return out


def prepare_sharded(acc: Accelerator, model: torch.nn.Module, optimizer: Any) -> tuple[torch.nn.Module, Any]:
    """FSDP2 through accelerate: one unit per transformer block, one per model inside a wrapper, then the root.
    DeepSpeed: accelerate's `deepspeed.initialize` (ZeRO partitions every parameter by itself)."""
    if zero.is_deepspeed(acc):
        return acc.prepare(model, optimizer)
    plugin = acc.state.fsdp_plugin
    names = list(plugin.transformer_cls_names_to_wrap or []) + block_classes(model)
    names += [type(m).__name__ for m in inner_models(model)]
    plugin.transformer_cls_names_to_wrap = list(dict.fromkeys(names))
    model, optimizer = acc.prepare(model, optimizer)
    # the root must be known before an inner model runs forward on its own (else FSDP takes that one as the root)
    model._get_fsdp_state()._lazy_init()
    return model, optimizer


def plain_copy(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """An unsharded model of `model`'s architecture (a Hugging Face model, with its LoRA adapters if any) holding the
    full weights `state` (gathered on rank 0), on CPU."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    cls = type(base)
    if issubclass(cls, FSDPModule):  # fully_shard made it FSDP<Class>(FSDPModule, Class)
        cls = next(c for c in cls.__bases__ if c is not FSDPModule)
    fresh = cls._from_config(copy.deepcopy(base.config), dtype=next(iter(state.values())).dtype)
    if isinstance(model, PeftModel):
        name = model.active_adapter
        fresh = get_peft_model(fresh, copy.deepcopy(model.peft_config[name]), adapter_name=name)
    fresh.load_state_dict(state, strict=True)
    return fresh


def trainable_names(model: torch.nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


def trainable_state(acc: Accelerator, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Full trainable weights on CPU. Under FSDP a collective (every process calls it; only rank 0 gets tensors)."""
    if zero.is_deepspeed(acc):
        return zero.master_weights(acc, model)
    model = acc.unwrap_model(model)
    names = trainable_names(model)
    if is_sharded(acc):
        full = get_model_state_dict(model, options=_FULL)
        return {n: full[n].contiguous() for n in names if n in full}
    params = dict(model.named_parameters())
    return {n: params[n].detach().to("cpu").contiguous().clone() for n in names}


def full_model_state(acc: Accelerator, model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """Under FSDP and ZeRO-3, the whole model's gathered weights on rank 0 (a collective; other ranks get {}); else
    None (the model itself holds them)."""
    if zero.is_deepspeed(acc):
        return zero.gathered_model_state(acc, model)
    if not is_sharded(acc):
        return None
    return get_model_state_dict(acc.unwrap_model(model), options=_FULL)


def load_trainable(acc: Accelerator, model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Copy full trainable weights into the model (sharding them under FSDP and ZeRO)."""
    if zero.is_deepspeed(acc):
        return zero.load_master_weights(acc, model, weights)
    model = acc.unwrap_model(model)
    if is_sharded(acc):
        set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True, strict=False))
        return
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in trainable_names(model):
            params[name].copy_(weights[name].to(params[name].device, params[name].dtype))


def optimizer_state(acc: Accelerator, model: torch.nn.Module, optimizer: Any) -> dict[str, Any]:
    """The optimizer's full state (keyed by parameter name under FSDP: a collective, rank 0 gets it)."""
    if zero.is_deepspeed(acc):
        return zero.full_optimizer_state(acc, model)
    if is_sharded(acc):
        return get_optimizer_state_dict(acc.unwrap_model(model), _inner(optimizer), options=_FULL)
    return optimizer.state_dict()


def load_optimizer(acc: Accelerator, model: torch.nn.Module, optimizer: Any, state: dict[str, Any]) -> None:
    if zero.is_deepspeed(acc):
        zero.load_full_optimizer_state(acc, model, state)
    elif is_sharded(acc):
        opts = StateDictOptions(full_state_dict=True)
        set_optimizer_state_dict(acc.unwrap_model(model), _inner(optimizer), state, options=opts)
    else:
        optimizer.load_state_dict(state)


def _inner(optimizer: Any) -> torch.optim.Optimizer:
    return getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps the torch one


@contextlib.contextmanager
def collective_guard(rank: int, step: int, timeout: float) -> Iterator[None]:
    """Turn a collective that timed out or lost its peers into an error naming this rank and the step."""
    try:
        yield
    except RuntimeError as e:  # torch.distributed.DistBackendError and gloo's timeouts are RuntimeErrors
        text = str(e)
        if not (isinstance(e, torch.distributed.DistError) or "gloo" in text.lower() or "timed out" in text.lower()):
            raise
        raise CollectiveTimeout(
            f"rank {rank}, step {step}: a collective with the other processes failed or did not finish within "
            f"train.collective_timeout={timeout:g}s (a process hung or died; see its log): {text.splitlines()[0]}"
        ) from e
