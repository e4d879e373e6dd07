"""Tiny random models and a tiny tokenizer for tests and offline demos (no network, no hub).

The tokenizer is a byte-level BPE trained in code on a small English corpus, so every string encodes and the
vocabulary stays small (~384). It mirrors SmolLM2-Instruct's conventions: ChatML turns, ``<|im_end|>`` as EOS,
``<|endoftext|>`` as padding. A dedicated ``<|startoftext|>`` BOS exists so BOS handling can be tested
(it is only emitted when ``add_bos_token=True`` or a template writes ``{{ bos_token }}``).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification, PreTrainedTokenizerFast

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
BOS_TOKEN = "<|startoftext|>"
SPECIAL_TOKENS = (PAD_TOKEN, IM_START, IM_END, BOS_TOKEN)  # ids 0, 1, 2, 3
VOCAB_SIZE = 384

# SmolLM2-Instruct's ChatML template (default system prompt dropped to keep sequences short).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Built-in corpus: ordinary English (reviews, instructions, dialogue) so the merges resemble real text.
_CORPUS = """
The movie was wonderful and the actors were great. I loved the story, the music and the ending.
This film is terrible, boring and far too long. The plot made no sense and I would not watch it again.
User: Can you help me write a short poem about the sea? Assistant: Of course. Here is a short poem about the sea.
Human: What is the capital of France? Assistant: The capital of France is Paris.
Please summarize the following text in one sentence. The answer should be clear, helpful and honest.
A good assistant explains its reasoning, admits what it does not know, and refuses harmful requests politely.
The quick brown fox jumps over the lazy dog. She sells sea shells by the sea shore.
It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of foolishness.
I think that this is a very good idea, and we should try it. What do you think about the weather today?
Thank you for your question. There are many ways to solve this problem; the simplest one is to start small.
The reward model scores each response, and the policy learns to prefer responses with higher reward.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 2024. Email me at someone@example.com or call 555-123-4567.
"""


@functools.lru_cache(maxsize=1)
def _trained_tokenizer_json() -> str:
    """Train the BPE once per process; callers rebuild fresh objects from the JSON (no shared mutable state)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: any text encodes
        show_progress=False,
    )
    lines = [line for line in _CORPUS.strip().splitlines() if line]
    tok.train_from_iterator(lines * 4, trainer=trainer)
    return tok.to_str()


def tiny_tokenizer(chat_template: bool | str = True, add_bos_token: bool = False) -> PreTrainedTokenizerFast:
    """A fresh byte-level BPE tokenizer (~384 tokens), built offline.

    chat_template: True -> ChatML (SmolLM2 style); False -> none (exercises the plain fallback format);
    a string -> that Jinja template (e.g. one that writes ``{{ bos_token }}``, to test BOS de-duplication).
    add_bos_token: the tokenizer itself prepends BOS on ``tokenizer(text)`` (Llama style).
    """
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_trained_tokenizer_json()),
        bos_token=BOS_TOKEN,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        additional_special_tokens=[IM_START],
        add_bos_token=add_bos_token,
        add_eos_token=False,
        model_max_length=4096,
    )
    if chat_template is True:
        tok.chat_template = CHATML_TEMPLATE
    elif isinstance(chat_template, str):
        tok.chat_template = chat_template
    return tok


def _llama_config(tokenizer: PreTrainedTokenizerFast, hidden_size: int, num_layers: int, num_heads: int, **extra):
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=2048,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
        **extra,
    )


def tiny_causal_lm(
    tokenizer: PreTrainedTokenizerFast | None = None,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    seed: int = 0,
) -> LlamaForCausalLM:
    """A randomly initialised fp32 Llama with the tokenizer's vocabulary and special ids (deterministic in seed)."""
    tokenizer = tokenizer if tokenizer is not None else tiny_tokenizer()
    config = _llama_config(tokenizer, hidden_size, num_layers, num_heads)
    with torch.random.fork_rng(devices=[]):  # seed the init without disturbing the caller's global RNG
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).float()
    gen = model.generation_config
    gen.pad_token_id, gen.bos_token_id, gen.eos_token_id = (
        tokenizer.pad_token_id,
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
    )
    return model


def tiny_reward_model(
    tokenizer: PreTrainedTokenizerFast | None = None,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    seed: int = 0,
) -> LlamaForSequenceClassification:
    """A random scalar-head Llama (num_labels=1); pad_token_id is set so the score is read at the last real token."""
    tokenizer = tokenizer if tokenizer is not None else tiny_tokenizer()
    config = _llama_config(tokenizer, hidden_size, num_layers, num_heads, num_labels=1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForSequenceClassification(config).float()
    return model


def save_tiny(
    dirpath: str | Path,
    kind: Literal["causal", "reward"] = "causal",
    seed: int = 0,
    chat_template: bool | str = True,
) -> Path:
    """Write a tiny model + tokenizer with save_pretrained, so CLI tests can point at a local directory."""
    path = Path(dirpath)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = tiny_tokenizer(chat_template=chat_template)
    if kind == "causal":
        model = tiny_causal_lm(tokenizer, seed=seed)
    elif kind == "reward":
        model = tiny_reward_model(tokenizer, seed=seed)
    else:
        raise ValueError(f'kind must be "causal" or "reward", got {kind!r}')
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
