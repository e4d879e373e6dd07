"""Online DPO: DPO (Rafailov et al. 2023 eq. 7) on the policy's own samples ranked by the reward (Guo et al. 2024,
online AI feedback; Xiong et al. 2024, iterative DPO).

Each rollout step:

    1. rollout: sample num_samples responses per prompt from the current policy          (rl_common.collect)
    2. score: reward sources -> (B,) scores (running normalization, clip, missing-EOS penalty)
    3. pairs: each prompt's best and worst sample (prompts whose samples all score the same give none); every
       process trains on the same number of pairs, so DDP steps in lockstep
    4. log pi_ref of the paired responses (no gradients)
    5. epochs over mini-batches of pairs, each ONE optimizer step (trainers/step.py) on the DPO loss
    6. log (KL of the samples to the reference for the logs); evaluate; checkpoint

With live feedback (live.db set) steps 1-3 are people's: pairs of the current policy's samples stream to an annotation
campaign and each step trains on the pairs labelled since the last, weighted by staleness (rlhfkit.feedback.live).

The scheduler counts the optimizer steps actually taken: ceil(pairs / pairs per mini-batch) per epoch, with at most
one pair per prompt of the rollout batch.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import Tensor

from rlhfkit.config import OnlineDPOConfig, to_dict
from rlhfkit.data.schemas import PromptExample
from rlhfkit.feedback.live import LabelledPair, LiveFeed, LiveTimeout, SampledPair
from rlhfkit.losses import PREFERENCE_LOSSES
from rlhfkit.losses.policy import rollout_mismatch_stats
from rlhfkit.models.value import PolicyWithValue
from rlhfkit.rollout import Rollout, rollout_forward, rollout_from_ids
from rlhfkit.trainers import rl_common
from rlhfkit.trainers.distributed import collective_guard
from rlhfkit.trainers.loop import Session


def online_dpo_loss(
    module: Any, batch: tuple[Rollout, Tensor], beta: float, temperature: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """Rows come as (chosen, rejected) neighbours, with one weight (P,) per pair -> (weighted loss summed over pairs,
    stats); the step divides by the summed weights."""
    mb, weights = batch
    logp, _, _ = module(mb.input_ids, mb.attention_mask, mb.position_ids, mb.response_ids, temperature, values=False)
    logp = logp * mb.response_mask
    seq, ref = logp.sum(-1), (mb.ref_logprobs * mb.response_mask).sum(-1)
    losses, r_c, r_r = PREFERENCE_LOSSES["dpo"](seq[0::2], seq[1::2], ref[0::2], ref[1::2], beta=beta)
    stats = {"dpo/accuracy": (r_c > r_r).float().mean().detach(), "dpo/margin": (r_c - r_r).mean().detach()}
    return (losses * weights).sum(), stats


def _sample_pairs(run: rl_common.OnlineRun, rows: list[int]) -> list[SampledPair]:
    """Two responses of the current policy to each prompt `rows[i]`, for the raters."""
    ro = run.engine.generate([run.prompts[i].ids for i in rows], run.params, 2)
    ids = [r[m.bool()].tolist() for r, m in zip(ro.response_ids, ro.response_mask)]
    return [
        SampledPair(
            i,
            PromptExample(run.prompts[i].messages).to_row()["prompt"],
            tuple(ro.texts[2 * j : 2 * j + 2]),
            (ids[2 * j], ids[2 * j + 1]),
        )  # fmt: skip
        for j, i in enumerate(rows)
    ]


def _pairs_rollout(run: rl_common.OnlineRun, pairs: list[LabelledPair]) -> Rollout:
    rows = [run.prompts[p.prompt_index].ids for p in pairs for _ in range(2)]
    responses = [r for p in pairs for r in (p.chosen, p.rejected)]
    return rollout_from_ids(rows, responses, run.engine.pad_id, run.engine.eos_ids).to(run.device)


def _policy_logprobs(policy: Any, mb: Rollout, temperature: float) -> torch.Tensor:
    """log pi (B, R) of a mini-batch's response tokens."""
    return policy(mb.input_ids, mb.attention_mask, mb.position_ids, mb.response_ids, temperature)[0]


def train_online_dpo(cfg: OnlineDPOConfig) -> dict[str, Any]:
    """Optimize cfg.model with DPO on (best, worst) pairs of its own samples scored by cfg.reward, or on pairs people
    label while it trains (cfg.live)."""
    a, tc = cfg.algo, cfg.train
    live = LiveFeed(cfg.live, tc.output_dir, tc.seed) if cfg.live.enabled else None  # raters checked before models
    run = rl_common.setup_online(cfg, a.name)
    acc, device = run.accelerator, run.device
    if live is not None:
        if acc.num_processes > 1:
            raise ValueError("live feedback runs in one process: launch it without accelerate / torchrun")
        run.extra_state["live"] = live.state
    module = PolicyWithValue(run.policy, "none", fused=cfg.model.fused_head, padding_free=cfg.model.padding_free)
    module = module.to(device)
    mini_pairs = max((a.mini_batch_size or tc.batch_size * a.num_samples) // 2, 1)
    micro_pairs = max((tc.micro_batch_size or 2 * mini_pairs) // 2, 1)
    # at most one pair per prompt: the scheduler's length counts the optimizer steps that can happen
    n_updates = run.n_steps * a.epochs * math.ceil(tc.batch_size / mini_pairs)
    groups = [{"params": [p for p in module.parameters() if p.requires_grad], "lr": tc.lr}]
    session = Session(tc, run.out, module, groups, n_updates, run.identity, acc, to_dict(cfg), run.n_steps)
    model, unwrapped = session.model, acc.unwrap_model(session.model)
    start = rl_common.restore(run, session)
    if live is not None:
        live.restore(run.resumed.get("live"), start, len(run.prompts), tc.resume)
    micro = 2 * micro_pairs

    with collective_guard(acc.process_index, 0, tc.collective_timeout):
        before = rl_common.evaluate(run, micro) if start == 0 else {}
    session.log(0, "eval", before)
    bar = session.progress(start, run.n_steps)
    t0, last = time.perf_counter(), {}
    for step in range(start, run.n_steps):
        with collective_guard(acc.process_index, step + 1, tc.collective_timeout):  # a hung peer: an error
            if live is None:
                # 1-2. rollout, score
                ro, raw, scored = rl_common.collect(run, step)

                # 3. (best, worst) pairs, the same number on every process
                pairs = rl_common.pair_rows(ro.scores, a.num_samples)
                # the fewest over processes: accelerate's reduce has no "min" (it summed), so the max of the negatives
                n_pairs = -int(acc.reduce(torch.tensor(-(len(pairs) // 2), device=device), "max").item())
                weights = torch.ones(n_pairs, device=device)
            else:
                # 1-3. pairs people labelled (this policy's samples stream to them meanwhile), weighted by staleness
                try:
                    got = live.next_batch(step, lambda rows: _sample_pairs(run, rows))
                except LiveTimeout as e:
                    saved = session.checkpoint(step, rl_common.checkpoint_state(run))
                    raise LiveTimeout(f"{e}; saved {saved}: run again with --resume to continue") from None
                ro, n_pairs, pairs = _pairs_rollout(run, got), len(got), list(range(2 * len(got)))
                weights = torch.tensor([p.weight for p in got], device=device)
            train_ro = ro.select(pairs[: 2 * n_pairs])

            # 4. log pi_ref of every sample (the pairs' for the loss, all of them for the logged KL)
            t = time.perf_counter()
            ro.ref_logprobs = rl_common.reference_logprobs(run, ro, micro)
            with acc.autocast(), torch.no_grad():
                logp = rollout_forward(lambda mb: (_policy_logprobs(unwrapped, mb, run.temperature), None), ro, micro)[
                    0
                ]
            train_ro.ref_logprobs = ro.ref_logprobs[torch.as_tensor(pairs[: 2 * n_pairs], dtype=torch.long)]
            run.timings["forward"] = time.perf_counter() - t

            # 5. epochs over mini-batches of pairs
            t = time.perf_counter()
            stat_sums: dict[str, float] = {}
            n_now, loss_sum, grad_norm = 0, 0.0, float("nan")
            for _epoch in range(a.epochs if n_pairs else 0):
                for mb in rl_common.mini_batches(2 * n_pairs, 2 * mini_pairs, micro, pairs=True):
                    batches = [(train_ro.select(m).trimmed(), weights[m[0::2].to(device) // 2]) for m in mb]
                    rows = torch.cat(mb).tolist()
                    result = session.step(
                        batches,
                        [float(w.sum()) for _, w in batches],
                        rl_common.micro_sizes(mb),
                        lambda b: online_dpo_loss(model, b, a.dpo_beta, run.temperature),
                        rl_common.on_diverge(run, session, step, rows),
                    )
                    n_now, loss_sum, grad_norm = n_now + 1, loss_sum + result.loss, result.grad_norm
                    for k, v in result.metrics.items():
                        stat_sums[k] = stat_sums.get(k, 0.0) + v
            run.timings["train"] = time.perf_counter() - t

            # 6. logs, evaluation, checkpoint
            seq_kl = ((logp - ro.ref_logprobs) * ro.response_mask).sum(-1)
            kl_mean = acc.reduce(seq_kl.mean().float(), "mean").item()
            lp_rollout = ro.rollout_logprobs  # the engine's log-probs vs the training forward's (logged only)
            mismatch = rollout_mismatch_stats(logp, lp_rollout, ro.response_mask) if lp_rollout is not None else {}
            # KL per prompt domain for the logs only: the DPO beta, not a KL coefficient, holds the policy here
            per_domain = (
                run.kl_ctl.update(seq_kl.float(), ro.domain, lambda t: acc.reduce(t, "sum"), adapt=False)
                if ro.domain is not None
                else {}
            )
            done = step + 1
            if live is None:
                last = rl_common.base_metrics(run, ro, raw, scored, kl_mean, t0)
            else:
                ages = [p.age for p in got]
                last = {"kl": kl_mean, **{f"live/{k}": v for k, v in live.metrics().items()}}
                last |= {"live/staleness_mean": sum(ages) / len(ages), "live/weight_mean": float(weights.mean())}
            last |= {
                "pairs": float(n_pairs),
                "loss": loss_sum / max(n_now, 1),
                "lr": session.scheduler.get_last_lr()[0],
                "grad_norm": grad_norm,
                "updates": n_now,
                **{k: v / max(n_now, 1) for k, v in stat_sums.items()},
                **{k: float(v) for k, v in mismatch.items()},
                **per_domain,
            }
            if done % tc.log_every == 0 or done == run.n_steps:
                session.log(done, "train", last)
            bar.set_postfix(score=f"{last.get('score', math.nan):.3f}", kl=f"{last['kl']:.2f}", pairs=n_pairs)
            bar.update(1)
            if tc.eval_every and done % tc.eval_every == 0 and done < run.n_steps:
                session.log(done, "eval", rl_common.evaluate(run, micro))
            if tc.save_every and done % tc.save_every == 0 and done < run.n_steps:
                session.checkpoint(done, rl_common.checkpoint_state(run))
    bar.close()
    return rl_common.finish_online(run, session, start, t0, last, before, micro)
