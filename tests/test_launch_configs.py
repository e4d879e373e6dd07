"""The shipped accelerate launch configs parse as accelerate's own config files, with the settings rlhfkit relies on,
and the README shows each one's launch on 1 node and on 2 nodes x 8 GPUs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "accelerate"
EXPECTED = {
    "ddp.yaml": DistributedType.MULTI_GPU,
    "fsdp2.yaml": DistributedType.FSDP,
    "deepspeed_zero2.yaml": DistributedType.DEEPSPEED,
    "deepspeed_zero3.yaml": DistributedType.DEEPSPEED,
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_loads_as_accelerate_config(name):
    cfg = load_config_from_file(str(CONFIGS / name))  # accelerate's own parser: unknown keys raise
    assert cfg.distributed_type == EXPECTED[name]
    assert cfg.num_machines == 1 and cfg.num_processes == 8 and cfg.compute_environment.value == "LOCAL_MACHINE"
    raw = yaml.safe_load((CONFIGS / name).read_text())
    if name == "fsdp2.yaml":
        fsdp = raw["fsdp_config"]
        assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
        assert fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    if name.startswith("deepspeed"):
        assert raw["deepspeed_config"]["zero_stage"] == int(name[-6])


def test_readme_shows_each_launch_on_one_and_two_nodes():
    readme = (ROOT / "README.md").read_text()
    for name in EXPECTED:
        lines = [line for line in readme.splitlines() if f"configs/accelerate/{name}" in line]
        assert any("--num_machines 2" in line and "--num_processes 16" in line for line in lines), name
        assert any("--num_machines" not in line and "accelerate launch" in line for line in lines), name
