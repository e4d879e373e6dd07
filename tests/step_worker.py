"""Run by test_step under torch.distributed.run: the toy loop where only the LAST process's loss turns NaN at one
step. Every process must stop with TrainingDiverged at that step (exit code 3), none may hang or take the step."""

from __future__ import annotations

import sys
from pathlib import Path

from accelerate import Accelerator

from rlhfkit.config import TrainConfig
from rlhfkit.errors import TrainingDiverged
from rlhfkit.trainers.loop import run_loop
from tests.toy import ToyLM, ToyObjective, _rows


def main(out: str) -> int:
    accelerator = Accelerator(cpu=True)
    last = accelerator.process_index == accelerator.num_processes - 1
    objective = ToyObjective(nan_at_call=3 if last else None)  # one micro-batch per step: the 3rd step (index 2)
    cfg = TrainConfig(output_dir=out, max_steps=4, batch_size=4, lr=1e-2, progress=False)
    try:
        run_loop(ToyLM(), objective, _rows(), [], cfg, Path(out), accelerator=accelerator)
    except TrainingDiverged as e:
        print(f"rank {accelerator.process_index}: {e}", flush=True)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
