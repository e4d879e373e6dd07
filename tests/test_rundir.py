"""Output directories through the CLI on a tiny model: a run is never overwritten or mixed, a new run gets its own
directory, `--resume` reads the saved config and checks what is given again, a crashed run reads `interrupted`."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from rlhfkit.config import SFTConfig, load_config
from rlhfkit.data import write_jsonl
from rlhfkit.models.tiny import save_tiny
from rlhfkit.rundir import check_run_dir, owner, owner_alive

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("rundir")
    save_tiny(d / "tiny", "causal")
    write_jsonl(
        d / "sft.jsonl", [{"prompt": f"Tell me about film {i}.", "response": f"film {i} is fun"} for i in range(24)]
    )
    write_jsonl(
        d / "prefs.jsonl",
        [
            {"prompt": f"About film {i}.", "chosen": f"film {i} was great", "rejected": f"film {i} was dull"}
            for i in range(24)
        ],
    )
    return d


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "rlhfkit.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def _small(files: Path, data: str, steps: int = 2) -> list[str]:
    return [
        f"model.name_or_path={files / 'tiny'}",
        f"data.train={files / data}",
        f"train.max_steps={steps}",
        "train.batch_size=4",
        "train.progress=false",
        "data.max_length=64",
        "data.max_prompt_length=32",
    ]


def _snapshot(d: Path) -> dict[str, str]:
    """Every file of a directory with its content hash and modification time."""
    return {
        str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() + f"@{p.stat().st_mtime_ns}"
        for p in sorted(d.rglob("*"))
        if p.is_file()
    }


def _error(r: subprocess.CompletedProcess, command: str) -> str:
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"rlhfkit {command}: error: "), r.stderr[-2000:]
    assert "Loading weights" not in r.stderr and "Traceback" not in r.stderr  # refused before any model loads
    return lines[0]


def test_a_refused_run_touches_nothing_of_the_run_it_found(files, tmp_path):
    run = tmp_path / "runs" / "sft"
    r = _cli("sft", *_small(files, "sft.jsonl"), "-o", str(run), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    before = _snapshot(run)
    assert {"config.yaml", "summary.json", "model/model.safetensors"} <= set(before)

    # another command without --resume, then as the old error advised, with --resume; the same command again
    line = _error(_cli("dpo", *_small(files, "prefs.jsonl"), "-o", str(run), cwd=tmp_path), "dpo")
    assert "rlhfkit sft" in line and "another output directory" in line
    line = _error(_cli("dpo", "-o", str(run), "--resume", cwd=tmp_path), "dpo")
    assert "`rlhfkit sft`" in line and "not `rlhfkit dpo`" in line and f"rlhfkit sft -o {run} --resume" in line
    line = _error(_cli("rm", *_small(files, "prefs.jsonl"), "-o", str(run), "--resume", cwd=tmp_path), "rm")
    assert "`rlhfkit sft`" in line and "`rlhfkit rm`" in line
    line = _error(_cli("sft", *_small(files, "sft.jsonl"), "-o", str(run), cwd=tmp_path), "sft")
    assert "holds an earlier run" in line and "--resume" in line
    line = _error(_cli("run", "-o", str(run), cwd=tmp_path), "run")  # nor does a pipeline move in
    assert f"{run} holds files of something else" in line
    assert _snapshot(run) == before  # not one byte (nor one timestamp) changed
    assert yaml.safe_load((run / "config.yaml").read_text())["command"] == "sft"


def test_python_api_refuses_before_writing(files, tmp_path):
    from rlhfkit.trainers.common import write_run_files

    out = tmp_path / "run"
    cfg = load_config(SFTConfig, None, [*_small(files, "sft.jsonl"), f"train.output_dir={out}"])
    write_run_files(out, cfg, "sft")
    write_run_files(out, cfg, "sft")  # a run that stopped before its first step (config.yaml alone) starts again
    (out / "metrics.jsonl").write_text("")  # ... and so does one that stopped before logging a step
    write_run_files(out, cfg, "sft")
    (out / "config.yaml").write_text((out / "config.yaml").read_text().replace("command: sft", "command: rm"))
    saved = (out / "config.yaml").read_text()
    with pytest.raises(ValueError, match="holds a run of `rlhfkit rm`"):
        write_run_files(out, cfg, "sft")
    assert (out / "config.yaml").read_text() == saved
    with pytest.raises(ValueError, match="train.output_dir is empty"):
        check_run_dir(Path(""), load_config(SFTConfig, None, []), "sft")


def test_new_runs_get_their_own_directory_printed_at_the_start(files, tmp_path):
    outs = []
    for command, data in (("sft", "sft.jsonl"), ("sft", "sft.jsonl"), ("dpo", "prefs.jsonl")):
        extra = ["eval_kl_samples=0"] if command == "dpo" else []
        r = _cli(command, *_small(files, data, steps=1), *extra, cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-2000:]
        first = r.stdout.splitlines()[0]
        assert first.startswith(f"rlhfkit {command}: new run in outputs/{command}-"), first
        out = tmp_path / first.split(" in ", 1)[1]
        assert yaml.safe_load((out / "config.yaml").read_text())["command"] == command
        assert json.loads((out / "summary.json").read_text())["command"] == command
        outs.append(out)
    assert len(set(outs)) == 3


def test_a_runs_saved_config_reruns_it_with_the_same_command_only(files, tmp_path):
    first = tmp_path / "first"
    r = _cli("sft", *_small(files, "sft.jsonl"), "train.lr=1e-3", "-o", str(first), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    saved = first / "config.yaml"
    assert yaml.safe_load(saved.read_text())["command"] == "sft"
    # the saved config as --config (its `command:` line included) reruns the run: same weights
    r = _cli("sft", "-c", str(saved), "-o", "again", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = load_file(str(first / "model/model.safetensors")), load_file(str(tmp_path / "again/model/model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # and varies it: an override on top of the saved config changes what it says
    cfg = load_config(SFTConfig, saved, ["train.lr=5e-4"], command="sft")
    assert cfg.train.lr == 5e-4 and cfg.train.max_steps == 2
    # another command is refused by name, before any model loads
    line = _error(_cli("dpo", "-c", str(saved), "-o", "other", cwd=tmp_path), "dpo")
    assert "the saved config of a `rlhfkit sft` run, not of `rlhfkit dpo`" in line and str(saved) in line, line
    assert not (tmp_path / "other").exists()


def test_resume_as_written_reads_the_saved_config_and_checks_what_is_given_again(files, tmp_path):
    common = [*_small(files, "prefs.jsonl", steps=4), "train.save_every=2", "train.lr=1e-3", "train.scheduler=constant"]
    common.append("eval_kl_samples=0")
    full = tmp_path / "full"
    r = _cli("dpo", *common, "-o", str(full), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    # a run killed after its step-2 checkpoint: what it would have left
    cut = tmp_path / "runs" / "dpo"
    shutil.copytree(full, cut)
    for gone in ("model", "checkpoints/step-000004", "summary.json", "summary.md"):
        shutil.rmtree(cut / gone) if (cut / gone).is_dir() else (cut / gone).unlink()
    rows = [json.loads(x) for x in (cut / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 4  # metrics of steps 3-4 are there too (rerun steps are dropped on resume)

    # what would change the run is refused by name, before any model loads
    for change, key in (
        ("loss.beta=0.5", "loss.beta: 0.1 -> 0.5"),
        (f"data.train={files / 'sft.jsonl'}", "data.train"),
        (f"model.name_or_path={tmp_path}", "model.name_or_path"),
        ("train.lr=0.5", "train.lr"),
    ):
        line = _error(_cli("dpo", "-o", "runs/dpo", "--resume", change, cwd=tmp_path), "dpo")
        assert f"cannot resume runs/dpo: {key}" in line and "runs/dpo/config.yaml" in line, line

    # the README's line, as written
    r = _cli("dpo", "-o", "runs/dpo", "--resume", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resuming from runs/dpo/checkpoints/step-000002 (step 2/4)" in r.stdout + r.stderr
    a, b = load_file(str(full / "model/model.safetensors")), load_file(str(cut / "model/model.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)  # exactly the uninterrupted run
    steps = [json.loads(x)["step"] for x in (cut / "metrics.jsonl").read_text().splitlines() if "train/loss" in x]
    assert steps == [1, 2, 3, 4]

    # a finished run has nothing to resume (said, exit 0, nothing touched); training it longer is allowed, and said
    stamp = (cut / "model/model.safetensors").stat().st_mtime_ns
    r = _cli("dpo", "-o", "runs/dpo", "--resume", cwd=tmp_path)
    assert r.returncode == 0 and "finished run" in r.stdout and "train.max_steps" in r.stdout, r.stderr[-2000:]
    assert (cut / "model/model.safetensors").stat().st_mtime_ns == stamp
    r = _cli("dpo", "-o", "runs/dpo", "--resume", "train.max_steps=5", "train.log_every=2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resuming with train.max_steps=5 (the run was saved with 4)" in r.stdout
    assert "resuming with train.log_every=2 (the run was saved with 1)" in r.stdout
    assert json.loads((cut / "summary.json").read_text())["steps"] == 5
    assert yaml.safe_load((cut / "config.yaml").read_text())["train"]["max_steps"] == 5

    # --resume needs a run to resume
    line = _error(_cli("dpo", "-o", "runs/nothing", "--resume", cwd=tmp_path), "dpo")
    assert "runs/nothing holds no run to resume" in line
    assert _error(_cli("dpo", "--resume", cwd=tmp_path), "dpo").endswith("--resume needs the run's directory: -o DIR")


_KILLED_STAGE = """
import os, signal, sys
from pathlib import Path
from rlhfkit.pipeline.run import run_pipeline
from rlhfkit.pipeline.config import load_pipeline
from rlhfkit.pipeline import stages

def killed(self):  # the first stage of the run dies mid-way (SIGKILL: no handler, no cleanup)
    def run(d, resume):
        os.kill(os.getpid(), signal.SIGKILL)
    return stages.Stage(0, "prompts", {}, {}, ("train.jsonl",), run)

stages.Pipeline.prompts_stage = killed
run_pipeline(load_pipeline(None, [f"output={sys.argv[1]}"]), report=False)
"""


def test_status_shows_interrupted_when_the_owner_process_is_gone(tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", _KILLED_STAGE, str(run)], env=env, capture_output=True, timeout=120)
    assert r.returncode == -9, r.stderr
    record = json.loads((run / "round-0/prompts/stage.json").read_text())
    assert record["status"] == "running" and record["owner"]["pid"] != os.getpid()
    r = _cli("status", str(run), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    stage = next(line for line in r.stdout.splitlines() if line.startswith("round-0/prompts"))
    assert stage.split()[1] == "interrupted"
    assert "run: interrupted," in r.stdout
    # a live owner is running; an unknown one (older record, another host) is left as recorded
    assert owner_alive(owner()) is True
    assert owner_alive({**owner(), "pid_started": -1}) is False  # the pid was reused by another process
    assert owner_alive(None) is None and owner_alive({**owner(), "host": "elsewhere"}) is None


def test_status_of_one_command_run_and_no_second_process_while_it_trains(files, tmp_path):
    import signal
    import time

    run = tmp_path / "sft"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "rlhfkit.cli", "sft", *_small(files, "sft.jsonl", steps=400), "train.save_every=1"]
    proc = subprocess.Popen([*cmd, "-o", str(run)], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL)
    try:
        t0 = time.monotonic()
        while not list((run / "checkpoints").glob("step-*[0-9]")):
            assert proc.poll() is None and time.monotonic() - t0 < 240, "the run ended early"
            time.sleep(0.1)
        r = _cli("status", str(run), cwd=tmp_path)
        assert r.returncode == 0 and f"rlhfkit sft run in {run}: running" in r.stdout, r.stdout + r.stderr
        assert f"process {proc.pid}" in r.stdout
        # a second process resuming the same directory would mix two runs
        line = _error(_cli("sft", "-o", str(run), "--resume", cwd=tmp_path), "sft")
        assert f"{run} is being trained by process {proc.pid}" in line
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    r = _cli("status", str(run), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"rlhfkit sft run in {run}: interrupted; newest checkpoint step-" in r.stdout
    assert f"of 400 steps; `rlhfkit sft -o {run} --resume` continues it" in r.stdout
    step = max(int(p.name.split("-")[1]) for p in (run / "checkpoints").glob("step-*[0-9]"))
    if step > 1:  # a run cannot be cut shorter than it has trained
        line = _error(_cli("sft", "-o", str(run), "--resume", f"train.max_steps={step - 1}", cwd=tmp_path), "sft")
        assert f"it has trained {step} steps already" in line
    r = _cli("sft", "-o", str(run), "--resume", f"train.max_steps={step + 1}", cwd=tmp_path)  # the process is gone
    assert r.returncode == 0, r.stderr[-2000:]
    r = _cli("status", str(run), cwd=tmp_path)
    assert f"rlhfkit sft run in {run}: done; {step + 1} steps in" in r.stdout, r.stdout
