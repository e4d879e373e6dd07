"""Run by test_deepspeed under torch.distributed.run: the toy loop under DeepSpeed ZeRO-3 where only the LAST process's
gradient turns NaN at the 3rd step while every loss stays finite. DeepSpeed's global norm sees it on every process:
all stop with TrainingDiverged at that step (exit code 3) and the saved weights are the finite ones before it."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from rlhfkit.config import TrainConfig
from rlhfkit.errors import TrainingDiverged
from rlhfkit.trainers.distributed import make_accelerator
from rlhfkit.trainers.loop import run_loop
from tests.toy import ToyLM, ToyObjective, _rows


class NaNGradient(ToyObjective):
    """From call `at` on, the loss keeps its value but its gradient is NaN (0 * d|x|/dx at x = 0 through a sqrt)."""

    def __init__(self, at: int | None):
        super().__init__()
        self.at = at

    def loss(self, model, batch):
        total, metrics = super().loss(model, batch)
        if self.at is not None and self.calls >= self.at:
            w = next(model.parameters())
            total = total + torch.sqrt((w - w.detach()).abs().sum())  # value 0, gradient inf * 0 = NaN
        return total, metrics


def main(out: str) -> int:
    cfg = TrainConfig(output_dir=out, max_steps=4, batch_size=4, lr=1e-2, progress=False, deepspeed=3)
    accelerator = make_accelerator(cfg)
    last = accelerator.process_index == accelerator.num_processes - 1
    try:
        run_loop(ToyLM(), NaNGradient(3 if last else None), _rows(), [], cfg, Path(out), accelerator=accelerator)
    except TrainingDiverged as e:
        print(f"rank {accelerator.process_index}: {e}", flush=True)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
