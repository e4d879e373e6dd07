"""Two processes (DDP on CPU, gloo) take the same update as one process with the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _launch(out: Path, nproc: int, per_process_batch: int, micro: int) -> dict[str, torch.Tensor]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--standalone"]
    cmd += ["tests/ddp_worker.py", str(out), str(per_process_batch), str(micro)]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return torch.load(out / "final.pt", weights_only=True)


def test_two_processes_equal_one(tmp_path):
    one = _launch(tmp_path / "one", 1, 8, 8)
    two = _launch(tmp_path / "two", 2, 4, 2)  # 2 processes x 2 micro-batches x 2 rows = the same 8 rows per step
    assert all(torch.allclose(one[k], two[k], atol=1e-6) for k in one)
