from __future__ import annotations

import dataclasses

import pytest

from rlhfkit.config import ConfigError, DPOConfig, RMConfig, SFTConfig, describe, field_docs, load_config, to_dict


def test_yaml_then_overrides(tmp_path, monkeypatch):
    monkeypatch.setattr("rlhfkit.config._sink_installed", lambda sink: True)  # parsing only: no sink is opened
    f = tmp_path / "dpo.yaml"
    f.write_text(
        "model:\n  lora: {enabled: true, r: 8}\ntrain:\n  lr: 1.0e-6\n  report_to: [tensorboard]\nloss: {beta: 0.3}\n"
    )
    cfg = load_config(
        DPOConfig, f, ["loss.beta=0.2", "train.batch_size=4", "loss.name=ipo", "train.adam_betas=[0.8,0.9]"]
    )
    assert cfg.model.lora.enabled and cfg.model.lora.r == 8
    assert cfg.train.lr == 1e-6 and cfg.train.batch_size == 4 and cfg.train.report_to == ("tensorboard",)
    assert cfg.loss.beta == 0.2 and cfg.loss.name == "ipo"
    assert cfg.train.adam_betas == (0.8, 0.9)
    assert (
        load_config(DPOConfig, None, ["train.mixed_precision=no"]).train.mixed_precision == "no"
    )  # YAML's `no` is False
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.loss.beta = 1.0  # type: ignore[misc]


def test_stage_defaults_differ_and_round_trip():
    sft, dpo = SFTConfig(), DPOConfig()
    assert sft.train.lr != dpo.train.lr
    tree = to_dict(dpo)
    assert tree["loss"]["name"] == "dpo" and isinstance(tree["train"]["adam_betas"], list)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["loss.bta=0.1"], "unknown key 'loss.bta'"),
        (["train.batch_size=eight"], "key 'train.batch_size' must be an integer"),
        (["model.lora.enabled=maybe"], "key 'model.lora.enabled' must be true or false"),
        (["train.lr=fast"], "key 'train.lr' must be a number"),
        (["train.micro_batch_size=3"], "train.micro_batch_size=3 must divide train.batch_size=8"),
        (["data.truncation=middle"], "data.truncation='middle'"),
        (["train.report_to=[nowhere]"], "train.report_to='nowhere': choose one of tensorboard, mlflow, wandb"),
        (["nokey"], "must look like key.sub=value"),
        (["train.log_every=0"], "train.log_every and keep_checkpoints must be at least 1"),
        (["train.micro_batch_size=-2"], "train.micro_batch_size must be 0"),
        (["loss.name=dpoo"], "loss.name='dpoo': choose one of dpo, ipo"),
        (["loss.reference=maybe"], "loss.reference='maybe'"),
        (["train.mixed_precision=fp8"], "train.mixed_precision='fp8'"),
    ],
)
def test_bad_overrides_name_the_key(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(DPOConfig, None, overrides)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_yaml_names_file_and_line(tmp_path):
    f = tmp_path / "rm.yaml"
    f.write_text("train:\n  lr: 1e-5\n  batch_size: [\n")
    with pytest.raises(ConfigError, match=r"rm.yaml:\d+: invalid YAML"):
        load_config(RMConfig, f)
    g = tmp_path / "rm2.yaml"
    g.write_text("train:\n  epochz: 2\n")
    with pytest.raises(ConfigError, match=r"rm2.yaml: unknown key 'train.epochz'"):
        load_config(RMConfig, g)


def test_help_text_comes_from_field_docstrings():
    from rlhfkit.config import TrainConfig

    docs = field_docs(TrainConfig)
    assert docs["lr"] == "Peak learning rate."
    rows = {k: (d, h) for k, d, h in describe(SFTConfig)}
    assert rows["train.lr"][0] == repr(SFTConfig().train.lr)
    assert "assistant tokens" in rows["loss.completion_only"][1]
    assert all(h for _, _, h in describe(DPOConfig)), "every key has help text"


def test_reward_and_sft_loss_checks():
    with pytest.raises(ConfigError, match="must be > 1 for the Rao-Kupper"):
        load_config(RMConfig, None, ["loss.tie_model=rao-kupper"])
    assert load_config(RMConfig, None, ["loss.tie_model=rao-kupper", "loss.tie_param=1.5"]).loss.tie_param == 1.5
    with pytest.raises(ConfigError, match="turn data.packing off"):
        load_config(SFTConfig, None, ["loss.aggregation=sequence-mean", "data.packing=true"])


def test_config_loss_names_match_the_registry():
    from rlhfkit.config import PREFERENCE_LOSS_NAMES
    from rlhfkit.losses import PREFERENCE_LOSSES

    assert set(PREFERENCE_LOSS_NAMES) == set(PREFERENCE_LOSSES)


def test_partial_section_keeps_the_stage_defaults():
    """Overriding one key of a section must not reset the section's other stage-specific defaults to class defaults."""
    from rlhfkit.config import GRPOConfig, SFTConfig, load_config

    src = ["reward.sources=[{kind: rule, path: length, params: {target: 3}}]"]
    grpo = load_config(GRPOConfig, None, ["algo.num_samples=8", "kl.coef=0.1", *src])
    assert (grpo.algo.name, grpo.algo.num_samples, grpo.algo.critic, grpo.algo.epochs) == ("grpo", 8, "none", 1)
    assert (grpo.kl.coef, grpo.kl.estimator, grpo.kl.placement) == (0.1, "k3", "loss")
    sft = load_config(SFTConfig, None, ["train.batch_size=2", "model.lora.r=4"])
    assert sft.train.lr == 2e-5 and sft.train.batch_size == 2 and sft.model.lora.r == 4 and sft.model.lora.alpha == 32
