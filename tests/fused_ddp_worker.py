"""Run by test_fused_head under torch.distributed.run: SFT on a tiny model through DDP with the fused head and
padding-free forwards; saves the final weights."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from accelerate import Accelerator

from rlhfkit.config import TrainConfig
from rlhfkit.data import Encoded
from rlhfkit.models.tiny import tiny_causal_lm, tiny_tokenizer
from rlhfkit.trainers.loop import run_loop
from rlhfkit.trainers.sft import SFTObjective


def main(out: str, per_process_batch: int, fused: bool, padding_free: bool) -> None:
    accelerator = Accelerator(cpu=True)
    tok = tiny_tokenizer()
    g = torch.Generator().manual_seed(0)
    rows = [
        Encoded(torch.randint(5, 300, (n,), generator=g).tolist(), [0] * 3 + [1] * (n - 3))
        for n in torch.randint(6, 20, (16,), generator=g).tolist()
    ]
    objective = SFTObjective(tok.pad_token_id, True, "token-mean", 8, fused, padding_free)
    cfg = TrainConfig(output_dir=out, max_steps=2, batch_size=per_process_batch, lr=1e-3, progress=False)
    model = tiny_causal_lm(tok)
    run_loop(model, objective, rows, [], cfg, Path(out), accelerator=accelerator)
    if accelerator.is_main_process:
        torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, Path(out) / "final.pt")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4] == "1")
