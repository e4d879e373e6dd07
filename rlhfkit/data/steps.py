"""Reasoning steps inside a response: where each step ends, in characters and in tokens (process supervision).

A response is a sequence of steps separated by a delimiter (a newline by default); a step's reward or label belongs to
the token that completes the step's last character, and the final step's to the response's last token (its EOS when it
has one), so that nothing the policy writes after its last delimiter goes unrewarded. Character offsets of tokens are
read from the tokenizer's own decoding of each prefix of the ids, so they hold for any tokenizer (byte-level BPE
merges such as "2\\n" or ".\\n\\n" included) and for exactly the ids that were generated, not a re-tokenization.
Pure Python: no torch.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any, NamedTuple

__all__ = ["PrefixLengths", "StepEncoding", "encode_steps", "split_steps", "step_end_tokens", "token_char_ends"]


def split_steps(text: str, delimiter: str = "\n") -> list[tuple[int, int]]:
    """(start, end) character span of every non-blank step of `text`; `end` is just past the step's last
    non-whitespace character (trailing spaces and the delimiter are not part of a step)."""
    if not delimiter:
        raise ValueError("the step delimiter must be a non-empty string")
    spans, pos = [], 0
    while pos <= len(text):
        cut = text.find(delimiter, pos)
        stop = len(text) if cut < 0 else cut
        piece = text[pos:stop]
        if piece.strip():
            start = pos + len(piece) - len(piece.lstrip())
            spans.append((start, pos + len(piece.rstrip())))
        if cut < 0:
            break
        pos = cut + len(delimiter)
    return spans


class PrefixLengths(Sequence[int]):
    """The length of the text decoded from ids[: i + 1] (special tokens skipped, as rollout texts are decoded): the
    character offset just past token i. Computed on first use, so that finding S step ends by bisection costs
    O(S log T) decodes rather than T. Non-decreasing: a token that ends inside a multi-byte character decodes to one
    replacement character, which the token completing it replaces."""

    def __init__(self, tokenizer: Any, ids: Sequence[int]) -> None:
        self.tokenizer, self.ids = tokenizer, list(ids)
        self.cache: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def _at(self, i: int) -> int:
        if i not in self.cache:
            self.cache[i] = len(self.tokenizer.decode(self.ids[: i + 1], skip_special_tokens=True))
        return self.cache[i]

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self._at(k) for k in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        return self._at(i % len(self))


def token_char_ends(tokenizer: Any, ids: Sequence[int]) -> PrefixLengths:
    """For each token i, the character offset just past it in the decoded text (lazy; see PrefixLengths)."""
    return PrefixLengths(tokenizer, ids)


def step_end_tokens(text: str, char_ends: Sequence[int], step_ends: Sequence[int], n_tokens: int) -> list[int]:
    """Token index of each character offset in `step_ends` (ends of steps in `text`, as `split_steps` gives them).

    A step ends at the first token whose decoded prefix covers its last character; an offset with nothing but
    whitespace after it in `text` (the final step, or a whole-response score) goes to the last token, n_tokens - 1.
    char_ends: `token_char_ends` of the response's n_tokens ids (at least n_tokens entries; any non-decreasing
    sequence, read by bisection).
    """
    if n_tokens < 1:
        raise ValueError("a response without tokens has no step ends")
    out = []
    for end in step_ends:
        if not text[end:].strip():
            out.append(n_tokens - 1)
        else:
            out.append(min(bisect.bisect_left(char_ends, end, 0, n_tokens), n_tokens - 1))
    return out


class StepEncoding(NamedTuple):
    ids: list[int]
    """Prompt then completion tokens (the completion ends with EOS unless truncation cut it)."""
    positions: list[int]
    """Index in ids of each step's end token."""
    ends: list[int]
    """Each step's end character in the response."""
    seen: int
    """How many of the steps the model reads at least in part (the rest were cut off and end on the last token)."""


def encode_steps(formatter: Any, prompt: Any, response: str, delimiter: str = "\n") -> StepEncoding:
    """A prompt and a stepwise response as a process reward model reads them, in training and scoring alike.

    formatter: a ``ChatFormatter``; the completion ends with EOS, and the final step ends on it. A response that
    truncation="drop" refuses gives empty lists."""
    enc = formatter.encode_completion(prompt, response)
    if enc is None:
        return StepEncoding([], [], [], 0)
    prompt_ids, completion = enc
    ends = [end for _, end in split_steps(response, delimiter)]
    seen = formatter.tokenizer.decode(completion, skip_special_tokens=True)  # the text the model reads, maybe cut
    seen_ends = [end for _, end in split_steps(seen, delimiter)][: len(ends)]
    tokens = step_end_tokens(seen, token_char_ends(formatter.tokenizer, completion), seen_ends, len(completion))
    n_seen = len(tokens)
    tokens += [len(completion) - 1] * (len(ends) - n_seen)
    return StepEncoding(prompt_ids + completion, [len(prompt_ids) + t for t in tokens], ends, n_seen)
