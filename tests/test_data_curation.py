"""Curation: counts for each step, MinHash/LSH against brute-force Jaccard, PII scrubbing with Luhn."""

from __future__ import annotations

import random

import numpy as np
import pytest

from rlhfkit.data import PreferenceExample, PromptExample, SFTExample, UnpairedExample, curate
from rlhfkit.data.curation import (
    dedupe_exact,
    dedupe_near,
    example_text,
    filter_length,
    jaccard,
    lsh_bands,
    luhn_valid,
    minhash_signatures,
    scrub_pii,
    scrub_text,
    shingles,
)

WORDS = "the a cat dog sat ran on under mat tree house river blue green fast slow big small red old new".split()


def _sft(prompt: str, response: str) -> SFTExample:
    return SFTExample(({"role": "user", "content": prompt}, {"role": "assistant", "content": response}))


def _doc(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) + str(rng.randrange(50)) for _ in range(n))


def test_exact_dedupe_normalizes_case_and_whitespace() -> None:
    examples = [
        _sft("Hello", "World"),
        _sft("hello ", "WORLD"),
        _sft("Hello", "World  \n"),
        _sft("Hello", "Earth"),
        UnpairedExample(({"role": "user", "content": "p"},), "r", True),
        UnpairedExample(({"role": "user", "content": "p"},), "r", False),  # a label conflict is not a duplicate
        UnpairedExample(({"role": "user", "content": "P"},), "r", True),
    ]
    kept, report = dedupe_exact(examples)
    assert kept == [examples[0], examples[3], examples[4], examples[5]]
    assert (report.input, report.kept, report.exact_duplicates) == (7, 4, 3)


def test_shingles_and_jaccard_by_hand() -> None:
    a = shingles("one two three four five six", n=5)  # 2 shingles
    b = shingles("one two three four five seven", n=5)  # shares 1
    assert len(a) == 2 and len(b) == 2 and jaccard(a, b) == pytest.approx(1 / 3)
    assert len(shingles("too short", n=5)) == 1  # short texts are one shingle, not none
    assert shingles("One, TWO three four five!") == shingles("one two three four five")


def test_minhash_estimates_jaccard() -> None:
    rng = random.Random(0)
    base = _doc(rng, 300).split()
    other = base[:150] + _doc(rng, 150).split()
    sa, sb = shingles(" ".join(base)), shingles(" ".join(other))
    sigs = minhash_signatures([sa, sb], num_perm=256, seed=0)
    estimate = float(np.mean(sigs[0] == sigs[1]))
    assert abs(estimate - jaccard(sa, sb)) < 0.08  # std of the estimator ~ sqrt(J(1-J)/256) ~ 0.03


def test_lsh_bands_choice() -> None:
    assert lsh_bands(64, 0.8) == 16  # 16 bands x 4 rows: P[candidate | J=0.8] = 1-(1-0.8^4)^16 > 0.999
    assert lsh_bands(64, 0.5) == 32  # 2 rows: 1-(1-0.25)^32 > 0.999 while 4 rows give only 0.64


def _brute_force_near(texts: list[str], threshold: float) -> list[int]:
    kept: list[int] = []
    sets = [shingles(t) for t in texts]
    for i in range(len(texts)):
        if all(jaccard(sets[i], sets[j]) < threshold for j in kept):
            kept.append(i)
    return kept


def test_near_dedupe_matches_brute_force() -> None:
    rng = random.Random(3)
    texts = []
    for _ in range(40):
        words = _doc(rng, 80).split()
        texts.append(" ".join(words))
        if rng.random() < 0.5:  # a near copy: a few words changed at the end -> Jaccard ~ 0.9
            edited = words[:-2] + ["changed", "ending"]
            texts.append(" ".join(edited))
        if rng.random() < 0.3:  # a looser copy -> Jaccard ~ 0.55, must be kept at threshold 0.8
            texts.append(" ".join(words[:50] + _doc(rng, 30).split()))
    examples = [_sft("Write.", t) for t in texts]
    kept, report = dedupe_near(examples, threshold=0.8)
    expected = _brute_force_near([example_text(e) for e in examples], 0.8)
    assert kept == [examples[i] for i in expected]
    assert report.near_duplicates == len(texts) - len(expected) > 5


def test_pii_scrub_counts_and_luhn() -> None:
    text = (
        "Mail john.doe+rlhf@mail.example.co.uk or call (555) 123-4567, 555.987.6543 or +44 20 7946 0958. "
        "Cards: 4111 1111 1111 1111 and 5500-0000-0000-0004. Not cards: 4111 1111 1111 1112, 4111111111111112. "
        "Order 1234567890, ISBN 978-3-16-148410-0, date 2024-01-15, price 1,299.99."
    )
    counts: dict[str, int] = {}
    out = scrub_text(text, counts)
    assert out == (
        "Mail <EMAIL> or call <PHONE>, <PHONE> or <PHONE>. "
        "Cards: <CARD> and <CARD>. Not cards: 4111 1111 1111 1112, 4111111111111112. "
        "Order 1234567890, ISBN 978-3-16-148410-0, date 2024-01-15, price 1,299.99."
    )
    assert counts == {"email": 1, "phone": 3, "card": 2}
    assert luhn_valid("79927398713") and not luhn_valid("79927398710")


def test_scrub_pii_over_examples() -> None:
    prompt = ({"role": "user", "content": "My mail is a@b.com"},)
    examples = [
        PreferenceExample(prompt, "Write to x@y.org", "Call 555-123-4567"),
        PreferenceExample(prompt, "Mail c@d.com", "Mail e@f.com"),  # identical once scrubbed -> dropped
        _sft("Hi", "Card 4111-1111-1111-1111"),
        PromptExample(({"role": "user", "content": "no pii here"},)),
    ]
    kept, report = scrub_pii(examples)
    assert len(kept) == 3 and report.pii_identical_pairs == 1
    assert kept[0].prompt[0]["content"] == "My mail is <EMAIL>"
    assert (kept[0].chosen, kept[0].rejected) == ("Write to <EMAIL>", "Call <PHONE>")
    assert kept[1].messages[1]["content"] == "Card <CARD>"
    assert kept[2] == examples[3]
    assert report.pii == {"email": 5, "phone": 1, "card": 1}  # the shared prompt counts once per pair


def test_length_filter_counts() -> None:
    examples = [
        _sft("p", "ok"),
        _sft("p", " x "),  # 1 char once stripped
        _sft("p", "a much longer answer than allowed here"),
        PreferenceExample(({"role": "user", "content": "p"},), "fine answer", "no"),
        UnpairedExample(({"role": "user", "content": "p"},), "just right", True),
    ]
    kept, report = filter_length(examples, min_chars=2, max_chars=20)
    assert kept == [examples[0], examples[3], examples[4]]
    assert (report.too_short, report.too_long, report.kept) == (1, 1, 3)
    kept_w, report_w = filter_length(examples, min_chars=None, min_words=2, max_words=5)
    assert kept_w == [examples[4]] and (report_w.too_short, report_w.too_long) == (3, 1)


def test_curate_all_steps_report() -> None:
    rng = random.Random(5)
    long = _doc(rng, 60)
    examples = [
        _sft("Hi", "Reach me at me@example.com"),
        _sft("hi", "Reach me at  you@example.com"),  # exact duplicate once e-mails are scrubbed
        _sft("Write", long),
        _sft("Write", long + " extra"),  # near duplicate
        _sft("Write", "x" * 500),  # too long
        PreferenceExample(({"role": "user", "content": "q"},), "yes", "no"),
        UnpairedExample(({"role": "user", "content": "q"},), "call 555-123-4567", False),
    ]
    kept, report = curate(examples, max_chars=400)
    assert len(kept) == 4
    assert (report.input, report.kept, report.exact_duplicates, report.near_duplicates) == (7, 4, 1, 1)
    assert (report.too_short, report.too_long) == (0, 1)
    assert report.pii == {"email": 2, "phone": 1, "card": 0}
    text = str(report)
    assert "7 in, 4 kept (3 removed)" in text and "exact duplicates: 1, near duplicates: 1" in text
    untouched, r2 = curate(examples, dedupe=False, near_dedupe=False, scrub_pii=False)
    assert untouched == examples and r2.kept == 7
