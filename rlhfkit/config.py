"""Configuration: nested frozen dataclasses for every stage.

The same objects are built from Python, from a YAML file and from dotted command-line overrides
(`train.lr=1e-5 loss.beta=0.2`). Each field's docstring (the string literal under it) is its help text:
`field_docs()` reads it from the source, so the CLI help and the code never disagree.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import textwrap
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the file and the key."""


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


@dataclass(frozen=True)
class ModelConfig:
    name_or_path: str = "smollm2-135m-instruct"
    """A local Hugging Face model directory or a builtin name (smollm2-135m-instruct)."""
    dtype: str = "float32"
    """Weights dtype: float32, bfloat16, float16 or auto."""
    trust_remote_code: bool = False
    """Allow custom modelling code shipped with the checkpoint. Off unless you trust the source."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """LoRA / QLoRA adapters."""


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


@dataclass(frozen=True)
class DataConfig:
    train: str = ""
    """Training data: a .jsonl / .json / .parquet file (optionally .gz), or a builtin sample name (sample:sft, sample:prefs)."""
    eval: str | None = None
    """Held-out data; when absent, eval_fraction of the training rows is held out."""
    eval_fraction: float = 0.1
    """Share of training rows held out when no eval file is given."""
    max_length: int = 512
    """Longest prompt + response in tokens."""
    max_prompt_length: int = 256
    """Longest prompt in tokens (prompts are cut from the left)."""
    truncation: str = "keep_end"
    """keep_end: cut long prompts from the left and long responses from the right; drop: drop rows that do not fit."""
    max_rows: int | None = None
    """Use at most this many training rows (drawn with the seed)."""
    skip_invalid: bool = False
    """Drop malformed rows with a warning that counts them, instead of stopping at the first one."""
    packing: bool = False
    """SFT only: pack several short examples into one sequence."""
    curation: CurationConfig = field(default_factory=CurationConfig)
    """Cleaning applied after loading."""


@dataclass(frozen=True)
class TrainConfig:
    output_dir: str = "outputs/run"
    """Where the model, checkpoints, resolved config, metrics.jsonl and summary go."""
    seed: int = 0
    """Seed for data order, initialization and sampling."""
    epochs: float = 1.0
    """Passes over the training data (fractions allowed); ignored when max_steps > 0."""
    max_steps: int = 0
    """Optimizer steps to take; 0 means derive from epochs."""
    batch_size: int = 8
    """Examples per optimizer step per process (= micro_batch_size x grad_accum)."""
    micro_batch_size: int = 0
    """Examples per forward pass; 0 means batch_size (no accumulation). Must divide batch_size."""
    lr: float = 1e-5
    """Peak learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    warmup_ratio: float = 0.0
    """Share of steps with linear warm-up."""
    scheduler: str = "cosine"
    """Learning-rate schedule: constant, linear or cosine (after warm-up)."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this; 0 disables clipping."""
    mixed_precision: str = "no"
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
    """Continue from the newest checkpoint in output_dir."""
    report_to: tuple[str, ...] = ()
    """Extra metric sinks: tensorboard, mlflow, wandb (metrics.jsonl is always written)."""
    progress: bool = True
    """Show a progress bar."""

    @property
    def micro(self) -> int:
        return self.micro_batch_size or self.batch_size

    @property
    def grad_accum(self) -> int:
        return self.batch_size // self.micro


# ----------------------------------------------------------------------------------------------------------------------
# Stage configs


@dataclass(frozen=True)
class SFTLossConfig:
    completion_only: bool = True
    """Train on assistant tokens only (prompt tokens carry no loss)."""
    aggregation: str = "token-mean"
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


@dataclass(frozen=True)
class RewardLossConfig:
    tie_model: str = "davidson"
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


# the names of rlhfkit.losses.PREFERENCE_LOSSES (kept here so that configs validate without importing torch; a test
# checks that the two agree)
PREFERENCE_LOSS_NAMES = ("dpo", "ipo", "robust", "hinge", "simpo", "orpo")


@dataclass(frozen=True)
class PreferenceLossConfig:
    name: str = "dpo"
    """dpo, ipo, robust, hinge, simpo or orpo."""
    beta: float = 0.1
    """Strength of the implicit KL constraint (temperature of the implicit reward)."""
    label_smoothing: float = 0.0
    """Assumed label-noise rate for conservative (dpo) and robust DPO."""
    gamma: float = 0.5
    """SimPO target reward margin."""
    lam: float = 0.1
    """ORPO weight of the odds-ratio term."""
    reference: str = "precompute"
    """Reference log-probs: precompute (one pass before training) or live (a forward per step)."""


@dataclass(frozen=True)
class DPOConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    """Policy; also the reference (frozen copy, or the same weights with adapters disabled under LoRA)."""
    reference: str | None = None
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


@dataclass(frozen=True)
class KTOLossConfig:
    beta: float = 0.1
    """Temperature of the implicit reward beta * (log pi - log ref)."""
    desirable_weight: float = 1.0
    """lambda_D: weight of desirable examples (raise it when they are rarer than undesirable ones)."""
    undesirable_weight: float = 1.0
    """lambda_U: weight of undesirable examples."""


@dataclass(frozen=True)
class KTOConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    """Policy; also the reference (frozen copy, or the same weights with adapters disabled under LoRA)."""
    reference: str | None = None
    """Reference model path when it differs from model.name_or_path."""
    data: DataConfig = field(default_factory=DataConfig)
    """Unpaired feedback rows {"prompt", "response", "label": bool}."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=5e-6))
    """Optimization."""
    loss: KTOLossConfig = field(default_factory=KTOLossConfig)
    """Objective."""


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
            return tuple(_coerce(v, args[0], key, where) for v in value)
        if origin is tuple:
            if len(args) != len(value):
                raise ConfigError(f"{where}: key {key!r} needs {len(args)} values, got {value!r}")
            return tuple(_coerce(v, a, key, where) for v, a in zip(value, args))
        return [_coerce(v, args[0], key, where) for v in value] if args else list(value)
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


def from_dict(cls: type, data: dict[str, Any], where: str = "<config>", prefix: str = "") -> Any:
    """Build a (nested) config dataclass from a plain dict; unknown keys are errors that name the key."""
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            valid = ", ".join(sorted(names))
            raise ConfigError(f"{where}: unknown key {prefix + key!r} (valid keys here: {valid})")
        kwargs[key] = _coerce(value, hints[key], prefix + key, where)
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from None


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


def load_config(cls: type, path: str | Path | None = None, overrides: list[str] | None = None) -> Any:
    """Defaults <- YAML file <- dotted overrides, validated into `cls`, then resolved and frozen."""
    tree: dict[str, Any] = {}
    where = "<overrides>"
    if path is not None:
        path = Path(path)
        where = str(path)
        if not path.exists():
            raise ConfigError(f"{path}: config file not found")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = f":{mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{path}{line}: invalid YAML ({getattr(e, 'problem', e)})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections")
        tree = loaded
    for key, value in parse_overrides(overrides or []):
        _set_dotted(tree, key, value)
    cfg = from_dict(cls, tree, where=where)
    return resolve(cfg)


def resolve(cfg: Any) -> Any:
    """Check cross-field constraints and fill derived fields; returns the same frozen type."""
    train = getattr(cfg, "train", None)
    if train is not None:
        if train.batch_size <= 0:
            raise ConfigError("train.batch_size must be positive")
        if train.micro_batch_size < 0:
            raise ConfigError("train.micro_batch_size must be 0 (= batch_size) or positive")
        if train.log_every < 1 or train.keep_checkpoints < 1:
            raise ConfigError("train.log_every and train.keep_checkpoints must be at least 1")
        if train.eval_every < 0 or train.save_every < 0 or train.max_steps < 0 or train.epochs <= 0:
            raise ConfigError("train.eval_every, save_every and max_steps must be >= 0, and train.epochs > 0")
        if train.batch_size % train.micro != 0:
            raise ConfigError(
                f"train.micro_batch_size={train.micro_batch_size} must divide train.batch_size={train.batch_size}"
            )
        if train.scheduler not in ("constant", "linear", "cosine"):
            raise ConfigError(f"train.scheduler={train.scheduler!r}: choose constant, linear or cosine")
        for sink in train.report_to:
            if sink not in ("tensorboard", "mlflow", "wandb"):
                raise ConfigError(f"train.report_to: unknown sink {sink!r} (tensorboard, mlflow, wandb)")
        if train.mixed_precision not in ("no", "bf16", "fp16"):
            raise ConfigError(f"train.mixed_precision={train.mixed_precision!r}: choose no, bf16 or fp16")
    data = getattr(cfg, "data", None)
    if data is not None:
        if data.truncation not in ("keep_end", "drop"):
            raise ConfigError(f"data.truncation={data.truncation!r}: choose keep_end or drop")
        if data.max_prompt_length >= data.max_length:
            raise ConfigError("data.max_prompt_length must be smaller than data.max_length")
        if not 0.0 <= data.eval_fraction < 1.0:
            raise ConfigError("data.eval_fraction must be in [0, 1)")
    loss = getattr(cfg, "loss", None)
    if isinstance(loss, SFTLossConfig):
        if loss.aggregation not in ("token-mean", "sequence-mean"):
            raise ConfigError(f"loss.aggregation={loss.aggregation!r}: choose token-mean or sequence-mean")
        if loss.aggregation == "sequence-mean" and cfg.data.packing:
            raise ConfigError("loss.aggregation=sequence-mean needs one example per row: turn data.packing off")
    if isinstance(loss, RewardLossConfig):
        if loss.tie_model not in ("davidson", "rao-kupper"):
            raise ConfigError(f"loss.tie_model={loss.tie_model!r}: choose davidson or rao-kupper")
        if loss.tie_model == "rao-kupper" and loss.tie_param <= 1.0:
            raise ConfigError("loss.tie_param must be > 1 for the Rao-Kupper tie model (theta), e.g. 1.5")
        if loss.tie_model == "davidson" and loss.tie_param < 0:
            raise ConfigError("loss.tie_param (Davidson nu) must be >= 0")
    if isinstance(loss, PreferenceLossConfig):
        if loss.name not in PREFERENCE_LOSS_NAMES:
            raise ConfigError(f"loss.name={loss.name!r}: choose one of {', '.join(PREFERENCE_LOSS_NAMES)}")
        if loss.reference not in ("precompute", "live"):
            raise ConfigError(f"loss.reference={loss.reference!r}: choose precompute or live")
    model = getattr(cfg, "model", None)
    if model is not None and model.dtype not in ("float32", "bfloat16", "float16", "auto"):
        raise ConfigError(f"model.dtype={model.dtype!r}: choose float32, bfloat16, float16 or auto")
    return cfg


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
