"""The one training loop.

Every offline trainer (SFT, reward model, DPO family) hands this loop an `Objective`: how to turn a micro-batch into a
summed loss, and how many units (tokens or sequences) that micro-batch contributes to the normalizer. The loop does the
rest, with accelerate doing the distributed work:

    for each optimizer step:
        1. take this step's rows (a deterministic permutation per epoch; this process's share of them)
        2. split them into micro-batches; sum their normalizer counts across micro-batches AND processes
        3. for each micro-batch: loss = loss_sum / global_count * num_processes, backward (no gradient sync until the last)
        4. stop on a non-finite loss or gradient norm, keeping a good checkpoint
        5. clip, optimizer step, scheduler step
        6. log (progress bar + metrics.jsonl + sinks), evaluate, checkpoint

Because the normalizer is global, 1 micro-batch of 8 and 8 micro-batches of 1 give the same update (tested), and so do one
and two processes (DDP averages gradients, hence the `* num_processes`).
Checkpoints hold the trainable weights (safetensors), optimizer, scheduler, RNG states and the data position; they load with
safetensors and `torch.load(weights_only=True)` only.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import get_scheduler

from rlhfkit.config import TrainConfig
from rlhfkit.errors import TrainingDiverged  # noqa: F401 (re-exported)
from rlhfkit.tracking import MetricsLogger


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


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    py = random.getstate()
    np_state = np.random.get_state()
    return {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], np_state[1].tolist(), *[x for x in np_state[2:]]],
        "torch": torch.get_rng_state().tolist(),
        "cuda": [s.tolist() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_s = state["numpy"]
    np.random.set_state((np_s[0], np.array(np_s[1], dtype=np.uint32), *np_s[2:]))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


class DataOrder:
    """Deterministic order of rows: a fresh permutation per epoch, seeded by (seed, epoch); position = optimizer step."""

    def __init__(self, n_rows: int, global_batch: int, seed: int):
        if n_rows < global_batch:
            raise ValueError(
                f"only {n_rows} training rows for a global batch of {global_batch}: lower train.batch_size or add data"
            )
        self.n_rows, self.global_batch, self.seed = n_rows, global_batch, seed
        self.steps_per_epoch = n_rows // global_batch  # the partial last batch is dropped: every step has one shape
        self._cache: tuple[int, list[int]] | None = None

    def rows_for_step(self, step: int) -> list[int]:
        epoch, offset = divmod(step, self.steps_per_epoch)
        if self._cache is None or self._cache[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._cache = (epoch, torch.randperm(self.n_rows, generator=g).tolist())
        start = offset * self.global_batch
        return self._cache[1][start : start + self.global_batch]


def total_steps(cfg: TrainConfig, n_rows: int, num_processes: int = 1) -> int:
    if cfg.max_steps > 0:
        return cfg.max_steps
    per_epoch = max(1, n_rows // (cfg.batch_size * num_processes))
    return max(1, math.ceil(cfg.epochs * per_epoch))


def _trainable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _checkpoints(out_dir: Path) -> list[Path]:
    ckpts = (out_dir / "checkpoints").glob("step-*[0-9]")
    return sorted(ckpts, key=lambda p: int(p.name.split("-")[1]))


def save_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: Any,
    scheduler: Any,
    step: int,
    extra: dict[str, Any],
    scaler: Any = None,
) -> None:
    """Write atomically: a temp directory swapped into place, so a killed save never loses the previous checkpoint."""
    tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weights = {n: p.detach().to("cpu").contiguous().clone() for n, p in _trainable(model).items()}
    save_file(weights, str(tmp / "trainable.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    if scaler is not None:
        torch.save(scaler.state_dict(), tmp / "scaler.pt")
    (tmp / "trainer_state.json").write_text(json.dumps({"step": step, **extra}))
    (tmp / "rng-0.json").write_text(json.dumps(_rng_state()))
    for f in tmp.iterdir():  # on disk before the rename makes the checkpoint visible
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(
    path: Path, model: torch.nn.Module, optimizer: Any, scheduler: Any, rank: int = 0, scaler: Any = None
) -> dict[str, Any]:
    weights = load_file(str(path / "trainable.safetensors"))
    params = _trainable(model)
    missing = set(params) - set(weights)
    if missing:
        raise ValueError(f"{path}: checkpoint lacks trainable weights {sorted(missing)[:3]}… (was the model changed?)")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(weights[name].to(p.device, p.dtype))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu"))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    if scaler is not None and (path / "scaler.pt").exists():
        scaler.load_state_dict(torch.load(path / "scaler.pt", weights_only=True))
    rng = path / f"rng-{rank}.json"
    _set_rng_state(json.loads((rng if rng.exists() else path / "rng-0.json").read_text()))
    return json.loads((path / "trainer_state.json").read_text())


def latest_checkpoint(out_dir: Path) -> Path | None:
    ckpts = _checkpoints(out_dir)
    return ckpts[-1] if ckpts else None


def _prune(out_dir: Path, keep: int) -> None:
    for old in _checkpoints(out_dir)[: max(0, len(_checkpoints(out_dir)) - keep)]:
        shutil.rmtree(old, ignore_errors=True)


def resume_or_refuse(
    out_dir: Path,
    resume: bool,
    accelerator: Accelerator,
    model: torch.nn.Module,
    optimizer: Any,
    scheduler: Any,
    identity: dict[str, Any],
    scaler: Any = None,
) -> dict[str, Any] | None:
    """Load the newest checkpoint when resuming (its saved state, checked against `identity`), refuse a fresh run into a
    directory holding another run's checkpoints, or return None for a fresh start. Trims metrics of steps to be rerun."""
    existing = latest_checkpoint(out_dir)
    if existing is None:
        return None
    if not resume:
        raise ValueError(
            f"{out_dir} holds checkpoints of an earlier run ({existing.name}): pass --resume to continue it, "
            "or choose another output directory"
        )
    rank = accelerator.process_index
    state = load_checkpoint(existing, accelerator.unwrap_model(model), optimizer, scheduler, rank, scaler)
    _check_same_run(existing, state, identity)
    if accelerator.is_main_process:
        _truncate_metrics(out_dir / "metrics.jsonl", state["step"])
    accelerator.wait_for_everyone()
    return state


def write_checkpoint(
    path: Path,
    accelerator: Accelerator,
    model: torch.nn.Module,
    optimizer: Any,
    scheduler: Any,
    step: int,
    extra: dict[str, Any],
    keep: int | None,
    scaler: Any = None,
) -> None:
    """The main process saves (and keeps the newest `keep` step checkpoints; None: prune nothing); every other process
    adds its own random state, so each restores its own stream on resume."""
    if accelerator.is_main_process:
        save_checkpoint(path, accelerator.unwrap_model(model), optimizer, scheduler, step, extra, scaler)
        if keep is not None:
            _prune(path.parent.parent, keep)
    accelerator.wait_for_everyone()
    if accelerator.process_index > 0:
        (path / f"rng-{accelerator.process_index}.json").write_text(json.dumps(_rng_state()))
    accelerator.wait_for_everyone()


def _check_same_run(ckpt: Path, saved: dict[str, Any], identity: dict[str, Any]) -> None:
    """Resuming with another batch size, process count, seed or data size would silently change the run: refuse."""
    changed = [f"{k}: {saved.get(k)} -> {v}" for k, v in identity.items() if k in saved and saved[k] != v]
    if changed:
        raise ValueError(f"{ckpt}: cannot resume, the run changed ({'; '.join(changed)}); use a new output directory")


def _truncate_metrics(path: Path, last_step: int) -> None:
    """On resume, drop metric rows of steps that will be run again."""
    if path.exists():
        rows = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= last_step]
        path.write_text("".join(r + "\n" for r in rows))


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def make_accelerator(cfg: TrainConfig) -> Accelerator:
    """The accelerator a trainer shares with the loop, so that models it prepares itself land on the same device."""
    return Accelerator(mixed_precision=cfg.mixed_precision, cpu=not torch.cuda.is_available())


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
) -> LoopResult:
    """Train `model` on `train_rows` with `objective`; see the module docstring for the order of things."""
    accelerator = accelerator or make_accelerator(cfg)
    world, rank = accelerator.num_processes, accelerator.process_index
    out_dir = Path(out_dir)
    order = DataOrder(len(train_rows), cfg.batch_size * world, cfg.seed)
    n_steps = total_steps(cfg, len(train_rows), world)
    # what a resumed run must share with the saved one (the step count may grow: "train longer" is a valid resume)
    identity = {"batch_size": cfg.batch_size, "processes": world, "seed": cfg.seed, "rows": len(train_rows)}

    model = accelerator.prepare(model)  # on its device (and wrapped for DDP) before the optimizer sees it
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    fused = accelerator.device.type == "cuda"  # one kernel for all parameters instead of a loop of small ones
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.adam_betas, fused=fused)
    scheduler = get_scheduler(
        cfg.scheduler, optimizer, num_warmup_steps=int(cfg.warmup_ratio * n_steps), num_training_steps=n_steps
    )
    optimizer = accelerator.prepare(optimizer)
    scaler = accelerator.scaler  # fp16 loss scaling: an overflowing step is skipped, not a divergence

    start = 0
    set_seed(cfg.seed + rank)
    state = resume_or_refuse(out_dir, cfg.resume, accelerator, model, optimizer, scheduler, identity, scaler)
    start = state["step"] if state else 0
    if state:
        accelerator.print(f"resuming from {latest_checkpoint(out_dir)} (step {start}/{n_steps})")
    accelerator.wait_for_everyone()

    logger = MetricsLogger(out_dir, cfg.report_to, run_config) if accelerator.is_main_process else None
    bar = tqdm(
        total=n_steps,
        initial=start,
        desc=out_dir.name,
        disable=not (cfg.progress and accelerator.is_main_process),
        dynamic_ncols=True,
    )
    t0, tokens_seen, skipped = time.perf_counter(), 0, 0
    last: dict[str, float] = {}
    evals: dict[str, float] = {}
    good_ckpt = latest_checkpoint(out_dir)

    def checkpoint(step: int, prune: bool = True) -> Path:
        path = out_dir / "checkpoints" / f"step-{step:06d}"
        keep = cfg.keep_checkpoints if prune else None
        write_checkpoint(path, accelerator, model, optimizer, scheduler, step, identity, keep, scaler)
        return path

    model.train()
    for step in range(start, n_steps):
        # 1-2. this process's rows, micro-batches, global normalizer
        rows_idx = order.rows_for_step(step)[rank * cfg.batch_size : (rank + 1) * cfg.batch_size]
        micro = [rows_idx[i : i + cfg.micro] for i in range(0, len(rows_idx), cfg.micro)]
        batches = [_to_device(objective.collate([train_rows[i] for i in m]), accelerator.device) for m in micro]
        local = torch.tensor(sum(objective.count(b) for b in batches), dtype=torch.float64, device=accelerator.device)
        global_count = accelerator.reduce(local, reduction="sum").item()

        # 3. forward/backward per micro-batch (gradients are synchronized on the last one only)
        metric_sums: dict[str, float] = {}
        loss_local = torch.zeros((), dtype=torch.float64, device=accelerator.device)
        for i, batch in enumerate(batches):
            sync = accelerator.no_sync(model) if i < len(batches) - 1 else contextlib.nullcontext()
            with sync, accelerator.autocast():
                loss_sum, metrics = objective.loss(model, batch)
                loss = loss_sum / max(global_count, 1e-12) * world
            # one process alone must not stop (the others would wait forever): there the gradient check below decides
            if world == 1 and not torch.isfinite(loss):
                optimizer.zero_grad(set_to_none=True)
                raise _diverged(step, "loss", float(loss.detach()), micro[i], checkpoint(step, False), good_ckpt)
            accelerator.backward(loss)
            loss_local += loss.detach().double() / world
            for k, v in metrics.items():
                metric_sums[k] = metric_sums.get(k, 0.0) + float(v) * len(micro[i]) / len(rows_idx)
            tokens_seen += int(batch["attention_mask"].sum()) if "attention_mask" in batch else 0
        loss_total = accelerator.reduce(loss_local, reduction="sum").item()

        # 4-5. clip, check, step (gradients are all-reduced, so every process takes the same decision)
        if cfg.max_grad_norm > 0:
            grad_norm = float(accelerator.clip_grad_norm_(params, cfg.max_grad_norm))
        else:
            grad_norm = float(torch.norm(torch.stack([p.grad.norm() for p in params if p.grad is not None])))
        if not math.isfinite(grad_norm) and (scaler is None or skipped >= 20):
            optimizer.zero_grad(set_to_none=True)
            why = "gradient norm" if scaler is None else "gradient norm (20 fp16 overflows in a row)"
            raise _diverged(step, why, grad_norm, rows_idx, checkpoint(step, False), good_ckpt)
        skipped = skipped + 1 if not math.isfinite(grad_norm) else 0
        optimizer.step()  # with fp16 the scaler skips a step whose gradients overflowed and lowers its scale
        if not getattr(optimizer, "step_was_skipped", False):
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        # 6. log, evaluate, checkpoint
        done = step + 1
        elapsed = time.perf_counter() - t0
        last = {
            "loss": loss_total,
            "lr": scheduler.get_last_lr()[0],
            "grad_norm": grad_norm,
            "tokens_per_s": tokens_seen * world / max(elapsed, 1e-9),
            **metric_sums,
        }
        if done % cfg.log_every == 0 or done == n_steps:
            bar.set_postfix(loss=f"{loss_total:.4f}", lr=f"{last['lr']:.2e}", tok_s=f"{last['tokens_per_s']:.0f}")
            if logger:
                logger.log(done, {f"train/{k}": v for k, v in last.items()} | {"epoch": done / order.steps_per_epoch})
        if on_step:
            on_step(done, last)
        if cfg.eval_every and done % cfg.eval_every == 0 and done < n_steps and eval_rows:
            evals = _evaluate(objective, accelerator, model, eval_rows)
            if logger:
                logger.log(done, {f"eval/{k}": v for k, v in evals.items()})
        if cfg.save_every and done % cfg.save_every == 0 and done < n_steps:
            good_ckpt = checkpoint(done)
        bar.update(1)
    bar.close()

    if eval_rows:
        evals = _evaluate(objective, accelerator, model, eval_rows)
        if logger:
            logger.log(n_steps, {f"eval/{k}": v for k, v in evals.items()})
    if n_steps > start:
        checkpoint(n_steps)
    seconds = time.perf_counter() - t0
    if logger:
        logger.close()
    return LoopResult(
        steps=n_steps,
        seconds=seconds,
        last_metrics=last,
        eval_metrics=evals,
        tokens_per_second=tokens_seen * world / max(seconds, 1e-9),
        is_main=accelerator.is_main_process,
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


def _diverged(step: int, what: str, value: float, rows: list[int], saved: Path, previous: Path | None):
    return TrainingDiverged(
        f"step {step}: {what} is {value} on training rows {rows[:16]}; the weights before this step are saved in "
        f"{saved}" + (f" (previous checkpoint: {previous})" if previous else "")
    )
