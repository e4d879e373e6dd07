"""The ONE optimizer step (trainers/step.py), shared by the offline loop and the online trainers: the true gradient
norm with clipping off, a non-finite gradient stops even without clipping, a NaN on one process stops every process."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from rlhfkit.errors import TrainingDiverged
from rlhfkit.trainers.step import OptimizerStep
from tests.toy import ToyLM, ToyObjective, _rows

ROOT = Path(__file__).resolve().parents[1]


def _step(max_grad_norm: float, model: torch.nn.Module | None = None):
    model = model or ToyLM()
    acc = Accelerator(cpu=True)
    model = acc.prepare(model)
    opt = acc.prepare(torch.optim.SGD(model.parameters(), lr=0.1))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    return OptimizerStep(acc, model, opt, sched, list(model.parameters()), max_grad_norm), model


def _raise(what: str, value: float) -> Exception:
    return TrainingDiverged(f"{what} is {value}")


@pytest.mark.parametrize("max_grad_norm", [0.0, 1e-3])
def test_logged_norm_is_the_true_norm_with_or_without_clipping(max_grad_norm):
    obj = ToyObjective()
    batch = obj.collate(_rows(8))
    ref = ToyLM()
    loss, _ = obj.loss(ref, batch)
    (loss / obj.count(batch)).backward()
    true_norm = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in ref.parameters()))

    step, model = _step(max_grad_norm)
    before = [p.detach().clone() for p in model.parameters()]
    result = step([batch], [obj.count(batch)], [8], lambda b: obj.loss(model, b), _raise)
    assert (
        result.grad_norm == pytest.approx(true_norm, rel=1e-5) and result.grad_norm > 0
    )  # was 0.0 when clipping was off
    moved = math.sqrt(sum(float((p.detach() - q).pow(2).sum()) for p, q in zip(model.parameters(), before)))
    expected = 0.1 * (min(true_norm, max_grad_norm) if max_grad_norm > 0 else true_norm)  # SGD: lr x applied norm
    assert moved == pytest.approx(expected, rel=1e-4)


def test_nonfinite_gradient_stops_with_clipping_off():
    """A finite loss whose gradient is NaN (sqrt at 0): the old online loop logged norm 0.0 and stepped."""
    step, model = _step(0.0)
    before = [p.detach().clone() for p in model.parameters()]

    def loss_fn(batch):
        w = next(model.parameters())
        return (w * 0).sum().sqrt(), {}  # value 0, gradient 0 * inf = NaN

    with pytest.raises(TrainingDiverged, match="gradient norm is nan"):
        step([{}], [1.0], [1], loss_fn, _raise)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))  # no step was taken


def test_nan_loss_stops_before_the_step():
    step, model = _step(1.0)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(TrainingDiverged, match="loss is nan"):
        step([{}], [1.0], [1], lambda b: (torch.tensor(float("nan"), requires_grad=True), {}), _raise)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))


def test_metrics_are_averaged_over_rows():
    step, model = _step(1.0)
    obj = ToyObjective()
    rows = _rows(6)
    batches = [obj.collate(rows[:2]), obj.collate(rows[2:])]

    def loss_fn(b):
        loss, _ = obj.loss(model, b)
        return loss, {"rows": float(b["input_ids"].shape[0])}

    result = step(batches, [obj.count(b) for b in batches], [2, 4], loss_fn, _raise)
    assert result.metrics["rows"] == pytest.approx((2 * 2 + 4 * 4) / 6)


def test_nan_on_one_process_stops_every_process(tmp_path):
    """Under DDP the old online loop checked the loss only with one process: a NaN on rank 1 stepped everyone."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone"]
    cmd += ["tests/step_worker.py", str(tmp_path / "run")]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out[-3000:]
    for rank in (0, 1):  # both processes raised the same error at the same step (neither hung in a collective)
        assert f"rank {rank}: step 2: loss is nan" in out, out[-3000:]
    assert (tmp_path / "run" / "checkpoints" / "step-000002" / "trainable.safetensors").exists()
