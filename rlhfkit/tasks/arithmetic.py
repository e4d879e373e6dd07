"""The arithmetic task: add a few numbers step by step, every step checked by a rule (exact process labels).

A prompt is ``Add 37 + 45 + 18 step by step.``; the reference solution writes one running sum per line and then the
answer::

    37 + 45 = 82
    82 + 18 = 100
    Answer: 100

Step k (k < n - 1) is correct when it is exactly the k-th running sum ``a + b = c`` with a the true running total so
far, b the next number and c = a + b; an error therefore also makes every later running sum wrong, as a wrong step
cannot lead to the answer. The last expected step is correct when it is ``Answer: <the true total>``; steps past the
expected n are wrong. The outcome is the final answer alone: the response's last step is ``Answer: <the true total>``.
Lines are steps (``rlhfkit.data.steps.split_steps`` with a newline).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rlhfkit.data.steps import split_steps
from rlhfkit.rewards.base import Messages, Scores, prompt_text

__all__ = [
    "ArithmeticSource",
    "StepCheck",
    "check_response",
    "corrupted_steps",
    "numbers_of",
    "problems",
    "prompt_for",
    "rows",
    "solution_steps",
]

_PROMPT = re.compile(r"Add (\d+(?: \+ \d+)+) step by step")
_SUM = re.compile(r"(-?\d+)\s*\+\s*(-?\d+)\s*=\s*(-?\d+)\.?")
_ANSWER = re.compile(r"Answer:\s*(-?\d+)\.?")


def prompt_for(numbers: Sequence[int]) -> str:
    return f"Add {' + '.join(str(n) for n in numbers)} step by step."


def numbers_of(prompt: str) -> list[int]:
    """The numbers a prompt asks to add; a one-line ValueError for a prompt of another task."""
    m = _PROMPT.search(prompt)
    if m is None:
        raise ValueError(f"not an arithmetic prompt (expected 'Add 37 + 45 + 18 step by step.'): {prompt[:60]!r}")
    return [int(x) for x in m.group(1).split(" + ")]


def solution_steps(numbers: Sequence[int]) -> list[str]:
    """The reference solution: one running sum per step, then the answer."""
    steps, total = [], numbers[0]
    for b in numbers[1:]:
        steps.append(f"{total} + {b} = {total + b}")
        total += b
    return steps + [f"Answer: {total}"]


def problems(n: int, seed: int, n_terms: int = 3, low: int = 10, high: int = 99, exclude: Sequence[str] = ()) -> list:
    """n distinct seeded problems (tuples of n_terms numbers in [low, high]) whose prompts are not in `exclude`."""
    rng, seen, out = random.Random(seed), set(exclude), []
    while len(out) < n:
        numbers = tuple(rng.randint(low, high) for _ in range(n_terms))
        if prompt_for(numbers) not in seen:
            seen.add(prompt_for(numbers))
            out.append(numbers)
    return out


def corrupted_steps(numbers: Sequence[int], rng: random.Random) -> list[str]:
    """A solution with one slip: a random step's result is off by 1-10 and the rest follows from the wrong value."""
    steps, total = [], numbers[0]
    slip = rng.randrange(len(numbers))  # len(numbers) - 1 running sums and the answer
    for k, b in enumerate(numbers[1:]):
        c = total + b + (rng.choice([-1, 1]) * rng.randint(1, 10) if k == slip else 0)
        steps.append(f"{total} + {b} = {c}")
        total = c
    answer = total + (rng.choice([-1, 1]) * rng.randint(1, 10) if slip == len(numbers) - 1 else 0)
    return steps + [f"Answer: {answer}"]


@dataclass(frozen=True)
class StepCheck:
    spans: list[tuple[int, int]]
    """(start, end) characters of each step of the response."""
    correct: list[bool]
    """Each step by the rule."""
    expected: int
    """Steps of a complete solution (n - 1 running sums and the answer)."""
    answer_correct: bool
    """The last step is "Answer: <the true total>"."""


def check_response(numbers: Sequence[int], response: str, delimiter: str = "\n") -> StepCheck:
    """Check every step of `response` against the problem `numbers` (see the module docstring)."""
    spans = split_steps(response, delimiter)
    texts = [response[a:b] for a, b in spans]
    running = [sum(numbers[: k + 1]) for k in range(len(numbers))]
    correct = []
    for k, text in enumerate(texts):
        if k < len(numbers) - 1:
            m = _SUM.fullmatch(text)
            a, b, c = (int(x) for x in m.groups()) if m else (None, None, None)
            correct.append(m is not None and a == running[k] and b == numbers[k + 1] and c == running[k + 1])
        else:
            m = _ANSWER.fullmatch(text)
            correct.append(k == len(numbers) - 1 and m is not None and int(m.group(1)) == running[-1])
    last = _ANSWER.fullmatch(texts[-1]) if texts else None
    answer_ok = last is not None and int(last.group(1)) == running[-1]
    return StepCheck(spans, correct, len(numbers), answer_ok)


class ArithmeticSource:
    """Reward source (config kind "arithmetic"): total = 1 if the final answer is right, else 0 (the outcome); steps =
    1/n at the end of each correct step of the n a solution has (process rewards summing to 1 for a fully correct
    solution, so both placements share one scale). parts: "answer" and "steps" (the share of correct steps)."""

    kind = "arithmetic"

    def __init__(self, name: str = "arithmetic", delimiter: str = "\n") -> None:
        self.name, self.delimiter = name, delimiter

    def __call__(self, prompts: Sequence[Messages | str], responses: Sequence[str]) -> Scores:
        if len(prompts) != len(responses):
            raise ValueError(f"reward source {self.name!r}: {len(prompts)} prompts but {len(responses)} responses")
        answers, shares, steps = [], [], []
        for prompt, response in zip(prompts, responses):
            check = check_response(numbers_of(prompt if isinstance(prompt, str) else prompt_text(prompt)), response)
            answers.append(float(check.answer_correct))
            shares.append(sum(check.correct) / check.expected)
            steps.append([(end, ok / check.expected) for (_, end), ok in zip(check.spans, check.correct)])
        total = torch.tensor(answers, dtype=torch.float32)
        parts = {"answer": total, "steps": torch.tensor(shares, dtype=torch.float32)}
        return Scores(total=total, parts=parts, steps=steps)


def rows(numbers: Sequence[Sequence[int]], kind: str, seed: int = 0) -> list[dict[str, Any]]:
    """Data rows for problems: "prompt" rows, "sft" demonstrations, or "steps" rows (every other one with a slip,
    labelled by the rule)."""
    rng, out = random.Random(seed), []
    for i, nums in enumerate(numbers):
        prompt = prompt_for(nums)
        if kind == "prompt":
            out.append({"prompt": prompt})
        elif kind == "sft":
            out.append({"prompt": prompt, "response": "\n".join(solution_steps(nums))})
        elif kind == "steps":
            steps = solution_steps(nums) if i % 2 == 0 else corrupted_steps(nums, rng)
            check = check_response(nums, "\n".join(steps))
            out.append({"prompt": prompt, "steps": steps, "labels": check.correct})
        else:
            raise ValueError(f"kind must be prompt, sft or steps, got {kind!r}")
    return out
