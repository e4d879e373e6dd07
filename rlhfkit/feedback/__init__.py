"""Feedback: the data side of the loop (simulated raters, the annotation store and app, agreement, active selection,
the AI judge and constitution). Submodules import lazily so that `rlhfkit --help` does not load torch."""

from typing import Any

__all__ = ["RaterSpec", "pairs_from_samples", "simulate_preferences"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from rlhfkit.feedback import simulated

        return getattr(simulated, name)
    raise AttributeError(f"module 'rlhfkit.feedback' has no attribute {name!r}")
