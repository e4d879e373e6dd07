"""The sentiment task's gold scorer: VADER (Hutto & Gilbert 2014), a rule-based lexicon model.

The builtin task asks the policy to continue a movie review positively; the "true" reward of a continuation is VADER's
compound score of the response text alone, in [-1, 1]: the summed valence of its words, adjusted by VADER's rules
(negation, intensifiers, "but", capitals, punctuation), normalized as x / sqrt(x^2 + 15) (vaderSentiment.normalize, alpha = 15).
It is cheap and deterministic, so the demo can measure how far a learned reward model and the policy drift from it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from rlhfkit.rewards.base import Messages, Scores, as_scores


@functools.lru_cache(maxsize=1)
def analyzer() -> Any:
    """One VADER analyzer per process: building it reads the ~7,500-word lexicon file."""
    return SentimentIntensityAnalyzer()


def sentiment_scores(texts: Sequence[str]) -> list[float]:
    """VADER compound score of each text, in [-1, 1] (0 for an empty or neutral text)."""
    vader = analyzer()
    return [float(vader.polarity_scores(t)["compound"]) for t in texts]


POLARITIES = {"positive": 1.0, "negative": -1.0}


class SentimentSource:
    """Reward source (config kind "sentiment"): the VADER compound score of each response; prompts are ignored.
    polarity "negative" scores -compound (a negativity objective, opposed to sentiment in a preference vector)."""

    kind = "sentiment"

    def __init__(self, name: str = "sentiment", polarity: str = "positive") -> None:
        if polarity not in POLARITIES:
            raise ValueError(f"sentiment: param 'polarity' must be positive or negative, got {polarity!r}")
        self.name = name
        self.sign = POLARITIES[polarity]

    def __call__(self, prompts: Sequence[Messages | str], responses: Sequence[str]) -> Scores:
        if len(prompts) != len(responses):
            raise ValueError(f"reward source {self.name!r}: {len(prompts)} prompts but {len(responses)} responses")
        return as_scores([self.sign * x for x in sentiment_scores(responses)], self.name)
