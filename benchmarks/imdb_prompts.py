"""Review-prefix prompts for the IMDb sentiment task (Ziegler et al. 2019; Rafailov et al. 2023, sec. 6.1).

    python benchmarks/imdb_prompts.py [--n 256] [--eval 64] [--words 8] [--seed 0] --out PATH [--eval-out PATH]

Takes n + eval reviews from ../shared/data/imdb/train.jsonl.gz in a seeded random order, removes the HTML line breaks,
keeps the first --words words as a prefix and writes prompt rows

    {"prompt": "Continue this movie review ...\\n\\n<prefix>", "prefix": <prefix>, "label": 0 | 1}

to --out (n rows) and --eval-out (eval rows; default: PATH with ".eval" before the suffix). The policy is a small
chat model, so the instruction asks for the continuation only; "prefix" and "label" (the source review's sentiment)
are extra fields the prompt loader ignores, kept for analysis (negative openings are the hard cases). Prefixes are
unique, so no prompt is in both files.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
from pathlib import Path

INSTRUCTION = "Continue this movie review. Reply with the next one or two sentences of the review only."
DEFAULT_SOURCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "imdb" / "train.jsonl.gz"


def clean(text: str) -> str:
    """Remove the HTML line breaks IMDb reviews carry and collapse whitespace."""
    text = re.sub(r"<br\s*/?>", " ", text)
    return re.sub(r"\s+", " ", text).strip()


def prefix_of(text: str, words: int) -> str | None:
    """The first `words` words of a cleaned review, or None if the review is not longer than that (nothing to continue)."""
    tokens = clean(text).split(" ")
    return " ".join(tokens[:words]) if len(tokens) > words else None


def make_prompt(prefix: str, instruction: str = INSTRUCTION) -> str:
    return f"{instruction}\n\n{prefix}"


def imdb_prompts(source: Path, n: int, n_eval: int, words: int, seed: int, instruction: str = INSTRUCTION):
    """(train rows, eval rows): distinct prefixes of reviews taken in a seeded random order."""
    with gzip.open(source, "rt", encoding="utf-8") as f:
        reviews = [json.loads(line) for line in f if line.strip()]
    order = list(range(len(reviews)))
    random.Random(seed).shuffle(order)
    rows: list[dict] = []
    seen: set[str] = set()
    for i in order:
        if len(rows) == n + n_eval:
            break
        prefix = prefix_of(reviews[i]["text"], words)
        if prefix is None or prefix.lower() in seen:  # duplicates would leak eval prompts into training
            continue
        seen.add(prefix.lower())
        rows.append({"prompt": make_prompt(prefix, instruction), "prefix": prefix, "label": int(reviews[i]["label"])})
    if len(rows) < n + n_eval:
        raise SystemExit(f"{source}: only {len(rows)} usable reviews with more than {words} words, need {n + n_eval}")
    return rows[:n], rows[n:]


def write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} prompts to {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="IMDb reviews, JSONL (.gz) with text and label")
    ap.add_argument("--n", type=int, default=256, help="training prompts")
    ap.add_argument("--eval", type=int, default=64, help="evaluation prompts, written to --eval-out (0 = none)")
    ap.add_argument("--words", type=int, default=8, help="words of each review kept as the prefix")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--instruction", default=INSTRUCTION, help="text put before the prefix")
    ap.add_argument("--out", type=Path, required=True, help="training prompts, JSONL")
    ap.add_argument("--eval-out", type=Path, default=None, help="evaluation prompts (default: OUT with .eval)")
    args = ap.parse_args()
    if args.n < 1 or args.eval < 0 or args.words < 1:
        ap.error(f"need --n >= 1, --eval >= 0 and --words >= 1, got {args.n}, {args.eval}, {args.words}")
    if not args.source.exists():
        ap.error(f"IMDb file not found: {args.source} (pass --source)")
    eval_out = args.eval_out or args.out.with_name(f"{args.out.stem}.eval{args.out.suffix or '.jsonl'}")
    if eval_out.resolve() == args.out.resolve():
        ap.error(f"--eval-out must differ from --out ({args.out})")
    train, evals = imdb_prompts(args.source, args.n, args.eval, args.words, args.seed, args.instruction)
    write(args.out, train)
    if args.eval:
        write(eval_out, evals)


if __name__ == "__main__":
    main()
