"""Feedback: the data side of the loop (simulated raters, the annotation store and app, agreement, active selection,
the AI judge and constitution). Only the simulated raters (numpy) load with the package: `rlhfkit --help` imports it,
and the other submodules pull in torch, sqlalchemy or fastapi."""

from rlhfkit.feedback.simulated import RaterSpec, pairs_from_samples, simulate_dimensions, simulate_preferences

__all__ = ["RaterSpec", "pairs_from_samples", "simulate_dimensions", "simulate_preferences"]
