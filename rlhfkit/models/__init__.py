"""Model loading by builtin name or local path, dtype, LoRA / QLoRA, gradient checkpointing, saving."""

from rlhfkit.models.loading import (
    BUILTIN_MODELS,
    BuiltinModel,
    ModelNotFoundError,
    QuantizationUnavailableError,
    apply_lora,
    bnb_4bit_config,
    builtin_gguf_path,
    cache_root,
    count_parameters,
    load_causal_lm,
    load_gguf,
    load_reward_model,
    load_tokenizer,
    resolve_model_path,
    save_model,
)

__all__ = [
    "BUILTIN_MODELS",
    "BuiltinModel",
    "ModelNotFoundError",
    "QuantizationUnavailableError",
    "apply_lora",
    "bnb_4bit_config",
    "builtin_gguf_path",
    "cache_root",
    "count_parameters",
    "load_causal_lm",
    "load_gguf",
    "load_reward_model",
    "load_tokenizer",
    "resolve_model_path",
    "save_model",
]
