"""Who labels a round's pairs: simulated raters (gold + noise), an AI judge (optionally routing to humans), or people
through the annotation app. Each labeller: (pipeline config, run layout, round, stage dir, prompts, responses a, responses b, seed) ->
(preference rows, info)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rlhfkit.config import to_dict
from rlhfkit.feedback.agreement import group_report
from rlhfkit.feedback.judge import Judge, judge_agreement, position_bias, route_to_humans
from rlhfkit.feedback.simulated import RaterSpec, simulate_preferences
from rlhfkit.feedback.store import Store
from rlhfkit.pipeline.config import PipelineConfig
from rlhfkit.pipeline.evaluate import scorer
from rlhfkit.pipeline.layout import RunLayout

# label sources: (pipeline config, run layout, round, stage dir, prompts, responses a, responses b, seed) -> (preference rows, info)


def _label_simulated(
    cfg: PipelineConfig, layout: RunLayout, r: int, d: Path, prompts: list, a: list, b: list, seed: int
):
    raters = [RaterSpec(**to_dict(x)) for x in cfg.label.raters]
    rows = simulate_preferences(prompts, a, b, scorer(cfg.label.gold), raters, seed=seed)
    return rows, {"raters": len(raters)}


def _human_labels(
    cfg: PipelineConfig, layout: RunLayout, r: int, d: Path, prompts: list, a: list, b: list
) -> list[dict[str, Any]]:
    """Create this round's campaign in the annotation app, wait until it is labelled, return adjudicated rows."""
    c = cfg.label
    store = Store(c.db or f"sqlite:///{layout.annotations_db}")
    name = f"{layout.dir.name}-round-{r}"
    if name not in {x["name"] for x in store.campaigns()}:
        items = [{"prompt": p, "responses": [x, y]} for p, x, y in zip(prompts, a, b)]
        store.create_campaign(name, items, kind="pairwise", raters_per_item=c.raters_per_item)
        print(f"campaign {name!r}: {len(items)} pairs waiting for raters (rlhfkit annotate serve --db {store.url})")
    t0 = time.monotonic()
    while True:
        prog = store.progress(name)
        if prog["labelled_items"] >= prog["total_items"]:
            break
        if c.wait_seconds and time.monotonic() - t0 > c.wait_seconds:
            raise TimeoutError(
                f"campaign {name!r}: {prog['labelled_items']}/{prog['total_items']} pairs labelled after "
                f"{c.wait_seconds:.0f} s; run again with --resume to keep waiting"
            )
        time.sleep(c.poll_seconds)
    return store.export(name, adjudication="majority")


def _label_human(cfg: PipelineConfig, layout: RunLayout, r: int, d: Path, prompts: list, a: list, b: list, seed: int):
    rows = _human_labels(cfg, layout, r, d, prompts, a, b)
    return rows, {"human_pairs": len(rows)}


def _label_judge(cfg: PipelineConfig, layout: RunLayout, r: int, d: Path, prompts: list, a: list, b: list, seed: int):
    c = cfg.label
    judge = Judge(c.judge, **({"rubric": c.rubric} if c.rubric else {}))
    verdicts = judge.compare(prompts, a, b)
    rows = judge.label_pairs(prompts, a, b, verdicts=verdicts)
    info: dict[str, Any] = {"judge": c.judge, **{f"position_{k}": v for k, v in position_bias(verdicts).items()}}
    if c.human_share > 0 or c.audit_share > 0:
        idx = route_to_humans(verdicts, c.human_share, c.audit_share, seed)
        human = _human_labels(cfg, layout, r, d, [prompts[i] for i in idx], [a[i] for i in idx], [b[i] for i in idx])
        agreement = judge_agreement([rows[i] for i in idx], human)
        info |= {"human_pairs": len(human), **{f"judge_human_{k}": v for k, v in agreement.items()}}
        keep = set(idx)
        rows = [row for i, row in enumerate(rows) if i not in keep] + human  # humans overrule the judge
    return rows, info


def label_audit(
    rows: list[dict[str, Any]], prompts: list, a: list[str], b: list[str], attributes: dict[str, dict[str, str]]
) -> dict[str, Any]:
    """agreement.group_report over a round's labels: each row is matched back to its pair (item i = (prompt, a_i,
    b_i)), its choice "0" when a_i was chosen, "1" when b_i was, "tie"."""
    index = {(json.dumps(p, sort_keys=True), x, y): i for i, (p, x, y) in enumerate(zip(prompts, a, b))}
    labels = []
    for row in rows:
        key = json.dumps(row["prompt"], sort_keys=True)
        i = index.get((key, row["chosen"], row["rejected"]))
        choice = "0"
        if i is None:
            i, choice = index.get((key, row["rejected"], row["chosen"])), "1"
        if i is None or "rater" not in row:
            continue
        labels.append({"item": i, "rater": row["rater"], "choice": "tie" if row.get("tie") else choice})
    return group_report(labels, attributes)


LABELLERS: dict[str, Callable[..., tuple[list[dict[str, Any]], dict[str, Any]]]] = {
    "simulated": _label_simulated,
    "judge": _label_judge,
    "human": _label_human,
}
