"""The pipeline's configuration: one dataclass per stage, validated at load so a typo fails before any work."""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rlhfkit.commands import OPTIMIZERS, canonical
from rlhfkit.config import (
    FILE_PATH,
    MODEL_PATH,
    ConfigError,
    LiveSettings,
    RewardSpec,
    RMConfig,
    SamplingConfig,
    SFTConfig,
    deep_merge,
    from_dict,
    load_config,
    require,
    resolve,
    to_dict,
)

LabelSource = Literal["simulated", "judge", "human", "file"]
LABEL_SOURCES: tuple[str, ...] = typing.get_args(LabelSource)
DEMO_PIPELINE = Path(__file__).resolve().parent.parent / "tasks" / "data" / "demo.yaml"


@dataclass(frozen=True)
class PromptsConfig:
    train: str = field(default="sample:prompts", metadata=FILE_PATH)
    """Prompt rows {"prompt": ...}: a file or a builtin sample name (sample:prompts = the shipped review openings)."""
    eval: str | None = field(default=None, metadata=FILE_PATH)
    """Held-out prompts; empty = hold out `eval_count` prompts of `train`."""
    eval_count: int = 32
    """Held-out prompts taken from `train` when `eval` is empty."""
    per_round: int = 64
    """Prompts sampled and labelled per round; each round takes the next ones (wrapping around)."""
    template: str = "{prompt}"
    """Format applied to every prompt, e.g. "Continue this movie review: {prompt}"."""
    system: str | None = None
    """A system message put before every prompt (None = the chat template's default, if it has one)."""

    def validate(self) -> None:
        require(self.per_round >= 1 and self.eval_count >= 1, "per_round and eval_count must be >= 1")
        require("{prompt}" in self.template, "template must contain {prompt}")


@dataclass(frozen=True)
class RaterConfig:
    name: str = "rater"
    """Written to each label's `rater` field; also seeds this rater's random stream."""
    temperature: float = 0.1
    """Bradley-Terry noise on the gold gap: P(A) = sigmoid((gold_A + bias - gold_B) / temperature)."""
    bias: float = 0.0
    """Added to the first shown response's gold score (position bias)."""
    tie_margin: float = 0.0
    """A tie when the gold gap the rater sees is below this."""
    flip: float = 0.0
    """Probability of reversing the choice (label noise)."""
    length_bias: float = 0.0
    """Gold units added to a response per word it is longer than the other (verbosity bias; negative: brevity)."""
    attributes: dict[str, str] = field(default_factory=dict)
    """Audit attributes, e.g. {region: EU}: label distributions, agreement and reward-model accuracy are reported per
    group of raters sharing a value."""


@dataclass(frozen=True)
class SampleStage:
    num_samples: int = 2
    """Responses per prompt (K)."""
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(max_new_tokens=32, batch_size=32))
    """How responses are generated."""

    def validate(self) -> None:
        require(self.num_samples >= 2, "num_samples must be >= 2 (pairs need two)")


@dataclass(frozen=True)
class LabelStage:
    source: LabelSource = "simulated"
    """Who labels the pairs: simulated (gold + noisy raters), judge (an AI judge), human (the annotation app) or file."""
    pairs: Literal["chain", "all"] = "chain"
    """Pairs from K responses: chain (K-1 pairs joining them) or all (K(K-1)/2)."""
    max_pairs: int | None = None
    """Cap on pairs per round."""
    heldout_fraction: float = 0.15
    """Share of each round's pairs (by prompt) kept out of reward-model training to measure its accuracy."""
    gold: list[RewardSpec] = field(default_factory=lambda: [RewardSpec(kind="sentiment")])
    """Gold scorer(s) (reward sources) behind the simulated raters, also used to evaluate policies."""
    raters: list[RaterConfig] = field(
        default_factory=lambda: [
            RaterConfig("careful", temperature=0.05, tie_margin=0.02),
            RaterConfig("noisy", temperature=0.2, flip=0.1, tie_margin=0.05),
        ]
    )
    """Simulated raters (each pair is labelled by one of them, in turn)."""
    file: str = field(default="", metadata=FILE_PATH)
    """source=file: a preference JSONL; `{round}` in the name is replaced by the round number."""
    rater_attributes: str = field(default="", metadata=FILE_PATH)
    """A JSON file {rater name: {attribute: value}} for the audit of labels from a file (or to override the simulated
    raters' attributes): reward-model accuracy per rater group."""
    judge: str = field(default="smollm2-135m-instruct", metadata=MODEL_PATH)
    """source=judge: the judge model (builtin name or local directory)."""
    rubric: str = ""
    """source=judge: the rubric the judge reads (empty = the judge's default)."""
    human_share: float = 0.0
    """source=judge: share of pairs sent to humans where the judge is least confident (needs the annotation app)."""
    audit_share: float = 0.0
    """source=judge: extra random share of pairs sent to humans to audit the judge."""
    db: str = ""
    """source=human (or human_share > 0): annotation database URL; empty = sqlite file RUN/annotations.db."""
    raters_per_item: int = 1
    """source=human: raters per pair."""
    wait_seconds: float = 0.0
    """source=human: give up waiting for labels after this long (0 = wait for ever)."""
    poll_seconds: float = 10.0
    """source=human: how often to check the campaign's progress."""
    live: LiveSettings | None = None
    """source=human with optimize.algorithm=online-dpo: label while training. Each round's optimize stage streams pairs
    of the current policy's samples to the campaign RUN-round-R and trains on the labels as they come (staleness
    bound, minimum label rate); the round has no sample, label or rm stage. Empty = label between training stages."""

    def validate(self) -> None:
        require(0.0 <= self.heldout_fraction < 1.0, f"heldout_fraction must be in [0, 1), got {self.heldout_fraction}")
        require(0.0 <= self.human_share <= 1.0 and 0.0 <= self.audit_share <= 1.0, "human_share, audit_share in [0, 1]")
        require(self.source != "file" or bool(self.file), "file is empty: source=file needs a preference file")
        require(self.raters_per_item >= 1 and self.poll_seconds > 0, "raters_per_item >= 1 and poll_seconds > 0")
        require(self.live is None or self.source == "human", f"live needs source=human, got source={self.source}")


@dataclass(frozen=True)
class EvalStage:
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(max_new_tokens=32, batch_size=32))
    """How evaluation responses are generated (temperature 1 keeps the KL estimate honest)."""
    judge: Literal["gold", "rm", "judge"] = "gold"
    """Who decides win rates: gold (label.gold), rm (this round's reward model) or judge (the AI judge)."""
    tie_margin: float = 0.0
    """Score gap under which a comparison is a tie."""
    examples: int = 6
    """Before/after response pairs shown in the report."""
    safety: bool = False
    """Also run the safety and behaviour evaluation on the newest policy."""


@dataclass(frozen=True)
class PipelineConfig:
    output: str = "runs/pipeline"
    """Run directory: every stage's artifacts, the manifest, the report."""
    model: str = field(default="smollm2-135m-instruct", metadata=MODEL_PATH)
    """Base model: builtin name or local Hugging Face directory."""
    rounds: int = 2
    """Rounds of sample -> label -> rm -> optimize -> eval."""
    seed: int = 0
    """Base seed; every stage derives its own from it."""
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    """Where prompts come from and how many each round uses."""
    sft: dict[str, Any] | None = None
    """Settings of the SFT stage (keys of `rlhfkit sft`, e.g. {data: {train: sample:sft}}); empty = no SFT."""
    sample: SampleStage = field(default_factory=SampleStage)
    """Sampling K responses per prompt from the newest policy."""
    label: LabelStage = field(default_factory=LabelStage)
    """Labelling the sampled pairs."""
    rm: dict[str, Any] = field(default_factory=dict)
    """Settings of the reward-model stage (keys of `rlhfkit rm`); trained on every label so far."""
    optimize: dict[str, Any] = field(default_factory=lambda: {"algorithm": "ppo"})
    """`algorithm` (ppo, grpo, rloo, reinforce, online-dpo, dpo) and that command's settings. Online algorithms are
    rewarded by the round's reward model (weight 1) plus any `reward.sources` given here (e.g. a length rule), summed
    with their weights."""
    eval: EvalStage = field(default_factory=EvalStage)
    """Evaluating each round's policy against the baseline."""

    @staticmethod
    def yaml_sections(tree: dict[str, Any]) -> dict[str, type]:
        """The command behind each dict-typed section, so that its input paths are relative to the YAML file too."""
        optimize = tree.get("optimize") if isinstance(tree.get("optimize"), dict) else {}
        algo = optimize.get("algorithm", "ppo")
        return {"sft": SFTConfig, "rm": RMConfig} | (
            {"optimize": OPTIMIZERS[algo].config} if algo in OPTIMIZERS else {}
        )

    def validate(self) -> None:
        require(self.rounds >= 1, f"rounds must be at least 1, got {self.rounds}")
        if self.label.live is not None:
            algo = canonical(str(self.optimize.get("algorithm", "ppo")))
            require(algo == "online-dpo", f"label.live trains with optimize.algorithm=online-dpo, got {algo}")
            require(self.eval.judge != "rm", "label.live trains no reward model: eval.judge must be gold or judge")


def load_pipeline(path: str | Path | None, overrides: list[str] | None = None) -> PipelineConfig:
    """Defaults <- YAML <- overrides; every stage's settings are validated now, so a typo fails before any work."""
    cfg = load_config(PipelineConfig, path, overrides)
    where = str(path) if path else "<overrides>"
    algo = canonical(str(cfg.optimize.get("algorithm", "ppo")))
    if algo not in OPTIMIZERS:
        raise ConfigError(f"{where}: key 'optimize.algorithm' must be one of {', '.join(OPTIMIZERS)}, got {algo!r}")
    if cfg.optimize.get("algorithm", "ppo") != algo:  # an alias (reinforce++): kept, and fingerprinted, canonical
        cfg = dataclasses.replace(cfg, optimize={**cfg.optimize, "algorithm": algo})
    # build each stage's config once with placeholder paths: unknown keys and bad values name `rm.train.lr` etc.
    if cfg.sft:
        _stage_config(SFTConfig, cfg.sft, {}, where, "sft.")
    _stage_config(RMConfig, cfg.rm, {}, where, "rm.")
    cls, online = OPTIMIZERS[algo].config, OPTIMIZERS[algo].online
    placeholder = {"reward": optimize_reward(cfg.optimize, "<the round's reward model>", where)} if online else {}
    if cfg.label.live is not None:
        placeholder = live_optimize(cfg, "<label.db>", "<the round's campaign>", where)
    _stage_config(cls, _without(cfg.optimize, "algorithm"), placeholder, where, "optimize.")
    return cfg


def rater_attributes(label: LabelStage) -> dict[str, dict[str, str]]:
    """{rater: {attribute: value}} for the audit: the simulated raters' `attributes`, then `label.rater_attributes`'s
    file over them. Raters without attributes are left out; {} when nobody has any."""
    out = {r.name: dict(r.attributes) for r in label.raters if r.attributes} if label.source == "simulated" else {}
    return out | (
        read_rater_attributes(label.rater_attributes, "label.rater_attributes") if label.rater_attributes else {}
    )


def read_rater_attributes(file: str | Path, option: str = "--rater-attributes") -> dict[str, dict[str, str]]:
    """A JSON file {rater name: {attribute: value}}; a malformed one is a ConfigError naming the file and the rater."""
    path = Path(file)
    out: dict[str, dict[str, str]] = {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{option}: file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not a JSON object of rater -> attributes ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object {{rater: {{attribute: value}}}}, got {type(data).__name__}")
    for rater, attrs in data.items():
        if not isinstance(attrs, dict) or not all(isinstance(v, str) and v for v in attrs.values()):
            raise ConfigError(f"{path}: rater {rater!r}: attributes must be an object of non-empty strings")
        out[str(rater)] = {str(k): v for k, v in attrs.items()}
    return out


def optimize_reward(optimize: dict[str, Any], rm: str, where: str = "<pipeline>") -> dict[str, Any]:
    """The `reward` section of an online optimize stage: the round's reward model (weight 1) followed by the user's own
    `optimize.reward.sources`, summed with their weights; `normalize` defaults to true."""
    user = optimize.get("reward") or {}
    if not isinstance(user, dict):
        raise ConfigError(f"{where}: key 'optimize.reward' must be a mapping")
    sources = user.get("sources") or []
    if not isinstance(sources, list):
        raise ConfigError(f"{where}: key 'optimize.reward.sources' must be a list of reward sources, got {sources!r}")
    return {"sources": [{"kind": "model", "path": rm}, *sources], "normalize": user.get("normalize", True)}


def live_optimize(cfg: PipelineConfig, db: str, campaign: str, where: str = "<pipeline>") -> dict[str, Any]:
    """What a live round forces on its online-DPO stage: pairs (2 samples), the raters' campaign and the label.live
    knobs, and only the user's own `optimize.reward.sources` (logged beside the labels; none needed)."""
    assert cfg.label.live is not None
    user = optimize_reward(cfg.optimize, "", where)
    return {
        "algo": {"num_samples": 2},
        "reward": {"sources": user["sources"][1:], "normalize": user["normalize"]},
        "live": to_dict(cfg.label.live)
        | {"db": db, "campaign": campaign, "raters_per_item": cfg.label.raters_per_item},
    }


def _without(d: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k not in keys}


def _stage_config(cls: type, user: dict[str, Any], forced: dict[str, Any], where: str, prefix: str) -> Any:
    """The stage's config: its own defaults <- the pipeline file's settings <- what the pipeline decides (paths)."""
    if not isinstance(user, dict):
        raise ConfigError(f"{where}: key {prefix.rstrip('.')!r} must be a mapping")
    cfg = from_dict(cls, deep_merge(user, forced), where=where, prefix=prefix)
    try:
        return resolve(cfg)
    except ConfigError as e:  # resolve() names keys within the stage: say which stage
        raise ConfigError(f"{where}: section {prefix.rstrip('.')!r}: {e}") from None
