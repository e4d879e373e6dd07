"""The fused head (log-probs and entropy from hidden states, no (B, T, V) logits) and padding-free forwards, each
against the plain padded computation: values and gradients, on tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rlhfkit.config import DPOConfig, SFTConfig, load_config
from rlhfkit.data import Encoded, collate_pairs, collate_sft, write_jsonl
from rlhfkit.models import apply_lora, completion_logps, head
from rlhfkit.models.head import Packing, lm_head, next_token_stats, sequence_scores
from rlhfkit.models.tiny import save_tiny, tiny_causal_lm, tiny_reward_model, tiny_tokenizer
from rlhfkit.models.value import PolicyWithValue
from rlhfkit.ops import entropy_from_logits, head_token_stats, token_logprobs

ATOL = 1e-5


def _plain_head(h, w, b, scale, cap):
    z = torch.nn.functional.linear(h, w, b) * scale
    return torch.tanh(z / cap) * cap if cap is not None else z


@pytest.mark.parametrize("temperature,scale,cap,bias", [(1.0, 1.0, None, False), (0.7, 0.5, 3.0, True)])
def test_head_token_stats_matches_logits_path(temperature, scale, cap, bias):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(3, 7, 16, generator=g, requires_grad=True)
    w = (torch.randn(50, 16, generator=g) * 0.5).requires_grad_()
    b = torch.randn(50, generator=g).requires_grad_() if bias else None
    labels = torch.randint(0, 50, (3, 7), generator=g)
    labels[0, :2] = -100  # ignored: log-prob 0, no gradient
    weights = torch.randn(2, 3, 7, generator=g)
    lp, ent = head_token_stats(h, w, labels, b, temperature, scale, cap, chunk_size=4)  # 21 rows in 6 chunks
    z = _plain_head(h, w, b, scale, cap)
    lp0, ent0 = token_logprobs(z, labels, temperature), entropy_from_logits(z, temperature=temperature)
    assert torch.allclose(lp, lp0, atol=ATOL) and torch.allclose(ent, ent0, atol=ATOL)
    assert (lp[0, :2] == 0).all()
    params = [h, w] + ([b] if bias else [])
    grads = torch.autograd.grad((weights[0] * lp + weights[1] * ent).sum(), params)
    grads0 = torch.autograd.grad((weights[0] * lp0 + weights[1] * ent0).sum(), params)
    for a, c in zip(grads, grads0):
        assert torch.allclose(a, c, atol=ATOL), (a - c).abs().max()


def _batch(tok, lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = [Encoded(torch.randint(5, 300, (n,), generator=g).tolist(), [0] * 3 + [1] * (n - 3)) for n in lengths]
    return collate_sft(rows, pad_id=tok.pad_token_id)  # right padded, labels -100 on prompt and padding


def _grads(model):
    out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    return out


def _assert_same_grads(a, b, atol=ATOL):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=atol), (k, (a[k] - b[k]).abs().max())


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("tied", [False, True])
def test_next_token_stats_fused_and_padding_free_equal_plain(tied):
    """log-probs, entropy and hidden states at temperature 0.7 with padding and -100 labels; gradients w.r.t. every
    parameter (with tied embeddings the head weight's gradient adds to the embedding's)."""
    tok = tiny_tokenizer()
    model = tiny_causal_lm(tok)
    if tied:
        model.config.tie_word_embeddings = True
        model.lm_head.weight = model.model.embed_tokens.weight
    batch = _batch(tok, (9, 5, 12, 7))
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    n = ids.shape[1] - 1
    results = {}
    for fused, padding_free in [(False, False), (True, False), (False, True), (True, True)]:
        s = next_token_stats(
            model,
            ids,
            mask,
            n,
            labels,
            temperature=0.7,
            entropy=True,
            hidden=True,
            fused=fused,
            padding_free=padding_free,
        )
        valid = mask[:, 1:].bool()  # predicting positions of real tokens
        weights = torch.linspace(-1, 1, valid.numel()).view_as(valid) * valid
        (s.logprobs * weights).sum().add((s.entropy * weights).sum() * 0.3).add(s.hidden[valid].sum() * 1e-2).backward()
        results[fused, padding_free] = (s.logprobs * valid, s.entropy * valid, s.hidden[valid], _grads(model))
    assert lm_head(model) is not None  # the fused calls did not fall back to the model's logits
    plain = results[False, False]
    for key, (lp, ent, hid, grads) in results.items():
        assert torch.allclose(lp, plain[0], atol=ATOL), (key, (lp - plain[0]).abs().max())
        assert torch.allclose(ent, plain[1], atol=ATOL), key
        assert torch.allclose(hid, plain[2], atol=ATOL), key
        _assert_same_grads(grads, plain[3], atol=2e-5)


@pytest.mark.parametrize("one_row", [False, True])
def test_padding_free_rows_do_not_see_each_other(one_row, monkeypatch):
    """Each row's log-probs in the packed forward equal that row alone, whatever its neighbours are (rows packed into
    rows of the batch's width, as for sdpa, or all into one row, as for flash attention)."""
    if one_row:
        monkeypatch.setattr(head, "_pack_width", lambda model, ids: None)
    tok = tiny_tokenizer()
    model = tiny_causal_lm(tok).eval()
    batch = _batch(tok, (8, 11, 6), seed=1)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        packed = next_token_stats(model, ids, mask, ids.shape[1] - 1, padding_free=True).logprobs
        for i in range(3):
            k = int(mask[i].sum())
            alone = next_token_stats(model, ids[i : i + 1, :k], mask[i : i + 1, :k], k - 1, fused=False).logprobs
            assert torch.allclose(packed[i, : k - 1], alone[0], atol=ATOL)
            assert (packed[i, k - 1 :] == 0).all()


def test_packing_handles_left_padding_and_rejects_holes():
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 0, 0]])
    pk = Packing.of(mask)
    assert pk.position_ids.tolist() == [[0, 1, 2, 0, 1]] and pk.starts.tolist() == [True, False, False, True, False]
    assert pk.next_labels(torch.tensor([[9, 1, 2, 3], [4, 5, 9, 9]])).tolist() == [2, 3, -100, 5, -100]
    assert torch.equal(pk.unpack(pk.pack(torch.arange(8).view(2, 4))[0]), torch.tensor([[0, 1, 2, 3], [4, 5, 0, 0]]))
    rows = Packing.of(torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]), width=4)
    assert rows.position_ids.tolist() == [[0, 1, 2, 3], [0, 1, 2, 0], [0, 1, 0, 1]]  # first fit, longest first
    x = torch.arange(1, 17).view(4, 4)
    assert rows.pack(x).tolist() == [[9, 10, 11, 12], [1, 2, 3, 13], [5, 6, 0, 0]]
    assert torch.equal(
        rows.unpack(rows.tokens(rows.pack(x))), x * torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1] * 4, [1, 0, 0, 0]])
    )
    with pytest.raises(ValueError, match="contiguous"):
        Packing.of(torch.tensor([[1, 0, 1]]))


def test_rollout_forward_of_the_policy_fused_and_padding_free():
    """PolicyWithValue on a left-padded prompt + right-padded response rollout: log-probs, entropy, values and their
    gradients equal the plain path's."""
    tok = tiny_tokenizer()
    policy = tiny_causal_lm(tok)
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(5, 300, (3, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding of the prompt (columns 0-5)
    mask[1, 9:] = 0  # right padding after the response's end (columns 6-9)
    mask[2, :1] = 0
    mask[2, 8:] = 0
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    response = ids[:, 6:]
    out = {}
    for fused, padding_free in [(False, False), (True, False), (True, True)]:
        module = PolicyWithValue(policy, "head", fused=fused, padding_free=padding_free)
        torch.nn.init.normal_(module.value_head.weight, generator=torch.Generator().manual_seed(3))
        lp, ent, v = module(ids, mask, position_ids, response, temperature=0.8)
        rmask = mask[:, 6:].float()
        (lp * rmask).sum().add((ent * rmask).sum() * 0.1).add((v * rmask).sum()).backward()
        out[fused, padding_free] = (lp * rmask, ent * rmask, v * rmask, _grads(policy))
    for key, (lp, ent, v, grads) in out.items():
        ref = out[False, False]
        assert torch.allclose(lp, ref[0], atol=ATOL) and torch.allclose(ent, ref[1], atol=ATOL), key
        assert torch.allclose(v, ref[2], atol=ATOL), key
        _assert_same_grads(grads, ref[3], atol=2e-5)


def test_lora_model_uses_the_fused_head():
    tok = tiny_tokenizer()
    model = apply_lora(tiny_causal_lm(tok), r=4, alpha=8, dropout=0.0, target_modules="all-linear")
    assert lm_head(model) is not None  # the adapters sit in the decoder; the head is the plain linear layer
    batch = collate_pairs([([5, 6, 7], [8, 9], [10, 11, 12, 13])], tok.pad_token_id)
    fused, _ = completion_logps(model, batch, fused=True)
    plain, _ = completion_logps(model, batch, fused=False)
    assert torch.allclose(fused, plain, atol=ATOL)


def test_a_head_it_cannot_reproduce_falls_back_to_the_model_logits():
    """A config that claims a soft-cap the model does not apply: the first call notices, warns and uses the model's
    own logits from then on."""
    tok = tiny_tokenizer()
    model = tiny_causal_lm(tok)
    model.config.final_logit_softcapping = 2.0  # Llama ignores it; a fused head honouring it would be wrong
    batch = _batch(tok, (6, 9))
    ids, mask = batch["input_ids"], batch["attention_mask"]
    plain = next_token_stats(model, ids, mask, ids.shape[1] - 1, fused=False).logprobs
    with pytest.warns(UserWarning, match="does not reproduce"):
        first = next_token_stats(model, ids, mask, ids.shape[1] - 1, fused=True).logprobs
    assert torch.allclose(first, plain, atol=ATOL)
    assert lm_head(model) is None  # remembered


def test_reward_scores_padding_free_equal_padded():
    tok = tiny_tokenizer()
    model = tiny_reward_model(tok)
    batch = _batch(tok, (5, 9, 7))
    ids, mask = batch["input_ids"], batch["attention_mask"]
    a = sequence_scores(model, ids, mask)
    a.sum().backward()
    ga = _grads(model)
    b = sequence_scores(model, ids, mask, padding_free=True)
    b.sum().backward()
    assert torch.allclose(a, b, atol=ATOL)
    _assert_same_grads(_grads(model), ga)


# ----------------------------------------------------------------------------------------------------------------------
# trainer steps: the same weights after a few optimizer steps, whichever path computed the log-probs


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("tiny") / "causal", kind="causal")


def _overrides(tiny_dir: Path, out: Path, data: Path, fused: bool, padding_free: bool) -> list[str]:
    return [
        f"model.name_or_path={tiny_dir}",
        f"model.fused_head={str(fused).lower()}",
        f"model.padding_free={str(padding_free).lower()}",
        f"data.train={data}",
        f"train.output_dir={out}",
        "train.max_steps=3",
        "train.batch_size=4",
        "train.lr=1e-3",
        "train.progress=false",
        "data.max_length=64",
        "data.max_prompt_length=32",
    ]


def _final_weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(out / "model" / "model.safetensors"))


def _losses(out: Path) -> list[float]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["train/loss"] for r in rows if "train/loss" in r]


def _assert_same_run(a: Path, b: Path) -> None:
    assert _losses(a) == pytest.approx(_losses(b), abs=1e-5)
    wa, wb = _final_weights(a), _final_weights(b)
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)


def test_sft_steps_equal_fused_plain_and_padding_free(tiny_dir, tmp_path):
    from rlhfkit.trainers.sft import train_sft

    data = tmp_path / "sft.jsonl"
    write_jsonl(
        data, [{"prompt": f"Tell me about film {i}.", "response": "great fun " * (1 + i % 4)} for i in range(12)]
    )
    for fused, pf in [(False, False), (True, False), (True, True)]:
        train_sft(load_config(SFTConfig, None, _overrides(tiny_dir, tmp_path / f"{fused}{pf}", data, fused, pf)))
    _assert_same_run(tmp_path / "FalseFalse", tmp_path / "TrueFalse")
    _assert_same_run(tmp_path / "FalseFalse", tmp_path / "TrueTrue")


def test_dpo_steps_equal_fused_plain_and_padding_free(tiny_dir, tmp_path):
    from rlhfkit.trainers.dpo import train_dpo

    data = tmp_path / "p.jsonl"
    rows = [
        {"prompt": f"Say something about film {i}.", "chosen": "wonderful " * (1 + i % 3), "rejected": f"awful {i}"}
        for i in range(12)
    ]
    write_jsonl(data, rows)
    for fused, pf in [(False, False), (True, False), (True, True)]:
        over = _overrides(tiny_dir, tmp_path / f"{fused}{pf}", data, fused, pf) + ["eval_kl_samples=0"]
        train_dpo(load_config(DPOConfig, None, over))
    assert _losses(tmp_path / "TrueFalse")[0] == pytest.approx(0.693147, abs=1e-5)
    _assert_same_run(tmp_path / "FalseFalse", tmp_path / "TrueFalse")
    _assert_same_run(tmp_path / "FalseFalse", tmp_path / "TrueTrue")


def test_ddp_two_processes_with_the_fused_head_equal_one_plain(tmp_path):
    """The fused head reads the decoder's output through a hook while DDP runs the model's own forward: two
    processes (fused, padding-free) take the same update as one plain process with the same global batch."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]

    def launch(out: Path, nproc: int, batch: int, fused: bool, padding_free: bool) -> dict[str, torch.Tensor]:
        env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--standalone"]
        cmd += ["tests/fused_ddp_worker.py", str(out), str(batch), str(int(fused)), str(int(padding_free))]
        r = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        return torch.load(out / "final.pt", weights_only=True)

    one = launch(tmp_path / "one", 1, 8, False, False)
    two = launch(tmp_path / "two", 2, 4, True, True)
    assert all(torch.allclose(one[k], two[k], atol=1e-5) for k in one)


def test_reward_model_steps_equal_padded_and_padding_free(tmp_path):
    from rlhfkit.config import RMConfig
    from rlhfkit.trainers.rm import train_rm

    tiny = save_tiny(tmp_path / "rm_model", kind="reward")
    data = tmp_path / "p.jsonl"
    rows = [{"prompt": f"Film {i}?", "chosen": "wonderful " * (1 + i % 3), "rejected": f"awful {i}"} for i in range(12)]
    write_jsonl(data, rows)
    for pf in (False, True):
        train_rm(load_config(RMConfig, None, _overrides(tiny, tmp_path / f"rm{pf}", data, True, pf)))
    _assert_same_run(tmp_path / "rmFalse", tmp_path / "rmTrue")
