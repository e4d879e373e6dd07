"""The content-hash stage runner: each stage records its settings, input and output hashes, seed, versions, git commit
and timings in `stage.json`; a stage whose key matches a finished record is skipped, an interrupted one restarts
(`--resume`: training stages continue from their checkpoint)."""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import os
import platform
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhfkit.pipeline.layout import RunLayout
from rlhfkit.rundir import owner


def hash_path(path: str | Path) -> str:
    """sha256 of a file, or of a directory's files (relative names + contents, resumable checkpoints excluded)."""
    p = Path(path)
    h = hashlib.sha256()
    if p.is_file():
        files = [p]
    else:
        files = sorted(f for f in p.rglob("*") if f.is_file() and "/checkpoints/" not in f.as_posix())
    for f in files:
        if p.is_dir():
            h.update(f.relative_to(p).as_posix().encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("rlhfkit", "torch", "transformers", "accelerate", "peft"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def _git_commit() -> str | None:
    try:
        r = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() or None if r.returncode == 0 else None


def _write_json(path: Path, data: Any) -> None:
    """Atomic: a reader (or a killed run) sees the old file or the new one, never half of one."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def stage_seed(seed: int, round_: int, stage: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}/{round_}/{stage}".encode()).digest()[:4], "little") % (2**31)


@dataclass
class Stage:
    """One node of the graph: `run(dir)` writes `outputs` (names relative to dir) from `inputs` (paths)."""

    round: int
    name: str
    settings: dict[str, Any]
    inputs: dict[str, Path]
    outputs: tuple[str, ...]
    run: Callable[[Path, bool], dict[str, Any]]
    """run(stage_dir, resume) -> metrics for the record."""

    @property
    def key(self) -> str:
        return f"round-{self.round}/{self.name}"


class Runner:
    """Runs stages in order, skipping those whose record matches and resuming the interrupted one."""

    def __init__(self, run_dir: Path, resume: bool, force: bool, log: Callable[[str], None] = print) -> None:
        self.dir, self.resume, self.force, self.log = run_dir, resume, force, log
        self.layout = RunLayout(run_dir)
        self.hashes: dict[Path, str] = {}  # output path -> content hash, from the records of finished stages

    def _input_hashes(self, stage: Stage) -> dict[str, str]:
        out = {}
        for name, p in stage.inputs.items():
            p = Path(p)
            out[name] = self.hashes.get(p.resolve()) or (hash_path(p) if p.exists() else "missing")
        return out

    def __call__(self, stage: Stage) -> dict[str, Any]:
        sdir = self.layout.stage_dir(stage.round, stage.name)
        record_path = self.layout.record(stage.round, stage.name)
        inputs = self._input_hashes(stage)
        fingerprint = hashlib.sha256(
            json.dumps({"settings": stage.settings, "inputs": inputs}, sort_keys=True, default=str).encode()
        ).hexdigest()
        old = json.loads(record_path.read_text()) if record_path.exists() else None
        if (
            old is not None
            and not self.force
            and old.get("status") == "done"
            and old.get("fingerprint") == fingerprint
            and all((sdir / o).exists() for o in stage.outputs)
        ):
            for o, h in old.get("outputs", {}).items():
                self.hashes[(sdir / o).resolve()] = h
            self.log(f"[{stage.key}] unchanged: skipped")
            return old
        interrupted = old is not None and old.get("status") == "running" and old.get("fingerprint") == fingerprint
        resume = self.resume and interrupted
        if sdir.exists() and not resume:
            shutil.rmtree(sdir)  # stale or changed: start this stage afresh
        sdir.mkdir(parents=True, exist_ok=True)
        record = {
            "stage": stage.name,
            "round": stage.round,
            "status": "running",
            "fingerprint": fingerprint,
            "settings": stage.settings,
            "inputs": inputs,
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "resumed": resume,
            "versions": _versions(),
            "git_commit": _git_commit(),
            "owner": owner(),  # a `running` record whose process is gone reads `interrupted` (shown_status)
        }
        _write_json(record_path, record)
        self.log(f"[{stage.key}] {'resuming' if resume else 'running'}")
        t0 = time.perf_counter()
        metrics = stage.run(sdir, resume)
        outputs = {o: hash_path(sdir / o) for o in stage.outputs}
        for o, h in outputs.items():
            self.hashes[(sdir / o).resolve()] = h
        record.update(
            status="done",
            outputs=outputs,
            metrics=_jsonable(metrics),
            finished=time.strftime("%Y-%m-%d %H:%M:%S"),
            seconds=round(time.perf_counter() - t0, 2),
        )
        _write_json(record_path, record)
        self.log(f"[{stage.key}] done in {record['seconds']:.1f} s")
        return record


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and x != x:
        return None
    return x if isinstance(x, (str, int, float, bool)) or x is None else str(x)


def stage_records(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every stage.json under a run directory, in run order (round, then stage order)."""
    return RunLayout(Path(run_dir)).records()
