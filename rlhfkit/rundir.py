"""A training run's output directory: which run may write into it, and which process owns a run.

A run directory holds `config.yaml` (the resolved config and the command that made it), `checkpoints/`,
`metrics.jsonl`, `model/` and the summary. `check_run_dir` is called before anything is written or loaded, and refuses
- a new run into a directory that holds an earlier one (pass --resume to continue it, or choose another directory),
- any run (new or resumed) into a directory made by another command,
- a resume whose settings differ from the saved ones, except the few that cannot change what is trained (logging,
  checkpoint cadence) and the run's length (`train.max_steps`, `train.epochs`), which are accepted and said.

`owner()` names the process that writes a run (pipeline stages record it, and the CLI in a run's `run.json`);
`shown_status()` tells a crashed run (`interrupted`) from one still going, and `check_run_dir` refuses a directory that
a live process is training.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from rlhfkit.config import ALIASES, ConfigError, from_dict, to_dict

CONFIG_FILE = "config.yaml"
RECORD_FILE = "run.json"
"""Who runs the directory and how it ended: {command, status: running | done | failed | interrupted, started,
finished, owner, error}."""
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
    rec = read_record(out)
    if shown_status(rec) == "running" and owner_alive(rec.get("owner")) and rec["owner"]["pid"] != os.getpid():
        who = rec["owner"]
        raise ConfigError(
            f"{out} is being trained by process {who['pid']} on {who['host']} (`rlhfkit {rec.get('command')}`, "
            f"started {rec.get('started')}): wait for it to finish, or stop it first"
        )
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
    steps = [int(p.name.split("-")[1]) for p in (out / "checkpoints").glob("step-*[0-9]")]
    if "train.max_steps" in changed and 0 < cfg.train.max_steps < max(steps, default=0):
        raise ConfigError(
            f"cannot resume {out} with train.max_steps={cfg.train.max_steps}: it has trained {max(steps)} steps "
            "already (its newest checkpoint)"
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


def read_record(out_dir: str | Path) -> dict[str, Any]:
    """A run directory's run.json ({} when there is none or it is unreadable)."""
    try:
        rec = json.loads((Path(out_dir) / RECORD_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return rec if isinstance(rec, dict) else {}


def write_record(out_dir: str | Path, command: str, status: str, error: str | None = None) -> None:
    """Record this process as the run's owner (status running), or how the run ended (done, failed)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rec = read_record(out) if status != "running" else {}
    rec |= {"command": command, "status": status, "owner": owner()}
    rec.setdefault("started", time.strftime("%Y-%m-%d %H:%M:%S"))
    if status != "running":
        rec["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    if error:
        rec["error"] = error
    tmp = out / (RECORD_FILE + ".tmp")
    tmp.write_text(json.dumps(rec, indent=2))
    os.replace(tmp, out / RECORD_FILE)  # atomic: never half a record


def shown_status(record: dict[str, Any] | None) -> str:
    """A stage's or a run's status for people: `running` whose owner process is gone (a crash, a kill) is
    `interrupted`."""
    status = str((record or {}).get("status") or "-")
    if status == "running" and owner_alive((record or {}).get("owner")) is False:
        return "interrupted"
    return status


def run_status(out_dir: str | Path) -> str:
    """`rlhfkit status` of one command's output directory: how it stands, its progress, and what to do next."""
    out = Path(out_dir)
    saved = saved_run(out)
    if saved is None:
        raise ConfigError(f"{out}: no config.yaml or manifest.json; give a run's output directory")
    rec = read_record(out)
    status = shown_status(rec) if rec else ("done" if (out / "summary.json").exists() else "not finished")
    ckpts = sorted((out / "checkpoints").glob("step-*[0-9]"), key=lambda p: int(p.name.split("-")[1]))
    length = saved.config.get("train", {}).get("max_steps") or "?"
    parts = [f"rlhfkit {saved.command} run in {out}: {status}"]
    if status == "done" and (out / "summary.json").exists():
        summary = json.loads((out / "summary.json").read_text())
        parts.append(f"{summary.get('steps')} steps in {summary.get('seconds')} s, model in {summary.get('model')}")
    else:
        parts.append(f"newest checkpoint {ckpts[-1].name} of {length} steps" if ckpts else "no checkpoint yet")
    if status == "running" and rec.get("owner"):
        parts.append(f"process {rec['owner']['pid']} on {rec['owner']['host']}")
    if status in ("interrupted", "failed", "not finished"):
        if rec.get("error"):
            parts.append(f"error: {rec['error']}")
        parts.append(f"`rlhfkit {saved.command} -o {out} --resume` continues it" if ckpts else "start it again")
    return "; ".join(parts)


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
