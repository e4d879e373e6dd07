"""SFT, reward-model and DPO-family trainers end to end on tiny random models (Python API and CLI)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhfkit.config import DPOConfig, RMConfig, SFTConfig, load_config
from rlhfkit.data import write_jsonl
from rlhfkit.models import load_causal_lm
from rlhfkit.models.tiny import save_tiny

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tiny") / "causal"
    save_tiny(d, kind="causal")
    return d


def _prefs(path: Path, n: int = 24) -> Path:
    rows = []
    for i in range(n):
        rows.append(
            {
                "prompt": f"Say something about film number {i}.",
                "chosen": f"film {i} was wonderful and great",
                "rejected": f"film {i} was awful and dull",
                "rater": ["r1", "r2"][i % 2],
                "confidence": 0.9,
                "strength": 1.0,
                **({"tie": True} if i % 8 == 7 else {}),
            }
        )
    write_jsonl(path, rows)
    return path


def _sft(path: Path, n: int = 24) -> Path:
    write_jsonl(path, [{"prompt": f"Tell me about film {i}.", "response": f"film {i} is great fun"} for i in range(n)])
    return path


def _weights(d: Path) -> dict[str, torch.Tensor]:
    return load_file(str(d / "model.safetensors"))


def _common(tiny_dir: Path, out: Path, steps: int = 6) -> list[str]:
    return [
        f"model.name_or_path={tiny_dir}",
        f"train.output_dir={out}",
        f"train.max_steps={steps}",
        "train.batch_size=4",
        "train.progress=false",
        "data.max_length=64",
        "data.max_prompt_length=32",
    ]


def test_sft_learns_and_saves(tiny_dir, tmp_path):
    from rlhfkit.trainers.sft import train_sft

    cfg = load_config(
        SFTConfig,
        None,
        _common(tiny_dir, tmp_path / "sft", 12)
        + [f"data.train={_sft(tmp_path / 's.jsonl')}", "train.lr=1e-2", "train.scheduler=constant"],
    )
    summary = train_sft(cfg)
    rows = [json.loads(x) for x in (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert len(losses) == 12 and losses[-1] < losses[0] * 0.8
    assert summary["eval"]["nll"] > 0 and summary["eval_rows"] > 0
    saved = load_causal_lm(str(tmp_path / "sft" / "model"))
    assert not torch.equal(saved.model.embed_tokens.weight, load_causal_lm(str(tiny_dir)).model.embed_tokens.weight)
    assert (tmp_path / "sft" / "config.yaml").exists() and (tmp_path / "sft" / "summary.md").exists()


def test_sft_packing_runs(tiny_dir, tmp_path):
    from rlhfkit.trainers.sft import train_sft

    over = _common(tiny_dir, tmp_path / "p", 2) + [
        f"data.train={_sft(tmp_path / 's.jsonl', 40)}",
        "data.packing=true",
        "data.max_length=256",
    ]
    summary = train_sft(load_config(SFTConfig, None, over))
    assert any("packing" in n for n in summary["notes"])
    assert summary["train_rows"] < 36  # several short examples per packed sequence


def test_reward_model_learns_preferences(tiny_dir, tmp_path):
    from rlhfkit.trainers.rm import train_rm

    over = _common(tiny_dir, tmp_path / "rm", 20) + [
        f"data.train={_prefs(tmp_path / 'p.jsonl', 48)}",
        "train.lr=3e-3",
        "data.eval_fraction=0.25",
    ]
    summary = train_rm(load_config(RMConfig, None, over))
    ev = summary["eval"]
    assert ev["accuracy"] >= 0.9 and ev["auc"] >= 0.9
    assert "accuracy/r1" in ev and "train_heldout_gap" in ev and 0.0 <= ev["ece"] <= 1.0
    # the saved reward model reloads with transformers alone and scores like ours
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    rm = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm" / "model")
    tok = AutoTokenizer.from_pretrained(tmp_path / "rm" / "model")
    good = tok.apply_chat_template(
        [
            {"role": "user", "content": "Say something about film number 3."},
            {"role": "assistant", "content": "film 3 was wonderful and great"},
        ],
        tokenize=True,
        return_tensors="pt",
        return_dict=True,
    )
    bad = tok.apply_chat_template(
        [
            {"role": "user", "content": "Say something about film number 3."},
            {"role": "assistant", "content": "film 3 was awful and dull"},
        ],
        tokenize=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        assert rm(**good).logits.item() > rm(**bad).logits.item()


@pytest.mark.parametrize("loss", ["dpo", "ipo", "robust", "hinge", "simpo", "orpo"])
def test_preference_losses_raise_implicit_reward_accuracy(tiny_dir, tmp_path, loss):
    from rlhfkit.trainers.dpo import train_dpo

    extra = {"ipo": ["loss.beta=0.5"], "robust": ["loss.label_smoothing=0.1"], "simpo": ["loss.beta=2.0"]}.get(loss, [])
    over = (
        _common(tiny_dir, tmp_path / loss, 10)
        + [
            f"data.train={_prefs(tmp_path / 'p.jsonl')}",
            f"loss.name={loss}",
            "train.lr=3e-3",
            "eval_kl_samples=2",
            "eval_kl_tokens=4",
        ]
        + extra
    )
    summary = train_dpo(load_config(DPOConfig, None, over))
    rows = [json.loads(x) for x in (tmp_path / loss / "metrics.jsonl").read_text().splitlines()]
    margins = [r["train/rewards/margin"] for r in rows if "train/rewards/margin" in r]
    assert margins[-1] > margins[0]
    assert summary["final_train"]["rewards/accuracy"] >= 0.75
    assert "kl/kl_per_sequence" in summary["eval"]


def test_dpo_first_step_loss_is_log2_and_live_equals_precompute(tiny_dir, tmp_path):
    from rlhfkit.trainers.dpo import train_dpo

    losses = {}
    for mode in ("precompute", "live"):
        over = _common(tiny_dir, tmp_path / mode, 3) + [
            f"data.train={_prefs(tmp_path / 'p.jsonl')}",
            f"loss.reference={mode}",
            "train.lr=1e-3",
            "eval_kl_samples=0",
        ]
        train_dpo(load_config(DPOConfig, None, over))
        rows = [json.loads(x) for x in (tmp_path / mode / "metrics.jsonl").read_text().splitlines()]
        losses[mode] = [r["train/loss"] for r in rows if "train/loss" in r]
    assert losses["precompute"][0] == pytest.approx(0.693147, abs=1e-4)  # policy == reference at step 1
    assert losses["precompute"] == pytest.approx(losses["live"], abs=1e-5)
    a, b = _weights(tmp_path / "precompute" / "model"), _weights(tmp_path / "live" / "model")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_dpo_group_same_responses_puts_opposite_tags_in_one_step(tiny_dir, tmp_path, monkeypatch):
    """Preference-conditioned rows: each opening's two responses under two tags, the winner swapped between tags. With
    group_same_responses (batch 2) every step holds exactly one opening's two rows, winner swapped; without it the
    shuffle splits some of them up."""
    from rlhfkit.trainers import dpo
    from rlhfkit.trainers.dpo import DPOObjective, train_dpo

    rows = []
    for i in range(12):
        good, bad = f"film {i} was wonderful", f"film {i} was awful"
        rows.append({"prompt": f"[positive] Review film {i}.", "chosen": good, "rejected": bad})
        rows.append({"prompt": f"[negative] Review film {i}.", "chosen": bad, "rejected": good})
    data = tmp_path / "cond.jsonl"
    write_jsonl(data, rows)
    seen: list[list[frozenset]] = []
    collate = DPOObjective.collate

    def spy(self, batch_rows):
        seen.append(dpo.same_response_groups([r.pair for r in batch_rows]))
        return collate(self, batch_rows)

    monkeypatch.setattr(DPOObjective, "collate", spy)
    steps = {}
    for grouped in (True, False):
        seen.clear()
        over = _common(tiny_dir, tmp_path / f"g{grouped}", 12) + [
            f"data.train={data}",
            "data.eval_fraction=0",
            "train.batch_size=2",
            "eval_kl_samples=0",
            f"group_same_responses={str(grouped).lower()}",
        ]
        summary = train_dpo(load_config(DPOConfig, None, over))
        steps[grouped] = [b for b in seen if len(b) == 2][:12]  # the 12 training steps (2 pairs each)
        assert len(steps[grouped]) == 12
        if grouped:
            assert any("24 pairs in 12 groups" in n for n in summary["notes"])
    assert all(len(set(b)) == 1 for b in steps[True])  # one opening per step: both of its tags
    assert len({next(iter(b)) for b in steps[True]}) == 12  # each opening once per epoch
    assert not all(len(set(b)) == 1 for b in steps[False])


def test_dpo_with_lora_uses_disabled_adapters_as_reference(tiny_dir, tmp_path):
    from rlhfkit.trainers.dpo import train_dpo

    over = _common(tiny_dir, tmp_path / "lora", 8) + [
        f"data.train={_prefs(tmp_path / 'p.jsonl')}",
        "model.lora.enabled=true",
        "model.lora.r=4",
        "train.lr=3e-3",
        "eval_kl_samples=2",
        "eval_kl_tokens=4",
    ]
    summary = train_dpo(load_config(DPOConfig, None, over))
    rows = [json.loads(x) for x in (tmp_path / "lora" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["train/loss"] == pytest.approx(0.693147, abs=1e-4)
    assert summary["eval"]["rewards/margin"] > 0 and summary["eval"]["rewards/accuracy"] >= 0.5
    ckpt = next((tmp_path / "lora" / "checkpoints").iterdir())
    names = list(load_file(str(ckpt / "trainable.safetensors")))
    assert names and all("lora_" in n for n in names)  # only adapters are trained and checkpointed


def test_kto_separates_desirable_from_undesirable(tiny_dir, tmp_path):
    from rlhfkit.config import KTOConfig
    from rlhfkit.trainers.kto import train_kto

    rows = []
    for i in range(24):
        rows.append({"prompt": f"Review film {i}.", "response": f"film {i} was wonderful", "label": True})
        rows.append({"prompt": f"Review film {i}.", "response": f"film {i} was awful", "label": False})
    write_jsonl(tmp_path / "u.jsonl", rows)
    over = _common(tiny_dir, tmp_path / "kto", 10) + [
        f"data.train={tmp_path / 'u.jsonl'}",
        "train.lr=3e-3",
        "data.eval_fraction=0.25",
    ]
    summary = train_kto(load_config(KTOConfig, None, over))
    assert summary["eval"]["rewards/margin"] > 0 and summary["eval"]["rewards/auc"] > 0.75
    assert "kl_ref_point" in summary["final_train"]
    assert any("desirable" in n for n in summary["notes"])


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "rlhfkit.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def test_cli_dpo_end_to_end_and_resume(tiny_dir, tmp_path):
    prefs = _prefs(tmp_path / "p.jsonl")
    cfg = tmp_path / "dpo.yaml"
    cfg.write_text(
        f"model: {{name_or_path: {tiny_dir}}}\ndata: {{train: {prefs}, max_length: 64, max_prompt_length: 32}}\ntrain: {{batch_size: 4, max_steps: 4, save_every: 2, progress: false, lr: 1.0e-3, scheduler: constant}}\neval_kl_samples: 0\n"
    )
    full = _cli("dpo", "--config", str(cfg), "-o", str(tmp_path / "full"), cwd=tmp_path)
    assert full.returncode == 0, full.stderr
    assert (tmp_path / "full" / "model" / "model.safetensors").exists()
    summary = json.loads((tmp_path / "full" / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["command"] == "dpo"
    # a run stopped after 2 of 4 steps (constant lr, so the schedule is the same) continues with --resume to the same weights
    part = _cli("dpo", "--config", str(cfg), "-o", str(tmp_path / "part"), "train.max_steps=2", cwd=tmp_path)
    assert part.returncode == 0, part.stderr
    resumed = _cli("dpo", "--config", str(cfg), "-o", str(tmp_path / "part"), "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    a, b = _weights(tmp_path / "full" / "model"), _weights(tmp_path / "part" / "model")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_cli_errors_are_one_line(tiny_dir, tmp_path):
    bad = tmp_path / "prefs.jsonl"
    bad.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "rejected": "c"}\n')
    r = _cli("rm", f"model.name_or_path={tiny_dir}", f"data.train={bad}", "-o", str(tmp_path / "o"), cwd=tmp_path)
    assert r.returncode == 2
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("rlhfkit rm: error: ") and last.endswith('prefs.jsonl:2: field "chosen" is missing')
    r = _cli("dpo", "loss.bta=1", cwd=tmp_path)
    assert r.returncode == 2 and "unknown key 'loss.bta'" in r.stderr and "Traceback" not in r.stderr
    r = _cli("sft", f"model.name_or_path={tmp_path / 'nowhere'}", "data.train=sample:sft", cwd=tmp_path)
    assert r.returncode == 2 and "nowhere" in r.stderr and "Traceback" not in r.stderr
    r = _cli("dpo", "--help", cwd=tmp_path)
    assert r.returncode == 0 and "loss.beta" in r.stdout and "implicit KL" in r.stdout


def test_packed_rows_do_not_attend_across_examples():
    from rlhfkit.data import Encoded, pack_sequences
    from rlhfkit.models.tiny import tiny_causal_lm, tiny_tokenizer
    from rlhfkit.trainers.sft import SFTObjective

    tok = tiny_tokenizer()
    model = tiny_causal_lm(tok).eval()
    g = torch.Generator().manual_seed(0)
    rows = [Encoded(torch.randint(5, 300, (n,), generator=g).tolist(), [0] * 3 + [1] * (n - 3)) for n in (9, 7, 6)]
    obj = SFTObjective(tok.pad_token_id, completion_only=True, aggregation="token-mean")
    packed = pack_sequences(rows, max_length=32)
    assert len(packed) == 1
    with torch.no_grad():
        separate = sum(obj.loss(model, obj.collate([r]))[0] for r in rows)
        together, _ = obj.loss(model, obj.collate(packed))
        assert obj.count(obj.collate(packed)) == sum(obj.count(obj.collate([r])) for r in rows)
    assert together.item() == pytest.approx(separate.item(), rel=1e-5)


def test_kto_needs_two_rows_per_micro_batch(tiny_dir, tmp_path):
    from rlhfkit.config import KTOConfig
    from rlhfkit.trainers.kto import train_kto

    write_jsonl(tmp_path / "u.jsonl", [{"prompt": "p", "response": f"r{i}", "label": i % 2 == 0} for i in range(8)])
    over = _common(tiny_dir, tmp_path / "k", 1) + [f"data.train={tmp_path / 'u.jsonl'}", "train.micro_batch_size=1"]
    with pytest.raises(ValueError, match="micro_batch_size must be >= 2"):
        train_kto(load_config(KTOConfig, None, over))
