from __future__ import annotations

import builtins
import math

import pytest

from rlhfkit.tracking import MetricsLogger, read_metrics


def test_jsonl_and_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = MetricsLogger(tmp_path, ("tensorboard",), {"train": {"lr": 1e-5}})
    log.log(1, {"train/loss": 0.7, "train/nan": math.nan})
    log.log(2, {"train/loss": 0.5})
    log.close()
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2] and rows[1]["train/loss"] == 0.5
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [(e.step, round(e.value, 3)) for e in acc.Scalars("train/loss")] == [(1, 0.7), (2, 0.5)]
    assert "train/nan" not in acc.Tags()["scalars"]  # non-finite values stay out of the sinks


def test_missing_sink_package_is_a_clear_error(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_mlflow(name, *args, **kwargs):
        if name == "mlflow":
            raise ImportError("No module named 'mlflow'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_mlflow)
    with pytest.raises(
        ImportError, match=r"report_to=mlflow needs the mlflow package: pip install 'rlhfkit\[tracking\]'"
    ):
        MetricsLogger(tmp_path, ("mlflow",))
