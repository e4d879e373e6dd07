"""The rollout forward: per-token log-probs of sampled responses under the policy or the reference, and the ONE
implementation of "sample from pi and sum log pi - log pi_ref" (KL per sequence on the policy's own samples)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import Tensor

from rlhfkit.models.head import next_token_stats
from rlhfkit.rollout.hf import HFEngine
from rlhfkit.rollout.types import Rollout, SamplingParams


def make_engine(model: torch.nn.Module, tokenizer: Any, s: Any) -> HFEngine:
    """The rollout engine a SamplingConfig asks for (auto: the compiled static-cache engine on CUDA)."""
    device = next(model.parameters()).device
    static = s.backend == "hf-static" or (s.backend == "auto" and device.type == "cuda")
    # stop at the tokenizer's EOS and at every end token the checkpoint declares (e.g. an end-of-turn token)
    declared = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    declared = declared if isinstance(declared, list) else [declared] if declared is not None else []
    eos = list(dict.fromkeys([tokenizer.eos_token_id, *declared]))
    return HFEngine(model, tokenizer, s.batch_size, static_cache=static, eos_token_ids=eos)


def sampling_params(s: Any) -> SamplingParams:
    """A SamplingConfig's engine parameters."""
    return SamplingParams(s.max_new_tokens, s.min_new_tokens, s.temperature, s.top_k, s.top_p)


def response_logits(model: torch.nn.Module, ro: Rollout) -> Tensor:
    """(B, R, V) logits predicting the response tokens, from a plain causal LM (the reference)."""
    n = ro.response_ids.shape[1]
    out = model(
        input_ids=ro.input_ids,
        attention_mask=ro.attention_mask,
        position_ids=ro.position_ids,
        logits_to_keep=n + 1,
        use_cache=False,
    )
    return out.logits[:, -(n + 1) : -1]


def response_logprobs(
    model: torch.nn.Module, ro: Rollout, temperature: float, fused: bool = True, padding_free: bool = False
) -> Tensor:
    """(B, R) log-probs of the response tokens under softmax(logits / temperature) of a plain causal LM (the
    reference), from hidden states chunk by chunk when `fused` (see models.head.next_token_stats)."""
    r = ro.response_ids.shape[1]
    return next_token_stats(
        model,
        ro.input_ids,
        ro.attention_mask,
        r,
        labels=torch.cat([ro.input_ids[:, :-r], ro.response_ids], 1),
        position_ids=ro.position_ids,
        temperature=temperature,
        fused=fused,
        padding_free=padding_free,
    ).logprobs


@torch.no_grad()
def rollout_forward(
    fn: Callable[[Rollout], tuple[Tensor, Tensor | None]], ro: Rollout, micro: int
) -> tuple[Tensor, Tensor | None]:
    """fn(micro-batch) -> (log-probs (b, r), values (b, r) or None) over micro-batches of the rollout, each trimmed of
    its padding columns; returns (B, R) tensors, 0 on padding."""
    lps, vals = [], []
    width = ro.response_ids.shape[1]
    for i in range(0, len(ro), micro):
        mb = ro.select(range(i, min(i + micro, len(ro)))).trimmed()
        lp, values = fn(mb)
        lps.append(torch.nn.functional.pad(lp * mb.response_mask, (0, width - lp.shape[1])))
        if values is not None:
            vals.append(torch.nn.functional.pad(values * mb.response_mask, (0, width - values.shape[1])))
    return torch.cat(lps), (torch.cat(vals) if vals else None)


ModelSource = torch.nn.Module | Callable[[], AbstractContextManager[torch.nn.Module]]
"""A model, or a zero-argument callable giving a context manager that yields one (a `models.Reference`, or a loader
that keeps the model in memory only while it is used)."""


def model_logprobs(
    model: ModelSource, ro: Rollout, temperature: float, micro: int, fused: bool = True, padding_free: bool = False
) -> Tensor:
    """(B, R) log-probs of the rollout's response tokens under `model`, 0 on padding."""
    if isinstance(model, torch.nn.Module):
        return rollout_forward(
            lambda mb: (response_logprobs(model, mb, temperature, fused, padding_free), None), ro, micro
        )[0]
    with model() as m:
        return rollout_forward(
            lambda mb: (response_logprobs(m, mb, temperature, fused, padding_free), None), ro, micro
        )[0]


def sequence_kl(ro: Rollout, logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """(B,) KL(pi || ref) per sequence on pi's own samples: the k1 estimate summed over response tokens."""
    return ((logprobs - ref_logprobs) * ro.response_mask).sum(-1)


@torch.no_grad()
def sample_with_kl(
    engine: HFEngine,
    prompts: Sequence[Sequence[int]],
    params: SamplingParams,
    reference: ModelSource | None,
    micro: int,
    num_samples: int = 1,
) -> tuple[Rollout, Tensor | None]:
    """Sample `num_samples` responses per prompt from the engine's model and, with a reference, their KL per sequence
    (B,) at the sampling temperature. The policy is switched to eval mode (no dropout) while it samples. The policy's
    log-probs are the engine's own where it records them (they equal a training forward's within float rounding, see
    tests/test_rollout_engine.py), so only the reference runs a forward."""
    model = engine.model
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        ro = engine.generate([list(p) for p in prompts], params, num_samples).to(device)
        if reference is None:
            return ro, None
        t = params.logprob_temperature
        if ro.rollout_logprobs is not None:  # the engine's own: softmax(logits / t) before truncation, as below
            logp = ro.rollout_logprobs.to(ro.response_mask.device) * ro.response_mask
        else:
            logp = model_logprobs(model, ro, t, micro)
        ref = model_logprobs(reference, ro, t, micro)
        return ro, sequence_kl(ro, logp, ref)
    finally:
        model.train(was_training)
