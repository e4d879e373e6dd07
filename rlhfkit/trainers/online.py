"""Online RL with policy-gradient updates: PPO (critic + GAE), GRPO, RLOO and REINFORCE++ in one recipe.

Each rollout step:

    1. rollout: sample num_samples responses per prompt from the current policy          (rl_common.collect)
    2. score: reward sources -> (B,) scores (running normalization, clip, missing-EOS penalty)
    3. forward without gradients: log pi_old, values, log pi_ref per response token
    4. per-token KL to the reference; token rewards = score at the last token (or each step's reward at its end
       token: algo.reward_placement=process) - kl_coef * KL (placement=reward)
    5. advantages: GAE + whitening (ppo), group-normalized (grpo), leave-one-out (rloo), whitened return-to-go
       (reinforce: REINFORCE++); whitening statistics are global over every process
    6. epochs over mini-batches, each ONE optimizer step (trainers/step.py): clipped surrogate + clipped value loss
       - entropy bonus (+ kl_coef * KL for placement=loss, with k2's gradient); early stop on approximate KL
    7. adapt kl_coef toward the target KL (each kl.per_domain domain's toward its own); log; evaluate; checkpoint

The algorithms differ only in step 5, one entry each in `ADVANTAGES`. Online DPO has its own recipe (online_dpo.py).
Checkpoints hold the policy and critic weights, optimizer, scheduler, KL controller, reward normalizer, RNG and the
prompt position, so `--resume` continues the same run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from rlhfkit.advantages import (
    broadcast_to_tokens,
    gae,
    group_normalized,
    group_process_advantages,
    leave_one_out,
    reinforce_pp,
)
from rlhfkit.advantages import whiten_advantages as _whiten
from rlhfkit.config import AlgoConfig, ConfigError, RLConfig, to_dict
from rlhfkit.kl import kl_loss_term, per_token_kl_penalty, shape_rewards
from rlhfkit.losses import aggregate_sum_and_count
from rlhfkit.losses.policy import ppo_clip_loss, rollout_mismatch_stats
from rlhfkit.losses.value import clipped_value_loss, explained_variance
from rlhfkit.models import load_reward_model
from rlhfkit.models.value import PolicyWithValue
from rlhfkit.ops import masked_mean
from rlhfkit.rollout import Rollout, rollout_forward
from rlhfkit.trainers import rl_common
from rlhfkit.trainers.distributed import collective_guard
from rlhfkit.trainers.loop import Session

# ----------------------------------------------------------------------------------------------------------------------
# step 5: advantages, one function per algorithm: (rollout, token rewards (B, R), algo config, all_reduce) ->
# (advantages, returns); all_reduce sums a tensor over processes, so whitening is global


AllReduce = Callable[[Tensor], Tensor]
"""Sums a tensor over processes (None: one process)."""


def _adv_ppo(
    ro: Rollout, token_rewards: Tensor, a: AlgoConfig, reduce: AllReduce | None = None
) -> tuple[Tensor, Tensor | None]:
    adv, returns = gae(token_rewards, ro.values, ro.response_mask, a.gamma, a.lam)  # Schulman et al. 2016
    return (_whiten(adv, ro.response_mask, all_reduce=reduce) if a.whiten_advantages else adv), returns


def _adv_grpo(
    ro: Rollout, token_rewards: Tensor, a: AlgoConfig, reduce: AllReduce | None = None
) -> tuple[Tensor, Tensor | None]:
    if a.reward_placement == "process":  # normalized step rewards summed over the steps still ahead (Shao §4.1.3)
        adv = group_process_advantages(
            token_rewards, ro.step_mask, ro.response_mask, a.num_samples, 1e-6, a.scale_by_std
        )
        return adv, None
    seq = token_rewards.sum(-1)  # the score (minus the summed KL penalty when it is placed in the reward)
    adv = group_normalized(seq, a.num_samples, scale_by_std=a.scale_by_std)  # Shao et al. 2024 eq. 3
    return broadcast_to_tokens(adv, ro.response_mask), None


def _adv_rloo(
    ro: Rollout, token_rewards: Tensor, a: AlgoConfig, reduce: AllReduce | None = None
) -> tuple[Tensor, Tensor | None]:
    adv = broadcast_to_tokens(leave_one_out(token_rewards.sum(-1), a.num_samples), ro.response_mask)  # Ahmadian 2024
    return (_whiten(adv, ro.response_mask, all_reduce=reduce) if a.whiten_advantages else adv), None


def _adv_reinforce_pp(ro: Rollout, token_rewards: Tensor, a: AlgoConfig, reduce: AllReduce | None = None):
    return reinforce_pp(token_rewards, ro.response_mask, a.gamma, all_reduce=reduce), None  # Hu 2025


ADVANTAGES: dict[str, Callable[..., tuple[Tensor, Tensor | None]]] = {
    "ppo": _adv_ppo,
    "grpo": _adv_grpo,
    "rloo": _adv_rloo,
    "reinforce": _adv_reinforce_pp,  # REINFORCE++
}


# ----------------------------------------------------------------------------------------------------------------------
# step 6: the update's loss on one micro-batch -> (summed loss, stats)


@dataclass
class UpdateContext:
    algo: AlgoConfig
    kl_estimator: str
    kl_in_loss: bool
    temperature: float
    reuse_old: bool
    """One epoch, one mini-batch: the rollout policy IS the current policy, so old log-probs are the new ones detached
    (saves a forward pass)."""
    log_ratio_clip: float | None = None


def policy_gradient_loss(module: Any, mb: Rollout, ctx: UpdateContext) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """Clipped surrogate (Schulman et al. 2017 eq. 7) + value loss - entropy bonus (+ KL in the loss): (sum, count,
    stats)."""
    a, mask = ctx.algo, mb.response_mask
    valid = mask.bool()
    # (B, R) each; from hidden states chunk by chunk unless model.fused_head=false
    logp, entropy, values = module(mb.input_ids, mb.attention_mask, mb.position_ids, mb.response_ids, ctx.temperature)
    old = logp.detach() if ctx.reuse_old else mb.logprobs
    lp_rollout = mb.rollout_logprobs  # TIS (Yao et al. 2025) weights by min(pi_old / pi_rollout, cap) when a.tis_cap
    per_token, stats = ppo_clip_loss(
        logp, old, mb.advantages, mask, a.clip, a.clip_high, a.dual_clip, lp_rollout, a.tis_cap
    )  # (B, R)
    if ctx.reuse_old and lp_rollout is not None:  # no rollout forward: the mismatch is measured here
        stats |= rollout_mismatch_stats(old, lp_rollout, mask, a.tis_cap)
    stats["pg_loss"] = masked_mean(per_token.detach(), mask)
    stats["policy_kl"] = ((logp.detach() - mb.ref_logprobs) * mask).sum(-1).mean()  # k1 per sequence, for logs
    if ctx.kl_in_loss and bool(
        (mb.kl_coef > 0).any()
    ):  # GRPO eq. 3-4: beta * KL(pi || ref) per token in the loss, with an unbiased gradient
        kl = kl_loss_term(torch.where(valid, logp, 0.0), mb.ref_logprobs, ctx.kl_estimator, ctx.log_ratio_clip)
        per_token = per_token + mb.kl_coef.unsqueeze(1) * torch.where(valid, kl, 0.0)
    if a.entropy_coef > 0:
        per_token = per_token - a.entropy_coef * entropy
    stats["entropy"] = masked_mean(entropy.detach(), mask)
    if values is not None:
        old_values = values.detach() if ctx.reuse_old else mb.values
        v_loss = clipped_value_loss(values, old_values, mb.returns, mask, a.value_clip)  # (B, R)
        per_token = per_token + a.vf_coef * v_loss
        stats["value_loss"] = masked_mean(v_loss.detach(), mask)
        stats["value_clip_fraction"] = masked_mean(
            ((values.detach() - old_values).abs() > (a.value_clip or math.inf)).float(), mask
        )
    total, count = aggregate_sum_and_count(per_token, mask, a.aggregation)
    return total, count, stats


def normalizer_count(b: Rollout, a: AlgoConfig) -> float:
    """A micro-batch's share of the loss normalizer (matches aggregate_sum_and_count)."""
    if a.aggregation == "token-mean":
        return float(b.response_mask.sum())
    return float((b.response_mask.sum(-1) > 0).sum())


def _build_critic(cfg: RLConfig, device: torch.device) -> torch.nn.Module | None:
    if cfg.algo.critic != "separate" or cfg.algo.name != "ppo":
        return None
    return load_reward_model(cfg.algo.critic_path or cfg.model.name_or_path, dtype=cfg.model.dtype).to(device)


def train_rl(cfg: RLConfig) -> dict[str, Any]:
    """Optimize cfg.model against cfg.reward with cfg.algo (ppo, grpo, rloo, reinforce); writes train.output_dir."""
    a, tc, kl_cfg = cfg.algo, cfg.train, cfg.kl
    if a.name not in ADVANTAGES:
        raise ConfigError(f"algo.name={a.name!r} is not a policy-gradient algorithm ({', '.join(ADVANTAGES)})")
    run = rl_common.setup_online(cfg, a.name)
    device, acc = run.device, run.accelerator
    critic = a.critic if a.name == "ppo" else "none"
    m = cfg.model
    module = PolicyWithValue(run.policy, critic, _build_critic(cfg, device), m.fused_head, m.padding_free)
    module = module.to(device)

    # optimizer over policy and critic (the critic may have its own learning rate); one update per mini-batch
    n_rows = tc.batch_size * a.num_samples
    mini = a.mini_batch_size or n_rows
    micro_size = tc.micro_batch_size or mini  # sequences per forward (0: the whole mini-batch)
    critic_ids = {id(p) for p in module.critic_parameters()}
    groups = [
        {"params": [p for p in module.parameters() if p.requires_grad and id(p) not in critic_ids], "lr": tc.lr},
        {"params": [p for p in module.critic_parameters() if p.requires_grad], "lr": a.critic_lr or tc.lr},
    ]
    n_updates = run.n_steps * a.epochs * (n_rows // mini)
    session = Session(tc, run.out, module, groups, n_updates, run.identity, acc, to_dict(cfg), run.n_steps)
    model, unwrapped = session.model, acc.unwrap_model(session.model)
    start = rl_common.restore(run, session)
    all_reduce: AllReduce = lambda t: acc.reduce(t, "sum")  # noqa: E731
    # (per-domain KL needs each sequence's KL, which only the rollout forward gives)
    reuse_old = a.epochs == 1 and mini == n_rows and not module.has_critic and kl_cfg.placement == "loss"
    reuse_old = reuse_old and not run.kl_ctl.tagged
    ctx = UpdateContext(
        a, kl_cfg.estimator, kl_cfg.placement == "loss", run.temperature, reuse_old, kl_cfg.log_ratio_clip
    )

    with collective_guard(acc.process_index, 0, tc.collective_timeout):
        before = rl_common.evaluate(run, micro_size) if start == 0 else {}
    session.log(0, "eval", before)
    bar = session.progress(start, run.n_steps)
    t0, last = time.perf_counter(), {}
    for step in range(start, run.n_steps):
        with collective_guard(acc.process_index, step + 1, tc.collective_timeout):  # a hung peer: an error
            # 1-2. rollout, score
            ro, raw, scored = rl_common.collect(run, step)

            # 3. log pi_old and values (no gradients), log pi_ref
            t = time.perf_counter()
            if not reuse_old:
                with acc.autocast():  # the same precision as the update's forward, so the first ratio is 1
                    ro.logprobs, ro.values = rollout_forward(
                        lambda mb: _logprobs_and_values(unwrapped, mb, run.temperature), ro, micro_size
                    )
            ro.ref_logprobs = rl_common.reference_logprobs(run, ro, micro_size)
            run.timings["forward"] = time.perf_counter() - t
            mismatch: dict[
                str, Tensor
            ] = {}  # engine vs training log-probs of the same tokens (in the update's stats when reuse_old)
            if ro.logprobs is not None and ro.rollout_logprobs is not None:
                mismatch = rollout_mismatch_stats(ro.logprobs, ro.rollout_logprobs, ro.response_mask, a.tis_cap)

            # 4. per-token KL and token rewards
            mask = ro.response_mask
            if ro.logprobs is not None:
                kl_tok = per_token_kl_penalty(
                    ro.logprobs, ro.ref_logprobs, mask, 1.0, kl_cfg.estimator, kl_cfg.log_ratio_clip
                )
                seq_kl = ((ro.logprobs - ro.ref_logprobs) * mask).sum(-1)  # k1 per sequence: controller and logs
            else:  # reuse_old: the penalty is in the loss; the KL is logged from the training forward
                kl_tok, seq_kl = torch.zeros_like(mask), None
            penalty = ro.kl_coef.unsqueeze(1) * kl_tok if kl_cfg.placement == "reward" else torch.zeros_like(mask)
            token_rewards = shape_rewards(ro.scores if ro.token_scores is None else ro.token_scores, penalty, mask)

            # 5. advantages (and returns for the critic), whitened over every process
            ro.advantages, ro.returns = ADVANTAGES[a.name](ro, token_rewards, a, all_reduce)

            # 6. epochs over mini-batches: one optimizer step each
            t = time.perf_counter()
            stat_sums: dict[str, float] = {}
            n_updates_now, stopped_early, loss_sum, grad_norm = 0, False, 0.0, float("nan")
            for _epoch in range(a.epochs):
                for micro in rl_common.mini_batches(len(ro), mini, micro_size):
                    batches = [ro.select(m).trimmed() for m in micro]
                    rows = torch.cat(micro).tolist()
                    result = session.step(
                        batches,
                        [normalizer_count(b, a) for b in batches],
                        rl_common.micro_sizes(micro),
                        lambda b: _loss_and_stats(model, b, ctx),
                        rl_common.on_diverge(run, session, step, rows),
                    )
                    n_updates_now += 1
                    loss_sum += result.loss
                    grad_norm = result.grad_norm
                    for k, v in result.metrics.items():
                        stat_sums[k] = stat_sums.get(k, 0.0) + v
                    if a.target_kl is not None:  # this mini-batch's KL to the rollout policy, the same on every process
                        approx = acc.reduce(torch.tensor(result.metrics.get("approx_kl", 0.0), device=device), "mean")
                        if approx.item() > a.target_kl:
                            stopped_early = True
                            break
                if stopped_early:
                    break
            run.timings["train"] = time.perf_counter() - t

            # 7. KL controller, logs, evaluation, checkpoint
            if seq_kl is None:
                seq_kl = torch.full_like(ro.scores, stat_sums.get("policy_kl", 0.0) / max(n_updates_now, 1))
            kl_mean = acc.reduce(seq_kl.mean().detach().float(), "mean").item()  # one beta for every process
            kl_coef = run.kl_ctl.value
            # every domain's controller, with its own KL
            per_domain = run.kl_ctl.update(seq_kl.detach().float(), ro.domain, all_reduce)
            done = step + 1
            last = rl_common.base_metrics(run, ro, raw, scored, kl_mean, t0) | {
                "kl_coef": kl_coef,
                "loss": loss_sum / max(n_updates_now, 1),
                "lr": session.scheduler.get_last_lr()[0],
                "grad_norm": grad_norm,
                "updates": n_updates_now,
                "stopped_early": float(stopped_early),
                **{k: v / max(n_updates_now, 1) for k, v in stat_sums.items()},
                **{k: float(v) for k, v in mismatch.items()},
                **per_domain,
            }
            if ro.returns is not None and ro.values is not None:
                last["explained_variance"] = float(explained_variance(ro.values, ro.returns, mask))
            if done % tc.log_every == 0 or done == run.n_steps:
                session.log(done, "train", last)
            bar.set_postfix(score=f"{last['score']:.3f}", kl=f"{last['kl']:.2f}", len=f"{last['response_length']:.0f}")
            bar.update(1)
            if tc.eval_every and done % tc.eval_every == 0 and done < run.n_steps:
                session.log(done, "eval", rl_common.evaluate(run, micro_size))
            if tc.save_every and done % tc.save_every == 0 and done < run.n_steps:
                session.checkpoint(done, rl_common.checkpoint_state(run))
    bar.close()
    return rl_common.finish_online(run, session, start, t0, last, before, micro_size)


def _logprobs_and_values(module: PolicyWithValue, mb: Rollout, temperature: float) -> tuple[Tensor, Tensor | None]:
    logp, _, values = module(mb.input_ids, mb.attention_mask, mb.position_ids, mb.response_ids, temperature)
    return logp, values


def _loss_and_stats(model: Any, b: Rollout, ctx: UpdateContext) -> tuple[Tensor, dict[str, Tensor]]:
    total, _, stats = policy_gradient_loss(model, b, ctx)
    return total, stats


__all__ = ["ADVANTAGES", "UpdateContext", "normalizer_count", "policy_gradient_loss", "train_rl"]
