"""KL of a policy to its reference, estimated on the policy's own samples."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager

import torch

from rlhfkit.ops import token_logprobs


def response_mask(generated: torch.Tensor, eos_ids: Sequence[int]) -> torch.Tensor:
    """(B, N) mask of generated tokens up to and including the first EOS."""
    is_eos = torch.zeros_like(generated, dtype=torch.bool)
    for e in eos_ids:
        is_eos |= generated == e
    # tokens after the first EOS are padding: cumulative count of EOS strictly before each position must be 0
    before = torch.cumsum(is_eos.int(), dim=1) - is_eos.int()
    return (before == 0).float()


def _response_logps(
    model: torch.nn.Module, ids: torch.Tensor, attn: torch.Tensor, width: int, resp: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Summed log-probs (B,) of the generated part ids[:, width:] under `model`, masked by `resp`."""
    positions = (attn.cumsum(-1) - 1).clamp(min=0)  # left padding: the positions generate() used
    logits = model(input_ids=ids, attention_mask=attn, position_ids=positions).logits[:, width - 1 : -1]
    return (token_logprobs(logits, ids[:, width:], temperature=temperature) * resp).sum(-1)


@torch.no_grad()
def sampled_kl(
    policy: torch.nn.Module,
    reference: torch.nn.Module | Callable[[], AbstractContextManager[torch.nn.Module]],
    prompts: Sequence[Sequence[int]],
    pad_id: int,
    eos_ids: Sequence[int],
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    batch_size: int = 8,
    seed: int = 0,
) -> dict[str, float]:
    """Monte-Carlo KL(pi || ref) per sequence: sample y ~ pi(.|x), sum_t log pi(y_t) - log ref(y_t) (the k1 estimator).

    `reference` is a model or a zero-argument callable returning a context manager that yields one (e.g. a peft model with
    adapters disabled). Log-probs use the same temperature as sampling.
    """
    device = next(policy.parameters()).device
    was_training = policy.training
    policy.eval()
    kls, lens = [], []
    gen = torch.Generator(device="cpu").manual_seed(seed)
    for i in range(0, len(prompts), batch_size):
        chunk = [list(p) for p in prompts[i : i + batch_size]]
        width = max(len(p) for p in chunk)
        ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in chunk], device=device)
        attn = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=device)
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
        out = policy.generate(
            input_ids=ids,
            attention_mask=attn,
            do_sample=True,
            temperature=temperature,
            top_k=0,
            top_p=1.0,
            max_new_tokens=max_new_tokens,
            pad_token_id=pad_id,
        )
        generated = out[:, width:]
        resp = response_mask(generated, eos_ids)
        full_attn = torch.cat([attn, resp.long()], dim=1)

        pi = _response_logps(policy, out, full_attn, width, resp, temperature)
        if isinstance(reference, torch.nn.Module):
            ref = _response_logps(reference, out, full_attn, width, resp, temperature)
        else:
            with reference() as ref_model:
                ref = _response_logps(ref_model, out, full_attn, width, resp, temperature)
        kls.append((pi - ref).cpu())
        lens.append(resp.sum(-1).cpu())
    policy.train(was_training)
    kl = torch.cat(kls)
    length = torch.cat(lens)
    return {
        "kl_per_sequence": float(kl.mean()),
        "kl_per_token": float(kl.sum() / length.sum().clamp(min=1)),
        "sample_length": float(length.mean()),
    }
