"""Run by test_distributed_cli under torch.distributed.run: the toy loop in 2 processes where rank 1 stalls inside its
step-2 forward for longer than train.collective_timeout; every process must stop with an error naming its rank and step."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from rlhfkit.config import TrainConfig
from rlhfkit.trainers.loop import make_accelerator, run_loop
from tests.toy import ToyLM, ToyObjective, _rows


class StallingObjective(ToyObjective):
    def __init__(self, rank: int, stall_call: int, seconds: float):
        super().__init__()
        self.rank, self.stall_call, self.seconds = rank, stall_call, seconds

    def loss(self, model, batch):
        if self.rank == 1 and self.calls + 1 == self.stall_call:
            time.sleep(self.seconds)
        return super().loss(model, batch)


def main(out: str) -> None:
    cfg = TrainConfig(output_dir=out, max_steps=4, batch_size=4, lr=1e-2, progress=False, collective_timeout=3)
    accelerator = make_accelerator(cfg)
    objective = StallingObjective(accelerator.process_index, stall_call=2, seconds=12)
    try:
        run_loop(ToyLM(), objective, _rows(), [], cfg, Path(out), accelerator=accelerator)
    except Exception as e:  # the message the CLI would print, one line per process
        print(f"{type(e).__name__}: {e}", file=sys.stderr, flush=True)
        os._exit(4)  # no teardown collective: the peer may be gone


if __name__ == "__main__":
    main(sys.argv[1])
