"""Reference models: the frozen policy that DPO, KTO and online RL measure their KL against."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

import torch

from rlhfkit.models.loading import disable_dropout, load_causal_lm


class Reference:
    """Where reference log-probs come from: the policy with adapters disabled (LoRA), a frozen model, or nothing.
    Calling it gives a context manager that yields the model to run."""

    def __init__(self, policy: torch.nn.Module, model: torch.nn.Module | None):
        self.policy, self.model = policy, model

    @contextlib.contextmanager
    def __call__(self) -> Iterator[torch.nn.Module]:
        if self.model is not None:
            yield self.model
        elif hasattr(self.policy, "disable_adapter"):
            with self.policy.disable_adapter():
                yield self.policy
        else:
            raise RuntimeError("no reference model: pass one or train with LoRA")


def build_reference(
    policy: torch.nn.Module, model_cfg: Any, reference_path: str | None, keep: bool, device: torch.device
) -> Reference:
    """The reference for a policy: another checkpoint, the policy with LoRA adapters disabled, a frozen copy (`keep`:
    needed after training starts), or the policy itself (only valid before the first step). Moved to `device`."""
    if reference_path:
        ref_model = load_causal_lm(reference_path, dtype=model_cfg.dtype, trust_remote_code=model_cfg.trust_remote_code)
    elif model_cfg.lora.enabled:
        ref_model = None
    elif keep:
        ref_model = copy.deepcopy(policy)
    else:
        ref_model = policy
    for m in {id(policy): policy, id(ref_model): ref_model}.values():
        if m is not None and not getattr(m, "is_loaded_in_4bit", False):
            m.to(device)
    if ref_model is not None and ref_model is not policy:
        disable_dropout(ref_model).requires_grad_(False).eval()
    return Reference(policy, ref_model)
