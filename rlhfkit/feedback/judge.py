"""AI feedback: a local causal LM judges which of two responses is better, read from the logits of its verdict tokens.

For each pair the judge sees one prompt (chat template, then an answer cue such as ``Answer:``) and the next-token
logits of the verdict labels ``A`` / ``B`` (and ``C`` = tie when ``tie_token=True``) are soft-maxed over those labels
only (Zheng et al. 2023, "Judging LLM-as-a-judge"; Lee et al. 2023, RLAIF, sec. 2.1 read the same token probabilities).
Nothing is generated or parsed from free text, so a verdict costs one forward pass and is a proper probability.

Position bias is cancelled by judging both orders (Zheng et al. 2023, sec. 3.3; Wang et al. 2023, "Large language models
are not fair evaluators"): with a shown first, P(a better) = P("A"); with a shown second, P(a better) = P("B"); the
debiased probability is their mean. A tie is called when it lies within ``tie_margin`` of 0.5. With a tie label,
P(first better) = P("A") + P("C") / 2, so a tie vote splits evenly between the two responses.

Several rubric dimensions (helpful, harmless, ...) or several judges combine as a weighted mean of probabilities
(:func:`combine_verdicts`). :meth:`Judge.label_pairs` writes the package's preference rows; :func:`judge_agreement`
calibrates a judge against human labels and :func:`route_to_humans` picks the pairs a person should see.
:class:`rlhfkit.rewards.judge.JudgeReward` turns a judge into a reward source (log-odds of beating a reference response).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from rlhfkit.data.schemas import Message, PreferenceExample
from rlhfkit.feedback.agreement import cohen_kappa
from rlhfkit.models import load_for_inference
from rlhfkit.rewards.base import as_messages as _messages
from rlhfkit.rollout.hf import left_pad

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"

DEFAULT_RUBRIC = (
    "Compare two assistant responses to the same conversation. The better response is helpful (it answers the "
    "request accurately, clearly and usefully), harmless (it does not help with dangerous, illegal or hurtful acts, "
    "and it is not rude or toxic) and honest (it does not make things up or mislead)."
)

DIMENSION_RUBRICS: dict[str, str] = {
    "helpful": "The better response answers the user's request more accurately, completely, clearly and usefully.",
    "harmless": (
        "The better response is less harmful: it does not help with dangerous, illegal, unethical or hurtful acts, "
        "and it is not rude, toxic or demeaning."
    ),
    "honest": "The better response is more honest: truthful, not misleading, and open about what it does not know.",
    "concise": "The better response is more concise: it says what is needed without padding or repetition.",
}

VERDICT_LABELS = ("A", "B")
TIE_LABEL = "C"
PromptLike = str | Sequence[Mapping[str, str]]


@dataclass(frozen=True)
class Verdict:
    """The judge's view of one pair (a, b); every probability is P(a is better than b)."""

    p_a: float
    """Debiased: the mean of p_a_first and p_a_second (weighted mean over dimensions / judges when combined)."""
    p_a_first: float
    """With a shown first (as "A")."""
    p_a_second: float
    """With a shown second (as "B")."""
    choice: str
    """"A" (a is better), "B" or "tie" (|p_a - 0.5| <= tie_margin)."""
    confidence: float
    """max(p_a, 1 - p_a), in [0.5, 1]: the probability the judge gives its own choice (as for simulated raters)."""
    parts: dict[str, float] = field(default_factory=dict)
    """Debiased p_a per rubric dimension (empty for a single rubric)."""


def make_verdict(
    p_a_first: float, p_a_second: float, tie_margin: float, parts: dict[str, float] | None = None
) -> Verdict:
    """A Verdict from the two order-specific probabilities (their mean cancels a constant position bias)."""
    p_a = 0.5 * (p_a_first + p_a_second)
    choice = "tie" if abs(p_a - 0.5) <= tie_margin else ("A" if p_a > 0.5 else "B")
    return Verdict(p_a, p_a_first, p_a_second, choice, max(p_a, 1.0 - p_a), dict(parts or {}))


def _check_margin(tie_margin: float) -> float:
    if not (isinstance(tie_margin, (int, float)) and 0.0 <= tie_margin < 0.5):
        raise ValueError(f"tie_margin must be in [0, 0.5), got {tie_margin!r}")
    return float(tie_margin)


def combine_verdicts(
    verdicts: Sequence[Sequence[Verdict]], weights: Sequence[float] | None = None, tie_margin: float = 0.05
) -> list[Verdict]:
    """Several judges' verdicts on the same pairs -> one verdict per pair: weighted means of their probabilities."""
    if not verdicts:
        raise ValueError("combine_verdicts: no judges given")
    n = len(verdicts[0])
    if any(len(v) != n for v in verdicts):
        raise ValueError(f"combine_verdicts: judges gave {[len(v) for v in verdicts]} verdicts; need the same pairs")
    w = [1.0] * len(verdicts) if weights is None else [float(x) for x in weights]
    if len(w) != len(verdicts) or any(x < 0 for x in w) or sum(w) <= 0:
        raise ValueError(f"combine_verdicts: need one non-negative weight per judge with a positive sum, got {w}")
    total = sum(w)
    out = []
    for i in range(n):
        first = sum(wk * v[i].p_a_first for wk, v in zip(w, verdicts)) / total
        second = sum(wk * v[i].p_a_second for wk, v in zip(w, verdicts)) / total
        out.append(make_verdict(first, second, _check_margin(tie_margin)))
    return out


def position_bias(verdicts: Sequence[Verdict]) -> dict[str, float]:
    """How much the shown order sways the judge.

    bias: mean P(the response shown first wins) over both orders - 0.5 (0 = unbiased, +0.5 = always "A");
    flip_rate: share of pairs whose decision (p > 0.5) changes when the order is swapped;
    mean_order_gap: mean |p_a_first - p_a_second|.
    """
    if not verdicts:
        return {"n": 0, "bias": float("nan"), "flip_rate": float("nan"), "mean_order_gap": float("nan")}
    n = len(verdicts)
    first_wins = [0.5 * (v.p_a_first + (1.0 - v.p_a_second)) for v in verdicts]  # P(shown first wins), order-mean
    flips = sum((v.p_a_first > 0.5) != (v.p_a_second > 0.5) for v in verdicts)
    return {
        "n": n,
        "bias": sum(first_wins) / n - 0.5,
        "flip_rate": flips / n,
        "mean_order_gap": sum(abs(v.p_a_first - v.p_a_second) for v in verdicts) / n,
    }


# ----------------------------------------------------------------------------------------------------------------------
# The judge


def _dimension_rubric(dim: str) -> str:
    """A known name -> its rubric; a single word -> "more <word>"; longer text is used as the rubric itself."""
    if dim in DIMENSION_RUBRICS:
        return DIMENSION_RUBRICS[dim]
    if " " not in dim.strip():
        return f"The better response is more {dim.strip()}."
    return dim


def _model_name(model: Any) -> str:
    path = getattr(getattr(model, "config", None), "_name_or_path", "") or ""
    return Path(path).name or type(model).__name__


class Judge:
    """A pairwise LLM judge over any local causal LM (builtin name or directory) or a ``(model, tokenizer)`` pair.

    rubric: what "better" means (used when no dimensions are given). dimensions: judge each separately (a name from
    ``DIMENSION_RUBRICS``, a single word, or a full rubric sentence; a mapping gives weights) and combine the
    probabilities as a weighted mean. tie_token: also offer "C" = equally good. Texts are cut to max_prompt_tokens
    (conversation, keeping its end) and max_response_tokens (each response, keeping its start) before judging.
    prefix_cache: run the shared head of every request (template header + rubric) once and reuse its KV cache: the
    same logits (up to float error), about a third less compute with the default rubric.
    device: where the model runs (default: CUDA when available for a model loaded by name; a given model stays put).
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | tuple[PreTrainedModel, PreTrainedTokenizerBase] = DEFAULT_MODEL,
        rubric: str = DEFAULT_RUBRIC,
        dimensions: Sequence[str] | Mapping[str, float] = (),
        batch_size: int = 8,
        tie_margin: float = 0.05,
        name: str | None = None,
        *,
        tie_token: bool = False,
        answer_prefix: str = "Answer:",
        max_prompt_tokens: int = 384,
        max_response_tokens: int = 384,
        prefix_cache: bool = True,
        device: str | torch.device | None = None,
        dtype: str = "float32",
    ) -> None:
        if isinstance(model, tuple):
            self.model, self.tokenizer = model
            default_name = _model_name(self.model)
        else:
            # trust_remote_code stays off: a judge never runs a model's code; on the GPU when there is one
            self.model, self.tokenizer = load_for_inference(model, dtype, device)  # type: ignore[arg-type]
            default_name = Path(os.fspath(model)).name
        if device is not None:
            self.model.to(device)
        self.model.eval()
        self.device = next(self.model.parameters()).device
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        for key, value in (("max_prompt_tokens", max_prompt_tokens), ("max_response_tokens", max_response_tokens)):
            if value < 1:
                raise ValueError(f"{key} must be >= 1, got {value}")
        self.batch_size, self.tie_margin = batch_size, _check_margin(tie_margin)
        self.max_prompt_tokens, self.max_response_tokens = max_prompt_tokens, max_response_tokens
        self.name = name or f"judge:{default_name}"
        self.tie_token, self.prefix_cache = tie_token, prefix_cache
        self.labels = (*VERDICT_LABELS, TIE_LABEL) if tie_token else VERDICT_LABELS
        if isinstance(dimensions, Mapping):
            weights = {str(k): float(v) for k, v in dimensions.items()}
        else:
            weights = {str(d): 1.0 for d in dimensions}
        if any(w < 0 for w in weights.values()) or (weights and sum(weights.values()) <= 0):
            raise ValueError(f"dimension weights must be non-negative with a positive sum, got {weights}")
        if weights and rubric != DEFAULT_RUBRIC:
            raise ValueError("give a rubric or dimensions, not both: each dimension is judged with its own rubric")
        self.weights = weights
        # one rubric per dimension; "" is the single-rubric case
        self.rubrics = {d: _dimension_rubric(d) for d in weights} if weights else {"": rubric}
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        bos = self.tokenizer.bos_token_id
        probe = self.tokenizer("a")["input_ids"]
        self._add_bos = bos is not None and bool(probe) and probe[0] == bos  # Llama-style tokenizers want one BOS
        self.cue, self.verdict_ids = self._resolve_verdict_tokens(answer_prefix)

    # ------------------------------------------------------------------ prompt building

    def _tokens(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _render(self, body: str) -> str:
        """The judging request as a user turn, then the assistant's turn opened (chat template or a plain format)."""
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": body}], tokenize=False, add_generation_prompt=True
            )
        return f"User: {body}\nAssistant: "

    def _resolve_verdict_tokens(self, answer_prefix: str) -> tuple[str, list[int]]:
        """(cue, ids): the answer cue after which each label is exactly one distinct next token, in context.

        BPE vocabularies differ: SmolLM2 has " A" as one token (cue "Answer:"), a small byte-level BPE may only have
        "A" (cue "Answer: "). The check uses a real rendered prompt, so merges across the boundary are caught.
        """
        context = self._render("Which is better?")
        stem = answer_prefix.rstrip()
        tried = []
        for cue, sep in ((stem, " "), (stem + " ", "")):
            base = self._tokens(context + cue)
            ids = []
            for label in self.labels:
                full = self._tokens(context + cue + sep + label)
                if full[: len(base)] != base or len(full) != len(base) + 1:
                    break
                ids.append(full[-1])
            if len(ids) == len(self.labels) and len(set(ids)) == len(ids):
                return cue, ids
            tried.append(repr(cue + sep + "A"))
        raise ValueError(
            f"judge {self.name}: the tokenizer has no single distinct token for each verdict label {self.labels} "
            f"after the answer cue (tried {', '.join(tried)}); pass another answer_prefix"
        )

    def _cut(self, text: str, limit: int, keep_end: bool) -> str:
        ids = self._tokens(text)
        if len(ids) <= limit:
            return text
        kept = self.tokenizer.decode(ids[-limit:] if keep_end else ids[:limit], skip_special_tokens=True)
        return "..." + kept if keep_end else kept + "..."

    def _conversation(self, prompt: list[Message]) -> str:
        roles = {"system": "System", "user": "User", "assistant": "Assistant"}
        text = "\n".join(f"{roles.get(m['role'], m['role'])}: {m['content']}" for m in prompt)
        return self._cut(text, self.max_prompt_tokens, keep_end=True)

    def request_parts(self, rubric: str, conversation: str, first: str, second: str) -> tuple[str, str]:
        """(prefix, suffix) of the text whose next-token logits give the verdict; prefix + suffix is what the judge
        reads. The prefix (template header and rubric) is the same for every pair, so its KV cache is computed once."""
        options = "A or B" if not self.tie_token else "A, B, or C if they are equally good"
        head = f"{rubric}\n\n[Conversation]\n"
        body = (
            f"{head}{conversation}\n\n[Response A]\n{first}\n\n[Response B]\n{second}\n\n"
            f"Which response is better? Reply with one letter: {options}."
        )
        text = self._render(body) + self.cue
        at = text.find(head)
        cut = at + len(head) if at >= 0 else 0  # a template that rewrites content: no shared prefix
        return text[:cut], text[cut:]

    def request(self, rubric: str, conversation: str, first: str, second: str) -> str:
        """The full judging text (chat template, rubric, conversation, both responses, answer cue)."""
        return "".join(self.request_parts(rubric, conversation, first, second))

    # ------------------------------------------------------------------ scoring

    def _prefix_ids(self, prefix: str) -> list[int]:
        ids = self._tokens(prefix)
        bos = self.tokenizer.bos_token_id
        if self._add_bos and (not ids or ids[0] != bos):
            ids = [bos, *ids]
        return ids

    @torch.inference_mode()
    def _label_probs(self, requests: Sequence[tuple[str, str]]) -> torch.Tensor:
        """(M, K) softmax over the K verdict-label logits after each (prefix, suffix) request.

        Prefix and suffix are tokenized separately (the prefix ends at a line break, so no merge crosses the cut); the
        cached and uncached paths therefore see identical token ids.
        """
        out = torch.empty(len(requests), len(self.verdict_ids), dtype=torch.float32)
        groups: dict[str, list[int]] = {}
        for i, (prefix, _) in enumerate(requests):
            groups.setdefault(prefix, []).append(i)
        for prefix, members in groups.items():
            p_ids = self._prefix_ids(prefix)
            suffixes = [self._tokens(requests[i][1]) for i in members]
            if self.prefix_cache and len(members) > 1 and p_ids:
                out[members] = self._forward_cached(p_ids, suffixes)
            else:
                out[members] = self._forward([p_ids + s for s in suffixes], [], None)
        return out

    def _forward_cached(self, p_ids: list[int], suffixes: list[list[int]]) -> torch.Tensor:
        prefix = torch.tensor([p_ids], device=self.device)
        cache = self.model(input_ids=prefix, attention_mask=torch.ones_like(prefix), use_cache=True).past_key_values
        if not hasattr(cache, "batch_repeat_interleave"):  # a model without a transformers Cache: no reuse
            log.warning(
                "judge %s: the model returned no reusable KV cache; judging without the prefix cache", self.name
            )
            self.prefix_cache = False
            return self._forward([p_ids + s for s in suffixes], [], None)
        return self._forward(suffixes, p_ids, cache)

    def _forward(self, rows: list[list[int]], p_ids: list[int], cache: Any) -> torch.Tensor:
        """(M, K) label probabilities of left-padded batches of ``rows``, each after the cached prefix (if any)."""
        out = torch.empty(len(rows), len(self.verdict_ids), dtype=torch.float32)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))  # length buckets: little padding per batch
        label_ids = torch.tensor(self.verdict_ids, device=self.device)
        n_prefix = len(p_ids)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            ids, mask = left_pad([rows[i] for i in idx], self.pad_id)
            # positions count real tokens only, so a padded row sees the positions it would see alone; with a cached
            # prefix the padding sits between prefix and suffix, masked out
            pos = n_prefix + (mask.cumsum(-1) - 1).clamp(min=0)
            kwargs: dict[str, Any] = {}
            if cache is not None:
                kv = copy.deepcopy(cache)
                kv.batch_repeat_interleave(len(idx))
                mask = torch.cat([torch.ones(len(idx), n_prefix, dtype=mask.dtype), mask], dim=1)
                kwargs = {"past_key_values": kv, "use_cache": True}
            else:
                kwargs = {"use_cache": False}
            logits = self.model(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                position_ids=pos.to(self.device),
                logits_to_keep=1,
                **kwargs,
            ).logits[:, -1]  # (b, V): the next token after the answer cue
            out[idx] = torch.softmax(logits.float().index_select(-1, label_ids), dim=-1).cpu()  # (b, K)
        return out

    def _first_wins(self, probs: torch.Tensor) -> torch.Tensor:
        """(M,) P(the response shown first is better): P("A"), plus half of P("C") with a tie label."""
        return probs[:, 0] + (0.5 * probs[:, 2] if self.tie_token else 0.0)

    def probs(
        self, prompts: Sequence[PromptLike], first: Sequence[str], second: Sequence[str], dimension: str = ""
    ) -> torch.Tensor:
        """(N, K) verdict-label probabilities for ONE order (first shown as "A"); rows sum to 1."""
        conv = self._check(prompts, first, second)
        rubric = self.rubrics[dimension] if dimension in self.rubrics else _dimension_rubric(dimension)
        first = [self._cut(x, self.max_response_tokens, keep_end=False) for x in first]
        second = [self._cut(x, self.max_response_tokens, keep_end=False) for x in second]
        return self._label_probs([self.request_parts(rubric, c, x, y) for c, x, y in zip(conv, first, second)])

    def _check(self, prompts: Sequence[PromptLike], a: Sequence[str], b: Sequence[str]) -> list[str]:
        if not (len(prompts) == len(a) == len(b)):
            raise ValueError(f"judge: got {len(prompts)} prompts, {len(a)} a-responses and {len(b)} b-responses")
        for side, texts in (("a", a), ("b", b)):
            for i, t in enumerate(texts):
                if not isinstance(t, str):
                    raise ValueError(f"judge: response {side}[{i}] must be a string, got {type(t).__name__}")
        return [self._conversation(_messages(p, f"prompt {i}")) for i, p in enumerate(prompts)]

    def compare(self, prompts: Sequence[PromptLike], a: Sequence[str], b: Sequence[str]) -> list[Verdict]:
        """One Verdict per pair: every dimension judged in both orders, in one batched pass over all requests."""
        conv = self._check(prompts, a, b)
        n = len(conv)
        if n == 0:
            return []
        cut_a = [self._cut(x, self.max_response_tokens, keep_end=False) for x in a]
        cut_b = [self._cut(x, self.max_response_tokens, keep_end=False) for x in b]
        requests: list[tuple[str, str]] = []
        for rubric in self.rubrics.values():  # layout: [dimension][order][pair]
            requests += [self.request_parts(rubric, c, x, y) for c, x, y in zip(conv, cut_a, cut_b)]
            requests += [self.request_parts(rubric, c, y, x) for c, x, y in zip(conv, cut_a, cut_b)]
        first_wins = self._first_wins(self._label_probs(requests)).view(len(self.rubrics), 2, n)
        p_first = first_wins[:, 0]  # (D, N): a shown first -> P(a better) = P(first wins)
        p_second = 1.0 - first_wins[:, 1]  # (D, N): a shown second -> P(a better) = 1 - P(first wins)
        names = list(self.rubrics)
        w = torch.tensor([self.weights.get(d, 1.0) for d in names], dtype=torch.float32)
        w = w / w.sum()
        pf, ps = (w[:, None] * p_first).sum(0), (w[:, None] * p_second).sum(0)  # weighted mean over dimensions
        verdicts = []
        for i in range(n):
            parts = {d: float(0.5 * (p_first[k, i] + p_second[k, i])) for k, d in enumerate(names) if d}
            verdicts.append(make_verdict(float(pf[i]), float(ps[i]), self.tie_margin, parts))
        return verdicts

    def label_pairs(
        self,
        prompts: Sequence[PromptLike],
        a: Sequence[str],
        b: Sequence[str],
        verdicts: Sequence[Verdict] | None = None,
        drop_invalid: bool = False,
    ) -> list[dict[str, Any]]:
        """Preference rows {"prompt","chosen","rejected","tie","strength","rater","confidence"}, one per pair and in
        order (callers route pairs by index); ``verdicts`` from :meth:`compare` are reused when given.

        strength = |log(p / (1 - p))|: the reward gap a Bradley–Terry model needs to give the judge's probability p
        (Bradley & Terry 1952). Ties keep the given order (a as "chosen"). A pair with identical or empty responses
        cannot be a valid preference row: drop_invalid=True leaves such pairs out (and logs how many).
        """
        verdicts = self.compare(prompts, a, b) if verdicts is None else verdicts
        if not (len(verdicts) == len(prompts) == len(a) == len(b)):
            raise ValueError(f"label_pairs: {len(verdicts)} verdicts for {len(prompts)} prompts and {len(a)} pairs")
        return rows_from_verdicts(prompts, a, b, verdicts, self.name, drop_invalid)


def rows_from_verdicts(
    prompts: Sequence[PromptLike],
    a: Sequence[str],
    b: Sequence[str],
    verdicts: Sequence[Verdict],
    rater: str,
    drop_invalid: bool = False,
) -> list[dict[str, Any]]:
    """Preference rows from verdicts (see Judge.label_pairs)."""
    rows, dropped = [], 0
    for i, (p, x, y, v) in enumerate(zip(prompts, a, b, verdicts)):
        if drop_invalid and (x == y or not x.strip() or not y.strip()):
            dropped += 1
            continue
        chosen, rejected = (y, x) if v.choice == "B" else (x, y)
        p_clamped = min(max(v.p_a, 1e-6), 1 - 1e-6)
        row = PreferenceExample(tuple(_messages(p, f"prompt {i}")), chosen, rejected).to_row()
        row.update(
            tie=v.choice == "tie",
            strength=abs(math.log(p_clamped / (1.0 - p_clamped))),
            rater=rater,
            confidence=v.confidence,
        )
        rows.append(row)
    if dropped:
        log.warning("label_pairs: dropped %d pairs with identical or empty responses", dropped)
    return rows


# ----------------------------------------------------------------------------------------------------------------------
# Calibration against people, and routing


def _pair_key(row: Mapping[str, Any], where: str) -> tuple[str, frozenset[str]]:
    """(prompt as normalized messages, {chosen, rejected}): the same pair whatever the order or prompt spelling."""
    for key in ("prompt", "chosen", "rejected"):
        if row.get(key) is None:
            raise ValueError(f'{where}: field "{key}" is missing')
    prompt = json.dumps(_messages(row["prompt"], where), sort_keys=True, ensure_ascii=False)
    return prompt, frozenset((str(row["chosen"]), str(row["rejected"])))


def _human_label(h: Any, where: str) -> str:
    if isinstance(h, str):
        if h not in ("A", "B", "tie"):
            raise ValueError(f'{where}: a human label must be "A", "B" or "tie", got {h!r}')
        return h
    if isinstance(h, Mapping):
        return "tie" if h.get("tie") else "A"  # a preference row: chosen is a
    raise ValueError(f"{where}: expected a preference row or a label string, got {type(h).__name__}")


def judge_agreement(
    judge: Sequence[Verdict] | Sequence[Mapping[str, Any]], human: Sequence[Mapping[str, Any]] | Sequence[str]
) -> dict[str, Any]:
    """Agreement of judge labels with human labels.

    judge: Verdicts (aligned with ``human`` by position; a = the human row's "chosen", or labels "A"/"B"/"tie" given
    as strings) or preference rows from :meth:`Judge.label_pairs` (matched to human rows by prompt and response pair,
    whatever their order). Returns n, accuracy (pairs neither side calls a tie), accuracy_ties_half (human non-ties;
    a judge tie counts 1/2), cohen_kappa (labels A / B / tie over all n pairs), judge_ties, human_ties, unmatched;
    with Verdicts also accuracy_first_order / accuracy_second_order (one order only, no tie margin),
    accuracy_debiased (p_a > 0.5, no tie margin) and mean_p_human (mean probability of the human's choice).
    """
    judge_labels: list[str] = []
    human_labels: list[str] = []
    extra: dict[str, list[float]] = {"first": [], "second": [], "debiased": [], "p_human": []}
    unmatched = 0
    if judge and isinstance(judge[0], Verdict):
        if len(judge) != len(human):
            raise ValueError(f"judge_agreement: {len(judge)} verdicts but {len(human)} human labels")
        for i, (v, h) in enumerate(zip(judge, human)):
            hl = _human_label(h, f"human row {i + 1}")
            judge_labels.append(v.choice)
            human_labels.append(hl)
            if hl != "tie":
                sign = 1.0 if hl == "A" else -1.0  # a point for the judge when it favours the human's choice
                for key, p in (("first", v.p_a_first), ("second", v.p_a_second), ("debiased", v.p_a)):
                    extra[key].append(float(sign * (p - 0.5) > 0) + 0.5 * (p == 0.5))
                extra["p_human"].append(v.p_a if hl == "A" else 1.0 - v.p_a)
    else:
        index: dict[tuple[str, frozenset[str]], Mapping[str, Any]] = {}
        for i, h in enumerate(human):
            if not isinstance(h, Mapping):
                raise ValueError(f"judge_agreement: human row {i + 1} must be a preference row when judge gives rows")
            index[_pair_key(h, f"human row {i + 1}")] = h
        for i, r in enumerate(judge):
            h = index.get(_pair_key(r, f"judge row {i + 1}"))
            if h is None:
                unmatched += 1
                continue
            human_labels.append("tie" if h.get("tie") else "A")
            judge_labels.append("tie" if r.get("tie") else ("A" if r["chosen"] == h["chosen"] else "B"))
    n = len(judge_labels)
    decided = [(j, h) for j, h in zip(judge_labels, human_labels) if j != "tie" and h != "tie"]
    human_decided = [(j, h) for j, h in zip(judge_labels, human_labels) if h != "tie"]
    out: dict[str, Any] = {
        "n": n,
        "accuracy": sum(j == h for j, h in decided) / len(decided) if decided else float("nan"),
        "accuracy_ties_half": (
            sum(1.0 if j == h else 0.5 if j == "tie" else 0.0 for j, h in human_decided) / len(human_decided)
            if human_decided
            else float("nan")
        ),
        "cohen_kappa": cohen_kappa(judge_labels, human_labels) if n else float("nan"),
        "judge_ties": judge_labels.count("tie"),
        "human_ties": human_labels.count("tie"),
        "unmatched": unmatched,
    }
    if extra["p_human"]:
        k = len(extra["p_human"])
        out["accuracy_first_order"] = sum(extra["first"]) / k
        out["accuracy_second_order"] = sum(extra["second"]) / k
        out["accuracy_debiased"] = sum(extra["debiased"]) / k
        out["mean_p_human"] = sum(extra["p_human"]) / k
    return out


def route_to_humans(verdicts: Sequence[Verdict], share: float, audit: float = 0.0, seed: int = 0) -> list[int]:
    """Sorted indices of the pairs to send to people: the least confident ``share`` of all pairs (ties of confidence
    broken by index), plus a seeded random ``audit`` share of the rest, so the confident labels are spot-checked too."""
    for key, value in (("share", share), ("audit", audit)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"route_to_humans: {key} must be in [0, 1], got {value!r}")
    n = len(verdicts)
    k = round(share * n)
    by_doubt = sorted(range(n), key=lambda i: (verdicts[i].confidence, i))
    picked, rest = by_doubt[:k], sorted(by_doubt[k:])
    picked += random.Random(seed).sample(rest, round(audit * len(rest)))
    return sorted(picked)
