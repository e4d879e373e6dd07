"""Online RL under DeepSpeed ZeRO-2/3 on 2 CPU processes (gloo, DeepSpeed's CPU accelerator) against 1 process or
DDP, through the CLI, on the tiny random Llama of `rlhfkit.models.tiny` and a tiny reward model.

    python benchmarks/deepspeed_online.py                 # every case below
    python benchmarks/deepspeed_online.py ppo-zero3 grpo-zero2

4 prompts per rollout in all (4 on 1 process, 2 per process on 2), 6 new tokens, lr 1e-3, 2 held-out prompts; the
setup of tests/test_deepspeed.py. Greedy cases compare with 1 process (samples then do not depend on how prompts are
split); sampled cases (2 samples per prompt) compare with DDP on 2 processes (the same sampling streams per process);
`-resume` cases run 2 rollouts, then --resume to 3.
One JSON line per case is appended to benchmarks/results/deepspeed_online_cpu.jsonl: the largest gap of every global
number both runs logged (losses, gradient norms, KL, held-out score / KL / length) and of the final weights.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's rlhfkit and its tests' setup
from tests.test_fsdp_online import SAME as GLOBAL  # noqa: E402  (global numbers, logged once per step)
from tests.test_fsdp_online import _args, online_work  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "deepspeed_online_cpu.jsonl"
TORCHRUN = ["-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone"]
GREEDY = ["sampling.temperature=0"]
SAMPLED = ["algo.num_samples=2", "kl.coef=0.05"]
LORA = ["model.lora.enabled=true", "algo.critic=separate", "algo.critic_path={rm}", *GREEDY]


def _zero2_config() -> list[str]:
    config = str(ROOT / "configs/accelerate/deepspeed_zero2.yaml")
    return [
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        "2",
        "--config_file",
        config,
        "--mixed_precision",
        "no",
    ]


# case -> (command, baseline (launcher, per-process prompts), candidate launcher, candidate keys, shared keys, steps)
CASES = {
    "ppo-zero3": ("ppo", ([], 4), TORCHRUN, ["train.deepspeed=3"], GREEDY, 3),
    "ppo-zero3-resume": ("ppo", ([], 4), TORCHRUN, ["train.deepspeed=3"], GREEDY, 3),
    "ppo-zero2-resume": ("ppo", ([], 4), TORCHRUN, ["train.deepspeed=2"], GREEDY, 3),
    "ppo-lora-critic-copy-zero3": ("ppo", ([], 4), TORCHRUN, ["train.deepspeed=3", "sharding.rollout=copy"], LORA, 2),
    "grpo-zero2": ("grpo", (TORCHRUN, 2), None, [], SAMPLED, 2),  # None: the shipped ZeRO-2 launch config
    "rloo-zero3": ("rloo", (TORCHRUN, 2), TORCHRUN, ["train.deepspeed=3"], SAMPLED, 2),
    "reinforce++-zero3": ("reinforce++", (TORCHRUN, 2), TORCHRUN, ["train.deepspeed=3"], SAMPLED, 2),
    "online-dpo-zero3": ("online-dpo", (TORCHRUN, 2), TORCHRUN, ["train.deepspeed=3"], ["algo.num_samples=2"], 2),
}


def _cli(work: Path, launcher: list[str], command: str, out: Path, per_process: int, steps: int, keys: list[str]):
    """The setup of tests/test_fsdp_online.py (its `_args`), with `keys` ({rm}: the tiny reward model) added."""
    args = _args(work, command, out, per_process, steps, *[k.format(rm=work / "rm") for k in keys])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [sys.executable, *launcher, "-m", "rlhfkit.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True
    )
    if r.returncode != 0:
        raise SystemExit(f"{command} failed:\n{r.stderr[-3000:]}")


def _logged(out: Path) -> dict[int, dict]:
    merged: dict[int, dict] = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        merged.setdefault(row["step"], {}).update(row)
    return merged


def _gaps(a: Path, b: Path, weights: str = "model/model.safetensors") -> dict[str, float]:
    la, lb = _logged(a), _logged(b)
    gaps: dict[str, float] = {}
    for step, y in lb.items():
        for k in GLOBAL:
            if k in y and k in la.get(step, {}):
                gaps[k] = max(gaps.get(k, 0.0), abs(la[step][k] - y[k]))
    wa, wb = load_file(str(a / weights)), load_file(str(b / weights))
    gaps["final_weights"] = max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa)
    return gaps


def run_case(name: str, work: Path) -> dict:
    command, (base_launcher, base_per_process), launcher, keys, shared, steps = CASES[name]
    base, cand = work / f"{name}-base", work / f"{name}-cand"
    t = time.perf_counter()
    _cli(work, base_launcher, command, base, base_per_process, steps, shared)
    if name.endswith("-resume"):  # steps - 1 rollouts, then --resume to `steps`
        _cli(work, launcher, command, cand, 2, steps - 1, [*shared, *keys])
        _cli(work, launcher, command, cand, 2, steps, [*shared, *keys, "--resume"])
    else:
        _cli(work, launcher or _zero2_config(), command, cand, 2, steps, [*shared, *keys])
    summary = json.loads((cand / "summary.json").read_text())
    gaps = _gaps(base, cand)
    if (cand / "adapter").is_dir():
        gaps["final_adapter"] = _gaps(base, cand, "adapter/adapter_model.safetensors")["final_weights"]
    return {
        "case": name,
        "baseline": "1 process" if not base_launcher else "DDP, 2 processes",
        "distributed": summary["distributed"],
        "steps": steps,
        "max_gap": gaps,
        "final_train_loss": summary["final_train"].get("loss"),
        "seconds_both_runs": round(time.perf_counter() - t, 1),
        "model": "tiny random Llama (rlhfkit.models.tiny)",
        "machine": "2-core CPU, shared",
        "deepspeed": importlib.metadata.version("deepspeed"),
        "torch": torch.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="*", help=f"some of {', '.join(CASES)} (default: all)")
    args = parser.parse_args()
    unknown = sorted(set(args.cases) - set(CASES))
    if unknown:
        parser.error(f"unknown cases {unknown}: choose from {', '.join(CASES)}")
    with tempfile.TemporaryDirectory() as tmp:
        work = online_work(Path(tmp))
        for name in args.cases or list(CASES):
            row = run_case(name, work)
            print(json.dumps(row))
            with RESULTS.open("a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
