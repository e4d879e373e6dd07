"""The offline tiny tokenizer and models used by every trainer test."""

from __future__ import annotations

from pathlib import Path

import torch

from rlhfkit.models.tiny import (
    BOS_TOKEN,
    IM_END,
    IM_START,
    PAD_TOKEN,
    save_tiny,
    tiny_causal_lm,
    tiny_reward_model,
    tiny_tokenizer,
)


def test_tokenizer_specials_and_byte_level_round_trip() -> None:
    tok = tiny_tokenizer()
    assert 300 <= len(tok) <= 512
    assert (tok.pad_token, tok.eos_token, tok.bos_token) == (PAD_TOKEN, IM_END, BOS_TOKEN)
    assert tok.convert_tokens_to_ids([PAD_TOKEN, IM_START, IM_END, BOS_TOKEN]) == [0, 1, 2, 3]
    for text in ["Hello, world!", "héllo wörld 🙂 日本語", "tabs\tand\nnewlines", ""]:
        ids = tok(text)["input_ids"]
        assert tok.decode(ids) == text  # byte-level: any text survives
    assert tok("hello")["input_ids"][0] != tok.bos_token_id  # no BOS unless asked
    assert tiny_tokenizer(add_bos_token=True)("hello")["input_ids"][0] == tok.bos_token_id
    special = tok(f"{IM_START}user\nhi{IM_END}")["input_ids"]
    assert special[0] == 1 and special[-1] == 2  # special tokens are single ids


def test_tokenizer_is_a_fresh_copy_each_time() -> None:
    a = tiny_tokenizer()
    a.chat_template = None
    a.add_tokens(["<extra>"])
    b = tiny_tokenizer()
    assert b.chat_template is not None and len(b) == len(a) - 1


def test_chat_template_is_chatml() -> None:
    tok = tiny_tokenizer()
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    text = tok.apply_chat_template(messages, tokenize=False)
    assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n"
    gen = tok.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert gen == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert not tiny_tokenizer(chat_template=False).chat_template


def test_causal_lm_forward_and_determinism() -> None:
    tok = tiny_tokenizer()
    torch.manual_seed(123)
    before = torch.rand(1)
    model = tiny_causal_lm(tok, seed=0)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(1), before)  # building a model does not touch the global RNG stream
    assert model.dtype == torch.float32 and model.config.vocab_size == len(tok)
    assert (model.config.pad_token_id, model.config.eos_token_id, model.config.bos_token_id) == (0, 2, 3)
    assert model.generation_config.eos_token_id == 2 and model.generation_config.pad_token_id == 0
    ids = torch.tensor([tok("the movie was great")["input_ids"]])
    out = model(input_ids=ids, labels=ids)
    assert out.logits.shape == (1, ids.shape[1], len(tok)) and torch.isfinite(out.loss)
    assert abs(out.loss.item() - torch.log(torch.tensor(float(len(tok)))).item()) < 1.0  # random init ~ uniform
    same = tiny_causal_lm(tok, seed=0)
    other = tiny_causal_lm(tok, seed=1)
    torch.testing.assert_close(same(input_ids=ids).logits, out.logits)
    assert not torch.allclose(other(input_ids=ids).logits, out.logits)
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_generate_respects_the_budget_and_keeps_the_prompt() -> None:
    tok = tiny_tokenizer()
    model = tiny_causal_lm(tok)
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False)
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False)
    assert ids.shape[1] < out.shape[1] <= ids.shape[1] + 5 and torch.equal(out[:, : ids.shape[1]], ids)


def test_reward_model_scores_last_real_token() -> None:
    tok = tiny_tokenizer()
    rm = tiny_reward_model(tok, seed=0).eval()
    assert rm.config.num_labels == 1 and rm.config.pad_token_id == tok.pad_token_id
    a = tok("a good answer")["input_ids"]
    b = tok("bad")["input_ids"]
    padded = torch.tensor([a, b + [tok.pad_token_id] * (len(a) - len(b))])
    mask = (torch.arange(len(a))[None, :] < torch.tensor([[len(a)], [len(b)]])).long()
    with torch.no_grad():
        batch_scores = rm(input_ids=padded, attention_mask=mask).logits
        solo = rm(input_ids=torch.tensor([b])).logits
    assert batch_scores.shape == (2, 1)
    torch.testing.assert_close(batch_scores[1], solo[0], atol=1e-5, rtol=1e-5)  # padding does not change the score


def test_save_tiny_round_trip(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    causal_dir = save_tiny(tmp_path / "policy", kind="causal", seed=0)
    reward_dir = save_tiny(tmp_path / "rm", kind="reward", seed=0)
    tok = AutoTokenizer.from_pretrained(causal_dir)
    assert (
        tok.chat_template
        and tok.eos_token == IM_END
        and tok.pad_token == PAD_TOKEN
        and len(tok) == len(tiny_tokenizer())
    )
    ids = torch.tensor([tok("hello there")["input_ids"]])
    policy = AutoModelForCausalLM.from_pretrained(causal_dir)
    torch.testing.assert_close(policy(input_ids=ids).logits, tiny_causal_lm(seed=0)(input_ids=ids).logits)
    rm = AutoModelForSequenceClassification.from_pretrained(reward_dir)
    assert rm(input_ids=ids).logits.shape == (1, 1)
