"""`rlhfkit run PIPELINE.yaml`: the closed RLHF loop as a small graph of stages with artifacts and a manifest.

    round 0:  prompts -> sft -> eval (the baseline)
    round r:  sample (K responses per prompt from the newest policy) -> label (simulated | judge | human | file)
              -> rm (on every label so far) -> optimize (ppo | grpo | rloo | reinforce | online-dpo | dpo) -> eval
    finally:  report.html + report.md

config.py     the pipeline's settings, validated at load
layout.py     the run directory (known there only)
runner.py     the content-hash stage runner and stage records
stages.py     the stages; labellers.py who labels; evaluate.py the eval stage; report.py the report's data
run.py        running a pipeline, the status table; cli.py `rlhfkit run` / `status`; eval_cli.py `rlhfkit eval` / `report`
"""

from rlhfkit.pipeline.config import DEMO_PIPELINE, LABEL_SOURCES, PipelineConfig, load_pipeline
from rlhfkit.pipeline.layout import STAGES, RunLayout
from rlhfkit.pipeline.run import run_pipeline, status_table
from rlhfkit.pipeline.runner import Runner, Stage, hash_path, stage_records, stage_seed
from rlhfkit.pipeline.stages import Pipeline

__all__ = [
    "DEMO_PIPELINE",
    "LABEL_SOURCES",
    "STAGES",
    "Pipeline",
    "PipelineConfig",
    "RunLayout",
    "Runner",
    "Stage",
    "hash_path",
    "load_pipeline",
    "run_pipeline",
    "stage_records",
    "stage_seed",
    "status_table",
]
