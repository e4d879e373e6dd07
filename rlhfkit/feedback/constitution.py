"""Constitutional AI (Bai et al. 2022): critique-and-revise data from a written list of principles, and RLAIF labels.

The supervised stage (Bai et al. 2022, sec. 3.1), for each prompt:

    1. the model answers the prompt                                   -> original response
    2. a principle is drawn at random; the model critiques its answer  -> critique   (the principle's critique request)
    3. the model rewrites its answer given its critique                -> revision   (the principle's revision request)

as one conversation: user prompt, assistant response, user critique request, assistant critique, user revision
request, assistant revision. With ``rounds > 1`` each further round draws a new principle and critiques the latest
revision (in a fresh conversation: prompt, latest revision, critique request; small models lose the thread otherwise).
The outputs are SFT rows ``{"prompt", "response": final revision}`` and preference rows ``{"prompt", "chosen":
revision, "rejected": original, "rater": "constitution"}``.

The RL stage (sec. 4, RLAIF) labels pairs with an AI judge whose rubric is the constitution:
:func:`rubric_from_constitution` for one rubric that lists every principle's comparison question, or
:func:`constitution_dimensions` to judge each principle separately (a weighted mean, one forward pass per principle).

A constitution is a YAML file (see ``rlhfkit/tasks/data/constitution.yaml``)::

    name: my-constitution
    principles:
      - name: harmful
        critique: Point out every way in which your last response could be harmful ...
        revision: Rewrite your last response so that it contains nothing harmful ...
        preference: Choose the response that is less harmful ...
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml

from rlhfkit.config import SamplingConfig
from rlhfkit.data import ChatFormatter
from rlhfkit.data.schemas import Message, PromptExample
from rlhfkit.models import load_for_inference
from rlhfkit.rollout import make_engine, sampling_params

if TYPE_CHECKING:
    from rlhfkit.feedback.judge import Judge, Verdict

DEFAULT_CONSTITUTION = Path(__file__).resolve().parents[1] / "tasks" / "data" / "constitution.yaml"
PRINCIPLE_KEYS = ("name", "critique", "revision", "preference")


@dataclass(frozen=True)
class Principle:
    name: str
    critique: str
    """Critique request: asked right after the model's response."""
    revision: str
    """Revision request: asked after the critique; the answer is the revised response."""
    preference: str
    """Comparison question for a judge (RLAIF), e.g. "Choose the response that is less harmful"."""


@dataclass(frozen=True)
class Constitution:
    principles: tuple[Principle, ...]
    name: str = ""

    def get(self, name: str) -> Principle:
        for p in self.principles:
            if p.name == name:
                return p
        raise KeyError(
            f"constitution {self.name!r} has no principle {name!r}; it has {[p.name for p in self.principles]}"
        )


def load_constitution(path: str | os.PathLike[str] | None = None) -> Constitution:
    """Read a constitution YAML file (default: the package's own); errors name the file, principle and key."""
    path = Path(path) if path is not None else DEFAULT_CONSTITUTION
    if not path.is_file():
        raise FileNotFoundError(f"constitution file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: invalid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict) or not isinstance(data.get("principles"), list) or not data["principles"]:
        raise ValueError(f'{path}: expected a mapping with a non-empty list "principles"')
    principles, seen = [], set()
    for i, item in enumerate(data["principles"], start=1):
        if not isinstance(item, dict):
            raise ValueError(f"{path}: principle {i} must be a mapping with keys {', '.join(PRINCIPLE_KEYS)}")
        for key in PRINCIPLE_KEYS:
            value = item.get(key)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f'{path}: principle {i} needs a non-empty string "{key}"')
        unknown = set(item) - set(PRINCIPLE_KEYS)
        if unknown:
            raise ValueError(f"{path}: principle {i} has unknown keys {sorted(unknown)}")
        if item["name"] in seen:
            raise ValueError(f'{path}: principle {i} repeats the name "{item["name"]}"')
        seen.add(item["name"])
        principles.append(Principle(*(str(item[k]).strip() for k in PRINCIPLE_KEYS)))
    return Constitution(tuple(principles), str(data.get("name", path.stem)))


def rubric_from_constitution(constitution: Constitution, names: Sequence[str] | None = None) -> str:
    """One judge rubric listing the chosen principles' comparison questions (all by default)."""
    chosen = [constitution.get(n) for n in names] if names is not None else list(constitution.principles)
    lines = "\n".join(f"- {p.preference}" for p in chosen)
    return f"Compare two assistant responses to the same conversation by these principles:\n{lines}"


def constitution_dimensions(constitution: Constitution) -> dict[str, float]:
    """{comparison question: weight 1} for ``Judge(dimensions=...)``: each principle judged on its own."""
    return {p.preference: 1.0 for p in constitution.principles}


# ----------------------------------------------------------------------------------------------------------------------
# Critique and revision


@dataclass
class CritiqueRevision:
    """One prompt's trace through critique-and-revise; ``revisions[-1]`` is the final response."""

    prompt: tuple[Message, ...]
    response: str
    principles: list[str] = field(default_factory=list)
    critiques: list[str] = field(default_factory=list)
    revisions: list[str] = field(default_factory=list)

    @property
    def revision(self) -> str:
        return self.revisions[-1] if self.revisions else ""

    def to_row(self) -> dict[str, Any]:
        return {
            "prompt": PromptExample(self.prompt).to_row()["prompt"],
            "response": self.response,
            "principles": self.principles,
            "critiques": self.critiques,
            "revisions": self.revisions,
        }


# Small models often label their rewrite ("Revised response: ..."); the label is not part of the response.
_LABEL = re.compile(
    r"^\s*(?:(?:here is|here's)\s+)?(?:(?:the|my|a)\s+)?(?:rewritten|revised|revision|new)(?:\s+(?:response|answer))?"
    r"\s*:\s*",
    re.IGNORECASE,
)


def clean_revision(text: str) -> str:
    """Strip whitespace, a leading "Revised response:"-style label and wrapping quotes."""
    text = _LABEL.sub("", text.strip(), count=1).strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1].strip()
    return text


class ChatGenerator:
    """Batched chat completion with a local causal LM (transformers generate via rlhfkit's HFEngine).

    Prompts go through the tokenizer's chat template (ChatFormatter, prompts cut from the left to max_prompt_length);
    temperature 0 is greedy. A blank GenerationConfig is lent to generate(), so the checkpoint's own defaults never
    change the distribution (see rlhfkit/rollout/hf.py).
    """

    def __init__(
        self,
        model: Any,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        batch_size: int = 8,
        max_prompt_length: int = 768,
        seed: int = 0,
    ) -> None:
        if isinstance(model, tuple):
            self.model, self.tokenizer = model
        else:
            self.model, self.tokenizer = load_for_inference(model)
        cfg = SamplingConfig(
            max_new_tokens=max_new_tokens,
            min_new_tokens=1,  # an empty first token (EOS) would give nothing to critique
            temperature=temperature,
            top_p=top_p,
            batch_size=batch_size,
            backend="hf",
        )
        self.params = sampling_params(cfg)
        self.engine = make_engine(self.model, self.tokenizer, cfg)
        self.formatter = ChatFormatter(self.tokenizer, max_prompt_length + max_new_tokens, max_prompt_length)
        self.seed = seed
        self.calls = 0

    def __call__(self, conversations: Sequence[Sequence[Message]]) -> list[str]:
        if not conversations:
            return []
        ids = [self.formatter.encode_prompt(list(c)) for c in conversations]
        device = next(self.model.parameters()).device
        devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # seeded per call, leaving the caller's RNG alone
            torch.manual_seed(self.seed + self.calls)
            self.calls += 1
            ro = self.engine.generate(ids, self.params)  # type: ignore[arg-type]
        return [t.strip() for t in ro.texts]


def critique_and_revise(
    generate: ChatGenerator | Any,
    prompts: Sequence[str | Sequence[Message]],
    constitution: Constitution | None = None,
    rounds: int = 1,
    seed: int = 0,
    layout: str = "paper",
) -> list[CritiqueRevision]:
    """Bai et al. 2022, sec. 3.1: answer, critique against a random principle, revise (``rounds`` times).

    generate: a ChatGenerator, or any callable (list of conversations) -> list of reply texts.
    Principles are drawn with ``random.Random(seed)``, one per prompt and round.
    layout: "paper" asks for the revision after the model's critique turn (Bai et al.); "quoted" drops that turn and
    quotes the critique inside the revision request, so the answer to rewrite is the model's last turn (small models
    asked to "rewrite your answer" right after their critique tend to copy the critique).
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    constitution = constitution or load_constitution()
    rng = random.Random(seed)
    convs = [PromptExample(_as_messages(p)).prompt for p in prompts]
    records = [CritiqueRevision(tuple(c), r) for c, r in zip(convs, generate([list(c) for c in convs]))]
    for _ in range(rounds):
        picks = [rng.choice(constitution.principles) for _ in records]
        asks = []
        for rec, pr in zip(records, picks):
            answer = rec.revision or rec.response
            asks.append([*rec.prompt, _assistant(answer), {"role": "user", "content": pr.critique}])
        critiques = generate(asks)
        revise = [_revision_conversation(ask, c, pr.revision, layout) for ask, c, pr in zip(asks, critiques, picks)]
        for rec, pr, c, r in zip(records, picks, critiques, generate(revise)):
            rec.principles.append(pr.name)
            rec.critiques.append(c)
            rec.revisions.append(clean_revision(r))
    return records


LAYOUTS = ("paper", "quoted")


def _revision_conversation(ask: list[Message], critique: str, request: str, layout: str) -> list[Message]:
    if layout == "paper":  # Bai et al.: the critique is the model's own turn, then the revision request
        return [*ask, _assistant(critique), {"role": "user", "content": request}]
    # quoted: the answer stays the model's last turn and the critique is quoted in the request
    return [*ask[:-1], {"role": "user", "content": f"A critique of your answer: {critique.strip()}\n\n{request}"}]


def _as_messages(prompt: str | Sequence[Message]) -> tuple[Message, ...]:
    if isinstance(prompt, str):
        return ({"role": "user", "content": prompt},)
    return tuple({"role": m["role"], "content": m["content"]} for m in prompt)


def _assistant(text: str) -> Message:
    return {"role": "assistant", "content": text if text.strip() else "(no answer)"}


def sft_rows(records: Sequence[CritiqueRevision]) -> list[dict[str, Any]]:
    """{"prompt", "response": final revision} for every record with a non-empty revision."""
    return [
        {"prompt": PromptExample(r.prompt).to_row()["prompt"], "response": r.revision}
        for r in records
        if r.revision.strip()
    ]


def preference_rows(records: Sequence[CritiqueRevision]) -> list[dict[str, Any]]:
    """{"prompt", "chosen": revision, "rejected": original, "rater": "constitution", "principle"} where both texts are
    non-empty and differ (a pair of equal texts carries no preference)."""
    return [
        {
            "prompt": PromptExample(r.prompt).to_row()["prompt"],
            "chosen": r.revision,
            "rejected": r.response,
            "rater": "constitution",
            "principle": ",".join(r.principles),
        }
        for r in records
        if r.revision.strip() and r.response.strip() and r.revision != r.response
    ]


def judge_revisions(judge: Judge, records: Sequence[CritiqueRevision]) -> tuple[list[dict[str, Any]], list[Verdict]]:
    """RLAIF labels (Bai et al. 2022, sec. 4): the judge compares revision (a) with original (b) for every usable pair.

    Returns the judge's preference rows and its verdicts (``v.p_a`` = P(revision better)).
    """
    usable = [r for r in records if r.revision.strip() and r.response.strip() and r.revision != r.response]
    prompts = [list(r.prompt) for r in usable]
    revs, origs = [r.revision for r in usable], [r.response for r in usable]
    verdicts = judge.compare(prompts, revs, origs)
    return judge.label_pairs(prompts, revs, origs, verdicts=verdicts), verdicts
