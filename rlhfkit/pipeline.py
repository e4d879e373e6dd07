"""`rlhfkit run PIPELINE.yaml`: the closed RLHF loop as a small graph of stages with artifacts and a manifest.

    round 0:  prompts -> sft -> eval (the baseline)
    round r:  sample (K responses per prompt from the newest policy) -> label (simulated | judge | human | file)
              -> rm (on every label so far) -> optimize (ppo | grpo | rloo | reinforce | online-dpo | dpo) -> eval
    finally:  report.html + report.md

Each stage writes into RUN/round-R/STAGE/ and records `stage.json`: its resolved settings, the content hashes of its
inputs and outputs, the seed, package versions, the git commit and timings. A stage whose key (settings + input hashes)
matches a finished record is skipped; a stage killed midway is started again (`--resume`: training stages continue
from their newest checkpoint). `rlhfkit status RUN` prints the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rlhfkit.config import (
    ConfigError,
    DPOConfig,
    GRPOConfig,
    OnlineDPOConfig,
    PPOConfig,
    ReinforceConfig,
    RewardSpec,
    RLOOConfig,
    RMConfig,
    SamplingConfig,
    SFTConfig,
    deep_merge,
    from_dict,
    resolve,
    to_dict,
)

STAGES = ("sample", "label", "rm", "optimize", "eval")
"""The stages of one round, in order (round 0 runs prompts, sft and eval)."""

# optimize.algorithm -> (config class, trainer import path, online?)
OPTIMIZERS: dict[str, tuple[type, str, bool]] = {
    "ppo": (PPOConfig, "rlhfkit.trainers.online:train_rl", True),
    "grpo": (GRPOConfig, "rlhfkit.trainers.online:train_rl", True),
    "rloo": (RLOOConfig, "rlhfkit.trainers.online:train_rl", True),
    "reinforce": (ReinforceConfig, "rlhfkit.trainers.online:train_rl", True),
    "online-dpo": (OnlineDPOConfig, "rlhfkit.trainers.online:train_rl", True),
    "dpo": (DPOConfig, "rlhfkit.trainers.dpo:train_dpo", False),
}
LABEL_SOURCES = ("simulated", "judge", "human", "file")
DEMO_PIPELINE = Path(__file__).resolve().parent / "tasks" / "data" / "demo.yaml"


# ----------------------------------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class PromptsConfig:
    train: str = "sample:prompts"
    """Prompt rows {"prompt": ...}: a file or a builtin sample name (sample:prompts = the shipped review openings)."""
    eval: str | None = None
    """Held-out prompts; empty = hold out `eval_count` prompts of `train`."""
    eval_count: int = 32
    """Held-out prompts taken from `train` when `eval` is empty."""
    per_round: int = 64
    """Prompts sampled and labelled per round; each round takes the next ones (wrapping around)."""
    template: str = "{prompt}"
    """Format applied to every prompt, e.g. "Continue this movie review: {prompt}"."""
    system: str | None = None
    """A system message put before every prompt (None = the chat template's default, if it has one)."""


@dataclass(frozen=True)
class RaterConfig:
    name: str = "rater"
    """Written to each label's `rater` field; also seeds this rater's random stream."""
    temperature: float = 0.1
    """Bradley-Terry noise on the gold gap: P(A) = sigmoid((gold_A + bias - gold_B) / temperature)."""
    bias: float = 0.0
    """Added to the first shown response's gold score (position bias)."""
    tie_margin: float = 0.0
    """A tie when the gold gap the rater sees is below this."""
    flip: float = 0.0
    """Probability of reversing the choice (label noise)."""


@dataclass(frozen=True)
class SampleStage:
    num_samples: int = 2
    """Responses per prompt (K)."""
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(max_new_tokens=32, batch_size=32))
    """How responses are generated."""


@dataclass(frozen=True)
class LabelStage:
    source: str = "simulated"
    """Who labels the pairs: simulated (gold + noisy raters), judge (an AI judge), human (the annotation app) or file."""
    pairs: str = "chain"
    """Pairs from K responses: chain (K-1 pairs joining them) or all (K(K-1)/2)."""
    max_pairs: int | None = None
    """Cap on pairs per round."""
    heldout_fraction: float = 0.15
    """Share of each round's pairs (by prompt) kept out of reward-model training to measure its accuracy."""
    gold: list[RewardSpec] = field(default_factory=lambda: [RewardSpec(kind="sentiment")])
    """Gold scorer(s) (reward sources) behind the simulated raters, also used to evaluate policies."""
    raters: list[RaterConfig] = field(
        default_factory=lambda: [
            RaterConfig("careful", temperature=0.05, tie_margin=0.02),
            RaterConfig("noisy", temperature=0.2, flip=0.1, tie_margin=0.05),
        ]
    )
    """Simulated raters (each pair is labelled by one of them, in turn)."""
    file: str = ""
    """source=file: a preference JSONL; `{round}` in the name is replaced by the round number."""
    judge: str = "smollm2-135m-instruct"
    """source=judge: the judge model (builtin name or local directory)."""
    rubric: str = ""
    """source=judge: the rubric the judge reads (empty = the judge's default)."""
    human_share: float = 0.0
    """source=judge: share of pairs sent to humans where the judge is least confident (needs the annotation app)."""
    audit_share: float = 0.0
    """source=judge: extra random share of pairs sent to humans to audit the judge."""
    db: str = ""
    """source=human (or human_share > 0): annotation database URL; empty = sqlite file RUN/annotations.db."""
    raters_per_item: int = 1
    """source=human: raters per pair."""
    wait_seconds: float = 0.0
    """source=human: give up waiting for labels after this long (0 = wait for ever)."""
    poll_seconds: float = 10.0
    """source=human: how often to check the campaign's progress."""


@dataclass(frozen=True)
class EvalStage:
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(max_new_tokens=32, batch_size=32))
    """How evaluation responses are generated (temperature 1 keeps the KL estimate honest)."""
    judge: str = "gold"
    """Who decides win rates: gold (label.gold), rm (this round's reward model) or judge (the AI judge)."""
    tie_margin: float = 0.0
    """Score gap under which a comparison is a tie."""
    examples: int = 6
    """Before/after response pairs shown in the report."""
    safety: bool = False
    """Also run the safety and behaviour evaluation on the newest policy."""


@dataclass(frozen=True)
class PipelineConfig:
    output: str = "runs/pipeline"
    """Run directory: every stage's artifacts, the manifest, the report."""
    model: str = "smollm2-135m-instruct"
    """Base model: builtin name or local Hugging Face directory."""
    rounds: int = 2
    """Rounds of sample -> label -> rm -> optimize -> eval."""
    seed: int = 0
    """Base seed; every stage derives its own from it."""
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    """Where prompts come from and how many each round uses."""
    sft: dict[str, Any] | None = None
    """Settings of the SFT stage (keys of `rlhfkit sft`, e.g. {data: {train: sample:sft}}); empty = no SFT."""
    sample: SampleStage = field(default_factory=SampleStage)
    """Sampling K responses per prompt from the newest policy."""
    label: LabelStage = field(default_factory=LabelStage)
    """Labelling the sampled pairs."""
    rm: dict[str, Any] = field(default_factory=dict)
    """Settings of the reward-model stage (keys of `rlhfkit rm`); trained on every label so far."""
    optimize: dict[str, Any] = field(default_factory=lambda: {"algorithm": "ppo"})
    """`algorithm` (ppo, grpo, rloo, reinforce, online-dpo, dpo) and that command's settings."""
    eval: EvalStage = field(default_factory=EvalStage)
    """Evaluating each round's policy against the baseline."""


def load_pipeline(path: str | Path | None, overrides: list[str] | None = None) -> PipelineConfig:
    """Defaults <- YAML <- overrides; every stage's settings are validated now, so a typo fails before any work."""
    from rlhfkit.config import load_config

    cfg = load_config(PipelineConfig, path, overrides)
    where = str(path) if path else "<overrides>"
    if cfg.rounds < 1:
        raise ConfigError(f"{where}: key 'rounds' must be at least 1, got {cfg.rounds}")
    if cfg.label.source not in LABEL_SOURCES:
        raise ConfigError(f"{where}: key 'label.source' must be one of {', '.join(LABEL_SOURCES)}")
    if not 0.0 <= cfg.label.heldout_fraction < 1.0:
        raise ConfigError(f"{where}: key 'label.heldout_fraction' must be in [0, 1), got {cfg.label.heldout_fraction}")
    if cfg.eval.judge not in ("gold", "rm", "judge"):
        raise ConfigError(f"{where}: key 'eval.judge' must be gold, rm or judge, got {cfg.eval.judge!r}")
    if cfg.prompts.per_round < 1 or cfg.sample.num_samples < 2:
        raise ConfigError(f"{where}: prompts.per_round must be >= 1 and sample.num_samples >= 2 (pairs need two)")
    algo = cfg.optimize.get("algorithm", "ppo")
    if algo not in OPTIMIZERS:
        raise ConfigError(f"{where}: key 'optimize.algorithm' must be one of {', '.join(OPTIMIZERS)}, got {algo!r}")
    # build each stage's config once with placeholder paths: unknown keys and bad values name `rm.train.lr` etc.
    if cfg.sft:
        _stage_config(SFTConfig, cfg.sft, {}, where, "sft.")
    _stage_config(RMConfig, cfg.rm, {}, where, "rm.")
    cls, _, online = OPTIMIZERS[algo]
    placeholder = {"reward": {"sources": [{"kind": "model", "path": "<the round's reward model>"}]}} if online else {}
    _stage_config(cls, _without(cfg.optimize, "algorithm"), placeholder, where, "optimize.")
    if "template" in cfg.prompts.template and "{prompt}" not in cfg.prompts.template:
        raise ConfigError(f"{where}: key 'prompts.template' must contain {{prompt}}")
    return cfg


def _without(d: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k not in keys}


def _stage_config(cls: type, user: dict[str, Any], forced: dict[str, Any], where: str, prefix: str) -> Any:
    """The stage's config: its own defaults <- the pipeline file's settings <- what the pipeline decides (paths)."""
    if not isinstance(user, dict):
        raise ConfigError(f"{where}: key {prefix.rstrip('.')!r} must be a mapping")
    cfg = from_dict(cls, deep_merge(user, forced), where=where, prefix=prefix)
    try:
        return resolve(cfg)
    except ConfigError as e:  # resolve() names keys within the stage: say which stage
        raise ConfigError(f"{where}: section {prefix.rstrip('.')!r}: {e}") from None


# ----------------------------------------------------------------------------------------------------------------------
# hashes and records


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
    import importlib.metadata as md

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
        self.hashes: dict[Path, str] = {}  # output path -> content hash, from the records of finished stages

    def _input_hashes(self, stage: Stage) -> dict[str, str]:
        out = {}
        for name, p in stage.inputs.items():
            p = Path(p)
            out[name] = self.hashes.get(p.resolve()) or (hash_path(p) if p.exists() else "missing")
        return out

    def __call__(self, stage: Stage) -> dict[str, Any]:
        sdir = self.dir / f"round-{stage.round}" / stage.name
        record_path = sdir / "stage.json"
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
    order = {name: i for i, name in enumerate(("prompts", "sft", *STAGES))}
    recs = []
    for p in Path(run_dir).glob("round-*/*/stage.json"):
        try:
            recs.append(json.loads(p.read_text()))
        except json.JSONDecodeError:
            continue
    return sorted(recs, key=lambda r: (r.get("round", 0), order.get(r.get("stage"), 99)))


# ----------------------------------------------------------------------------------------------------------------------
# the stages


def _read(path: Path) -> list[dict[str, Any]]:
    from rlhfkit.data import read_rows

    return [row for _, row in read_rows(path)]


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    from rlhfkit.data import write_jsonl

    path.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(path, rows)


def _prompt_text(row: dict[str, Any], where: str, line: int) -> str:
    p = row.get("prompt") if isinstance(row, dict) else None
    if not isinstance(p, str) or not p.strip():
        raise ConfigError(f"{where}:{line}: field 'prompt' must be a non-empty string")
    return p


def _trainer(path: str) -> Callable[[Any], dict[str, Any]]:
    from rlhfkit.cli import trainer_from_path

    return trainer_from_path(path)


class Pipeline:
    """Builds the stages of a PipelineConfig and runs them with a Runner."""

    def __init__(self, cfg: PipelineConfig, where: str = "<pipeline>") -> None:
        self.cfg, self.where = cfg, where
        self.dir = Path(cfg.output).resolve()
        self.algo = cfg.optimize.get("algorithm", "ppo")

    # paths
    def p(self, round_: int, stage: str, name: str = "") -> Path:
        return self.dir / f"round-{round_}" / stage / name

    @property
    def base_policy(self) -> str:
        return str(self.p(0, "sft", "model")) if self.cfg.sft else self.cfg.model

    def policy(self, round_: int) -> str:
        return self.base_policy if round_ == 0 else str(self.p(round_, "optimize", "model"))

    def _messages(self, prompt: str) -> str | list[dict[str, str]]:
        system = self.cfg.prompts.system
        if system is None:
            return prompt
        return [{"role": "system", "content": system}, {"role": "user", "content": prompt}]

    # round 0
    def prompts_stage(self) -> Stage:
        c = self.cfg.prompts
        from rlhfkit.trainers.common import resolve_data_path

        src = Path(resolve_data_path(c.train))
        inputs = {"train": src}
        if c.eval:
            inputs["eval"] = Path(resolve_data_path(c.eval))

        def run(d: Path, resume: bool) -> dict[str, Any]:
            import random

            def load(path: Path) -> list[str]:
                from rlhfkit.data import read_rows

                return [c.template.format(prompt=_prompt_text(r, str(path), i)) for i, r in read_rows(path)]

            rows = load(src)
            random.Random(self.cfg.seed).shuffle(rows)
            if c.eval:
                heldout = load(inputs["eval"])
            else:
                if len(rows) <= c.eval_count:
                    raise ConfigError(f"{src}: {len(rows)} prompts, but prompts.eval_count={c.eval_count} are held out")
                heldout, rows = rows[: c.eval_count], rows[c.eval_count :]
            _write(d / "train.jsonl", [{"prompt": self._messages(p)} for p in rows])
            _write(d / "eval.jsonl", [{"prompt": self._messages(p)} for p in heldout])
            return {"train_prompts": len(rows), "eval_prompts": len(heldout)}

        return Stage(0, "prompts", to_dict(c), inputs, ("train.jsonl", "eval.jsonl"), run)

    def sft_stage(self) -> Stage:
        from rlhfkit.trainers.common import resolve_data_path

        user = dict(self.cfg.sft or {})
        data = user.get("data", {}) if isinstance(user.get("data"), dict) else {}
        inputs: dict[str, Path] = {}
        if data.get("train"):
            inputs["train"] = Path(resolve_data_path(str(data["train"])))
        model_path = Path(self.cfg.model)
        if model_path.exists():
            inputs["model"] = model_path

        def run(d: Path, resume: bool) -> dict[str, Any]:
            forced = {
                "model": {"name_or_path": self.cfg.model},
                "train": {"output_dir": str(d), "resume": resume, "seed": stage_seed(self.cfg.seed, 0, "sft")},
            }
            cfg = _stage_config(SFTConfig, user, forced, self.where, "sft.")
            return _trainer("rlhfkit.trainers.sft:train_sft")(cfg)

        return Stage(0, "sft", {"sft": user, "model": self.cfg.model}, inputs, ("model",), run)

    # one round
    def sample_stage(self, r: int) -> Stage:
        c = self.cfg.sample
        train = self.p(0, "prompts", "train.jsonl")
        inputs = {"prompts": train, "policy": Path(self.policy(r - 1))}

        def run(d: Path, resume: bool) -> dict[str, Any]:
            from rlhfkit.config import SampleConfig
            from rlhfkit.sampling import sample

            rows = _read(train)
            n = self.cfg.prompts.per_round
            start = ((r - 1) * n) % len(rows)
            chosen = [rows[(start + i) % len(rows)] for i in range(min(n, len(rows)))]
            _write(d / "prompts.jsonl", chosen)
            cfg = resolve(
                SampleConfig(
                    model=dataclasses.replace(SampleConfig().model, name_or_path=self.policy(r - 1)),
                    data=dataclasses.replace(SampleConfig().data, train=str(d / "prompts.jsonl")),
                    sampling=c.sampling,
                    num_samples=c.num_samples,
                    output=str(d / "samples.jsonl"),
                    seed=stage_seed(self.cfg.seed, r, "sample"),
                )
            )
            return sample(cfg)

        return Stage(
            r, "sample", to_dict(c) | {"per_round": self.cfg.prompts.per_round}, inputs, ("samples.jsonl",), run
        )

    def label_stage(self, r: int) -> Stage:
        c = self.cfg.label
        samples = self.p(r, "sample", "samples.jsonl")
        inputs = {"samples": samples}
        if c.source == "file":
            inputs["file"] = Path(c.file.format(round=r))

        def run(d: Path, resume: bool) -> dict[str, Any]:
            from rlhfkit.feedback.simulated import pairs_from_samples

            seed = stage_seed(self.cfg.seed, r, "label")
            if c.source == "file":
                rows = _read(inputs["file"])
                info: dict[str, Any] = {"source": str(inputs["file"])}
            else:
                prompts, a, b = pairs_from_samples(_read(samples), c.pairs, c.max_pairs, seed)
                rows, info = LABELLERS[c.source](self, r, d, prompts, a, b, seed)
            valid = [x for x in rows if _valid_pair(x)]  # an empty or identical pair is no preference
            info["dropped_invalid"] = len(rows) - len(valid)
            rows = valid
            from rlhfkit.data import train_eval_split

            train, heldout = train_eval_split(rows, c.heldout_fraction, seed)  # by prompt: none in both
            _write(d / "prefs.jsonl", train)
            _write(d / "heldout.jsonl", heldout)
            ties = sum(bool(x.get("tie")) for x in rows)
            return {"pairs": len(rows), "train_pairs": len(train), "heldout_pairs": len(heldout), "ties": ties, **info}

        settings = to_dict(c)
        return Stage(r, "label", settings, inputs, ("prefs.jsonl", "heldout.jsonl"), run)

    def rm_stage(self, r: int) -> Stage:
        prefs = [self.p(i, "label", "prefs.jsonl") for i in range(1, r + 1)]
        heldout = [self.p(i, "label", "heldout.jsonl") for i in range(1, r + 1)]
        inputs = {f"prefs{i + 1}": p for i, p in enumerate(prefs)} | {
            f"heldout{i + 1}": p for i, p in enumerate(heldout)
        }
        inputs["init"] = Path(self.base_policy)

        def run(d: Path, resume: bool) -> dict[str, Any]:
            train_rows = [row for p in prefs for row in _read(p)]
            eval_rows = [row for p in heldout for row in _read(p)]
            _write(d / "data" / "train.jsonl", train_rows)
            _write(d / "data" / "eval.jsonl", eval_rows)
            forced = {
                "model": {"name_or_path": self.base_policy},
                "data": {"train": str(d / "data" / "train.jsonl"), "eval": str(d / "data" / "eval.jsonl")},
                "train": {"output_dir": str(d), "resume": resume, "seed": stage_seed(self.cfg.seed, r, "rm")},
            }
            cfg = _stage_config(RMConfig, self.cfg.rm, forced, self.where, "rm.")
            return _trainer("rlhfkit.trainers.rm:train_rm")(cfg)

        return Stage(r, "rm", {"rm": self.cfg.rm, "base": self.base_policy}, inputs, ("model",), run)

    def optimize_stage(self, r: int) -> Stage:
        cls, trainer, online = OPTIMIZERS[self.algo]
        user = _without(self.cfg.optimize, "algorithm")
        inputs = {"policy": Path(self.policy(r - 1)), "reference": Path(self.base_policy)}
        if online:
            inputs |= {"prompts": self.p(0, "prompts", "train.jsonl"), "eval": self.p(0, "prompts", "eval.jsonl")}
            inputs["rm"] = self.p(r, "rm", "model")
        else:
            inputs |= {f"prefs{i}": self.p(i, "label", "prefs.jsonl") for i in range(1, r + 1)}

        def run(d: Path, resume: bool) -> dict[str, Any]:
            forced: dict[str, Any] = {
                "model": {"name_or_path": self.policy(r - 1)},
                "reference": self.base_policy,
                "train": {"output_dir": str(d), "resume": resume, "seed": stage_seed(self.cfg.seed, r, "optimize")},
            }
            if online:
                forced["data"] = {"train": str(inputs["prompts"]), "eval": str(inputs["eval"])}
                user_reward = user.get("reward", {}) if isinstance(user.get("reward"), dict) else {}
                forced["reward"] = {
                    "sources": [{"kind": "model", "path": str(inputs["rm"])}],
                    "normalize": user_reward.get("normalize", True),
                }
                if self.cfg.label.source == "simulated" and not user.get("gold"):
                    forced["gold"] = {"sources": [to_dict(s) for s in self.cfg.label.gold]}
            else:
                rows = [row for i in range(1, r + 1) for row in _read(self.p(i, "label", "prefs.jsonl"))]
                _write(d / "data" / "train.jsonl", rows)
                forced["data"] = {"train": str(d / "data" / "train.jsonl")}
            cfg = _stage_config(cls, user, forced, self.where, "optimize.")
            return _trainer(trainer)(cfg)

        return Stage(r, "optimize", {"optimize": self.cfg.optimize}, inputs, ("model",), run)

    def eval_stage(self, r: int) -> Stage:
        c = self.cfg.eval
        prompts = self.p(0, "prompts", "eval.jsonl")
        inputs = {"prompts": prompts, "policy": Path(self.policy(r)), "reference": Path(self.base_policy)}
        if r > 0:
            inputs["baseline"] = self.p(0, "eval", "responses.jsonl")
            inputs["rm"] = self.p(r, "rm", "model")
            inputs["heldout"] = self.p(r, "label", "heldout.jsonl")

        def run(d: Path, resume: bool) -> dict[str, Any]:
            from rlhfkit.eval.policy import evaluate_round

            return evaluate_round(self, r, d)

        settings = to_dict(c) | {"gold": [to_dict(s) for s in self.cfg.label.gold]}
        return Stage(r, "eval", settings, inputs, ("responses.jsonl", "eval.json"), run)

    def stages(self) -> Iterator[Stage]:
        yield self.prompts_stage()
        if self.cfg.sft:
            yield self.sft_stage()
        yield self.eval_stage(0)
        for r in range(1, self.cfg.rounds + 1):
            yield self.sample_stage(r)
            yield self.label_stage(r)
            if self.algo != "dpo" or self.cfg.eval.judge == "rm":
                yield self.rm_stage(r)
            yield self.optimize_stage(r)
            yield self.eval_stage(r)


def _valid_pair(row: dict[str, Any]) -> bool:
    a, b = row.get("chosen"), row.get("rejected")
    return (
        bool(a)
        and bool(b)
        and a != b
        and (not isinstance(a, str) or a.strip() != "")
        and (not isinstance(b, str) or b.strip() != "")
    )


# label sources: (pipeline, round, stage dir, prompts, responses a, responses b, seed) -> (preference rows, info)


def _label_simulated(pl: Pipeline, r: int, d: Path, prompts: list, a: list, b: list, seed: int):
    from rlhfkit.feedback.simulated import RaterSpec, simulate_preferences

    raters = [RaterSpec(**to_dict(x)) for x in pl.cfg.label.raters]
    from rlhfkit.eval.policy import scorer

    rows = simulate_preferences(prompts, a, b, scorer(pl.cfg.label.gold), raters, seed=seed)
    return rows, {"raters": len(raters)}


def _human_labels(pl: Pipeline, r: int, d: Path, prompts: list, a: list, b: list) -> list[dict[str, Any]]:
    """Create this round's campaign in the annotation app, wait until it is labelled, return adjudicated rows."""
    from rlhfkit.feedback.store import Store

    c = pl.cfg.label
    store = Store(c.db or f"sqlite:///{pl.dir / 'annotations.db'}")
    name = f"{pl.dir.name}-round-{r}"
    if name not in {x["name"] for x in store.campaigns()}:
        items = [{"prompt": p, "responses": [x, y]} for p, x, y in zip(prompts, a, b)]
        store.create_campaign(name, items, kind="pairwise", raters_per_item=c.raters_per_item)
        print(f"campaign {name!r}: {len(items)} pairs waiting for raters (rlhfkit annotate serve --db {store.url})")
    t0 = time.monotonic()
    while True:
        prog = store.progress(name)
        if prog["labelled_items"] >= prog["total_items"]:
            break
        if c.wait_seconds and time.monotonic() - t0 > c.wait_seconds:
            raise TimeoutError(
                f"campaign {name!r}: {prog['labelled_items']}/{prog['total_items']} pairs labelled after "
                f"{c.wait_seconds:.0f} s; run again with --resume to keep waiting"
            )
        time.sleep(c.poll_seconds)
    return store.export(name, adjudication="majority")


def _label_human(pl: Pipeline, r: int, d: Path, prompts: list, a: list, b: list, seed: int):
    rows = _human_labels(pl, r, d, prompts, a, b)
    return rows, {"human_pairs": len(rows)}


def _label_judge(pl: Pipeline, r: int, d: Path, prompts: list, a: list, b: list, seed: int):
    from rlhfkit.feedback.judge import Judge, position_bias, route_to_humans

    c = pl.cfg.label
    judge = Judge(c.judge, **({"rubric": c.rubric} if c.rubric else {}))
    verdicts = judge.compare(prompts, a, b)
    rows = judge.label_pairs(prompts, a, b, verdicts=verdicts)
    info: dict[str, Any] = {"judge": c.judge, **{f"position_{k}": v for k, v in position_bias(verdicts).items()}}
    if c.human_share > 0 or c.audit_share > 0:
        idx = route_to_humans(verdicts, c.human_share, c.audit_share, seed)
        human = _human_labels(pl, r, d, [prompts[i] for i in idx], [a[i] for i in idx], [b[i] for i in idx])
        from rlhfkit.feedback.judge import judge_agreement

        agreement = judge_agreement([rows[i] for i in idx], human)
        info |= {"human_pairs": len(human), **{f"judge_human_{k}": v for k, v in agreement.items()}}
        keep = set(idx)
        rows = [row for i, row in enumerate(rows) if i not in keep] + human  # humans overrule the judge
    return rows, info


LABELLERS: dict[str, Callable[..., tuple[list[dict[str, Any]], dict[str, Any]]]] = {
    "simulated": _label_simulated,
    "judge": _label_judge,
    "human": _label_human,
}


# ----------------------------------------------------------------------------------------------------------------------
# running, status, CLI


def run_pipeline(
    cfg: PipelineConfig, where: str = "<pipeline>", resume: bool = False, force: bool = False, report: bool = True
) -> Path:
    """Run (or continue) a pipeline; returns the run directory."""
    pl = Pipeline(cfg, where)
    pl.dir.mkdir(parents=True, exist_ok=True)
    manifest_path = pl.dir / "manifest.json"
    (pl.dir / "pipeline.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    runner = Runner(pl.dir, resume, force)
    t0 = time.perf_counter()
    manifest = {
        "config": to_dict(cfg),
        "config_file": where,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "versions": _versions(),
        "git_commit": _git_commit(),
        "seed": cfg.seed,
        "stages": [],
        "status": "running",
    }
    _write_json(manifest_path, manifest)
    for stage in pl.stages():
        rec = runner(stage)
        manifest["stages"].append(
            {k: rec.get(k) for k in ("stage", "round", "status", "seconds", "fingerprint", "inputs", "outputs")}
        )
        _write_json(manifest_path, manifest)
    manifest.update(status="done", seconds=round(time.perf_counter() - t0, 2))
    _write_json(manifest_path, manifest)
    if report:
        from rlhfkit.eval.policy import write_run_report

        html, md = write_run_report(pl.dir)
        print(f"report: {html}\n        {md}")
    return pl.dir


def status_table(run_dir: str | Path) -> str:
    recs = stage_records(run_dir)
    if not recs:
        raise ConfigError(f"{run_dir}: no stage records (round-*/*/stage.json); is this a run directory?")
    lines = [f"{'stage':<22} {'status':<8} {'seconds':>8}  metrics"]
    for r in recs:
        m = r.get("metrics") or {}
        shown = ", ".join(f"{k}={_short(v)}" for k, v in list(_headline(r["stage"], m).items())[:4])
        secs = f"{r['seconds']:.1f}" if isinstance(r.get("seconds"), (int, float)) else "-"
        lines.append(f"round-{r['round']}/{r['stage']:<14} {r['status']:<8} {secs:>8}  {shown}")
    return "\n".join(lines)


HEADLINES = {
    "prompts": ("train_prompts", "eval_prompts"),
    "sample": ("rows", "mean_length", "generated_tokens_per_s"),
    "label": ("pairs", "ties", "heldout_pairs"),
    "rm": ("eval.accuracy", "eval.auc", "seconds"),
    "optimize": ("eval.gold", "eval.score", "eval.kl", "seconds"),
    "sft": ("eval.loss", "seconds"),
    "eval": ("gold", "win_rate", "kl", "length"),
}


def _headline(stage: str, metrics: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key in HEADLINES.get(stage, ()):
        v: Any = metrics
        for part in key.split("."):
            v = v.get(part) if isinstance(v, dict) else None
        if v is not None:
            out[key] = v
    return out


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _cmd_run(args: argparse.Namespace) -> int:
    if args.pipeline and "=" in args.pipeline and not Path(args.pipeline).exists():
        args.overrides, args.pipeline = [args.pipeline, *args.overrides], None  # overrides only, no file
    cfg = load_pipeline(args.pipeline, list(args.overrides) + ([f"output={args.output}"] if args.output else []))
    run_pipeline(cfg, args.pipeline or "<overrides>", resume=args.resume, force=args.force)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    print(status_table(args.run_dir))
    manifest = Path(args.run_dir) / "manifest.json"
    if manifest.exists():
        m = json.loads(manifest.read_text())
        print(f"run: {m.get('status')}, started {m.get('started')}, commit {m.get('git_commit') or '-'}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from rlhfkit.cli import _keys_help

    p = sub.add_parser(
        "run",
        help="the closed loop: sft -> (sample -> label -> rm -> optimize -> eval) x rounds -> report",
        description="rlhfkit run: run or continue a pipeline; finished stages with unchanged inputs are skipped.",
        epilog=_keys_help(PipelineConfig),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("pipeline", nargs="?", help="pipeline YAML file")
    p.add_argument("--output", "-o", help="run directory (same as output=...)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted training stage from its checkpoint")
    p.add_argument("--force", action="store_true", help="run every stage again, even when unchanged")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. rounds=3 label.source=judge")
    p.set_defaults(handler=_cmd_run)
    s = sub.add_parser("status", help="stages of a run directory: status, time, headline metrics")
    s.add_argument("run_dir")
    s.set_defaults(handler=_cmd_status)


if __name__ == "__main__":  # pragma: no cover
    from rlhfkit.cli import main

    sys.exit(main(["run", *sys.argv[1:]]))
