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

The sampled distribution is exactly generate()'s: the same processors in the same order (min_new_tokens suppresses
EOS, then temperature, top-k, top-p, from transformers' own warpers), softmax in fp32 of the last position only.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Iterator, Sequence
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


@contextlib.contextmanager
def prepacked_linears(model: torch.nn.Module, batch_hint: int = 64) -> Iterator[int]:
    """Within the block, every fp32 CPU `nn.Linear` of `model` runs through oneDNN on a copy of its weight reordered
    ONCE into oneDNN's blocked layout (the weights must not change inside the block: one rollout). Yields the number of
    layers switched (0 where oneDNN is missing: nothing changes).

    Why: MKL's sgemm re-packs the weight at every call, which at the few rows of a decoding step costs about as much as
    the product itself. Measured on 2 cores (SmolLM2-135M's 210 linears, 64 rows): 102 -> 77 ms a step, and the
    49k-vocabulary head 33 -> 19 ms; prefill (837 rows) 1.2 -> 0.9 s; reordering all weights takes 0.2 s. Results
    differ from MKL's by float rounding only (~1e-6 relative: another summation order).
    LoRA layers keep their own forward; their base `nn.Linear` is switched like any other.
    """
    patched: list[torch.nn.Module] = []
    try:
        if _onednn_linear_available():
            for m in model.modules():
                w = m.weight if type(m) is torch.nn.Linear else None
                if w is None or w.device.type != "cpu" or w.dtype != torch.float32 or "forward" in m.__dict__:
                    continue
                packed = torch.ops.mkldnn._reorder_linear_weight(w.detach(), batch_hint)
                bias = m.bias.detach() if m.bias is not None else None
                m.forward = functools.partial(_packed_linear, packed=packed, bias=bias, out_features=w.shape[0])
                patched.append(m)
        yield len(patched)
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
# sampling


def sample_inverse_cdf(weights: Tensor, uniforms: Tensor, cdf: Tensor | None = None) -> Tensor:
    """(B,) indices drawn from the rows of `weights` (B, V), nonnegative and not necessarily normalized, with one
    uniform in [0, 1) per row.

    The first index whose cumulative weight exceeds u * total (the inverse CDF): an exact categorical draw, what
    torch.multinomial does internally, at ~2 ms instead of ~64 ms for 64 x 49k on 2 CPU cores. A zero-weight token
    leaves the CDF flat and is never chosen. One uniform per row makes a row's draw independent of which other rows are
    in the batch, so finished rows can leave without changing the others' samples. `cdf`: an optional (B, V) float64
    buffer to accumulate into.
    """
    if cdf is None:
        cdf = torch.empty(weights.shape, dtype=torch.float64, device=weights.device)
    torch.cumsum(weights.to(torch.float64), -1, out=cdf)  # double, as torch.multinomial accumulates
    target = uniforms.to(torch.float64) * cdf[:, -1]
    return torch.searchsorted(cdf, target.unsqueeze(1), right=True).squeeze(1).clamp_(max=weights.shape[1] - 1)


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
) -> tuple[Tensor, Tensor | None]:
    """Continue every prompt (token ids, no padding) of one batch, as generate() would.

    Returns (tokens (B, N) long, pad_id after a row's first EOS; N = steps until every row finished or max_new_tokens)
    and, with record_logprobs, (B, N) float32 log-probs of the sampled tokens under the distribution they were drawn
    from (after min_new_tokens / temperature / top-k / top-p; temperature 0: log_softmax of the raw logits), 0 after EOS.
    Sampling draws from torch's global generator: one uniform per row (of the batch) per step.
    stats: a dict that receives the work done, in tokens run through the model: `prefix` (shared, once), `prefill`
    (suffix tokens with their padding), `prefill_groups`, `decode` (row-steps) and `steps`.
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

    def forward(ids: Tensor, mask: Tensor | None, positions: Tensor) -> Tensor:
        out = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **{cache_kw: cache},
        )
        return out.logits[:, -1]

    # 3. prefill: the shared prefix once, then the suffixes in groups of similar length
    if k > 0:
        cache.rows, cache.column = slice(0, 1), 0
        forward(torch.tensor([uniq[0][:k]], device=device), None, torch.arange(k, device=device)[None])
        cache.broadcast_columns(0, k)
    groups = prefill_groups(suffix, group_cost)
    work = {"prefix": k, "prefill": sum((g1 - g0) * suffix[g1 - 1] for g0, g1 in groups), "prefill_groups": len(groups)}
    work.update(decode=0, steps=0)
    last_logits = []
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
    # into their slots, so a drop copies only as many cache rows as finished (not the whole cache)
    tokens = torch.full((B, N), pad_id, dtype=torch.long, device=device)
    logps = torch.zeros((B, N), dtype=torch.float32, device=device) if record_logprobs else None
    sampling = params.temperature > 0
    warpers = _warpers(params) if sampling else []
    # float64 work buffers reused at every step: a fresh 25 MB tensor a step costs page faults (up to ~30 ms here)
    weights64 = torch.empty((B, logits.shape[-1]), dtype=torch.float64, device=device) if sampling else None
    cdf = torch.empty_like(weights64) if sampling else None
    done = torch.zeros(B, dtype=torch.bool, device=device)  # finished rows kept in the batch (drop_finished=False)
    steps = 0
    for t in range(N):
        n = alive.numel()
        scores = logits.float()
        if t < params.min_new_tokens:
            scores[:, eos] = -float("inf")
        if sampling:
            uniforms = torch.rand(B, dtype=torch.float64, device=device)[alive]  # B draws whoever is left: reproducible
            if params.temperature != 1.0:
                scores = scores / params.temperature
            for w in warpers:
                scores = w(None, scores)
            top = scores.amax(-1, keepdim=True)
            weights = weights64[:n].copy_(scores).sub_(top).exp_()  # softmax numerator; the CDF ends at its sum
            new = sample_inverse_cdf(weights, uniforms, cdf[:n])
        else:
            new = scores.argmax(dim=-1)
        live = ~done
        tokens[alive[live], t] = new[live]
        if logps is not None:
            chosen = scores.gather(1, new[:, None]).squeeze(1).double()
            norm = cdf[:n, -1].log() + top.squeeze(1) if sampling else torch.logsumexp(scores.double(), -1)
            logps[alive[live], t] = (chosen - norm).float()[live]
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
