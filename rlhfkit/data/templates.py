"""Tokenization with the tokenizer's own chat template: completion masks, BOS/EOS exactly once, truncation.

Assistant spans are found by encoding prefixes: the tokens of ``render(context, add_generation_prompt=True)`` must be a
prefix of ``render(context + [assistant])``; what follows, up to and including the end-of-turn EOS, is the completion.
When a template breaks that prefix property (some rewrite earlier turns), we fall back to concatenation:
``render(prompt, add_generation_prompt=True) + tokens(text) + [EOS]`` and count it in ``report.template_fallbacks``.

Tokenizers without a chat template use a plain, documented format (the same for training and sampling)::

    <BOS>System: {system}\\nUser: {user}\\nAssistant: {assistant}<EOS>\\nUser: {user}\\nAssistant:

with BOS only if the tokenizer has one; completions are ``" " + text`` then EOS.

BOS: the template's own BOS (e.g. Llama 3 writes ``{{ bos_token }}``) or, if the tokenizer prepends BOS on plain
encoding (``add_bos_token``), one BOS; never two. We tokenize rendered text with ``add_special_tokens=False`` for that
reason. Special-token strings typed inside message content are still parsed as special tokens (as
``apply_chat_template`` does); curate such rows out if that matters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rlhfkit.data.schemas import Message, PreferenceExample, SFTExample, UnpairedExample

TRUNCATION_POLICIES = ("keep_end", "drop")
_FALLBACK_ROLES = {"system": "System", "user": "User", "assistant": "Assistant"}


@dataclass
class Encoded:
    """One tokenized sequence; ``loss_mask[t] = 1`` where token t is trained on (unshifted, aligned with input_ids)."""

    input_ids: list[int]
    loss_mask: list[int]
    position_ids: list[int] | None = None  # set by packing: restarts at 0 for each packed segment
    truncated: bool = False  # the final completion was cut and has no EOS


@dataclass
class TruncationReport:
    """Counts accumulated by a ChatFormatter over every row it encoded."""

    rows: int = 0
    truncated: int = 0  # rows shortened to fit (prompt from the left and/or completion from the right)
    dropped: int = 0  # rows that did not fit under truncation="drop"
    cut_completions: int = 0  # completions cut on the right: they end without EOS
    template_fallbacks: int = 0  # rows where the chat template broke the prefix property

    def __str__(self) -> str:
        def pct(n: int) -> str:
            return f"{100.0 * n / self.rows:.1f}%" if self.rows else "0.0%"

        text = (
            f"{self.rows} rows: {self.truncated} truncated ({pct(self.truncated)}), "
            f"{self.dropped} dropped ({pct(self.dropped)}), {self.cut_completions} completions without EOS"
        )
        if self.template_fallbacks:
            text += f", {self.template_fallbacks} chat-template fallbacks"
        return text


@dataclass
class ChatFormatter:
    """Turns examples into token ids for one tokenizer and length budget.

    truncation: "keep_end" cuts the prompt from the left to ``max_prompt_length`` (keeping BOS), then the completion
    from the right to fit ``max_length``; "drop" returns None for rows that do not fit. Counts go to ``report``.
    """

    tokenizer: Any = field(repr=False)
    max_length: int
    max_prompt_length: int
    truncation: str = "keep_end"
    report: TruncationReport = field(default_factory=TruncationReport)

    def __post_init__(self) -> None:
        if self.truncation not in TRUNCATION_POLICIES:
            raise ValueError(f"truncation must be one of {TRUNCATION_POLICIES}, got {self.truncation!r}")
        if not 0 < self.max_prompt_length < self.max_length:
            raise ValueError(
                f"need 0 < max_prompt_length < max_length, got {self.max_prompt_length} and {self.max_length}"
            )
        self.eos_id: int = self.tokenizer.eos_token_id
        if self.eos_id is None:
            raise ValueError("the tokenizer has no eos_token; set one (completions must end with EOS)")
        self.bos_id: int | None = self.tokenizer.bos_token_id
        self.use_template = bool(getattr(self.tokenizer, "chat_template", None))
        probe = self.tokenizer("a")["input_ids"]
        self.tokenizer_adds_bos = self.bos_id is not None and bool(probe) and probe[0] == self.bos_id

    # ------------------------------------------------------------ public API

    def encode_sft(self, ex: SFTExample) -> Encoded | None:
        """input_ids + loss_mask (1 on every assistant turn's tokens and its EOS; not on headers or newlines)."""
        messages = list(ex.messages)
        segments = self._template_segments(messages) if self.use_template else None
        if segments is None:
            segments = self._fallback_segments(messages) if not self.use_template else self._concat_segments(messages)
        ids = [t for seg, _ in segments for t in seg]
        mask = [int(loss) for seg, loss in segments for _ in seg]
        return self._fit_sequence(ids, mask)

    def encode_prompt(self, prompt: Sequence[Message] | str) -> list[int] | None:
        """Prompt ids ending with the generation prompt (e.g. ``<|im_start|>assistant\\n``)."""
        prompt_ids = self._prompt_ids(_messages(prompt))
        self.report.rows += 1
        if len(prompt_ids) <= self.max_prompt_length:
            return prompt_ids
        if self.truncation == "drop":
            self.report.dropped += 1
            return None
        self.report.truncated += 1
        return self._truncate_prompt(prompt_ids)

    def split_prompt(self, prompt: Sequence[Message] | str, marker: str) -> tuple[list[int], list[int]]:
        """(ids before, ids after) `marker`, a string the prompt's last message contains, in the rendered prompt
        (generation prompt included), each side tokenized alone and BOS once at the start: where tokens can be
        inserted into the prompt (an adversarial suffix). Not truncated."""
        messages = _messages(prompt)
        if self.use_template:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:  # the fallback format of _fallback_segments, with an empty assistant turn
            text = "".join(f"{_FALLBACK_ROLES[m['role']]}: {m['content']}\n" for m in messages) + "Assistant:"
        head, found, tail = text.partition(marker)
        if not found:
            raise ValueError(f"split_prompt: the rendered prompt does not contain the marker {marker!r}")
        before = self._tokens(head)
        if self.use_template:
            before = self._with_bos(before)
        elif self.bos_id is not None:
            before = [self.bos_id] + before
        return before, self._tokens(tail)

    def encode_completion(self, prompt: Sequence[Message] | str, text: str) -> tuple[list[int], list[int]] | None:
        """(prompt_ids, completion_ids); the completion ends with exactly one EOS unless it was cut to fit."""
        prompt_ids = self._prompt_ids(_messages(prompt))
        fitted = self._fit_completions(prompt_ids, [self._completion_ids(_messages(prompt), prompt_ids, text)])
        return None if fitted is None else (fitted[0], fitted[1][0])

    def encode_pair(self, ex: PreferenceExample) -> tuple[list[int], list[int], list[int]] | None:
        """(prompt_ids, chosen_ids, rejected_ids) sharing one prompt; dropped if either side does not fit."""
        prompt = list(ex.prompt)
        prompt_ids = self._prompt_ids(prompt)
        chosen = self._completion_ids(prompt, prompt_ids, ex.chosen)
        rejected = self._completion_ids(prompt, prompt_ids, ex.rejected)
        fitted = self._fit_completions(prompt_ids, [chosen, rejected])
        return None if fitted is None else (fitted[0], fitted[1][0], fitted[1][1])

    def encode_unpaired(self, ex: UnpairedExample) -> tuple[list[int], list[int]] | None:
        return self.encode_completion(ex.prompt, ex.response)

    # ------------------------------------------------------------ rendering

    def _tokens(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _with_bos(self, ids: list[int]) -> list[int]:
        """Exactly one leading BOS when the template writes one or the tokenizer would add one; never two."""
        if self.bos_id is None:
            return ids
        start = 0
        while start + 1 < len(ids) and ids[start] == ids[start + 1] == self.bos_id:
            start += 1
        ids = ids[start:]
        if self.tokenizer_adds_bos and (not ids or ids[0] != self.bos_id):
            ids = [self.bos_id] + ids
        return ids

    def _render(self, messages: list[Message], generation_prompt: bool) -> list[int]:
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
        return self._with_bos(self._tokens(text))

    def _prompt_ids(self, prompt: list[Message]) -> list[int]:
        if self.use_template:
            return self._render(prompt, generation_prompt=True)
        # An empty assistant turn renders as the bare generation prompt "...Assistant:".
        segments = self._fallback_segments(prompt + [{"role": "assistant", "content": ""}])
        return [t for seg, _ in segments for t in seg]

    def _end_with_eos(self, ids: list[int]) -> list[int]:
        """Cut after the last EOS (drops the template's trailing newline), collapse doubled EOS, add a missing one."""
        if self.eos_id in ids:
            ids = ids[: len(ids) - ids[::-1].index(self.eos_id)]
            while len(ids) >= 2 and ids[-2] == self.eos_id:  # content that already ended in EOS text
                ids = ids[:-1]
            return ids
        return ids + [self.eos_id]

    def _completion_ids(self, prompt: list[Message], prompt_ids: list[int], text: str) -> list[int]:
        if not self.use_template:
            return self._end_with_eos(self._tokens(" " + text))
        full = self._render(prompt + [{"role": "assistant", "content": text}], generation_prompt=False)
        if full[: len(prompt_ids)] == prompt_ids and len(full) > len(prompt_ids):
            return self._end_with_eos(full[len(prompt_ids) :])
        self.report.template_fallbacks += 1
        return self._end_with_eos(self._tokens(text))

    def _template_segments(self, messages: list[Message]) -> list[tuple[list[int], bool]] | None:
        """Split the rendered conversation into (ids, is_completion) runs; None if the prefix property fails."""
        full = self._render(messages, generation_prompt=False)
        segments: list[tuple[list[int], bool]] = []
        pos = 0
        for k, msg in enumerate(messages):
            if msg["role"] != "assistant":
                continue
            if k == 0:
                return None  # nothing to render as a generation prompt
            before = self._render(messages[:k], generation_prompt=True)
            through = self._render(messages[: k + 1], generation_prompt=False)
            if len(before) < pos or full[: len(through)] != through or through[: len(before)] != before:
                return None
            span = through[len(before) :]
            segments.append((full[pos : len(before)], False))
            if self.eos_id in span:
                # Train up to and including the end-of-turn EOS, not the newline the template writes after it.
                completion = self._end_with_eos(span)  # a prefix of span
                segments.append((completion, True))
                pos = len(before) + len(completion)
            else:  # the template wrote no EOS: insert one so the turn still ends
                segments.append((span + [self.eos_id], True))
                pos = len(through)
        segments.append((full[pos:], False))
        return segments

    def _concat_segments(self, messages: list[Message]) -> list[tuple[list[int], bool]]:
        """Fallback for templates without the prefix property: train on the final assistant turn only."""
        self.report.template_fallbacks += 1
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        prompt_ids = self._render(messages[:last], generation_prompt=True) if last else self._with_bos([])
        return [(prompt_ids, False), (self._end_with_eos(self._tokens(messages[last]["content"])), True)]

    def _fallback_segments(self, messages: list[Message]) -> list[tuple[list[int], bool]]:
        """The plain format of the module docstring, built from pieces so the masks are exact by construction."""
        segments: list[tuple[list[int], bool]] = []
        context = ""
        first = True
        for msg in messages:
            if msg["role"] != "assistant":
                context += f"{_FALLBACK_ROLES[msg['role']]}: {msg['content']}\n"
                continue
            ids = self._tokens(context + "Assistant:")
            if first and self.bos_id is not None:
                ids = [self.bos_id] + ids
            first = False
            segments.append((ids, False))
            if msg["content"]:
                segments.append((self._end_with_eos(self._tokens(" " + msg["content"])), True))
            context = "\n"
        if context.strip():  # trailing non-assistant turns (the bare "\n" after the last EOS is not kept)
            segments.append((self._tokens(context), False))
        return segments

    # ------------------------------------------------------------ truncation

    def _truncate_prompt(self, ids: list[int]) -> list[int]:
        limit = self.max_prompt_length
        if len(ids) <= limit:
            return ids
        if self.bos_id is not None and ids and ids[0] == self.bos_id and limit >= 2:
            return [self.bos_id] + ids[len(ids) - (limit - 1) :]  # keep BOS: models are trained with it first
        return ids[len(ids) - limit :]

    def _fit_completions(
        self, prompt_ids: list[int], completions: list[list[int]]
    ) -> tuple[list[int], list[list[int]]] | None:
        self.report.rows += 1
        too_long = len(prompt_ids) > self.max_prompt_length or any(
            len(prompt_ids) + len(c) > self.max_length for c in completions
        )
        if not too_long:
            return prompt_ids, completions
        if self.truncation == "drop":
            self.report.dropped += 1
            return None
        self.report.truncated += 1
        prompt_ids = self._truncate_prompt(prompt_ids)
        budget = self.max_length - len(prompt_ids)
        self.report.cut_completions += sum(len(c) > budget for c in completions)
        return prompt_ids, [c[:budget] for c in completions]

    def _fit_sequence(self, ids: list[int], mask: list[int]) -> Encoded | None:
        """SFT: the prompt is everything before the first trained token."""
        self.report.rows += 1
        first = mask.index(1) if 1 in mask else len(ids)
        if first <= self.max_prompt_length and len(ids) <= self.max_length:
            return Encoded(ids, mask)
        if self.truncation == "drop":
            self.report.dropped += 1
            return None
        self.report.truncated += 1
        if first > self.max_prompt_length:
            kept = self._truncate_prompt(ids[:first])
            mask = [0] * len(kept) + mask[first:]
            ids = kept + ids[first:]
        cut = len(ids) > self.max_length and 1 in mask[self.max_length :]
        self.report.cut_completions += int(cut)
        return Encoded(ids[: self.max_length], mask[: self.max_length], truncated=cut)


def _messages(prompt: Sequence[Message] | str) -> list[Message]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
