"""The device benchmark job: TRL (the peer, `../shared/bench/peer_trl.py`) and rlhfkit on identical shapes, one job,
one table.

    python3 benchmarks/gpu_job.py [--out bench_out] [--budget 560] [--peer PATH] [--only dpo,sft,rm,grpo,ppo]
    python3 benchmarks/gpu_job.py --dry-run                 # print the plan (commands, time limits) and exit
    python3 benchmarks/gpu_job.py --table bench_out/lines.jsonl   # rebuild the table from saved lines

Shapes are the peer script's (random-init Llama, hidden 1024, 24 layers, vocab 32000, 374M parameters, bf16):
DPO and reward model 8 pairs of prompt 128 + completion 384 tokens; SFT 16 x 512; GRPO 8 prompts x 8 samples of exactly
256 new tokens. rlhfkit runs `benchmarks/train_step.py` (DPO, SFT, RM; fused head on, and the DPO / SFT plain-head
variants last if time is left) and `benchmarks/rl_step.py` (GRPO, and PPO with a value head on the same 64 sequences;
TRL has no PPO trainer, so PPO is set against TRL's GRPO). Peer and rlhfkit alternate benchmark by benchmark, each in
its own process with a time limit, so that a partial job still gives ratios; the whole job stops starting new runs
when `--budget` seconds are spent. Writes OUT/lines.jsonl (every JSON line, with its role), OUT/table.md and
OUT/<run>.log (each run's stdout + stderr).

The peer needs trl==1.16.0 and datasets on the device; the peer script is looked up at --peer, $PEER, .peer/peer_trl.py
(carry it there: it is not part of the project) and ../shared/bench/peer_trl.py.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEER_PLACES = (".peer/peer_trl.py", "../shared/bench/peer_trl.py", "shared/bench/peer_trl.py")


@dataclass(frozen=True)
class Run:
    bench: str  # the row of the table: dpo, sft, rm, grpo, ppo
    role: str  # peer, rlhfkit, rlhfkit-plain
    args: tuple[str, ...]  # after the interpreter; "{peer}" is replaced by the peer script's path
    limit_s: int  # the run's own time limit


PLAN = (
    Run("dpo", "peer", ("{peer}", "dpo"), 120),
    Run("dpo", "rlhfkit", ("benchmarks/train_step.py", "dpo"), 90),
    Run("sft", "peer", ("{peer}", "sft"), 110),
    Run("sft", "rlhfkit", ("benchmarks/train_step.py", "sft"), 80),
    Run("rm", "peer", ("{peer}", "rm"), 110),
    Run("rm", "rlhfkit", ("benchmarks/train_step.py", "rm"), 80),
    Run("grpo", "peer", ("{peer}", "grpo"), 150),
    Run("grpo", "rlhfkit", ("benchmarks/rl_step.py", "grpo", "--backend", "hf-static", "--steps", "6"), 140),
    Run("ppo", "rlhfkit", ("benchmarks/rl_step.py", "ppo", "--backend", "hf-static", "--steps", "6"), 140),
    Run("dpo", "rlhfkit-plain", ("benchmarks/train_step.py", "dpo-plain"), 90),
    Run("sft", "rlhfkit-plain", ("benchmarks/train_step.py", "sft-plain"), 80),
)
MIN_START_S = 45  # do not start a run with less than this left of the budget

TITLES = {
    "dpo": "DPO, 8 pairs x 512 (reference precomputed)",
    "sft": "SFT, 16 x 512",
    "rm": "reward model, 8 pairs x 512",
    "grpo": "GRPO, 64 x 256 new tokens",
    "ppo": "PPO (value head, GAE) vs TRL GRPO, 64 x 256 new tokens",
}


def find_peer(given: str | None) -> Path | None:
    for c in [given, os.environ.get("PEER"), *PEER_PLACES]:
        if c and (ROOT / c).is_file():
            return (ROOT / c).resolve()
    return None


def last_json(text: str) -> dict | None:
    """The last stdout line that is a JSON object with a "bench" key."""
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict) and "bench" in obj:
                return obj
    return None


def throughput(rec: dict) -> tuple[float | None, str]:
    """(value, unit) comparable between the peer and rlhfkit for the same benchmark."""
    if "gen_tokens_per_s" in rec:
        return rec["gen_tokens_per_s"], "generated tokens/s"
    if "tokens_per_s" in rec:
        return rec["tokens_per_s"], "tokens/s"
    if "pairs_per_s" in rec:  # reward model: 2 sequences of `seq` tokens per pair
        return rec["pairs_per_s"] * 2 * rec.get("seq", 512), "tokens/s"
    return None, ""


def _fmt(x: float | None, digits: int = 3) -> str:
    return "—" if x is None else f"{x:,.{digits}g}" if abs(x) < 1000 else f"{x:,.0f}"


def table(lines: list[dict]) -> str:
    """One markdown table: per benchmark, the peer and rlhfkit's step time, throughput, peak memory and the ratios."""
    by = {(r["bench_row"], r["role"]): r for r in lines if "error" not in r}
    errors = [r for r in lines if "error" in r]
    peer_of = {"ppo": "grpo"}  # TRL has no PPO trainer: its GRPO step (same 64 x 256 shape) is the reference
    head = (
        "| benchmark | run | step time | throughput | peak memory | step-time ratio (rlhfkit / TRL) | throughput ratio"
        " | memory ratio | goal (>= 1.5x throughput, <= 0.6x memory) |\n|---|---|---|---|---|---|---|---|---|"
    )
    out = [head]
    for bench in TITLES:
        peer = by.get((peer_of.get(bench, bench), "peer"))
        for role in ("peer", "rlhfkit", "rlhfkit-plain"):
            rec = by.get((bench, role))
            if rec is None or (role == "peer" and bench in peer_of):
                continue
            tput, unit = throughput(rec)
            row = [TITLES[bench], "TRL 1.16.0" if role == "peer" else role.replace("-plain", " (plain head)")]
            row += [f"{rec['step_s']:.4g} s", f"{_fmt(tput)} {unit}", f"{_fmt(rec.get('peak_gib'))} GiB"]
            if role == "peer" or peer is None:
                row += ["1" if role == "peer" else "—", "1" if role == "peer" else "—", "1" if role == "peer" else "—"]
                row += [""]
            else:
                step_ratio = rec["step_s"] / peer["step_s"]
                p_tput, _ = throughput(peer)
                t_ratio = tput / p_tput if tput and p_tput else None
                m_ratio = rec["peak_gib"] / peer["peak_gib"] if rec.get("peak_gib") and peer.get("peak_gib") else None
                goal = (
                    ""
                    if bench in ("grpo", "ppo")
                    else "yes"
                    if (t_ratio or 0) >= 1.5 and (m_ratio or 9) <= 0.6
                    else "no"
                )
                row += [f"{step_ratio:.2f}x", f"{_fmt(t_ratio)}x", f"{_fmt(m_ratio)}x", goal]
            out.append("| " + " | ".join(row) + " |")
    if errors:
        out += [
            "",
            "Runs without a result: " + "; ".join(f"{r['bench_row']} {r['role']}: {r['error']}" for r in errors),
        ]
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "bench_out")
    ap.add_argument("--budget", type=float, default=560.0, help="seconds after which no new run starts")
    ap.add_argument("--peer", default=None)
    ap.add_argument("--only", default="", help="comma-separated benchmarks (default: all)")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--table", type=Path, help="rebuild the table from a lines.jsonl and exit")
    args = ap.parse_args()
    if args.table:
        print(table([json.loads(x) for x in args.table.read_text().splitlines() if x.strip()]), end="")
        return
    only = set(filter(None, args.only.split(",")))
    plan = [r for r in PLAN if not only or r.bench in only]
    peer = find_peer(args.peer)
    if peer is None:
        print(f"peer script not found (--peer, $PEER, {', '.join(PEER_PLACES)}): the peer runs are skipped", flush=True)
    if args.dry_run:
        for r in plan:
            argv = [args.python, *(str(peer) if a == "{peer}" else a for a in r.args)]
            print(f"{r.bench:5} {r.role:14} limit {r.limit_s:4d}s  {' '.join(argv)}")
        print(f"sum of limits {sum(r.limit_s for r in plan)} s, budget {args.budget:.0f} s")
        return
    args.out.mkdir(parents=True, exist_ok=True)
    lines_path = args.out / "lines.jsonl"
    lines_path.write_text("")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    t0, lines = time.perf_counter(), []
    for r in plan:
        left = args.budget - (time.perf_counter() - t0)
        rec: dict
        if r.role == "peer" and peer is None:
            rec = {"error": "peer script not found"}
        elif left < MIN_START_S:
            rec = {"error": f"not started: {left:.0f} s of the budget left"}
        else:
            argv = [args.python, *(str(peer) if a == "{peer}" else a for a in r.args)]
            log = args.out / f"{r.bench}_{r.role}.log"
            started = time.perf_counter()
            try:
                p = subprocess.run(
                    argv, cwd=ROOT, capture_output=True, text=True, timeout=min(r.limit_s, left), env=env
                )
                log.write_text(p.stdout + "\n--- stderr ---\n" + p.stderr)
                found = last_json(p.stdout)
                rec = found if found is not None else {"error": f"exit {p.returncode}, no result line (see {log.name})"}
            except subprocess.TimeoutExpired as e:
                out = e.stdout.decode() if isinstance(e.stdout, bytes) else e.stdout or ""
                log.write_text(out)
                rec = {"error": f"time limit {min(r.limit_s, left):.0f} s"}
            rec["wall_s"] = round(time.perf_counter() - started, 1)
        rec |= {"bench_row": r.bench, "role": r.role}
        lines.append(rec)
        with lines_path.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        print(json.dumps(rec), flush=True)
    md = table(lines)
    (args.out / "table.md").write_text(md)
    print(md, end="")
    print(f"total {time.perf_counter() - t0:.0f} s; lines in {lines_path}")


if __name__ == "__main__":
    main()
