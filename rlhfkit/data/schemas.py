"""Row schemas: one normalized representation per kind of data, and validation with one-line errors.

Every example stores its context as a tuple of chat messages ``{"role", "content"}`` (a plain-string prompt becomes one
user message), so chat templates, truncation and curation see a single shape. Completions (chosen, rejected, response)
are the text of the final assistant message.

Parsers take a raw row (a dict from JSON, parquet or a ``datasets.Dataset``) and a location string such as
``prefs.jsonl:17``; a malformed row raises :class:`DataError` whose message is ``prefs.jsonl:17: field "chosen" is
missing``. Unknown extra fields are ignored.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

Message = dict[str, str]
ROLES = ("system", "user", "assistant")


class DataError(ValueError):
    """A malformed row. ``str(err)`` is one line: ``<where>: <problem>``."""

    def __init__(self, where: str, problem: str) -> None:
        self.where = where
        self.problem = problem.replace("\r", " ").replace("\n", " ")  # one line, always: it goes to logs
        super().__init__(f"{where}: {self.problem}" if where else self.problem)

    def __reduce__(self):  # keep pickling (multiprocessing data loaders) working with the two-argument init
        return (DataError, (self.where, self.problem))


@dataclass(frozen=True)
class SFTExample:
    """A demonstration: a conversation with at least one assistant turn (every assistant turn is trained on)."""

    messages: tuple[Message, ...]
    source: str = ""

    @property
    def prompt(self) -> tuple[Message, ...]:
        """Messages before the final assistant turn."""
        return self.messages[: _last_assistant(self.messages)]

    @property
    def response(self) -> str:
        """Text of the final assistant turn."""
        return self.messages[_last_assistant(self.messages)]["content"]

    def to_row(self) -> dict[str, Any]:
        return {"messages": [dict(m) for m in self.messages]}


@dataclass(frozen=True)
class PreferenceExample:
    """A pairwise comparison; ``chosen`` / ``rejected`` are final assistant texts after the shared ``prompt``.

    tie: the rater saw no difference (order is then arbitrary); strength: margin >= 0 (e.g. "much better" = 2);
    confidence: the rater's confidence in [0, 1]; dimensions: per rubric dimension, which of the two responses won
    on it, as sorted (name, "chosen" | "rejected" | "tie") pairs (a multi-objective reward model trains one head on each).
    """

    prompt: tuple[Message, ...]
    chosen: str
    rejected: str
    tie: bool = False
    strength: float | None = None
    rater: str | None = None
    confidence: float | None = None
    source: str = ""
    dimensions: tuple[tuple[str, str], ...] = ()

    def to_row(self) -> dict[str, Any]:
        row: dict[str, Any] = {"prompt": _prompt_to_row(self.prompt), "chosen": self.chosen, "rejected": self.rejected}
        if self.tie:
            row["tie"] = True
        for key in ("strength", "rater", "confidence"):
            if getattr(self, key) is not None:
                row[key] = getattr(self, key)
        if self.dimensions:
            row["dimensions"] = dict(self.dimensions)
        return row


@dataclass(frozen=True)
class PromptExample:
    """A prompt for sampling / online RL; ``domain`` is an optional tag (e.g. "safety") that per-domain KL
    coefficients (``kl.per_domain``) and per-domain evaluation read."""

    prompt: tuple[Message, ...]
    source: str = ""
    domain: str | None = None

    def to_row(self) -> dict[str, Any]:
        row: dict[str, Any] = {"prompt": _prompt_to_row(self.prompt)}
        if self.domain is not None:
            row["domain"] = self.domain
        return row


@dataclass(frozen=True)
class UnpairedExample:
    """Unpaired binary feedback (KTO): ``label`` True = desirable response."""

    prompt: tuple[Message, ...]
    response: str
    label: bool
    source: str = ""

    def to_row(self) -> dict[str, Any]:
        return {"prompt": _prompt_to_row(self.prompt), "response": self.response, "label": self.label}


@dataclass(frozen=True)
class StepExample:
    """A response written as reasoning steps, each with a label (process supervision, Lightman et al. 2023).

    labels[k] in [0, 1] is how correct step k is (true = 1.0, false = 0.0; a fraction is a soft label such as the
    share of rollouts from that step that reach the right answer, Wang et al. 2024). The response text is the steps
    joined by the trainer's step delimiter (a newline by default).
    """

    prompt: tuple[Message, ...]
    steps: tuple[str, ...]
    labels: tuple[float, ...]
    source: str = ""

    def to_row(self) -> dict[str, Any]:
        labels: list[Any] = [bool(v) if v in (0.0, 1.0) else v for v in self.labels]
        return {"prompt": _prompt_to_row(self.prompt), "steps": list(self.steps), "labels": labels}


Example = SFTExample | PreferenceExample | PromptExample | UnpairedExample | StepExample


def location(name: str, index: int, unit: str = "line") -> str:
    """``prefs.jsonl:17`` for text files (1-based line), ``data.parquet:row 17`` for tables and datasets."""
    return f"{name}:{index}" if unit == "line" else f"{name}:{unit} {index}"


# ---------------------------------------------------------------- parsers


def parse_sft(row: Any, where: str = "", source: str = "") -> SFTExample:
    """``{"messages": [...]}`` (at least one assistant turn) or ``{"prompt", "response"}``."""
    row = _as_row(row, where)
    if _present(row, "messages"):
        messages = _parse_messages(row["messages"], "messages", where, completion=True)
        if not any(m["role"] == "assistant" for m in messages):
            raise DataError(where, 'field "messages" has no assistant turn')
        return SFTExample(messages, source)
    if not _present(row, "prompt"):
        raise DataError(where, 'field "messages" is missing (expected "messages", or "prompt" and "response")')
    prompt = _parse_prompt(row["prompt"], "prompt", where)
    response = _parse_text(_required(row, "response", where), "response", where)
    return SFTExample(prompt + ({"role": "assistant", "content": response},), source)


def parse_preference(row: Any, where: str = "", source: str = "") -> list[PreferenceExample]:
    """A pair row -> one example; a ranking row (has ``responses``) -> every pair of responses (ties kept)."""
    row = _as_row(row, where)
    if _present(row, "responses"):
        return _parse_ranking(row, where, source)
    chosen_raw = _required(row, "chosen", where)
    rejected_raw = _required(row, "rejected", where)
    prompt, chosen, rejected = _split_pair(row.get("prompt"), chosen_raw, rejected_raw, where)
    if chosen == rejected:
        raise DataError(where, 'fields "chosen" and "rejected" are identical')
    tie = _parse_bool(row, "tie", where, default=False)
    strength = _parse_number(row, "strength", where, low=0.0)
    confidence = _parse_number(row, "confidence", where, low=0.0, high=1.0)
    rater = _parse_rater(row, where)
    dimensions = _parse_dimensions(row, where)
    return [PreferenceExample(prompt, chosen, rejected, tie, strength, rater, confidence, source, dimensions)]


def parse_prompt(row: Any, where: str = "", source: str = "") -> PromptExample:
    """``{"prompt": str | messages, "domain": str (optional)}``; a ``messages`` row gives the context before its final
    assistant turn."""
    row = _as_row(row, where)
    domain = _parse_domain(row.get("domain"), where)
    if _present(row, "prompt"):
        return PromptExample(_parse_prompt(row["prompt"], "prompt", where), source, domain)
    if _present(row, "messages"):
        messages = _parse_messages(row["messages"], "messages", where)
        if messages[-1]["role"] == "assistant":
            messages = messages[:-1]
        if not messages:
            raise DataError(where, 'field "messages" has no prompt before the assistant turn')
        return PromptExample(messages, source, domain)
    raise DataError(where, 'field "prompt" is missing')


def parse_unpaired(row: Any, where: str = "", source: str = "") -> UnpairedExample:
    """``{"prompt", "response", "label": bool}`` (KTO)."""
    row = _as_row(row, where)
    prompt = _parse_prompt(_required(row, "prompt", where), "prompt", where)
    response = _parse_text(_required(row, "response", where), "response", where)
    _required(row, "label", where)
    label = _parse_bool(row, "label", where, default=False)
    return UnpairedExample(prompt, response, label, source)


def parse_steps(row: Any, where: str = "", source: str = "") -> StepExample:
    """``{"prompt", "steps": [str, ...], "labels": [bool | number in [0, 1], ...]}`` (one label per step)."""
    row = _as_row(row, where)
    prompt = _parse_prompt(_required(row, "prompt", where), "prompt", where)
    steps_raw = _required(row, "steps", where)
    if not isinstance(steps_raw, (list, tuple)):
        raise DataError(where, f'field "steps" must be a list of strings, got {_describe(steps_raw)}')
    if not steps_raw:
        raise DataError(where, 'field "steps" is empty')
    steps = tuple(_parse_text(s, f"steps[{i}]", where) for i, s in enumerate(steps_raw))
    labels_raw = _required(row, "labels", where)
    if not isinstance(labels_raw, (list, tuple)):
        raise DataError(where, f'field "labels" must be a list of booleans or numbers, got {_describe(labels_raw)}')
    if len(labels_raw) != len(steps):
        raise DataError(where, f'field "labels" has {len(labels_raw)} entries but "steps" has {len(steps)}')
    labels = []
    for i, v in enumerate(labels_raw):
        ok = isinstance(v, bool) or (isinstance(v, (int, float)) and math.isfinite(v) and 0.0 <= v <= 1.0)
        if not ok:
            raise DataError(where, f'field "labels[{i}]" must be true, false or a number in [0, 1], got {_describe(v)}')
        labels.append(float(v))
    return StepExample(prompt, steps, tuple(labels), source)


# ---------------------------------------------------------------- helpers

_HH_ASSISTANT = "\n\nAssistant:"
_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):")


def _describe(value: Any) -> str:
    """JSON-flavoured type name plus a short preview, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"number {value!r}"
    if isinstance(value, str):
        preview = value if len(value) <= 40 else value[:37] + "..."
        return "string " + repr(preview).replace("'", '"')  # repr escapes newlines: stays one line
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


def _as_row(row: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(row, Mapping):
        raise DataError(where, f"expected a JSON object, got {_describe(row)}")
    return row


def _present(row: Mapping[str, Any], key: str) -> bool:
    # None counts as absent: parquet / datasets fill missing columns of mixed files with nulls.
    return row.get(key) is not None


def _required(row: Mapping[str, Any], key: str, where: str) -> Any:
    if not _present(row, key):
        raise DataError(where, f'field "{key}" is missing')
    return row[key]


def _parse_text(value: Any, field: str, where: str) -> str:
    if not isinstance(value, str):
        raise DataError(where, f'field "{field}" must be a string, got {_describe(value)}')
    if not value.strip():
        raise DataError(where, f'field "{field}" is empty')
    return value


def _parse_messages(value: Any, field: str, where: str, completion: bool = False) -> tuple[Message, ...]:
    """Validate a message list; ``completion`` also rejects empty assistant turns (they would be trained on)."""
    if not isinstance(value, (list, tuple)):
        raise DataError(where, f'field "{field}" must be a list of messages, got {_describe(value)}')
    if not value:
        raise DataError(where, f'field "{field}" is empty')
    out: list[Message] = []
    for i, msg in enumerate(value, start=1):
        if not isinstance(msg, Mapping):
            raise DataError(where, f'field "{field}": message {i} must be an object, got {_describe(msg)}')
        role = msg.get("role")
        if role is None:
            raise DataError(where, f'field "{field}": message {i} has no "role"')
        if role not in ROLES:
            shown = f'"{role}"' if isinstance(role, str) else _describe(role)
            raise DataError(
                where, f'field "{field}": message {i} has unknown role {shown} (expected system, user or assistant)'
            )
        content = msg.get("content")
        if content is None:
            raise DataError(where, f'field "{field}": message {i} has no "content"')
        if not isinstance(content, str):
            raise DataError(where, f'field "{field}": message {i} "content" must be a string, got {_describe(content)}')
        if completion and role == "assistant" and not content.strip():
            raise DataError(where, f'field "{field}": message {i} (assistant) is empty')
        out.append({"role": role, "content": content})  # drop extra keys so every template sees the same shape
    return tuple(out)


def _parse_prompt(value: Any, field: str, where: str) -> tuple[Message, ...]:
    if isinstance(value, str):
        return ({"role": "user", "content": _parse_text(value, field, where)},)
    if isinstance(value, (list, tuple)):
        return _parse_messages(value, field, where)
    raise DataError(where, f'field "{field}" must be a string or a list of messages, got {_describe(value)}')


def _parse_domain(value: Any, where: str) -> str | None:
    """An optional domain tag: a non-empty string without surrounding spaces (it becomes a metric name)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise DataError(where, f'field "domain" must be a string, got {_describe(value)}')
    if not value.strip() or value != value.strip() or "/" in value:
        raise DataError(
            where, f'field "domain" must be a non-empty name without surrounding spaces or "/", got {value!r}'
        )
    return value


def _prompt_to_row(prompt: tuple[Message, ...]) -> str | list[Message]:
    if len(prompt) == 1 and prompt[0]["role"] == "user":
        return prompt[0]["content"]
    return [dict(m) for m in prompt]


def _last_assistant(messages: tuple[Message, ...]) -> int:
    for i in range(len(messages) - 1, -1, -1):
        if messages[i]["role"] == "assistant":
            return i
    raise ValueError("conversation has no assistant turn")


def _split_pair(
    prompt_raw: Any, chosen_raw: Any, rejected_raw: Any, where: str
) -> tuple[tuple[Message, ...], str, str]:
    """Normalize the accepted pair shapes to (prompt messages, chosen text, rejected text)."""
    for field, value in (("chosen", chosen_raw), ("rejected", rejected_raw)):
        if not isinstance(value, (str, list, tuple)):
            raise DataError(where, f'field "{field}" must be a string or a list of messages, got {_describe(value)}')
    if isinstance(chosen_raw, str) != isinstance(rejected_raw, str):
        raise DataError(where, 'fields "chosen" and "rejected" must both be strings or both be message lists')

    if isinstance(chosen_raw, str):
        if prompt_raw is None:
            if _HH_ASSISTANT in chosen_raw:
                return _split_hh(chosen_raw, rejected_raw, where)
            raise DataError(where, 'field "prompt" is missing')
        prompt = _parse_prompt(prompt_raw, "prompt", where)
        return prompt, _parse_text(chosen_raw, "chosen", where), _parse_text(rejected_raw, "rejected", where)

    chosen_msgs = _parse_messages(chosen_raw, "chosen", where, completion=True)
    rejected_msgs = _parse_messages(rejected_raw, "rejected", where, completion=True)
    if prompt_raw is not None:
        prompt = _parse_prompt(prompt_raw, "prompt", where)
    else:  # implicit prompt: the shared prefix of the two conversations
        n = 0
        while n < min(len(chosen_msgs), len(rejected_msgs)) and chosen_msgs[n] == rejected_msgs[n]:
            n += 1
        if chosen_msgs == rejected_msgs:
            raise DataError(where, 'fields "chosen" and "rejected" are identical')
        if n == 0:
            raise DataError(where, 'field "prompt" is missing (and "chosen" / "rejected" share no prompt messages)')
        prompt = chosen_msgs[:n]
    texts = []
    for field, msgs in (("chosen", chosen_msgs), ("rejected", rejected_msgs)):
        if len(msgs) > len(prompt) and msgs[: len(prompt)] == prompt:
            msgs = msgs[len(prompt) :]  # full conversation that repeats the prompt
        if len(msgs) != 1 or msgs[0]["role"] != "assistant":
            raise DataError(where, f'field "{field}" must add exactly one assistant message after the prompt')
        texts.append(msgs[0]["content"])
    return prompt, texts[0], texts[1]


def _split_hh(chosen: str, rejected: str, where: str) -> tuple[tuple[Message, ...], str, str]:
    """Anthropic hh-rlhf rows: the prompt is the shared text up to the last shared "\\n\\nAssistant:"."""
    common = os.path.commonprefix([chosen, rejected])
    cut = common.rfind(_HH_ASSISTANT)
    if cut < 0:
        raise DataError(where, 'fields "chosen" and "rejected" share no "\\n\\nAssistant:" prompt')
    texts = []
    for field, text in (("chosen", chosen), ("rejected", rejected)):
        reply = text[cut + len(_HH_ASSISTANT) :].strip()
        if "\n\nHuman:" in reply:
            raise DataError(where, f'field "{field}" differs from the other response before the final assistant turn')
        if not reply:
            raise DataError(where, f'field "{field}" is empty')
        texts.append(reply)
    if texts[0] == texts[1]:
        raise DataError(where, 'fields "chosen" and "rejected" are identical')
    return _parse_hh_turns(chosen[:cut], where), texts[0], texts[1]


def _parse_hh_turns(text: str, where: str) -> tuple[Message, ...]:
    parts = _HH_TURN.split(text)
    if parts[0].strip() or len(parts) < 3:
        raise DataError(where, 'field "chosen" is not a "\\n\\nHuman: ... \\n\\nAssistant: ..." dialogue')
    roles = {"Human": "user", "Assistant": "assistant"}
    return tuple({"role": roles[parts[i]], "content": parts[i + 1].strip()} for i in range(1, len(parts), 2))


def _parse_bool(row: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
    value = row.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):  # "true" / "yes" / 1 are not booleans: a silent cast hides broken exports
        raise DataError(where, f'field "{key}" must be true or false, got {_describe(value)}')
    return value


def _parse_number(
    row: Mapping[str, Any], key: str, where: str, low: float | None = None, high: float | None = None
) -> float | None:
    value = row.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(where, f'field "{key}" must be a number, got {_describe(value)}')
    value = float(value)
    if not math.isfinite(value) or (low is not None and value < low) or (high is not None and value > high):
        span = f"in [{low:g}, {high:g}]" if high is not None else f">= {low:g}"
        raise DataError(where, f'field "{key}" must be a finite number {span}, got {value!r}')
    return value


def _parse_rater(row: Mapping[str, Any], where: str) -> str | None:
    value = row.get("rater")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(where, f'field "rater" must be a string, got {_describe(value)}')
    return str(value)  # numeric rater ids are common in exports


DIMENSION_LABELS = ("chosen", "rejected", "tie")
"""What a pair row's ``dimensions`` say per rubric dimension: which of its two responses won there, or a tie."""


def _parse_dimensions(row: Mapping[str, Any], where: str) -> tuple[tuple[str, str], ...]:
    """``{"helpful": "chosen", "safe": "rejected"}`` -> sorted (name, label) pairs; absent -> ()."""
    value = row.get("dimensions")
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise DataError(where, f'field "dimensions" must be an object {{dimension: label}}, got {_describe(value)}')
    out = []
    for name, label in value.items():
        if not isinstance(name, str) or not name.strip():
            raise DataError(where, f'field "dimensions" has an empty dimension name {name!r}')
        if label not in DIMENSION_LABELS:
            raise DataError(
                where, f'field "dimensions.{name}" must be "chosen", "rejected" or "tie", got {_describe(label)}'
            )
        out.append((name, label))
    return tuple(sorted(out))


def _parse_ranking(row: Mapping[str, Any], where: str, source: str) -> list[PreferenceExample]:
    """All pairs of a ranked list: lower rank = better, equal ranks = tie (Plackett-Luce data as pairwise BT data)."""
    responses = row["responses"]
    if not isinstance(responses, (list, tuple)):
        raise DataError(where, f'field "responses" must be a list of strings, got {_describe(responses)}')
    if len(responses) < 2:
        raise DataError(where, f'field "responses" needs at least 2 responses, got {len(responses)}')
    if _present(row, "dimensions"):
        raise DataError(where, 'field "dimensions" is read on pair rows only (a ranking row orders responses overall)')
    texts = [_parse_text(r, f"responses[{i}]", where) for i, r in enumerate(responses)]
    ranks = _required(row, "ranks", where)
    if not isinstance(ranks, (list, tuple)):
        raise DataError(where, f'field "ranks" must be a list of numbers, got {_describe(ranks)}')
    if len(ranks) != len(texts):
        raise DataError(where, f'field "ranks" has {len(ranks)} entries but "responses" has {len(texts)}')
    for i, r in enumerate(ranks):
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r):
            raise DataError(where, f'field "ranks": entry {i} must be a number, got {_describe(r)}')
    prompt = _parse_prompt(_required(row, "prompt", where), "prompt", where)
    confidence = _parse_number(row, "confidence", where, low=0.0, high=1.0)
    rater = _parse_rater(row, where)
    pairs: list[PreferenceExample] = []
    for i in range(len(texts)):
        for j in range(i + 1, len(texts)):
            if texts[i] == texts[j]:
                raise DataError(where, f'field "responses": responses {i} and {j} are identical')
            better, worse = (i, j) if ranks[i] <= ranks[j] else (j, i)
            tie = ranks[i] == ranks[j]
            pairs.append(PreferenceExample(prompt, texts[better], texts[worse], tie, None, rater, confidence, source))
    return pairs


PARSERS = {
    "sft": parse_sft,
    "preference": parse_preference,
    "prompt": parse_prompt,
    "unpaired": parse_unpaired,
    "steps": parse_steps,
}
