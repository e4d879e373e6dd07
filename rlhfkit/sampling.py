"""`rlhfkit sample`: N responses per prompt, scored by any reward source; best-of-N and rejection-sampling data.

Output rows (JSONL), by `format`:
- samples: {"prompt", "responses": [...], "scores": [...]} (scores only with a reward source); with best_of, the
  single best response and its score.
- sft: {"prompt", "response"} with each prompt's best response: rejection-sampling fine-tuning data for `rlhfkit sft`.
- prefs: {"prompt", "chosen", "rejected", "strength"}: best vs worst response, for `rlhfkit rm` / `rlhfkit dpo`.
With `preference.objectives` (sft or prefs), the rows are preference-conditioned: per prompt and drawn weight vector
w, the prompt carries w's tag and "best" / "worst" are under w . r; the rows also hold "weights" (as the tag shows
them) and "objectives" (each response's score per objective, in `preference.objectives` order).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from torch import Tensor

from rlhfkit.config import SampleConfig
from rlhfkit.data import ChatFormatter, load_examples, resolve_data_path, write_jsonl
from rlhfkit.data.schemas import PromptExample
from rlhfkit.models import check_model_path, load_for_inference
from rlhfkit.rewards import build_reward, check_reward_paths
from rlhfkit.rewards.base import Scores
from rlhfkit.rewards.preference import PreferenceConditioner, check_objectives, objective_scores, scalarize
from rlhfkit.rollout import encode_prompts, make_engine, sampling_params
from rlhfkit.rollout.prompts import Prompt, condition_messages
from rlhfkit.seeding import set_seed


def sample(cfg: SampleConfig) -> dict[str, Any]:
    if not cfg.data.train:
        raise FileNotFoundError("data.train is empty: give a prompt file, e.g. data.train=prompts.jsonl")
    out = Path(cfg.output)
    if out.exists() and not cfg.overwrite:  # checked before anything is loaded: earlier samples are never lost
        raise FileExistsError(f"{out} already exists: choose another -o, or replace it with overwrite=true")
    # the prompts, validated before the model is loaded
    examples = load_examples(
        resolve_data_path(cfg.data.train), "prompt", errors="skip" if cfg.data.skip_invalid else "raise"
    )
    if cfg.data.max_rows is not None:
        examples = examples[: cfg.data.max_rows]
    m = cfg.model
    check_model_path(m.name_or_path, "model.name_or_path")
    check_reward_paths(cfg.reward)
    set_seed(cfg.seed)
    model, tokenizer = load_for_inference(m.name_or_path, m.dtype, trust_remote_code=m.trust_remote_code)
    device = next(model.parameters()).device
    reward = build_reward(cfg.reward, device=str(device), dtype=m.dtype) if cfg.reward.sources else None
    fmt = ChatFormatter(tokenizer, cfg.data.max_length, cfg.data.prompt_length, cfg.data.truncation)
    prompts = encode_prompts(examples, fmt)
    conditioner = None
    if reward is not None and cfg.preference.objectives:  # checked before sampling: each objective names a part
        conditioner = PreferenceConditioner(cfg.preference, fmt)
        check_objectives(reward, conditioner.objectives)
    engine = make_engine(model, tokenizer, cfg.sampling)

    t0 = time.perf_counter()
    n = cfg.num_samples
    ro = engine.generate([p.ids for p in prompts], sampling_params(cfg.sampling), n)
    gen_seconds = time.perf_counter() - t0
    scored = None if reward is None else reward([p.messages for p in prompts for _ in range(n)], ro.texts)
    scores = None if scored is None else scored.total.view(len(prompts), n)
    if scored is not None and conditioner is not None:
        rows = conditioned_rows(cfg, conditioner, prompts, ro.texts, scored)
    else:
        rows = plain_rows(cfg, prompts, ro.texts, scores)
    # written beside the target and renamed, so an interrupted write never leaves a half file under the final name
    tmp = out.with_name(f".partial-{out.name}")  # same suffix: .gz stays gzip
    write_jsonl(tmp, rows)
    tmp.replace(out)
    n_tokens = int(ro.response_mask.sum())
    summary: dict[str, Any] = {
        "output": str(out),
        "rows": len(rows),
        "prompts": len(prompts),
        "samples_per_prompt": n,
        "generated_tokens_per_s": round(n_tokens / max(gen_seconds, 1e-9), 1),
        "mean_length": round(float(ro.response_lengths.mean()), 2),
    }
    if scores is not None and not cfg.preference.objectives:  # one total per response means nothing under a vector
        summary["mean_score"] = round(float(scores.mean()), 4)
        summary["best_of_n_score"] = round(float(scores.max(dim=1).values.mean()), 4)
    print(" ".join(f"{k}={v}" for k, v in summary.items()))
    return summary


def plain_rows(cfg: SampleConfig, prompts: list[Prompt], texts: list[str], scores: Tensor | None) -> list[dict]:
    """The rows of `format` (module docstring), one per prompt (none for a prefs prompt without a preference)."""
    n, rows = cfg.num_samples, []
    for i, p in enumerate(prompts):
        mine = texts[i * n : (i + 1) * n]
        prompt = PromptExample(p.messages).to_row()["prompt"]
        if scores is None:
            rows.append({"prompt": prompt, "responses": mine})
            continue
        s = scores[i].tolist()
        best, worst = max(range(n), key=s.__getitem__), min(range(n), key=s.__getitem__)
        if cfg.format == "sft":
            rows.append({"prompt": prompt, "response": mine[best], "score": s[best]})
        elif cfg.format == "prefs":
            row = _pair(prompt, mine, s, best, worst)
            if row:
                rows.append(row)
        elif cfg.best_of:
            rows.append({"prompt": prompt, "response": mine[best], "score": s[best], "n": n})
        else:
            rows.append({"prompt": prompt, "responses": mine, "scores": s})
    return rows


def conditioned_rows(
    cfg: SampleConfig, conditioner: PreferenceConditioner, prompts: list[Prompt], texts: list[str], scored: Scores
) -> list[dict]:
    """Preference-conditioned sft / prefs rows: for each prompt, `weights_per_prompt` vectors w drawn as an online
    run draws them (seeded by (seed, prompt index)); the tagged prompt with the best response under w . r, or best vs
    worst. The responses were sampled from the untagged prompt, so every w ranks the same samples."""
    n, m = cfg.num_samples, cfg.weights_per_prompt
    values = objective_scores(scored, conditioner.objectives).view(len(prompts), n, -1)  # (P, n, K)
    rows = []
    for i, p in enumerate(prompts):
        weights = conditioner.draw(m, (cfg.seed, i))  # as an online run draws a prompt's weights
        mine = texts[i * n : (i + 1) * n]
        for w in weights:
            s = scalarize(values[i], w).tolist()  # w . r of each response
            prompt = PromptExample(condition_messages(p.messages, conditioner.tag(w.tolist()))).to_row()["prompt"]
            best, worst = max(range(n), key=s.__getitem__), min(range(n), key=s.__getitem__)
            extra = {"weights": [round(float(x), 6) for x in w], "objectives": values[i].tolist()}
            if cfg.format == "sft":
                rows.append({"prompt": prompt, "response": mine[best], "score": s[best], **extra})
            else:
                row = _pair(prompt, mine, s, best, worst)
                if row:
                    rows.append(row | extra)
    return rows


def _pair(prompt: Any, texts: list[str], s: list[float], best: int, worst: int) -> dict | None:
    """Best vs worst as a preference row; None when equal scores or texts carry no preference."""
    if s[best] > s[worst] and texts[best] != texts[worst]:
        return {"prompt": prompt, "chosen": texts[best], "rejected": texts[worst], "strength": s[best] - s[worst]}
    return None
