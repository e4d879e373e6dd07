"""A pairwise AI judge as a reward source: the judge's debiased log-odds that a response beats a reference response."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import torch

from rlhfkit.rewards.base import Scores, as_messages, prompt_text


class PairwiseJudge(Protocol):
    """What this source needs of a judge (rlhfkit.feedback.judge.Judge is one): verdicts with `p_a`, the debiased
    probability that response a beats response b."""

    def compare(self, prompts: Sequence[Any], a: Sequence[str], b: Sequence[str]) -> Sequence[Any]: ...


class JudgeReward:
    """A reward source (rlhfkit.rewards protocol) from a pairwise judge: each response is compared with a reference
    response to the same prompt (e.g. the SFT policy's), and its reward is the judge's debiased log-odds
    log(p / (1 - p)) that it beats the reference (0 = as good; clipped to +-clip). parts["judge_p"] holds p itself.

    reference: a callable (prompts) -> one reference text per prompt, or a mapping from the prompt's last user turn.
    """

    def __init__(
        self,
        judge: PairwiseJudge,
        reference: Callable[[Sequence[Any]], Sequence[str]] | Mapping[str, str],
        clip: float = 6.0,
        name: str = "judge",
    ) -> None:
        self.judge, self.reference, self.clip, self.name = judge, reference, clip, name

    def __call__(self, prompts: Sequence[Any], responses: Sequence[str]) -> Any:
        if isinstance(self.reference, Mapping):
            refs = []
            for i, p in enumerate(prompts):
                key = prompt_text(as_messages(p, f"prompt {i}"))
                if key not in self.reference:
                    raise KeyError(f"JudgeReward: no reference response for prompt {i} ({key[:60]!r})")
                refs.append(self.reference[key])
        else:
            refs = list(self.reference(prompts))
        p = torch.tensor([v.p_a for v in self.judge.compare(prompts, responses, refs)], dtype=torch.float32)
        p = p.clamp(1e-6, 1 - 1e-6)
        total = torch.log(p / (1 - p)).clamp(-self.clip, self.clip)  # Bradley-Terry log-odds of beating the reference
        return Scores(total=total, parts={self.name: total, "judge_p": p})
