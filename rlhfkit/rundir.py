"""A training run's output directory: which run may write into it, and which process owns a run.

A run directory holds `config.yaml` (the resolved config and the command that made it), `checkpoints/`,
`metrics.jsonl`, `model/` and the summary. `check_run_dir` is called before anything is written or loaded, and refuses
- a new run into a directory that holds an earlier one (pass --resume to continue it, or choose another directory),
- any run (new or resumed) into a directory made by another command,
- a resume whose settings differ from the saved ones, except the few that cannot change what is trained (logging,
  checkpoint cadence) and the run's length (`train.max_steps`, `train.epochs`), which are accepted and said.

`owner()` names the process that writes a run (pipeline stages record it); `owner_alive()` tells a crashed run
(`interrupted`) from one still going.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from rlhfkit.config import ALIASES, ConfigError, from_dict, to_dict

CONFIG_FILE = "config.yaml"
RUN_FILES = ("checkpoints", "metrics.jsonl", "model", "summary.json")
"""What a run leaves once it has trained (an empty metrics.jsonl aside): any of them means the directory holds a run
that a new one would overwrite. A config.yaml alone is a run of the same command that stopped before its first step
(a bad data row, say): starting again there loses nothing."""

SAFE_ON_RESUME = (
    "train.progress",
    "train.log_every",
    "train.report_to",
    "train.save_every",
    "train.keep_checkpoints",
)
"""Settings a resumed run may change: where and how often it reports and checkpoints, nothing it computes."""
LENGTH_KEYS = ("train.max_steps", "train.epochs")
"""A resumed run may train longer (or stop sooner): accepted, and said."""
_WHERE = ("train.resume", "train.output_dir")  # how the run is found, not what it is


@dataclass(frozen=True)
class SavedRun:
    command: str
    """The command that made the run (`rlhfkit <command>`)."""
    config: dict[str, Any]
    """Its resolved config as saved, without the command."""


def default_output_dir(command: str, root: str = "outputs") -> str:
    """A new directory for one run of `command`: outputs/<command>-<date>-<time>[-N]."""
    base = f"{root}/{command}-{time.strftime('%Y%m%d-%H%M%S')}"
    out, n = base, 1
    while Path(out).exists():
        n += 1
        out = f"{base}-{n}"
    return out


def saved_run(out_dir: str | Path) -> SavedRun | None:
    """The run saved in `out_dir` (its config.yaml), or None when there is none."""
    path = Path(out_dir) / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: unreadable run config ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict) or not isinstance(data.get("command"), str):
        raise ConfigError(f"{path}: not a run config (no `command:`); choose another output directory")
    command = data.pop("command")
    return SavedRun(command, data)


def check_run_dir(out_dir: str | Path, cfg: Any, command: str) -> list[str]:
    """Refuse (ConfigError, one line) a run that would overwrite or mix with the one in `out_dir`; see the module
    docstring. Returns what a resume changes that is allowed, one line each, for the user to read. Under a launcher
    (torchrun, accelerate launch) only the first process checks: the others would find its files."""
    if not first_process():
        return []
    if str(cfg.train.output_dir) == "":
        raise ConfigError("train.output_dir is empty: say where the run goes (-o DIR)")
    out = Path(out_dir)
    saved = saved_run(out)
    if saved is not None and ALIASES.get(saved.command, saved.command) != command:
        raise ConfigError(
            f"{out} holds a run of `rlhfkit {saved.command}`: `rlhfkit {command}` will not "
            f"{'resume' if cfg.train.resume else 'write into'} it; choose another output directory"
        )
    if not cfg.train.resume:
        found = [name for name in RUN_FILES if (out / name).exists() and not _empty_file(out / name)]
        if found:
            raise ConfigError(
                f"{out} holds an earlier run ({', '.join(found)}): pass --resume to continue it, "
                "or choose another output directory"
            )
        return []
    return [] if saved is None else _resume_changes(out, saved, cfg)


def _empty_file(path: Path) -> bool:
    return path.is_file() and path.stat().st_size == 0


def first_process() -> bool:
    """True in the first process of a launched job (RANK=0), and in a process that was not launched."""
    return os.environ.get("RANK", "0") == "0"


def _resume_changes(out: Path, saved: SavedRun, cfg: Any) -> list[str]:
    where = str(out / CONFIG_FILE)
    try:
        before = _flat(to_dict(from_dict(type(cfg), saved.config, where=where)))
    except ConfigError as e:
        raise ConfigError(f"cannot resume: {e}") from None
    after = _flat(to_dict(cfg))
    changed = [k for k in dict.fromkeys([*before, *after]) if k not in _WHERE and before.get(k) != after.get(k)]
    refused = [k for k in changed if k not in SAFE_ON_RESUME and k not in LENGTH_KEYS]
    if refused:
        shown = "; ".join(f"{k}: {_show(before.get(k))} -> {_show(after.get(k))}" for k in refused[:3])
        more = f" and {len(refused) - 3} more" if len(refused) > 3 else ""
        raise ConfigError(
            f"cannot resume {out}: {shown}{more} would change the run saved in {where}; resume without changing "
            "them, or start a new run in another output directory"
        )
    notes = []
    for k in changed:
        note = f"resuming with {k}={_show(after.get(k))} (the run was saved with {_show(before.get(k))})"
        if k in LENGTH_KEYS and cfg.train.scheduler != "constant":
            note += f": the {cfg.train.scheduler} learning-rate schedule is recomputed for the new length"
        notes.append(note)
    return notes


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            out |= _flat(v, f"{prefix}{k}.")
        else:
            out[prefix + k] = v
    return out


def _show(v: Any) -> str:
    return yaml.safe_dump(v, default_flow_style=True, width=1 << 16).strip().removesuffix("\n...").strip()


# ----------------------------------------------------------------------------------------------------------------------
# The process that owns a run


def owner() -> dict[str, Any]:
    """This process, as recorded in a run's files: pid, host and the process's start time (so a reused pid is told
    apart from the process that wrote the record)."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "pid_started": _start_ticks(os.getpid())}


def owner_alive(rec: dict[str, Any] | None) -> bool | None:
    """Whether the process recorded by `owner()` is still running: None when unknown (no record, or another host)."""
    if not isinstance(rec, dict) or not isinstance(rec.get("pid"), int) or rec.get("host") != socket.gethostname():
        return None
    pid = rec["pid"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        pass
    started = rec.get("pid_started")
    return started is None or _start_ticks(pid) in (None, started)


def _start_ticks(pid: int) -> int | None:
    """A process's start time in clock ticks since boot (Linux /proc), None where unavailable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    try:
        return int(stat.rpartition(")")[2].split()[19])  # field 22 of stat; fields after the command name
    except (IndexError, ValueError):
        return None
