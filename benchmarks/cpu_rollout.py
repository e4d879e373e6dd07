"""CPU rollouts: rlhfkit's engine against plain transformers `generate` on the same job, in one process.

    flock /tmp/rlhfkit-cpu.lock .venv/bin/python benchmarks/cpu_rollout.py [--batch 64] [--new-tokens 32] \\
        [--repeats 3] [--ablations] [--out benchmarks/results/cpu_rollout.json]

The job (what the demo's sample stage does): the builtin SmolLM2-135M-Instruct in fp32, the first --batch prompts of
rlhfkit/tasks/data/review_prompts.jsonl through the tokenizer's chat template (ChatFormatter, as `rlhfkit sample`
encodes them), one batch of --batch rows, --new-tokens new tokens, temperature 1.0, top-k 0, top-p 1.0, seeded.

1. peak: the machine's fp32 matmul throughput, a --gemm-size square sgemm (torch.mm) at the thread count used, best
   of several seconds: the physical limit on this CPU.
2. hf: `HFEngine(decoder="generate")`, i.e. transformers' `generate` with a blank GenerationConfig, left padding,
   DynamicCache, multinomial sampling (the engine before the loop existed).
3. engine: `HFEngine` as `make_engine` builds it on CPU (decoder "auto" -> rlhfkit's loop, rollout/fast.py).
Runs alternate (hf, engine, hf, engine, ...) after one warm-up each, with the same seed per repeat; the medians count.
Generated tokens = response tokens through the first EOS (Rollout.response_mask), the same for both.

FLOPs: per generated token 2 x (weights of every nn.Linear, the LM head included) + attention 4 x layers x
(heads x head_dim) x context (QK^T and AV, mean context of the generated tokens): "useful" generation FLOPs, divided by
the wall time -> achieved GFLOP/s and % of the measured peak. The prompt prefill is work too, so the JSON also gives
the whole job's FLOPs (every prompt token once, unpadded, plus generation) per second, and the FLOPs each engine
actually executed (padding included; the engine's shared prefix counted once).

--ablations: the loop again with one of its ideas switched off at a time (shared prefix, dropping finished rows, oneDNN
prepacked linears, the lean Llama forward with its packed prefill and fused products: the model's own forward with
length-grouped or one-group prefill instead) and the per-step cost of torch.multinomial vs the inverse-CDF sampler on
the same (batch, vocab) probabilities.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the rlhfkit of this checkout, not whichever one the environment has installed


def matmul_peak(n: int, seconds: float) -> float:
    """Best GFLOP/s of an n x n fp32 matmul over `seconds`."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    for _ in range(2):
        torch.mm(a, b, out=out)
    best, t_end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t = time.perf_counter()
        torch.mm(a, b, out=out)
        best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return best


def model_shape(model: torch.nn.Module) -> dict[str, int]:
    cfg = model.config
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    head = model.get_output_embeddings().weight.numel()
    return {
        "layers": cfg.num_hidden_layers,
        "attn_width": heads * head_dim,
        "linear_params": linear,
        "head_params": head,
    }


def generation_flops(shape: dict[str, int], ro: Any) -> tuple[float, float]:
    """(total FLOPs of the generated tokens, mean context) for a Rollout: token t of a row with prompt length p sees
    p + t keys."""
    plen = ro.prompt_mask.sum(-1).float()
    lens = ro.response_mask.sum(-1)
    tokens = float(lens.sum())
    contexts = float((plen * lens + lens * (lens - 1) / 2).sum())  # sum over rows of sum_{t < n} (p + t)
    attn = 4 * shape["layers"] * shape["attn_width"]
    return 2 * shape["linear_params"] * tokens + attn * contexts, contexts / max(tokens, 1.0)


def prefill_flops(shape: dict[str, int], prompt_lengths: list[int]) -> float:
    """Every prompt token once (no padding), logits for the last position only."""
    body = 2 * (shape["linear_params"] - shape["head_params"])
    attn = 4 * shape["layers"] * shape["attn_width"]
    return sum(body * p + attn * p * (p + 1) / 2 + 2 * shape["head_params"] for p in prompt_lengths)


def timed(fn) -> tuple[Any, float, float, float]:
    """(result, wall s, process CPU s, 1-min load average when it ended)."""
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t, time.process_time() - c, os.getloadavg()[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", default=str(ROOT / "rlhfkit/tasks/data/review_prompts.jsonl"))
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--gemm-size", type=int, default=2048)
    ap.add_argument("--ablations", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/cpu_rollout.json"))
    args = ap.parse_args()

    import transformers

    from rlhfkit.data import ChatFormatter, load_examples
    from rlhfkit.models import load_causal_lm, load_tokenizer
    from rlhfkit.rollout import HFEngine, SamplingParams, fast

    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]
    peak = matmul_peak(args.gemm_size, 5.0)
    print(f"fp32 matmul peak ({args.gemm_size}^3, {args.threads} threads): {peak:.1f} GFLOP/s", flush=True)

    tok = load_tokenizer(args.model)
    model = load_causal_lm(args.model, dtype="float32").eval()
    fmt = ChatFormatter(tok, 1024, 256)  # the RL trainers' default data.max_length / max_prompt_length
    examples = load_examples(args.prompts, "prompt")[: args.batch]
    prompts = [fmt.encode_prompt(e.prompt) for e in examples]
    params = SamplingParams(args.new_tokens, 0, args.temperature, args.top_k, args.top_p)
    shape = model_shape(model)
    lengths = [len(p) for p in prompts]

    engines = {
        "hf": HFEngine(model, tok, batch_size=args.batch, decoder="generate"),
        "engine": HFEngine(model, tok, batch_size=args.batch),  # what make_engine builds on CPU (backend auto)
    }
    assert engines["engine"].uses_loop() and not engines["hf"].uses_loop()

    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in engines}
    for _name, eng in engines.items():  # warm-up: first-call allocations, lazy imports
        torch.manual_seed(args.seed)
        eng.generate(prompts, params)
    for r in range(args.repeats):
        for name, eng in engines.items():
            torch.manual_seed(args.seed + r)
            ro, wall, cpu, load = timed(lambda eng=eng: eng.generate(prompts, params))
            n_tokens = int(ro.response_mask.sum())
            flops, ctx = generation_flops(shape, ro)
            runs[name].append(
                {
                    "seconds": round(wall, 3),
                    "cpu_seconds": round(cpu, 3),
                    "load_avg_1min": round(load, 2),
                    "generated_tokens": n_tokens,
                    "tokens_per_s": round(n_tokens / wall, 1),
                    "finished": int(ro.finished.sum()),
                    "mean_length": round(n_tokens / len(ro), 2),
                    "generation_gflop": round(flops / 1e9, 2),
                    "mean_context": round(ctx, 1),
                    "response_width": ro.response_ids.shape[1],
                }
            )
            print(f"[{r}] {name}: {wall:.2f} s, {n_tokens / wall:.1f} tokens/s (load {load:.2f})", flush=True)

    job_prefill = prefill_flops(shape, lengths)
    summary: dict[str, Any] = {}
    for name, rs in runs.items():
        sec = statistics.median(x["seconds"] for x in rs)
        tps = statistics.median(x["tokens_per_s"] for x in rs)
        gen_flops = statistics.median(x["generation_gflop"] for x in rs) * 1e9
        tokens = statistics.median(x["generated_tokens"] for x in rs)
        per_token = gen_flops / tokens
        summary[name] = {
            "median_seconds": sec,
            "median_tokens_per_s": tps,
            "flops_per_generated_token": round(per_token),
            "generation_gflop_per_s": round(tps * per_token / 1e9, 1),
            "generation_pct_of_peak": round(100 * tps * per_token / 1e9 / peak, 1),
            "job_gflop_per_s": round((job_prefill + gen_flops) / sec / 1e9, 1),
            "job_pct_of_peak": round(100 * (job_prefill + gen_flops) / sec / 1e9 / peak, 1),
        }

    # what each side executed: generate prefills the padded batch (+ logits of the last position) and decodes every
    # row until the last one finishes; the loop's own counts come from fast.decode(stats=...)
    stats: dict[str, int] = {}
    torch.manual_seed(args.seed)
    with fast.prepacked_linears(model) as packed:
        fast.decode(model, sorted(prompts, key=len), params, engines["engine"].eos_ids, engines["engine"].pad_id,
                    stats=stats, packed=packed)  # fmt: skip
    body = 2 * (shape["linear_params"] - shape["head_params"])
    step = 2 * shape["linear_params"]
    hf_steps = max(x["response_width"] for x in runs["hf"])
    executed = {
        "hf": {"prefill_tokens": args.batch * max(lengths), "decode_row_steps": args.batch * (hf_steps - 1)},
        "engine": {
            "prefill_tokens": stats["prefix"] + stats["prefill"],
            "decode_row_steps": stats["decode"],
            **{k: v for k, v in stats.items() if k not in ("prefill", "decode")},
        },
    }
    for name, ex in executed.items():
        fl = ex["prefill_tokens"] * body + (ex["decode_row_steps"] + args.batch) * step
        ex["matmul_gflop"] = round(fl / 1e9, 1)
        ex["matmul_gflop_per_s"] = round(fl / summary[name]["median_seconds"] / 1e9, 1)
        ex["pct_of_peak"] = round(100 * ex["matmul_gflop_per_s"] / peak, 1)

    result: dict[str, Any] = {
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "machine": {
            "cpu": _cpu_name(),
            "logical_cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "load_avg_1min_at_start": round(load_start, 2),
        },
        "versions": {
            "rlhfkit": str(Path(fast.__file__).resolve().parents[2]),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        },
        "job": {
            "model": args.model,
            "dtype": "float32",
            "rows": len(prompts),
            "prompt_tokens": {"min": min(lengths), "mean": round(sum(lengths) / len(lengths), 1), "max": max(lengths)},
            "max_new_tokens": args.new_tokens,
            "sampling": {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p, "seed": args.seed},
        },
        "matmul_peak_gflop_per_s": round(peak, 1),
        "model": shape,
        "summary": summary,
        "speedup": round(summary["engine"]["median_tokens_per_s"] / summary["hf"]["median_tokens_per_s"], 2),
        "executed": executed,
        "runs": runs,
    }
    if args.ablations:
        result["ablations"] = ablations(model, prompts, params, engines["engine"], args)
    print(json.dumps({k: result[k] for k in ("summary", "speedup", "executed")}, indent=1))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"speedup {result['speedup']}x; wrote {out}")


def ablations(model, prompts, params, engine, args) -> dict[str, Any]:
    """The loop with one idea off at a time (median of 2 runs each), and the sampler alone."""
    from rlhfkit.rollout import fast

    rows = sorted(prompts, key=len)  # as HFEngine hands a batch to the loop
    variants = {
        "all": ({}, True),
        "no shared prefix": ({"share_prefix": False}, True),
        "finished rows kept": ({"drop_finished": False}, True),
        "MKL linears (no oneDNN prepack)": ({}, False),
        "the model's own forward (prefill in length groups)": ({"lean_layers": False}, True),
        "the model's own forward, one prefill group": ({"lean_layers": False, "group_cost": 10**9}, True),
    }
    out: dict[str, Any] = {}
    for name, (kw, prepack) in variants.items():
        times = []
        for r in range(2):
            torch.manual_seed(args.seed + r)
            with fast.prepacked_linears(model) if prepack else contextlib.nullcontext() as packed:
                (tokens, _), wall, _, load = timed(
                    lambda kw=kw, p=packed: fast.decode(
                        model, rows, params, engine.eos_ids, engine.pad_id, packed=p, **kw
                    )
                )
            times.append(wall)
        out[name] = {"median_seconds": round(statistics.median(times), 3), "load_avg_1min": round(load, 2)}
        print(f"ablation {name}: {out[name]['median_seconds']} s", flush=True)
    # sampling one step of (batch, vocab): generate's softmax + multinomial vs the loop's inverse CDF
    logits = torch.randn(len(prompts), model.config.vocab_size) * 3
    work = torch.empty_like(logits)

    def multinomial():
        return torch.multinomial(torch.softmax(logits, -1), 1)

    def inverse_cdf():
        top = logits.amax(-1, keepdim=True)
        w = work.copy_(logits).sub_(top).exp_()  # the loop does this in place on its own logits (no copy)
        return fast.sample_inverse_cdf(w, torch.rand(len(logits), dtype=torch.float64))

    for name, fn in (("sampler: softmax + torch.multinomial", multinomial), ("sampler: inverse CDF", inverse_cdf)):
        fn()
        t = time.perf_counter()
        for _ in range(10):
            fn()
        out[name] = {"ms_per_step": round((time.perf_counter() - t) / 10 * 1e3, 2)}
        print(f"{name}: {out[name]['ms_per_step']} ms a step", flush=True)
    return out


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    main()
