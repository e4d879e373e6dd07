"""rlhfkit.eval.diversity: distinct-n, lengths and drift on hand-counted examples."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from rlhfkit.eval.diversity import distinct_n, diversity_stats, drift, length_stats, tokenize

CATS = ["the cat sat", "the cat ran"]


def test_distinct_n_hand_values() -> None:
    # unigrams: the cat sat the cat ran -> 4 unique of 6; bigrams: (the cat) (cat sat) (the cat) (cat ran) -> 3 of 4
    assert distinct_n(CATS, 1) == pytest.approx(4 / 6)
    assert distinct_n(CATS, 2) == pytest.approx(3 / 4)
    assert distinct_n(CATS, 3) == pytest.approx(2 / 2)
    # n-grams do not cross responses: "sat the" is never counted
    assert distinct_n(["a b", "a b"], 2) == pytest.approx(1 / 2)
    assert distinct_n(["a a a a"], 1) == pytest.approx(1 / 4)
    # whitespace of any kind splits; case is kept
    assert distinct_n(["The the\nthe\tTHE"], 1) == pytest.approx(3 / 4)


def test_distinct_n_without_ngrams_is_nan() -> None:
    assert math.isnan(distinct_n([], 1))
    assert math.isnan(distinct_n(["one", ""], 2))
    assert distinct_n(["one", ""], 1) == 1.0


def test_tokenizers() -> None:
    chars = distinct_n(["abab"], 2, tokenizer=list)  # ab ba ab -> 2 of 3
    assert chars == pytest.approx(2 / 3)

    class Encoder:  # the Hugging Face call shape, without special tokens
        def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
            assert add_special_tokens is False
            return [ord(c) for c in text]

    assert tokenize("hi", Encoder()) == [104, 105]
    assert length_stats(["abc", "a"], tokenizer=Encoder())["mean"] == 2.0


def test_tiny_tokenizer_tokens() -> None:
    from rlhfkit.models.tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    ids = [tok.encode(t, add_special_tokens=False) for t in CATS]
    total = sum(len(i) for i in ids)
    assert diversity_stats(CATS, tokenizer=tok)["mean_length"] == total / 2
    assert distinct_n(CATS, 1, tokenizer=tok) == pytest.approx(len({x for i in ids for x in i}) / total)


def test_length_stats_hand_values() -> None:
    stats = length_stats(["a b c", "a b c", "a", "a b c d e"])
    assert stats == {"mean": 3.0, "median": 3.0, "min": 1.0, "max": 5.0}
    assert length_stats(["a", "a b"])["median"] == 1.5
    assert all(math.isnan(v) for v in length_stats([]).values())


def test_drift_hand_values() -> None:
    d = drift(["a b", "a b"], ["a b c d", "e f g h"])
    assert d["length_before"] == 2.0 and d["length_after"] == 4.0 and d["length_ratio"] == 2.0
    # distinct-1: 2 of 4 -> 8 of 8; distinct-2: 1 of 2 -> 6 of 6
    assert (d["distinct_1_before"], d["distinct_1_after"], d["distinct_1_change"]) == (0.5, 1.0, 0.5)
    assert (d["distinct_2_before"], d["distinct_2_after"], d["distinct_2_change"]) == (0.5, 1.0, 0.5)
    # collapse onto one phrase: shorter and less diverse
    c = drift(CATS, ["great great", "great great"])
    assert c["length_ratio"] == pytest.approx(2 / 3)
    assert c["distinct_1_change"] == pytest.approx(1 / 4 - 4 / 6)
    assert math.isnan(drift(["", ""], ["a"])["length_ratio"])  # nothing to compare against


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: distinct_n(CATS, 0), "n must be >= 1"),
        (lambda: distinct_n("the cat", 1), "not one string"),
        (lambda: distinct_n(["ok", 3], 1), r"texts\[1\] is a int"),
        (lambda: tokenize("x", tokenizer=42), "tokenizer must be"),
    ],
)
def test_validation_errors(call: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()
