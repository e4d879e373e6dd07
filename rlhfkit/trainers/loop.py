"""The training session and the offline loop.

`Session` is what every trainer shares around its optimizer steps: the accelerator, the optimizer and scheduler, exact
resume (or a refusal to mix two runs), atomic checkpoints (trainable weights as safetensors, optimizer, scheduler, RNG
per process, data position; loaded with safetensors and `torch.load(weights_only=True)` only), metrics and the
progress bar. `trainers/step.py` is the ONE optimizer step.

Every offline trainer (SFT, reward model, DPO family, KTO) hands `run_loop` an `Objective`: how to turn a micro-batch
into a summed loss, and how many units (tokens or sequences) that micro-batch contributes to the normalizer:

    for each optimizer step:
        1. take this step's rows (a deterministic permutation per epoch; this process's share of them)
        2. split them into micro-batches; the optimizer step (step.py) does the rest: global normalizer, backward
           without gradient sync until the last micro-batch, finite checks, clipping, fp16 skip, step
        3. log (progress bar + metrics.jsonl + sinks), evaluate, checkpoint
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm
from transformers import get_scheduler

from rlhfkit.config import TrainConfig
from rlhfkit.errors import TooFewRowsError, TrainingDiverged
from rlhfkit.seeding import set_seed
from rlhfkit.tracking import MetricsLogger
from rlhfkit.trainers.checkpoint import latest_checkpoint, resume_or_refuse, write_checkpoint
from rlhfkit.trainers.distributed import (
    collective_guard,
    distributed_info,
    full_model_state,
    make_accelerator,
    prepare_sharded,
    prepared_together,
)
from rlhfkit.trainers.step import OptimizerStep


class Objective(Protocol):
    def collate(self, rows: Sequence[Any]) -> dict[str, torch.Tensor]:
        """Rows (already encoded) -> a tensor batch."""

    def count(self, batch: dict[str, torch.Tensor]) -> float:
        """This micro-batch's share of the loss normalizer (e.g. completion tokens or pairs)."""

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """(summed loss over the micro-batch's units, metrics averaged over its rows)."""

    def evaluate(self, model: torch.nn.Module, rows: Sequence[Any]) -> dict[str, float]:
        """Held-out metrics."""


@dataclass
class LoopResult:
    steps: int
    seconds: float
    last_metrics: dict[str, float]
    eval_metrics: dict[str, float]
    tokens_per_second: float
    is_main: bool = True
    """Whether this process should write the run's outputs."""
    world_size: int = 1
    """Processes that trained together."""
    distributed: dict[str, Any] = field(default_factory=dict)
    """How they trained together (processes, accelerate's distributed type), for the summary."""
    model_state: dict[str, torch.Tensor] | None = None
    """Under FSDP, the gathered full weights on the main process (the model itself holds only shards); else None."""


class DataOrder:
    """Deterministic order of rows: a fresh permutation per epoch, seeded by (seed, epoch); position = optimizer step.

    With `groups` (one hashable key per row), the permutation moves whole groups: the rows of a group follow each
    other in their original order, so they share an optimizer step (or two neighbouring ones, when a group straddles
    a batch boundary)."""

    def __init__(self, n_rows: int, global_batch: int, seed: int, groups: Sequence[Hashable] | None = None):
        if n_rows < global_batch:
            raise TooFewRowsError(n_rows, global_batch)
        if groups is not None and len(groups) != n_rows:
            raise ValueError(f"groups has {len(groups)} keys for {n_rows} rows")
        self.n_rows, self.global_batch, self.seed = n_rows, global_batch, seed
        by_key: dict[Hashable, list[int]] = {}  # no groups: one row each, and the permutation is the rows' own
        for i, key in enumerate(range(n_rows) if groups is None else groups):
            by_key.setdefault(key, []).append(i)
        self.members = list(by_key.values())
        self.steps_per_epoch = n_rows // global_batch  # the partial last batch is dropped: every step has one shape
        self._cache: tuple[int, list[int]] | None = None

    def rows_for_step(self, step: int) -> list[int]:
        epoch, offset = divmod(step, self.steps_per_epoch)
        if self._cache is None or self._cache[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            perm = torch.randperm(len(self.members), generator=g).tolist()
            self._cache = (epoch, [i for k in perm for i in self.members[k]])
        start = offset * self.global_batch
        return self._cache[1][start : start + self.global_batch]


def total_steps(cfg: TrainConfig, n_rows: int, num_processes: int = 1) -> int:
    if cfg.max_steps > 0:
        return cfg.max_steps
    per_epoch = max(1, n_rows // (cfg.batch_size * num_processes))
    return max(1, math.ceil(cfg.epochs * per_epoch))


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


class Session:
    """One training run's state around its optimizer steps: see the module docstring.

    param_groups: [{"params": [...], "lr": ...}, ...] of the (unprepared) model; `n_updates`: optimizer steps in all
    (the scheduler's length); `identity`: what a resumed run must share with the saved one."""

    def __init__(
        self,
        cfg: TrainConfig,
        out_dir: Path,
        model: torch.nn.Module,
        param_groups: list[dict[str, Any]],
        n_updates: int,
        identity: dict[str, Any],
        accelerator: Accelerator | None = None,
        run_config: dict[str, Any] | None = None,
        n_steps: int | None = None,
    ) -> None:
        self.cfg, self.out = cfg, Path(out_dir)
        self.accelerator = accelerator or make_accelerator(cfg)
        self.world, self.rank = self.accelerator.num_processes, self.accelerator.process_index
        self.is_main = self.accelerator.is_main_process
        self.identity = identity
        sharded = prepared_together(self.accelerator)  # FSDP / DeepSpeed
        if not sharded:
            self.model = self.accelerator.prepare(model)  # on its device (and wrapped for DDP) before the optimizer
        groups = [g for g in param_groups if g["params"]]
        if not groups:
            raise ValueError("the model has no trainable parameters")
        for g in groups:
            g.setdefault("lr", cfg.lr)
        # fused: one kernel for all parameters instead of many small ones (its parameters must be on the GPU already)
        fused = self.accelerator.device.type == "cuda" and not sharded
        optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay, betas=cfg.adam_betas, fused=fused)
        self.scheduler = get_scheduler(
            cfg.scheduler, optimizer, num_warmup_steps=int(cfg.warmup_ratio * n_updates), num_training_steps=n_updates
        )
        if sharded:  # FSDP2 / ZeRO replace the parameters by sharded ones: model and optimizer are prepared together
            self.model, self.optimizer = prepare_sharded(self.accelerator, model, optimizer)
        else:
            self.optimizer = self.accelerator.prepare(optimizer)
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.step = OptimizerStep(
            self.accelerator, self.model, self.optimizer, self.scheduler, self.params, cfg.max_grad_norm
        )
        self.logger = MetricsLogger(self.out, cfg.report_to, run_config) if self.is_main else None
        self.n_steps = n_steps
        self.good_ckpt: Path | None = None

    def resume(self) -> dict[str, Any] | None:
        """Seed this process, then load the newest checkpoint when resuming (see `resume_or_refuse`)."""
        set_seed(self.cfg.seed + self.rank)
        acc = self.accelerator
        state = resume_or_refuse(
            self.out, self.cfg.resume, acc, self.model, self.optimizer, self.scheduler, self.identity, acc.scaler
        )
        if state:
            acc.print(f"resuming from {latest_checkpoint(self.out)} (step {state['step']}/{self.n_steps})")
        acc.wait_for_everyone()
        self.good_ckpt = latest_checkpoint(self.out)
        return state

    def checkpoint(self, step: int, extra: dict[str, Any] | None = None, name: str | None = None) -> Path:
        """A resumable checkpoint `step-N` (pruned to keep_checkpoints), or under `name` (kept, never resumed from)."""
        path = self.out / "checkpoints" / (name or f"step-{step:06d}")
        keep = self.cfg.keep_checkpoints if name is None else None
        write_checkpoint(
            path,
            self.accelerator,
            self.model,
            self.optimizer,
            self.scheduler,
            step,
            {**self.identity, **(extra or {})},
            keep,
            self.accelerator.scaler,
        )
        if name is None:
            self.good_ckpt = path
        return path

    def diverged(
        self, step: int, what: str, value: float, rows: Sequence[int], extra: dict[str, Any] | None = None, name=None
    ) -> TrainingDiverged:
        """Save the weights before this step (every process calls this together), and the error naming them."""
        previous = self.good_ckpt
        saved = self.checkpoint(step, extra, name=name or f"step-{step:06d}")
        return TrainingDiverged(
            f"step {step}: {what} is {value} on training rows {list(rows)[:16]}; the weights before this step are "
            f"saved in {saved}" + (f" (previous checkpoint: {previous})" if previous and previous != saved else "")
        )

    def log(self, step: int, prefix: str, metrics: dict[str, Any], **more: Any) -> None:
        if self.logger and metrics:
            self.logger.log(step, {f"{prefix}/{k}": v for k, v in metrics.items()} | more)

    def progress(self, start: int, total: int) -> Any:
        return tqdm(
            total=total,
            initial=start,
            desc=self.out.name,
            disable=not (self.cfg.progress and self.is_main),
            dynamic_ncols=True,
        )

    def close(self) -> None:
        if self.logger:
            self.logger.close()


def run_loop(
    model: torch.nn.Module,
    objective: Objective,
    train_rows: Sequence[Any],
    eval_rows: Sequence[Any],
    cfg: TrainConfig,
    out_dir: Path,
    run_config: dict[str, Any] | None = None,
    accelerator: Accelerator | None = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    groups: Sequence[Hashable] | None = None,
) -> LoopResult:
    """Train `model` on `train_rows` with `objective`; see the module docstring for the order of things. `groups`: one
    key per training row; rows sharing a key are kept together in the shuffled order (see DataOrder)."""
    accelerator = accelerator or make_accelerator(cfg)
    world, rank = accelerator.num_processes, accelerator.process_index
    order = DataOrder(len(train_rows), cfg.batch_size * world, cfg.seed, groups)
    n_steps = total_steps(cfg, len(train_rows), world)
    # what a resumed run must share with the saved one (the step count may grow: "train longer" is a valid resume)
    identity = {"batch_size": cfg.batch_size, "processes": world, "seed": cfg.seed, "rows": len(train_rows)}
    if groups is not None:  # only then: checkpoints saved before grouping existed still resume
        identity["groups"] = len(order.members)
    param_groups = [{"params": [p for p in model.parameters() if p.requires_grad], "lr": cfg.lr}]
    s = Session(cfg, out_dir, model, param_groups, n_steps, identity, accelerator, run_config, n_steps)
    state = s.resume()
    start = state["step"] if state else 0
    model = s.model

    bar = s.progress(start, n_steps)
    t0, tokens_seen = time.perf_counter(), 0
    last: dict[str, float] = {}
    evals: dict[str, float] = {}
    model.train()
    for step in range(start, n_steps):
        # 1. this process's rows, in micro-batches
        rows_idx = order.rows_for_step(step)[rank * cfg.batch_size : (rank + 1) * cfg.batch_size]
        micro = [rows_idx[i : i + cfg.micro] for i in range(0, len(rows_idx), cfg.micro)]
        batches = [_to_device(objective.collate([train_rows[i] for i in m]), accelerator.device) for m in micro]
        tokens_seen += sum(int(b["attention_mask"].sum()) for b in batches if "attention_mask" in b)

        # 2. the optimizer step
        with collective_guard(rank, step + 1, cfg.collective_timeout):
            result = s.step(
                batches,
                [objective.count(b) for b in batches],
                [len(m) for m in micro],
                lambda b: objective.loss(model, b),
                lambda what, value, step=step, rows=rows_idx: s.diverged(step, what, value, rows),
            )

        # 3. log, evaluate, checkpoint
        done = step + 1
        elapsed = time.perf_counter() - t0
        last = {
            "loss": result.loss,
            "lr": s.scheduler.get_last_lr()[0],
            "grad_norm": result.grad_norm,
            "tokens_per_s": tokens_seen * world / max(elapsed, 1e-9),
            **result.metrics,
        }
        if done % cfg.log_every == 0 or done == n_steps:
            bar.set_postfix(loss=f"{result.loss:.4f}", lr=f"{last['lr']:.2e}", tok_s=f"{last['tokens_per_s']:.0f}")
            s.log(done, "train", last, epoch=done / order.steps_per_epoch)
        if on_step:
            on_step(done, last)
        if cfg.eval_every and done % cfg.eval_every == 0 and done < n_steps and eval_rows:
            evals = _evaluate(objective, accelerator, model, eval_rows)
            s.log(done, "eval", evals)
        if cfg.save_every and done % cfg.save_every == 0 and done < n_steps:
            s.checkpoint(done)
        bar.update(1)
    bar.close()

    with collective_guard(rank, n_steps, cfg.collective_timeout):
        if eval_rows:
            evals = _evaluate(objective, accelerator, model, eval_rows)
            s.log(n_steps, "eval", evals)
        if n_steps > start:
            s.checkpoint(n_steps)
        model_state = full_model_state(accelerator, model)
    seconds = time.perf_counter() - t0
    s.close()
    return LoopResult(
        steps=n_steps,
        seconds=seconds,
        last_metrics=last,
        eval_metrics=evals,
        tokens_per_second=tokens_seen * world / max(seconds, 1e-9),
        is_main=accelerator.is_main_process,
        world_size=world,
        distributed=distributed_info(accelerator),
        model_state=model_state,
    )


def eval_batches(
    objective: Objective, rows: Sequence[Any], device: torch.device, batch_size: int
) -> Iterator[dict[str, torch.Tensor]]:
    """Collated, on-device batches of held-out rows, in order (for objectives' `evaluate`)."""
    for i in range(0, len(rows), batch_size):
        yield _to_device(objective.collate(rows[i : i + batch_size]), device)


def _evaluate(objective: Objective, accelerator: Accelerator, model: torch.nn.Module, rows: Sequence[Any]):
    model.eval()
    with torch.no_grad(), accelerator.autocast():
        out = objective.evaluate(accelerator.unwrap_model(model), rows)
    model.train()
    return out
