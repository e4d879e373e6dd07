"""Does DeepSpeed ZeRO-3 run on this CPU machine? 2 processes (gloo), a tiny random Llama, torch's AdamW as the client
optimizer (DeepSpeedCPUAdam needs a compiled op), 3 steps on the same rows in both processes.

    /tmp/dsvenv/bin/python benchmarks/deepspeed_cpu_probe.py --steps 3

deepspeed is not a dependency of rlhfkit: run this with a Python that has it (e.g. a venv made with
--system-site-packages beside rlhfkit's, then `pip install --no-deps deepspeed==0.19.8 hjson msgpack ninja einops`).
Prints one JSON line per process: DeepSpeed's accelerator and backend, the losses, and how many elements of the
parameters this process holds (ZeRO-3 partitions them: about half each).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(steps: int) -> None:
    import deepspeed
    import torch
    from deepspeed.accelerator import get_accelerator

    from rlhfkit.models.tiny import tiny_causal_lm

    deepspeed.init_distributed(dist_backend="gloo")
    cfg = {
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 1.0,
        "zero_optimization": {"stage": 3},
        "zero_allow_untested_optimizer": True,
    }
    model = tiny_causal_lm()
    total = sum(p.numel() for p in model.parameters())
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3), config=cfg
    )
    ids = torch.randint(3, 60, (2, 8), generator=torch.Generator().manual_seed(0))
    losses = []
    for _ in range(steps):
        loss = engine(input_ids=ids, labels=ids).loss
        engine.backward(loss)
        engine.step()
        losses.append(round(loss.item(), 6))
    held = sum(p.ds_tensor.numel() for p in engine.module.parameters())
    acc = get_accelerator()
    out = {"rank": int(os.environ["RANK"]), "deepspeed": deepspeed.__version__, "accelerator": acc._name}
    print(json.dumps(out | {"backend": acc.communication_backend_name(), "losses": losses, "held": held, "of": total}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.worker:
        worker(a.steps)
        return
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", __file__]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([*cmd, "--worker", "--steps", str(a.steps)], env=env, capture_output=True, text=True)
    lines = re.findall(r"\{[^{}]*\}", r.stdout)  # the two processes' lines may interleave
    print("\n".join(sorted(lines)) or r.stderr[-3000:])
    sys.exit(r.returncode)


if __name__ == "__main__":
    main()
