"""Run by test_distributed under torch.distributed.run: the toy loop in N processes; rank 0 saves the weights."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from rlhfkit.config import TrainConfig
from rlhfkit.trainers.loop import run_loop
from tests.toy import ToyLM, ToyObjective, _rows


def main(out: str, per_process_batch: int, micro: int) -> None:
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    model = ToyLM()
    cfg = TrainConfig(
        output_dir=out, max_steps=4, batch_size=per_process_batch, micro_batch_size=micro, lr=1e-2, progress=False
    )
    run_loop(model, ToyObjective(), _rows(), [], cfg, Path(out), accelerator=accelerator)
    if accelerator.is_main_process:
        torch.save(accelerator.unwrap_model(model).state_dict(), Path(out) / "final.pt")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
