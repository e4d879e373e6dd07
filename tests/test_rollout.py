"""The HF rollout engine: padding layout, EOS handling, bucketing, and sampling/training log-prob agreement."""

from __future__ import annotations

import pytest
import torch

from rlhfkit.models.tiny import tiny_causal_lm, tiny_tokenizer
from rlhfkit.rollout import HFEngine, Rollout, SamplingParams, left_pad, response_logprobs, rollout_forward
from rlhfkit.rollout.hf import _response_mask


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return tiny_causal_lm(tok, seed=1).eval()


def _prompts(tok) -> list[list[int]]:
    texts = ["hello there", "a", "the movie was great and the actors", "what is the capital of France?"]
    return [tok(t)["input_ids"] for t in texts]


def test_left_pad_right_aligns():
    ids, mask = left_pad([[5, 6], [7]], pad_id=0)
    assert ids.tolist() == [[5, 6], [0, 7]] and mask.tolist() == [[1, 1], [0, 1]]


def test_rollout_layout_groups_and_eos(tok, model):
    torch.manual_seed(0)
    eng = HFEngine(model, tok, batch_size=3)
    prompts = _prompts(tok)
    ro = eng.generate(prompts, SamplingParams(max_new_tokens=10, temperature=1.0), num_samples=2)
    B = len(prompts) * 2
    assert ro.response_ids.shape[0] == B and ro.group.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    for i in range(B):  # each row: left-padded prompt, exactly the original ids at the right end
        p = prompts[i // 2]
        assert ro.prompt_ids[i, -len(p) :].tolist() == p and int(ro.prompt_mask[i].sum()) == len(p)
    # the mask covers the response up to and including the first EOS; nothing after it; padding holds pad_id
    eos, pad = tok.eos_token_id, tok.pad_token_id
    for i in range(B):
        n = int(ro.response_mask[i].sum())
        row = ro.response_ids[i].tolist()
        assert ro.response_mask[i, :n].all() and not ro.response_mask[i, n:].any()
        assert all(t == pad for t in row[n:])
        assert bool(ro.finished[i]) == (eos in row[:n])
        if ro.finished[i]:
            assert row[n - 1] == eos and eos not in row[: n - 1]
        else:
            assert n == 10
    assert len(ro.texts) == B and ro.texts[0] == tok.decode(ro.response_ids[0], skip_special_tokens=True)
    # positions restart at each row's first real token (what generate used)
    pos = ro.position_ids[0]
    first = int(ro.prompt_mask[0].argmax())
    assert pos[first] == 0 and pos[first + 1] == 1


def test_eos_stops_generation(tok):
    # a model that always emits EOS: every response is exactly [EOS], finished
    m = tiny_causal_lm(tok, seed=2).eval()
    bias = torch.full((len(tok),), -1e4)
    bias[tok.eos_token_id] = 0.0
    m.lm_head.register_forward_hook(lambda mod, inp, out: out + bias)
    ro = HFEngine(m, tok).generate(_prompts(tok), SamplingParams(max_new_tokens=6))
    assert ro.finished.all() and ro.response_lengths.tolist() == [1.0] * 4
    assert (ro.response_ids[:, 0] == tok.eos_token_id).all()


def test_min_new_tokens_and_greedy_bucketing_invariance(tok, model):
    prompts = _prompts(tok)
    greedy = SamplingParams(max_new_tokens=8, temperature=0.0)
    one = HFEngine(model, tok, batch_size=1).generate(prompts, greedy)
    many = HFEngine(model, tok, batch_size=4).generate(prompts, greedy)
    # greedy decoding does not depend on how prompts are bucketed and left-padded together
    w = min(one.response_ids.shape[1], many.response_ids.shape[1])
    assert torch.equal(one.response_ids[:, :w], many.response_ids[:, :w])
    assert torch.equal(one.response_mask[:, :w], many.response_mask[:, :w])
    ro = HFEngine(model, tok).generate(prompts, SamplingParams(max_new_tokens=6, min_new_tokens=6))
    assert ro.response_lengths.tolist() == [6.0] * 4


@pytest.mark.parametrize("temperature", [0.7, 1.3])
def test_sampling_and_training_logprobs_agree_at_temperature(tok, model, temperature):
    """The distribution generate() sampled from (its processed scores) is the one the trainer's log-probs describe."""
    from transformers import GenerationConfig

    eng = HFEngine(model, tok)
    params = SamplingParams(max_new_tokens=8, temperature=temperature)
    prompts = _prompts(tok)
    ids, mask = left_pad(prompts, tok.pad_token_id)
    cfg: GenerationConfig = eng._generation_config(params)
    torch.manual_seed(3)
    out = model.generate(
        input_ids=ids, attention_mask=mask, generation_config=cfg, output_scores=True, return_dict_in_generate=True
    )
    gen = out.sequences[:, ids.shape[1] :]
    sampling_lp = torch.stack([torch.log_softmax(s.float(), -1) for s in out.scores], 1)  # (B, N, V)
    sampling_lp = sampling_lp.gather(-1, gen.unsqueeze(-1)).squeeze(-1)
    rmask = _response_mask(gen, [tok.eos_token_id])
    ro = Rollout(
        ids,
        mask,
        torch.where(rmask.bool(), gen, tok.pad_token_id),
        rmask,
        rmask.sum(-1) < gen.shape[1],
        torch.arange(len(prompts)),
    )
    t = params.logprob_temperature
    train_lp, _ = rollout_forward(lambda mb: (response_logprobs(model, mb, t), None), ro, 2)
    valid = rmask.bool()
    assert torch.allclose(train_lp[valid], sampling_lp[valid], atol=1e-4)
    # the wrong temperature would not agree: the test can fail
    wrong, _ = rollout_forward(lambda mb: (response_logprobs(model, mb, 1.0), None), ro, 2)
    assert (wrong[valid] - sampling_lp[valid]).abs().max() > 1e-2


def test_rollout_select_and_trim(tok, model):
    torch.manual_seed(0)
    ro = HFEngine(model, tok).generate(_prompts(tok), SamplingParams(max_new_tokens=6), num_samples=2)
    sub = ro.select([1, 3])
    assert sub.texts == [ro.texts[1], ro.texts[3]] and torch.equal(sub.response_ids, ro.response_ids[[1, 3]])
    short = ro.select([2, 3]).trimmed()  # the two rows of the 1-token prompt "a"
    assert short.prompt_ids.shape[1] == int(ro.prompt_mask[2].sum())
    assert short.response_ids.shape[1] == int(ro.response_mask[[2, 3]].sum(-1).max())


@pytest.mark.parametrize("temperature", [0.7, 1.0])
def test_sample_with_kl_takes_the_engines_logprobs_and_only_the_reference_runs_a_forward(tok, model, temperature):
    from rlhfkit.rollout import sample_with_kl
    from rlhfkit.rollout.forward import model_logprobs, sequence_kl

    reference = tiny_causal_lm(tok, seed=2).eval()
    eng = HFEngine(model, tok, batch_size=4)
    params = SamplingParams(max_new_tokens=6, temperature=temperature)
    calls = {"policy": 0, "reference": 0}
    hooks = [
        m.register_forward_pre_hook(lambda *_a, k=k: calls.__setitem__(k, calls[k] + 1))
        for k, m in (("policy", model), ("reference", reference))
    ]
    try:
        torch.manual_seed(5)
        eng.generate(_prompts(tok), params, 2)
        generating = calls["policy"]  # the policy's forwards while sampling alone
        torch.manual_seed(5)
        ro, kl = sample_with_kl(eng, _prompts(tok), params, reference, micro=3, num_samples=2)
        assert calls["policy"] == 2 * generating  # no extra policy forward for the KL
        assert ro.rollout_logprobs is not None and calls["reference"] == 3  # 8 rows in micro-batches of 3
        # against the training forward of both models (the path taken when an engine records no log-probs)
        t = params.logprob_temperature
        expected = sequence_kl(ro, model_logprobs(model, ro, t, 3), model_logprobs(reference, ro, t, 3))
        assert calls["policy"] == 2 * generating + 3
    finally:
        for h in hooks:
            h.remove()
    assert kl.shape == (8,) and torch.allclose(kl, expected, atol=1e-4)
    assert kl.abs().max() > 1e-2  # two different models: the KL is not trivially 0
