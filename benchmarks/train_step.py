"""Step time, throughput and peak memory of rlhfkit's DPO, SFT and reward-model training on the peer benchmark's shape.

    python benchmarks/train_step.py [dpo|dpo-live|sft|rm|dpo-plain|sft-plain|all]  (env: HIDDEN, LAYERS, STEPS as the peer)

Same model and data shapes as the peer baseline script (random-init Llama: hidden 1024, 24 layers, vocab 32000, bf16;
DPO/RM: 8 pairs of prompt 128 + completion 384 tokens; SFT: 16 x 512), so the two can run side by side in one job.
Prints one JSON line per benchmark; steady-state = steps after the first 3. DPO and SFT log-probs come from the fused
head (model.fused_head, the default); the -plain variants use the model's own (B, T, V) logits instead.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

from rlhfkit.config import PreferenceLossConfig, RewardLossConfig, TrainConfig
from rlhfkit.data import EncodedPair
from rlhfkit.data.templates import Encoded
from rlhfkit.models import Reference
from rlhfkit.trainers.dpo import DPOObjective, DPORow, precompute_reference
from rlhfkit.trainers.loop import run_loop
from rlhfkit.trainers.rm import RewardObjective
from rlhfkit.trainers.sft import SFTObjective

VOCAB = 32000
HIDDEN = int(os.environ.get("HIDDEN", 1024))
LAYERS = int(os.environ.get("LAYERS", 24))
STEPS = int(os.environ.get("STEPS", 12))
WARM = 3
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPE = torch.bfloat16 if DEVICE == "cuda" else torch.float32


def config(**extra) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=HIDDEN * 11 // 4,
        num_hidden_layers=LAYERS,
        num_attention_heads=HIDDEN // 64,
        num_key_value_heads=HIDDEN // 64,
        max_position_embeddings=2048,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
        **extra,
    )


def tokens(g: torch.Generator, n: int) -> list[int]:
    return torch.randint(3, VOCAB, (n,), generator=g).tolist()


def pairs(n: int, prompt: int = 128, completion: int = 384, seed: int = 1) -> list[EncodedPair]:
    g = torch.Generator().manual_seed(seed)
    return [
        EncodedPair(tokens(g, prompt), tokens(g, completion - 1) + [1], tokens(g, completion - 1) + [1], index=i)
        for i in range(n)
    ]


class StepTimer:
    def __init__(self) -> None:
        self.times: list[float] = []
        self.t = time.perf_counter()

    def __call__(self, step: int, metrics: dict) -> None:
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.times.append(now - self.t)
        self.t = now

    def steady(self) -> float:
        s = self.times[WARM:]
        return sum(s) / len(s)


def _train_cfg(batch: int, lr: float) -> TrainConfig:
    return TrainConfig(
        output_dir=tempfile.mkdtemp(),
        max_steps=STEPS,
        batch_size=batch,
        lr=lr,
        scheduler="linear",
        progress=False,
        max_grad_norm=1.0,
    )


def _peak() -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if DEVICE == "cuda" else None


def _reset() -> None:
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def bench_dpo(live: bool, fused: bool = True) -> dict:
    torch.manual_seed(0)
    model = LlamaForCausalLM(config()).to(DTYPE).to(DEVICE)
    n = sum(p.numel() for p in model.parameters())
    rows = pairs(8 * (STEPS + 1))
    loss_cfg = PreferenceLossConfig(name="dpo", beta=0.1, reference="live" if live else "precompute")
    _reset()
    if live:
        ref = LlamaForCausalLM(config()).to(DTYPE).to(DEVICE).requires_grad_(False).eval()
        ref.load_state_dict(model.state_dict())
        reference = Reference(model, ref)
        train_rows = [DPORow(p) for p in rows]
        pre_s = 0.0
    else:
        reference = Reference(model, model)
        t0 = time.perf_counter()
        train_rows = precompute_reference(rows, reference, pad_id=0, fused=fused)
        pre_s = time.perf_counter() - t0
    timer = StepTimer()
    objective = DPOObjective(0, loss_cfg, reference, 8, fused)
    cfg = _train_cfg(8, 1e-6)
    run_loop(model, objective, train_rows, [], cfg, Path(cfg.output_dir), on_step=timer)
    s = timer.steady()
    return dict(
        bench=("rlhfkit_dpo_live" if live else "rlhfkit_dpo") + ("" if fused else "_plain"),
        fused_head=fused,
        params_m=round(n / 1e6),
        batch_pairs=8,
        seq=512,
        step_s=round(s, 4),
        pairs_per_s=round(8 / s, 2),
        tokens_per_s=round(8 * 2 * 512 / s),
        reference_precompute_s=round(pre_s, 2),
        peak_gib=_peak(),
    )


def bench_sft(fused: bool = True) -> dict:
    torch.manual_seed(0)
    model = LlamaForCausalLM(config()).to(DTYPE).to(DEVICE)
    n = sum(p.numel() for p in model.parameters())
    g = torch.Generator().manual_seed(3)
    rows = [Encoded(tokens(g, 512), [0] * 128 + [1] * 384) for _ in range(16 * (STEPS + 1))]
    _reset()
    timer = StepTimer()
    cfg = _train_cfg(16, 1e-5)
    run_loop(model, SFTObjective(0, True, "token-mean", 8, fused), rows, [], cfg, Path(cfg.output_dir), on_step=timer)
    s = timer.steady()
    return dict(
        bench="rlhfkit_sft" + ("" if fused else "_plain"),
        fused_head=fused,
        params_m=round(n / 1e6),
        batch=16,
        seq=512,
        step_s=round(s, 4),
        tokens_per_s=round(16 * 512 / s),
        peak_gib=_peak(),
    )


def bench_rm() -> dict:
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(config(num_labels=1))
    model = model.to(DTYPE).to(DEVICE)
    n = sum(p.numel() for p in model.parameters())
    rows = pairs(8 * (STEPS + 1), seed=4)
    _reset()
    timer = StepTimer()
    cfg = _train_cfg(8, 1e-5)
    run_loop(model, RewardObjective(0, RewardLossConfig()), rows, [], cfg, Path(cfg.output_dir), on_step=timer)
    s = timer.steady()
    return dict(
        bench="rlhfkit_rm",
        params_m=round(n / 1e6),
        batch_pairs=8,
        seq=512,
        step_s=round(s, 4),
        pairs_per_s=round(8 / s, 2),
        peak_gib=_peak(),
    )


BENCHES = {
    "dpo": lambda: bench_dpo(False),
    "dpo-live": lambda: bench_dpo(True),
    "sft": bench_sft,
    "rm": bench_rm,
    "dpo-plain": lambda: bench_dpo(False, fused=False),
    "sft-plain": lambda: bench_sft(fused=False),
}


if __name__ == "__main__":
    which = sys.argv[1:] or ["all"]
    names = list(BENCHES) if which == ["all"] else which
    gpu = torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu"
    print(json.dumps(dict(torch=torch.__version__, gpu=gpu)), flush=True)
    for name in names:
        print(json.dumps(BENCHES[name]()), flush=True)
