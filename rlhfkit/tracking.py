"""Metric sinks behind one call: metrics.jsonl always, TensorBoard / MLflow / W&B when asked for."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any


class MetricsLogger:
    """`log(step, metrics)` writes one JSON line per call and forwards to the configured sinks.

    Only the main process should hold one; the sinks are imported lazily so that none is a hard dependency.
    """

    def __init__(self, out_dir: str | Path, report_to: tuple[str, ...] = (), run_config: dict[str, Any] | None = None):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._sinks: list[Any] = []
        self._file = open(self.out_dir / "metrics.jsonl", "a", buffering=1)  # noqa: SIM115 - closed in close()
        for name in report_to:
            try:
                self._sinks.append(_SINKS[name](self.out_dir, run_config or {}))
            except ImportError as e:
                self.close()
                raise ImportError(
                    f"report_to={name} needs the {_PACKAGES[name]} package: pip install 'rlhfkit[tracking]' ({e})"
                ) from None

    def log(self, step: int, metrics: dict[str, float]) -> None:
        clean = {k: (float(v) if isinstance(v, (int, float)) else v) for k, v in metrics.items()}
        row = {"step": step, "time": round(time.time(), 3), **clean}
        self._file.write(json.dumps(row, allow_nan=True) + "\n")
        numeric = {k: v for k, v in clean.items() if isinstance(v, float) and math.isfinite(v)}
        for sink in self._sinks:
            sink.log(step, numeric)

    def close(self) -> None:
        self._file.close()
        for sink in getattr(self, "_sinks", []):
            sink.close()


class _TensorBoard:
    def __init__(self, out_dir: Path, run_config: dict[str, Any]):
        from torch.utils.tensorboard import SummaryWriter  # optional dependency (pip install 'rlhfkit[tracking]')

        self.writer = SummaryWriter(log_dir=str(out_dir / "tensorboard"))
        self.writer.add_text("config", "```\n" + json.dumps(run_config, indent=2, default=str) + "\n```")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        self.writer.close()


class _MLflow:
    def __init__(self, out_dir: Path, run_config: dict[str, Any]):
        import mlflow  # optional dependency (pip install 'rlhfkit[tracking]')

        self.mlflow = mlflow
        mlflow.start_run(run_name=out_dir.name)
        flat = _flatten(run_config)
        mlflow.log_params({k: str(v)[:250] for k, v in flat.items()})

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.mlflow.log_metrics({k.replace("/", "_"): v for k, v in metrics.items()}, step=step)

    def close(self) -> None:
        self.mlflow.end_run()


class _WandB:
    def __init__(self, out_dir: Path, run_config: dict[str, Any]):
        import wandb  # optional dependency (pip install 'rlhfkit[tracking]')

        self.run = wandb.init(name=out_dir.name, dir=str(out_dir), config=run_config)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def close(self) -> None:
        self.run.finish()


_SINKS = {"tensorboard": _TensorBoard, "mlflow": _MLflow, "wandb": _WandB}
_PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a metrics.jsonl file."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
