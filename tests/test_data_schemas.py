"""Row validation: every malformed-row kind gives one exact, one-line message naming file, line and field."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from rlhfkit.data import DataError, PreferenceExample, SFTExample, load_examples
from rlhfkit.data.schemas import parse_preference, parse_prompt, parse_sft, parse_unpaired

GOOD_PAIR = {"prompt": "Say hi", "chosen": "Hi!", "rejected": "Go away."}
USER = {"role": "user", "content": "Say hi"}


def _error(tmp_path: Path, bad_row: object, kind: str = "preference", raw: str | None = None) -> str:
    """Load a file whose line 1 is valid and line 2 is ``bad_row``; return the error message."""
    path = tmp_path / "prefs.jsonl"
    first = {"sft": {"prompt": "a", "response": "b"}, "unpaired": {"prompt": "a", "response": "b", "label": True}}
    line2 = raw if raw is not None else json.dumps(bad_row)
    path.write_text(json.dumps(first.get(kind, GOOD_PAIR)) + "\n" + line2 + "\n")
    with pytest.raises(DataError) as info:
        load_examples(path, kind)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}:2: ")
    return message[len(f"{path}:2: ") :]


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"prompt": "p", "rejected": "r"}, 'field "chosen" is missing'),
        ({"prompt": "p", "chosen": "c"}, 'field "rejected" is missing'),
        ({"chosen": "c", "rejected": "r"}, 'field "prompt" is missing'),
        (
            {"prompt": "p", "chosen": 3, "rejected": "r"},
            'field "chosen" must be a string or a list of messages, got number 3',
        ),
        (
            {"prompt": 7, "chosen": "c", "rejected": "r"},
            'field "prompt" must be a string or a list of messages, got number 7',
        ),
        ({"prompt": "p", "chosen": "same", "rejected": "same"}, 'fields "chosen" and "rejected" are identical'),
        ({"prompt": "p", "chosen": "   \n", "rejected": "r"}, 'field "chosen" is empty'),
        ({"prompt": "p", "chosen": "c", "rejected": ""}, 'field "rejected" is empty'),
        ({**GOOD_PAIR, "strength": "high"}, 'field "strength" must be a number, got string "high"'),
        ({**GOOD_PAIR, "strength": -1}, 'field "strength" must be a finite number >= 0, got -1.0'),
        ({**GOOD_PAIR, "strength": True}, 'field "strength" must be a number, got boolean true'),
        ({**GOOD_PAIR, "tie": "true"}, 'field "tie" must be true or false, got string "true"'),
        ({**GOOD_PAIR, "tie": "yes"}, 'field "tie" must be true or false, got string "yes"'),
        ({**GOOD_PAIR, "tie": 1}, 'field "tie" must be true or false, got number 1'),
        ({**GOOD_PAIR, "confidence": 1.5}, 'field "confidence" must be a finite number in [0, 1], got 1.5'),
        ({**GOOD_PAIR, "confidence": -0.1}, 'field "confidence" must be a finite number in [0, 1], got -0.1'),
        ({**GOOD_PAIR, "rater": [1]}, 'field "rater" must be a string, got list'),
        (["not", "an", "object"], "expected a JSON object, got list"),
    ],
)
def test_preference_row_errors(tmp_path: Path, row: object, expected: str) -> None:
    assert _error(tmp_path, row) == expected


def test_nan_strength_is_rejected(tmp_path: Path) -> None:
    raw = '{"prompt": "p", "chosen": "c", "rejected": "r", "strength": NaN}'  # Python's json accepts the NaN literal
    assert _error(tmp_path, None, raw=raw) == 'field "strength" must be a finite number >= 0, got nan'


def test_invalid_json(tmp_path: Path) -> None:
    assert _error(tmp_path, None, raw='{"prompt": "p", "chosen": ') == "invalid JSON (Expecting value at column 27)"


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        (
            {"prompt": "p", "responses": ["a", "b", "c"], "ranks": [1, 2]},
            'field "ranks" has 2 entries but "responses" has 3',
        ),
        ({"prompt": "p", "responses": ["a"], "ranks": [1]}, 'field "responses" needs at least 2 responses, got 1'),
        ({"prompt": "p", "responses": ["a", "b"]}, 'field "ranks" is missing'),
        (
            {"prompt": "p", "responses": ["a", "a"], "ranks": [1, 2]},
            'field "responses": responses 0 and 1 are identical',
        ),
        ({"prompt": "p", "responses": ["a", " "], "ranks": [1, 2]}, 'field "responses[1]" is empty'),
        (
            {"prompt": "p", "responses": ["a", "b"], "ranks": [1, "2"]},
            'field "ranks": entry 1 must be a number, got string "2"',
        ),
    ],
)
def test_ranking_row_errors(tmp_path: Path, row: dict, expected: str) -> None:
    assert _error(tmp_path, row) == expected


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        (
            {"messages": [USER, {"role": "bot", "content": "x"}]},
            'field "messages": message 2 has unknown role "bot" (expected system, user or assistant)',
        ),
        ({"messages": [USER, {"role": "assistant"}]}, 'field "messages": message 2 has no "content"'),
        ({"messages": [{"content": "x"}]}, 'field "messages": message 1 has no "role"'),
        ({"messages": [USER]}, 'field "messages" has no assistant turn'),
        ({"messages": []}, 'field "messages" is empty'),
        ({"messages": "hello"}, 'field "messages" must be a list of messages, got string "hello"'),
        (
            {"messages": [USER, {"role": "assistant", "content": " "}]},
            'field "messages": message 2 (assistant) is empty',
        ),
        (
            {"messages": [USER, {"role": "assistant", "content": ["x"]}]},
            'field "messages": message 2 "content" must be a string, got list',
        ),
        ({"prompt": "p"}, 'field "response" is missing'),
        ({"prompt": "p", "response": " "}, 'field "response" is empty'),
        ({}, 'field "messages" is missing (expected "messages", or "prompt" and "response")'),
    ],
)
def test_sft_row_errors(tmp_path: Path, row: dict, expected: str) -> None:
    assert _error(tmp_path, row, kind="sft") == expected


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"prompt": "p", "response": "r"}, 'field "label" is missing'),
        ({"prompt": "p", "response": "r", "label": "true"}, 'field "label" must be true or false, got string "true"'),
        ({"prompt": "p", "response": "", "label": False}, 'field "response" is empty'),
    ],
)
def test_unpaired_row_errors(tmp_path: Path, row: dict, expected: str) -> None:
    assert _error(tmp_path, row, kind="unpaired") == expected


def test_conversational_pair_errors() -> None:
    chosen = [USER, {"role": "assistant", "content": "a"}, {"role": "user", "content": "x"}]
    with pytest.raises(DataError, match='field "chosen" must add exactly one assistant message after the prompt'):
        parse_preference({"chosen": chosen, "rejected": [USER, {"role": "assistant", "content": "b"}]}, "f:1")
    with pytest.raises(DataError, match="must both be strings or both be message lists"):
        parse_preference({"prompt": "p", "chosen": "c", "rejected": [{"role": "assistant", "content": "b"}]}, "f:1")
    with pytest.raises(DataError, match="share no prompt messages"):
        parse_preference(
            {"chosen": [{"role": "assistant", "content": "a"}], "rejected": [{"role": "assistant", "content": "b"}]},
            "f:1",
        )


def test_error_pickles_and_is_a_value_error() -> None:
    err = DataError("prefs.jsonl:17", 'field "chosen" is missing')
    assert isinstance(err, ValueError)
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == 'prefs.jsonl:17: field "chosen" is missing' and again.where == "prefs.jsonl:17"


def test_error_message_is_one_line_even_for_multiline_values() -> None:
    with pytest.raises(DataError) as info:
        parse_preference({**GOOD_PAIR, "tie": "a\nb"}, "x.jsonl:3")
    assert str(info.value) == 'x.jsonl:3: field "tie" must be true or false, got string "a\\nb"'


# ------------------------------------------------------------------ normalization of valid rows


def test_prompt_response_row_becomes_user_assistant() -> None:
    ex = parse_sft({"prompt": "2+2?", "response": "4", "extra": {"ignored": True}}, "f:1")
    assert ex.messages == ({"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"})
    assert ex.prompt == ({"role": "user", "content": "2+2?"},) and ex.response == "4"


def test_messages_drop_extra_keys() -> None:
    ex = parse_sft({"messages": [{**USER, "name": "bob"}, {"role": "assistant", "content": "hi", "weight": 1}]})
    assert ex.messages == (USER, {"role": "assistant", "content": "hi"})


def test_preference_optional_fields() -> None:
    [ex] = parse_preference({**GOOD_PAIR, "tie": True, "strength": 2, "rater": 17, "confidence": 0.5, "foo": 1})
    assert ex == PreferenceExample((USER,), "Hi!", "Go away.", tie=True, strength=2.0, rater="17", confidence=0.5)
    [plain] = parse_preference({**GOOD_PAIR, "tie": None, "strength": None})  # nulls from mixed parquet columns
    assert (plain.tie, plain.strength, plain.rater, plain.confidence) == (False, None, None, None)


def test_conversational_pair_with_implicit_prompt() -> None:
    system = {"role": "system", "content": "Be brief."}
    chosen = [system, USER, {"role": "assistant", "content": "Hi!"}]
    rejected = [system, USER, {"role": "assistant", "content": "No."}]
    [ex] = parse_preference({"chosen": chosen, "rejected": rejected})
    assert ex.prompt == (system, USER) and (ex.chosen, ex.rejected) == ("Hi!", "No.")


def test_conversational_pair_with_explicit_prompt() -> None:
    for prompt in ([USER], "Say hi"):
        row = {
            "prompt": prompt,
            "chosen": [{"role": "assistant", "content": "Hi!"}],
            "rejected": [USER, {"role": "assistant", "content": "No."}],  # full conversation form also accepted
        }
        [ex] = parse_preference(row)
        assert ex.prompt == (USER,) and (ex.chosen, ex.rejected) == ("Hi!", "No.")


def test_hh_rlhf_row_is_split_at_the_last_shared_assistant_turn() -> None:
    prefix = "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: Tell me a joke.\n\nAssistant:"
    [ex] = parse_preference({"chosen": prefix + " Why did the chicken cross the road?", "rejected": prefix + " No."})
    assert ex.prompt == (
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a joke."},
    )
    assert (ex.chosen, ex.rejected) == ("Why did the chicken cross the road?", "No.")
    # Responses that share a first word: the common prefix ends inside the response, the split must not.
    [ex2] = parse_preference({"chosen": prefix + " Sure, one.", "rejected": prefix + " Sorry."})
    assert (ex2.chosen, ex2.rejected) == ("Sure, one.", "Sorry.")


def test_hh_rows_that_differ_before_the_last_turn_are_rejected() -> None:
    a = "\n\nHuman: q\n\nAssistant: one\n\nHuman: q2\n\nAssistant: x"
    b = "\n\nHuman: q\n\nAssistant: two\n\nHuman: q2\n\nAssistant: x"
    with pytest.raises(DataError, match="before the final assistant turn"):
        parse_preference({"chosen": a, "rejected": b}, "hh:1")


def test_prompt_rows() -> None:
    assert parse_prompt({"prompt": "Write a poem."}).prompt == ({"role": "user", "content": "Write a poem."},)
    ex = parse_prompt({"messages": [USER, {"role": "assistant", "content": "Hi"}]})
    assert ex.prompt == (USER,)
    with pytest.raises(DataError, match='field "prompt" is missing'):
        parse_prompt({"text": "x"}, "p.jsonl:1")


def test_unpaired_row() -> None:
    ex = parse_unpaired({"prompt": "p", "response": "r", "label": False})
    assert (ex.response, ex.label) == ("r", False)


def test_to_row_round_trips() -> None:
    [pair] = parse_preference({**GOOD_PAIR, "tie": True, "confidence": 0.25})
    assert parse_preference(pair.to_row()) == [pair]
    sft = SFTExample(({"role": "system", "content": "s"}, USER, {"role": "assistant", "content": "a"}))
    assert parse_sft(sft.to_row()) == sft
