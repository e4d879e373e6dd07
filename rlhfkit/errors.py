"""Exceptions the CLI turns into one-line messages; kept free of heavy imports so `rlhfkit --help` stays fast."""


class TrainingDiverged(RuntimeError):
    """Raised when the loss or the gradient is NaN/Inf; the message names the step, the rows and the good checkpoint."""


class QuantizationUnavailableError(RuntimeError):
    """4-bit loading was asked for but bitsandbytes or CUDA is missing; the message says which."""


class TooFewRowsError(ValueError):
    """Fewer training rows than one global batch; `key` names the setting to lower (the pipeline prefixes its stage)."""

    def __init__(self, rows: int, global_batch: int, key: str = "train.batch_size", what: str = "training rows"):
        self.rows, self.global_batch, self.key, self.what = rows, global_batch, key, what
        super().__init__(f"only {rows} {what} for a global batch of {global_batch}: lower {key} or add data")


class CollectiveTimeout(RuntimeError):
    """A collective (all-reduce, all-gather) timed out or lost a peer; the message names the rank and the step."""
