"""Peak memory per process and step time of DDP vs FSDP2 (and DeepSpeed ZeRO-3 for DPO) on 2 CPU processes (gloo),
for DPO and PPO, on the builtin model (SmolLM2-135M-Instruct), through the CLI under torchrun.

    python benchmarks/fsdp_memory.py dpo-ddp dpo-fsdp ppo-ddp ppo-fsdp-gather ppo-fsdp-copy ppo-fsdp-gather-shard
    python benchmarks/fsdp_memory.py dpo-zero3    # with deepspeed installed

Each run: `torchrun --nproc_per_node 2` of this script in worker mode, which runs `rlhfkit <command>` in-process and
writes its own peak RSS (`getrusage`, max resident set size) when it exits; one JSON line per run is appended to
benchmarks/results/fsdp_memory.jsonl: peak RSS of each process, and the median wall time per step over the steps after
the first (warm-up). DPO: 2 pairs per process per step, 128 tokens, 4 steps, reference log-probs precomputed (so the
reference is not held). PPO: 2 prompts per process, 16 new tokens, a value head, the length rule as reward, a frozen
reference, 3 rollouts. The shapes are small so each run takes about a minute on 2 shared cores; memory is dominated by
weights, gradients and AdamW state (135M parameters x 4 bytes = 0.54 GB per copy), which is what FSDP2 shards.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "fsdp_memory.jsonl"
MODEL = "smollm2-135m-instruct"

COMMON = [f"model.name_or_path={MODEL}", "train.batch_size=2", "train.lr=1e-6", "train.progress=false"]
DPO = ["dpo", "data.max_length=128", "data.max_prompt_length=64", "train.max_steps=4", "eval_kl_samples=0"]
PPO = [
    "ppo",
    "data.max_prompt_length=64",
    "sampling.max_new_tokens=16",
    "train.max_steps=3",
    "eval_samples=0",
    "reward.sources=[{kind: rule, path: length, params: {target: 20}}]",
]
RUNS: dict[str, list[str]] = {
    "dpo-ddp": DPO,
    "dpo-fsdp": [*DPO, "train.fsdp=true"],
    "dpo-zero3": [*DPO, "train.deepspeed=3"],  # needs deepspeed: pip install 'rlhfkit[deepspeed]'
    "ppo-ddp": PPO,
    "ppo-fsdp-gather": [*PPO, "train.fsdp=true", "sharding.rollout=gather"],
    "ppo-fsdp-copy": [*PPO, "train.fsdp=true", "sharding.rollout=copy"],
    "ppo-fsdp-gather-shard": [*PPO, "train.fsdp=true", "sharding.rollout=gather", "sharding.frozen=shard"],
}


def write_data(d: Path) -> None:
    words = "the film was a quiet and careful study of memory loss and the people who stay".split()
    with open(d / "prefs.jsonl", "w") as f:
        for i in range(64):
            body = " ".join(words[(i + j) % len(words)] for j in range(40))
            row = {"prompt": f"Review film {i}: {body}", "chosen": f"A fine film. {body}", "rejected": f"Dull. {body}"}
            f.write(json.dumps(row) + "\n")
    with open(d / "prompts.jsonl", "w") as f:
        for i in range(64):
            f.write(json.dumps({"prompt": f"Write one sentence about film number {i}."}) + "\n")


def worker(rss_dir: str, args: list[str]) -> None:
    """One process of the run: rlhfkit's CLI in-process, then this process's peak RSS."""
    from rlhfkit.cli import main

    try:
        sys.argv = ["rlhfkit", *args]
        main()
    except SystemExit as e:
        if e.code not in (0, None):
            raise
    finally:
        rank = os.environ.get("RANK", "0")
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
        Path(rss_dir, f"rank{rank}.json").write_text(json.dumps({"peak_rss_mb": round(peak_mb, 1)}))


def step_seconds(out: Path) -> float:
    """Median wall time between consecutive logged training steps, after the first step."""
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    t = [r["time"] for r in rows if any(k.startswith("train/") for k in r)]
    gaps = [b - a for a, b in zip(t, t[1:])]
    return statistics.median(gaps)


def run(name: str, work: Path) -> dict:
    cmd, *overrides = RUNS[name]
    data = "data.train=" + str(work / ("prefs.jsonl" if cmd == "dpo" else "prompts.jsonl"))
    out, rss = work / name, work / f"{name}-rss"
    rss.mkdir()
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone"]
    args = [*launcher, __file__, "--worker", str(rss), "--", cmd, *COMMON, data, *overrides, "-o", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    t0 = time.perf_counter()
    r = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        return {"run": name, "ok": False, "error": r.stderr[-1500:]}
    peaks = [json.loads((rss / f"rank{i}.json").read_text())["peak_rss_mb"] for i in range(2)]
    summary = json.loads((out / "summary.json").read_text())
    return {
        "run": name,
        "ok": True,
        "command": " ".join([cmd, *overrides]),
        "distributed": summary["distributed"],
        "peak_rss_mb": peaks,
        "step_seconds": round(step_seconds(out), 3),
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "machine": "2-core CPU, shared",
        "omp_threads": env["OMP_NUM_THREADS"],
    }


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[4:])  # argv: --worker RSS_DIR -- rlhfkit args...
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", choices=sorted(RUNS))
    a = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_data(work)
        for name in a.runs:
            result = run(name, work)
            print(json.dumps(result), flush=True)
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            with open(RESULTS, "a") as f:
                f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
