"""The ONE optimizer step, shared by the offline loop (SFT, reward model, DPO family, KTO) and the online RL trainers.

    1. sum every micro-batch's normalizer count across micro-batches AND processes (one all-reduce)
    2. for each micro-batch: loss = loss_sum / global_count * num_processes; backward, gradients synchronized on the
       last micro-batch only (DDP averages them, hence the `* num_processes`)
    3. finite checks on EVERY process: a non-finite loss anywhere is all-reduced, so all processes stop together (one
       stopping alone would leave the others waiting in a collective for ever)
    4. the true global gradient norm, also when clipping is off (then it is measured, not applied)
    5. fp16: an overflowing step is skipped by the loss scaler (up to `max_fp16_skips` in a row); otherwise a
       non-finite loss or gradient norm raises `TrainingDiverged` through the caller's `diverged` callback
    6. optimizer step, scheduler step (not after a skipped step), zero the gradients

Because the normalizer is global, 1 micro-batch of 8 and 8 micro-batches of 1 give the same update, and so do one and
two processes (tested).

Under DeepSpeed the model is its engine, driven as DeepSpeed documents for accumulation led by the caller: the boundary
is set before each backward (ZeRO reduces the gradients in the last one, averaging them like DDP), and after step 3
one `engine.step()` does 4-6: it measures the global norm, skips the update when the norm is not finite (then the
run stops as above, the weights untouched), else clips to its `gradient_clipping` (= max_grad_norm) and steps.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType


@dataclass
class StepResult:
    loss: float
    """The step's loss: the global normalized loss, the same on every process."""
    grad_norm: float
    """Global gradient norm before clipping (the true norm even when clipping is off)."""
    metrics: dict[str, float] = field(default_factory=dict)
    """Per-micro-batch metrics, averaged over this process's rows."""
    skipped: bool = False
    """fp16 only: the loss scaler skipped this step (its gradients overflowed)."""


LossFn = Callable[[Any], tuple[torch.Tensor, dict[str, Any]]]
"""micro-batch -> (loss summed over the micro-batch's units, metrics averaged over its rows)."""


class OptimizerStep:
    """Call it with the micro-batches of one optimizer step; see the module docstring for the order of things."""

    def __init__(
        self,
        accelerator: Accelerator,
        model: torch.nn.Module,
        optimizer: Any,
        scheduler: Any,
        params: Sequence[torch.nn.Parameter],
        max_grad_norm: float,
        max_fp16_skips: int = 20,
    ) -> None:
        self.accelerator, self.model, self.optimizer, self.scheduler = accelerator, model, optimizer, scheduler
        self.params, self.max_grad_norm, self.max_fp16_skips = list(params), max_grad_norm, max_fp16_skips
        self.skips_in_a_row = 0
        self.engine = model if accelerator.distributed_type == DistributedType.DEEPSPEED else None

    def __call__(
        self,
        batches: Sequence[Any],
        counts: Sequence[float],
        sizes: Sequence[int],
        loss_fn: LossFn,
        diverged: Callable[[str, float], Exception],
    ) -> StepResult:
        """batches: this process's micro-batches; counts: each one's share of the loss normalizer (tokens, pairs,
        sequences); sizes: rows per micro-batch (to average metrics); diverged(what, value) -> the exception to raise
        (it saves a checkpoint: every process calls it, together)."""
        acc, world = self.accelerator, self.accelerator.num_processes
        device = acc.device
        # 1. the global normalizer
        global_count = acc.reduce(torch.tensor(float(sum(counts)), dtype=torch.float64, device=device), "sum").item()
        # 2. forward / backward per micro-batch
        total_rows = max(sum(sizes), 1)
        metrics: dict[str, float] = {}
        loss_local = torch.zeros((), dtype=torch.float64, device=device)
        bad_local = torch.zeros((), dtype=torch.float64, device=device)
        bad_value = math.nan
        engine = self.engine
        for i, batch in enumerate(batches):
            last = i == len(batches) - 1
            sync = acc.no_sync(self.model) if not last and engine is None else contextlib.nullcontext()
            if engine is not None:
                engine.set_gradient_accumulation_boundary(last)
            with sync:
                with acc.autocast():
                    loss_sum, mb_metrics = loss_fn(batch)
                    loss = loss_sum / max(global_count, 1e-12) * world
                # a non-finite loss still goes backward: under DDP every process must join the gradient all-reduce;
                # the flag, summed over processes below, then stops all of them before the optimizer steps
                finite = bool(torch.isfinite(loss.detach()))
                if not finite:
                    bad_local += 1.0
                    bad_value = float(loss.detach())
                if engine is None:
                    acc.backward(loss)
                else:  # not accelerate's backward: it would step the engine before the checks below
                    engine.backward(loss, scale_wrt_gas=False)
            if finite:
                loss_local += loss.detach().double() / world
            for k, v in mb_metrics.items():
                metrics[k] = metrics.get(k, 0.0) + float(v) * sizes[i] / total_rows
        # 3. finite loss on every process
        loss_total = acc.reduce(loss_local, "sum").item()
        if acc.reduce(bad_local, "sum").item() > 0:
            engine.zero_grad() if engine is not None else self.optimizer.zero_grad(set_to_none=True)
            raise diverged("loss", bad_value)
        if engine is not None:
            engine.step()  # 4-6 in one call (module docstring)
            grad_norm = float(engine.get_global_grad_norm())
            if not math.isfinite(grad_norm):
                raise diverged("gradient norm", grad_norm)
            self.scheduler.step()
            return StepResult(loss_total, grad_norm, metrics)
        # 4. the true norm (clipping with an infinite bound measures without changing anything)
        bound = self.max_grad_norm if self.max_grad_norm > 0 else math.inf
        norm = acc.clip_grad_norm_(self.params, bound)
        grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # FSDP2: a replicated DTensor
        # 5. fp16 overflow skip, or divergence
        scaler = acc.scaler
        if not math.isfinite(grad_norm):
            if scaler is None or self.skips_in_a_row >= self.max_fp16_skips:
                self.optimizer.zero_grad(set_to_none=True)
                why = (
                    "gradient norm"
                    if scaler is None
                    else f"gradient norm ({self.max_fp16_skips} fp16 overflows in a row)"
                )
                raise diverged(why, grad_norm)
            self.skips_in_a_row += 1
        else:
            self.skips_in_a_row = 0
        # 6. step
        self.optimizer.step()  # with fp16 the scaler skips a step whose gradients overflowed and lowers its scale
        skipped = bool(getattr(self.optimizer, "step_was_skipped", False))
        if not skipped:
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return StepResult(loss_total, grad_norm, metrics, skipped)
