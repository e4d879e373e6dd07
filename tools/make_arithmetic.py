"""Write the arithmetic task's sample data into ``rlhfkit/tasks/data`` (process supervision demo and tests).

    python tools/make_arithmetic.py            # rewrites rlhfkit/tasks/data/arithmetic_*.jsonl
    python tools/make_arithmetic.py --check    # exit 1 if the committed files differ from a fresh build

Problems add three numbers in 10-99 (``rlhfkit.tasks.arithmetic``); the four files hold disjoint problems:
``arithmetic_prompts.jsonl`` (256 prompts for online RL), ``arithmetic_eval.jsonl`` (128 held-out prompts),
``arithmetic_sft.jsonl`` (256 worked solutions) and ``arithmetic_steps.jsonl`` (256 step rows for `rlhfkit prm`, every
other one with one slip, every step labelled by the rule checker).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's rlhfkit, installed or not

from rlhfkit.tasks.arithmetic import problems, prompt_for, rows  # noqa: E402

DATA_DIR = ROOT / "rlhfkit" / "tasks" / "data"
SEED = 20261206
SIZES = {"eval": 128, "prompts": 256, "sft": 256, "steps": 256}
KIND = {"eval": "prompt", "prompts": "prompt", "sft": "sft", "steps": "steps"}


def build() -> dict[str, str]:
    """File name -> JSON Lines text; each split's problems are new (no prompt in two files)."""
    seen: list[str] = []
    out = {}
    for i, (name, n) in enumerate(SIZES.items()):
        nums = problems(n, SEED + i, exclude=seen)
        seen += [prompt_for(x) for x in nums]
        lines = [json.dumps(r) for r in rows(nums, KIND[name], seed=SEED + i)]
        out[f"arithmetic_{name}.jsonl"] = "\n".join(lines) + "\n"
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed files instead of writing")
    args = parser.parse_args()
    stale = []
    for name, text in build().items():
        path = DATA_DIR / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print(f"out of date: {', '.join(stale)} (run python tools/make_arithmetic.py)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
