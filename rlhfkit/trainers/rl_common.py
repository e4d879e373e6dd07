"""What every online RL trainer (online.py: PPO, GRPO, RLOO, REINFORCE++; online_dpo.py) does around its update:

    setup:    the policy, its frozen reference, the reward sources (raw; normalized here), optional gold sources, the
              prompts, the rollout engine and the KL controller
    collect:  1. sample num_samples responses per prompt from the current policy
              2. score them: reward sources -> running normalization -> clip -> missing-EOS penalty
    forward:  3. log pi_ref per response token (and log pi_old / values through the trainer's own function)
    evaluate: held-out prompts sampled, raw score, gold, KL(pi || ref) per sequence, length, EOS rate
    finish:   checkpoint state of the KL controller and the reward normalizer; the summary

Each trainer then reads as its own recipe of numbered steps on `trainers/step.py`'s optimizer step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rlhfkit.config import RLConfig
from rlhfkit.data import ChatFormatter, load_train_eval
from rlhfkit.kl import DomainKL, check_domains
from rlhfkit.models import Reference, build_reference
from rlhfkit.rewards import build_reward, check_reward_paths
from rlhfkit.rewards.base import Scores
from rlhfkit.rewards.preference import PreferenceConditioner, check_objectives
from rlhfkit.rewards.process import process_token_scores
from rlhfkit.rewards.sources import RunningNormalizer
from rlhfkit.rollout import (
    HFEngine,
    Prompt,
    Rollout,
    SamplingParams,
    encode_prompts,
    make_engine,
    response_logprobs,
    rollout_forward,
    sample_with_kl,
    sampling_params,
)
from rlhfkit.trainers.common import check_models, check_rows, finish_run, load_for_training, write_run_files
from rlhfkit.trainers.distributed import collective_guard, distributed_info, is_sharded
from rlhfkit.trainers.loop import DataOrder, LoopResult, Session, make_accelerator
from rlhfkit.trainers.sharding import check_online, policy_state, shard_online
from rlhfkit.trainers.zero import is_deepspeed


@dataclass
class OnlineRun:
    cfg: RLConfig
    out: Path
    policy: torch.nn.Module
    tokenizer: Any
    accelerator: Any
    reference: Reference
    reward: Any
    """Raw reward sources (normalization and clipping happen in `collect`, so held-out scores stay raw)."""
    normalizer: RunningNormalizer | None
    gold: Any
    prompts: list[Prompt]
    eval_prompts: list[Prompt]
    notes: list[str]
    order: DataOrder
    n_steps: int
    kl_ctl: DomainKL
    engine: HFEngine
    params: SamplingParams
    conditioner: PreferenceConditioner | None = None
    """Preference-vector policy: weights drawn per prompt and written into it; reward = w . r (None: off)."""
    gen_tokens: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    sharding: dict[str, str] = field(default_factory=dict)
    """Under FSDP / ZeRO: how the engine gets whole weights, where the frozen models live (sharding.shard_online)."""
    extra_state: dict[str, Callable[[], Any]] = field(default_factory=dict)
    """More checkpoint state, by key (e.g. online DPO's live feed); `resumed` holds what the checkpoint saved."""
    resumed: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def temperature(self) -> float:
        return self.params.logprob_temperature

    @property
    def identity(self) -> dict[str, Any]:
        """What a resumed run must share with the saved one."""
        tc = self.cfg.train
        world = self.accelerator.num_processes
        return {"batch_size": tc.batch_size, "processes": world, "seed": tc.seed, "rows": len(self.prompts)}


def setup_online(cfg: RLConfig, command: str) -> OnlineRun:
    """Models, reward sources, prompts, engine and KL controller of an online run (the output directory is written)."""
    tc, k = cfg.train, cfg.kl
    out = Path(tc.output_dir)
    train_ex, eval_ex, notes = load_train_eval(cfg.data, "prompt", tc.seed)  # validated before any model is loaded
    check_rows(len(train_ex), tc, "training prompts")
    domains = [ex.domain for ex in train_ex]
    notes += check_domains(cfg.kl.per_domain, domains, cfg.data.train)
    check_models(cfg.model, cfg.reference)
    check_reward_paths(cfg.reward, "reward")
    check_reward_paths(cfg.gold, "gold")
    check_online(tc, cfg.sharding)
    write_run_files(out, cfg, command)
    policy, tokenizer = load_for_training(cfg.model, "causal", tc.seed)
    accelerator = make_accelerator(tc)
    device = accelerator.device
    reference = build_reference(policy, cfg.model, cfg.reference, True, device)
    raw_cfg = replace(cfg.reward, normalize=False, clip=None)  # no sources: people decide (online DPO's live feed)
    reward = build_reward(raw_cfg, device=str(device), dtype=cfg.model.dtype) if cfg.reward.sources else None
    gold = build_reward(cfg.gold, device=str(device), dtype=cfg.model.dtype) if cfg.gold.sources else None
    fmt = ChatFormatter(tokenizer, cfg.data.max_length, cfg.data.prompt_length, cfg.data.truncation)
    prompts, eval_prompts = encode_prompts(train_ex, fmt), encode_prompts(eval_ex, fmt)[: cfg.eval_samples]
    notes.append(f"prompt truncation: {fmt.report}")
    conditioner = PreferenceConditioner(cfg.preference, fmt) if cfg.preference.objectives else None
    if conditioner is not None:
        check_objectives(reward, conditioner.objectives)
    order = DataOrder(len(prompts), tc.batch_size * accelerator.num_processes, tc.seed)
    n_steps = tc.max_steps if tc.max_steps > 0 else max(1, math.ceil(tc.epochs * order.steps_per_epoch))
    run = OnlineRun(
        cfg=cfg,
        out=out,
        policy=policy,
        tokenizer=tokenizer,
        accelerator=accelerator,
        reference=reference,
        reward=reward,
        normalizer=RunningNormalizer() if cfg.reward.normalize else None,
        gold=gold,
        prompts=prompts,
        eval_prompts=eval_prompts,
        notes=notes,
        order=order,
        n_steps=n_steps,
        kl_ctl=DomainKL(k.controller, k.coef, k.target, k.horizon, k.per_domain, k.per_domain_target, domains),
        engine=make_engine(policy, tokenizer, cfg.sampling),
        params=sampling_params(cfg.sampling),
        conditioner=conditioner,
    )
    if is_sharded(accelerator) or is_deepspeed(accelerator):  # before the session shards the policy
        run.sharding = shard_online(run, cfg.sharding.rollout, cfg.sharding.frozen)
    return run


def collect(run: OnlineRun, step: int) -> tuple[Rollout, Tensor, Scores]:
    """Steps 1-2: this process's prompts of `step`, sampled and scored -> (rollout with .scores, raw scores, parts)."""
    cfg, tc, a = run.cfg, run.cfg.train, run.cfg.algo
    rank, device = run.accelerator.process_index, run.device
    t = time.perf_counter()
    rows = run.order.rows_for_step(step)[rank * tc.batch_size : (rank + 1) * tc.batch_size]
    batch_prompts = policy_prompts = [run.prompts[i] for i in rows]
    if run.conditioner is not None:  # a weight vector per prompt, written into it (seeded by the step: resumable)
        policy_prompts, weights = run.conditioner.prepare(batch_prompts, (tc.seed, step, rank))
    ro = run.engine.generate([p.ids for p in policy_prompts], run.params, a.num_samples).to(device)
    run.timings["generate"] = time.perf_counter() - t
    run.gen_tokens += int(ro.response_mask.sum()) * run.accelerator.num_processes

    t = time.perf_counter()
    scored = run.reward([p.messages for p in batch_prompts for _ in range(a.num_samples)], ro.texts)
    if run.conditioner is not None:  # reward = w . r, each sample under its prompt's weights
        scored.total = run.conditioner.reward(scored, weights.repeat_interleave(a.num_samples, 0))
    raw = scored.total.to(device).float()
    scores = raw
    if run.normalizer is not None:  # statistics over every process's scores, so all ranks standardize alike
        run.normalizer.update(run.accelerator.gather(raw))
        scores = run.normalizer.standardize(raw).to(device)
    if cfg.reward.clip is not None:
        scores = scores.clamp(-cfg.reward.clip, cfg.reward.clip)
    if a.missing_eos_penalty is not None:
        scores = scores - a.missing_eos_penalty * (~ro.finished).float()
    ro.scores = scores
    if a.reward_placement == "process":  # each step's reward at its end token, the missing-EOS penalty on the last
        args = (ro.texts, ro.response_ids, ro.response_mask, run.tokenizer, scores - raw)
        ro.token_scores, ro.step_mask = process_token_scores(scored, *args)
    # the KL coefficient of each sequence: its domain's controller's, larger where an ensemble of reward models disagrees
    ro.domain = run.kl_ctl.index([p.domain for p in batch_prompts for _ in range(a.num_samples)]).to(device)
    coef = run.kl_ctl.coefs(ro.domain)
    if cfg.kl.uncertainty_scale > 0 and scored.uncertainty is not None:
        coef = coef * (1.0 + cfg.kl.uncertainty_scale * scored.uncertainty.to(device).float())
    ro.kl_coef = coef
    run.timings["score"] = time.perf_counter() - t
    return ro, raw, scored


def reference_logprobs(run: OnlineRun, ro: Rollout, micro: int) -> Tensor:
    """Step 3: log pi_ref (B, R) of the sampled tokens, under the same autocast as the update's forward."""

    m = run.cfg.model

    def fn(mb: Rollout) -> tuple[Tensor, None]:
        with run.reference() as ref_model:
            return response_logprobs(ref_model, mb, run.temperature, m.fused_head, m.padding_free), None

    with run.accelerator.autocast():
        return rollout_forward(fn, ro, micro)[0]


@torch.no_grad()
def evaluate(run: OnlineRun, micro: int) -> dict[str, float]:
    """Held-out prompts, one sample each: mean raw score (and gold), KL(pi || ref) per sequence, length, EOS rate."""
    if not run.eval_prompts:
        return {}
    prompts, c = run.eval_prompts, run.conditioner
    if c is not None:  # the preference-vector policy under equal weights (`rlhfkit pareto` sweeps the others)
        prompts, weights = c.prepare(prompts, weights=c.uniform())
    ro, kl = sample_with_kl(run.engine, [p.ids for p in prompts], run.params, run.reference, micro)
    messages = [p.messages for p in prompts]
    scored = run.reward(messages, ro.texts) if run.reward is not None else None  # None: people decide (live)
    out = {
        **(
            {"score": float((scored.total if c is None else c.reward(scored, weights)).mean())}
            if scored is not None
            else {}
        ),
        **(c.means(scored) if c is not None and scored is not None else {}),
        "kl": float(kl.mean()),
        "response_length": float(ro.response_lengths.mean()),
        "finished": float(ro.finished.float().mean()),
    }
    if run.gold is not None:
        out["gold"] = float(run.gold(messages, ro.texts).total.mean())
    out |= run.kl_ctl.report(kl, [p.domain for p in prompts])  # per domain, when prompts carry one
    return out


def checkpoint_state(run: OnlineRun) -> dict[str, Any]:
    """What an online checkpoint adds to the session's: the KL controllers and the reward normalizer."""
    return {
        **run.kl_ctl.state_dict(),
        "reward_normalizer": run.normalizer and run.normalizer.state_dict(),
        **{key: state() for key, state in run.extra_state.items()},
    }


def on_diverge(run: OnlineRun, session: Session, step: int, rows: list[int]) -> Callable[[str, float], Exception]:
    """The optimizer step's divergence callback: a divergence mid-rollout saves the weights before this update under
    a name `--resume` does not pick up, and the error names it."""

    def diverged(what: str, value: float) -> Exception:
        name = f"diverged-step-{step:06d}"
        return session.diverged(step, what, value, rows, checkpoint_state(run), name)

    return diverged


def restore(run: OnlineRun, session: Session) -> int:
    """Resume (or start): returns the first rollout step to run."""
    state = session.resume()
    if not state:
        return 0
    run.resumed = state
    run.kl_ctl.load_state_dict(state)
    if run.normalizer is not None and state.get("reward_normalizer"):
        run.normalizer.load_state_dict(state["reward_normalizer"])
    return int(state["step"])


def base_metrics(run: OnlineRun, ro: Rollout, raw: Tensor, scored: Scores, kl_mean: float, t0: float) -> dict:
    """The per-rollout metrics every online trainer logs."""
    out = {
        "score": float(raw.mean()),
        "score_std": float(raw.std()) if len(raw) > 1 else 0.0,
        "reward": float(ro.scores.mean()),
        "kl": kl_mean,
        "response_length": float(ro.response_lengths.mean()),
        "finished": float(ro.finished.float().mean()),
        "gen_tokens_per_s": run.gen_tokens / max(time.perf_counter() - t0, 1e-9),
        **{f"time/{k}": v for k, v in run.timings.items()},
    }
    for name, part in scored.parts.items():
        out[f"score/{name}"] = float(part.float().mean())
    return out


def finish_online(
    run: OnlineRun,
    session: Session,
    start: int,
    t0: float,
    last: dict[str, float],
    before: dict[str, float],
    micro: int,
) -> dict[str, Any]:
    """Final evaluation, checkpoint, summary (main process only)."""
    with collective_guard(session.rank, run.n_steps, run.cfg.train.collective_timeout):
        evals = evaluate(run, micro)
        session.log(run.n_steps, "eval", evals)
        if run.n_steps > start:
            session.checkpoint(run.n_steps, checkpoint_state(run))
        state = policy_state(session.accelerator, session.model)
    seconds = time.perf_counter() - t0
    session.close()
    if not session.is_main:
        return {}
    tok_s = run.gen_tokens / max(seconds, 1e-9)
    info = distributed_info(run.accelerator) | run.sharding
    result = LoopResult(run.n_steps, seconds, last, evals, tok_s, True, session.world, info, state)
    extra, name = {f"before/{k}": v for k, v in before.items()}, run.cfg.algo.name
    rows = (len(run.prompts), len(run.eval_prompts))
    return finish_run(run.out, name, run.policy, run.tokenizer, result, run.notes, *rows, eval_extra=extra, algo=name)


def pair_rows(scores: Tensor, group_size: int) -> list[int]:
    """Row indices [best_0, worst_0, best_1, worst_1, ...] of every group whose scores are not all equal."""
    rows = []
    for g, s in enumerate(scores.view(-1, group_size)):
        if s.max() > s.min():
            rows += [g * group_size + int(s.argmax()), g * group_size + int(s.argmin())]
    return rows


def mini_batches(n_rows: int, mini: int, micro: int, pairs: bool = False) -> list[list[Tensor]]:
    """One epoch: a random permutation of the rows cut into mini-batches (optimizer steps) of micro-batches (forwards).
    pairs=True keeps rows (2i, 2i+1) together (a (chosen, rejected) pair)."""
    if pairs:
        perm = (torch.randperm(n_rows // 2) * 2).repeat_interleave(2) + torch.arange(n_rows) % 2
    else:
        perm = torch.randperm(n_rows)
    out = []
    for m0 in range(0, n_rows, max(mini, 1)):
        rows = perm[m0 : m0 + mini]
        out.append([rows[i : i + micro] for i in range(0, len(rows), micro)])
    return out


def micro_sizes(micro: Sequence[Tensor]) -> list[int]:
    return [len(m) for m in micro]
