"""rlhfkit's DPO against TRL 1.16.0's DPOTrainer on CPU: loss curves, step time and peak memory, side by side.

    python benchmarks/dpo_vs_trl.py --model smollm2-135m-instruct --data bench_out/data/imdb_pairs.train.jsonl \\
        --pairs 8 --batch 8 --steps 10 --out bench_out/dpo_vs_trl

Three runs, each in its own subprocess so that a run's peak memory is its own:

- ``trl``: DPOTrainer with its default reference (a frozen copy, reference forward in every step);
- ``rlhfkit-live``: ``loss.reference=live`` (a frozen copy, reference forward in every step: the same work as TRL);
- ``rlhfkit-precompute``: ``loss.reference=precompute``, rlhfkit's default (one reference pass before training, timed
  separately; no copy is kept, the policy before its first step IS the reference).

Why ``pairs == batch`` (default 8 and 8): the data set is the first ``--pairs`` rows of the file and every optimizer step
sees all of it as one batch, so the loss curves can be compared step by step whatever order each framework's sampler
draws rows in (the loss is a mean over pairs, which does not depend on order). With ``batch < pairs`` the two frameworks
shuffle differently and only the trends are comparable.

Same settings on both sides: seed, model weights in fp32, lr with linear decay and no warm-up, AdamW betas (0.9, 0.999),
eps 1e-8, weight decay 0, max_grad_norm 1.0, DPO sigmoid loss with beta 0.1, no gradient checkpointing (TRL's DPOConfig
defaults it to True: switched off), torch's default thread count. Rows are given to TRL as conversations, so both
frameworks apply the tokenizer's chat template; no row may be truncated (the script stops if one would be). TRL keeps
its own optimizer default (``--trl-optim``, "adamw_torch_fused" with torch >= 2.8); rlhfkit uses ``torch.optim.AdamW``.
Both get the same tokenizer object (rlhfkit's ``load_tokenizer``: the pad token differs from EOS).

Known tokenization difference (reported per row in the output): prompts are identical, but TRL's completion is the
rendered text after the prompt, so with a ChatML template it ends ``<|im_end|>`` + ``"\n"`` and the newline is scored,
while rlhfkit cuts the completion after the end-of-turn EOS. Each completion is one token longer in TRL; the step-1 loss
is log 2 on both sides, and the later losses differ slightly because of that token.

Step time: wall time from the end of one optimizer step to the end of the next (data, forward, backward, clipping,
optimizer, logging), the same definition on both sides; TRL's on_step_begin -> on_step_end time is recorded too.
The steady-state mean skips the first 2 steps.
Peak memory: the child's own ``getrusage(RUSAGE_SELF).ru_maxrss`` when its last step ends (rlhfkit writes a final
checkpoint after that) and at exit. ``RUSAGE_CHILDREN`` in the parent would be the maximum over all children so far.

Writes OUT/results.json, OUT/tokens.json (the token ids each framework trained on), OUT/loss_curves.png and the
children's logs, and prints a markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

RUNS = ("trl", "rlhfkit-live", "rlhfkit-precompute")
SKIP = 2  # warm-up steps left out of the steady-state mean
LOG2 = math.log(2.0)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="builtin name or local model directory")
    p.add_argument("--data", default="bench_out/data/imdb_pairs.train.jsonl", help="preference JSONL")
    p.add_argument("--pairs", type=int, default=8, help="use the first N rows of --data")
    p.add_argument("--batch", type=int, default=8, help="pairs per optimizer step (default: all of them)")
    p.add_argument("--steps", type=int, default=10, help="optimizer steps")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-length", type=int, default=512, help="token budget; no row may exceed it")
    p.add_argument("--trl-optim", default=None, help="TRL's `optim` (default: TRL's own default)")
    p.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated subset of {','.join(RUNS)}")
    p.add_argument("--out", default="bench_out/dpo_vs_trl")
    # internal: one run in this process
    p.add_argument("--child", choices=RUNS, help=argparse.SUPPRESS)
    p.add_argument("--rows", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------------------------------------
# Children


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def steady(times: list[float]) -> float:
    s = times[SKIP:] or times
    return sum(s) / len(s)


class StepClock:
    """Times the whole cycle between consecutive step ends; ``start()`` marks the beginning of step 1."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.peak_rss_gib = 0.0
        self._last: float | None = None

    def start(self) -> None:
        if self._last is None:
            self._last = time.perf_counter()

    def end(self) -> None:
        now = time.perf_counter()
        self.times.append(now - (self._last if self._last is not None else now))
        self._last = now
        self.peak_rss_gib = peak_rss_gib()  # ru_maxrss only grows: the value at the last step is the training peak


def check_fits(
    name: str, prompt: list[list[int]], chosen: list[list[int]], rejected: list[list[int]], limit: int
) -> None:
    longest = max(len(p) + max(len(c), len(r)) for p, c, r in zip(prompt, chosen, rejected))
    if longest > limit:
        raise SystemExit(f"{name}: a row has {longest} tokens > --max-length {limit}; raise --max-length")


def child_trl(args: argparse.Namespace, rows: list[dict[str, Any]], run_dir: Path) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from rlhfkit.models import load_tokenizer
    from rlhfkit.models.loading import resolve_model_path

    t0 = time.perf_counter()
    path = str(resolve_model_path(args.model))  # builtin name -> converted local dir; TRL gets a plain path
    tokenizer = load_tokenizer(path)  # the tokenizer rlhfkit uses (pad token distinct from EOS)
    conversations = [
        {
            "prompt": row["prompt"],
            "chosen": [{"role": "assistant", "content": row["chosen"]}],
            "rejected": [{"role": "assistant", "content": row["rejected"]}],
        }
        for row in rows
    ]
    extra = {"optim": args.trl_optim} if args.trl_optim else {}
    cfg = DPOConfig(
        output_dir=str(run_dir),
        per_device_train_batch_size=args.batch,
        gradient_accumulation_steps=1,
        max_steps=args.steps,
        learning_rate=args.lr,
        lr_scheduler_type="linear",
        warmup_steps=0,
        weight_decay=0.0,
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_epsilon=1e-8,
        max_grad_norm=1.0,
        beta=args.beta,
        loss_type=["sigmoid"],
        label_smoothing=0.0,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        seed=args.seed,
        max_length=args.max_length,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
        model_init_kwargs={"dtype": "float32"},
        **extra,
    )

    clock = StepClock()
    compute: list[float] = []
    logged: dict[int, dict[str, float]] = {}

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            clock.start()
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            compute.append(time.perf_counter() - self.t)
            clock.end()

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:  # Trainer.log: loss averaged over logging_steps=1, i.e. this step's
                logged[state.global_step] = {k: float(v) for k, v in logs.items() if isinstance(v, (int, float))}

    trainer = DPOTrainer(
        model=path,
        args=cfg,
        train_dataset=Dataset.from_list(conversations),
        processing_class=tokenizer,
        callbacks=[Timer()],
    )
    ds = trainer.train_dataset
    tokens = {k: [list(map(int, x)) for x in ds[f"{k}_ids"]] for k in ("prompt", "chosen", "rejected")}
    if len(ds) != len(rows):
        raise SystemExit(f"trl: {len(rows) - len(ds)} rows were dropped while tokenizing; raise --max-length")
    check_fits("trl", tokens["prompt"], tokens["chosen"], tokens["rejected"], args.max_length)
    setup_s = time.perf_counter() - t0
    trainer.train()
    steps = sorted(logged)
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # unwrap accelerate's wrapper
    return {
        "losses": [logged[s]["loss"] for s in steps],
        "grad_norms": [logged[s].get("grad_norm", float("nan")) for s in steps],
        "lrs": [logged[s].get("learning_rate", float("nan")) for s in steps],  # the lr this step used
        "logps_chosen": [logged[s].get("logps/chosen", float("nan")) for s in steps],
        "logps_rejected": [logged[s].get("logps/rejected", float("nan")) for s in steps],
        "step_times": clock.times,
        "compute_times": compute,  # on_step_begin -> on_step_end (no data loading, no logging)
        "peak_rss_gib_train": clock.peak_rss_gib,
        "setup_s": setup_s,
        "precompute_s": 0.0,
        "optimizer": f"{type(optimizer).__name__} (optim={getattr(cfg.optim, 'value', cfg.optim)}, "
        f"fused={optimizer.defaults.get('fused')})",
        "tokens": tokens,
        "torch_threads": torch.get_num_threads(),
    }


def child_rlhfkit(args: argparse.Namespace, rows_file: Path, run_dir: Path, reference: str) -> dict[str, Any]:
    import copy

    import torch

    from rlhfkit.config import DPOConfig, load_config, to_dict
    from rlhfkit.data import ChatFormatter, encode_pairs, load_train_eval
    from rlhfkit.models import Reference
    from rlhfkit.trainers.common import load_for_training
    from rlhfkit.trainers.dpo import DPOObjective, DPORow, precompute_reference
    from rlhfkit.trainers.loop import run_loop

    cfg = load_config(
        DPOConfig,
        overrides=[
            f"model.name_or_path={args.model}",
            "model.dtype=float32",
            "model.gradient_checkpointing=false",
            f"data.train={rows_file}",
            "data.eval_fraction=0",
            "data.curation.dedupe=false",  # keep every row, as TRL does
            f"data.max_length={args.max_length}",
            f"data.max_prompt_length={args.max_length - 1}",  # only the total budget matters here
            f"train.output_dir={run_dir}",
            f"train.seed={args.seed}",
            f"train.batch_size={args.batch}",
            f"train.max_steps={args.steps}",
            f"train.lr={args.lr}",
            "train.scheduler=linear",
            "train.warmup_ratio=0",
            "train.weight_decay=0",
            "train.adam_betas=[0.9,0.999]",
            "train.max_grad_norm=1.0",
            "train.progress=false",
            "loss.name=dpo",
            f"loss.beta={args.beta}",
            "loss.label_smoothing=0",
            f"loss.reference={reference}",
            "eval_kl_samples=0",
        ],
    )
    # The same steps as rlhfkit.trainers.dpo.train_dpo, with a clock on every optimizer step.
    t0 = time.perf_counter()
    model, tokenizer = load_for_training(cfg.model, "causal")
    ref_model = copy.deepcopy(model).requires_grad_(False).eval() if reference == "live" else model
    ref = Reference(model, ref_model)
    train_ex, _, _ = load_train_eval(cfg.data, "preference", cfg.train.seed)
    fmt = ChatFormatter(tokenizer, cfg.data.max_length, cfg.data.max_prompt_length, cfg.data.truncation)
    pairs = encode_pairs(train_ex, fmt)
    if len(pairs) != args.pairs or fmt.report.truncated or fmt.report.dropped:
        raise SystemExit(f"rlhfkit: {len(pairs)} of {args.pairs} rows encoded ({fmt.report}); raise --max-length")
    tokens = {
        "prompt": [p.prompt_ids for p in pairs],
        "chosen": [p.chosen_ids for p in pairs],
        "rejected": [p.rejected_ids for p in pairs],
    }
    check_fits("rlhfkit", tokens["prompt"], tokens["chosen"], tokens["rejected"], args.max_length)
    pad = tokenizer.pad_token_id
    setup_s = time.perf_counter() - t0
    precompute_s = 0.0
    if reference == "precompute":
        t1 = time.perf_counter()
        train_rows = precompute_reference(pairs, ref, pad)
        precompute_s = time.perf_counter() - t1
    else:
        train_rows = [DPORow(p) for p in pairs]
    objective = DPOObjective(pad, cfg.loss, ref)
    clock = StepClock()
    collate = objective.collate

    def timed_collate(rows: Any) -> dict[str, torch.Tensor]:
        clock.start()  # the first collate is the start of step 1
        return collate(rows)

    objective.collate = timed_collate  # type: ignore[method-assign]
    run_loop(
        model, objective, train_rows, [], cfg.train, run_dir, run_config=to_dict(cfg), on_step=lambda s, m: clock.end()
    )
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    metrics = [m for m in metrics if "train/loss" in m]
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # the final checkpoint is not part of the benchmark
    return {
        "losses": [m["train/loss"] for m in metrics],
        "grad_norms": [m["train/grad_norm"] for m in metrics],
        # rlhfkit logs the lr after this step's scheduler step; with no warm-up step 1 used the peak lr
        "lrs": [args.lr] + [m["train/lr"] for m in metrics][:-1],
        "logps_chosen": [m["train/logps/chosen"] for m in metrics],
        "logps_rejected": [m["train/logps/rejected"] for m in metrics],
        "step_times": clock.times,
        "peak_rss_gib_train": clock.peak_rss_gib,
        "setup_s": setup_s,
        "precompute_s": precompute_s,
        "optimizer": "AdamW (torch.optim.AdamW, defaults)",
        "tokens": tokens,
        "torch_threads": torch.get_num_threads(),
    }


def run_child(args: argparse.Namespace) -> None:
    rows_file = Path(args.rows)
    rows = [json.loads(line) for line in rows_file.read_text().splitlines() if line.strip()]
    run_dir = Path(args.result).parent / args.child
    shutil.rmtree(run_dir, ignore_errors=True)  # metrics.jsonl is appended to: start clean
    if args.child == "trl":
        out = child_trl(args, rows, run_dir)
    else:
        out = child_rlhfkit(args, rows_file, run_dir, args.child.split("-", 1)[1])
    out["peak_rss_gib_exit"] = peak_rss_gib()
    Path(args.result).write_text(json.dumps(out))


# ----------------------------------------------------------------------------------------------------------------------
# Parent


def prepare_rows(data: str, n: int, path: Path) -> list[dict[str, Any]]:
    """The first n rows of `data`, parsed by rlhfkit's loader (hh-rlhf dialogue, ranking, ... -> prompt/chosen/rejected)."""
    from rlhfkit.data import load_examples

    raw: list[dict[str, Any]] = []
    with open(data) as f:
        for line in f:
            if line.strip():
                raw.append(json.loads(line))
            if len(raw) == n:
                break
    examples = load_examples(raw, "preference")[:n]
    if len(examples) < n:
        raise SystemExit(f"{data}: only {len(examples)} preference pairs, asked for --pairs {n}")
    rows = [{"prompt": [dict(m) for m in ex.prompt], "chosen": ex.chosen, "rejected": ex.rejected} for ex in examples]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def describe_diff(a: list[int], b: list[int]) -> tuple[str, list[int], list[int]]:
    """Where two token lists differ: ("same" | "end" | "start" | "middle", a's differing ids, b's differing ids)."""
    if a == b:
        return "same", [], []
    p = 0
    while p < min(len(a), len(b)) and a[p] == b[p]:
        p += 1
    s = 0
    while s < min(len(a), len(b)) - p and a[len(a) - 1 - s] == b[len(b) - 1 - s]:
        s += 1
    where = "end" if s == 0 else "start" if p == 0 else "middle"
    return where, a[p : len(a) - s], b[p : len(b) - s]


def compare_tokens(ours: dict[str, list[list[int]]], trl: dict[str, list[list[int]]], decode: Any) -> dict[str, Any]:
    """Per part (prompt/chosen/rejected): rows identical, and each kind of difference with how many rows show it."""
    out: dict[str, Any] = {}
    for part in ("prompt", "chosen", "rejected"):
        kinds: Counter[str] = Counter()
        for a, b in zip(ours[part], trl[part]):
            where, da, db = describe_diff(a, b)
            if where == "end" and not da:
                kinds[f"TRL appends {db} {decode(db)!r} after rlhfkit's last token"] += 1
            elif where == "end" and not db:
                kinds[f"rlhfkit appends {da} {decode(da)!r} after TRL's last token"] += 1
            elif where != "same":
                kinds[f"at the {where}: rlhfkit {da} {decode(da)!r} vs TRL {db} {decode(db)!r}"] += 1
        out[part] = {
            "identical_rows": sum(a == b for a, b in zip(ours[part], trl[part])),
            "rows": len(ours[part]),
            "rlhfkit_tokens": [len(x) for x in ours[part]],
            "trl_tokens": [len(x) for x in trl[part]],
            "differences": dict(kinds),
        }
    return out


def machine() -> str:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu or platform.machine()}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}"


def versions() -> dict[str, str]:
    import importlib.metadata as md

    return {name: md.version(name) for name in ("torch", "transformers", "trl", "accelerate", "rlhfkit")}


def plot(results: dict[str, dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4))
    styles = {"trl": ("o-", "C0"), "rlhfkit-live": ("s--", "C1"), "rlhfkit-precompute": ("^:", "C2")}
    for name, r in results.items():
        fmt, color = styles[name]
        steps = range(1, len(r["losses"]) + 1)
        ax1.plot(steps, r["losses"], fmt, color=color, label=name)
        ax2.plot(range(1, len(r["step_times"]) + 1), r["step_times"], fmt, color=color, label=name)
        if "trl" in results and name != "trl":  # the curves overlap at this scale: show the gap itself
            gap = [x - y for x, y in zip(r["losses"], results["trl"]["losses"])]
            ax3.plot(range(1, len(gap) + 1), gap, fmt, color=color, label=f"{name} - trl")
    ax1.axhline(LOG2, color="grey", lw=0.8, ls="--", label="log 2")
    ax1.set(xlabel="optimizer step", ylabel="DPO loss (mean over pairs)", title="loss")
    ax2.set(xlabel="optimizer step", ylabel="seconds", title="step time (full cycle)")
    ax3.set(xlabel="optimizer step", ylabel="loss difference", title="loss minus TRL's loss")
    for ax in (ax1, ax2, ax3):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        run_child(args)
        return
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    if unknown := set(runs) - set(RUNS):
        raise SystemExit(f"--runs: unknown {sorted(unknown)}; choose from {', '.join(RUNS)}")
    if args.batch > args.pairs:
        raise SystemExit(f"--batch {args.batch} > --pairs {args.pairs}: every step needs a full batch")
    if args.batch != args.pairs:
        print(f"note: batch {args.batch} != pairs {args.pairs}: the frameworks draw batches in different orders")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows_file = out / "pairs.jsonl"
    prepare_rows(args.data, args.pairs, rows_file)

    passthrough = [
        f"--model={args.model}",
        f"--pairs={args.pairs}",
        f"--batch={args.batch}",
        f"--steps={args.steps}",
        f"--lr={args.lr}",
        f"--beta={args.beta}",
        f"--seed={args.seed}",
        f"--max-length={args.max_length}",
    ] + ([f"--trl-optim={args.trl_optim}"] if args.trl_optim else [])
    results: dict[str, dict[str, Any]] = {}
    for name in runs:
        result_file, log_file = out / f"{name}.json", out / f"{name}.log"
        result_file.unlink(missing_ok=True)
        cmd = [
            sys.executable,
            __file__,
            *passthrough,
            f"--child={name}",
            f"--rows={rows_file}",
            f"--result={result_file}",
        ]
        print(f"[{name}] running ... (log: {log_file})", flush=True)
        t0 = time.perf_counter()
        with open(log_file, "w") as log:
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
        if proc.returncode != 0 or not result_file.exists():
            tail = "\n".join(log_file.read_text().splitlines()[-30:])
            raise SystemExit(f"[{name}] failed (exit {proc.returncode}); last lines of {log_file}:\n{tail}")
        r = json.loads(result_file.read_text())
        r["wall_s"] = time.perf_counter() - t0
        r["steady_step_s"] = steady(r["step_times"])
        if "compute_times" in r:
            r["steady_compute_s"] = steady(r["compute_times"])
        results[name] = r
        print(
            f"[{name}] {len(r['losses'])} steps, steady step {r['steady_step_s']:.3f} s, "
            f"peak RSS {r['peak_rss_gib_train']:.2f} GiB, loss {r['losses'][0]:.4f} -> {r['losses'][-1]:.4f}",
            flush=True,
        )

    report = summarize(args, results)
    tokens = {name: r.pop("tokens") for name, r in results.items()}
    report["tokenization"] = tokenization_report(args.model, tokens)
    (out / "tokens.json").write_text(json.dumps(tokens))
    (out / "results.json").write_text(json.dumps(report | {"runs": results}, indent=2))
    plot(results, out / "loss_curves.png", report["setting"])
    print(markdown(report, results))
    print_tokenization(report)
    print(f"\nwrote {out / 'results.json'}, {out / 'tokens.json'} and {out / 'loss_curves.png'}")


def summarize(args: argparse.Namespace, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    report: dict[str, Any] = {
        "machine": machine(),
        "versions": versions(),
        "setting": (
            f"{args.model}: {args.pairs} pairs, batch {args.batch}, {args.steps} steps, lr {args.lr:g} linear, "
            f"beta {args.beta:g}, seed {args.seed}, fp32, max_length {args.max_length}"
        ),
        "args": {k: v for k, v in vars(args).items() if k not in ("child", "rows", "result")},
        "first_step_loss_is_log2": {n: abs(r["losses"][0] - LOG2) < 1e-4 for n, r in results.items()},
        "first_step_loss": {n: r["losses"][0] for n, r in results.items()},
        # mean summed log-prob of the chosen / rejected completions under the policy at step 1: a gap between the
        # frameworks here is a difference in the tokens scored, not in the optimization
        "first_step_logps": {n: [r["logps_chosen"][0], r["logps_rejected"][0]] for n, r in results.items()},
    }
    if "trl" in results:
        trl = results["trl"]
        report["ratios_vs_trl"] = {
            n: {
                "steady_step_time": r["steady_step_s"] / trl["steady_step_s"],
                "peak_rss": r["peak_rss_gib_train"] / trl["peak_rss_gib_train"],
            }
            for n, r in results.items()
            if n != "trl"
        }
    names = list(results)
    report["max_abs_loss_diff"] = {
        f"{a} vs {b}": max(abs(x - y) for x, y in zip(results[a]["losses"], results[b]["losses"]))
        for i, a in enumerate(names)
        for b in names[i + 1 :]
    }
    return report


def tokenization_report(model: str, tokens: dict[str, dict[str, list[list[int]]]]) -> dict[str, Any]:
    from rlhfkit.models import load_tokenizer

    tok = load_tokenizer(model)
    out: dict[str, Any] = {}
    ours = [n for n in tokens if n.startswith("rlhfkit")]
    if len(ours) == 2:
        out["rlhfkit_live_equals_precompute"] = tokens[ours[0]] == tokens[ours[1]]
    if ours and "trl" in tokens:
        out["rlhfkit_vs_trl"] = compare_tokens(tokens[ours[0]], tokens["trl"], tok.decode)
    out["eos"] = {"token": tok.eos_token, "id": tok.eos_token_id}
    out["pad"] = {"token": tok.pad_token, "id": tok.pad_token_id}
    return out


def markdown(report: dict[str, Any], results: dict[str, dict[str, Any]]) -> str:
    v = report["versions"]
    lines = [
        f"**DPO, rlhfkit vs TRL {v['trl']}** — {report['setting']}  ",
        f"Machine: {report['machine']}; torch {v['torch']}, transformers {v['transformers']}, "
        f"accelerate {v['accelerate']}, rlhfkit {v['rlhfkit']}; torch threads "
        f"{next(iter(results.values()))['torch_threads']}.",
        "",
        "| run | reference | steady step (s) | vs TRL | peak RSS (GiB) | vs TRL | one-off reference pass (s) "
        "| loss step 1 | loss last step |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    ref_kind = {"trl": "frozen copy, forward each step", "rlhfkit-live": "frozen copy, forward each step"}
    ratios = report.get("ratios_vs_trl", {})

    def ratio(name: str, key: str) -> str:
        if name == "trl":
            return "1.00x"
        return f"{ratios[name][key]:.2f}x" if name in ratios else "-"

    for name, r in results.items():
        pre = f"{r['precompute_s']:.2f}" if name == "rlhfkit-precompute" else "-"
        lines.append(
            f"| {name} | {ref_kind.get(name, 'precomputed once, no copy')} | {r['steady_step_s']:.3f} | "
            f"{ratio(name, 'steady_step_time')} | {r['peak_rss_gib_train']:.2f} | {ratio(name, 'peak_rss')} | {pre} | "
            f"{r['losses'][0]:.4f} | {r['losses'][-1]:.4f} |"
        )
    lines.append("")
    lines.append(
        f"Steady step = mean over steps {SKIP + 1}.. of the full step cycle. "
        "Max |loss difference| over steps: "
        + "; ".join(f"{k}: {d:.2e}" for k, d in report["max_abs_loss_diff"].items())
        + ". First-step loss = log 2 (policy == reference): "
        + ", ".join(f"{n} {'yes' if ok else 'NO'}" for n, ok in report["first_step_loss_is_log2"].items())
        + "."
    )
    return "\n".join(lines)


def print_tokenization(report: dict[str, Any]) -> None:
    tok = report["tokenization"]
    print(f"\nTokenization (EOS {tok['eos']}, pad {tok['pad']}); token counts per row:")
    if "rlhfkit_live_equals_precompute" in tok:
        print(f"  rlhfkit live and precompute runs trained on the same ids: {tok['rlhfkit_live_equals_precompute']}")
    for part, d in tok.get("rlhfkit_vs_trl", {}).items():
        print(f"  {part}: identical in {d['identical_rows']}/{d['rows']} rows")
        print(f"    rlhfkit tokens: {d['rlhfkit_tokens']}")
        print(f"    TRL tokens:     {d['trl_tokens']}")
        for what, n in d["differences"].items():
            print(f"    {n} rows differ: {what}")
    print("Step-1 mean summed log-probs of chosen / rejected under the policy (a gap = different tokens scored):")
    for name, (c, r) in report["first_step_logps"].items():
        print(f"  {name}: {c:.4f} / {r:.4f}")


if __name__ == "__main__":
    main()
