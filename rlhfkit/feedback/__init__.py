"""Feedback: the data side of the loop (raters, stores, agreement, selection). Simulated raters live in ``simulated``."""

from rlhfkit.feedback.simulated import RaterSpec, pairs_from_samples, simulate_preferences

__all__ = ["RaterSpec", "pairs_from_samples", "simulate_preferences"]
