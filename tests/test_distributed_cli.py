"""Data parallelism and FSDP2 through the CLI on 2 CPU processes (gloo): the same losses, gradient norms and final
weights as 1 process with the same global batch; only rank 0 writes; the summary says how the run was distributed;
a run resumed under FSDP2 continues exactly; a hung process becomes an error naming its rank and step."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhfkit.data import write_jsonl
from rlhfkit.models.tiny import save_tiny

ROOT = Path(__file__).resolve().parents[1]
STEPS = 3


def make_work(d: Path) -> Path:
    """The tiny model and the data of every test here (tests/conftest.py's session fixture `dist_work`)."""
    save_tiny(d / "tiny", kind="causal")
    prefs = [
        {
            "prompt": f"Say something about film {i}.",
            "chosen": f"film {i} was wonderful",
            "rejected": f"film {i} was dull",
        }
        for i in range(16)
    ]
    write_jsonl(d / "prefs.jsonl", prefs)
    write_jsonl(
        d / "sft.jsonl", [{"prompt": f"Tell me about film {i}.", "response": f"film {i} is fun"} for i in range(16)]
    )
    return d


def _args(work: Path, command: str, out: Path, batch: int, *more: str) -> list[str]:
    data = work / ("sft.jsonl" if command == "sft" else "prefs.jsonl")
    args = [command, f"model.name_or_path={work / 'tiny'}", f"data.train={data}", "data.eval_fraction=0.25"]
    args += ["data.max_length=48", "data.max_prompt_length=24", f"train.max_steps={STEPS}", f"train.batch_size={batch}"]
    args += ["train.micro_batch_size=1", "train.lr=1e-3", "train.scheduler=constant", "train.progress=false"]
    args += ["-o", str(out), *(["eval_kl_samples=0"] if command == "dpo" else []), *more]
    return args


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(launcher: list[str], args: list[str], ok: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, *launcher, "-m", "rlhfkit.cli", *args]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    if ok:
        assert r.returncode == 0, r.stderr[-4000:]
        assert "Traceback" not in r.stderr, r.stderr[-4000:]
    return r


ONE: list[str] = []
TORCHRUN = ["-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone"]


def _accelerate(*opts: str) -> list[str]:
    return ["-m", "accelerate.commands.launch", "--num_processes", "2", "--main_process_port", str(_free_port()), *opts]


def _train_rows(out: Path) -> list[dict]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "train/loss" in r]


def _assert_same_run(a: Path, b: Path, tol: float) -> None:
    """Losses and gradient norms to `tol`; final weights to 1e-6 except a few elements (Adam divides by sqrt(v): where
    a gradient is as small as its eps, 1e-8, the float32 rounding of the all-reduce moves the weight by up to ~lr/20;
    measured: all elements within 4e-8 for SFT and DPO, one embedding element of 32,960 at 3.5e-5 for the RM)."""
    ra, rb = _train_rows(a), _train_rows(b)
    assert [r["step"] for r in ra] == [r["step"] for r in rb] == list(range(1, STEPS + 1))  # one writer: no duplicates
    for x, y in zip(ra, rb):
        assert abs(x["train/loss"] - y["train/loss"]) <= tol, (x, y)
        assert abs(x["train/grad_norm"] - y["train/grad_norm"]) <= tol, (x, y)
    wa, wb = load_file(str(a / "model" / "model.safetensors")), load_file(str(b / "model" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    diff = torch.cat([(wa[k] - wb[k]).abs().flatten() for k in wa])
    # under a loaded machine the thread count of the products can change their rounding too: at most 0.1% of the
    # elements may move beyond 1e-6, none beyond 1e-3 (losses and gradient norms above stay equal to `tol`)
    assert float(diff.max()) <= 1e-3 and int((diff > 1e-6).sum()) <= max(1, diff.numel() // 1_000)


def _distributed(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())["distributed"]


class _Baselines(dict):
    """1 process, global batch 4, per command: run on first use."""

    def __init__(self, work: Path):
        super().__init__()
        self.work = work

    def __missing__(self, command: str) -> Path:
        out = self.work / f"one-{command}"
        _run(ONE, _args(self.work, command, out, 4))
        assert _distributed(out) == {"processes": 1, "type": "NO"}
        self[command] = out
        return out


# tests/conftest.py holds them per session: tests/test_deepspeed.py compares against the same 1-process runs
@pytest.fixture
def work(dist_work: Path) -> Path:
    return dist_work


@pytest.fixture
def baselines(dist_baselines: dict[str, Path]) -> dict[str, Path]:
    return dist_baselines


def test_cli_data_parallel_two_processes_equal_one(work, baselines):
    """torchrun: 2 processes x 2 rows == 1 process x 4 rows (gradients averaged); rank 1 neither trains alone nor
    dies on the output directory."""
    out = work / "ddp-dpo"
    _run(TORCHRUN, _args(work, "dpo", out, 2))
    assert _distributed(out) == {"processes": 2, "type": "MULTI_CPU"}
    _assert_same_run(baselines["dpo"], out, 1e-6)


def test_cli_accelerate_launch_ddp_config_two_processes_equal_one(work, baselines):
    """accelerate launch with the shipped DDP config (on a machine without CUDA: CPU processes over gloo)."""
    out = work / "acc-sft"
    _run(
        _accelerate("--config_file", str(ROOT / "configs/accelerate/ddp.yaml")),
        _args(work, "sft", out, 2),
    )
    assert _distributed(out) == {"processes": 2, "type": "MULTI_CPU"}
    _assert_same_run(baselines["sft"], out, 1e-6)


@pytest.mark.parametrize("command", ["sft", "dpo", "rm"])
def test_fsdp_two_processes_equal_one(work, baselines, command):
    """FSDP2 (fully_shard per decoder block) on 2 processes: the losses, norms and gathered final weights of 1 process;
    model/ is a plain Hugging Face directory."""
    out = work / f"fsdp-{command}"
    _run(TORCHRUN, _args(work, command, out, 2, "train.fsdp=true"))
    assert _distributed(out) == {"processes": 2, "type": "FSDP", "fsdp_version": 2}
    _assert_same_run(baselines[command], out, 1e-5)
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    auto = AutoModelForSequenceClassification if command == "rm" else AutoModelForCausalLM
    loaded = auto.from_pretrained(out / "model")
    saved = load_file(str(out / "model" / "model.safetensors"))
    ref = dict(loaded.state_dict())
    assert all(torch.equal(ref[k], v) for k, v in saved.items())


def test_fsdp_resume_continues_exactly(work, baselines):
    """FSDP2: 2 steps, then --resume to 3, == 3 steps straight (full state gathered into the checkpoint, resharded)."""
    out = work / "fsdp-resume"
    _run(TORCHRUN, _args(work, "dpo", out, 2, "train.fsdp=true", "train.max_steps=2"))
    assert (out / "checkpoints" / "step-000002" / "trainable.safetensors").exists()
    _run(TORCHRUN, [*_args(work, "dpo", out, 2, "train.fsdp=true"), "--resume"])
    _assert_same_run(work / "fsdp-dpo" if (work / "fsdp-dpo").exists() else baselines["dpo"], out, 1e-5)


def test_fsdp_lora_dpo_two_processes_equal_one_and_adapters_load_with_peft(work):
    """Offline LoRA under FSDP2 (frozen base and adapters in the same units): 2 processes == 1; the saved adapters load
    with peft onto the base model and give the merged model/ exactly."""
    one, two = work / "lora-one", work / "lora-fsdp"
    _run(ONE, _args(work, "dpo", one, 4, "model.lora.enabled=true"))
    _run(TORCHRUN, _args(work, "dpo", two, 2, "model.lora.enabled=true", "train.fsdp=true"))
    assert _distributed(two) == {"processes": 2, "type": "FSDP", "fsdp_version": 2}
    _assert_same_run(one, two, 1e-5)
    a = load_file(str(one / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(two / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(work / "tiny"), two / "adapter")
    merged = AutoModelForCausalLM.from_pretrained(two / "model")
    ids = torch.tensor([[5, 9, 13, 2, 7]])
    with torch.no_grad():
        assert torch.allclose(peft(input_ids=ids).logits, merged(input_ids=ids).logits, atol=1e-5)


def test_accelerate_launch_fsdp2_config(work, baselines):
    """The shipped FSDP2 config through accelerate's launcher (FSDP_* settings from the file)."""
    out = work / "acc-fsdp-sft"
    _run(
        _accelerate("--config_file", str(ROOT / "configs/accelerate/fsdp2.yaml")),
        _args(work, "sft", out, 2),
    )
    assert _distributed(out) == {"processes": 2, "type": "FSDP", "fsdp_version": 2}
    _assert_same_run(baselines["sft"], out, 1e-5)


def test_hung_process_is_an_error_naming_rank_and_step(tmp_path):
    """Rank 1 stalls in its step-2 forward past train.collective_timeout=3 s: rank 0 stops with an error naming rank 0
    and step 2 instead of waiting for ever."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, *TORCHRUN, "tests/hang_worker.py", str(tmp_path / "o")]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "CollectiveTimeout: rank 0, step 2:" in r.stderr, r.stderr[-4000:]
    assert "train.collective_timeout=3s" in r.stderr
