"""How often does a reward model score the constitutional revision above the original response?

    python benchmarks/make_data.py --out bench_out/data          # hh-rlhf harmless-base pairs from ../shared/data
    rlhfkit rm model.name_or_path=smollm2-135m-instruct model.num_layers=8 data.train=bench_out/data/hh_pairs.train.jsonl \
        data.eval=bench_out/data/hh_pairs.eval.jsonl data.max_length=192 data.max_prompt_length=128 data.skip_invalid=true \
        train.batch_size=16 train.max_steps=40 train.lr=1e-4 -o runs/hh_rm
    python benchmarks/constitutional_rm.py --rm runs/hh_rm/model

Reads the traces `benchmarks/constitutional.py` saved (benchmarks/results/constitutional_samples_{paper,quoted}.jsonl),
scores (prompt, original) and (prompt, revision) with the reward model and appends one JSON line per layout to
benchmarks/results/constitutional_rm.jsonl: the share of usable pairs (revision non-empty and different) where the
reward model prefers the revision, the mean score gap, and the reward model's held-out accuracy on hh-rlhf.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rm", required=True, help="reward model directory")
    ap.add_argument("--layouts", default="paper,quoted")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/constitutional_rm.jsonl"))
    a = ap.parse_args()

    from rlhfkit.rewards.sources import RewardModelSource

    rm = RewardModelSource.from_path(a.rm)
    summary_path = Path(a.rm).parent / "summary.json"
    rm_eval = json.loads(summary_path.read_text()).get("eval", {}) if summary_path.exists() else {}
    with open(a.out, "a") as out:
        for layout in a.layouts.split(","):
            path = ROOT / f"benchmarks/results/constitutional_samples_{layout}.jsonl"
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            usable = [
                r for r in rows if r["revisions"] and r["revisions"][-1].strip() and r["revisions"][-1] != r["response"]
            ]
            prompts = [[{"role": "user", "content": r["prompt"]}] for r in usable]
            revised = rm(prompts, [r["revisions"][-1] for r in usable]).total
            original = rm(prompts, [r["response"] for r in usable]).total
            line = {
                "benchmark": "constitutional_rm",
                "layout": layout,
                "rm": a.rm,
                "rm_heldout_accuracy": rm_eval.get("accuracy"),
                "rm_heldout_auc": rm_eval.get("auc"),
                "pairs": len(usable),
                "rm_prefers_revision": float((revised > original).float().mean()) if usable else float("nan"),
                "mean_score_gap": float((revised - original).mean()) if usable else float("nan"),
            }
            out.write(json.dumps(line) + "\n")
            print(json.dumps(line))


if __name__ == "__main__":
    main()
