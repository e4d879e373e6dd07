"""Reward sources behind one interface: reward model, ensemble, rules, any Python callable, the sentiment gold scorer;
a weighted multi-objective sum; running normalization. ``build_reward`` turns a ``RewardConfig`` into one source.

Adding a source kind: write a class with ``name`` and ``__call__(prompts, responses) -> Scores`` (see base.py), add a
builder to ``BUILDERS`` below and its name to ``rlhfkit.config.RewardKind``, and test it against hand values.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch

from rlhfkit.config import ConfigError, RewardConfig, RewardSpec
from rlhfkit.models.loading import ModelNotFoundError, check_model_path, resolve_model_path, reward_heads
from rlhfkit.rewards.base import Messages, RewardSource, Scores, as_scores, prompt_text, step_rewards
from rlhfkit.rewards.rules import RULES, apply_rule, check_params
from rlhfkit.rewards.sources import (
    ENSEMBLE_REDUCTIONS,
    CallableSource,
    EnsembleSource,
    Normalized,
    RewardModelSource,
    RuleSource,
    RunningNormalizer,
    WeightedSum,
    checked_scores,
    load_callable,
    unique_names,
)

__all__ = [
    "ENSEMBLE_REDUCTIONS",
    "RULES",
    "CallableSource",
    "EnsembleSource",
    "Messages",
    "Normalized",
    "RewardModelSource",
    "RewardSource",
    "RuleSource",
    "RunningNormalizer",
    "Scores",
    "WeightedSum",
    "apply_rule",
    "as_scores",
    "build_reward",
    "build_source",
    "check_params",
    "check_reward_paths",
    "checked_scores",
    "load_callable",
    "prompt_text",
    "step_rewards",
    "unique_names",
]


def _model_dir(where: str, path: str) -> str:
    try:
        resolve_model_path(path)  # fails fast with the paths tried, before any weights are read
    except ModelNotFoundError as e:
        raise ModelNotFoundError(f"{where}: {e}") from None
    return path


def check_reward_paths(reward: RewardConfig, section: str = "reward") -> None:
    """Before any model is loaded: every reward-model directory and callable file that `reward.sources` names exists
    (nothing is loaded)."""
    for i, spec in enumerate(reward.sources):
        where = f"{section}.sources[{i}].path"
        if spec.kind in _MODEL_KINDS:
            for path in spec.path.split(","):
                check_model_path(path.strip(), where)
        target = spec.path.strip().rpartition(":")[0]
        if spec.kind == "callable" and target.endswith(".py") and not Path(target).expanduser().is_file():
            raise FileNotFoundError(f"{where}={spec.path!r}: no such file {Path(target).expanduser().resolve()}")


def _build_model(spec: RewardSpec, where: str, device: str | torch.device, dtype: str) -> RewardSource:
    path = _model_dir(where, spec.path.strip())
    heads = reward_heads(path)
    if heads is not None and len(heads) > 1:
        raise ConfigError(
            f"{where}.path={spec.path!r} is a multi-objective reward model (heads {', '.join(heads)}): "
            "use kind: multi_rm"
        )
    return RewardModelSource.from_path(
        path, device, dtype, spec.batch_size, spec.max_length, name=spec.name or f"rm:{Path(path).name}"
    )


def _build_multi_rm(spec: RewardSpec, where: str, device: str | torch.device, dtype: str) -> RewardSource:
    """A reward model with one head per objective: parts = the heads' scores, total = sum_k weights[k] * head_k."""
    path = _model_dir(where, spec.path.strip())
    heads = reward_heads(path)
    if heads is None:
        raise ConfigError(
            f"{where}.path={spec.path!r} has no named heads: train it with `rlhfkit rm objectives=[...]` "
            "(a scalar reward model is kind: model)"
        )
    unknown = set(spec.params) - {"weights"}
    weights = spec.params.get("weights", {})
    if unknown or not isinstance(weights, dict):
        raise ConfigError(
            f"{where}.params: a multi_rm source takes only {{weights: {{head: weight}}}}, got {spec.params}"
        )
    bad = sorted(set(weights) - set(heads))
    if bad:
        raise ConfigError(f"{where}.params.weights: unknown heads {', '.join(bad)} (heads: {', '.join(heads)})")
    for h, w in weights.items():
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
            raise ConfigError(f"{where}.params.weights.{h} must be a finite number, got {w!r}")
    return RewardModelSource.from_path(
        path,
        device,
        dtype,
        spec.batch_size,
        spec.max_length,
        name=spec.name or f"rm:{Path(path).name}",
        head_weights=weights,
    )


def _build_ensemble(spec: RewardSpec, where: str, device: str | torch.device, dtype: str) -> RewardSource:
    paths = [p.strip() for p in spec.path.split(",")]
    if not all(paths):
        raise ConfigError(f"{where}.path={spec.path!r}: an empty entry in the comma-separated model directories")
    dirs = [_model_dir(f"{where} (member {k})", p) for k, p in enumerate(paths)]
    members = [
        RewardModelSource.from_path(p, device, dtype, spec.batch_size, spec.max_length, name=f"rm:{Path(p).name}")
        for p in dirs
    ]
    return EnsembleSource(members, spec.reduce, spec.std_coef, name=spec.name or "ensemble")


def _build_rule(spec: RewardSpec, where: str, device: str | torch.device, dtype: str) -> RewardSource:
    rule = spec.path.strip()
    try:
        return RuleSource(rule, spec.params, name=spec.name or None)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None


def _build_callable(spec: RewardSpec, where: str, device: str | torch.device, dtype: str) -> RewardSource:
    try:
        return CallableSource(spec.path.strip(), spec.params, name=spec.name or None)
    except (ImportError, AttributeError, TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from None
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{where}: {e}") from None


def _build_sentiment(spec: RewardSpec, where: str, device: str | torch.device, dtype: str) -> RewardSource:
    from rlhfkit.tasks.sentiment import SentimentSource  # here, not at the top: tasks.sentiment imports this package

    unknown = sorted(set(spec.params) - {"polarity"})
    if unknown:
        raise ConfigError(f"{where}.params: unknown param {unknown[0]!r} for a sentiment source (valid: polarity)")
    try:
        return SentimentSource(name=spec.name or "sentiment", **spec.params)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None


def _build_arithmetic(spec: RewardSpec, where: str, device: str | torch.device, dtype: str) -> RewardSource:
    from rlhfkit.tasks.arithmetic import ArithmeticSource  # here: tasks import this package

    return ArithmeticSource(name=spec.name or "arithmetic")


BUILDERS: dict[str, Callable[[RewardSpec, str, str | torch.device, str], RewardSource]] = {
    "model": _build_model,
    "multi_rm": _build_multi_rm,
    "ensemble": _build_ensemble,
    "rule": _build_rule,
    "callable": _build_callable,
    "sentiment": _build_sentiment,
    "arithmetic": _build_arithmetic,
}
_TAKES_PARAMS = ("rule", "callable", "multi_rm", "sentiment")
_MODEL_KINDS = ("model", "multi_rm", "ensemble")


def build_source(
    spec: RewardSpec, index: int = 0, device: str | torch.device = "cpu", dtype: str = "float32"
) -> RewardSource:
    """One RewardSpec -> its source (unweighted). Errors are one line and start with ``reward.sources[index]``."""
    where = f"reward.sources[{index}]"
    if spec.kind not in BUILDERS:
        raise ConfigError(f"{where}.kind={spec.kind!r}: choose one of {', '.join(BUILDERS)}")
    if spec.kind not in ("sentiment", "arithmetic") and not spec.path.strip():
        raise ConfigError(f"{where}.path is empty: a {spec.kind} source needs one")
    if spec.params and spec.kind not in _TAKES_PARAMS:
        raise ConfigError(
            f"{where}.params: only rule, callable, multi_rm and sentiment sources take params (this one is {spec.kind})"
        )
    if spec.kind in _MODEL_KINDS:
        if spec.batch_size < 1:
            raise ConfigError(f"{where}.batch_size must be >= 1, got {spec.batch_size}")
        if spec.max_length is not None and spec.max_length < 2:
            raise ConfigError(f"{where}.max_length must be >= 2, got {spec.max_length}")
    if spec.kind == "ensemble":
        if spec.reduce not in ENSEMBLE_REDUCTIONS:
            raise ConfigError(f"{where}.reduce={spec.reduce!r}: choose {', '.join(ENSEMBLE_REDUCTIONS)}")
        if not (math.isfinite(spec.std_coef) and spec.std_coef >= 0):
            raise ConfigError(f"{where}.std_coef must be a finite number >= 0, got {spec.std_coef}")
    return BUILDERS[spec.kind](spec, where, device, dtype)


def build_reward(cfg: RewardConfig, device: str | torch.device = "cpu", dtype: str = "float32") -> RewardSource:
    """The reward of a run: one source as is (weighted only if its weight != 1), several as a WeightedSum; then
    running normalization (cfg.normalize) and clipping (cfg.clip), in that order, around the total.

    Source names default to "rm:<dir name>", "ensemble", "rule:<rule>", "callable:<function>", "sentiment",
    "arithmetic"; repeated names get "#2", "#3", ... so logged parts never collide. Model directories are checked
    before any is loaded.
    """
    if not cfg.sources:
        raise ConfigError("reward.sources is empty: give at least one reward source, e.g. a reward model directory")
    for i, spec in enumerate(cfg.sources):
        if not math.isfinite(spec.weight):
            raise ConfigError(f"reward.sources[{i}].weight must be finite, got {spec.weight}")
        if spec.kind in ("model", "multi_rm"):
            _model_dir(f"reward.sources[{i}]", spec.path.strip())  # fail before loading any other model
    if cfg.clip is not None and not cfg.clip > 0:
        raise ConfigError(f"reward.clip must be > 0 (or null), got {cfg.clip}")
    sources = [build_source(spec, i, device, dtype) for i, spec in enumerate(cfg.sources)]
    for src, name in zip(sources, unique_names([s.name for s in sources])):
        src.name = name
    weights = [spec.weight for spec in cfg.sources]
    reward: RewardSource
    if len(sources) == 1 and weights[0] == 1.0:
        reward = sources[0]
    else:
        reward = WeightedSum(sources, weights)
    if cfg.normalize or cfg.clip is not None:
        reward = Normalized(reward, RunningNormalizer() if cfg.normalize else None, cfg.clip)
    return reward
