"""The run report's data, gathered from a run directory's stage records and artifacts; rlhfkit.eval.report renders
it (report.html + report.md)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rlhfkit.eval.overopt import alarms, build_points
from rlhfkit.eval.ratings import ratings_table
from rlhfkit.eval.report import write_report
from rlhfkit.feedback.live import EVENTS_FILE, LABELS_FILE, LIVE_DIR, live_report
from rlhfkit.pipeline.layout import RunLayout
from rlhfkit.tracking import read_metrics


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def report_data(run_dir: str | Path) -> dict[str, Any]:
    """Everything the report shows, from a run directory's records and artifacts."""
    run = Path(run_dir)
    layout = RunLayout(run)
    recs = layout.records()
    data: dict[str, Any] = {"title": f"rlhfkit run {run.name}", "run_dir": str(run)}
    data["stages"] = [
        {
            "round": r["round"],
            "stage": r["stage"],
            "status": r["status"],
            "seconds": r.get("seconds"),
            "metrics": {k: v for k, v in (r.get("metrics") or {}).items() if _finite(v)},
        }
        for r in recs
    ]
    evals = {}
    for r in layout.rounds("eval", "eval.json"):
        e = json.loads(layout.eval_json(r).read_text())
        evals[e["round"]] = e
    data["policies"] = [
        {
            "round": e["round"],
            "name": e["policy"],
            **{k: e[k] for k in ("gold", "proxy", "kl", "length", "distinct_1", "distinct_2") if k in e},
        }
        for e in evals.values()
    ]
    data["kl_per_domain"] = [
        {"round": e["round"], "name": e["policy"], "domain": dom, "kl": kl}
        for e in evals.values()
        for dom, kl in (e.get("kl_per_domain") or {}).items()
    ]
    data["win_rates"] = [
        {"round": e["round"], "policy": e["policy"], "baseline": "baseline", **e["win_rate"]}
        for e in evals.values()
        if "win_rate" in e
    ]
    data["reward_model"] = []
    data["calibration"] = {}
    for e in evals.values():
        q = e.get("reward_model") or {}
        if q:
            rm_rec = next((r for r in recs if r["stage"] == "rm" and r["round"] == e["round"]), {})
            train_acc = ((rm_rec.get("metrics") or {}).get("eval") or {}).get("train_accuracy")
            data["reward_model"].append(
                {
                    "round": e["round"],
                    **{k: q[k] for k in ("accuracy", "auc", "ece", "pairs")},
                    "train_accuracy": train_acc,
                    "gap": train_acc - q["accuracy"] if _finite(train_acc) else None,
                }
            )
            data["calibration"][f"round {e['round']}"] = q["calibration"]
            data["reward_model_groups"] = data.get("reward_model_groups", []) + [
                {"round": e["round"], "attribute": attr, "group": group, **entry}
                for attr, groups in (q.get("groups") or {}).items()
                for group, entry in groups.items()
            ]
    data["rater_groups"], data["rater_cross"] = [], []
    for r in layout.rounds("label", "audit.json"):  # the demographic audit of each round's labels
        audit = json.loads(layout.file(r, "label", "audit.json").read_text())
        for attr, entry in audit.items():
            for g, x in entry["groups"].items():
                dist = x["distribution"]
                data["rater_groups"].append(
                    {"round": r, "attribute": attr, "group": g, "share_0": dist["0"], "share_1": dist["1"]}
                    | {"share_tie": dist["tie"], **{k: x[k] for k in ("raters", "labels", "within_agreement")}}
                )
            for pair, c in entry["cross"].items():
                data["rater_cross"].append({"round": r, "attribute": attr, "groups": pair.replace("|", " vs "), **c})
    last = max(evals) if evals else None
    if last is not None and evals[last].get("examples"):
        data["examples"] = evals[last]["examples"]
    if last is not None and evals[last].get("safety"):
        data["safety"] = {k: v for k, v in evals[last]["safety"].items() if _finite(v)}

    # training curves and the proxy-vs-gold curve from each round's optimizer log
    curves, eval_curves, overopt = {}, {}, []
    for r in layout.rounds("optimize", "metrics.jsonl"):
        rows = read_metrics(layout.optimize_metrics(r))
        curves[f"round {r}"] = [
            {"step": x["step"], **{k[6:]: v for k, v in x.items() if k.startswith("train/") and _finite(v)}}
            for x in rows
            if any(k.startswith("train/") for k in x)
        ]
        ev = [
            {"step": x["step"], **{k[5:]: v for k, v in x.items() if k.startswith("eval/") and _finite(v)}}
            for x in rows
            if "eval/kl" in x
        ]
        eval_curves[f"round {r}"] = ev
        for x in ev:
            if "gold" in x and "score" in x:
                overopt.append(
                    {
                        "round": r,
                        "step": x["step"],
                        "sqrt_kl": math.sqrt(max(x["kl"], 0.0)),
                        "kl": x["kl"],
                        "proxy": x["score"],
                        "gold": x["gold"],
                        "length": x.get("response_length"),
                    }
                )
    data["training_curves"], data["eval_curves"], data["overopt"] = curves, eval_curves, overopt
    live = {}
    for r in layout.rounds("optimize", f"{LIVE_DIR}/{LABELS_FILE}"):
        metrics = read_metrics(layout.optimize_metrics(r)) if layout.optimize_metrics(r).exists() else []
        live[f"round {r}"] = live_report(layout.live_log(r, LABELS_FILE), layout.live_log(r, EVENTS_FILE), metrics)
    if live:
        data["live"] = live
    # one curve per round (each round starts from the previous policy); a curve of fewer than 4 held-out evaluations
    # is too short to tell a trend from sampling noise, so it raises no alarm
    per_round = {r: [x for x in overopt if x["round"] == r] for r in sorted({x["round"] for x in overopt})}
    data["alarms"] = [
        f"round {r}: {a}" for r, points in per_round.items() if len(points) >= 4 for a in alarms(build_points(points))
    ]
    policy_points = [
        {
            "step": e["round"],
            "kl": e["kl"],
            "proxy": e.get("proxy", float("nan")),
            "gold": e["gold"],
            "length": e["length"],
        }
        for e in sorted(evals.values(), key=lambda e: e["round"])
        if "gold" in e
    ]
    if len(policy_points) > 1:
        data["alarms"] += [f"across rounds: {a}" for a in alarms(policy_points)]

    # Elo / Bradley-Terry across checkpoints: every pair of policies compared on each held-out prompt by gold
    responses = {}
    for r in sorted(evals):
        path = layout.eval_responses(r)
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
        if rows and all("gold" in x for x in rows):
            responses[evals[r]["policy"]] = [x["gold"] for x in rows]
    names = list(responses)
    comparisons = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            for ga, gb in zip(responses[a], responses[b]):
                comparisons.append((a, b, 1.0 if ga > gb else 0.0 if ga < gb else 0.5))
    if len(names) > 1:
        data["ratings"] = ratings_table(comparisons)
    data["summary"] = _headlines(data, evals)
    return data


def _headlines(data: dict[str, Any], evals: dict[int, dict[str, Any]]) -> list[str]:
    out = []
    if 0 in evals and len(evals) > 1:
        first, last = evals[0], evals[max(evals)]
        if "gold" in first and "gold" in last:
            out.append(
                f"Gold score {first['gold']:.3f} -> {last['gold']:.3f} after {max(evals)} round(s), "
                f"at KL {last['kl']:.2f} nats per response to the reference."
            )
        if "win_rate" in last:
            w = last["win_rate"]
            out.append(
                f"Win rate of the final policy against the baseline ({w.get('judge')}): {w['rate']:.1%} "
                f"(95% CI {w['ci_low']:.1%}-{w['ci_high']:.1%})."
            )
        out.append(f"Response length {first['length']:.1f} -> {last['length']:.1f} tokens.")
    out += [f"ALARM: {a}" for a in data.get("alarms", [])]
    return out


def write_run_report(run_dir: str | Path) -> tuple[Path, Path]:
    return write_report(report_data(run_dir), run_dir)
