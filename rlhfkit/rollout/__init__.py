"""Rollout engines: sample responses from the current policy into a typed `Rollout`."""

from rlhfkit.rollout.hf import HFEngine, left_pad, right_pad
from rlhfkit.rollout.types import Engine, Rollout, SamplingParams

__all__ = ["Engine", "HFEngine", "Rollout", "SamplingParams", "left_pad", "right_pad"]
