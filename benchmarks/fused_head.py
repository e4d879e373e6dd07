"""Peak RSS and step time of the builtin model's SFT and DPO steps on CPU: fused head vs plain logits, padded vs
padding-free, each variant in its own process (peak RSS is a per-process high-water mark).

    flock /tmp/rlhfkit-cpu.lock python benchmarks/fused_head.py [--steps 3] [--threads 2]

Model: SmolLM2-135M-Instruct (the builtin, fp32, 49,152-token vocabulary). Data: random tokens with variable lengths,
the same rows for every variant. SFT: 8 sequences of 48-224 tokens (loss on all but the first 16). DPO: 4 pairs, prompt
32 + completions of 16-192 tokens, reference log-probs precomputed (before the timed steps, by the same path). A step
is the objective's loss over the whole batch, backward, gradient clipping and AdamW (what trainers/step.py does for
one micro-batch). Step time: mean of the steps after the first. Writes benchmarks/results/fused_head.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlhfkit.config import PreferenceLossConfig  # noqa: E402
from rlhfkit.data import EncodedPair  # noqa: E402
from rlhfkit.data.templates import Encoded  # noqa: E402
from rlhfkit.models import Reference, load_causal_lm  # noqa: E402
from rlhfkit.ops import head_token_stats, token_logprobs  # noqa: E402
from rlhfkit.trainers.dpo import DPOObjective, precompute_reference  # noqa: E402
from rlhfkit.trainers.sft import SFTObjective  # noqa: E402

MODEL = "smollm2-135m-instruct"
VARIANTS = [(False, False), (True, False), (False, True), (True, True)]  # (fused, padding_free)
OUT = Path(__file__).resolve().parent / "results" / "fused_head.json"


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def sft_rows(vocab: int) -> list[Encoded]:
    g = torch.Generator().manual_seed(0)
    lengths = torch.linspace(48, 224, 8).round().long()[torch.randperm(8, generator=g)].tolist()
    return [Encoded(torch.randint(10, vocab, (n,), generator=g).tolist(), [0] * 16 + [1] * (n - 16)) for n in lengths]


def dpo_rows(vocab: int) -> list[EncodedPair]:
    g = torch.Generator().manual_seed(1)

    def toks(n: int) -> list[int]:
        return torch.randint(10, vocab, (n,), generator=g).tolist()

    lengths = [(192, 48), (16, 128), (96, 160), (64, 32)]  # (chosen, rejected) completion lengths
    return [EncodedPair(toks(32), toks(c), toks(r), index=i) for i, (c, r) in enumerate(lengths)]


def run_one(bench: str, fused: bool, padding_free: bool, steps: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = load_causal_lm(MODEL)
    model.train()
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    vocab = model.config.vocab_size
    if bench == "sft":
        objective = SFTObjective(pad, True, "token-mean", 8, fused, padding_free)
        rows: list = sft_rows(vocab)
        batch = objective.collate(rows)
    else:
        objective = DPOObjective(pad, PreferenceLossConfig(name="dpo", beta=0.1), None, 8, fused, padding_free)
        pairs = dpo_rows(vocab)
        rows = precompute_reference(pairs, Reference(model, model), pad, 8, fused=fused, padding_free=padding_free)
        batch = objective.collate(rows)
    real = int(batch["attention_mask"].sum())
    padded = batch["attention_mask"].numel()
    count = objective.count(batch)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    rss_loaded = rss_mib()
    times, losses = [], []
    for _ in range(steps):
        t = time.perf_counter()
        loss, _ = objective.loss(model, batch)
        (loss / count).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
        losses.append(float(loss.detach()) / count)
    step = sum(times[1:]) / max(len(times) - 1, 1)
    return {
        "bench": bench,
        "fused_head": fused,
        "padding_free": padding_free,
        "rows": len(batch["input_ids"]),
        "padded_tokens": padded,
        "real_tokens": real,
        "step_s": round(step, 3),
        "step_times_s": [round(x, 3) for x in times],
        "real_tokens_per_s": round(real / step, 1),
        "rss_after_load_mib": round(rss_loaded),
        "peak_rss_mib": round(peak_rss_mib()),
        "peak_over_load_mib": round(peak_rss_mib() - rss_loaded),
        "first_loss": round(losses[0], 6),
    }


def run_head(fused: bool, rows: int, threads: int) -> dict:
    """The head alone at the builtin's sizes (hidden 576, vocabulary 49,152): log-probs of `rows` tokens, forward and
    backward, from random hidden states: what the fused path saves, without the rest of the model."""
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(rows, 576, generator=g, requires_grad=True)
    weight = (torch.randn(49152, 576, generator=g) * 0.02).requires_grad_()
    labels = torch.randint(0, 49152, (rows,), generator=g)
    base = rss_mib()
    t = time.perf_counter()
    if fused:
        lp, _ = head_token_stats(hidden, weight, labels)
    else:
        lp = token_logprobs(hidden @ weight.t(), labels)
    lp.sum().backward()
    return {
        "bench": "head",
        "fused_head": fused,
        "rows": rows,
        "seconds": round(time.perf_counter() - t, 3),
        "peak_over_inputs_mib": round(peak_rss_mib() - base),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3, help="steps per variant (the first is not timed)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--benches", default="sft,dpo")
    ap.add_argument("--one", nargs=3, metavar=("BENCH", "FUSED", "PADDING_FREE"), help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--head-only", type=int, metavar="ROWS", help="only the head micro-benchmark (ROWS tokens)")
    args = ap.parse_args()
    if args.head_only:
        for fused in (False, True):
            if args.one:
                break
            cmd = [sys.executable, __file__, "--head-only", str(args.head_only), "--threads", str(args.threads)]
            out = subprocess.run(cmd + ["--one", "head", str(int(fused)), "0"], capture_output=True, text=True)
            print(out.stdout.strip() or out.stderr[-2000:], flush=True)
        if args.one:
            print(json.dumps(run_head(args.one[1] == "1", args.head_only, args.threads)), flush=True)
        return
    if args.one:
        bench, fused, pf = args.one[0], args.one[1] == "1", args.one[2] == "1"
        print(json.dumps(run_one(bench, fused, pf, args.steps, args.threads)), flush=True)
        return
    load_at_start = os.getloadavg()[0]
    results = []
    for bench in args.benches.split(","):
        for fused, pf in VARIANTS:
            cmd = [sys.executable, __file__, "--steps", str(args.steps), "--threads", str(args.threads)]
            cmd += ["--one", bench, str(int(fused)), str(int(pf))]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            results.append(json.loads(out))
            print(out, flush=True)
    for r in results:  # ratios against the plain padded variant of the same benchmark
        base = next(x for x in results if x["bench"] == r["bench"] and not x["fused_head"] and not x["padding_free"])
        r["step_time_ratio"] = round(r["step_s"] / base["step_s"], 3)
        r["peak_rss_ratio"] = round(r["peak_rss_mib"] / base["peak_rss_mib"], 3)
        r["peak_over_load_ratio"] = round(r["peak_over_load_mib"] / base["peak_over_load_mib"], 3)
    machine = {
        "cpu": platform.processor() or platform.machine(),
        "cpu_model": next(
            (ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?"
        ),
        "logical_cpus": os.cpu_count(),
        "threads": args.threads,
        "load_avg_1min_at_start": round(load_at_start, 2),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    command = "flock /tmp/rlhfkit-cpu.lock python benchmarks/fused_head.py " + " ".join(sys.argv[1:])
    report = {"command": command.strip(), "model": MODEL, "machine": machine, "results": results}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
