"""Reward-model levers on a demo run's labels that `rlhfkit rm` alone cannot express (docs/benchmarks.md, "Still more
levers, and why they all stop at 0.79").

    python benchmarks/rm_levers.py prefix-labels RUN OUT.jsonl [--no-prefixes]  # labels, one prefix per response
    rlhfkit rm -c RUN/round-1/rm/config.yaml -o runs/rm_prefix data.train=OUT.jsonl train.epochs=2
    python benchmarks/rm_levers.py ensemble RUN RM_DIR [RM_DIR ...]  # held-out AUC of each and of their mean
    python benchmarks/rm_levers.py errors RUN RM_DIR                 # agreement with gold, the worst responses

RUN is a finished `rlhfkit demo -o RUN` (its round-1 samples, labels and reward model). prefix-labels takes the
training prompts' samples, adds to each response one prefix of it (cut at a word boundary, 40-90% of its words),
and labels every pair of the enlarged set with the run's simulated raters and gold (label seed 1). ensemble z-scores
each reward model's scores on the held-out pairs and averages them. errors scores the held-out responses with gold
and the reward model: Spearman, agreement with gold's order by gold gap, and the responses ranked most differently.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
from pathlib import Path

import numpy as np


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def prefix_labels(run: Path, out: Path, prefixes: bool = True) -> None:
    from rlhfkit.config import to_dict
    from rlhfkit.feedback.simulated import RaterSpec, simulate_preferences
    from rlhfkit.pipeline.config import load_pipeline
    from rlhfkit.pipeline.evaluate import scorer

    label = load_pipeline(run / "pipeline.yaml").label  # the run's raters and gold
    train = {json.dumps(r["prompt"]) for r in _rows(run / "round-1/rm/data/train.jsonl")}
    rng = random.Random(0)
    prompts, a, b = [], [], []
    for row in _rows(run / "round-1/sample/samples.jsonl"):
        if json.dumps(row["prompt"]) not in train:
            continue  # held-out prompts keep their own labels
        texts = list(dict.fromkeys(row["responses"]))
        for t in list(texts):
            words = t.split(" ")
            if prefixes and len(words) >= 4:
                texts.append(" ".join(words[: rng.randint(max(2, len(words) * 4 // 10), len(words) - 1)]))
        for x, y in itertools.combinations(dict.fromkeys(texts), 2):
            prompts.append(row["prompt"])
            a.append(x)
            b.append(y)
    raters = [RaterSpec(**to_dict(r)) for r in label.raters]
    rows = simulate_preferences(prompts, a, b, scorer(label.gold), raters, seed=1)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"{len(prompts)} pairs, {len(rows)} labels -> {out}")


def _heldout_scores(run: Path, rm_dir: str) -> tuple[np.ndarray, np.ndarray]:
    from rlhfkit.config import RewardSpec
    from rlhfkit.rewards import build_source

    pairs = [r for r in _rows(run / "round-1/label/heldout.jsonl") if not r["tie"]]
    rm = build_source(RewardSpec(kind="model", path=rm_dir))  # lengths as trained (rlhfkit_encoding.json)
    prompts = [r["prompt"] for r in pairs]
    chosen = rm(prompts, [r["chosen"] for r in pairs]).total.numpy()
    rejected = rm(prompts, [r["rejected"] for r in pairs]).total.numpy()
    return chosen, rejected


def ensemble(run: Path, rm_dirs: list[str]) -> None:
    from rlhfkit.eval.metrics import pairwise_auc

    total_c, total_r = 0.0, 0.0
    for d in rm_dirs:
        c, r = _heldout_scores(run, d)
        sd = np.concatenate([c, r]).std()
        total_c, total_r = total_c + c / sd, total_r + r / sd
        print(f"{d}: held-out AUC {pairwise_auc(c, r):.4f}")
    print(f"mean of {len(rm_dirs)} (z-scored): held-out AUC {pairwise_auc(total_c, total_r):.4f}")


def errors(run: Path, rm_dir: str, worst: int = 10) -> None:
    from scipy.stats import rankdata, spearmanr

    from rlhfkit.config import RewardSpec
    from rlhfkit.pipeline.evaluate import scorer

    pairs = [r for r in _rows(run / "round-1/label/heldout.jsonl") if not r["tie"]]
    texts = {(json.dumps(r["prompt"]), r[k]): (r["prompt"], r[k]) for r in pairs for k in ("chosen", "rejected")}
    keys = list(texts)
    prompts, responses = [texts[k][0] for k in keys], [texts[k][1] for k in keys]
    gold = np.array(scorer([RewardSpec(kind="sentiment")])(prompts, responses))
    rm = np.array(scorer([RewardSpec(kind="model", path=rm_dir)])(prompts, responses))
    g, s = dict(zip(keys, gold)), dict(zip(keys, rm))
    print(f"{len(keys)} held-out responses; Spearman(reward model, gold) = {spearmanr(gold, rm).correlation:.3f}")
    gap = np.array(
        [g[(json.dumps(r["prompt"]), r["chosen"])] - g[(json.dumps(r["prompt"]), r["rejected"])] for r in pairs]
    )
    sgap = np.array(
        [s[(json.dumps(r["prompt"]), r["chosen"])] - s[(json.dumps(r["prompt"]), r["rejected"])] for r in pairs]
    )
    for lo, hi in [(0, 0.05), (0.05, 0.2), (0.2, 0.5), (0.5, 3)]:
        m = (np.abs(gap) >= lo) & (np.abs(gap) < hi)
        agree, label = np.mean((sgap > 0) == (gap > 0), where=m), np.mean(gap > 0, where=m)
        print(f"gold gap [{lo}, {hi}): {m.sum()} pairs; reward model agrees with gold {agree:.3f}, label {label:.3f}")
    rg, rs = rankdata(gold) / len(gold), rankdata(rm) / len(rm)
    for i in np.argsort(-np.abs(rg - rs))[:worst]:
        print(f"gold {gold[i]:+.3f} (rank {rg[i]:.2f})  reward model {rm[i]:+.2f} (rank {rs[i]:.2f})  {responses[i]!r}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prefix-labels")
    p.add_argument("run", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--no-prefixes", action="store_true", help="only relabel the pairs (the label-noise control)")
    e = sub.add_parser("ensemble")
    e.add_argument("run", type=Path)
    e.add_argument("rm_dirs", nargs="+")
    r = sub.add_parser("errors")
    r.add_argument("run", type=Path)
    r.add_argument("rm_dir")
    a = ap.parse_args()
    if a.cmd == "prefix-labels":
        prefix_labels(a.run, a.out, not a.no_prefixes)
    elif a.cmd == "ensemble":
        ensemble(a.run, a.rm_dirs)
    else:
        errors(a.run, a.rm_dir)


if __name__ == "__main__":
    main()
