"""The preference-vector policy's reward side: objective scores (one column per objective, read from the sources'
named parts), their linear scalarization under a weight vector, and `PreferenceConditioner`, which draws the weights
of each prompt, writes them into it and scores responses under them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from rlhfkit.config import ConfigError, PreferenceVectorConfig
from rlhfkit.rewards.base import Scores
from rlhfkit.rewards.sources import WeightedSum
from rlhfkit.rollout.prompts import Prompt, condition_messages, draw_weights, format_weights, snap_weights


def objective_part(scores: Scores, objective: str) -> Tensor:
    """The (B,) part named `objective`: a source's name (e.g. "sentiment"), or a head of a multi_rm source, which a
    weighted sum of several sources lists as "<source>/<head>". One-line error naming what there is."""
    if objective in scores.parts:
        return scores.parts[objective]
    matches = [k for k in scores.parts if k.endswith("/" + objective)]
    if len(matches) == 1:
        return scores.parts[matches[0]]
    there = ", ".join(scores.parts) or "none"
    why = f"it matches several ({', '.join(matches)})" if matches else "no reward source or head has that name"
    raise ValueError(f"preference.objectives: {objective!r}: {why}; the reward's parts are: {there}")


def objective_scores(scores: Scores, objectives: Sequence[str]) -> Tensor:
    """(B, K) float32: column k = the unweighted score of objective k."""
    return torch.stack([objective_part(scores, o).float() for o in objectives], dim=-1)


def scalarize(objective_values: Tensor, weights: Tensor) -> Tensor:
    """Linear scalarization r = sum_k w_k r_k (B,) of objective scores (B, K) under per-row weights (B, K) or one
    weight vector (K,) (the reward of a conditioned policy: Yang et al. 2024 "Rewards-in-Context", eq. 2)."""
    if objective_values.shape[-1] != weights.shape[-1]:
        raise ValueError(f"{objective_values.shape[-1]} objectives but {weights.shape[-1]} weights")
    return (objective_values * weights.to(objective_values)).sum(-1)


def check_objectives(reward: Any, objectives: Sequence[str]) -> None:
    """Before any rollout: each objective is one source's name or one multi_rm head, and every source serves one (a
    source no objective reads would be silently ignored). `reward`: one source or a WeightedSum of several."""
    sources = list(zip(reward.names, reward.sources)) if isinstance(reward, WeightedSum) else [(reward.name, reward)]
    provides = {name: {name, *(getattr(src, "heads", None) or [])} for name, src in sources}
    for o in objectives:
        owners = [name for name, names in provides.items() if o in names]
        if len(owners) != 1:
            listed = "; ".join(f"{n}: {', '.join(sorted(p))}" for n, p in provides.items())
            why = "several sources provide it" if owners else "no reward source has that name or head"
            raise ConfigError(f"preference.objectives: {o!r}: {why} (sources and heads: {listed})")
    for name, names in provides.items():
        if not names & set(objectives):
            raise ConfigError(
                f"reward source {name!r} serves none of preference.objectives ({', '.join(objectives)}): its score "
                "would be ignored; remove it or name it (or one of its heads) as an objective"
            )


@dataclass(frozen=True)
class PreferenceConditioner:
    """Draws a weight vector per prompt and writes it into the prompt (Rewards-in-Context, Yang et al. 2024; the
    conditioned policy of Wang et al. 2024, "Conditional Language Policy"); the responses' reward is w . r."""

    cfg: PreferenceVectorConfig
    formatter: Any
    """The run's ChatFormatter: a conditioned prompt is encoded (and truncated) like every other prompt."""

    @property
    def objectives(self) -> list[str]:
        return [o.strip() for o in self.cfg.objectives]

    def snap(self, weights: Sequence[float]) -> list[float]:
        """`weights` as the tag shows them (rounded to decimals, or to the nearest level): what the reward uses."""
        return [float(x) for x in snap_weights(list(weights), self.cfg.decimals, len(self.cfg.levels))]

    def uniform(self) -> list[float]:
        k = len(self.objectives)
        return self.snap([1.0 / k] * k)

    def tag(self, weights: Sequence[float]) -> str:
        c = self.cfg
        return format_weights(self.objectives, weights, c.format, c.decimals, c.levels, c.entry, c.separator)

    def condition(self, prompt: Prompt, weights: Sequence[float]) -> Prompt:
        """The prompt as the policy sees it under `weights`; its `messages` stay the task's (what reward sources see)."""
        tag = self.tag(weights)
        ids = self.formatter.encode_prompt(condition_messages(prompt.messages, tag))
        if ids is None:  # truncation=drop, and the tag made the prompt too long
            raise ValueError(
                f"a prompt with its preference tag does not fit data.max_prompt_length: {prompt.messages!r:.80}; "
                "use data.truncation=keep_end or a larger data.max_prompt_length"
            )
        return Prompt(prompt.messages, ids)

    def draw(self, n: int, seed: Sequence[int]) -> Tensor:
        """(n, K) weight vectors ~ Dirichlet(alpha), drawn with `seed` and snapped to what the tag shows (with
        `mirrored`, the second half the first half reversed)."""
        c = self.cfg
        k, levels = len(self.objectives), len(c.levels)
        drawn = draw_weights(n, k, c.dirichlet_alpha, seed, c.decimals, levels, c.mirrored)
        return torch.tensor(drawn, dtype=torch.float32)

    def prepare(
        self, prompts: Sequence[Prompt], seed: Sequence[int] | None = None, weights: Sequence[float] | None = None
    ) -> tuple[list[Prompt], Tensor]:
        """(conditioned prompts, weights (P, K)): weights drawn with `seed` (e.g. (run seed, step, rank), so a resumed
        run draws the same), or the one vector `weights` for every prompt; both snapped to what the tag shows."""
        if weights is None:
            w = self.draw(len(prompts), seed or (0,))
        else:
            w = torch.tensor([self.snap(weights)] * len(prompts), dtype=torch.float32).view(len(prompts), -1)
        return [self.condition(p, row) for p, row in zip(prompts, w.tolist())], w

    def reward(self, scores: Scores, weights: Tensor) -> Tensor:
        """(B,) w . r for responses scored by the reward sources; weights (B, K) (repeat a prompt's row per sample)."""
        return scalarize(objective_scores(scores, self.objectives), weights)

    def means(self, scores: Scores) -> dict[str, float]:
        """Each objective's mean score, for the logs ("objective/<name>")."""
        values = objective_scores(scores, self.objectives)
        return {f"objective/{o}": float(values[:, k].mean()) for k, o in enumerate(self.objectives)}
