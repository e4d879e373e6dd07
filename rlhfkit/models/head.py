"""Next-token statistics of a causal LM without (batch, length, vocabulary) logits, and padding-free forwards.

`next_token_stats` is the ONE forward every trainer uses for log-probs: the model runs through its own `forward` (so
DDP, gradient checkpointing and peft wrappers behave as usual) with `logits_to_keep=1`, a forward hook keeps the
decoder's last hidden state, and `ops.head_token_stats` turns it into log-probs and entropy chunk by chunk. A model
whose head cannot be reproduced exactly from (weight, bias, scale, soft-cap) falls back to the model's own logits:
the first fused call compares the model's last-position logits with the reproduced ones, and a mismatch switches
that model to the plain path for good (with a warning).

Padding-free: the real tokens of every row are packed into ONE row whose position ids restart at 0 per row; with
`attention_mask=None`, transformers (>= 4.54) builds a block-diagonal causal mask from the restarting position ids
(sdpa and eager) or uses varlen kernels (flash attention), so no FLOP is spent on padding and no token attends across
rows. Results are scattered back to the padded (B, T) layout, so callers do not know which path ran.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from rlhfkit.ops import entropy_from_logits, head_token_stats, token_logprobs

__all__ = ["LMHead", "Packing", "TokenStats", "lm_head", "next_token_stats", "sequence_scores", "token_scores"]


@dataclass(frozen=True)
class LMHead:
    """logits = softcap(scale * (h @ weight.T + bias)); softcap(z) = c tanh(z / c) when softcap is set."""

    weight: Tensor
    bias: Tensor | None
    scale: float = 1.0
    softcap: float | None = None


@dataclass
class TokenStats:
    logprobs: Tensor  # (B, n) fp32 log p(label_t), 0 where the label is ignored
    entropy: Tensor | None  # (B, n) fp32 entropy of the predicting distribution, when asked for
    hidden: Tensor | None  # (B, n, H) last hidden states of the predicting positions, when asked for


def unwrap_model(model: nn.Module) -> nn.Module:
    """The transformers model inside DDP / torch.compile / peft wrappers (peft's LoRA layers stay in place)."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif callable(getattr(model, "get_base_model", None)) and model.get_base_model() is not model:
            model = model.get_base_model()  # peft
        else:
            return model


def _decoder(base: nn.Module) -> nn.Module | None:
    inner = getattr(base, "base_model", None)
    return inner if isinstance(inner, nn.Module) and inner is not base else None


def lm_head(model: nn.Module) -> LMHead | None:
    """The output head as (weight, bias, scale, soft-cap), or None when it is not a plain linear layer (e.g. a LoRA
    adapter on lm_head, a quantized head), its weight is sharded (FSDP, ZeRO-3: outside the model's forward only a
    shard is there) or the architecture has no separate decoder."""
    base = unwrap_model(model)
    if getattr(base, "_rlhfkit_plain_head", False) or _decoder(base) is None:
        return None
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if type(head) is not nn.Linear or type(head.weight.data) is not torch.Tensor:  # a DTensor shard, a quantized one
        return None
    if hasattr(head.weight, "ds_id"):  # DeepSpeed ZeRO-3: whole only inside the head's own forward
        return None
    cfg = base.config.get_text_config() if hasattr(base.config, "get_text_config") else base.config
    scale = float(getattr(cfg, "logit_scale", None) or 1.0)  # Cohere multiplies
    if getattr(cfg, "logits_scaling", None):  # Granite divides
        scale /= float(cfg.logits_scaling)
    softcap = getattr(cfg, "final_logit_softcapping", None)  # Gemma 2 / 3
    return LMHead(head.weight, head.bias, scale, float(softcap) if softcap else None)


@contextmanager
def _capture_output(module: nn.Module) -> Iterator[dict[str, Any]]:
    """Keep `module`'s output (its first element / last_hidden_state) while the block runs."""
    box: dict[str, Any] = {}

    def hook(_m: nn.Module, _args: Any, out: Any) -> None:
        box["out"] = (
            out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0] if isinstance(out, tuple) else out
        )

    handle = module.register_forward_hook(hook)
    try:
        yield box
    finally:
        handle.remove()


@dataclass
class Packing:
    """Rows' real tokens (attention_mask == 1) laid end to end, and the way back.

    `width=None` puts every row into ONE packed row (for varlen attention kernels: flash attention skips the
    cross-row blocks); a width packs whole rows first-fit-decreasing into rows of at most `width` tokens (for sdpa /
    eager, whose block-diagonal mask still spends FLOPs on the masked blocks: the attention cost then stays at most
    the padded one while the rest of the model runs on real tokens only). A row's tokens must be contiguous (right,
    left or both-sided padding); position ids restart at 0 per row (or are the caller's: a rollout's, or those of
    examples already packed into a row), and a sequence starts wherever they are 0, so attention cannot cross
    sequences once transformers sees them (attention_mask=None: it derives the mask from the position ids).
    """

    valid: Tensor  # (B, T) bool
    dest: tuple[Tensor, Tensor]  # (N,) packed row and column of each real token, in row-major order of `valid`
    position_ids: Tensor  # (R, W) restarting at 0 per sequence; the tail padding of a packed row is its own sequence
    starts: Tensor  # (N,) bool: the first token of a sequence

    @classmethod
    def of(cls, attention_mask: Tensor, position_ids: Tensor | None = None, width: int | None = None) -> Packing:
        valid = attention_mask.bool()
        pos = position_ids if position_ids is not None else attention_mask.long().cumsum(-1) - 1
        first = valid & ~torch.nn.functional.pad(valid, (1, 0))[:, :-1]  # a real token after a pad or at column 0
        if int(first.sum(-1).max()) > 1 or bool((pos[first] != 0).any()):
            raise ValueError("padding-free packing needs each row's real tokens contiguous, with positions from 0")
        lengths = valid.sum(-1).tolist()
        cap = max(sum(lengths), 1) if width is None else max(width, *lengths)
        bins: list[int] = []  # free room per packed row
        where: list[tuple[int, int]] = [(0, 0)] * len(lengths)  # (packed row, first column) of each row
        for b in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
            k = next((j for j, room in enumerate(bins) if room >= lengths[b]), len(bins))
            if k == len(bins):
                bins.append(cap)
            where[b] = (k, cap - bins[k])
            bins[k] -= lengths[b]
        w = max(cap - min(bins), 1)  # the fullest packed row
        rows = torch.tensor([where[b][0] for b in range(len(lengths))], device=valid.device)
        cols0 = torch.tensor([where[b][1] for b in range(len(lengths))], device=valid.device)
        offset = valid.long().cumsum(-1) - 1  # index of each real token within its row
        dest_row = rows[:, None].expand_as(valid)[valid]
        dest_col = (cols0[:, None] + offset)[valid]
        packed_pos = torch.zeros(len(bins), w, dtype=pos.dtype, device=valid.device)
        filled = torch.zeros(len(bins), w, dtype=torch.bool, device=valid.device)
        packed_pos[dest_row, dest_col] = pos[valid]
        filled[dest_row, dest_col] = True
        tail = (~filled).long().cumsum(-1) - 1  # tail padding: positions 0, 1, ... (its own sequence)
        packed_pos = torch.where(filled, packed_pos, tail.clamp(min=0))
        return cls(valid, (dest_row, dest_col), packed_pos, pos[valid] == 0)

    def pack(self, x: Tensor, fill: int = 0) -> Tensor:
        """(B, T, ...) -> (R, W, ...), `fill` on the packed rows' tail padding"""
        out = x.new_full((*self.position_ids.shape, *x.shape[2:]), fill)
        out[self.dest] = x[self.valid]
        return out

    def tokens(self, y: Tensor) -> Tensor:
        """(R, W, ...) packed outputs -> (N, ...) one per real token, in row-major order of `valid`"""
        return y[self.dest]

    def unpack(self, x: Tensor, fill: float = 0.0) -> Tensor:
        """(N, ...) -> (B, T, ...) with `fill` on padding."""
        out = x.new_full((*self.valid.shape, *x.shape[1:]), fill)
        out[self.valid] = x
        return out

    def next_labels(self, labels: Tensor) -> Tensor:
        """(N,) label of the NEXT real token, -100 where the next token starts another sequence (or at the end)."""
        nxt = torch.cat([labels[self.valid][1:], labels.new_full((1,), -100)])
        return nxt.masked_fill(torch.cat([self.starts[1:], self.starts.new_ones(1)]), -100)


def _pack_width(model: nn.Module, input_ids: Tensor) -> int | None:
    """One packed row for varlen (flash) attention; rows of the batch's width for sdpa / eager (see Packing)."""
    impl = str(getattr(unwrap_model(model).config, "_attn_implementation", "") or "")
    return None if "flash" in impl else input_ids.shape[1]


def next_token_stats(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    n: int,
    labels: Tensor | None = None,
    position_ids: Tensor | None = None,
    temperature: float = 1.0,
    entropy: bool = False,
    hidden: bool = False,
    fused: bool = True,
    padding_free: bool = False,
    chunk_size: int = 512,
) -> TokenStats:
    """Log-probs (B, n) of the last n labels given the tokens before them, under softmax(logits / temperature).

    labels (B, T) default input_ids; label t is predicted from position t - 1 (-100 = ignored, log-prob 0), and the
    results cover labels[:, -n:] (n = T - 1 for a whole sequence; the response width for a rollout). `entropy` adds
    the entropy of each predicting distribution, `hidden` the last hidden states of the predicting positions (B, n, H)
    (for a value head). `fused` computes them from hidden states chunk by chunk (no (B, T, V) logits) where the head
    is reproducible, `padding_free` packs the rows into one (see the module docstring); both give the plain padded
    results to float tolerance.
    """
    labels = input_ids if labels is None else labels
    batch, width = input_ids.shape
    if not 1 <= n < width:
        raise ValueError(f"n must be in [1, {width}), got {n}")
    head = lm_head(model) if fused else None
    decoder = _decoder(unwrap_model(model))
    if head is None and hidden and decoder is None:
        raise ValueError(f"{type(unwrap_model(model)).__name__}: no decoder to read hidden states from")
    # the predicting positions: t - 1 for every label t in the last n columns
    pick = torch.zeros_like(input_ids, dtype=torch.bool)
    pick[:, width - n - 1 : width - 1] = True
    if padding_free:
        pk = Packing.of(attention_mask, position_ids, _pack_width(model, input_ids))
        kwargs: dict[str, Any] = {
            "input_ids": pk.pack(input_ids),
            "attention_mask": None,
            "position_ids": pk.position_ids,
        }
        sel = pick[pk.valid]  # (N,) the predicting positions among the real tokens
        target = pk.next_labels(labels)[sel]
    else:
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
        target = labels[:, width - n :]
    if not _takes_logits_to_keep(model):
        pass  # older custom code: the model computes all its logits (correct, without the memory saving)
    elif head is not None:
        kwargs["logits_to_keep"] = 1  # the model's own head on one position: (B, 1, V), for the exactness check
    elif not padding_free:
        kwargs["logits_to_keep"] = n + 1
    with _capture_output(decoder) if decoder is not None else _null_box() as box:
        out = model(**kwargs, use_cache=False)
    h = box.get("out")
    if head is not None and not _reproduces(model, head, h, out.logits):
        # the plain path from here on (lm_head now returns None for this model); this call redoes the forward
        return next_token_stats(
            model,
            input_ids,
            attention_mask,
            n,
            labels,
            position_ids,
            temperature,
            entropy,
            hidden,
            False,
            padding_free,
            chunk_size,
        )
    h_pred = (pk.tokens(h)[sel] if padding_free else h[:, width - n - 1 : width - 1]) if h is not None else None
    if head is not None:
        lp, ent = head_token_stats(
            h_pred, head.weight, target, head.bias, temperature, head.scale, head.softcap, chunk_size
        )
        ent = ent if entropy else None
    else:
        logits = pk.tokens(out.logits)[sel][None] if padding_free else out.logits[:, -(n + 1) : -1]
        lp = token_logprobs(logits, target[None] if padding_free else target, temperature, chunk_size)
        ent = entropy_from_logits(logits, chunk_size, temperature) if entropy else None
        lp, ent = (lp[0], ent[0] if ent is not None else None) if padding_free else (lp, ent)
    if padding_free:  # back to the padded layout of the predicting positions

        def back(x: Tensor) -> Tensor:
            full = x.new_zeros((int(pk.valid.sum()), *x.shape[1:]))
            full[sel] = x
            return pk.unpack(full)[:, width - n - 1 : width - 1]

        return TokenStats(back(lp), back(ent) if ent is not None else None, back(h_pred) if hidden else None)
    return TokenStats(lp, ent, h_pred if hidden else None)


def _takes_logits_to_keep(model: nn.Module) -> bool:
    return "logits_to_keep" in inspect.signature(unwrap_model(model).forward).parameters


@contextmanager
def _null_box() -> Iterator[dict[str, Any]]:
    yield {}


def _reproduces(model: nn.Module, head: LMHead, h: Tensor | None, logits: Tensor) -> bool:
    """Once per model: do the model's last-position logits equal the head applied to its last hidden state?"""
    base = unwrap_model(model)
    if getattr(base, "_rlhfkit_head_checked", False):
        return True
    ok = h is not None and h.shape[:1] == logits.shape[:1]
    if ok:
        with torch.no_grad():
            mine = torch.nn.functional.linear(h[:, -1], head.weight, head.bias).float() * head.scale
            if head.softcap is not None:
                mine = torch.tanh(mine / head.softcap) * head.softcap
            theirs = logits[:, -1].float()
            tol = 1e-4 if logits.dtype == torch.float32 else 5e-2
            ok = bool(torch.allclose(mine, theirs, rtol=tol, atol=tol * float(theirs.abs().max().clamp(min=1.0))))
    if ok:
        base._rlhfkit_head_checked = True
    else:
        base._rlhfkit_plain_head = True
        warnings.warn(
            f"{type(base).__name__}: the fused head does not reproduce the model's logits; using its own head "
            "(model.fused_head has no effect for this model)",
            stacklevel=3,
        )
    return ok


def _score_head(model: nn.Module) -> nn.Module:
    base = unwrap_model(model)
    head = next(
        (getattr(base, k) for k in ("score", "classifier", "v_head") if isinstance(getattr(base, k, None), nn.Module)),
        None,
    )
    if head is None:
        raise ValueError(f"{type(base).__name__} has no score head (score, classifier or v_head)")
    return head


def token_scores(model: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """(B, T) fp32 output of a sequence-classification model's (num_labels=1) score head at EVERY position, read
    from the head during the model's own forward (a process reward model scores each step's end token). The model
    still pools its logits at the last token, so the saved directory stays a plain reward model for transformers."""
    with _capture_output(_score_head(model)) as box:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return box["out"][..., 0].float()


def sequence_scores(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, padding_free: bool = False) -> Tensor:
    """(B,) fp32 scalar scores of a sequence-classification model (num_labels=1) at each row's last real token; (B, K)
    for a model with K > 1 heads (a multi-objective reward model).

    padding_free packs the rows into one and reads the score head's output at each row's last token."""
    if not padding_free:
        return model(input_ids=input_ids, attention_mask=attention_mask).logits.squeeze(-1).float()
    pk = Packing.of(attention_mask, width=_pack_width(model, input_ids))
    with _capture_output(_score_head(model)) as box:
        model(input_ids=pk.pack(input_ids), attention_mask=None, position_ids=pk.position_ids, use_cache=False)
    per_token = pk.tokens(box["out"]).float()  # (N, K)
    per_token = per_token[:, 0] if per_token.shape[-1] == 1 else per_token  # (N,) for a scalar head
    last = torch.cat([pk.starts[1:], pk.starts.new_ones(1)])  # the token before the next row's start
    return per_token[last]
