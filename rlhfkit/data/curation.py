"""Data curation: exact and near-duplicate removal, PII scrubbing, length filters -- each with counts.

Works on SFT, preference, prompt and unpaired examples. Every step returns ``(kept_examples, CurationReport)``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rlhfkit.data.schemas import Example, PreferenceExample, PromptExample, SFTExample, StepExample, UnpairedExample


@dataclass
class CurationReport:
    """What each curation step removed or changed."""

    input: int = 0
    kept: int = 0
    exact_duplicates: int = 0
    near_duplicates: int = 0
    too_short: int = 0
    too_long: int = 0
    pii: dict[str, int] = field(default_factory=lambda: {"email": 0, "phone": 0, "card": 0})
    pii_identical_pairs: int = 0  # preference pairs that became identical once scrubbed (dropped)

    def __str__(self) -> str:
        removed = self.input - self.kept
        pii = ", ".join(f"{n} {kind}" for kind, n in self.pii.items())
        return (
            f"curation: {self.input} in, {self.kept} kept ({removed} removed)\n"
            f"  exact duplicates: {self.exact_duplicates}, near duplicates: {self.near_duplicates}\n"
            f"  length: {self.too_short} too short, {self.too_long} too long\n"
            f"  PII replaced: {pii}; pairs identical after scrubbing: {self.pii_identical_pairs}"
        )


# ---------------------------------------------------------------- text views of an example


def example_text(ex: Example) -> str:
    """All text of an example (prompt + completions), for duplicate detection."""
    return "\n".join(_parts(ex))


def _parts(ex: Example) -> list[str]:
    if isinstance(ex, SFTExample):
        return [m["content"] for m in ex.messages]
    prompt = [m["content"] for m in ex.prompt]
    if isinstance(ex, PreferenceExample):
        return prompt + [ex.chosen, ex.rejected]
    if isinstance(ex, UnpairedExample):
        return prompt + [ex.response]
    if isinstance(ex, PromptExample):
        return prompt
    if isinstance(ex, StepExample):
        return prompt + list(ex.steps)
    raise TypeError(f"not an example: {type(ex).__name__}")


def response_texts(ex: Example) -> list[str]:
    """The texts length filters apply to: responses (every assistant turn, chosen and rejected); a prompt row's prompt."""
    if isinstance(ex, SFTExample):
        return [m["content"] for m in ex.messages if m["role"] == "assistant"]
    if isinstance(ex, PreferenceExample):
        return [ex.chosen, ex.rejected]
    if isinstance(ex, UnpairedExample):
        return [ex.response]
    if isinstance(ex, PromptExample):
        return ["\n".join(m["content"] for m in ex.prompt)]
    if isinstance(ex, StepExample):
        return ["\n".join(ex.steps)]
    raise TypeError(f"not an example: {type(ex).__name__}")


def _normalize(text: str) -> str:
    return " ".join(text.lower().split())


# ---------------------------------------------------------------- exact duplicates


def dedupe_exact(examples: Sequence[Example]) -> tuple[list[Example], CurationReport]:
    """Drop repeats of the same example up to case and whitespace; the first occurrence is kept.

    Labels are part of the key: the same text with a different KTO label or tie flag is a conflict, not a duplicate.
    So is the rater: two raters giving the same pair the same label are two votes, not one row seen twice.
    """
    seen: set[tuple[Any, ...]] = set()
    kept: list[Example] = []
    for ex in examples:
        key = (
            type(ex).__name__,
            *(_normalize(t) for t in _parts(ex)),
            getattr(ex, "label", None),
            getattr(ex, "labels", None),
            getattr(ex, "tie", None),
            getattr(ex, "rater", None),
        )
        if key not in seen:
            seen.add(key)
            kept.append(ex)
    return kept, CurationReport(input=len(examples), kept=len(kept), exact_duplicates=len(examples) - len(kept))


# ---------------------------------------------------------------- near duplicates (MinHash + LSH)

_MERSENNE = (1 << 31) - 1  # prime modulus for the permutations h(x) = (a x + b) mod p (Broder 1997)
_WORD = re.compile(r"\w+")


def shingles(text: str, n: int = 5) -> set[int]:
    """Word n-gram shingles as stable 64-bit hashes (Python's hash() is salted per process)."""
    words = _WORD.findall(text.lower())
    grams = [" ".join(words[i : i + n]) for i in range(max(1, len(words) - n + 1))] if words else []
    return {int.from_bytes(hashlib.blake2b(g.encode(), digest_size=8).digest(), "little") for g in grams}


def jaccard(a: set[int], b: set[int]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def minhash_signatures(shingle_sets: Sequence[set[int]], num_perm: int = 64, seed: int = 0) -> np.ndarray:
    """(N, num_perm) MinHash signatures: P[sig_i == sig_j] = Jaccard(i, j) per permutation (Broder 1997)."""
    rng = np.random.default_rng(seed)
    p = np.uint64(_MERSENNE)
    # a, b, x < p = 2^31 - 1, so a*x + b < 2^62 never overflows uint64, and a*x >> p makes the mod p actually mix
    # (with a*x < p the "permutation" would be monotone in x and every row would pick the same minimum).
    a = rng.integers(1, _MERSENNE, size=num_perm, dtype=np.uint64)
    b = rng.integers(0, _MERSENNE, size=num_perm, dtype=np.uint64)
    sigs = np.full((len(shingle_sets), num_perm), _MERSENNE, dtype=np.uint64)
    for i, s in enumerate(shingle_sets):
        if not s:
            continue
        x = np.fromiter(s, dtype=np.uint64, count=len(s)) % p
        sigs[i] = ((x[:, None] * a[None, :] + b[None, :]) % p).min(axis=0)
    return sigs


def lsh_bands(num_perm: int, threshold: float, recall: float = 0.99) -> int:
    """Number of bands: the most rows per band (fewest candidates) whose P[candidate | J = threshold] >= recall."""
    for rows in sorted((r for r in range(1, num_perm + 1) if num_perm % r == 0), reverse=True):
        bands = num_perm // rows
        if 1.0 - (1.0 - threshold**rows) ** bands >= recall:  # LSH S-curve, Leskovec et al. MMDS ch. 3.4
            return bands
    return num_perm


def dedupe_near(
    examples: Sequence[Example],
    threshold: float = 0.8,
    num_perm: int = 64,
    ngram: int = 5,
    bands: int | None = None,
    seed: int = 0,
) -> tuple[list[Example], CurationReport]:
    """Drop examples whose word-``ngram`` Jaccard similarity to an earlier kept example is >= threshold.

    MinHash + LSH banding proposes candidates; each candidate is verified with the true Jaccard, so LSH only costs
    recall (tuned to >= 99% at the threshold), never precision. Comparing against kept examples only avoids chains.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    bands = bands or lsh_bands(num_perm, threshold)
    if num_perm % bands:
        raise ValueError(f"bands={bands} must divide num_perm={num_perm}")
    sets = [shingles(example_text(ex), ngram) for ex in examples]
    sigs = minhash_signatures(sets, num_perm, seed)
    rows = num_perm // bands
    buckets: list[dict[bytes, list[int]]] = [{} for _ in range(bands)]
    kept_idx: list[int] = []
    for i in range(len(examples)):
        keys = [sigs[i, k * rows : (k + 1) * rows].tobytes() for k in range(bands)]
        candidates = {j for k, key in enumerate(keys) for j in buckets[k].get(key, ())}
        if any(jaccard(sets[i], sets[j]) >= threshold for j in candidates):
            continue
        kept_idx.append(i)
        for k, key in enumerate(keys):
            buckets[k].setdefault(key, []).append(i)
    kept = [examples[i] for i in kept_idx]
    return kept, CurationReport(input=len(examples), kept=len(kept), near_duplicates=len(examples) - len(kept))


# ---------------------------------------------------------------- PII

_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![\w-])")
# 13-19 digits, optionally grouped by single spaces or dashes; Luhn decides (Luhn 1960, ISO/IEC 7812).
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
# Phones need visible structure (separators, parentheses or a leading +) so plain IDs and amounts are left alone.
_PHONE = re.compile(
    r"(?<![\w+])(?:"
    r"\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){2,5}"  # international: +44 20 7946 0958, +1 (555) 123-4567
    r"|(?:\(\d{3}\)[ ]?|\d{3}[ .-])\d{3}[ .-]\d{4}"  # North American: (555) 123-4567, 555-123-4567, 555.123.4567
    r")(?![\w-])"
)


def luhn_valid(digits: str) -> bool:
    """Luhn checksum: double every second digit from the right, sum digits, divisible by 10."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def scrub_text(text: str, counts: dict[str, int] | None = None) -> str:
    """Replace e-mails, card numbers (Luhn-valid only) and phone numbers by <EMAIL>, <CARD>, <PHONE>."""
    counts = counts if counts is not None else {"email": 0, "phone": 0, "card": 0}

    def sub(kind: str, token: str, check: Callable[[str], bool] | None = None) -> Callable[[re.Match[str]], str]:
        def repl(m: re.Match[str]) -> str:
            if check is not None and not check(m.group(0)):
                return m.group(0)
            counts[kind] = counts.get(kind, 0) + 1
            return token

        return repl

    def card_ok(s: str) -> bool:
        digits = re.sub(r"[ -]", "", s)
        return 13 <= len(digits) <= 19 and luhn_valid(digits)

    def phone_ok(s: str) -> bool:
        return 7 <= sum(ch.isdigit() for ch in s) <= 15  # E.164 allows at most 15 digits

    text = _EMAIL.sub(sub("email", "<EMAIL>"), text)
    text = _CARD.sub(sub("card", "<CARD>", card_ok), text)  # cards before phones: a card is also digit groups
    return _PHONE.sub(sub("phone", "<PHONE>", phone_ok), text)


def scrub_pii(examples: Sequence[Example]) -> tuple[list[Example], CurationReport]:
    """Scrub every text field; preference pairs that differed only by PII become identical and are dropped."""
    counts = {"email": 0, "phone": 0, "card": 0}
    kept: list[Example] = []
    identical = 0

    def s(text: str) -> str:
        return scrub_text(text, counts)

    for ex in examples:
        if isinstance(ex, SFTExample):
            new: Example = dataclasses.replace(ex, messages=_scrub_messages(ex.messages, s))
        elif isinstance(ex, PreferenceExample):
            new = dataclasses.replace(
                ex, prompt=_scrub_messages(ex.prompt, s), chosen=s(ex.chosen), rejected=s(ex.rejected)
            )
            if new.chosen == new.rejected:
                identical += 1
                continue
        elif isinstance(ex, UnpairedExample):
            new = dataclasses.replace(ex, prompt=_scrub_messages(ex.prompt, s), response=s(ex.response))
        elif isinstance(ex, PromptExample):
            new = dataclasses.replace(ex, prompt=_scrub_messages(ex.prompt, s))
        elif isinstance(ex, StepExample):
            new = dataclasses.replace(ex, prompt=_scrub_messages(ex.prompt, s), steps=tuple(s(t) for t in ex.steps))
        else:
            raise TypeError(f"not an example: {type(ex).__name__}")
        kept.append(new)
    report = CurationReport(input=len(examples), kept=len(kept), pii=counts, pii_identical_pairs=identical)
    return kept, report


def _scrub_messages(messages: tuple[dict[str, str], ...], scrub: Callable[[str], str]) -> tuple[dict[str, str], ...]:
    return tuple({"role": m["role"], "content": scrub(m["content"])} for m in messages)


# ---------------------------------------------------------------- length filters


def filter_length(
    examples: Sequence[Example],
    min_chars: int | None = 1,
    max_chars: int | None = None,
    min_words: int | None = None,
    max_words: int | None = None,
) -> tuple[list[Example], CurationReport]:
    """Keep examples whose every response (see ``response_texts``) is within the bounds (whitespace-stripped)."""
    kept: list[Example] = []
    short = long = 0
    for ex in examples:
        texts = [t.strip() for t in response_texts(ex)]
        chars = [len(t) for t in texts]
        words = [len(t.split()) for t in texts]
        if (min_chars is not None and min(chars) < min_chars) or (min_words is not None and min(words) < min_words):
            short += 1
        elif (max_chars is not None and max(chars) > max_chars) or (max_words is not None and max(words) > max_words):
            long += 1
        else:
            kept.append(ex)
    return kept, CurationReport(input=len(examples), kept=len(kept), too_short=short, too_long=long)


# ---------------------------------------------------------------- all together


def curate(
    examples: Sequence[Example],
    dedupe: bool = True,
    near_dedupe: bool = True,
    scrub_pii: bool = True,
    min_chars: int | None = 1,
    max_chars: int | None = None,
    near_threshold: float = 0.8,
) -> tuple[list[Example], CurationReport]:
    """PII scrub -> length filter -> exact dedupe -> near dedupe; one report with every count.

    Scrubbing first makes rows that differ only in an e-mail or phone number collapse as duplicates.
    """
    report = CurationReport(input=len(examples))
    current = list(examples)
    if scrub_pii:
        current, r = _scrub(current)
        report.pii, report.pii_identical_pairs = r.pii, r.pii_identical_pairs
    current, r = filter_length(current, min_chars=min_chars, max_chars=max_chars)
    report.too_short, report.too_long = r.too_short, r.too_long
    if dedupe:
        current, r = dedupe_exact(current)
        report.exact_duplicates = r.exact_duplicates
    if near_dedupe:
        current, r = dedupe_near(current, threshold=near_threshold)
        report.near_duplicates = r.near_duplicates
    report.kept = len(current)
    return current, report


_scrub = scrub_pii  # curate's keyword argument shadows the function name
