"""Builtin rule rewards: pure Python on text, no torch.

Every rule is ``fn(prompts: list[str], responses: list[str], **params) -> list[float]`` where a prompt is the last user
turn (``rlhfkit.rewards.base.prompt_text``). ``RULES`` maps the names a config uses (``kind: rule, path: length``) to
the functions. To add a rule: write the function with keyword-only parameters (their defaults are the documented
defaults), add it to ``RULES``, and add hand-value tests in tests/test_rewards.py.

Parameters are checked before anything runs (``check_params``): an unknown or missing one is a one-line ``ValueError``
naming the rule and the parameter.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

Rule = Callable[..., list[float]]


def _number(rule: str, param: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"rule {rule!r}: param {param!r} must be a finite number, got {value!r}")
    return float(value)


def _flag(rule: str, param: str, value: Any) -> bool:
    if not isinstance(value, bool):  # a YAML string "false" would otherwise be truthy
        raise ValueError(f"rule {rule!r}: param {param!r} must be true or false, got {value!r}")
    return value


def n_words(text: str) -> int:
    """Whitespace-separated words (what the length rule counts)."""
    return len(text.split())


def length_rule(
    prompts: Sequence[str],
    responses: Sequence[str],
    *,
    target: float | None = None,
    max_words: float | None = None,
    coef: float = 0.01,
) -> list[float]:
    """Length penalty in words; give exactly one of ``target`` or ``max_words``.

    target:    -coef * |n_words - target|        (two-sided: pulls responses toward the target length)
    max_words: -coef * max(0, n_words - max_words) (one-sided: only words past the limit cost)
    The default coef 0.01 costs one reward unit per 100 words off, small next to a reward model's O(1) scores.
    """
    if (target is None) == (max_words is None):
        raise ValueError("rule 'length': give exactly one of the params 'target' or 'max_words'")
    c = _number("length", "coef", coef)
    if target is not None:
        t = _number("length", "target", target)
        return [-c * abs(n_words(r) - t) for r in responses]
    m = _number("length", "max_words", max_words)
    return [-c * max(0.0, n_words(r) - m) for r in responses]


_FLAGS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL, "x": re.VERBOSE}


def format_rule(
    prompts: Sequence[str],
    responses: Sequence[str],
    *,
    pattern: str,
    fullmatch: bool = False,
    flags: str = "",
    match_reward: float = 1.0,
    miss_reward: float = 0.0,
) -> list[float]:
    """``match_reward`` where the regex ``pattern`` matches the response, else ``miss_reward``.

    fullmatch: the whole response must match (re.fullmatch) instead of matching anywhere (re.search).
    flags: letters of Python regex flags, e.g. "is" = IGNORECASE | DOTALL ("s" lets "." cross newlines).
    """
    bits = 0
    if not isinstance(flags, str):
        raise ValueError(f"rule 'format': param 'flags' must be a string of letters, got {flags!r}")
    for letter in flags:
        if letter not in _FLAGS:
            raise ValueError(f"rule 'format': param 'flags' has unknown letter {letter!r} (use i, m, s, x)")
        bits |= _FLAGS[letter]
    if not isinstance(pattern, str):
        raise ValueError(f"rule 'format': param 'pattern' must be a string, got {pattern!r}")
    try:
        regex = re.compile(pattern, bits)
    except re.error as e:
        raise ValueError(f"rule 'format': param 'pattern' {pattern!r} is not a valid regex ({e})") from None
    hit, miss = _number("format", "match_reward", match_reward), _number("format", "miss_reward", miss_reward)
    match = regex.fullmatch if _flag("format", "fullmatch", fullmatch) else regex.search
    return [hit if match(r) else miss for r in responses]


def keywords_rule(
    prompts: Sequence[str],
    responses: Sequence[str],
    *,
    words: Sequence[str] | str,
    weight: float = 1.0,
    count: bool = False,
    case_sensitive: bool = False,
) -> list[float]:
    """weight * (how many of ``words`` occur in the response), as whole words or phrases.

    count=False: each word counts at most once (presence); count=True: every occurrence counts.
    A negative weight penalizes banned words. A single string is one word (or phrase).
    """
    items = [words] if isinstance(words, str) else list(words)
    if not items or not all(isinstance(w, str) and w.strip() for w in items):
        raise ValueError(f"rule 'keywords': param 'words' must be a non-empty list of non-empty strings, got {words!r}")
    w = _number("keywords", "weight", weight)
    # \b only makes sense next to word characters: "c++" or "!" match wherever they appear
    regexes = [
        re.compile(
            (r"\b" if k[0].isalnum() or k[0] == "_" else "")
            + re.escape(k)
            + (r"\b" if k[-1].isalnum() or k[-1] == "_" else ""),
            0 if _flag("keywords", "case_sensitive", case_sensitive) else re.IGNORECASE,
        )
        for k in (item.strip() for item in items)
    ]
    if _flag("keywords", "count", count):
        return [w * sum(len(rx.findall(r)) for rx in regexes) for r in responses]
    return [w * sum(rx.search(r) is not None for rx in regexes) for r in responses]


RULES: dict[str, Rule] = {
    "length": length_rule,
    "format": format_rule,
    "keywords": keywords_rule,
}


def check_params(rule: str, params: dict[str, Any]) -> None:
    """Raise a one-line ValueError for an unknown rule, an unknown parameter or a missing required one."""
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}: choose one of {', '.join(sorted(RULES))}")
    sig = inspect.signature(RULES[rule])
    accepted = [p for p in sig.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    names = {p.name for p in accepted}
    for key in params:
        if key not in names:
            raise ValueError(f"rule {rule!r}: unknown param {key!r} (valid: {', '.join(sorted(names))})")
    for p in accepted:
        if p.default is inspect.Parameter.empty and p.name not in params:
            raise ValueError(f"rule {rule!r}: missing required param {p.name!r}")
    RULES[rule]([], [], **params)  # a dry run on no responses validates the values (types, regex, exclusive params)


def apply_rule(rule: str, prompts: Sequence[str], responses: Sequence[str], params: dict[str, Any]) -> list[float]:
    """Check the params, then run the rule."""
    check_params(rule, params)
    return RULES[rule](list(prompts), list(responses), **params)
