"""The run directory of `rlhfkit run`, known here and nowhere else:

RUN/manifest.json  pipeline.yaml  report.html  report.md  annotations.db
RUN/round-0/prompts/{train,eval}.jsonl      RUN/round-0/sft/model/          RUN/round-R/eval/{responses.jsonl,eval.json}
RUN/round-R/sample/{prompts,samples}.jsonl  RUN/round-R/label/{prefs,heldout}.jsonl
RUN/round-R/rm/model/                       RUN/round-R/optimize/{model/,metrics.jsonl}
RUN/round-R/optimize/live/{labels,events}.jsonl   (label.live: the live feed's logs, rlhfkit.feedback.live)
RUN/round-R/STAGE/stage.json                (every stage's record)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STAGES = ("sample", "label", "rm", "optimize", "eval")
"""The stages of one round, in order (round 0 runs prompts, sft and eval)."""
STAGE_ORDER = ("prompts", "sft", *STAGES)


@dataclass(frozen=True)
class RunLayout:
    dir: Path

    def stage_dir(self, round_: int, stage: str) -> Path:
        return self.dir / f"round-{round_}" / stage

    def file(self, round_: int, stage: str, name: str = "") -> Path:
        return self.stage_dir(round_, stage) / name

    def record(self, round_: int, stage: str) -> Path:
        return self.file(round_, stage, "stage.json")

    @property
    def manifest(self) -> Path:
        return self.dir / "manifest.json"

    @property
    def pipeline_file(self) -> Path:
        return self.dir / "pipeline.yaml"

    @property
    def annotations_db(self) -> Path:
        return self.dir / "annotations.db"

    # artifacts
    def prompts(self, split: str) -> Path:
        return self.file(0, "prompts", f"{split}.jsonl")

    def model(self, round_: int, stage: str) -> Path:
        return self.file(round_, stage, "model")

    def samples(self, round_: int) -> Path:
        return self.file(round_, "sample", "samples.jsonl")

    def prefs(self, round_: int) -> Path:
        return self.file(round_, "label", "prefs.jsonl")

    def heldout(self, round_: int) -> Path:
        return self.file(round_, "label", "heldout.jsonl")

    def eval_json(self, round_: int) -> Path:
        return self.file(round_, "eval", "eval.json")

    def eval_responses(self, round_: int) -> Path:
        return self.file(round_, "eval", "responses.jsonl")

    def optimize_metrics(self, round_: int) -> Path:
        return self.file(round_, "optimize", "metrics.jsonl")

    def live_log(self, round_: int, name: str) -> Path:
        """The live feed's `labels.jsonl` or `events.jsonl` of a round (written by the optimize stage's trainer)."""
        return self.file(round_, "optimize", f"live/{name}")

    # what is there
    def rounds(self, stage: str, name: str) -> list[int]:
        """Rounds whose `stage` directory holds `name`, in order."""
        found = [int(p.relative_to(self.dir).parts[0].split("-")[1]) for p in self.dir.glob(f"round-*/{stage}/{name}")]
        return sorted(found)

    def records(self) -> list[dict[str, Any]]:
        """Every stage.json, in run order (round, then stage order); unreadable ones are skipped."""
        order = {name: i for i, name in enumerate(STAGE_ORDER)}
        recs = []
        for p in self.dir.glob("round-*/*/stage.json"):
            try:
                recs.append(json.loads(p.read_text()))
            except json.JSONDecodeError:
                continue
        return sorted(recs, key=lambda r: (r.get("round", 0), order.get(r.get("stage"), 99)))
