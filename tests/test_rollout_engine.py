"""rlhfkit's decoding loop (rollout/fast.py) against transformers' generate and the training forward, on a tiny model:
the distribution it samples from is the one training log-probs describe, greedy decoding is generate's token for token,
EOS / masks / min_new_tokens follow generate's semantics, and its shortcuts (shared prefix, prefill groups, dropping
finished rows) change nothing."""

from __future__ import annotations

import contextlib

import pytest
import torch

from rlhfkit.data import ChatFormatter
from rlhfkit.models.tiny import tiny_causal_lm, tiny_tokenizer
from rlhfkit.ops import token_logprobs
from rlhfkit.rollout import HFEngine, Rollout, SamplingParams, fast, left_pad

MESSAGES = [
    "hello there",
    "a",
    "the movie was great and the actors",
    "what is the capital of France?",
    "I loved it",
    "Write a poem about the sea, please.",
]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return tiny_causal_lm(tok, seed=1).eval()


@pytest.fixture(scope="module")
def gqa_model(tok):
    """A tiny Llama with grouped-query attention (4 query heads share 2 key/value heads), like SmolLM2's 9 / 3."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=True,
        initializer_range=0.25,  # peaked logits (the default 0.02 gives a near-uniform next token at this width)
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        return LlamaForCausalLM(config).float().eval()


@pytest.fixture(scope="module")
def prompts(tok) -> list[list[int]]:
    """Chat-formatted prompts of different lengths: they share the template's first tokens (the shared prefix)."""
    fmt = ChatFormatter(tok, 256, 128)
    return [fmt.encode_prompt(m) for m in MESSAGES]


def _eos_bias(model, tok, bias: float):
    """Raise the EOS logit by `bias` (a hook on the LM head): rows then finish at different steps."""
    add = torch.zeros(len(tok))
    add[tok.eos_token_id] = bias
    return model.lm_head.register_forward_hook(lambda mod, inp, out: out + add)


def _rollout(prompts, tokens, tok) -> Rollout:
    """A Rollout of loop outputs (tokens after EOS are already padding), prompts left-padded."""
    ids, mask = left_pad(prompts, tok.pad_token_id)
    is_eos = tokens == tok.eos_token_id
    resp = ((is_eos.int().cumsum(1) - is_eos.int()) == 0).float()
    return Rollout(ids, mask, tokens, resp, (is_eos & resp.bool()).any(1), torch.arange(len(prompts)))


def _training_logprobs(model, ro: Rollout, temperature: float) -> torch.Tensor:
    """(B, R) log-probs of the response tokens from ONE full forward over prompt + response (the training path)."""
    with torch.no_grad():
        logits = model(input_ids=ro.input_ids, attention_mask=ro.attention_mask, position_ids=ro.position_ids).logits
    P = ro.prompt_ids.shape[1]
    return token_logprobs(logits[:, P - 1 : -1], ro.response_ids, temperature=temperature) * ro.response_mask


# ----------------------------------------------------------------------------------------------------------------------
# the distribution


@pytest.mark.parametrize("temperature", [0.7, 1.3])
@pytest.mark.parametrize("variant", ["lean+prepacked", "lean", "model forward", "gqa lean+prepacked", "gqa forward"])
def test_sampled_tokens_logprobs_equal_training_logprobs(tok, model, gqa_model, prompts, temperature, variant):
    """The log-prob of each sampled token under the distribution the loop drew it from (its processed scores, computed
    from the incremental KV cache with a shared prefix and a packed prefill (lean) or length groups (the model's own
    forward), with oneDNN prepacked and fused weights or not) equals the training forward's."""
    m = gqa_model if variant.startswith("gqa") else model
    rows = [p for p in prompts for _ in range(2)]  # duplicated prompts: prefilled once, then copied
    params = SamplingParams(max_new_tokens=10, temperature=temperature)
    torch.manual_seed(3)
    handle = _eos_bias(m, tok, 3.0)  # some rows finish early: dropped mid-way
    try:
        with fast.prepacked_linears(m) if "prepacked" in variant else contextlib.nullcontext() as packed:
            gen, sampling_lp = fast.decode(
                m, rows, params, [tok.eos_token_id], tok.pad_token_id, record_logprobs=True,
                lean_layers="lean" in variant, packed=packed,
            )  # fmt: skip
        ro = _rollout(rows, gen, tok)
        assert 0 < int(ro.finished.sum()) < len(rows)
        train_lp = _training_logprobs(m, ro, params.logprob_temperature)
        wrong = _training_logprobs(m, ro, 1.0)  # the test can fail: the wrong temperature disagrees
    finally:
        handle.remove()
    valid = ro.response_mask.bool()
    assert torch.allclose(train_lp[valid], sampling_lp[valid], atol=1e-4)
    assert (sampling_lp[~valid] == 0).all()
    assert (wrong[valid] - sampling_lp[valid]).abs().max() > 1e-2


def _greedy(m, tok, prompts, **kw):
    params = SamplingParams(max_new_tokens=12, temperature=0.0)
    return fast.decode(m, prompts, params, [tok.eos_token_id], tok.pad_token_id, record_logprobs=True, **kw)


def test_lean_forward_and_fused_weights_equal_the_models_forward(tok, gqa_model, prompts):
    """Greedy tokens (and their log-probs) through the lean forward with prepacked + fused weights equal the model's own
    forward's; the modules get their own forward back afterwards; a hook on a block the lean forward skips sends the
    model through its own forward."""
    assert fast.supports_lean_forward(gqa_model)
    ref, ref_lp = _greedy(gqa_model, tok, prompts, lean_layers=False)
    with fast.prepacked_linears(gqa_model) as packed:
        # per block q|k|v and gate|up fused, o and down alone; the (tied) LM head alone
        assert (packed.linears, len(packed.fused)) == (2 * 2 + 1, 2 * 2)
        got, got_lp = _greedy(gqa_model, tok, prompts, packed=packed)
        # inside the block the model's own forward still works (the fused parts kept theirs)
        own, own_lp = _greedy(gqa_model, tok, prompts, lean_layers=False)
    assert torch.equal(got, ref) and torch.allclose(got_lp, ref_lp, atol=1e-5)
    assert torch.equal(own, ref) and torch.allclose(own_lp, ref_lp, atol=1e-5)
    assert not any("forward" in m.__dict__ for m in gqa_model.modules())
    for module in (gqa_model.model.layers[0], gqa_model.model.layers[1].self_attn, gqa_model.model.norm.__class__):
        if isinstance(module, type):
            continue
        handle = module.register_forward_hook(lambda mod, inp, out: None)
        try:
            assert not fast.supports_lean_forward(gqa_model)
        finally:
            handle.remove()
    gqa_model.train()
    try:  # training mode: the model's attention would apply dropout where it has some
        assert fast.supports_lean_forward(gqa_model)
        gqa_model.model.layers[0].self_attn.attention_dropout = 0.1
        assert not fast.supports_lean_forward(gqa_model)
    finally:
        gqa_model.model.layers[0].self_attn.attention_dropout = 0.0
        gqa_model.eval()


def test_lean_forward_runs_hooks_on_the_modules_it_calls(tok, gqa_model, prompts):
    """Hooks on a linear or an MLP keep the lean forward, are not fused away, run, and change the result as they would
    in the model's own forward."""
    _, ref_lp = _greedy(gqa_model, tok, prompts, lean_layers=False)
    calls = []

    def hook(mod, inp, out):
        calls.append(mod)
        return out * 1.5

    for module in (gqa_model.model.layers[0].self_attn.k_proj, gqa_model.model.layers[1].mlp):
        handle = module.register_forward_hook(hook)
        try:
            assert fast.supports_lean_forward(gqa_model)
            own, own_lp = _greedy(gqa_model, tok, prompts, lean_layers=False)
            assert calls and all(c is module for c in calls)
            calls.clear()
            with fast.prepacked_linears(gqa_model) as packed:
                assert len(packed.fused) == 3  # the hooked block's group is left unfused
                got, got_lp = _greedy(gqa_model, tok, prompts, packed=packed)
        finally:
            handle.remove()
        assert calls and all(c is module for c in calls)  # once a pass (passes differ: one packed prefill)
        assert torch.equal(got, own) and torch.allclose(got_lp, own_lp, atol=1e-5)
        assert (own_lp - ref_lp).abs().max() > 1e-3  # the hook mattered
        calls.clear()


def test_lean_forward_with_lora(tok, gqa_model, prompts):
    """A peft LoRA policy (nonzero adapters on q/v and the MLP) through the lean forward with prepacked weights: the
    same tokens and log-probs as its own forward; the adapted projections are not fused."""
    peft = pytest.importorskip("peft")
    import copy

    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"], init_lora_weights=False)
    policy = peft.get_peft_model(copy.deepcopy(gqa_model), config).eval()
    assert fast.supports_lean_forward(policy)
    ref, ref_lp = _greedy(policy, tok, prompts, lean_layers=False)
    _, base_lp = _greedy(gqa_model, tok, prompts, lean_layers=False)
    with fast.prepacked_linears(policy) as packed:
        assert len(packed.fused) == 0 and packed.linears > 0  # base layers of LoRA and the rest: switched
        got, got_lp = _greedy(policy, tok, prompts, packed=packed)
    assert torch.equal(got, ref) and torch.allclose(got_lp, ref_lp, atol=1e-5)
    assert (ref_lp - base_lp).abs().max() > 1e-3  # the adapters matter


@pytest.mark.parametrize("block", [1024, 3, 2])  # one block; blocks cut inside the row (and the row padded)
def test_inverse_cdf_sampler_draws_the_categorical(block):
    weights = torch.tensor([[2.0, 0.0, 1.0, 1.0, 0.0]])  # unnormalized; no mass on 1 and 4
    # by hand: the CDF is [2, 2, 3, 4, 4]; u * 4 lands in [0, 2) -> 0, [2, 3) -> 2, [3, 4) -> 3
    u = torch.tensor([0.0, 0.49, 0.5, 0.74, 0.75, 1 - 1e-12], dtype=torch.float64)
    got, total = fast.sample_inverse_cdf(weights.expand(6, 5), u, block=block)
    assert got.tolist() == [0, 0, 2, 2, 3, 3] and total.tolist() == [4.0] * 6
    g = torch.Generator().manual_seed(0)
    n = 40000
    draws, _ = fast.sample_inverse_cdf(weights.expand(n, 5), torch.rand(n, generator=g, dtype=torch.float64), block)
    freq = torch.bincount(draws, minlength=5).float() / n
    assert freq[1] == 0 and freq[4] == 0 and torch.allclose(freq, torch.tensor([0.5, 0.0, 0.25, 0.25, 0.0]), atol=0.01)


def test_first_token_frequencies_match_the_model(tok, model, prompts):
    """Many samples of one prompt's first token follow softmax(logits / T) restricted to the top k, as generate's."""
    params = SamplingParams(max_new_tokens=1, temperature=0.7, top_k=8)
    n = 8000
    handle = model.lm_head.register_forward_hook(lambda mod, inp, out: out * 20)  # peak the tiny model's flat logits
    try:
        torch.manual_seed(0)
        gen, _ = fast.decode(model, [prompts[2]] * n, params, [tok.eos_token_id], tok.pad_token_id)
        with torch.no_grad():
            logits = model(torch.tensor([prompts[2]])).logits[0, -1] / 0.7
    finally:
        handle.remove()
    top = logits.topk(8)
    probs = torch.zeros_like(logits)
    probs[top.indices] = torch.softmax(top.values, -1)
    freq = torch.bincount(gen[:, 0], minlength=len(probs)).float() / n
    assert set(gen[:, 0].tolist()) <= set(top.indices.tolist())  # nothing outside the top 8
    assert probs.max() < 0.9 and (freq - probs).abs().max() < 0.02  # a spread distribution, matched


# ----------------------------------------------------------------------------------------------------------------------
# generate's semantics


@pytest.mark.parametrize("bias", [0.0, 0.15, "gqa"])
def test_greedy_equals_generate_token_for_token(tok, model, gqa_model, prompts, bias):
    """Greedy decoding: the loop and generate give the same tokens, masks and `finished`, across length buckets
    (batch_size 4), duplicated prompts and, with an EOS bias, rows that finish at different steps."""
    params = SamplingParams(max_new_tokens=16, temperature=0.0)
    model, bias = (gqa_model, 0.0) if bias == "gqa" else (model, bias)
    handle = _eos_bias(model, tok, bias)
    try:
        ref = HFEngine(model, tok, batch_size=4, decoder="generate").generate(prompts, params, num_samples=2)
        got = HFEngine(model, tok, batch_size=4, decoder="loop").generate(prompts, params, num_samples=2)
    finally:
        handle.remove()
    if bias:
        assert 0 < int(ref.finished.sum()) < len(ref)
    assert torch.equal(got.response_ids, ref.response_ids)
    assert torch.equal(got.response_mask, ref.response_mask)
    assert torch.equal(got.finished, ref.finished) and got.texts == ref.texts
    assert torch.equal(got.prompt_ids, ref.prompt_ids) and torch.equal(got.position_ids, ref.position_ids)


def test_eos_ends_rows_and_pads_after(tok, model, prompts):
    """Sampling with rows finishing at different steps: each row's mask runs through its first EOS, padding after,
    `finished` iff an EOS was sampled, unfinished rows have max_new_tokens tokens (generate's layout)."""
    params = SamplingParams(max_new_tokens=12, temperature=1.0)
    torch.manual_seed(1)
    handle = _eos_bias(model, tok, 3.0)
    try:
        ro = HFEngine(model, tok, batch_size=5, decoder="loop").generate(prompts, params, num_samples=3)
    finally:
        handle.remove()
    eos, pad = tok.eos_token_id, tok.pad_token_id
    assert 0 < int(ro.finished.sum()) < len(ro)
    assert ro.group.tolist() == [g for g in range(len(prompts)) for _ in range(3)]
    for i in range(len(ro)):
        n = int(ro.response_mask[i].sum())
        row = ro.response_ids[i].tolist()
        assert ro.response_mask[i, :n].all() and not ro.response_mask[i, n:].any()
        assert all(t == pad for t in row[n:])
        if ro.finished[i]:
            assert row[n - 1] == eos and eos not in row[: n - 1]
        else:
            assert n == 12 and eos not in row
    # the samples of one prompt are drawn independently (the shared prefill is copied, not the draws)
    assert len({tuple(r) for r in ro.response_ids.tolist()}) > len(prompts)


def test_always_eos_and_min_new_tokens(tok, prompts):
    m = tiny_causal_lm(tok, seed=2).eval()
    bias = torch.full((len(tok),), -1e4)
    bias[tok.eos_token_id] = 0.0
    m.lm_head.register_forward_hook(lambda mod, inp, out: out + bias)
    for temperature in (1.0, 0.0):
        params = SamplingParams(max_new_tokens=6, temperature=temperature)
        ro = HFEngine(m, tok, decoder="loop").generate(prompts, params)
        assert ro.finished.all() and ro.response_lengths.tolist() == [1.0] * len(prompts)
        assert ro.response_ids.shape[1] == 1  # every row finished: no step after the last EOS
        # EOS is suppressed before min_new_tokens: it comes as token 4, as with generate
        params = SamplingParams(max_new_tokens=6, min_new_tokens=3, temperature=temperature)
        got = HFEngine(m, tok, decoder="loop").generate(prompts, params)
        ref = HFEngine(m, tok, decoder="generate").generate(prompts, params)
        assert got.response_lengths.tolist() == [4.0] * len(prompts) and got.finished.all()
        assert torch.equal(got.response_mask, ref.response_mask) and torch.equal(got.finished, ref.finished)
        assert (got.response_ids[:, :3] != tok.eos_token_id).all()


# ----------------------------------------------------------------------------------------------------------------------
# the shortcuts change nothing


def test_dropping_finished_rows_and_shared_prefix_change_nothing(tok, model, prompts):
    """Same seed, with and without each shortcut: the same tokens (one uniform per row and step, whoever is left) and
    the same log-probs up to float rounding."""
    rows = [p for p in prompts for _ in range(3)]
    params = SamplingParams(max_new_tokens=12, temperature=0.9)
    eos, pad = [tok.eos_token_id], tok.pad_token_id
    handle = _eos_bias(model, tok, 3.0)
    try:
        runs = {}
        for name, kw in {
            "all": {},
            "no drop": {"drop_finished": False},
            "no prefix": {"share_prefix": False},
            "own forward (length groups)": {"lean_layers": False},
            "own forward, one group per length": {"lean_layers": False, "group_cost": 0},
            "own forward, one group": {"lean_layers": False, "group_cost": 10**6},
        }.items():
            torch.manual_seed(7)
            runs[name] = fast.decode(model, rows, params, eos, pad, record_logprobs=True, **kw)
    finally:
        handle.remove()
    tokens, lp = runs["all"]
    finished_at = [(r == eos[0]).nonzero()[0].item() if (r == eos[0]).any() else None for r in tokens]
    assert len({f for f in finished_at if f is not None}) > 2  # rows left at several different steps
    for name, (t, p) in runs.items():
        assert torch.equal(t, tokens), name
        assert torch.allclose(p, lp, atol=1e-5), name


def test_prefill_groups():
    lengths = [3, 3, 4, 10, 10, 11]
    assert fast.prefill_groups(lengths, group_cost=10**6) == [(0, 6)]
    assert fast.prefill_groups(lengths, group_cost=0) == [(0, 2), (2, 3), (3, 5), (5, 6)]
    groups = fast.prefill_groups(lengths, group_cost=4)
    assert groups[0][0] == 0 and groups[-1][1] == 6 and all(a[1] == b[0] for a, b in zip(groups, groups[1:]))
    assert groups == [(0, 3), (3, 6)]  # 3*4 + 3*11 + 2*4 = 53 < one group 6*11 + 4 = 70


def test_engine_picks_the_loop_on_cpu(tok, model):
    assert HFEngine(model, tok).uses_loop()
    assert not HFEngine(model, tok, decoder="generate").uses_loop()
    assert not HFEngine(model, tok, static_cache=True).uses_loop()
    with pytest.raises(ValueError, match="decoder"):
        HFEngine(model, tok, decoder="vllm")
