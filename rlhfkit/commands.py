"""The table of training commands, the one registry the CLI and the pipeline read.

Adding an online algorithm: a config class in config.py (its name in `AlgoName`), an advantage function in
trainers/online.py's `ADVANTAGES` (or a trainer file of its own), and one row here. Trainers are named by import path,
so that `rlhfkit --help` does not import torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rlhfkit.config import (
    ALIASES,
    DPOConfig,
    GRPOConfig,
    KTOConfig,
    OnlineDPOConfig,
    PPOConfig,
    PRMConfig,
    ReinforceConfig,
    RLOOConfig,
    RMConfig,
    SampleConfig,
    SFTConfig,
)


@dataclass(frozen=True)
class Command:
    config: type
    """The command's config class (its field docstrings are the help)."""
    trainer: str
    """"module:function" taking the config and returning the run's summary."""
    about: str
    """One line for `rlhfkit --help`."""
    optimizer: bool = False
    """Usable as the pipeline's `optimize.algorithm`."""
    online: bool = False
    """Trains from prompts against reward sources (the pipeline hands it the round's reward model)."""


COMMANDS: dict[str, Command] = {
    "sft": Command(SFTConfig, "rlhfkit.trainers.sft:train_sft", "supervised fine-tuning on demonstrations"),
    "rm": Command(RMConfig, "rlhfkit.trainers.rm:train_rm", "train a Bradley-Terry reward model on preferences"),
    "prm": Command(
        PRMConfig,
        "rlhfkit.trainers.prm:train_prm",
        "train a process reward model on labelled reasoning steps (a score at each step's end)",
    ),
    "dpo": Command(
        DPOConfig,
        "rlhfkit.trainers.dpo:train_dpo",
        "DPO / IPO / robust / hinge / SimPO / ORPO on preferences",
        optimizer=True,
    ),
    "kto": Command(KTOConfig, "rlhfkit.trainers.kto:train_kto", "KTO on unpaired desirable / undesirable responses"),
    "ppo": Command(
        PPOConfig,
        "rlhfkit.trainers.online:train_rl",
        "PPO with a critic, GAE and a KL penalty to the reference",
        optimizer=True,
        online=True,
    ),
    "grpo": Command(
        GRPOConfig,
        "rlhfkit.trainers.online:train_rl",
        "GRPO: group-normalized advantages, KL in the loss",
        optimizer=True,
        online=True,
    ),
    "rloo": Command(
        RLOOConfig,
        "rlhfkit.trainers.online:train_rl",
        "RLOO: REINFORCE with a leave-one-out baseline",
        optimizer=True,
        online=True,
    ),
    "reinforce": Command(
        ReinforceConfig,
        "rlhfkit.trainers.online:train_rl",
        "REINFORCE++: whitened return-to-go",
        optimizer=True,
        online=True,
    ),
    "online-dpo": Command(
        OnlineDPOConfig,
        "rlhfkit.trainers.online_dpo:train_online_dpo",
        "online DPO on best/worst samples",
        optimizer=True,
        online=True,
    ),
    "sample": Command(SampleConfig, "rlhfkit.sampling:sample", "sample responses; best-of-N; rejection-sampling data"),
}

OPTIMIZERS: dict[str, Command] = {name: c for name, c in COMMANDS.items() if c.optimizer}
"""The pipeline's `optimize.algorithm` choices."""

COMMAND_ALIASES: dict[str, str] = {alias: name for alias, name in ALIASES.items() if name in COMMANDS}
"""Other spellings accepted for a command name (`rlhfkit reinforce++` runs `rlhfkit reinforce`)."""


def canonical(name: str) -> str:
    """A command or algorithm name as spelled in COMMANDS (aliases normalized)."""
    return ALIASES.get(name, name)


def trainer(name: str) -> Callable[[Any], dict[str, Any]]:
    """The function behind command `name` (imported now: this is where torch gets loaded)."""
    module, fn = COMMANDS[name].trainer.split(":")
    return getattr(importlib.import_module(module), fn)
