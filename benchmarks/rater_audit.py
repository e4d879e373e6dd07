"""Rater demographics audit: two simulated rater groups with different biases, the annotation store's audit table, and
a reward model's held-out accuracy per group.

    python benchmarks/rater_audit.py --out runs/rater_audit [--model smollm2-135m-instruct] [--length-bias 0.3]

1. pairs: the 200 shipped preference pairs (rlhfkit/tasks/data/prefs.jsonl: review continuations), each shown as
   (A, B) in a seeded random order; 150 pairs train the reward model, 50 are held out (no pair in both).
2. labels: four simulated raters label every pair (``simulate_preferences``, gold = VADER sentiment of the response,
   Bradley-Terry temperature 0.05): region=EU raters follow the gold; region=US raters add --length-bias gold units per
   word a response is longer than the other (a verbosity bias).
3. audit: every label goes into an annotation store (raters added with their attributes, one campaign, 4 raters per
   item, answers submitted in display terms as the web app would) and `rlhfkit annotate quality` prints agreement and
   label distributions per region and across regions.
4. reward model: `rlhfkit rm` on all four raters' labels of the 150 training pairs (the first 6 blocks of the builtin
   model, as in the demo), then its held-out accuracy overall, against the gold order, and per region
   (``pipeline.evaluate.rm_quality`` with the rater -> attributes mapping).
Writes benchmarks/results/rater_audit.json with the commands, the audit report, the accuracies and wall times.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rlhfkit.config import RewardSpec  # noqa: E402
from rlhfkit.data import write_jsonl  # noqa: E402
from rlhfkit.eval.metrics import pairwise_accuracy  # noqa: E402
from rlhfkit.feedback.simulated import RaterSpec, simulate_preferences  # noqa: E402
from rlhfkit.feedback.store import Store  # noqa: E402
from rlhfkit.pipeline.evaluate import model_scorer, rm_quality, scorer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/rater_audit")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--length-bias", type=float, default=0.3)
    ap.add_argument("--num-layers", type=int, default=6, help="blocks of the reward model (the demo's 6)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "rater_audit.json"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    # 1. pairs in a random display order
    rng = random.Random(args.seed)
    rows = [json.loads(x) for x in open(ROOT / "rlhfkit" / "tasks" / "data" / "prefs.jsonl")]
    prompts, a, b = [], [], []
    for r in rows:
        x, y = (r["chosen"], r["rejected"]) if rng.random() < 0.5 else (r["rejected"], r["chosen"])
        prompts.append(r["prompt"])
        a.append(x)
        b.append(y)
    order = list(range(len(rows)))
    rng.shuffle(order)
    held = set(order[:50])

    # 2. simulated rater groups
    raters = [
        RaterSpec("eu-1", temperature=0.05, attributes={"region": "EU"}),
        RaterSpec("eu-2", temperature=0.05, attributes={"region": "EU"}),
        RaterSpec("us-1", temperature=0.05, length_bias=args.length_bias, attributes={"region": "US"}),
        RaterSpec("us-2", temperature=0.05, length_bias=args.length_bias, attributes={"region": "US"}),
    ]
    attributes = {r.name: dict(r.attributes) for r in raters}
    gold = scorer([RewardSpec(kind="sentiment")])
    labels = simulate_preferences(prompts, a, b, gold, raters, seed=args.seed)
    n_raters = len(raters)
    pair_of = [i for i in range(len(rows)) for _ in range(n_raters)]  # rows come pair by pair, then rater
    assert len(labels) == len(pair_of), "identical pairs were skipped; the pair index needs them all"

    # 3. the annotation store and `rlhfkit annotate quality`
    db = out / "audit.db"
    db.unlink(missing_ok=True)
    store = Store(str(db))
    for r in raters:
        store.add_rater(r.name, r.attributes)
    store.create_campaign(
        "audit", [{"prompt": p, "responses": [x, y]} for p, x, y in zip(prompts, a, b)], raters_per_item=n_raters
    )
    ids = {name: i for i, name in enumerate(store.raters(), start=1)}
    wanted = {(lab["rater"], i): ("tie" if lab["tie"] else lab["chosen"]) for lab, i in zip(labels, pair_of)}
    for name, rid in ids.items():
        for entry in store.rater_queue(rid, "audit"):
            view = store.assignment_view(rid, entry["id"])
            i = next(
                k for k in range(len(rows)) if prompts[k] == view["prompt"] and {a[k], b[k]} == set(view["responses"])
            )
            choice = wanted[(name, i)]
            answer = {"choice": "tie"} if choice == "tie" else {"choice": "AB"[view["responses"].index(choice)]}
            store.submit(rid, entry["id"], answer | {"strength": 1})
    report = store.quality("audit")
    store.close()
    cmd = [sys.executable, "-m", "rlhfkit.cli", "annotate", "quality", "--campaign", "audit", "--db", str(db)]
    print("+", " ".join(cmd), flush=True)
    table = subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, text=True).stdout
    print(table, flush=True)

    # 4. reward model on every label of the training pairs; accuracy on the held-out labels per region
    train = [lab for lab, i in zip(labels, pair_of) if i not in held]
    heldout = [lab for lab, i in zip(labels, pair_of) if i in held]
    write_jsonl(out / "train.jsonl", train)
    write_jsonl(out / "heldout.jsonl", heldout)
    rm_args = [
        f"model.name_or_path={args.model}",
        f"model.num_layers={args.num_layers}",
        f"data.train={out / 'train.jsonl'}",
        "data.eval_fraction=0.0",
        "data.max_length=64",
        "data.max_prompt_length=8",
        "group_pairs=true",
        "train.epochs=2",
        "train.batch_size=8",
        "train.lr=1.3e-4",
        "train.warmup_ratio=0.1",
        "train.progress=false",
    ]
    cmd = [sys.executable, "-m", "rlhfkit.cli", "rm", *rm_args, "-o", str(out / "rm")]
    print("+", " ".join(cmd), flush=True)
    t = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    rm_seconds = time.perf_counter() - t
    rm = model_scorer(str(out / "rm" / "model"))
    quality = rm_quality(rm, heldout, attributes)
    gold_pairs = [i for i in sorted(held)]
    g_a, g_b = (
        gold([prompts[i] for i in gold_pairs], [a[i] for i in gold_pairs]),
        gold([prompts[i] for i in gold_pairs], [b[i] for i in gold_pairs]),
    )
    s_a = rm([prompts[i] for i in gold_pairs], [a[i] for i in gold_pairs])
    s_b = rm([prompts[i] for i in gold_pairs], [b[i] for i in gold_pairs])
    better = [(x, y) if ga > gb else (y, x) for x, y, ga, gb in zip(s_a, s_b, g_a, g_b) if ga != gb]
    vs_gold = pairwise_accuracy([x for x, _ in better], [y for _, y in better])
    result = {
        "model": args.model,
        "length_bias": args.length_bias,
        "pairs": len(rows),
        "heldout_pairs": len(held),
        "labels": len(labels),
        "audit": report.get("groups"),
        "fleiss": report["fleiss"],
        "krippendorff": report["krippendorff"],
        "annotate_quality_output": table,
        "rm_command": "rlhfkit rm " + " ".join(rm_args) + f" -o {out / 'rm'}",
        "rm_seconds": round(rm_seconds, 1),
        "rm_heldout": {k: quality[k] for k in ("pairs", "accuracy", "auc")} | {"groups": quality.get("groups")},
        "rm_accuracy_vs_gold_order": vs_gold,
        "rm_gold_pairs": len(better),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    Path(args.results).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k not in ("audit", "annotate_quality_output")}, indent=2))
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
