"""What a rollout is: the sampled responses and everything the optimizer later attaches to them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Protocol

import torch
from torch import Tensor


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 64
    min_new_tokens: int = 0
    temperature: float = 1.0
    """0 means greedy decoding; log-probs are then taken at temperature 1."""
    top_k: int = 0
    top_p: float = 1.0

    @property
    def logprob_temperature(self) -> float:
        """The temperature training log-probs must use to match the sampling distribution."""
        return self.temperature if self.temperature > 0 else 1.0


@dataclass
class Rollout:
    """B sampled responses. Rows of one prompt are consecutive (group g = rows [g*n, (g+1)*n)).

    The prompt is LEFT-padded and the response RIGHT-padded, so that prompt + response is one contiguous sequence per row
    and response token t sits at column P + t of `input_ids`. Log-prob, value and score fields start as None and are
    filled by the trainer; every (B, R) field is 0 on padding.
    """

    prompt_ids: Tensor  # (B, P) long, left-padded with pad_id
    prompt_mask: Tensor  # (B, P) long, 1 on prompt tokens
    response_ids: Tensor  # (B, R) long, right-padded with pad_id; includes the EOS when one was sampled
    response_mask: Tensor  # (B, R) float32, 1 on generated tokens up to and including the first EOS
    finished: Tensor  # (B,) bool, the response ended with EOS (False: cut at max_new_tokens)
    group: Tensor  # (B,) long, index of the prompt each row answers
    texts: list[str] = field(default_factory=list)  # B decoded responses, special tokens removed
    rollout_logprobs: Tensor | None = None  # (B, R) float32 log pi_rollout(a_t | s_t): the engine's own log-probs,
    # softmax(logits / T) at the training temperature before top-k / top-p (what training computes, by other kernels)
    logprobs: Tensor | None = (
        None  # (B, R) float32 log pi_old(a_t | s_t) at the sampling temperature (training forward)
    )
    ref_logprobs: Tensor | None = None  # (B, R) float32 log pi_ref(a_t | s_t), same temperature
    values: Tensor | None = None  # (B, R) float32 critic V(s_t) before token t
    scores: Tensor | None = None  # (B,) float32 sequence reward (after normalization and penalties)
    token_scores: Tensor | None = None  # (B, R) float32 process rewards at step-end tokens (reward_placement=process)
    step_mask: Tensor | None = None  # (B, R) float32 1 at step-end tokens (each row's last token always ends a step)
    advantages: Tensor | None = None  # (B, R) float32 per-token advantage
    returns: Tensor | None = None  # (B, R) float32 value targets (critic only)
    kl_coef: Tensor | None = None  # (B,) float32 per-sequence KL coefficient (the controller's, scaled by uncertainty)
    domain: Tensor | None = None  # (B,) long index of each row's prompt domain in DomainKL.names (per-domain KL)

    def __len__(self) -> int:
        return self.response_ids.shape[0]

    @property
    def input_ids(self) -> Tensor:
        """(B, P + R) prompt then response."""
        return torch.cat([self.prompt_ids, self.response_ids], dim=1)

    @property
    def attention_mask(self) -> Tensor:
        """(B, P + R) 1 on real tokens (padding on both sides is 0)."""
        return torch.cat([self.prompt_mask.long(), self.response_mask.long()], dim=1)

    @property
    def position_ids(self) -> Tensor:
        """(B, P + R) positions counted from each row's first real token, as generate() assigned them."""
        return (self.attention_mask.cumsum(-1) - 1).clamp(min=0)

    @property
    def response_lengths(self) -> Tensor:
        """(B,) number of response tokens (EOS included)."""
        return self.response_mask.sum(-1)

    def select(self, index: Sequence[int] | Tensor) -> Rollout:
        """The rows `index` (e.g. a mini-batch), every tensor field sliced on dim 0."""
        idx = torch.as_tensor(index, dtype=torch.long)
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Tensor):
                out[f.name] = v[idx.to(v.device)]
            elif f.name == "texts" and v:
                out[f.name] = [v[i] for i in idx.tolist()]
            else:
                out[f.name] = v
        return replace(self, **out)

    def to(self, device: torch.device | str) -> Rollout:
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        return replace(self, **{k: v.to(device) for k, v in moved.items() if isinstance(v, Tensor)})

    def trimmed(self) -> Rollout:
        """The same rows without columns that are padding in every row (a mini-batch's own widths)."""
        p_start = int((self.prompt_mask.sum(0) > 0).float().argmax()) if self.prompt_mask.any() else 0
        r_width = max(int(self.response_mask.sum(-1).max()), 1)
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Tensor) and v.dim() == 2:
                out[f.name] = v[:, p_start:] if f.name.startswith("prompt") else v[:, :r_width]
        return replace(self, **out)


class Engine(Protocol):
    """A generation backend. `generate` samples from the CURRENT weights of the policy it serves."""

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams, num_samples: int = 1) -> Rollout:
        """Sample `num_samples` responses per prompt (token ids, no padding); rows of one prompt are consecutive.
        An engine that knows its sampling log-probs fills `rollout_logprobs` (needed by `algo.tis_cap`)."""

    def load_weights(self, model: torch.nn.Module) -> None:
        """Refresh the engine's copy of the weights (a no-op for engines that share the training module)."""
