"""Exceptions the CLI turns into one-line messages; kept free of heavy imports so `rlhfkit --help` stays fast."""


class TrainingDiverged(RuntimeError):
    """Raised when the loss or the gradient is NaN/Inf; the message names the step, the rows and the good checkpoint."""


class QuantizationUnavailableError(RuntimeError):
    """4-bit loading was asked for but bitsandbytes or CUDA is missing; the message says which."""


class CollectiveTimeout(RuntimeError):
    """A collective (all-reduce, all-gather) timed out or lost a peer; the message names the rank and the step."""
