"""Tests that start several processes (torchrun, accelerate launch, mp.spawn) carry the `serial` mark.

`make test` runs the rest on 2 workers (pytest-xdist), then these alone: they start 2 processes each, and the hang
tests measure a 3-second collective timeout, which must not be eaten by a neighbour's load."""

from __future__ import annotations

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
