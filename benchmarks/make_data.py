"""Build benchmark data sets from ../shared/data (not shipped with the package).

    python benchmarks/make_data.py [--shared ../shared/data] [--out bench_out/data]

Writes
- imdb_pairs.train.jsonl / imdb_pairs.eval.jsonl: {"prompt": "Write a short movie review.", "chosen": <a positive review
  snippet>, "rejected": <a negative review snippet>} — the reward model must tell positive from negative;
- hh_pairs.train.jsonl / hh_pairs.eval.jsonl: Anthropic hh-rlhf harmless-base rows (raw dialogue format, parsed by the loader).
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
from pathlib import Path

PROMPT = "Write a short movie review."


def snippet(text: str, max_words: int) -> str:
    """The first sentences of a review, at most max_words words, with the HTML line breaks removed."""
    text = re.sub(r"<br\s*/?>", " ", text)
    text = re.sub(r"\s+", " ", text).strip()
    words = text.split(" ")
    if len(words) <= max_words:
        return text
    cut = " ".join(words[:max_words])
    end = max(cut.rfind(". "), cut.rfind("! "), cut.rfind("? "))
    return cut[: end + 1] if end > len(cut) // 2 else cut + " ..."


def imdb_pairs(path: Path, n_train: int, n_eval: int, max_words: int, seed: int) -> tuple[list[dict], list[dict]]:
    with gzip.open(path, "rt") as f:
        rows = [json.loads(line) for line in f]
    rng = random.Random(seed)
    pos = [r["text"] for r in rows if r["label"] == 1]
    neg = [r["text"] for r in rows if r["label"] == 0]
    rng.shuffle(pos)
    rng.shuffle(neg)
    n = n_train + n_eval
    pairs = [
        {"prompt": PROMPT, "chosen": snippet(p, max_words), "rejected": snippet(q, max_words)}
        for p, q in zip(pos[:n], neg[:n])
    ]
    return pairs[:n_train], pairs[n_train:]


def hh_pairs(path: Path, n_train: int, n_eval: int, seed: int) -> tuple[list[dict], list[dict]]:
    with gzip.open(path, "rt") as f:
        rows = [json.loads(line) for line in f]
    rows = [r for r in rows if r["chosen"].strip() != r["rejected"].strip()]
    random.Random(seed).shuffle(rows)
    return rows[:n_train], rows[n_train : n_train + n_eval]


def write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    print(f"wrote {len(rows)} rows to {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--out", default="bench_out/data")
    ap.add_argument("--imdb-train", type=int, default=1000)
    ap.add_argument("--imdb-eval", type=int, default=200)
    ap.add_argument("--imdb-words", type=int, default=40)
    ap.add_argument("--hh-train", type=int, default=1400)
    ap.add_argument("--hh-eval", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    shared, out = Path(args.shared), Path(args.out)
    tr, ev = imdb_pairs(shared / "imdb" / "train.jsonl.gz", args.imdb_train, args.imdb_eval, args.imdb_words, args.seed)
    write(out / "imdb_pairs.train.jsonl", tr)
    write(out / "imdb_pairs.eval.jsonl", ev)
    tr, ev = hh_pairs(shared / "hh-rlhf" / "harmless-base.jsonl.gz", args.hh_train, args.hh_eval, args.seed)
    write(out / "hh_pairs.train.jsonl", tr)
    write(out / "hh_pairs.eval.jsonl", ev)


if __name__ == "__main__":
    main()
