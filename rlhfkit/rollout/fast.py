"""rlhfkit's own decoding loop over a Hugging Face causal LM: what `generate` does for one rollout batch, minus its waste.

The model is called through its ordinary forward (any architecture whose KV cache is a plain per-layer key/value pair,
so LoRA, hooks and the current weights all apply); only the work around it changes. On 2 CPU cores (SmolLM2-135M,
64 chat prompts of ~53 tokens, 32 new tokens; benchmarks/cpu_rollout.py) `generate` spends its time on:
- torch.multinomial over the 49k vocabulary, ~64 ms a step for 64 rows (a cumulative sum and a binary search: ~2 ms);
- the prompt prefill over the whole left-padded batch, its 24-token system turn recomputed for every row;
- DynamicCache, which concatenates every layer's whole cache at every step;
- rows that finished (EOS) still decoded until the last row finishes.
This loop samples by inverse CDF, runs the tokens every prompt of the batch starts with once (and identical prompts,
num_samples > 1, once), prefills the rest in groups of similar length, writes keys/values in place into one
preallocated buffer, and drops finished rows from the batch.

Llama-architecture models (SmolLM2, Llama 2/3) built of transformers' own modules, with no hook on the blocks, run
through a lean forward instead (`supports_lean_forward`, `lean_forward`): the same computation as their forward (within
float rounding; tests compare both) without transformers' per-call machinery, the prompts prefilled in one packed pass
(no padding in the linear layers), and, inside `prepacked_linears`, q/k/v and gate/up as one product each. The linear
layers, MLPs, embeddings and LM head are still called as modules, so LoRA and their hooks apply.

The sampled distribution is exactly generate()'s: the same processors in the same order (min_new_tokens suppresses
EOS, then temperature, top-k, top-p, from transformers' own warpers), softmax in fp32 of the last position only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

from rlhfkit.rollout.types import SamplingParams

# A prefill group is one forward pass; its fixed cost (Python, kernel launches, small GEMMs) in units of prompt tokens.
PREFILL_GROUP_COST_TOKENS = 16


# ----------------------------------------------------------------------------------------------------------------------
# the KV buffer


class _BufferLayer(DynamicLayer):
    """One layer's keys / values in a preallocated (rows, kv_heads, columns, head_dim) buffer.

    New states are written in place at the owner's current column for the owner's current rows; attention reads columns
    [0, column + new). Columns are shared by all rows: a row's own padding columns are masked out by the 2-D mask.
    """

    def __init__(self, owner: KVBuffer):
        super().__init__()
        self.owner = owner

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
        o = self.owner
        # zeros, not empty: masked columns are multiplied by a zero weight, and 0 * NaN garbage would be NaN
        self.keys = key_states.new_zeros((o.num_rows, key_states.shape[1], o.num_columns, key_states.shape[-1]))
        self.values = value_states.new_zeros((o.num_rows, value_states.shape[1], o.num_columns, value_states.shape[-1]))
        self.device = key_states.device
        self.is_initialized = True

    def update(self, key_states: Tensor, value_states: Tensor, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        o = self.owner
        end = o.column + key_states.shape[-2]
        self.keys[o.rows, :, o.column : end] = key_states
        self.values[o.rows, :, o.column : end] = value_states
        return self.keys[o.rows, :, :end], self.values[o.rows, :, :end]

    def scatter(self, rows: Tensor, columns: Tensor, key_states: Tensor, value_states: Tensor) -> None:
        """Write token t's states (T, kv_heads, head_dim) at (rows[t], columns[t])."""
        if not self.is_initialized:
            self.lazy_initialization(key_states.transpose(0, 1)[None], value_states.transpose(0, 1)[None])
        self.keys[rows, :, columns] = key_states
        self.values[rows, :, columns] = value_states

    def get_seq_length(self) -> int:
        return self.owner.column

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.owner.column + query_length, 0

    def get_max_length(self) -> int:
        return self.owner.num_columns


class KVBuffer(Cache):
    """A transformers Cache over preallocated per-layer buffers with a movable write position.

    `rows` (a slice) picks the rows a forward pass works on (a prefill group), `column` the first column it writes.
    """

    def __init__(self, num_layers: int, num_rows: int, num_columns: int):
        self.num_rows, self.num_columns = num_rows, num_columns
        self.rows: slice = slice(None)
        self.column = 0
        super().__init__(layers=[_BufferLayer(self) for _ in range(num_layers)])

    def broadcast_columns(self, source_row: int, end: int) -> None:
        """Copy columns [0, end) of one row to every row (a prefix all rows share)."""
        for layer in self.layers:
            if layer.is_initialized:
                layer.keys[:, :, :end] = layer.keys[source_row : source_row + 1, :, :end]
                layer.values[:, :, :end] = layer.values[source_row : source_row + 1, :, :end]

    def select_rows(self, index: Tensor) -> None:
        """A new buffer of the rows `index`, in that order (a row may repeat: the samples of one prompt)."""
        for layer in self.layers:
            if layer.is_initialized:
                layer.keys = layer.keys.index_select(0, index)
                layer.values = layer.values.index_select(0, index)
        self.num_rows = int(index.numel())
        self.rows = slice(None)

    def copy_rows(self, source: Tensor, target: Tensor) -> None:
        """Overwrite rows `target` with rows `source`, in place (only those rows' columns are copied)."""
        for layer in self.layers:
            if layer.is_initialized:
                layer.keys[target] = layer.keys[source]
                layer.values[target] = layer.values[source]


# ----------------------------------------------------------------------------------------------------------------------
# linear layers through oneDNN


def _onednn_linear_available() -> bool:
    ops = getattr(torch.ops, "mkldnn", None)
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(ops, "_reorder_linear_weight")
        and hasattr(ops, "_linear_pointwise")
    )


def _packable(m: torch.nn.Module) -> bool:
    return (
        type(m) is torch.nn.Linear
        and m.weight.device.type == "cpu"
        and m.weight.dtype == torch.float32
        and "forward" not in m.__dict__
    )


def _hooked(m: torch.nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks)


@dataclasses.dataclass(frozen=True)
class FusedLinear:
    """Several linears of one input multiplied as ONE prepacked weight (their rows stacked); the outputs side by side."""

    weight: Tensor  # oneDNN-reordered (sum(widths), in_features)
    bias: Tensor | None
    widths: tuple[int, ...]  # out_features of each part, in order

    def __call__(self, x: Tensor) -> Tensor:
        return _packed_linear(x, self.weight, self.bias, sum(self.widths))


@dataclasses.dataclass
class PackedWeights:
    """What `prepacked_linears` did: `linears` nn.Linear modules switched to a prepacked weight, and `fused`: Llama
    attention blocks -> their q|k|v product, Llama MLPs -> their gate|up product (read by `lean_forward` only)."""

    linears: int = 0
    fused: dict[torch.nn.Module, FusedLinear] = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:  # weights reordered
        return self.linears + len(self.fused)


def _fusable_groups(model: torch.nn.Module) -> Iterator[tuple[torch.nn.Module, tuple[torch.nn.Linear, ...]]]:
    """(module, its linears of one input) for the Llama attention (q, k, v) and MLP (gate, up) blocks whose parts may be
    one product: plain fp32 CPU linears all with or all without bias, and no hook on them or on the MLP (whose calls
    the lean forward then skips)."""
    classes = _llama_classes()
    if classes is None:
        return
    for m in model.modules():
        if type(m) is classes[3]:
            group = (m.q_proj, m.k_proj, m.v_proj)
        elif type(m) is classes[4] and not _hooked(m):
            group = (m.gate_proj, m.up_proj)
        else:
            continue
        if all(_packable(g) and not _hooked(g) and (g.bias is None) == (group[0].bias is None) for g in group):
            yield m, group


@contextlib.contextmanager
def prepacked_linears(model: torch.nn.Module, batch_hint: int = 64) -> Iterator[PackedWeights]:
    """Within the block, every fp32 CPU `nn.Linear` of `model` runs through oneDNN on a copy of its weight reordered
    ONCE into oneDNN's blocked layout (the weights, and hooks on the linears, must not change inside the block: one
    rollout). Yields what was packed (`PackedWeights`, empty where oneDNN is missing: nothing changes).

    Why: MKL's sgemm re-packs the weight at every call, which at the few rows of a decoding step costs about as much as
    the product itself. Measured on 2 cores (SmolLM2-135M's 210 linears, 64 rows): 102 -> 77 ms a step, and the
    49k-vocabulary head 33 -> 19 ms; prefill (837 rows) 1.2 -> 0.9 s; reordering all weights takes ~0.15 s. Results
    differ from MKL's by float rounding only (~1e-6 relative: another summation order).
    In models the lean forward runs (`supports_lean_forward`), the q/k/v and the gate/up projections of each block are
    packed as ONE weight each instead, which `lean_forward` (given `PackedWeights.fused`) multiplies in one call:
    fewer, wider products; those linears keep their own (MKL) forward for the model's. LoRA layers keep their own
    forward; their base `nn.Linear` is switched like any other.
    """
    packed = PackedWeights()
    patched: list[torch.nn.Module] = []
    reorder = functools.partial(torch.ops.mkldnn._reorder_linear_weight, batch_size=batch_hint)
    try:
        if _onednn_linear_available():
            fused_parts: set[torch.nn.Module] = set()
            for m, group in _fusable_groups(model) if supports_lean_forward(model) else ():
                weight = torch.cat([g.weight.detach() for g in group])
                bias = torch.cat([g.bias.detach() for g in group]) if group[0].bias is not None else None
                packed.fused[m] = FusedLinear(reorder(weight), bias, tuple(g.out_features for g in group))
                fused_parts.update(group)
            for m in model.modules():
                if not _packable(m) or m in fused_parts:  # a fused part keeps its own forward (for the model's)
                    continue
                w = m.weight.detach()
                bias = m.bias.detach() if m.bias is not None else None
                m.forward = functools.partial(_packed_linear, packed=reorder(w), bias=bias, out_features=w.shape[0])
                patched.append(m)
            packed.linears = len(patched)
        yield packed
    finally:
        for m in patched:
            del m.forward


def _packed_linear(x: Tensor, packed: Tensor, bias: Tensor | None, out_features: int) -> Tensor:
    flat = x.reshape(-1, x.shape[-1]).contiguous()
    y = torch.ops.mkldnn._linear_pointwise(flat, packed, bias, "none", [], "")
    return y.reshape(*x.shape[:-1], out_features)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    model = getattr(model, "module", model)  # DDP / accelerate wrappers
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def supports_loop(model: torch.nn.Module) -> bool:
    """Whether the model's cache is one plain key/value pair per layer (no sliding window, linear attention or shared
    KV), the only kind `KVBuffer` stands in for; other models keep transformers' generate."""
    base = _unwrap(model)
    config = getattr(base, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return False
    try:
        text = config.get_text_config(decoder=True)
        layers = DynamicCache(config=text).layers
    except Exception:  # an architecture transformers cannot describe: leave it to generate
        return False
    n = getattr(text, "num_hidden_layers", None)
    return bool(layers) and len(layers) == n and all(type(layer) is DynamicLayer for layer in layers)


def _cache_kwarg(model: torch.nn.Module) -> str:
    """transformers >= 5.x renamed `past_key_values` to `cache` (the old name is deprecated)."""
    params = inspect.signature(_unwrap(model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


# ----------------------------------------------------------------------------------------------------------------------
# a lean forward for Llama-architecture models


def _llama_classes() -> tuple[type, ...] | None:
    try:
        from transformers.models.llama import modeling_llama as ml
    except ImportError:  # pragma: no cover - transformers without Llama
        return None
    return ml.LlamaForCausalLM, ml.LlamaModel, ml.LlamaDecoderLayer, ml.LlamaAttention, ml.LlamaMLP, ml.LlamaRMSNorm


def supports_lean_forward(model: torch.nn.Module) -> bool:
    """Whether `lean_forward` computes exactly what the model's own forward does: a Llama-architecture model (SmolLM2,
    Llama 2/3, ...) built of transformers' own Llama modules, with no hook on a module the lean forward does not call
    (the decoder layers, attention blocks, their norms) and no prompt-learning adapter. Linear layers (LoRA included),
    the MLPs, embeddings, rotary embedding, final norm and LM head are called as modules, so their hooks still run
    (but see `prepacked_linears`: fused products skip the calls of their parts and of the MLP, so it fuses hook-free
    ones only)."""
    classes = _llama_classes()
    if classes is None:
        return False
    causal_lm, backbone, layer_cls, attn_cls, mlp_cls, norm_cls = classes
    peft_config = getattr(model, "active_peft_config", None)
    if peft_config is not None and getattr(peft_config, "is_prompt_learning", False):
        return False
    base = _unwrap(model)
    if type(base) is not causal_lm or type(getattr(base, "model", None)) is not backbone:
        return False
    bypassed: list[torch.nn.Module] = [base, base.model]
    for layer in base.model.layers:
        parts = (layer, layer.self_attn, layer.mlp, layer.input_layernorm, layer.post_attention_layernorm)
        if tuple(map(type, parts)) != (layer_cls, attn_cls, mlp_cls, norm_cls, norm_cls):
            return False
        if layer.self_attn.training and layer.self_attn.attention_dropout > 0:  # the lean attention has no dropout
            return False
        bypassed += parts[:2] + parts[3:]
    return not any(_hooked(m) for m in bypassed)


def _rms_norm(norm: torch.nn.Module, x: Tensor) -> Tensor:
    """LlamaRMSNorm: weight * x * rsqrt(mean(x^2) + eps), in fp32. The mean square from the row's 2-norm: one read of
    x, where F.rms_norm on CPU (a composite) makes ~8 passes over it with two copies."""
    if x.dtype != torch.float32:
        return norm(x)
    r = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_().div_(x.shape[-1]).add_(norm.variance_epsilon)
    return (x * r.rsqrt_()).mul_(norm.weight)


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary embedding of x (..., heads, head_dim) with cos / sin (..., 1, head_dim): x * cos + rotate_half(x) * sin,
    transformers' apply_rotary_pos_emb op for op (the same floats)."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def _qkv(attn: torch.nn.Module, h: Tensor, cos: Tensor, sin: Tensor, fused: Mapping[torch.nn.Module, FusedLinear]):
    """(q, k, v), each (..., heads, head_dim), of the normed states h (..., hidden); rotary applied to q and k."""
    D, f = attn.head_dim, fused.get(attn)
    if f is None:
        q, k, v = (proj(h).unflatten(-1, (-1, D)) for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
        return _rotate(q, cos, sin), _rotate(k, cos, sin), v
    heads = f(h).unflatten(-1, (-1, D))  # q | k | v heads side by side: one product, rotary on q and k at once
    n_q, n_qk = f.widths[0] // D, (f.widths[0] + f.widths[1]) // D
    qk = _rotate(heads[..., :n_qk, :], cos, sin)
    return qk[..., :n_q, :], qk[..., n_q:, :], heads[..., n_qk:, :]


def _mlp(mlp: torch.nn.Module, h: Tensor, fused: Mapping[torch.nn.Module, FusedLinear]) -> Tensor:
    f = fused.get(mlp)
    if f is None:
        return mlp(h)
    gate, up = f(h).split(f.widths, dim=-1)  # LlamaMLP: down(act(gate(h)) * up(h)), gate and up in one product
    return mlp.down_proj(mlp.act_fn(gate).mul_(up))


def _additive(see: Tensor, dtype: torch.dtype) -> Tensor:
    """A boolean attention mask as the additive one (0 / -inf) SDPA adds, built once instead of in every layer."""
    return torch.zeros(see.shape, dtype=dtype, device=see.device).masked_fill_(~see, float("-inf"))


def _attend_one(attn: torch.nn.Module, q: Tensor, keys: Tensor, values: Tensor, mask: Tensor | None) -> Tensor:
    """Attention of ONE query per row: q (R, heads, head_dim) over keys / values (R, kv_heads, C, head_dim) -> (R,
    heads * head_dim). The query heads of a KV head attend as one group of queries: no KV copy for GQA."""
    R, n_q, D = q.shape
    q = q.reshape(R, keys.shape[1], n_q // keys.shape[1], D)  # query head j uses KV head j // groups (repeat_kv)
    out = torch.nn.functional.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=attn.scaling)
    return out.reshape(R, n_q * D)


def lean_forward(
    base: torch.nn.Module,
    cache: KVBuffer,
    ids: Tensor,
    attend: Tensor | None,
    positions: Tensor,
    fused: Mapping[torch.nn.Module, FusedLinear] | None = None,
) -> Tensor:
    """The last position's logits (B, V) of a Llama-architecture model (see `supports_lean_forward`) run on `ids` (B,
    L) at `positions` (B, L), keys / values written into `cache` at its rows / column: the computation of the model's
    forward with the KV buffer, without transformers' per-call machinery (mask builders, output capture, kwargs
    plumbing, per-layer module calls), ~20 ms of a ~160 ms decoding step at 64 rows on 2 CPU cores (SmolLM2-135M).

    attend: (B, >= cache.column + L) bool, the columns each row may see (padding excluded); None: all of them.
    fused: `PackedWeights.fused` (q|k|v and gate|up products), or None: the linears are called one by one.
    """
    m, fused = base.model, fused or {}
    x = m.embed_tokens(ids)  # (B, L, H)
    B, L, _ = x.shape
    cos, sin = (t.unsqueeze(2) for t in m.rotary_emb(x, positions))  # (B, L, 1, head_dim): the same for every head
    start, end = cache.column, cache.column + L
    mask: Tensor | None = None
    if L > 1:  # causal within the new tokens, over the columns written so far
        cols = torch.arange(end, device=x.device)
        see = (cols[None, :] <= start + torch.arange(L, device=x.device)[:, None])[None, None]
        if attend is not None:
            see = see & attend[:, None, None, :end]
        mask = _additive(see | ~see.any(-1, keepdim=True), x.dtype)  # a padding query that sees nothing: anything
    elif attend is not None:
        mask = _additive(attend[:, None, None, :end], x.dtype)
    last = len(m.layers) - 1
    for i, layer in enumerate(m.layers):
        attn = layer.self_attn
        q, k, v = _qkv(attn, _rms_norm(layer.input_layernorm, x), cos, sin, fused)  # (B, L, heads, head_dim)
        keys, values = cache.layers[i].update(k.transpose(1, 2), v.transpose(1, 2))
        if i == last and L > 1:  # the last block's output is needed at the last position only (its keys are cached)
            q, x, L = q[:, -1:], x[:, -1:], 1
            mask = mask[:, :, -1:] if mask is not None else None
        if L == 1:
            out = _attend_one(attn, q[:, 0], keys, values, mask).unsqueeze(1)
        else:
            out = torch.nn.functional.scaled_dot_product_attention(
                q.transpose(1, 2), keys, values, attn_mask=mask, scale=attn.scaling,
                enable_gqa=attn.num_key_value_groups > 1,
            ).transpose(1, 2).flatten(2)  # fmt: skip
        x = x + attn.o_proj(out)
        x = x + _mlp(layer.mlp, _rms_norm(layer.post_attention_layernorm, x), fused)
    return base.lm_head(m.norm(x[:, -1]))


def lean_prefill(
    base: torch.nn.Module,
    cache: KVBuffer,
    rows: Sequence[Sequence[int]],
    start: int,
    attend: Tensor,
    fused: Mapping[torch.nn.Module, FusedLinear] | None = None,
) -> Tensor:
    """Prefill the prompts' own tokens (after a shared prefix already in columns [0, start)) of a Llama-architecture
    model in ONE pass, packed: every linear layer multiplies the T real tokens of all rows at once (no padding, each
    weight read once); only attention sees the rows padded, right-aligned to the longest (width S). Row r's tokens go
    to buffer row r, columns [start + S - len_r, start + S), at positions start, start + 1, ...

    attend: (rows, start + S) bool, the columns each row may see. Returns the logits (rows, V) at each row's last token.
    """
    m, device, fused = base.model, attend.device, fused or {}
    U = len(rows)
    lens = torch.tensor([len(r) for r in rows], device=device)
    S, T = int(lens.max()), int(lens.sum())
    row = torch.repeat_interleave(torch.arange(U, device=device), lens)  # (T,) buffer row of each token
    j = torch.arange(T, device=device) - torch.repeat_interleave(lens.cumsum(0) - lens, lens)  # index within its row
    lead = (S - lens)[row]  # left padding of the token's row
    column = start + lead + j
    padded = row * S + lead + j  # the token's place in the (U, S) padded layout
    last = lens.cumsum(0) - 1  # (U,) each row's last token
    x = m.embed_tokens(torch.tensor([t for r in rows for t in r], device=device))  # (T, H)
    cos, sin = (t[0, :, None] for t in m.rotary_emb(x[None], (start + j)[None]))  # (T, 1, head_dim)
    # the query at padded place p (column start + p) sees the columns <= start + p that its row may see
    cols = torch.arange(start + S, device=device)
    see = attend[:, None, None, :] & (cols <= start + torch.arange(S, device=device)[:, None])[None, None]
    mask = _additive(see | ~see.any(-1, keepdim=True), x.dtype)  # padding queries that see nothing: anything finite
    final = _additive(attend[:, None, None, :], x.dtype)  # the last tokens see everything their row may see
    n_layers = len(m.layers)
    for i, layer in enumerate(m.layers):
        attn = layer.self_attn
        q, k, v = _qkv(attn, _rms_norm(layer.input_layernorm, x), cos, sin, fused)  # (T, heads, head_dim)
        cache.layers[i].scatter(row, column, k, v)
        keys, values = cache.layers[i].keys[:U, :, : start + S], cache.layers[i].values[:U, :, : start + S]
        if i == n_layers - 1:  # the last block is needed at the last tokens only (all keys are cached by now)
            x, out = x[last], _attend_one(attn, q[last], keys, values, final)
        else:
            n_q, D = q.shape[1:]
            q_pad = q.new_zeros((U * S, n_q, D)).index_copy_(0, padded, q).view(U, S, n_q, D).transpose(1, 2)
            out = torch.nn.functional.scaled_dot_product_attention(
                q_pad, keys, values, attn_mask=mask, scale=attn.scaling, enable_gqa=attn.num_key_value_groups > 1
            )
            out = out.transpose(1, 2).reshape(U * S, n_q * D).index_select(0, padded)
        x = x + attn.o_proj(out)
        x = x + _mlp(layer.mlp, _rms_norm(layer.post_attention_layernorm, x), fused)
    return base.lm_head(m.norm(x))


# ----------------------------------------------------------------------------------------------------------------------
# sampling


def sample_inverse_cdf(weights: Tensor, uniforms: Tensor, block: int = 1024) -> tuple[Tensor, Tensor]:
    """(indices (B,), totals (B,) float64) for rows of `weights` (B, V), nonnegative and not necessarily normalized,
    drawn with one uniform in [0, 1) per row; totals are the rows' sums.

    The inverse CDF, exact like torch.multinomial (which accumulates the whole row in double): the first index whose
    cumulative weight exceeds u * total. In two levels: double sums of blocks of `block` tokens, the block where u * total
    falls, then the cumulative sum inside that block only. 64 x 49k on 2 CPU cores: ~2 ms, vs ~64 ms for softmax +
    torch.multinomial. A zero-weight token leaves the CDF flat and is never chosen. One uniform per row makes a row's
    draw independent of which other rows are in the batch, so finished rows can leave without changing the others'.
    """
    B, V = weights.shape
    n_blocks = -(-V // block)
    if n_blocks * block != V:
        weights = torch.nn.functional.pad(weights, (0, n_blocks * block - V))  # zero weight: never drawn
    blocks = weights.view(B, n_blocks, block)
    sums = blocks.sum(-1, dtype=torch.float64)  # (B, n_blocks)
    cdf = sums.cumsum(-1)
    target = uniforms.to(torch.float64) * cdf[:, -1]
    chosen = torch.searchsorted(cdf, target[:, None], right=True).squeeze(1).clamp_(max=n_blocks - 1)
    rows = torch.arange(B, device=weights.device)
    inside = blocks[rows, chosen]  # (B, block)
    inner = inside.to(torch.float64).cumsum(-1)
    before = torch.where(chosen > 0, cdf.gather(1, (chosen - 1).clamp(min=0)[:, None]).squeeze(1), 0.0)
    # the block's own running sum and its pairwise sum can differ in the last bits: measure the rest in the former
    rest = (target - before) * (inner[:, -1] / sums[rows, chosen])
    j = torch.searchsorted(inner, rest[:, None], right=True).squeeze(1)
    last = block - 1 - (inside > 0).flip(-1).int().argmax(-1)  # rounding past the end: the last token with weight
    return chosen * block + torch.minimum(j, last), cdf[:, -1]


def _warpers(params: SamplingParams) -> list[Any]:
    """transformers' own top-k / top-p warpers, as generate() builds them for do_sample (min_tokens_to_keep=1)."""
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    out: list[Any] = []
    if params.top_k:
        out.append(TopKLogitsWarper(top_k=params.top_k, min_tokens_to_keep=1))
    if params.top_p < 1.0:
        out.append(TopPLogitsWarper(top_p=params.top_p, min_tokens_to_keep=1))
    return out


# ----------------------------------------------------------------------------------------------------------------------
# layout helpers


def _common_prefix(rows: Sequence[Sequence[int]]) -> int:
    first = rows[0]
    k = min(len(r) for r in rows)
    for r in rows[1:]:
        i = 0
        while i < k and r[i] == first[i]:
            i += 1
        k = i
        if k == 0:
            break
    return k


def prefill_groups(lengths: Sequence[int], group_cost: int = PREFILL_GROUP_COST_TOKENS) -> list[tuple[int, int]]:
    """Split rows sorted by length (ascending) into contiguous groups [start, end), each left-padded to its longest row,
    minimizing padded tokens + group_cost per group (one forward pass each). Dynamic programming, O(n^2)."""
    n = len(lengths)
    best = [0.0] + [float("inf")] * n
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j):
            c = best[i] + (j - i) * lengths[j - 1] + group_cost
            if c < best[j]:
                best[j], cut[j] = c, i
    groups, j = [], n
    while j > 0:
        groups.append((cut[j], j))
        j = cut[j]
    return groups[::-1]


# ----------------------------------------------------------------------------------------------------------------------
# the loop


@torch.no_grad()
def decode(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    params: SamplingParams,
    eos_ids: Sequence[int],
    pad_id: int,
    drop_finished: bool = True,
    share_prefix: bool = True,
    group_cost: int = PREFILL_GROUP_COST_TOKENS,
    record_logprobs: bool = False,
    stats: dict[str, int] | None = None,
    lean_layers: bool = True,
    packed: PackedWeights | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Continue every prompt (token ids, no padding) of one batch, as generate() would.

    Returns (tokens (B, N) long, pad_id after a row's first EOS; N = steps until every row finished or max_new_tokens)
    and, with record_logprobs, (B, N) float32 rollout log-probs of the sampled tokens, 0 after EOS: log softmax of the
    model's logits / params.logprob_temperature (temperature 0: 1), the quantity training log-probs compute. They are
    the sampling distribution's own log-probs unless top-k / top-p / min_new_tokens truncate it: truncation is left
    out, as training leaves it out, so that rollout and training log-probs differ by float rounding only.
    Sampling draws from torch's global generator: one uniform per row (of the batch) per step.
    lean_layers: Llama-architecture models run through `lean_forward` / `lean_prefill` (False: always the model's own
    forward). packed: what `prepacked_linears(model)` yielded, if decoding inside it (the lean forward's fused products).
    stats: a dict that receives the work done, in tokens run through the linear layers: `prefix` (shared, once),
    `prefill` (the prompts' own tokens, with padding where groups are padded), `prefill_passes`, `decode` (row-steps)
    and `steps`.
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("decode: every prompt needs at least one token")
    device = next(model.parameters()).device
    cache_kw = _cache_kwarg(model)
    num_layers = _unwrap(model).config.get_text_config(decoder=True).num_hidden_layers
    B, N = len(prompts), params.max_new_tokens
    eos = torch.tensor(list(eos_ids), dtype=torch.long, device=device)

    # 1. unique prompts (a prompt's num_samples rows are prefilled once), sorted by length for the prefill groups
    uniq = sorted({tuple(p) for p in prompts}, key=lambda u: (len(u), u))
    rank = {u: i for i, u in enumerate(uniq)}
    row_to_unique = [rank[tuple(p)] for p in prompts]
    U = len(uniq)

    # 2. the columns: [shared prefix k][left padding | suffix, S wide][generated tokens]
    k = _common_prefix(uniq) if share_prefix and U > 1 else 0
    k = min(k, len(uniq[0]) - 1)  # every row keeps at least one token of its own: its last logits come from it
    suffix = [len(u) - k for u in uniq]
    S = max(suffix)
    columns = k + S + N
    cache = KVBuffer(num_layers, U, columns)
    attend = torch.zeros((U, columns), dtype=torch.bool, device=device)
    attend[:, :k] = True
    for i, s in enumerate(suffix):
        attend[i, k + S - s : k + S] = True

    lean = lean_layers and supports_lean_forward(model)
    fused = packed.fused if packed is not None else {}

    def forward(ids: Tensor, mask: Tensor | None, positions: Tensor) -> Tensor:
        if lean:
            return lean_forward(_unwrap(model), cache, ids, mask, positions, fused)
        out = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **{cache_kw: cache},
        )
        return out.logits[:, -1]

    # 3. prefill: the shared prefix once, then the rest: packed in one pass (lean), or in groups of similar length
    if k > 0:
        cache.rows, cache.column = slice(0, 1), 0
        forward(torch.tensor([uniq[0][:k]], device=device), None, torch.arange(k, device=device)[None])
        cache.broadcast_columns(0, k)
    groups = [] if lean else prefill_groups(suffix, group_cost)
    padded_tokens = sum((g1 - g0) * suffix[g1 - 1] for g0, g1 in groups) if groups else sum(suffix)
    work = {"prefix": k, "prefill": padded_tokens, "prefill_passes": len(groups) or 1, "decode": 0, "steps": 0}
    last_logits = []
    if lean:
        last_logits.append(lean_prefill(_unwrap(model), cache, [u[k:] for u in uniq], k, attend[:, : k + S], fused))
    for g0, g1 in groups:
        width = suffix[g1 - 1]
        ids = torch.full((g1 - g0, width), pad_id, dtype=torch.long)
        for r in range(g0, g1):
            ids[r - g0, width - suffix[r] :] = torch.tensor(uniq[r][k:])
        lead = torch.tensor([width - suffix[r] for r in range(g0, g1)])[:, None]  # padding columns of each row
        positions = (k + torch.arange(width)[None] - lead).clamp(min=0)
        cache.rows, cache.column = slice(g0, g1), k + S - width
        last_logits.append(forward(ids.to(device), attend[g0:g1, : k + S], positions.to(device)))
    logits = torch.cat(last_logits)

    # 4. one row per sample: buffer row j holds batch row `alive[j]` (rows of one prompt are copies of its prefill)
    expand = torch.tensor(row_to_unique, device=device)
    alive = torch.argsort(expand, stable=True)  # batch rows grouped by unique prompt, in buffer order
    if U != B:
        cache.select_rows(expand[alive])
        attend, logits = attend[expand[alive]], logits[expand[alive]]
    next_pos = k + torch.tensor(suffix, device=device)[expand[alive]]
    cache.rows, cache.column = slice(0, B), k + S

    # 5. decode. The rows still decoding are the buffer's first n rows: when rows finish, live rows from the end move
    # into their slots, so a drop copies only as many cache rows as finished (not the whole cache). The logits are
    # ours to overwrite (the softmax numerator is computed in place).
    tokens = torch.full((B, N), pad_id, dtype=torch.long, device=device)
    logps = torch.zeros((B, N), dtype=torch.float32, device=device) if record_logprobs else None
    sampling = params.temperature > 0
    warpers = _warpers(params) if sampling else []
    done = torch.zeros(B, dtype=torch.bool, device=device)  # finished rows kept in the batch (drop_finished=False)
    steps = 0
    for t in range(N):
        scores = logits.float()
        # the untruncated log-probs when processors change the scores (the default sampler reuses its own weights)
        truncated = bool(warpers) or t < params.min_new_tokens or not sampling
        plain = scores.double() / params.logprob_temperature if logps is not None and truncated else None
        if t < params.min_new_tokens:
            scores[:, eos] = -float("inf")
        if sampling:
            uniforms = torch.rand(B, dtype=torch.float64, device=device)[alive]  # B draws whoever is left: reproducible
            if params.temperature != 1.0:
                scores = scores / params.temperature
            for w in warpers:
                scores = w(None, scores)
            top = scores.amax(-1, keepdim=True)
            weights = scores.sub_(top).exp_()  # the softmax numerator, in place: scores are ours (logits or a copy)
            new, total = sample_inverse_cdf(weights, uniforms)
        else:
            new = scores.argmax(dim=-1)
        live = ~done
        tokens[alive[live], t] = new[live]
        if logps is not None:  # log softmax at the drawn token: log(weight / total), or of the untruncated scores
            if plain is None:
                lp = weights.gather(1, new[:, None]).squeeze(1).double().log() - total.log()
            else:
                lp = plain.gather(1, new[:, None]).squeeze(1) - torch.logsumexp(plain, -1)
            logps[alive[live], t] = lp.float()[live]
        done |= torch.isin(new, eos)
        steps = t + 1
        if t == N - 1 or bool(done.all()):
            break
        if drop_finished and bool(done.any()):
            keep = (~done).nonzero().squeeze(1)
            n = keep.numel()
            holes, movers = done[:n].nonzero().squeeze(1), keep[keep >= n]
            cache.copy_rows(movers, holes)
            for x in (alive, attend, next_pos, new):
                x[holes] = x[movers]
            alive, attend, next_pos, new, done = alive[:n], attend[:n], next_pos[:n], new[:n], done[:n]
            done[:] = False
            cache.rows = slice(0, n)
        attend[:, cache.column] = True
        work["decode"] += new.shape[0]
        logits = forward(new[:, None], attend[:, : cache.column + 1], next_pos[:, None])
        cache.column += 1
        next_pos = next_pos + 1
    if stats is not None:
        stats.update(work, steps=steps)
    return tokens[:, :steps], (logps[:, :steps] if logps is not None else None)
