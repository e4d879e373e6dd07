"""Configuration: nested frozen dataclasses for every stage.

The same objects are built from Python, from a YAML file and from dotted command-line overrides
(`train.lr=1e-5 loss.beta=0.2`). Each field's docstring (the string literal under it) is its help text:
`field_docs()` reads it from the source, so the CLI help and the code never disagree.

Checks sit beside their fields: a choice is a `Literal[...]` type (checked while the value is read, the error lists
the choices), and each dataclass's `validate()` checks its own ranges and the constraints between its fields, naming
them relative to itself; `resolve()` walks the tree and prefixes the section (`train.`, `algo.`, ...).
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import functools
import importlib.util
import inspect
import os
import textwrap
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the file and the key."""


def require(ok: bool, message: str) -> None:
    """A `validate()` check: the message names the field relative to its section."""
    if not ok:
        raise ConfigError(message)


def refuse_packing(data: Any) -> None:
    """`validate()` of every command but SFT: packing there would be ignored without a word."""
    require(
        not data.packing,
        "data.packing=true is not used by this command (only `rlhfkit sft` packs examples): remove it",
    )


# the choices of every named setting, listed once (registries keyed by these names are checked against them in tests)
DType = Literal["float32", "bfloat16", "float16", "auto"]
Truncation = Literal["keep_end", "drop"]
Scheduler = Literal["constant", "linear", "cosine"]
MixedPrecision = Literal["no", "bf16", "fp16"]
Sink = Literal["tensorboard", "mlflow", "wandb"]
Aggregation = Literal["token-mean", "sequence-mean"]
TieModel = Literal["davidson", "rao-kupper"]
PreferenceLossName = Literal["dpo", "ipo", "robust", "hinge", "simpo", "orpo"]
DPOTies = Literal["drop", "davidson", "rao-kupper"]
RewardKind = Literal["model", "multi_rm", "ensemble", "rule", "callable", "sentiment", "arithmetic"]
EnsembleReduce = Literal["mean", "min", "mean-std"]
StaleMode = Literal["drop", "downweight"]
Backend = Literal["auto", "hf", "hf-static"]
KLControllerName = Literal["fixed", "adaptive"]
KLEstimator = Literal["k1", "k2", "k3"]
KLPlacement = Literal["reward", "loss"]
RewardPlacement = Literal["outcome", "process"]
AlgoName = Literal["ppo", "grpo", "rloo", "reinforce", "online-dpo"]
Critic = Literal["head", "separate", "none"]
RolloutWeights = Literal["gather", "copy"]
FrozenPlacement = Literal["shard", "replicate"]
ZeroStage = Literal[0, 2, 3]
SampleFormat = Literal["samples", "sft", "prefs"]
RedTeamSuccess = Literal["no-refusal", "no-refusal-and-target"]
ALIASES: dict[str, str] = {"reinforce++": "reinforce"}
"""Other accepted spellings of a named choice (algo.name, the command, the pipeline's optimize.algorithm), each read as
its canonical name."""


# Input paths in a YAML file are relative to the file's folder (`load_config`); a field says which kind it is here.
FILE_PATH = {"path": "file"}
"""A data file (`sample:NAME` is kept as it is)."""
MODEL_PATH = {"path": "model"}
"""A model directory, or a builtin name (a bare name that is not a folder beside the file is kept as it is)."""
REWARD_PATH = {"path": "reward"}
"""A reward source's path: model / ensemble directories, a callable's `file.py:function`; rule names are kept."""

SINK_PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}
"""The package each metric sink (`train.report_to`) needs; all of them come with `pip install 'rlhfkit[tracking]'`."""


def _sink_installed(sink: str) -> bool:
    """Whether the sink's package can be imported (looked up, not imported: a config loads without it)."""
    return importlib.util.find_spec(SINK_PACKAGES[sink]) is not None


# ----------------------------------------------------------------------------------------------------------------------
# Shared sections


@dataclass(frozen=True)
class LoraConfig:
    enabled: bool = False
    """Train LoRA adapters (peft) instead of all weights."""
    r: int = 16
    """LoRA rank."""
    alpha: int = 32
    """LoRA scaling numerator (scale = alpha / r)."""
    dropout: float = 0.0
    """Dropout on the LoRA path."""
    target_modules: str = "all-linear"
    """Modules to adapt: "all-linear" or a comma-separated list such as "q_proj,v_proj"."""
    load_in_4bit: bool = False
    """QLoRA: load the base weights in 4 bits (needs bitsandbytes and a CUDA GPU)."""

    def validate(self) -> None:
        require(self.r >= 1 and self.alpha > 0, "r must be >= 1 and alpha > 0")
        require(0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)")


@dataclass(frozen=True)
class ModelConfig:
    name_or_path: str = field(default="smollm2-135m-instruct", metadata=MODEL_PATH)
    """A local Hugging Face model directory or a builtin name (smollm2-135m-instruct)."""
    dtype: DType = "float32"
    """Weights dtype: float32, bfloat16, float16 or auto."""
    trust_remote_code: bool = False
    """Allow custom modelling code shipped with the checkpoint. Off unless you trust the source."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """LoRA / QLoRA adapters."""
    num_layers: int | None = None
    """Keep only the first N transformer blocks of the checkpoint (a shallow, much faster model, e.g. a cheap reward model). None = all."""
    trainable_layers: int | None = None
    """Train only the top N transformer blocks (and the final norm and new heads); embeddings and lower blocks are frozen, so the backward pass stops early. None = train everything."""
    fused_head: bool = True
    """Compute token log-probs, entropy and the SFT loss from the last hidden states chunk by chunk (hidden @ W^T per chunk, recomputed in the backward), so no (batch, length, vocabulary) logits are ever held; same values to float tolerance. A model whose output head cannot be reproduced exactly (checked on the first forward) falls back to its own head with a warning."""
    padding_free: bool = False
    """Pack each micro-batch's rows into one row (position ids restart per row, attention cannot cross rows) for SFT, DPO, KTO, the reward model and the RL update, so no FLOP is spent on padding; same results to float tolerance."""
    disable_dropout: bool = True
    """Turn every dropout off, as RLHF peers do: the DPO loss at step 0 is exactly log 2 and PPO's first ratio exactly 1. false keeps the checkpoint's dropout."""

    def validate(self) -> None:
        require(self.num_layers is None or self.num_layers >= 1, "num_layers must be >= 1 (or unset)")
        require(self.trainable_layers is None or self.trainable_layers >= 0, "trainable_layers must be >= 0 (or unset)")


@dataclass(frozen=True)
class CurationConfig:
    dedupe: bool = True
    """Drop exact duplicates (whitespace- and case-normalized)."""
    near_dedupe: bool = False
    """Drop near duplicates (MinHash over word 5-grams)."""
    near_threshold: float = 0.8
    """Jaccard similarity at or above which two rows are near duplicates."""
    scrub_pii: bool = False
    """Replace e-mail addresses, phone and card numbers with placeholders."""
    min_chars: int = 1
    """Drop rows whose response is shorter than this many characters."""
    max_chars: int | None = None
    """Drop rows whose response is longer than this many characters."""

    def validate(self) -> None:
        require(0.0 < self.near_threshold <= 1.0, "near_threshold must be in (0, 1]")
        require(self.max_chars is None or self.max_chars >= self.min_chars, "max_chars must be >= min_chars")


@dataclass(frozen=True)
class DataConfig:
    train: str = field(default="", metadata=FILE_PATH)
    """Training data: a .jsonl / .json / .parquet file (optionally .gz), or a builtin sample name (sample:sft, sample:prefs)."""
    eval: str | None = field(default=None, metadata=FILE_PATH)
    """Held-out data; when absent, eval_fraction of the training rows is held out."""
    eval_fraction: float = 0.1
    """Share of training rows held out when no eval file is given."""
    max_length: int = 512
    """Longest prompt + response in tokens."""
    max_prompt_length: int | None = None
    """Longest prompt in tokens (prompts are cut from the left); None = half of max_length (256 for the default 512)."""
    truncation: Truncation = "keep_end"
    """keep_end: cut long prompts from the left and long responses from the right; drop: drop rows that do not fit."""
    max_rows: int | None = None
    """Use at most this many training rows (drawn with the seed)."""
    skip_invalid: bool = False
    """Drop malformed rows (broken JSON lines included) with a warning that counts them, instead of stopping at the
    first one."""
    packing: bool = False
    """SFT only: pack several short examples into one sequence (the other commands refuse it)."""
    curation: CurationConfig = field(default_factory=CurationConfig)
    """Cleaning applied after loading."""

    @property
    def prompt_length(self) -> int:
        """max_prompt_length, or half of max_length when it is unset."""
        return self.max_prompt_length if self.max_prompt_length is not None else self.max_length // 2

    def validate(self) -> None:
        require(self.max_length >= 2, "max_length must be at least 2")
        require(
            self.max_prompt_length is None or 0 < self.max_prompt_length < self.max_length,
            f"max_prompt_length={self.max_prompt_length} must be positive and smaller than "
            f"max_length={self.max_length} (or unset: half of max_length)",
        )
        require(0.0 <= self.eval_fraction < 1.0, "eval_fraction must be in [0, 1)")
        require(self.max_rows is None or self.max_rows >= 1, "max_rows must be >= 1 (or unset)")


@dataclass(frozen=True)
class TrainConfig:
    output_dir: str = ""
    """Where the model, checkpoints, resolved config, metrics.jsonl and summary go; empty: a new directory
    outputs/<command>-<date>-<time>, printed at the start. A directory holding a run is refused unless resuming it."""
    seed: int = 0
    """Seed for data order, initialization and sampling."""
    epochs: float = 1.0
    """Passes over the training data (fractions allowed); ignored when max_steps > 0."""
    max_steps: int = 0
    """Optimizer steps to take; 0 means derive from epochs."""
    batch_size: int = 8
    """Examples per optimizer step per process (= micro_batch_size x grad_accum)."""
    micro_batch_size: int = 0
    """Examples per forward pass; 0 means batch_size (no accumulation). Must divide batch_size (online RL: sequences
    per forward, must divide the mini-batch)."""
    lr: float = 1e-5
    """Peak learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    warmup_ratio: float = 0.0
    """Share of steps with linear warm-up."""
    scheduler: Scheduler = "cosine"
    """Learning-rate schedule: constant, linear or cosine (after warm-up)."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this; 0 disables clipping."""
    mixed_precision: MixedPrecision = "no"
    """accelerate mixed precision: no, bf16 or fp16."""
    log_every: int = 1
    """Log metrics every N steps."""
    eval_every: int = 0
    """Evaluate on held-out data every N steps (0: only at the end)."""
    save_every: int = 0
    """Write a resumable checkpoint every N steps (0: only at the end)."""
    keep_checkpoints: int = 2
    """How many step checkpoints to keep."""
    resume: bool = False
    """Continue the run in output_dir from its newest checkpoint, with its saved config (config.yaml): settings given
    again must match it, except logging, checkpointing and the run's length (max_steps, epochs)."""
    report_to: tuple[Sink, ...] = ()
    """Extra metric sinks: tensorboard, mlflow, wandb (metrics.jsonl is always written)."""
    progress: bool = True
    """Show a progress bar."""
    fsdp: bool = False
    """Shard the model, gradients and optimizer state over the processes with FSDP2 (`fully_shard`, one unit per
    transformer block) through accelerate; also on under `accelerate launch --config_file configs/accelerate/fsdp2.yaml`.
    Checkpoints and the final model hold the full (gathered) weights."""
    deepspeed: ZeroStage = 0
    """DeepSpeed ZeRO stage through accelerate (SFT, reward model, DPO family, KTO): 2 partitions the gradients and
    the optimizer state over the processes, 3 the parameters too; 0 is off. Also on under `accelerate launch
    --config_file configs/accelerate/deepspeed_zero{2,3}.yaml`. Needs `pip install 'rlhfkit[deepspeed]'`. Checkpoints
    and the final model hold the full (gathered) weights."""
    collective_timeout: float = 1800.0
    """Seconds a collective (all-reduce, all-gather) may wait for the other processes before the run stops with an
    error naming the rank and the step (a hung process instead of a silent hang)."""

    @property
    def micro(self) -> int:
        return self.micro_batch_size or self.batch_size

    def validate(self) -> None:
        require(self.batch_size > 0, "batch_size must be positive")
        require(self.micro_batch_size >= 0, "micro_batch_size must be 0 (= batch_size) or positive")
        require(self.log_every >= 1 and self.keep_checkpoints >= 1, "log_every and keep_checkpoints must be at least 1")
        require(
            self.eval_every >= 0 and self.save_every >= 0 and self.max_steps >= 0 and self.epochs > 0,
            "eval_every, save_every and max_steps must be >= 0, and epochs > 0",
        )
        require(self.lr > 0 and self.weight_decay >= 0, "lr must be > 0 and weight_decay >= 0")
        require(0.0 <= self.warmup_ratio < 1.0, "warmup_ratio must be in [0, 1)")
        require(self.max_grad_norm >= 0, "max_grad_norm must be >= 0 (0 disables clipping)")
        for sink in self.report_to:  # checked before any work, not when the first metric is logged
            package = SINK_PACKAGES[sink]
            require(
                _sink_installed(sink),
                f"report_to={sink} needs the {package} package, which is not installed: pip install {package} "
                "(or pip install 'rlhfkit[tracking]' for every sink)",
            )
        require(self.collective_timeout > 0, "collective_timeout must be > 0 seconds")
        require(not (self.fsdp and self.deepspeed), "fsdp and deepspeed are two ways to shard: choose one")
        require(
            not self.deepspeed or importlib.util.find_spec("deepspeed") is not None,
            f"deepspeed={self.deepspeed} needs the deepspeed package, which is not installed: "
            "pip install 'rlhfkit[deepspeed]'",
        )
        require(
            not (self.deepspeed and self.mixed_precision == "fp16"),
            "mixed_precision=fp16 is not supported with deepspeed (its loss scaler is not wired to the loop): use bf16",
        )

    def validate_accumulation(self) -> None:
        """Offline trainers: micro-batches must tile the batch (online RL checks its mini-batches instead)."""
        require(
            self.batch_size % self.micro == 0,
            f"train.micro_batch_size={self.micro_batch_size} must divide train.batch_size={self.batch_size}",
        )

    @property
    def grad_accum(self) -> int:
        return self.batch_size // self.micro


# ----------------------------------------------------------------------------------------------------------------------
# Stage configs


@dataclass(frozen=True)
class SFTLossConfig:
    completion_only: bool = True
    """Train on assistant tokens only (prompt tokens carry no loss)."""
    aggregation: Aggregation = "token-mean"
    """token-mean (every completion token weighs the same) or sequence-mean (every example weighs the same)."""


@dataclass(frozen=True)
class SFTConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    """Policy to fine-tune."""
    data: DataConfig = field(default_factory=DataConfig)
    """Demonstrations (prompt/response or messages rows)."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=2e-5))
    """Optimization."""
    loss: SFTLossConfig = field(default_factory=SFTLossConfig)
    """Objective."""

    def validate(self) -> None:
        self.train.validate_accumulation()
        require(
            not (self.loss.aggregation == "sequence-mean" and self.data.packing),
            "loss.aggregation=sequence-mean needs one example per row: turn data.packing off",
        )


@dataclass(frozen=True)
class RewardLossConfig:
    tie_model: TieModel = "davidson"
    """How ties enter the likelihood: davidson (Davidson 1970) or rao-kupper (Rao & Kupper 1967)."""
    tie_param: float = 1.0
    """Davidson nu or Rao-Kupper theta (>1)."""
    use_margin: bool = True
    """Subtract each pair's strength from the reward difference (Llama 2 margin loss)."""
    margin_scale: float = 1.0
    """Multiplier on strength when used as a margin."""
    use_confidence: bool = True
    """Weight each pair's loss by its confidence."""
    magnitude_penalty: float = 0.0
    """Coefficient of (r_chosen^2 + r_rejected^2)/2, keeping rewards centred near zero."""

    def validate(self) -> None:
        if self.tie_model == "rao-kupper":
            require(self.tie_param > 1.0, "tie_param must be > 1 for the Rao-Kupper tie model (theta), e.g. 1.5")
        require(self.tie_param >= 0, "tie_param (Davidson nu) must be >= 0")
        require(self.magnitude_penalty >= 0 and self.margin_scale >= 0, "magnitude_penalty and margin_scale >= 0")


@dataclass(frozen=True)
class PRMConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    """Base model; a scalar head scores the end token of every step."""
    data: DataConfig = field(default_factory=DataConfig)
    """Step rows {"prompt", "steps": [...], "labels": [...]} (one label per step: true / false or a number in [0, 1])."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-5))
    """Optimization; train.batch_size counts responses (each with all its steps)."""
    delimiter: str = "\n"
    """What separates steps: training responses are the steps joined by it, and scored responses are split on it
    (saved with the model, so that a `kind: model` reward source reads its steps the same way)."""

    def validate(self) -> None:
        self.train.validate_accumulation()
        refuse_packing(self.data)
        require(bool(self.delimiter), "delimiter must be a non-empty string (e.g. a newline)")
        require(not self.model.padding_free, "model.padding_free: prm reads the score head at every token; turn it off")


@dataclass(frozen=True)
class RMConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    """Base model; a scalar head is added on top."""
    data: DataConfig = field(default_factory=DataConfig)
    """Preference or ranking rows."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-5))
    """Optimization."""
    loss: RewardLossConfig = field(default_factory=RewardLossConfig)
    """Objective."""
    group_pairs: bool = False
    """Train on every pair of a prompt together (a row is a prompt; train.batch_size counts prompts): each distinct
    response is scored once per step however many pairs and raters it is in. With K responses per prompt and all
    K(K-1)/2 pairs labelled, that is K-1 times fewer forwards per label (the same loss: a sum over pairs)."""
    objectives: tuple[str, ...] = ()
    """Multi-objective reward model: one head per named rubric dimension (e.g. [helpful, safe]), each trained with
    Bradley-Terry on the rows' "dimensions" labels for it (a row without that dimension skips that head). Empty: one
    scalar head on the overall chosen / rejected."""

    def validate(self) -> None:
        self.train.validate_accumulation()
        refuse_packing(self.data)
        names = [o.strip() for o in self.objectives]
        require(all(names), f"objectives has an empty name: {list(self.objectives)}")
        require(len(set(names)) == len(names), f"objectives must be distinct, got {list(self.objectives)}")


PREFERENCE_LOSS_NAMES: tuple[str, ...] = typing.get_args(PreferenceLossName)
"""The keys of rlhfkit.losses.PREFERENCE_LOSSES (named here so that configs validate without importing torch)."""


@dataclass(frozen=True)
class PreferenceLossConfig:
    name: PreferenceLossName = "dpo"
    """dpo, ipo, robust, hinge, simpo or orpo."""
    beta: float = 0.1
    """Strength of the implicit KL constraint (temperature of the implicit reward)."""
    label_smoothing: float = 0.0
    """Assumed label-noise rate for conservative (dpo) and robust DPO (robust needs it > 0: at 0 it is plain dpo)."""
    gamma: float = 0.5
    """SimPO target reward margin."""
    lam: float = 0.1
    """ORPO weight of the odds-ratio term."""
    reference: Literal["precompute", "live"] = "precompute"
    """Reference log-probs: precompute (one pass before training) or live (a forward per step)."""
    ties: DPOTies = "drop"
    """Rows marked "tie": drop them (counted in the summary), or train them with the tie-aware DPO of Chen et al.
    2024 under the davidson or rao-kupper tie model (loss.name=dpo only)."""
    tie_param: float = 1.0
    """Davidson nu (>= 0) or Rao-Kupper theta (> 1) of the tie-aware DPO."""

    def validate(self) -> None:
        require(self.beta > 0, "beta must be > 0")
        require(0.0 <= self.label_smoothing < 0.5, "label_smoothing must be in [0, 0.5)")
        require(
            self.name != "robust" or self.label_smoothing > 0,
            "label_smoothing must be > 0 for loss.name=robust (at 0 robust DPO is exactly dpo), e.g. 0.1",
        )
        if self.ties != "drop":
            require(self.name == "dpo", f"ties={self.ties} is the tie-aware DPO: it needs loss.name=dpo")
            require(
                self.tie_param > 1.0 if self.ties == "rao-kupper" else self.tie_param > 0,
                "tie_param must be > 1 (Rao-Kupper theta) or > 0 (Davidson nu) to train ties",
            )


@dataclass(frozen=True)
class DPOConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    """Policy; also the reference (frozen copy, or the same weights with adapters disabled under LoRA)."""
    reference: str | None = field(default=None, metadata=MODEL_PATH)
    """Reference model path when it differs from model.name_or_path."""
    data: DataConfig = field(default_factory=DataConfig)
    """Preference or ranking rows."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=5e-6))
    """Optimization."""
    loss: PreferenceLossConfig = field(default_factory=PreferenceLossConfig)
    """Objective."""
    eval_kl_samples: int = 8
    """After training, sample this many held-out prompts from the policy and report KL to the reference (0: skip)."""
    eval_kl_tokens: int = 32
    """New tokens per sample for that KL estimate."""
    group_same_responses: bool = False
    """Shuffle the training pairs so that pairs comparing the same two responses (under different prompts) share an
    optimizer step: e.g. the preference-conditioned rows of `rlhfkit sample weights_per_prompt=N`, where one opening's
    best and worst swap places under opposite tags, so that only the tag explains the label. Off: pairs move one by
    one, and a step can be pulled by whichever tag its pairs mostly carry."""

    def validate(self) -> None:
        self.train.validate_accumulation()
        require(self.eval_kl_samples >= 0 and self.eval_kl_tokens >= 1, "eval_kl_samples >= 0, eval_kl_tokens >= 1")
        refuse_packing(self.data)


@dataclass(frozen=True)
class KTOLossConfig:
    beta: float = 0.1
    """Temperature of the implicit reward beta * (log pi - log ref)."""
    desirable_weight: float = 1.0
    """lambda_D: weight of desirable examples (raise it when they are rarer than undesirable ones)."""
    undesirable_weight: float = 1.0
    """lambda_U: weight of undesirable examples."""

    def validate(self) -> None:
        require(self.beta > 0, "beta must be > 0")
        require(
            self.desirable_weight > 0 and self.undesirable_weight > 0, "desirable_weight and undesirable_weight > 0"
        )


@dataclass(frozen=True)
class KTOConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    """Policy; also the reference (frozen copy, or the same weights with adapters disabled under LoRA)."""
    reference: str | None = field(default=None, metadata=MODEL_PATH)
    """Reference model path when it differs from model.name_or_path."""
    data: DataConfig = field(default_factory=DataConfig)
    """Unpaired feedback rows {"prompt", "response", "label": bool}."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=5e-6))
    """Optimization."""
    loss: KTOLossConfig = field(default_factory=KTOLossConfig)
    """Objective."""

    def validate(self) -> None:
        self.train.validate_accumulation()
        require(
            self.train.micro >= 2,
            "train.micro_batch_size must be >= 2: KTO estimates its KL reference point from mismatched pairs",
        )
        refuse_packing(self.data)


# ----------------------------------------------------------------------------------------------------------------------
# Online RL: rollout, reward sources, KL, algorithm


REWARD_KINDS: tuple[str, ...] = typing.get_args(RewardKind)
ALGORITHMS: tuple[str, ...] = typing.get_args(AlgoName)


@dataclass(frozen=True)
class RewardSpec:
    kind: RewardKind = "model"
    """model (a reward model directory, or a process reward model saved by `rlhfkit prm`), multi_rm (a reward model
    with one head per objective, from `rlhfkit rm objectives=[...]`: each head is a part, the total their weighted
    sum), ensemble (several reward model directories), rule (a builtin rule: length, format, keywords), callable (any
    Python function), sentiment (the VADER gold scorer of the sentiment task) or arithmetic (the rule checker of the
    arithmetic task: final answer and every step)."""
    path: str = field(default="", metadata=REWARD_PATH)
    """model: the directory; ensemble: comma-separated directories; rule: the rule's name; callable:
    "package.module:function" or "path/to/file.py:function" taking (prompts, responses) lists -> list of floats."""
    weight: float = 1.0
    """Weight of this source in the total (weighted multi-objective sum)."""
    name: str = ""
    """Label in logs (default: derived from kind and path)."""
    params: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of a rule or callable, e.g. {target: 40, coef: 0.01} for the length rule; multi_rm: {weights:
    {head: weight}} (default 1 each); sentiment: {polarity: negative} scores -compound (default positive)."""
    reduce: EnsembleReduce = "mean"
    """Ensemble reduction: mean, min, or mean-std (mean - std_coef * std; pessimistic under disagreement)."""
    std_coef: float = 1.0
    """k in mean - k * std for reduce=mean-std."""
    batch_size: int = 16
    """Responses per reward-model forward pass."""
    max_length: int | None = None
    """Longest prompt + response a reward model sees, in tokens (prompts cut from the left); None = as it was trained
    (recorded by `rlhfkit rm`), else 1024."""

    def validate(self) -> None:
        require(
            self.kind in ("sentiment", "arithmetic") or bool(self.path),
            f"path is empty: a {self.kind} source needs one",
        )
        require(self.batch_size >= 1, "batch_size must be >= 1")


@dataclass(frozen=True)
class RewardConfig:
    sources: tuple[RewardSpec, ...] = ()
    """One or more reward sources; several are summed with their weights."""
    normalize: bool = False
    """Standardize the total with a running mean and std over every score seen so far (Welford)."""
    clip: float | None = None
    """Clip the (normalized) total to [-clip, clip]."""

    def validate(self) -> None:
        require(self.clip is None or self.clip > 0, f"clip must be > 0 (or unset), got {self.clip}")


@dataclass(frozen=True)
class SamplingConfig:
    max_new_tokens: int = 64
    """Longest response in tokens; generation also stops at EOS."""
    min_new_tokens: int = 0
    """Shortest response (EOS is suppressed before it)."""
    temperature: float = 1.0
    """Sampling temperature; the training log-probs use the same one. 0 means greedy."""
    top_k: int = 0
    """Sample from the k likeliest tokens only (0: off). Training log-probs ignore the truncation; keep 0 for exact PPO."""
    top_p: float = 1.0
    """Nucleus sampling mass (1.0: off). Same caveat as top_k."""
    batch_size: int = 64
    """Sequences per generate call (prompts are bucketed by length)."""
    backend: Backend = "auto"
    """hf: transformers generate with a dynamic KV cache; hf-static: a static KV cache with the decoding step compiled
    by torch.compile (about 6x faster decoding on an H100 after a one-off compile of ~35 s); auto: hf-static on CUDA,
    hf elsewhere."""

    def validate(self) -> None:
        require(
            self.max_new_tokens >= 1 and 0 <= self.min_new_tokens <= self.max_new_tokens,
            "max_new_tokens must be >= 1 and 0 <= min_new_tokens <= max_new_tokens",
        )
        require(self.temperature >= 0, "temperature must be >= 0 (0 = greedy)")
        require(self.top_k >= 0 and 0.0 < self.top_p <= 1.0, "top_k must be >= 0 and top_p in (0, 1]")
        require(self.batch_size >= 1, "batch_size must be at least 1")


@dataclass(frozen=True)
class KLConfig:
    coef: float = 0.05
    """(Initial) KL coefficient beta."""
    controller: KLControllerName = "fixed"
    """fixed, or adaptive (Ziegler et al. 2019: beta tracks target)."""
    target: float = 6.0
    """Adaptive controller: target KL per sequence, in nats."""
    horizon: float = 10000.0
    """Adaptive controller: horizon in samples."""
    estimator: KLEstimator = "k1"
    """Per-token KL estimator: k1 (log ratio), k2 or k3 (Schulman 2020). In the loss (placement=loss) k1 has zero
    expected gradient and is refused; k3 there is logged as k3 and differentiated as k2, whose gradient is that of
    KL(pi || ref)."""
    placement: KLPlacement = "reward"
    """reward: subtract beta * KL from the token rewards (PPO, RLOO, REINFORCE++); loss: add beta * KL to the loss
    (GRPO)."""
    uncertainty_scale: float = 0.0
    """Scale each sequence's KL coefficient by (1 + c * ensemble std): stay closer to the reference where the reward
    models disagree. 0 disables."""
    log_ratio_clip: float | None = 10.0
    """Clamp log pi - log ref to [-c, c] before the estimator (k3 overflows on tokens the reference finds far likelier;
    OpenRLHF uses 10). None disables."""
    per_domain: dict[str, float] = field(default_factory=dict)
    """(Initial) KL coefficient per prompt domain (the prompt rows' "domain" field), e.g. {safety: 0.2, chit-chat:
    0.02}: each listed domain gets its own controller (adaptive ones track their KL separately); other domains and
    untagged prompts use coef. Every listed domain must occur in the training prompts."""
    per_domain_target: dict[str, float] = field(default_factory=dict)
    """Adaptive controller: target KL per domain of per_domain (domains not listed here use target)."""

    def validate(self) -> None:
        require(
            self.coef >= 0 and (self.controller != "adaptive" or self.coef > 0),
            "coef must be >= 0 (and > 0 for the adaptive controller)",
        )
        for name, c in self.per_domain.items():
            require(
                c >= 0 and (self.controller != "adaptive" or c > 0),
                f"per_domain.{name} must be >= 0 (and > 0 for the adaptive controller), got {c}",
            )
        for name, t in self.per_domain_target.items():
            require(t > 0, f"per_domain_target.{name} must be > 0, got {t}")
            require(
                name in self.per_domain,
                f"per_domain_target.{name}: {name!r} has no coefficient in per_domain "
                f"({', '.join(sorted(self.per_domain)) or 'empty'}); add per_domain.{name}",
            )
        require(
            not self.per_domain_target or self.controller == "adaptive",
            "per_domain_target needs controller=adaptive (a fixed controller has no target)",
        )
        require(
            self.placement != "loss" or self.estimator != "k1",
            "estimator=k1 has zero expected gradient in the loss (placement=loss): use k2 or k3",
        )
        require(self.target > 0 and self.horizon > 0, "target and horizon must be > 0")
        require(self.uncertainty_scale >= 0, "uncertainty_scale must be >= 0")
        require(self.log_ratio_clip is None or self.log_ratio_clip > 0, "log_ratio_clip must be > 0 (or unset)")


@dataclass(frozen=True)
class AlgoConfig:
    name: AlgoName = "ppo"
    """ppo (critic + GAE), grpo, rloo, reinforce (REINFORCE++; "reinforce++" is read as reinforce) or online-dpo."""
    num_samples: int = 1
    """Responses per prompt (the group size of grpo / rloo, the candidates of online-dpo)."""
    epochs: int = 4
    """Passes over each rollout batch (PPO epochs)."""
    mini_batch_size: int = 0
    """Sequences per optimizer step within a rollout batch; 0 means the whole batch (one step per epoch)."""
    clip: float = 0.2
    """Clip range of the probability ratio (epsilon)."""
    clip_high: float | None = None
    """Upper clip range when it differs from clip (DAPO clip-higher)."""
    dual_clip: float | None = None
    """Dual-clip bound c > 1 for negative advantages (Ye et al. 2020)."""
    tis_cap: float | None = None
    """Truncated importance sampling (Yao et al. 2025): weight each token's policy-gradient term by min(pi_old /
    pi_rollout, tis_cap), pi_rollout the engine's own sampling log-prob; corrects for the rollout engine's kernels
    differing from the training forward's. None: off, the default: in float32 on CPU the engines match the training
    forward to 4e-5 nats (docs/benchmarks.md); 2 (Yao et al.'s value) for bf16 weights or mixed precision (gaps up to
    ~0.3 nats a token) and compiled GPU decoding. The logged mismatch/gap_abs_max shows whether a run needs it."""
    target_kl: float | None = None
    """Stop the remaining epochs of a rollout once the approximate KL to the rollout policy exceeds this."""
    entropy_coef: float = 0.0
    """Entropy bonus coefficient."""
    aggregation: Aggregation = "token-mean"
    """token-mean or sequence-mean loss aggregation."""
    whiten_advantages: bool = True
    """Whiten advantages over the batch (ppo and rloo; reinforce always whitens, grpo normalizes per group)."""
    scale_by_std: bool = True
    """GRPO: divide by the group std (false: Dr. GRPO)."""
    gamma: float = 1.0
    """Discount (GAE and REINFORCE++)."""
    lam: float = 0.95
    """GAE lambda."""
    critic: Critic = "head"
    """ppo only: head (a value head on the policy), separate (its own network) or none."""
    critic_path: str | None = None
    """Initialize a separate critic from this directory (e.g. the reward model); default: the policy checkpoint."""
    vf_coef: float = 0.1
    """Value loss coefficient."""
    value_clip: float | None = 0.2
    """Clip range of the value loss (None: unclipped)."""
    critic_lr: float | None = None
    """Learning rate of the critic / value head (default: train.lr)."""
    missing_eos_penalty: float | None = None
    """Subtract this from the score of responses that never reached EOS."""
    dpo_beta: float = 0.1
    """online-dpo: beta of the DPO loss on (best, worst) pairs of each prompt's samples."""
    reward_placement: RewardPlacement = "outcome"
    """outcome: each response's score at its last token; process: each step's reward at the token that ends the step
    (process reward models and the arithmetic rule score steps; an outcome-only source counts as a reward on the last
    step). ppo runs GAE over them, grpo normalizes step rewards across the group (Shao et al. 2024 §4.1.3), reinforce
    takes the return-to-go."""

    def validate(self) -> None:
        require(
            self.name not in ("grpo", "rloo", "online-dpo") or self.num_samples >= 2,
            f"num_samples must be >= 2: algo.name={self.name} compares samples of the same prompt; set algo.num_samples >= 2",
        )
        require(
            self.num_samples >= 1 and self.epochs >= 1 and self.mini_batch_size >= 0,
            "num_samples and epochs must be >= 1, mini_batch_size >= 0",
        )
        require(
            self.name != "ppo" or self.critic != "none",
            "critic=none: algo.name=ppo estimates advantages with GAE and needs a critic (head or separate)",
        )
        require(0 < self.clip < 1, "clip must be in (0, 1)")
        require(0 < self.gamma <= 1 and 0 <= self.lam <= 1, "gamma must be in (0, 1] and lam in [0, 1]")
        for key in ("target_kl", "dpo_beta", "critic_lr", "value_clip", "clip_high"):
            value = getattr(self, key)
            require(value is None or value > 0, f"{key} must be > 0 (or unset), got {value}")
        require(self.dual_clip is None or self.dual_clip > 1, "dual_clip must be > 1 (Ye et al. 2020)")
        require(
            self.tis_cap is None or self.tis_cap >= 1,
            f"tis_cap must be >= 1 (a cap below 1 would shrink even exact tokens' weight 1), got {self.tis_cap}",
        )
        require(
            self.tis_cap is None or self.name != "online-dpo",
            "tis_cap weights a policy gradient: algo.name=online-dpo has none (unset algo.tis_cap)",
        )
        require(self.vf_coef >= 0 and self.entropy_coef >= 0, "vf_coef and entropy_coef must be >= 0")


@dataclass(frozen=True)
class PreferenceVectorConfig:
    objectives: tuple[str, ...] = ()
    """Condition the policy on a preference vector over these objectives (empty: off). Each names a reward source
    (its `name`, e.g. sentiment) or a head of a multi_rm source; every prompt gets weights w ~ Dirichlet(alpha) written
    into it, and its responses' reward is sum_k w_k * r_k, so that at inference the weights in the prompt move the
    policy along the trade-off without retraining (`rlhfkit pareto` sweeps them)."""
    dirichlet_alpha: float = 1.0
    """Concentration of the Dirichlet the weights are drawn from: 1 is uniform on the simplex, < 1 favours corners."""
    mirrored: bool = False
    """Antithetic weights: of each draw (a step's prompts, or `rlhfkit sample weights_per_prompt=N`'s vectors of one
    prompt) the first half is drawn and the second half is the first reversed, (a, b) -> (b, a) for two objectives.
    Each vector keeps its Dirichlet law, but the draw as a whole favours no objective: the reward has no net pull
    that a policy could follow without reading the weights, and with weights_per_prompt=2 every prompt's two rows
    rank its responses under opposite weights (best and worst swap for opposed objectives)."""
    format: str = "[weights {weights}]"
    """The tag appended (on its own line) to the prompt's last user turn; {weights} becomes "name=0.70 other=0.30".
    At the end, so that keep_end prompt truncation never cuts it."""
    decimals: int = 2
    """Weights are rounded to this many decimals, and the reward uses exactly the rounded weights the policy reads."""
    levels: tuple[str, ...] = ()
    """Write each weight as a word instead of a number: with L levels, levels[i] stands for the weight i / (L - 1),
    e.g. [not, slightly, fairly, very, only]; weights are snapped to that grid, and the reward uses the snapped weights,
    which is what the policy reads. Words an instruction-tuned model knows can be easier to learn than decimals
    (docs/benchmarks.md). Empty: numbers with `decimals`."""
    entry: str = "{name}={weight}"
    """How one objective is written in the tag: {name} is the objective, {weight} its number or level word (e.g.
    "{weight} {name}" with levels reads "very sentiment")."""
    separator: str = " "
    """Between the entries of the tag."""

    def validate(self) -> None:
        names = [o.strip() for o in self.objectives]
        require(all(names), f"objectives has an empty name: {list(self.objectives)}")
        require(len(set(names)) == len(names), f"objectives must be distinct, got {list(self.objectives)}")
        require(not names or len(names) >= 2, "objectives: a preference vector needs at least 2 objectives")
        require(self.dirichlet_alpha > 0, f"dirichlet_alpha must be > 0, got {self.dirichlet_alpha}")
        require("{weights}" in self.format, f"format must contain {{weights}}, got {self.format!r}")
        require(1 <= self.decimals <= 6, f"decimals must be in [1, 6], got {self.decimals}")
        words = [w.strip() for w in self.levels]
        require(
            not words or (len(words) >= 2 and all(words)), f"levels needs >= 2 non-empty words, got {list(self.levels)}"
        )
        require(len(set(words)) == len(words), f"levels must be distinct, got {list(self.levels)}")
        require(
            "{name}" in self.entry and "{weight}" in self.entry,
            f"entry must contain {{name}} and {{weight}}, got {self.entry!r}",
        )


def _unit_source_weights(preference: PreferenceVectorConfig, reward: RewardConfig) -> None:
    """With a preference vector, the objectives' weights come from it: every reward source keeps weight 1."""
    if not preference.objectives:
        return
    for i, spec in enumerate(reward.sources):
        require(
            spec.weight == 1.0,
            f"reward.sources[{i}].weight={spec.weight}: with preference.objectives the weights come from the "
            "preference vector; leave the source weights at 1",
        )


@dataclass(frozen=True)
class ShardingConfig:
    """Online RL under FSDP2 (train.fsdp=true or accelerate's fsdp2.yaml) or DeepSpeed ZeRO (train.deepspeed=2|3 or a
    deepspeed_zero*.yaml launch config); ignored otherwise."""

    rollout: RolloutWeights = "gather"
    """How the rollout engine gets whole weights: gather (all-gather the policy for each generate call, freed after;
    ZeRO-2 holds them whole already) or copy (an unsharded inference copy per process, synced before each generate
    call: more memory, faster decoding). docs/benchmarks.md measures both."""
    frozen: FrozenPlacement = "replicate"
    """The frozen reference and reward models: shard (FSDP2 only, gathered block by block at each forward: less
    memory) or replicate (a whole copy per process: no communication). Under LoRA the reference is the policy
    itself."""


@dataclass(frozen=True)
class RLConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    """Policy to optimize; also the reference (frozen copy, or adapters disabled under LoRA)."""
    reference: str | None = field(default=None, metadata=MODEL_PATH)
    """Reference model path when it differs from model.name_or_path."""
    data: DataConfig = field(default_factory=lambda: DataConfig(max_length=1024, max_prompt_length=256))
    """Prompt rows {"prompt": ...}; data.max_prompt_length cuts long prompts from the left."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-6, batch_size=8, scheduler="constant"))
    """Optimization; train.batch_size = prompts per rollout (per process), train.max_steps = rollouts."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """How responses are generated."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """Reward sources."""
    kl: KLConfig = field(default_factory=KLConfig)
    """KL penalty to the reference."""
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    """The policy-optimization algorithm."""
    eval_samples: int = 16
    """Held-out prompts sampled before and after training (and every train.eval_every rollouts) to report score, KL
    and length."""
    gold: RewardConfig = field(default_factory=RewardConfig)
    """Optional held-out-only reward sources (e.g. a gold scorer), reported beside the training reward: proxy vs gold."""
    preference: PreferenceVectorConfig = field(default_factory=PreferenceVectorConfig)
    """Preference-vector policy: random objective weights in each prompt, reward = their weighted sum (off by default)."""
    sharding: ShardingConfig = field(default_factory=ShardingConfig)
    """Online RL under FSDP2: whole weights for the rollout engine, frozen models sharded or replicated."""

    def validate(self) -> None:
        refuse_packing(self.data)
        _unit_source_weights(self.preference, self.reward)
        a, tc = self.algo, self.train
        rows = tc.batch_size * a.num_samples
        mini = a.mini_batch_size or rows
        require(
            rows % mini == 0,
            f"algo.mini_batch_size={mini} must divide the rollout batch train.batch_size x algo.num_samples = {rows}",
        )
        micro = tc.micro_batch_size or mini  # online RL: sequences per forward; 0 = the whole mini-batch
        require(mini % micro == 0, f"train.micro_batch_size={micro} must divide the mini-batch of {mini} sequences")
        require(
            a.name != "online-dpo" or not (mini % 2 or micro % 2),
            "online-dpo trains on pairs: algo.mini_batch_size and train.micro_batch_size must be even",
        )
        live = getattr(self, "live", None)  # online DPO with live human feedback needs no reward source
        require(
            bool(self.reward.sources) or (live is not None and live.enabled),
            "reward.sources is empty: give at least one reward source, e.g. a reward model directory",
        )
        require(
            tc.mixed_precision != "fp16", "train.mixed_precision=fp16 is not supported for online RL: use bf16 (or no)"
        )
        require(self.eval_samples >= 0, "eval_samples must be >= 0")
        require(
            not (self.sampling.temperature == 0 and a.num_samples > 1),
            "sampling.temperature=0 (greedy) makes a prompt's samples identical: use a temperature > 0",
        )
        # EOS suppressed while sampling but not in the training log-probs would make the ratio and the KL wrong
        require(
            self.sampling.min_new_tokens == 0,
            "sampling.min_new_tokens must be 0 for online RL: the training log-probs cannot see the suppressed EOS "
            "(penalize short responses with a reward rule instead, e.g. {kind: rule, path: length})",
        )
        require(
            a.reward_placement == "outcome" or a.name in ("ppo", "grpo", "reinforce"),
            f"algo.reward_placement=process needs per-token credit: use ppo, grpo or reinforce (not {a.name})",
        )
        require(
            a.reward_placement == "outcome" or not (self.reward.normalize or self.reward.clip is not None),
            "reward.normalize and reward.clip act on one score per response: turn them off for "
            "algo.reward_placement=process",
        )
        require(
            self.kl.placement == "reward" or self.kl.uncertainty_scale == 0 or a.name != "online-dpo",
            "kl.uncertainty_scale has no effect on online-dpo: set it to 0",
        )


@dataclass(frozen=True)
class PPOConfig(RLConfig):
    pass


@dataclass(frozen=True)
class GRPOConfig(RLConfig):
    kl: KLConfig = field(default_factory=lambda: KLConfig(coef=0.04, estimator="k3", placement="loss"))
    """KL penalty to the reference (GRPO: k3 in the loss, Shao et al. 2024 eq. 4)."""
    algo: AlgoConfig = field(default_factory=lambda: AlgoConfig(name="grpo", num_samples=4, epochs=1, critic="none"))
    """The policy-optimization algorithm."""


@dataclass(frozen=True)
class RLOOConfig(RLConfig):
    algo: AlgoConfig = field(
        default_factory=lambda: AlgoConfig(name="rloo", num_samples=4, epochs=1, critic="none", whiten_advantages=False)
    )
    """The policy-optimization algorithm."""


@dataclass(frozen=True)
class ReinforceConfig(RLConfig):
    algo: AlgoConfig = field(default_factory=lambda: AlgoConfig(name="reinforce", epochs=1, critic="none"))
    """The policy-optimization algorithm."""


@dataclass(frozen=True)
class LiveSettings:
    """Live human feedback while online DPO trains (rlhfkit.feedback.live): the knobs shared by the trainer's `live`
    section and the pipeline's `label.live`."""

    queue: int = 8
    """Pairs kept waiting for raters: once batch_pairs of them are labelled (or stale), the current policy samples that
    many more."""
    batch_pairs: int = 4
    """Labelled pairs an update waits for; it then trains on every labelled pair not used yet (each pair once)."""
    staleness: int = 4
    """K: a label on a pair sampled more than K policy versions (updates) before the update that would use it is
    stale."""
    stale: StaleMode = "drop"
    """What a stale label gets: drop (not trained on; counted) or downweight (weight stale_decay^(age - K))."""
    stale_decay: float = 0.5
    """stale=downweight: the weight's factor per version beyond K."""
    min_rate: float = 0.0
    """Labels per minute (over the last `window` seconds) below which training pauses, even with labels waiting,
    rather than drift on a trickle; 0 = never pause."""
    window: float = 60.0
    """Seconds over which the label rate is measured."""
    wait_timeout: float = 600.0
    """Stop with an error (after a checkpoint: --resume continues) when no update was possible for this many seconds;
    0 = wait for ever."""
    poll_seconds: float = 0.5
    """How often the annotation store is read for new labels while waiting."""

    def validate(self) -> None:
        require(self.queue >= 1 and self.batch_pairs >= 1, "queue and batch_pairs must be >= 1")
        require(
            self.batch_pairs <= self.queue,
            f"batch_pairs={self.batch_pairs} must be <= queue={self.queue}: an update waits for that many queued pairs",
        )
        require(self.staleness >= 0, f"staleness must be >= 0 (policy versions), got {self.staleness}")
        require(0.0 < self.stale_decay <= 1.0, f"stale_decay must be in (0, 1], got {self.stale_decay}")
        require(self.min_rate >= 0 and self.window > 0, "min_rate must be >= 0 and window > 0")
        require(self.wait_timeout >= 0 and self.poll_seconds > 0, "wait_timeout must be >= 0 and poll_seconds > 0")


@dataclass(frozen=True)
class LiveConfig(LiveSettings):
    db: str = ""
    """Annotation database (SQLite file or SQLAlchemy URL) the raters label in (`rlhfkit annotate serve --db`); empty =
    no live feedback. Set, the policy's fresh samples stream to `campaign` and human labels are the preference."""
    campaign: str = "live"
    """Campaign the samples stream into (created on the first push; a name an earlier run took gets "-2", "-3"...)."""
    raters_per_item: int = 1
    """Raters per pair; with more than one, the majority's answer once all of them have answered."""

    @property
    def enabled(self) -> bool:
        return bool(self.db)

    def validate(self) -> None:
        super().validate()
        require(self.raters_per_item >= 1, f"raters_per_item must be >= 1, got {self.raters_per_item}")
        require(bool(self.campaign.strip()), "campaign must be a non-empty name")


@dataclass(frozen=True)
class OnlineDPOConfig(RLConfig):
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=5e-7, batch_size=8, scheduler="constant"))
    """Optimization; train.batch_size = prompts per rollout (per process), train.max_steps = rollouts."""
    kl: KLConfig = field(default_factory=lambda: KLConfig(coef=0.0))
    """Logged KL to the reference (the DPO beta already holds the policy near it; coef adds nothing here)."""
    algo: AlgoConfig = field(
        default_factory=lambda: AlgoConfig(name="online-dpo", num_samples=4, epochs=1, critic="none")
    )
    """The policy-optimization algorithm."""
    live: LiveConfig = field(default_factory=LiveConfig)
    """Live human feedback: pairs of the current policy's samples labelled by raters in the annotation app (live.db)
    instead of ranked by reward.sources."""

    def validate(self) -> None:
        super().validate()
        if self.live.enabled:
            require(self.algo.num_samples == 2, "live feedback labels pairs: algo.num_samples must be 2")
            require(self.train.max_steps > 0, "live feedback: train.max_steps (updates) must be set (> 0)")


@dataclass(frozen=True)
class SampleConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    """Model to sample from."""
    data: DataConfig = field(
        default_factory=lambda: DataConfig(eval_fraction=0.0, max_length=1024, max_prompt_length=256)
    )
    """Prompt rows {"prompt": ...}."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """How responses are generated."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """Reward sources for best-of-N (optional otherwise)."""
    num_samples: int = 4
    """Responses per prompt (N of best-of-N)."""
    best_of: bool = False
    """Keep only the highest-scoring response of each prompt."""
    format: SampleFormat = "samples"
    """Output rows: samples ({"prompt", "responses", "scores"}), sft (the best response: rejection-sampling
    fine-tuning data) or prefs (best vs worst as a preference pair)."""
    output: str = "samples.jsonl"
    """Output JSONL file (an existing file is refused unless overwrite=true)."""
    overwrite: bool = False
    """Replace an existing output file."""
    seed: int = 0
    """Sampling seed."""
    preference: PreferenceVectorConfig = field(default_factory=PreferenceVectorConfig)
    """Preference-conditioned data (the offline stage of Rewards-in-Context, Yang et al. 2024): with objectives set and
    format sft or prefs, each prompt's responses (sampled from the untagged prompt) are scored per objective, and for
    each of `weights_per_prompt` weight vectors w ~ Dirichlet(alpha) the row's prompt carries w's tag (as an online
    run with the same preference settings writes it) and its response is the best under w . r (sft), or best vs worst
    under w . r (prefs). Train on it with `rlhfkit sft` / `rlhfkit dpo`, then optionally an online run with the same
    preference settings; `rlhfkit pareto` sweeps the result."""
    weights_per_prompt: int = 1
    """Weight vectors drawn per prompt for preference-conditioned rows (each a row of its own)."""

    def validate(self) -> None:
        require(self.num_samples >= 1, "num_samples must be at least 1")
        refuse_packing(self.data)
        if self.preference.objectives:
            require(
                self.format in ("sft", "prefs") and not self.best_of,
                f"preference.objectives needs format=sft or format=prefs (and best_of=false), got format={self.format}",
            )
            require(self.weights_per_prompt >= 1, f"weights_per_prompt must be >= 1, got {self.weights_per_prompt}")
        _unit_source_weights(self.preference, self.reward)
        require(
            not ((self.best_of or self.format != "samples") and not self.reward.sources),
            "best-of-N and the sft / prefs formats need a reward source (reward.sources)",
        )
        require(self.format != "prefs" or self.num_samples >= 2, "format=prefs needs num_samples >= 2")


@dataclass(frozen=True)
class RedTeamConfig:
    """`rlhfkit eval --redteam`: a GCG adversarial-suffix search (Zou et al. 2023, Alg. 1) on the harmful prompt set."""

    prompts: int = 10
    """Harmful prompts attacked, taken round-robin over the domains of the shipped set (at most 40)."""
    steps: int = 30
    """GCG iterations per prompt (T of Alg. 1); the search also stops at the time budgets."""
    time: float = 0.0
    """Seconds of search per prompt (0: no limit); checked before each step, so a started step finishes."""
    total_time: float = 0.0
    """Seconds of search per model, shared among its prompts still to attack (0: no limit)."""
    suffix_length: int = 16
    """Adversarial suffix length in tokens, appended to the user's message."""
    topk: int = 64
    """Replacement tokens per suffix position: the k largest negative one-hot gradients (k of Alg. 1)."""
    batch: int = 64
    """Candidate suffixes (single-token swaps) evaluated per step (B of Alg. 1)."""
    micro_batch: int = 32
    """Candidates per forward pass (memory only: the losses do not depend on it)."""
    target: str = "Sure, here is"
    """Affirmative response prefix whose likelihood the suffix maximises."""
    max_new_tokens: int = 48
    """Greedy response length used to judge success, before and after the attack."""
    success: RedTeamSuccess = "no-refusal"
    """An attack succeeds when the greedy response is not a refusal (rlhfkit.eval.safety.is_refusal), or also starts
    with the target (no-refusal-and-target)."""
    attack_compliant: bool = False
    """Also search for prompts that already succeed without a suffix (otherwise they count as successes as they are)."""
    early_stop: bool = True
    """Stop a prompt's search once the target is the greedy continuation of the best suffix."""
    seed: int = 0
    """Seed of the candidate sampling."""

    def validate(self) -> None:
        require(1 <= self.prompts <= 40, f"prompts must lie in [1, 40] (the harmful set has 40), got {self.prompts}")
        require(self.steps >= 1, f"steps must be at least 1, got {self.steps}")
        require(self.time >= 0, f"time must be >= 0 seconds (0: no limit), got {self.time}")
        require(self.total_time >= 0, f"total_time must be >= 0 seconds (0: no limit), got {self.total_time}")
        require(self.suffix_length >= 1, f"suffix_length must be at least 1, got {self.suffix_length}")
        require(self.topk >= 1, f"topk must be at least 1, got {self.topk}")
        require(self.batch >= 1, f"batch must be at least 1, got {self.batch}")
        require(self.micro_batch >= 1, f"micro_batch must be at least 1, got {self.micro_batch}")
        require(bool(self.target.strip()), "target must be a non-empty string")
        require(self.max_new_tokens >= 1, f"max_new_tokens must be at least 1, got {self.max_new_tokens}")


# ----------------------------------------------------------------------------------------------------------------------
# Building configs from dicts, YAML files and dotted overrides


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    """Convert a YAML value to the annotated type, or raise a ConfigError naming the key."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if isinstance(value, bool) and "no" in choices:
            value = "no" if value is False else "yes"  # YAML 1.1 reads a bare no as false
        if isinstance(value, str) and ALIASES.get(value) in choices:
            value = ALIASES[value]
        if value not in choices:
            raise ConfigError(f"{where}: {key}={value!r}: choose one of {', '.join(map(str, choices))}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: key {key!r}: invalid value {value!r}")
    if _is_dataclass_type(tp):
        if isinstance(tp, type) and isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: key {key!r} must be a mapping, got {value!r}")
        return from_dict(tp, value, where=where, prefix=key + ".")
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: key {key!r} must be a list, got {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], _item(key, args[0], i), where) for i, v in enumerate(value))
        if origin is tuple:
            if len(args) != len(value):
                raise ConfigError(f"{where}: key {key!r} needs {len(args)} values, got {value!r}")
            return tuple(_coerce(v, a, key, where) for v, a in zip(value, args))
        return (
            [_coerce(v, args[0], _item(key, args[0], i), where) for i, v in enumerate(value)] if args else list(value)
        )
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: key {key!r} must be a mapping, got {value!r}")
        args = typing.get_args(tp)
        if len(args) == 2:  # dict[str, float]: each value checked as its type, the error naming key.name
            return {str(k): _coerce(v, args[1], f"{key}.{k}", where) for k, v in value.items()}
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(f"{where}: key {key!r} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"{where}: key {key!r} must be an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{where}: key {key!r} must be an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: key {key!r} must be a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: key {key!r} must be a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, bool):
            # YAML 1.1 reads bare no/yes/off/on as booleans; string fields such as mixed_precision mean the word
            return "no" if value is False else "yes"
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where}: key {key!r} must be a string, got {value!r}")
        return str(value)
    if tp is Any:
        return value
    return value


def _item(key: str, tp: Any, i: int) -> str:
    """The key of a list item: sections get their index (reward.sources[1].kind), plain values the list's key."""
    return f"{key}[{i}]" if _is_dataclass_type(tp) else key


def from_dict(cls: type, data: dict[str, Any], where: str = "<config>", prefix: str = "") -> Any:
    """Build a (nested) config dataclass from a plain dict; unknown keys are errors that name the key."""
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            valid = ", ".join(sorted(names))
            raise ConfigError(f"{where}: unknown key {prefix + key!r} (valid keys here: {valid})")
        if _is_dataclass_type(hints[key]) and isinstance(value, dict):
            # a partial section overrides the stage's OWN default for it (e.g. GRPO's algo), not the bare class defaults
            value = deep_merge(to_dict(_field_default(cls, key)), value)
        kwargs[key] = _coerce(value, hints[key], prefix + key, where)
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from None


def _field_default(cls: type, name: str) -> Any:
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default if f.default is not dataclasses.MISSING else None


def deep_merge(base: Any, update: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(base, dict):
        return dict(update)
    out = dict(base)
    for k, v in update.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-data view of a config (tuples become lists) for YAML/JSON."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return plain(cfg)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            node[p] = nxt = {}
        node = nxt
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    """`a.b=value` strings -> (key, YAML-parsed value)."""
    out = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        out.append((key.strip(), value))
    return out


def _rebase(value: str, base: Path, model: bool = False) -> str:
    path = Path(value).expanduser()
    if path.is_absolute() or value.startswith("sample:"):
        return value
    if model and "/" not in value and os.sep not in value and not (base / path).exists():
        return value  # a builtin model name
    return str(base / path)


def _rebase_value(value: Any, kind: str, base: Path, section: dict[str, Any]) -> Any:
    if not isinstance(value, str) or not value:
        return value
    if kind != "reward":
        return _rebase(value, base, model=kind == "model")
    source = section.get("kind", "model")
    if source in ("model", "multi_rm"):
        return _rebase(value, base, model=True)
    if source == "ensemble":
        return ",".join(_rebase(v.strip(), base, model=True) for v in value.split(","))
    module, sep, fn = value.rpartition(":")
    if source == "callable" and module.endswith(".py"):
        return _rebase(module, base) + sep + fn
    return value  # a rule's name, a package.module:function


def relative_to_file(cls: type, tree: Any, base: Path) -> Any:
    """A YAML tree with its relative input paths (fields marked FILE_PATH / MODEL_PATH / REWARD_PATH) joined to
    `base`, the YAML file's folder. Output directories are not inputs: they stay relative to the current directory.
    A class with dict-typed sections holding a command's settings names their classes in `yaml_sections(tree)`."""
    if not isinstance(tree, dict) or not _is_dataclass_type(cls):
        return tree
    fields = {f.name: f for f in dataclasses.fields(cls)}
    sections = cls.yaml_sections(tree) if hasattr(cls, "yaml_sections") else {}
    out = dict(tree)
    for key, value in tree.items():
        f = fields.get(key)
        if f is None:
            continue  # an unknown key: from_dict names it
        if "path" in f.metadata:
            out[key] = _rebase_value(value, f.metadata["path"], base, tree)
        elif key in sections:
            out[key] = relative_to_file(sections[key], value, base)
        else:
            inner = [a for a in (_hints(cls)[key], *typing.get_args(_hints(cls)[key])) if _is_dataclass_type(a)]
            if inner and isinstance(value, dict):
                out[key] = relative_to_file(inner[0], value, base)
            elif inner and isinstance(value, list):
                out[key] = [relative_to_file(inner[0], v, base) for v in value]
    return out


def load_config(
    cls: type,
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    relative_to_yaml: bool = True,
    base: dict[str, Any] | None = None,
    command: str | None = None,
) -> Any:
    """Defaults <- `base` (a saved run's config) <- YAML file <- dotted overrides, validated into `cls`, then resolved
    and frozen.

    `command` (the CLI command being run) lets the YAML file be a run's saved config.yaml, whose top-level `command:`
    names the command that wrote it: the same command reads it as a config (to rerun or vary a run), another one is
    refused with one line.

    Relative input paths in the YAML file (data files, model directories, reward sources) are relative to the file's
    folder; overrides on the command line are relative to the current directory, as are output directories.
    relative_to_yaml=False reads them relative to the current directory (a run's saved config.yaml, whose paths were
    resolved when it was written)."""
    tree: dict[str, Any] = {}
    where = "<overrides>"
    if path is not None:
        path = Path(path)
        where = str(path)
        if not path.exists():
            raise ConfigError(f"{path}: config file not found")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as e:
            line = e.object.count(b"\n", 0, e.start) + 1
            raise ConfigError(f"{path}:{line}: not UTF-8 text (byte 0x{e.object[e.start]:02x})") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = f":{mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{path}{line}: invalid YAML ({getattr(e, 'problem', e)})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections")
        if command is not None and "command" in loaded:
            saved = loaded.pop("command")
            if ALIASES.get(str(saved), str(saved)) != ALIASES.get(command, command):
                raise ConfigError(
                    f"{path}: the saved config of a `rlhfkit {saved}` run, not of `rlhfkit {command}`: "
                    f"use it with `rlhfkit {saved} -c {path}`"
                )
        tree = relative_to_file(cls, loaded, path.resolve().parent) if relative_to_yaml else loaded
    if base:
        tree = deep_merge(copy.deepcopy(base), tree)  # overrides are set in place: the caller's base stays as it was
    for key, value in parse_overrides(overrides or []):
        _set_dotted(tree, key, value)
    cfg = from_dict(cls, tree, where=where)
    try:
        return resolve(cfg)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}" if path is not None else str(e)) from None


def resolve(cfg: Any) -> Any:
    """Validate a config tree: every dataclass's `validate()`, inner sections first, errors prefixed with the section
    (`train.batch_size must be positive`). Returns the same frozen object."""
    _validate(cfg, "")
    return cfg


def _validate(node: Any, prefix: str) -> None:
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if dataclasses.is_dataclass(value):
            _validate(value, f"{prefix}{f.name}.")
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                if dataclasses.is_dataclass(item):
                    _validate(item, f"{prefix}{f.name}[{i}].")
    check = getattr(node, "validate", None)
    if check is None:
        return
    try:
        check()
    except ConfigError as e:
        message = str(e)
        # a message that already names its full key (a check across sections) is not prefixed again
        raise ConfigError(message if not prefix or message.startswith(prefix) else prefix + message) from None


# ----------------------------------------------------------------------------------------------------------------------
# Help text from field docstrings


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The string literal placed right under each field in the class body, keyed by field name."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for base in reversed(cls.__mro__[1:]):  # inherited fields keep their help text
        if _is_dataclass_type(base):
            docs.update(field_docs(base))
    for node, nxt in zip(body, body[1:]):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def describe(cls: type, prefix: str = "", instance: Any = None) -> list[tuple[str, str, str]]:
    """(dotted key, default, help) for every leaf field of a config class, for --help output."""
    rows = []
    docs = field_docs(cls)
    instance = cls() if instance is None else instance
    for f in dataclasses.fields(cls):
        tp = _hints(cls)[f.name]
        value = getattr(instance, f.name)
        if _is_dataclass_type(tp):
            rows.extend(describe(tp, prefix + f.name + ".", value))
        else:
            rows.append((prefix + f.name, repr(value), docs.get(f.name, "")))
    return rows


def keys_help(cls: type) -> str:
    """The `--help` epilog of a command: every configuration key with its default and help text."""
    rows = describe(cls)
    width = max(len(k) for k, _, _ in rows)
    lines = ["configuration keys (YAML sections or key.sub=value overrides):"]
    for key, default, doc in rows:
        wrapped = textwrap.wrap(f"{doc} [default: {default}]", 100 - width) or [""]
        lines.append(f"  {key:<{width}}  {wrapped[0]}")
        lines.extend(f"  {'':<{width}}  {w}" for w in wrapped[1:])
    return "\n".join(lines)
