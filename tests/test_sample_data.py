"""The sample data shipped in rlhfkit/tasks/data: counts, schema, uniqueness, preferences pointing the right way."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from build_sample_data import build_all, to_jsonl  # noqa: E402  (a development tool, not part of the package)

DATA = Path(__file__).resolve().parents[1] / "rlhfkit" / "tasks" / "data"
INSTRUCTION = "Continue this movie review: "

# A tiny sentiment lexicon, independent of the generator's fragments: the score of a text is
# (# words from POSITIVE) - (# words from NEGATIVE).
POSITIVE = set(
    """good great wonderful wonderfully beautiful beautifully gorgeous brilliant delight delightful delighted love loved
    lovely loveliest moving joy joyful superb stunning excellent charming charmed warm warmest warmth funny perfect best
    fresh thrilling gem triumph recommended magnificent marvel breathtaking satisfying sharp smart clever witty wittiest
    heartfelt tender gripping luminous genuine genuinely happy hopeful elegant generous natural effortless inventive
    rich pleasure kindness gracefully happily crisp sparkles""".split()
)
NEGATIVE = set(
    """bad awful boring bored dull tedious tiresome mess waste wasted weak weakest worse worst stiff wooden lifeless
    flat bland forgettable clumsy lazy predictable generic stale hollow confusing confused muddle murky drab ugly
    cheap awkward disappointment disappointing slog chore poorly painfully silly annoyed regret avoid disaster
    failure forced shrill grating stilted muddy choppy sluggish drags unconvincing thin skip tired joyless
    overbearing harsh fake shaky distracting unremarkable average relentless fatal stalls bother""".split()
)
_WORD = re.compile(r"[a-z']+")


def lexicon_score(text: str) -> int:
    tokens = _WORD.findall(text.lower())
    return sum(t in POSITIVE for t in tokens) - sum(t in NEGATIVE for t in tokens)


def load(name: str) -> list[dict]:
    rows = []
    with open(DATA / name, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            assert line.strip(), f"{name}:{i}: blank line"
            row = json.loads(line)
            assert isinstance(row, dict), f"{name}:{i}: not an object"
            rows.append(row)
    return rows


def _nonempty_str(x: object) -> bool:
    return isinstance(x, str) and x.strip() == x and len(x) > 0


def _opening(prompt: str) -> str:
    assert prompt.startswith(INSTRUCTION), prompt
    return prompt[len(INSTRUCTION) :]


def _max_pairwise_jaccard(texts: list[str]) -> float:
    sets = [set(_WORD.findall(t.lower())) for t in texts]
    return max(len(a & b) / len(a | b) for i, a in enumerate(sets) for b in sets[i + 1 :])


def test_lexicon_scores_by_hand() -> None:
    assert lexicon_score("A wonderful, moving film.") == 2
    assert lexicon_score("Dull and boring, but the score is lovely.") == -1
    assert lexicon_score("It exists.") == 0


# --- review_prompts.jsonl -------------------------------------------------------------------------------------------


def test_review_prompts() -> None:
    rows = load("review_prompts.jsonl")
    assert len(rows) == 300
    prompts = [r["prompt"] for r in rows]
    assert all(set(r) == {"prompt"} for r in rows)
    assert all(_nonempty_str(p) for p in prompts)
    assert len(set(prompts)) == len(prompts), "duplicate prompts"
    for p in prompts:
        assert 8 <= len(p.split()) <= 25, p
        assert p[-1] not in ".!?\"'", f"should end mid-thought: {p}"  # the policy finishes the sentence
        assert not p.startswith(INSTRUCTION)
    # varied: no two openings share most of their words
    assert _max_pairwise_jaccard(prompts) <= 0.6
    assert len({p.split('"')[1] for p in prompts if '"' in p}) >= 80, "too few distinct film titles"


# --- sft.jsonl --------------------------------------------------------------------------------------------------------


def test_sft_rows() -> None:
    rows = load("sft.jsonl")
    plain = [r for r in rows if "prompt" in r]
    chat = [r for r in rows if "messages" in r]
    assert len(plain) == 120 and 8 <= len(chat) <= 12 and len(plain) + len(chat) == len(rows)

    for r in plain:
        assert set(r) == {"prompt", "response"}
        assert _nonempty_str(r["prompt"]) and _nonempty_str(r["response"])
        assert 1 <= len(re.findall(r"[.!?](?:\s|$)", r["response"])) <= 3, r["response"]

    n_system = 0
    for r in chat:
        assert set(r) == {"messages"}
        roles = [m["role"] for m in r["messages"]]
        assert roles in (["user", "assistant"], ["system", "user", "assistant"]), roles
        assert all(set(m) == {"role", "content"} and _nonempty_str(m["content"]) for m in r["messages"])
        n_system += roles[0] == "system"
    assert 0 < n_system < len(chat), "some chat rows with a system message, some without"

    prompts = [r["prompt"] for r in plain] + [r["messages"][-2]["content"] for r in chat]
    responses = [r["response"] for r in plain] + [r["messages"][-1]["content"] for r in chat]
    openings = [_opening(p) for p in prompts]
    assert len(set(openings)) == len(openings), "duplicate prompts"
    assert len(set(responses)) == len(responses), "duplicate responses"
    assert _max_pairwise_jaccard(responses) <= 0.75, "near-duplicate responses"
    # SFT demonstrations are the behaviour we want: positive continuations
    assert sum(lexicon_score(t) > 0 for t in responses) >= 0.95 * len(responses)


# --- prefs.jsonl ------------------------------------------------------------------------------------------------------


def test_prefs_schema() -> None:
    rows = load("prefs.jsonl")
    assert len(rows) == 200
    allowed = {"prompt", "chosen", "rejected", "tie", "strength", "rater", "confidence"}
    for i, r in enumerate(rows, 1):
        assert {"prompt", "chosen", "rejected"} <= set(r) <= allowed, f"line {i}: {sorted(r)}"
        assert all(_nonempty_str(r[k]) for k in ("prompt", "chosen", "rejected")), f"line {i}"
        assert r["chosen"] != r["rejected"], f"line {i}"
        _opening(r["prompt"])
        if "tie" in r:
            assert r["tie"] is True, f"line {i}"
        if "strength" in r:
            assert isinstance(r["strength"], float) and 0.0 <= r["strength"] <= 2.0, f"line {i}"
        if "rater" in r:
            assert r["rater"] in {"r1", "r2", "r3"}, f"line {i}"
        if "confidence" in r:
            assert isinstance(r["confidence"], float) and 0.5 <= r["confidence"] <= 1.0, f"line {i}"

    prompts = [r["prompt"] for r in rows]
    assert len(set(prompts)) == len(prompts), "duplicate prompts"
    assert _max_pairwise_jaccard([r["chosen"] for r in rows]) <= 0.75, "near-duplicate chosen continuations"
    n_ties = sum(r.get("tie", False) for r in rows)
    assert 15 <= n_ties <= 25  # about 10%
    # optional fields are on most rows but not all, so loaders see both cases
    for key in ("rater", "confidence"):
        assert 0.75 * len(rows) <= sum(key in r for r in rows) < len(rows), key
    non_ties = [r for r in rows if not r.get("tie")]
    assert 0.75 * len(non_ties) <= sum("strength" in r for r in non_ties) < len(non_ties)
    assert {r["rater"] for r in rows if "rater" in r} == {"r1", "r2", "r3"}


def test_prefs_chosen_more_positive_than_rejected() -> None:
    rows = [r for r in load("prefs.jsonl") if not r.get("tie")]
    agree = sum(lexicon_score(r["chosen"]) > lexicon_score(r["rejected"]) for r in rows)
    assert agree >= 0.9 * len(rows), f"{agree}/{len(rows)}"


def test_prefs_strength_grows_with_sentiment_gap() -> None:
    rows = [r for r in load("prefs.jsonl") if not r.get("tie") and "strength" in r]
    gaps = [lexicon_score(r["chosen"]) - lexicon_score(r["rejected"]) for r in rows]
    strengths = [r["strength"] for r in rows]
    n = len(rows)
    mg, ms = sum(gaps) / n, sum(strengths) / n
    cov = sum((g - mg) * (s - ms) for g, s in zip(gaps, strengths))
    var_g = sum((g - mg) ** 2 for g in gaps)
    var_s = sum((s - ms) ** 2 for s in strengths)
    assert cov / (var_g * var_s) ** 0.5 > 0.3  # Pearson correlation


def test_prefs_ties_have_similar_sentiment() -> None:
    ties = [r for r in load("prefs.jsonl") if r.get("tie")]
    same_sign = sum((lexicon_score(r["chosen"]) > 0) == (lexicon_score(r["rejected"]) > 0) for r in ties)
    assert same_sign >= 0.8 * len(ties)
    assert all("strength" not in r or r["strength"] <= 0.5 for r in ties)


# --- all files --------------------------------------------------------------------------------------------------------


def test_sft_and_prefs_openings_are_review_style_openings() -> None:
    sft = load("sft.jsonl")
    prompts = [r["prompt"] if "prompt" in r else r["messages"][-2]["content"] for r in sft]
    prompts += [r["prompt"] for r in load("prefs.jsonl")]
    for p in prompts:
        opening = _opening(p)
        assert 8 <= len(opening.split()) <= 25 and opening[-1] not in ".!?", opening


def test_files_match_a_fresh_build() -> None:
    """The committed files are exactly what the generator writes (reproducible, nobody hand-edited them)."""
    for name, rows in build_all().items():
        assert (DATA / name).read_text(encoding="utf-8") == to_jsonl(rows), name
