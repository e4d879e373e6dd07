"""The stages of the closed loop, built from a PipelineConfig:

round 0:  prompts -> sft -> eval (the baseline)
round r:  sample (K responses per prompt from the newest policy) -> label (simulated | judge | human | file)
          -> rm (on every label so far) -> optimize (ppo | grpo | rloo | reinforce | online-dpo | dpo) -> eval
live round r (label.live): optimize (online DPO; raters label its fresh samples in the annotation app as it trains)
          -> eval
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rlhfkit.commands import OPTIMIZERS, canonical, trainer
from rlhfkit.config import ConfigError, RMConfig, SampleConfig, SFTConfig, resolve, to_dict
from rlhfkit.data import load_examples, read_rows, resolve_data_path, train_eval_split, write_jsonl
from rlhfkit.data.schemas import parse_prompt
from rlhfkit.errors import TooFewRowsError
from rlhfkit.pipeline.config import (
    PipelineConfig,
    _stage_config,
    _without,
    live_optimize,
    optimize_reward,
    rater_attributes,
)
from rlhfkit.pipeline.layout import RunLayout
from rlhfkit.pipeline.runner import Stage, stage_seed


def _read(path: Path) -> list[dict[str, Any]]:
    return [row for _, row in read_rows(path)]


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(path, rows)


def _prompt_text(row: dict[str, Any], where: str, line: int) -> str:
    p = row.get("prompt") if isinstance(row, dict) else None
    if not isinstance(p, str) or not p.strip():
        raise ConfigError(f"{where}:{line}: field 'prompt' must be a non-empty string")
    return p


def _domain(row: dict[str, Any], where: str, line: int) -> str:
    return str(parse_prompt(row, f"{where}:{line}").domain)


LABEL_MORE = "label more pairs (prompts.per_round, sample.num_samples, label.pairs=all)"


def _train(command: str, cfg: Any, round_: int, section: str, more: str = "") -> dict[str, Any]:
    """Run a trainer as a stage; too few rows for a batch names the pipeline's key (`rm.train.batch_size`)."""
    try:
        return trainer(command)(cfg)
    except TooFewRowsError as e:  # raised before any model is loaded
        raise ConfigError(
            f"round {round_} {section}: only {e.rows} {e.what} for a global batch of {e.global_batch}: "
            f"lower {section}.{e.key}{more}"
        ) from None


class Pipeline:
    """Builds the stages of a PipelineConfig and runs them with a Runner."""

    def __init__(self, cfg: PipelineConfig, where: str = "<pipeline>") -> None:
        self.cfg, self.where = cfg, where
        self.dir = Path(cfg.output).resolve()
        self.layout = RunLayout(self.dir)
        self.algo = canonical(str(cfg.optimize.get("algorithm", "ppo")))

    def p(self, round_: int, stage: str, name: str = "") -> Path:
        return self.layout.file(round_, stage, name)

    @property
    def base_policy(self) -> str:
        return str(self.layout.model(0, "sft")) if self.cfg.sft else self.cfg.model

    def policy(self, round_: int) -> str:
        return self.base_policy if round_ == 0 else str(self.layout.model(round_, "optimize"))

    def _messages(self, prompt: str) -> str | list[dict[str, str]]:
        system = self.cfg.prompts.system
        if system is None:
            return prompt
        return [{"role": "system", "content": system}, {"role": "user", "content": prompt}]

    # round 0
    def prompts_stage(self) -> Stage:
        c = self.cfg.prompts
        src = Path(resolve_data_path(c.train))
        inputs = {"train": src}
        if c.eval:
            inputs["eval"] = Path(resolve_data_path(c.eval))

        def run(d: Path, resume: bool) -> dict[str, Any]:
            def load(path: Path) -> list[dict[str, Any]]:  # the optional "domain" tag travels with its prompt
                return [
                    {"prompt": self._messages(c.template.format(prompt=_prompt_text(r, str(path), i)))}
                    | ({"domain": _domain(r, str(path), i)} if r.get("domain") is not None else {})
                    for i, r in read_rows(path)
                ]

            rows = load(src)
            random.Random(self.cfg.seed).shuffle(rows)
            if c.eval:
                heldout = load(inputs["eval"])
            else:
                if len(rows) <= c.eval_count:
                    raise ConfigError(f"{src}: {len(rows)} prompts, but prompts.eval_count={c.eval_count} are held out")
                heldout, rows = rows[: c.eval_count], rows[c.eval_count :]
            _write(d / "train.jsonl", rows)
            _write(d / "eval.jsonl", heldout)
            return {"train_prompts": len(rows), "eval_prompts": len(heldout)}

        return Stage(0, "prompts", to_dict(c), inputs, ("train.jsonl", "eval.jsonl"), run)

    def sft_stage(self) -> Stage:
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
            return _train("sft", cfg, 0, "sft", " or add demonstrations")

        return Stage(0, "sft", {"sft": user, "model": self.cfg.model}, inputs, ("model",), run)

    # one round
    def sample_stage(self, r: int) -> Stage:
        c = self.cfg.sample
        train = self.layout.prompts("train")
        inputs = {"prompts": train, "policy": Path(self.policy(r - 1))}

        def run(d: Path, resume: bool) -> dict[str, Any]:
            from rlhfkit.sampling import sample  # torch and transformers: loaded when a stage runs, not at `--help`

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
                    overwrite=True,  # the stage owns its directory; a rerun after a kill replaces its own output
                    seed=stage_seed(self.cfg.seed, r, "sample"),
                )
            )
            return sample(cfg)

        return Stage(
            r, "sample", to_dict(c) | {"per_round": self.cfg.prompts.per_round}, inputs, ("samples.jsonl",), run
        )

    def label_stage(self, r: int) -> Stage:
        c = self.cfg.label
        samples = self.layout.samples(r)
        inputs = {"samples": samples}
        if c.source == "file":
            inputs["file"] = Path(c.file.format(round=r))

        def run(d: Path, resume: bool) -> dict[str, Any]:
            # torch, the annotation store, the judge: loaded when the stage runs, not for `rlhfkit --help`
            from rlhfkit.feedback.simulated import pairs_from_samples
            from rlhfkit.pipeline.labellers import LABELLERS, label_audit

            seed = stage_seed(self.cfg.seed, r, "label")
            if c.source == "file":  # validated like any preference file: a bad row names its file and line
                rows = [ex.to_row() for ex in load_examples(inputs["file"], "preference")]
                info: dict[str, Any] = {"source": str(inputs["file"])}
            else:
                prompts, a, b = pairs_from_samples(_read(samples), c.pairs, c.max_pairs, seed)
                rows, info = LABELLERS[c.source](self.cfg, self.layout, r, d, prompts, a, b, seed)
                if audit:  # label distributions and agreement per rater group, over every label of the round
                    (d / "audit.json").write_text(json.dumps(label_audit(rows, prompts, a, b, attributes), indent=2))
            valid = [x for x in rows if _valid_pair(x)]  # an empty or identical pair is no preference
            info["dropped_invalid"] = len(rows) - len(valid)
            rows = valid
            train, heldout = train_eval_split(rows, c.heldout_fraction, seed)  # by prompt: none in both
            _write(d / "prefs.jsonl", train)
            _write(d / "heldout.jsonl", heldout)
            ties = sum(bool(x.get("tie")) for x in rows)
            return {"pairs": len(rows), "train_pairs": len(train), "heldout_pairs": len(heldout), "ties": ties, **info}

        settings = to_dict(c)
        attributes = rater_attributes(c)
        audit = bool(attributes) and c.source != "file"  # file rows do not say which response was shown first
        outputs = ("prefs.jsonl", "heldout.jsonl") + (("audit.json",) if audit else ())
        if c.rater_attributes:
            inputs["rater_attributes"] = Path(c.rater_attributes)
        return Stage(r, "label", settings, inputs, outputs, run)

    def rm_stage(self, r: int) -> Stage:
        prefs = [self.layout.prefs(i) for i in range(1, r + 1)]
        heldout = [self.layout.heldout(i) for i in range(1, r + 1)]
        inputs = {f"prefs{i + 1}": p for i, p in enumerate(prefs)} | {
            f"heldout{i + 1}": p for i, p in enumerate(heldout)
        }
        inputs["init"] = Path(self.base_policy)

        def run(d: Path, resume: bool) -> dict[str, Any]:
            train_rows = [row for p in prefs for row in _read(p)]
            eval_rows = [row for p in heldout for row in _read(p)]
            if not train_rows:
                raise ConfigError(f"round {r} rm: the label source gave no training pairs: {LABEL_MORE}")
            _write(d / "data" / "train.jsonl", train_rows)
            _write(d / "data" / "eval.jsonl", eval_rows)
            data: dict[str, Any] = {"train": str(d / "data" / "train.jsonl"), "eval": str(d / "data" / "eval.jsonl")}
            if not eval_rows:  # label.heldout_fraction=0: no held-out pairs (and none taken from training)
                data |= {"eval": None, "eval_fraction": 0.0}
            forced = {
                "model": {"name_or_path": self.base_policy},
                "data": data,
                "train": {"output_dir": str(d), "resume": resume, "seed": stage_seed(self.cfg.seed, r, "rm")},
            }
            cfg = _stage_config(RMConfig, self.cfg.rm, forced, self.where, "rm.")
            return _train("rm", cfg, r, "rm", f", or {LABEL_MORE}")

        return Stage(r, "rm", {"rm": self.cfg.rm, "base": self.base_policy}, inputs, ("model",), run)

    def optimize_stage(self, r: int) -> Stage:
        opt = OPTIMIZERS[self.algo]
        cls, online = opt.config, opt.online
        user = _without(self.cfg.optimize, "algorithm")
        inputs = {"policy": Path(self.policy(r - 1)), "reference": Path(self.base_policy)}
        live = self.cfg.label.live is not None
        if live:  # people label while it trains: no reward model, no label files
            inputs |= {"prompts": self.layout.prompts("train"), "eval": self.layout.prompts("eval")}
        elif online:
            inputs |= {"prompts": self.layout.prompts("train"), "eval": self.layout.prompts("eval")}
            inputs["rm"] = self.layout.model(r, "rm")
            for i, spec in enumerate(optimize_reward(user, "", self.where)["sources"][1:]):
                if isinstance(spec, dict) and spec.get("kind") in ("model", "ensemble"):  # the user's own reward models
                    for j, path in enumerate(str(spec.get("path", "")).split(",")):
                        if path.strip():
                            inputs[f"reward{i}.{j}"] = Path(path.strip())
        else:
            inputs |= {f"prefs{i}": self.layout.prefs(i) for i in range(1, r + 1)}

        def run(d: Path, resume: bool) -> dict[str, Any]:
            forced: dict[str, Any] = {
                "model": {"name_or_path": self.policy(r - 1)},
                "reference": self.base_policy,
                "train": {"output_dir": str(d), "resume": resume, "seed": stage_seed(self.cfg.seed, r, "optimize")},
            }
            if live:
                forced["data"] = {"train": str(inputs["prompts"]), "eval": str(inputs["eval"])}
                forced |= live_optimize(self.cfg, self.annotation_db, f"{self.dir.name}-round-{r}", self.where)
                forced["gold"] = {"sources": [to_dict(s) for s in self.cfg.label.gold]}  # evaluation only
            elif online:
                forced["data"] = {"train": str(inputs["prompts"]), "eval": str(inputs["eval"])}
                forced["reward"] = optimize_reward(user, str(inputs["rm"]), self.where)  # the rm + the user's sources
                if self.cfg.label.source == "simulated" and not user.get("gold"):
                    forced["gold"] = {"sources": [to_dict(s) for s in self.cfg.label.gold]}
            else:
                rows = [row for i in range(1, r + 1) for row in _read(self.layout.prefs(i))]
                if not rows:
                    raise ConfigError(f"round {r} optimize: the label source gave no training pairs: {LABEL_MORE}")
                _write(d / "data" / "train.jsonl", rows)
                forced["data"] = {"train": str(d / "data" / "train.jsonl")}
            cfg = _stage_config(cls, user, forced, self.where, "optimize.")
            return _train(self.algo, cfg, r, "optimize", "" if online else f", or {LABEL_MORE}")

        settings: dict[str, Any] = {"optimize": self.cfg.optimize}
        if live:
            settings["live"] = to_dict(self.cfg.label.live) | {
                "db": self.annotation_db,
                "gold": to_dict(self.cfg.label)["gold"],
            }
            settings["raters_per_item"] = self.cfg.label.raters_per_item
        return Stage(r, "optimize", settings, inputs, ("model",), run)

    @property
    def annotation_db(self) -> str:
        return self.cfg.label.db or f"sqlite:///{self.layout.annotations_db}"

    def eval_stage(self, r: int) -> Stage:
        c = self.cfg.eval
        prompts = self.layout.prompts("eval")
        inputs = {"prompts": prompts, "policy": Path(self.policy(r)), "reference": Path(self.base_policy)}
        if r > 0:
            inputs["baseline"] = self.layout.eval_responses(0)
            inputs["rm"] = self.layout.model(r, "rm")
            inputs["heldout"] = self.layout.heldout(r)

        def run(d: Path, resume: bool) -> dict[str, Any]:
            from rlhfkit.pipeline.evaluate import evaluate_round  # loads torch: only when the stage runs

            return evaluate_round(self.cfg, self.layout, r, d, self.policy(r), self.base_policy, attributes)

        attributes = rater_attributes(self.cfg.label) if r > 0 else {}
        settings = to_dict(c) | {"gold": [to_dict(s) for s in self.cfg.label.gold]}
        if attributes:  # the audit's groups: a changed mapping re-evaluates
            settings["rater_attributes"] = attributes
        return Stage(r, "eval", settings, inputs, ("responses.jsonl", "eval.json"), run)

    def stages(self) -> Iterator[Stage]:
        yield self.prompts_stage()
        if self.cfg.sft:
            yield self.sft_stage()
        yield self.eval_stage(0)
        for r in range(1, self.cfg.rounds + 1):
            if self.cfg.label.live is not None:  # sampling and labelling happen inside the optimize stage
                yield self.optimize_stage(r)
                yield self.eval_stage(r)
                continue
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
