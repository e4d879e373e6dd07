"""Tests that start several processes (torchrun, accelerate launch, mp.spawn) carry the `serial` mark.

`make test` runs the rest on 2 workers (pytest-xdist), then these alone: they start 2 processes each, and the hang
tests measure a 3-second collective timeout, which must not be eaten by a neighbour's load."""

from __future__ import annotations

from pathlib import Path

import pytest

SERIAL_MODULES = {"test_deepspeed", "test_distributed", "test_distributed_cli", "test_fsdp_online"}
SERIAL_TESTS = {
    "test_ddp_two_processes_with_the_fused_head_equal_one_plain",
    "test_nan_on_one_process_stops_every_process",
    "test_whitening_two_processes_equal_one",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
        if module in SERIAL_MODULES or item.originalname in SERIAL_TESTS:
            item.add_marker(pytest.mark.serial)


@pytest.fixture(scope="session")
def dist_work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/test_distributed_cli.py's tiny model and data, shared with tests/test_deepspeed.py."""
    from tests.test_distributed_cli import make_work

    return make_work(tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="session")
def dist_baselines(dist_work: Path) -> dict[str, Path]:
    """The 1-process runs both modules compare against, each run once per session on first use."""
    from tests.test_distributed_cli import _Baselines

    return _Baselines(dist_work)
