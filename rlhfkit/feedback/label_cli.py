"""`rlhfkit label` (AI judge preference labels) and `rlhfkit constitution` (critique-and-revise data).

    rlhfkit label --judge MODEL --pairs FILE -o prefs.jsonl [--rubric TEXT | --rubric-file F]
                  [--dimensions helpful,harmless] [--human FILE] [--batch-size 8] [--tie-margin 0.05]

The pairs file holds {"prompt", "chosen", "rejected"} rows (judged as a = chosen, b = rejected; the judge's agreement
with that order is reported as if it were a human label, ties included) and/or {"prompt", "responses": [...]} rows
from `rlhfkit sample` (distinct responses paired as a chain r1-r2, r2-r3, ..., like the pipeline does).
--human FILE: preference rows labelled by people; agreement is computed on the pairs both files share.

    rlhfkit constitution --model M --prompts FILE [--constitution FILE] -o DIR [--rounds 1] [--judge MODEL]

writes DIR/sft.jsonl ({"prompt", "response": revision}), DIR/prefs.jsonl (revision over original,
"rater": "constitution"), DIR/trace.jsonl (response, principles, critiques, revisions per prompt) and
DIR/summary.json; with --judge also DIR/rlaif.jsonl, the judge's labels of revision vs original under the
constitution's rubric (RLAIF), and the share of pairs where it prefers the revision.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

from rlhfkit.config import ConfigError
from rlhfkit.data.io import load_examples, read_rows, write_jsonl
from rlhfkit.data.schemas import DataError, location, parse_preference
from rlhfkit.feedback.simulated import pairs_from_samples


def _fmt(x: Any) -> str:
    return f"{x:.3f}" if isinstance(x, float) else str(x)


def _clean(d: dict[str, Any]) -> dict[str, Any]:
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in d.items()}  # strict JSON


def read_pairs(path: str) -> tuple[list[Any], list[str], list[str], list[str | None]]:
    """(prompts, a, b, given) from a pairs file; given[i] is "A"/"tie" for chosen/rejected rows, None for samples."""
    prompts: list[Any] = []
    a: list[str] = []
    b: list[str] = []
    given: list[str | None] = []
    sample_rows = []
    for n, row in read_rows(path):
        where = location(path, n)
        if isinstance(row, dict) and row.get("responses") is not None and row.get("ranks") is None:
            sample_rows.append(row)
            continue
        for ex in parse_preference(row, where):
            prompts.append(list(ex.prompt))
            a.append(ex.chosen)
            b.append(ex.rejected)
            given.append("tie" if ex.tie else "A")
    if sample_rows:
        try:
            p, x, y = pairs_from_samples(sample_rows, "chain")
        except DataError as e:
            raise DataError(path, str(e)) from None
        prompts += list(p)
        a += x
        b += y
        given += [None] * len(x)
    if not a:
        raise ValueError(f"{path}: no pairs (expected chosen/rejected rows or responses rows with 2+ distinct texts)")
    return prompts, a, b, given


def _rubric(args: argparse.Namespace) -> dict[str, Any]:
    if args.rubric and args.rubric_file:
        raise ConfigError("give --rubric or --rubric-file, not both")
    kwargs: dict[str, Any] = {}
    if args.rubric_file:
        text = Path(args.rubric_file).read_text(encoding="utf-8").strip()
        if not text:
            raise ConfigError(f"--rubric-file {args.rubric_file} is empty")
        kwargs["rubric"] = text
    elif args.rubric:
        kwargs["rubric"] = args.rubric
    if args.dimensions:
        if kwargs:
            raise ConfigError("give --rubric / --rubric-file or --dimensions, not both")
        dims = [d.strip() for d in args.dimensions.split(",") if d.strip()]
        if not dims:
            raise ConfigError(f"--dimensions {args.dimensions!r} names no dimension")
        kwargs["dimensions"] = dims
    return kwargs


def _cmd_label(args: argparse.Namespace) -> int:
    # torch/transformers: loaded only when the command runs, so `rlhfkit --help` stays fast
    from rlhfkit.feedback.judge import Judge, judge_agreement, position_bias

    rubric = _rubric(args)  # settings first: fail before any file or model is read
    prompts, a, b, given = read_pairs(args.pairs)
    human_rows = None
    if args.human:
        human_rows = [ex.to_row() for ex in load_examples(args.human, "preference")]
    t0 = time.perf_counter()
    judge = Judge(
        args.judge,
        batch_size=args.batch_size,
        tie_margin=args.tie_margin,
        name=args.name,
        tie_token=args.tie_token,
        max_prompt_tokens=args.max_prompt_tokens,
        max_response_tokens=args.max_response_tokens,
        **rubric,
    )
    verdicts = judge.compare(prompts, a, b)
    rows = judge.label_pairs(prompts, a, b, verdicts=verdicts, drop_invalid=True)
    seconds = time.perf_counter() - t0
    n = write_jsonl(args.output, rows)
    choices = {c: sum(v.choice == c for v in verdicts) for c in ("A", "B", "tie")}
    bias = position_bias(verdicts)
    summary: dict[str, Any] = {
        "output": args.output,
        "rows": n,
        "pairs": len(verdicts),
        "judge": judge.name,
        **{f"choice_{k}": v for k, v in choices.items()},
        **{f"position_{k}": v for k, v in bias.items() if k != "n"},
        "seconds": round(seconds, 1),
    }
    print(
        f"labelled {len(verdicts)} pairs with {judge.name} in {seconds:.1f} s -> {args.output} ({n} rows): "
        f"A {choices['A']}, B {choices['B']}, tie {choices['tie']}"
    )
    print(
        f"position bias {bias['bias']:+.3f} (mean P(first shown wins) - 0.5), "
        f"{100 * bias['flip_rate']:.1f}% of verdicts flip with order"
    )
    idx = [i for i, g in enumerate(given) if g is not None]
    if idx:
        agree = judge_agreement([verdicts[i] for i in idx], [given[i] for i in idx])  # type: ignore[misc]
        summary |= {f"given_order_{k}": v for k, v in agree.items()}
        print("agreement with the file's chosen/rejected: " + ", ".join(f"{k} {_fmt(v)}" for k, v in agree.items()))
    if human_rows is not None:
        agree = judge_agreement(rows, human_rows)
        summary |= {f"human_{k}": v for k, v in agree.items()}
        print(f"agreement with {args.human}: " + ", ".join(f"{k} {_fmt(v)}" for k, v in agree.items()))
    if args.summary:
        Path(args.summary).write_text(json.dumps(_clean(summary), indent=1) + "\n")
    return 0


def _cmd_constitution(args: argparse.Namespace) -> int:
    # torch/transformers: loaded only when the command runs, so `rlhfkit --help` stays fast
    from rlhfkit.feedback.constitution import (
        ChatGenerator,
        critique_and_revise,
        judge_revisions,
        load_constitution,
        preference_rows,
        rubric_from_constitution,
        sft_rows,
    )

    constitution = load_constitution(args.constitution)
    examples = load_examples(args.prompts, "prompt")
    if args.max_prompts is not None:
        examples = examples[: args.max_prompts]
    if not examples:
        raise ValueError(f"{args.prompts}: no prompts")
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    gen = ChatGenerator(
        args.model,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        batch_size=args.batch_size,
        max_prompt_length=args.max_prompt_length,
        seed=args.seed,
    )
    records = critique_and_revise(
        gen, [ex.prompt for ex in examples], constitution, args.rounds, args.seed, layout=args.layout
    )
    gen_s = time.perf_counter() - t0
    sft, prefs = sft_rows(records), preference_rows(records)
    write_jsonl(out / "sft.jsonl", sft)
    write_jsonl(out / "prefs.jsonl", prefs)
    write_jsonl(out / "trace.jsonl", [r.to_row() for r in records])
    summary: dict[str, Any] = {
        "constitution": constitution.name,
        "principles": len(constitution.principles),
        "prompts": len(records),
        "rounds": args.rounds,
        "layout": args.layout,
        "sft_rows": len(sft),
        "pref_rows": len(prefs),
        "generate_s": round(gen_s, 1),
    }
    print(
        f"critique-and-revise on {len(records)} prompts ({constitution.name}, {len(constitution.principles)} "
        f"principles) in {gen_s:.1f} s -> {out}/sft.jsonl ({len(sft)} rows), prefs.jsonl ({len(prefs)} rows)"
    )
    if args.judge:
        from rlhfkit.feedback.judge import Judge, position_bias  # torch/transformers: only with --judge

        judge = Judge(
            args.judge,
            rubric=rubric_from_constitution(constitution),
            batch_size=args.batch_size,
            tie_margin=args.tie_margin,
            name="rlaif:" + Path(args.judge).name,
        )
        rows, verdicts = judge_revisions(judge, records)
        write_jsonl(out / "rlaif.jsonl", rows)
        bias = position_bias(verdicts)
        k = len(verdicts)
        prefer = sum(v.p_a > 0.5 for v in verdicts) / k if k else float("nan")
        summary |= {
            "judge": judge.name,
            "judged_pairs": k,
            "judge_prefers_revision": prefer,
            "judge_mean_p_revision": sum(v.p_a for v in verdicts) / k if k else float("nan"),
            "judge_ties": sum(v.choice == "tie" for v in verdicts),
            **{f"position_{key}": v for key, v in bias.items() if key != "n"},
        }
        print(
            f"RLAIF: {judge.name} prefers the revision in {100 * prefer:.1f}% of {k} pairs -> {out}/rlaif.jsonl; "
            f"position bias {bias['bias']:+.3f}, flip rate {bias['flip_rate']:.2f}"
        )
    (out / "summary.json").write_text(json.dumps(_clean(summary), indent=1) + "\n")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add `rlhfkit label` and `rlhfkit constitution` to the main CLI."""
    p = sub.add_parser(
        "label",
        help="AI-judge preference labels for pairs (both orders, position bias, agreement with people)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--judge", default="smollm2-135m-instruct", help="judge model: builtin name or local directory")
    p.add_argument("--pairs", required=True, help="chosen/rejected rows or `rlhfkit sample` responses rows")
    p.add_argument("--output", "-o", required=True, help="preference rows out (JSONL)")
    p.add_argument("--rubric", help="what 'better' means (default: helpful, harmless and honest)")
    p.add_argument("--rubric-file", help="read the rubric from this text file")
    p.add_argument(
        "--dimensions", help="comma-separated dimensions judged separately and averaged, e.g. helpful,harmless"
    )
    p.add_argument("--human", help="human preference rows: report the judge's agreement with them")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--tie-margin", type=float, default=0.05, help="a tie when |P(a better) - 0.5| <= this")
    p.add_argument("--tie-token", action="store_true", help='also offer the verdict "C" = equally good')
    p.add_argument("--max-prompt-tokens", type=int, default=384)
    p.add_argument("--max-response-tokens", type=int, default=384)
    p.add_argument("--name", help="rater id written to the rows (default judge:<model>)")
    p.add_argument("--summary", help="also write the printed figures as JSON here")
    p.set_defaults(handler=_cmd_label)

    c = sub.add_parser(
        "constitution",
        help="Constitutional AI: critique-and-revise SFT data and revision-vs-original preference pairs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_argument("--model", default="smollm2-135m-instruct", help="model that answers, critiques and revises")
    c.add_argument("--prompts", required=True, help='prompt rows ({"prompt"})')
    c.add_argument("--constitution", help="constitution YAML (default: the package's, 8 principles)")
    c.add_argument("--output", "-o", required=True, help="output directory")
    c.add_argument("--rounds", type=int, default=1, help="critique-revision rounds per prompt")
    c.add_argument(
        "--layout",
        choices=("paper", "quoted"),
        default="paper",
        help="paper: revise after the model's critique turn; quoted: the critique quoted in the revision request",
    )
    c.add_argument("--max-new-tokens", type=int, default=128)
    c.add_argument("--max-prompt-length", type=int, default=768)
    c.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    c.add_argument("--batch-size", type=int, default=8)
    c.add_argument("--max-prompts", type=int)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--judge", help="also label revision vs original with this judge (RLAIF)")
    c.add_argument("--tie-margin", type=float, default=0.05)
    c.set_defaults(handler=_cmd_constitution)
