"""Per-domain KL (kl.per_domain): prompt rows' "domain" tag, one controller per domain, shaped rewards, resume, CLI."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlhfkit.commands import trainer
from rlhfkit.config import ConfigError, RLOOConfig, load_config
from rlhfkit.data import DataError, write_jsonl
from rlhfkit.data.schemas import parse_prompt
from rlhfkit.kl import UNTAGGED, DomainKL, check_domains, kl_by_domain, per_token_kl_penalty, shape_rewards
from rlhfkit.models.tiny import save_tiny
from rlhfkit.tracking import read_metrics

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------------------------------
# prompt rows and configuration


def test_prompt_rows_carry_an_optional_domain():
    assert parse_prompt({"prompt": "hi", "domain": "safety"}).domain == "safety"
    assert parse_prompt({"prompt": "hi"}).domain is None
    assert parse_prompt({"prompt": "hi", "domain": "safety"}).to_row() == {"prompt": "hi", "domain": "safety"}
    assert parse_prompt({"messages": [{"role": "user", "content": "x"}], "domain": "a"}).domain == "a"
    with pytest.raises(DataError) as e:
        parse_prompt({"prompt": "hi", "domain": 3}, "p.jsonl:4")
    assert str(e.value) == 'p.jsonl:4: field "domain" must be a string, got number 3'
    with pytest.raises(DataError, match=r'^p.jsonl:2: field "domain" must be a non-empty name'):
        parse_prompt({"prompt": "hi", "domain": " "}, "p.jsonl:2")


def _config(*overrides: str) -> RLOOConfig:
    return load_config(RLOOConfig, None, ["reward.sources=[{kind: sentiment}]", *overrides])


def test_config_checks_per_domain_settings():
    cfg = _config("kl.per_domain={safety: 0.2, chit-chat: 0.02}")
    assert cfg.kl.per_domain == {"safety": 0.2, "chit-chat": 0.02}
    with pytest.raises(ConfigError, match="key 'kl.per_domain.safety' must be a number, got 'high'"):
        _config("kl.per_domain={safety: high}")
    with pytest.raises(ConfigError, match=r"kl.per_domain.safety must be >= 0"):
        _config("kl.per_domain={safety: -1}")
    with pytest.raises(ConfigError, match="kl.per_domain_target.safety: 'safety' has no coefficient in per_domain"):
        _config("kl.controller=adaptive", "kl.per_domain_target={safety: 1}")
    with pytest.raises(ConfigError, match="per_domain_target needs controller=adaptive"):
        _config("kl.per_domain={safety: 0.2}", "kl.per_domain_target={safety: 1}")


def test_check_domains_names_the_mismatch():
    data = ["safety", "chit-chat", None, "safety"]
    assert check_domains({}, data, "p.jsonl") == []
    notes = check_domains({"safety": 0.2}, data, "p.jsonl")
    assert notes == ["domains without a kl.per_domain entry use kl.coef: chit-chat, untagged"]
    with pytest.raises(
        ValueError, match=r"kl.per_domain lists domain\(s\) 'saftey' that no prompt of p.jsonl carries "
    ):
        check_domains({"saftey": 0.2}, data, "p.jsonl")
    with pytest.raises(ValueError, match='no prompt of p.jsonl has a "domain" field'):
        check_domains({"safety": 0.2}, [None, None], "p.jsonl")


# ---------------------------------------------------------------------------------------------------------------------
# coefficients, shaped rewards, controllers


def _two_domains(kind: str = "fixed") -> DomainKL:
    targets = {"safety": 1.0} if kind == "adaptive" else {}
    return DomainKL(
        kind, 0.05, 4.0, 10.0, {"safety": 0.2, "chit-chat": 0.02}, targets, ["safety", "chit-chat", None, "misc"]
    )


def test_shaped_rewards_use_each_sequence_domain_coefficient():
    ctl = _two_domains()
    assert ctl.names == ["chit-chat", "misc", "safety", UNTAGGED]
    index = ctl.index(["safety", "chit-chat", None])
    coef = ctl.coefs(index)
    assert coef.tolist() == pytest.approx([0.2, 0.02, 0.05])
    log_ratio = torch.tensor([[0.5, -0.2, 0.1], [1.0, 0.4, 0.0], [0.3, 0.3, -0.6]])
    mask = torch.tensor([[1.0, 1, 1], [1, 1, 0], [1, 1, 1]])
    ref = torch.zeros(3, 3)
    # the trainer's path: coef (B,) * per-token KL (k1 = log ratio), then the score at the last valid token
    penalty = coef.unsqueeze(1) * per_token_kl_penalty(log_ratio, ref, mask, 1.0)
    rewards = shape_rewards(torch.tensor([1.0, 2.0, -1.0]), penalty, mask)
    expected = torch.tensor(
        [
            [-0.2 * 0.5, 0.2 * 0.2, -0.2 * 0.1 + 1.0],  # safety, beta 0.2
            [-0.02 * 1.0, -0.02 * 0.4 + 2.0, 0.0],  # chit-chat, beta 0.02
            [-0.05 * 0.3, -0.05 * 0.3, 0.05 * 0.6 - 1.0],  # untagged: kl.coef 0.05
        ]
    )
    assert torch.allclose(rewards, expected, atol=1e-7)
    with pytest.raises(ValueError, match="domain 'other' is not among the run's domains"):
        ctl.index(["other"])


def test_adaptive_controllers_move_independently():
    ctl = _two_domains("adaptive")
    index = ctl.index(["safety", "safety", "chit-chat"])
    logs = ctl.update(torch.tensor([3.0, 1.0, 2.0]), index)
    # beta <- beta (1 + clip(KL/target - 1, +-0.2) n / horizon), per domain (Ziegler et al. 2019 §2.2)
    assert logs == pytest.approx(
        {
            "kl/safety": 2.0,
            "kl/chit-chat": 2.0,
            "kl_coef/safety": 0.2,
            "kl_coef/chit-chat": 0.02,
            "kl_coef/misc": 0.05,
            f"kl_coef/{UNTAGGED}": 0.05,
        }
    )
    assert ctl.controller("safety").value == pytest.approx(0.2 * (1 + 0.2 * 2 / 10))  # target 1: KL 2 -> +20% error
    assert ctl.controller("chit-chat").value == pytest.approx(0.02 * (1 - 0.2 * 1 / 10))  # target 4: KL 2 -> -50%
    assert ctl.value == 0.05  # no untagged or misc sequence: the default controller stays
    ctl.update(torch.tensor([5.0]), ctl.index([None]))
    assert ctl.value == pytest.approx(0.05 * (1 + 0.2 * 1 / 10))
    assert ctl.controller("safety").value == pytest.approx(0.208)


def test_domains_sharing_the_default_controller_are_pooled():
    ctl = DomainKL("adaptive", 0.05, 4.0, 10.0, {}, {}, ["a", "b"])
    ctl.update(torch.tensor([1.0, 3.0, 8.0]), ctl.index(["a", "a", "b"]))
    assert ctl.value == pytest.approx(0.05)  # pooled mean 4 = target: no change (a alone would have lowered it)
    untagged = DomainKL("adaptive", 0.05, 4.0, 10.0)  # no tags at all: the one controller of before
    assert not untagged.tagged and untagged.update(torch.tensor([6.0, 6.0]), untagged.index([None, None])) == {}
    assert untagged.value == pytest.approx(0.05 * (1 + 0.2 * 2 / 10))


def test_two_processes_update_like_one():
    kl = torch.tensor([3.0, 1.0, 2.0, 0.5, 7.0, 1.5])
    domains = ["safety", "chit-chat", None, "safety", "misc", "chit-chat"]
    one = _two_domains("adaptive")
    one.update(kl, one.index(domains))
    a, b = _two_domains("adaptive"), _two_domains("adaptive")
    ia, ib = a.index(domains[:3]), b.index(domains[3:])
    shard_a, shard_b = torch.stack(a.domain_means(kl[:3], ia)), torch.stack(b.domain_means(kl[3:], ib))
    a.update(kl[:3], ia, all_reduce=lambda t: t + shard_b)  # what acc.reduce(t, "sum") returns on each rank
    b.update(kl[3:], ib, all_reduce=lambda t: shard_a + t)
    for ctl in (a, b):
        for name in one.names:
            assert ctl.controller(name).value == pytest.approx(one.controller(name).value, rel=1e-12)


def test_state_round_trip_and_missing_domains():
    ctl = _two_domains("adaptive")
    ctl.update(torch.tensor([3.0, 0.1, 9.0]), ctl.index(["safety", "chit-chat", None]))
    state = json.loads(json.dumps(ctl.state_dict()))  # as trainer_state.json holds it
    assert set(state) == {"kl_controller", "kl_domains"} and set(state["kl_domains"]) == {"safety", "chit-chat"}
    fresh = _two_domains("adaptive")
    fresh.load_state_dict(state)
    assert all(fresh.controller(n).value == ctl.controller(n).value for n in ctl.names)
    with pytest.raises(KeyError, match=r"no KL controller for domain\(s\) \['chit-chat'\]"):
        fresh.load_state_dict({"kl_controller": {"value": 0.1}, "kl_domains": {"safety": {"value": 0.3}}})


def test_kl_by_domain_means():
    assert kl_by_domain([1.0, 2.0, 4.0, 0.5], ["b", "a", "b", None]) == {"a": 2.0, "b": 2.5, UNTAGGED: 0.5}


# ---------------------------------------------------------------------------------------------------------------------
# end to end: rlhfkit rloo on a tiny model with domain-tagged prompts


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("domain")
    save_tiny(root / "tiny", "causal")
    rows = [{"prompt": f"Tell me about film {i}.", "domain": "safety" if i % 2 else "chit-chat"} for i in range(24)]
    write_jsonl(root / "prompts.jsonl", rows + [{"prompt": "An untagged prompt."}])
    return root / "tiny", root / "prompts.jsonl"


def _common(setup) -> list[str]:
    model, prompts = setup
    return [
        f"model.name_or_path={model}",
        f"data.train={prompts}",
        "data.eval_fraction=0.2",
        "train.batch_size=4",
        "train.lr=1e-2",
        "train.progress=false",
        "sampling.max_new_tokens=6",
        "reward.sources=[{kind: callable, path: 'tests.toy:letter_reward'}]",
        "kl.controller=adaptive",
        "kl.coef=0.05",
        "kl.target=100",
        "kl.horizon=16",
        "kl.per_domain={safety: 0.5, chit-chat: 0.01}",
        "kl.per_domain_target={safety: 0.0001}",
        "eval_samples=8",
    ]


def _run(setup, out: Path, *extra: str) -> None:
    cfg = load_config(RLOOConfig, None, [*_common(setup), f"train.output_dir={out}", *extra])
    with contextlib.redirect_stdout(io.StringIO()):
        trainer("rloo")(cfg)


def test_rloo_per_domain_kl_and_cli_resume(setup, tmp_path):
    _run(setup, tmp_path / "full", "train.max_steps=4")
    rows = [r for r in read_metrics(tmp_path / "full" / "metrics.jsonl") if "train/score" in r]
    assert len(rows) == 4
    safety = [r["train/kl_coef/safety"] for r in rows]
    chat = [r["train/kl_coef/chit-chat"] for r in rows]
    assert safety[0] == 0.5 and chat[0] == 0.01
    # each beta moves with ITS domain's KL only: up when above its target (1e-4 for safety, 100 for the rest), down
    # when below, unchanged in a batch without that domain
    for name, target in (("safety", 1e-4), ("chit-chat", 100.0), (UNTAGGED, 100.0)):
        for r0, r1 in zip(rows, rows[1:]):
            c0, c1, kl = r0[f"train/kl_coef/{name}"], r1[f"train/kl_coef/{name}"], r0.get(f"train/kl/{name}")
            assert (c1 == c0) if kl is None else (c1 > c0) == (kl > target), (name, c0, c1, kl)
    assert chat[-1] < 0.01 and len(set(safety)) > 1
    summary = json.loads((tmp_path / "full" / "summary.json").read_text())
    assert {"kl/safety", "kl/chit-chat"} <= set(summary["eval"]) and "kl_coef/safety" in summary["final_train"]
    assert any("use kl.coef: untagged" in n for n in summary["notes"])

    _run(setup, tmp_path / "part", "train.max_steps=2", "train.save_every=1")
    state = json.loads((tmp_path / "part" / "checkpoints" / "step-000002" / "trainer_state.json").read_text())
    assert state["kl_domains"]["safety"]["value"] == pytest.approx(safety[2])
    assert state["kl_domains"]["chit-chat"]["value"] == pytest.approx(chat[2])
    args = [*_common(setup), "train.max_steps=4", "--resume", "-o", str(tmp_path / "part")]
    resumed = subprocess.run(
        [sys.executable, "-m", "rlhfkit.cli", "rloo", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    again = [r for r in read_metrics(tmp_path / "part" / "metrics.jsonl") if "train/score" in r]
    assert [r["train/kl_coef/safety"] for r in again] == pytest.approx(safety)
    assert [r["train/kl_coef/chit-chat"] for r in again] == pytest.approx(chat)


def test_unknown_domain_is_refused_before_any_model(setup, tmp_path):
    args = [a for a in _common(setup) if not a.startswith(("kl.per_domain", "model."))]
    cfg = load_config(
        RLOOConfig,
        None,
        [*args, "model.name_or_path=/nonexistent", "kl.per_domain={saftey: 0.2}", f"train.output_dir={tmp_path}"],
    )
    with pytest.raises(ValueError) as e:
        trainer("rloo")(cfg)
    message = str(e.value)
    assert "\n" not in message and "kl.per_domain lists domain(s) 'saftey' that no prompt of" in message
    assert message.endswith("carries (its domains: chit-chat, safety)")
