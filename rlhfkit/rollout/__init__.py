"""Rollouts: engines that sample responses into a typed `Rollout`, prompt encoding, and the rollout forward (old and
reference log-probs, values, KL per sequence on the policy's own samples)."""

from rlhfkit.rollout.forward import (
    make_engine,
    model_logprobs,
    response_logits,
    response_logprobs,
    rollout_forward,
    sample_with_kl,
    sampling_params,
    sequence_kl,
)
from rlhfkit.rollout.hf import HFEngine, left_pad, right_pad, rollout_from_ids
from rlhfkit.rollout.prompts import Prompt, condition_messages, draw_weights, encode_prompts, format_weights
from rlhfkit.rollout.types import Engine, Rollout, SamplingParams

__all__ = [
    "Engine",
    "HFEngine",
    "Prompt",
    "Rollout",
    "SamplingParams",
    "condition_messages",
    "draw_weights",
    "encode_prompts",
    "format_weights",
    "left_pad",
    "make_engine",
    "model_logprobs",
    "response_logits",
    "response_logprobs",
    "right_pad",
    "rollout_forward",
    "rollout_from_ids",
    "sample_with_kl",
    "sampling_params",
    "sequence_kl",
]
