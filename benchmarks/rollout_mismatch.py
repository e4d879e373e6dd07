"""Rollout-trainer mismatch: the per-token log-prob gap between each rollout engine's own sampling log-probs and the
training forward's, on the same sampled tokens (what truncated importance sampling, `algo.tis_cap`, corrects).

    flock /tmp/rlhfkit-cpu.lock .venv/bin/python benchmarks/rollout_mismatch.py [--batch 8] [--samples 2] \\
        [--new-tokens 32] [--dtypes float32,bfloat16] [--engines loop,generate] [--out benchmarks/results/...json]
    python benchmarks/rollout_mismatch.py --device cuda --engines generate,hf-static   # the GPU row (bf16, compiled)

The job: the builtin SmolLM2-135M-Instruct, the first --batch prompts of rlhfkit/tasks/data/review_prompts.jsonl
through the chat template (as the online trainers encode them), --samples responses each of up to --new-tokens tokens,
temperature --temperature, seeded. For each weight dtype and engine:

- rollout log-probs: `Rollout.rollout_logprobs` as the engine returns them (loop: rlhfkit's decoding loop, KV buffer,
  lean forward, oneDNN prepacked weights on CPU; generate: transformers' generate with a DynamicCache; hf-static: a
  static cache with the decoding step compiled, CUDA only);
- training log-probs: the online trainer's own forward (PolicyWithValue, fused head, one pass over prompt + response,
  the whole batch as one micro-batch) at the same temperature; "train-autocast" does it under bf16 autocast on float32
  weights (train.mixed_precision=bf16, while the engine samples in float32).

Per row: response tokens; mean, p99 and max |log pi_train - log pi_rollout| over the tokens, the mean signed gap, the
share of tokens whose ratio pi_train / pi_rollout exceeds 2 (what a TIS cap of 2 truncates) or is below 1/2, the mean
TIS weight min(ratio, 2), and the largest |sum of the gaps| of one response (the sequence-level log importance
ratio). A floor row compares the training forward with itself in micro-batches of one row (batch composition only).
Writes one JSON file and prints a markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the rlhfkit of this checkout, not whichever one the environment has installed

from rlhfkit.data import ChatFormatter, load_examples  # noqa: E402
from rlhfkit.losses.policy import tis_weights  # noqa: E402
from rlhfkit.models import load_causal_lm, load_tokenizer  # noqa: E402
from rlhfkit.models.value import PolicyWithValue  # noqa: E402
from rlhfkit.rollout import Rollout, SamplingParams, make_engine, rollout_forward  # noqa: E402

CAP = 2.0


def gap_stats(train: torch.Tensor, rollout: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """The mismatch figures of one (train, rollout) pair of (B, R) log-probs over mask."""
    valid = mask.bool()
    d = (train - rollout)[valid].double()  # log pi_train - log pi_rollout per token
    a = d.abs()
    seq = ((train - rollout) * mask).sum(-1).double()
    return {
        "tokens": int(valid.sum()),
        "gap_abs_mean": float(a.mean()),
        "gap_abs_p99": float(torch.quantile(a, 0.99)),
        "gap_abs_max": float(a.max()),
        "gap_mean": float(d.mean()),
        "ratio_above_2": float((d > torch.tensor(CAP).log()).double().mean()),
        "ratio_below_half": float((d < -torch.tensor(CAP).log()).double().mean()),
        "tis_weight_mean_cap2": float(tis_weights(train, rollout, mask, CAP)[valid].mean()),
        "seq_log_ratio_abs_max": float(seq.abs().max()),
    }


def training_logprobs(model: torch.nn.Module, ro: Rollout, temperature: float, micro: int, autocast: bool) -> Any:
    """The online trainer's forward (trainers/online.py step 3): PolicyWithValue with the fused head, no critic."""
    module = PolicyWithValue(model, "none", fused=True)
    device = next(model.parameters()).device
    ctx = torch.autocast(device.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()

    def fn(mb: Rollout) -> tuple[torch.Tensor, None]:
        return module(mb.input_ids, mb.attention_mask, mb.position_ids, mb.response_ids, temperature, False)[0], None

    with torch.no_grad(), ctx:
        return rollout_forward(fn, ro, micro)[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", default=str(ROOT / "rlhfkit/tasks/data/review_prompts.jsonl"))
    ap.add_argument("--batch", type=int, default=8, help="prompts")
    ap.add_argument("--samples", type=int, default=2, help="responses per prompt")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtypes", default="float32,bfloat16", help="weight dtypes, comma-separated")
    ap.add_argument("--engines", default="loop,generate", help="loop, generate, hf-static (CUDA), comma-separated")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/cpu_rollout_mismatch.json"))
    args = ap.parse_args()

    tok = load_tokenizer(args.model)
    fmt = ChatFormatter(tok, 1024, 256)  # the RL trainers' default data.max_length / max_prompt_length
    prompts = [fmt.encode_prompt(e.prompt) for e in load_examples(args.prompts, "prompt")[: args.batch]]
    params = SamplingParams(args.new_tokens, 0, args.temperature)
    t_lp = params.logprob_temperature
    rows: list[dict[str, Any]] = []
    t_start, load_start = time.perf_counter(), os.getloadavg()[0]
    for dtype in args.dtypes.split(","):
        model = load_causal_lm(args.model, dtype=dtype).to(args.device).eval()
        for name in args.engines.split(","):
            backend = "hf-static" if name == "hf-static" else "hf"
            engine = make_engine(model, tok, SimpleNamespace(backend=backend, batch_size=len(prompts) * args.samples))
            engine.decoder = {"loop": "loop", "generate": "generate", "hf-static": "auto"}[name]
            torch.manual_seed(args.seed)
            t = time.perf_counter()
            ro = engine.generate(prompts, params, args.samples).to(args.device)
            gen_s = time.perf_counter() - t
            n = len(ro)
            forwards = {"train": False}
            if dtype == "float32":
                forwards["train-autocast"] = True  # train.mixed_precision=bf16 over float32 weights
            for forward, autocast in forwards.items():
                train = training_logprobs(model, ro, t_lp, n, autocast)
                stats = gap_stats(train, ro.rollout_logprobs, ro.response_mask)
                rows.append({"dtype": dtype, "engine": name, "forward": forward, "generate_s": round(gen_s, 2)} | stats)
                print(json.dumps(rows[-1]), flush=True)
                if forward == "train" and name == args.engines.split(",")[0]:
                    # the floor: the same training forward, one row a pass instead of the whole batch
                    floor = gap_stats(train, training_logprobs(model, ro, t_lp, 1, False), ro.response_mask)
                    rows.append({"dtype": dtype, "engine": "train, micro 1", "forward": "train"} | floor)
                    print(json.dumps(rows[-1]), flush=True)
        del model

    cmd = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, ROOT), *sys.argv[1:]])
    result = {
        "command": cmd,
        "machine": f"{platform.machine()} {os.cpu_count()} logical CPUs, torch {torch.__version__}, threads "
        f"{torch.get_num_threads()}" + (f", {torch.cuda.get_device_name()}" if args.device.startswith("cuda") else ""),
        "model": args.model,
        "prompts": len(prompts),
        "samples": args.samples,
        "new_tokens": args.new_tokens,
        "temperature": args.temperature,
        "seed": args.seed,
        "wall_s": round(time.perf_counter() - t_start, 1),
        "load_avg_1min": [round(load_start, 2), round(os.getloadavg()[0], 2)],  # at the start and the end: a shared CPU
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    cols = ["dtype", "engine", "forward", "tokens", "gap_abs_mean", "gap_abs_p99", "gap_abs_max", "gap_mean"]
    cols += ["ratio_above_2", "ratio_below_half", "tis_weight_mean_cap2", "seq_log_ratio_abs_max"]
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    print(f"wall {result['wall_s']} s -> {args.out}")


if __name__ == "__main__":
    main()
