"""Checkpoints: written atomically (a temp directory swapped into place), trainable weights as safetensors, optimizer,
scheduler and loss-scaler state loaded with `torch.load(weights_only=True)`, one RNG state per process; resume checks
that the run is the same one, and a fresh run refuses a directory that holds another run's checkpoints. Under FSDP the
weights and optimizer state are gathered to full tensors first (the same files as one process writes), and sharded
again on resume."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file

from rlhfkit.seeding import rng_state, set_rng_state
from rlhfkit.trainers.distributed import (
    load_optimizer,
    load_trainable,
    optimizer_state,
    trainable_names,
    trainable_state,
)


def _checkpoints(out_dir: Path) -> list[Path]:
    ckpts = (out_dir / "checkpoints").glob("step-*[0-9]")
    return sorted(ckpts, key=lambda p: int(p.name.split("-")[1]))


def save_checkpoint(
    path: Path,
    weights: dict[str, torch.Tensor],
    optim_state: dict[str, Any],
    scheduler: Any,
    step: int,
    extra: dict[str, Any],
    scaler: Any = None,
) -> None:
    """Write atomically: a temp directory swapped into place, so a killed save never loses the previous checkpoint."""
    tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        save_file(weights, str(tmp / "trainable.safetensors"))
        torch.save(optim_state, tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        if scaler is not None:
            torch.save(scaler.state_dict(), tmp / "scaler.pt")
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step, **extra}))
        (tmp / "rng-0.json").write_text(json.dumps(rng_state()))
        for f in tmp.iterdir():  # on disk before the rename makes the checkpoint visible
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    except (OSError, RuntimeError) as e:  # a full disk surfaces from torch.save as "unexpected pos ..."
        shutil.rmtree(tmp, ignore_errors=True)
        raise OSError(
            f"{path}: could not write the checkpoint ({str(e).strip().splitlines()[0]}); "
            f"{_free(path.parent)} free on its disk; earlier checkpoints are kept"
        ) from e
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def _free(folder: Path) -> str:
    for p in (folder, *folder.parents):
        if p.exists():
            return f"{shutil.disk_usage(p).free / 2**30:.2f} GiB"
    return "unknown space"


def load_checkpoint(
    path: Path, accelerator: Accelerator, model: torch.nn.Module, optimizer: Any, scheduler: Any, scaler: Any = None
) -> dict[str, Any]:
    weights = load_file(str(path / "trainable.safetensors"))
    missing = set(trainable_names(accelerator.unwrap_model(model))) - set(weights)
    if missing:
        raise ValueError(f"{path}: checkpoint lacks trainable weights {sorted(missing)[:3]}… (was the model changed?)")
    load_trainable(accelerator, model, weights)
    optim = torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu")
    load_optimizer(accelerator, model, optimizer, optim)
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    if scaler is not None and (path / "scaler.pt").exists():
        scaler.load_state_dict(torch.load(path / "scaler.pt", weights_only=True))
    rng = path / f"rng-{accelerator.process_index}.json"
    set_rng_state(json.loads((rng if rng.exists() else path / "rng-0.json").read_text()))
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
        if resume and accelerator.is_main_process:  # stopped before its first checkpoint: it starts again from step 0
            _truncate_metrics(out_dir / "metrics.jsonl", 0)
        return None
    if not resume:
        raise ValueError(
            f"{out_dir} holds checkpoints of an earlier run ({existing.name}): pass --resume to continue it, "
            "or choose another output directory"
        )
    state = load_checkpoint(existing, accelerator, model, optimizer, scheduler, scaler)
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
    adds its own random state, so each restores its own stream on resume. Every process gathers (FSDP) first."""
    weights, optim = trainable_state(accelerator, model), optimizer_state(accelerator, model, optimizer)
    if accelerator.is_main_process:
        save_checkpoint(path, weights, optim, scheduler, step, extra, scaler)
        if keep is not None:
            _prune(path.parent.parent, keep)
    accelerator.wait_for_everyone()
    if accelerator.process_index > 0:
        (path / f"rng-{accelerator.process_index}.json").write_text(json.dumps(rng_state()))
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
