"""Online RL: PPO (critic + GAE), GRPO, RLOO, REINFORCE++ and online DPO in ONE loop.

Each rollout step, as a recipe:

    1. rollout: sample num_samples responses per prompt from the current policy
    2. score: reward sources -> (B,) scores (running normalization, missing-EOS penalty)
    3. forward without gradients: log pi_old, log pi_ref and values per response token
    4. per-token KL to the reference; token rewards = score at the last token - kl_coef * KL (placement=reward)
    5. advantages: GAE + whitening (ppo), group-normalized (grpo), leave-one-out (rloo), whitened return-to-go
       (reinforce++); online-dpo pairs each prompt's best and worst sample instead
    6. epochs over mini-batches: clipped surrogate + clipped value loss - entropy bonus (+ kl_coef * KL for
       placement=loss), or the DPO loss; early stop on approximate KL
    7. adapt kl_coef toward the target KL; log; evaluate; checkpoint

The algorithms differ only in steps 5 and 6's loss, chosen from two literal tables (ADVANTAGES, UPDATE_LOSSES).
Checkpoints hold the policy and critic weights, optimizer, scheduler, KL controller, reward normalizer, RNG and the
prompt position, so `--resume` continues the same run.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformers import get_scheduler

from rlhfkit.advantages import (
    broadcast_to_tokens,
    gae,
    group_normalized,
    leave_one_out,
    reinforce_pp,
    whiten_advantages,
)
from rlhfkit.config import AlgoConfig, RLConfig, to_dict
from rlhfkit.kl import make_kl_controller, per_token_kl_penalty, shape_rewards
from rlhfkit.losses import PREFERENCE_LOSSES, aggregate_sum_and_count
from rlhfkit.losses.policy import ppo_clip_loss
from rlhfkit.losses.value import clipped_value_loss, explained_variance
from rlhfkit.ops import entropy_from_logits, kl_estimate, masked_mean, token_logprobs
from rlhfkit.rollout import HFEngine, Rollout, SamplingParams
from rlhfkit.trainers.common import finish_run, load_for_training, load_train_eval, write_run_files
from rlhfkit.trainers.loop import (
    DataOrder,
    LoopResult,
    _diverged,
    latest_checkpoint,
    make_accelerator,
    resume_or_refuse,
    set_seed,
    write_checkpoint,
)


@dataclass(frozen=True)
class Prompt:
    messages: tuple[Any, ...]
    """The chat turns (what reward sources see)."""
    ids: list[int]
    """Tokenized, ending with the generation prompt (what the policy sees)."""


def encode_prompts(examples: Sequence[Any], formatter: Any) -> list[Prompt]:
    out = []
    for ex in examples:
        ids = formatter.encode_prompt(ex.prompt)
        if ids is not None:
            out.append(Prompt(tuple(ex.prompt), ids))
    return out


def make_engine(model: torch.nn.Module, tokenizer: Any, s: Any) -> HFEngine:
    """The rollout engine a SamplingConfig asks for (auto: the compiled static-cache engine on CUDA)."""
    device = next(model.parameters()).device
    static = s.backend == "hf-static" or (s.backend == "auto" and device.type == "cuda")
    # stop at the tokenizer's EOS and at every end token the checkpoint declares (e.g. an end-of-turn token)
    declared = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    declared = declared if isinstance(declared, list) else [declared] if declared is not None else []
    eos = list(dict.fromkeys([tokenizer.eos_token_id, *declared]))
    return HFEngine(model, tokenizer, s.batch_size, static_cache=static, eos_token_ids=eos)


def disable_dropout(model: torch.nn.Module) -> None:
    """Rollout and update forwards must see the same function (the first ratio is exactly 1): no dropout anywhere."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        if isinstance(getattr(m, "attention_dropout", None), float):
            m.attention_dropout = 0.0


def sampling_params(s: Any) -> SamplingParams:
    return SamplingParams(s.max_new_tokens, s.min_new_tokens, s.temperature, s.top_k, s.top_p)


def response_logits(model: torch.nn.Module, ro: Rollout) -> Tensor:
    """(B, R, V) logits predicting the response tokens, from a plain causal LM (the reference)."""
    n = ro.response_ids.shape[1]
    out = model(
        input_ids=ro.input_ids,
        attention_mask=ro.attention_mask,
        position_ids=ro.position_ids,
        logits_to_keep=n + 1,
        use_cache=False,
    )
    return out.logits[:, -(n + 1) : -1]


@torch.no_grad()
def rollout_forward(
    fn: Callable[[Rollout], tuple[Tensor, Tensor | None]], ro: Rollout, temperature: float, micro: int
) -> tuple[Tensor, Tensor | None]:
    """Per-token log-probs (B, R) (and values, when fn returns them) over micro-batches, 0 on padding."""
    lps, vals = [], []
    for i in range(0, len(ro), micro):
        mb = ro.select(range(i, min(i + micro, len(ro)))).trimmed()
        logits, values = fn(mb)
        width = ro.response_ids.shape[1]
        lp = token_logprobs(logits, mb.response_ids, temperature=temperature) * mb.response_mask
        lps.append(torch.nn.functional.pad(lp, (0, width - lp.shape[1])))
        if values is not None:
            vals.append(torch.nn.functional.pad(values * mb.response_mask, (0, width - values.shape[1])))
    return torch.cat(lps), (torch.cat(vals) if vals else None)


# ----------------------------------------------------------------------------------------------------------------------
# step 5: advantages, one function per algorithm: (rollout, token rewards (B, R), algo config) -> (advantages, returns)


def _adv_ppo(ro: Rollout, token_rewards: Tensor, a: AlgoConfig) -> tuple[Tensor, Tensor | None]:
    adv, returns = gae(token_rewards, ro.values, ro.response_mask, a.gamma, a.lam)  # Schulman et al. 2016
    return (whiten_advantages(adv, ro.response_mask) if a.whiten_advantages else adv), returns


def _adv_grpo(ro: Rollout, token_rewards: Tensor, a: AlgoConfig) -> tuple[Tensor, Tensor | None]:
    seq = token_rewards.sum(-1)  # the score (minus the summed KL penalty when it is placed in the reward)
    adv = group_normalized(seq, a.num_samples, scale_by_std=a.scale_by_std)  # Shao et al. 2024 eq. 3
    return broadcast_to_tokens(adv, ro.response_mask), None


def _adv_rloo(ro: Rollout, token_rewards: Tensor, a: AlgoConfig) -> tuple[Tensor, Tensor | None]:
    adv = broadcast_to_tokens(leave_one_out(token_rewards.sum(-1), a.num_samples), ro.response_mask)  # Ahmadian 2024
    return (whiten_advantages(adv, ro.response_mask) if a.whiten_advantages else adv), None


def _adv_reinforce_pp(ro: Rollout, token_rewards: Tensor, a: AlgoConfig) -> tuple[Tensor, Tensor | None]:
    return reinforce_pp(token_rewards, ro.response_mask, a.gamma), None  # Hu 2025


def _adv_none(ro: Rollout, token_rewards: Tensor, a: AlgoConfig) -> tuple[Tensor, Tensor | None]:
    return torch.zeros_like(token_rewards), None


ADVANTAGES: dict[str, Callable[[Rollout, Tensor, AlgoConfig], tuple[Tensor, Tensor | None]]] = {
    "ppo": _adv_ppo,
    "grpo": _adv_grpo,
    "rloo": _adv_rloo,
    "reinforce++": _adv_reinforce_pp,
    "online-dpo": _adv_none,
}


def best_worst_pairs(scores: Tensor, group_size: int) -> list[int]:
    """Row indices [best_0, worst_0, best_1, worst_1, ...] of every group whose scores are not all equal."""
    rows = []
    for g, s in enumerate(scores.view(-1, group_size)):
        if s.max() > s.min():
            rows += [g * group_size + int(s.argmax()), g * group_size + int(s.argmin())]
    return rows


# ----------------------------------------------------------------------------------------------------------------------
# step 6: the update's loss on one micro-batch -> (summed loss, normalizer count, stats)


@dataclass
class UpdateContext:
    algo: AlgoConfig
    kl_coef: float
    kl_estimator: str
    kl_in_loss: bool
    temperature: float
    reuse_old: bool
    """One epoch, one mini-batch: the rollout policy IS the current policy, so old log-probs are the new ones detached
    (saves a forward pass)."""


def _policy_gradient_loss(module: Any, mb: Rollout, ctx: UpdateContext) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    a, mask = ctx.algo, mb.response_mask
    logits, values = module(mb.input_ids, mb.attention_mask, mb.position_ids, mb.response_ids.shape[1])
    logp = token_logprobs(logits, mb.response_ids, temperature=ctx.temperature)  # (B, R)
    old = logp.detach() if ctx.reuse_old else mb.logprobs
    per_token, stats = ppo_clip_loss(logp, old, mb.advantages, mask, a.clip, a.clip_high, a.dual_clip)  # (B, R)
    stats["pg_loss"] = masked_mean(per_token.detach(), mask)
    stats["policy_kl"] = ((logp.detach() - mb.ref_logprobs) * mask).sum(-1).mean()  # k1 per sequence, for logs
    if ctx.kl_in_loss and ctx.kl_coef > 0:  # GRPO eq. 3-4: beta * KL_k3(pi || ref) per token, in the loss
        kl = kl_estimate(torch.where(mask.bool(), logp, 0.0), mb.ref_logprobs, ctx.kl_estimator)
        per_token = per_token + ctx.kl_coef * torch.where(mask.bool(), kl, 0.0)
    if a.entropy_coef > 0:
        entropy = entropy_from_logits(logits, temperature=ctx.temperature)
        per_token = per_token - a.entropy_coef * entropy
        stats["entropy"] = masked_mean(entropy.detach(), mask)
    else:
        with torch.no_grad():
            stats["entropy"] = masked_mean(entropy_from_logits(logits.detach(), temperature=ctx.temperature), mask)
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


def _online_dpo_loss(module: Any, mb: Rollout, ctx: UpdateContext) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """Rows come as (chosen, rejected) neighbours: DPO (Rafailov et al. 2023 eq. 7) on the policy's own samples
    ranked by the reward (Guo et al. 2024, online AI feedback; Xiong et al. 2024, iterative DPO)."""
    logits, _ = module(mb.input_ids, mb.attention_mask, mb.position_ids, mb.response_ids.shape[1], values=False)
    logp = token_logprobs(logits, mb.response_ids, temperature=ctx.temperature) * mb.response_mask
    seq, ref = logp.sum(-1), (mb.ref_logprobs * mb.response_mask).sum(-1)
    losses, r_c, r_r = PREFERENCE_LOSSES["dpo"](seq[0::2], seq[1::2], ref[0::2], ref[1::2], beta=ctx.algo.dpo_beta)
    stats = {
        "dpo/accuracy": (r_c > r_r).float().mean().detach(),
        "dpo/margin": (r_c - r_r).mean().detach(),
    }
    return losses.sum(), torch.tensor(float(losses.numel()), device=losses.device), stats


UPDATE_LOSSES: dict[str, Callable[[Any, Rollout, UpdateContext], tuple[Tensor, Tensor, dict[str, Tensor]]]] = {
    "ppo": _policy_gradient_loss,
    "grpo": _policy_gradient_loss,
    "rloo": _policy_gradient_loss,
    "reinforce++": _policy_gradient_loss,
    "online-dpo": _online_dpo_loss,
}


# ----------------------------------------------------------------------------------------------------------------------
# the loop


def _reference_fn(reference: Any) -> Callable[[Rollout], tuple[Tensor, None]]:
    def fn(mb: Rollout) -> tuple[Tensor, None]:
        with reference() as ref_model:
            return response_logits(ref_model, mb), None

    return fn


@torch.no_grad()
def evaluate_policy(
    engine: HFEngine,
    prompts: Sequence[Prompt],
    reward: Any,
    reference: Any,
    params: SamplingParams,
    micro: int,
    num_samples: int = 1,
    gold: Any = None,
) -> dict[str, float]:
    """Sample held-out prompts; mean raw score (and gold score), KL(pi || ref) per sequence (k1 on the samples),
    length, EOS rate."""
    ro = engine.generate([p.ids for p in prompts], params, num_samples)
    device = next(engine.model.parameters()).device
    ro = ro.to(device)
    messages = [p.messages for p in prompts for _ in range(num_samples)]
    scores = reward(messages, ro.texts).total
    extra = {"gold": float(gold(messages, ro.texts).total.mean())} if gold is not None else {}
    temperature = params.logprob_temperature
    logp, _ = rollout_forward(lambda mb: (response_logits(engine.model, mb), None), ro, temperature, micro)
    ref, _ = rollout_forward(_reference_fn(reference), ro, temperature, micro)
    kl = ((logp - ref) * ro.response_mask).sum(-1)
    return {
        "score": float(scores.mean()),
        "kl": float(kl.mean()),
        "response_length": float(ro.response_lengths.mean()),
        "finished": float(ro.finished.float().mean()),
        **extra,
    }


def _build_critic(cfg: RLConfig, device: torch.device) -> torch.nn.Module | None:
    if cfg.algo.critic != "separate" or cfg.algo.name != "ppo":
        return None
    from rlhfkit.models import load_reward_model

    critic = load_reward_model(cfg.algo.critic_path or cfg.model.name_or_path, dtype=cfg.model.dtype)
    return critic.to(device)


def train_rl(cfg: RLConfig) -> dict[str, Any]:
    """Optimize cfg.model against cfg.reward with cfg.algo; writes cfg.train.output_dir."""
    from rlhfkit.data import ChatFormatter
    from rlhfkit.models.value import PolicyWithValue
    from rlhfkit.rewards import build_reward
    from rlhfkit.rewards.sources import RunningNormalizer
    from rlhfkit.tracking import MetricsLogger
    from rlhfkit.trainers.dpo import build_reference

    a, tc = cfg.algo, cfg.train
    out = Path(tc.output_dir)
    write_run_files(out, cfg, a.name)

    # models: policy (+ critic) in one module, the frozen reference, the reward sources
    policy, tokenizer = load_for_training(cfg.model, "causal", tc.seed)
    accelerator = make_accelerator(tc)
    device, world, rank = accelerator.device, accelerator.num_processes, accelerator.process_index
    reference = build_reference(policy, cfg.model, cfg.reference, True, device)
    module = PolicyWithValue(policy, a.critic if a.name == "ppo" else "none", _build_critic(cfg, device)).to(device)
    disable_dropout(module)
    # raw sources here; normalization and clipping happen in the loop, so held-out scores stay raw and unnormalized
    reward = build_reward(replace(cfg.reward, normalize=False, clip=None), device=str(device), dtype=cfg.model.dtype)
    normalizer = RunningNormalizer() if cfg.reward.normalize else None
    gold = build_reward(cfg.gold, device=str(device), dtype=cfg.model.dtype) if cfg.gold.sources else None

    # prompts
    train_ex, eval_ex, notes = load_train_eval(cfg.data, "prompt", tc.seed)
    fmt = ChatFormatter(tokenizer, cfg.data.max_length, cfg.data.max_prompt_length, cfg.data.truncation)
    prompts, eval_prompts = encode_prompts(train_ex, fmt), encode_prompts(eval_ex, fmt)[: cfg.eval_samples]
    notes.append(f"prompt truncation: {fmt.report}")
    order = DataOrder(len(prompts), tc.batch_size * world, tc.seed)
    n_steps = tc.max_steps if tc.max_steps > 0 else max(1, math.ceil(tc.epochs * order.steps_per_epoch))

    # optimizer over policy and critic (the critic may have its own learning rate)
    n_rows = tc.batch_size * a.num_samples
    mini = a.mini_batch_size or n_rows
    micro_size = tc.micro_batch_size or mini  # sequences per forward (0: the whole mini-batch)
    updates_per_step = a.epochs * (n_rows // mini)
    critic_params = {id(p) for p in module.critic_parameters()}
    groups = [
        {"params": [p for p in module.parameters() if p.requires_grad and id(p) not in critic_params], "lr": tc.lr},
        {"params": [p for p in module.critic_parameters() if p.requires_grad], "lr": a.critic_lr or tc.lr},
    ]
    groups = [g for g in groups if g["params"]]
    model = accelerator.prepare(module)
    fused = device.type == "cuda"
    optimizer = torch.optim.AdamW(groups, weight_decay=tc.weight_decay, betas=tc.adam_betas, fused=fused)
    total_updates = n_steps * updates_per_step
    scheduler = get_scheduler(
        tc.scheduler, optimizer, num_warmup_steps=int(tc.warmup_ratio * total_updates), num_training_steps=total_updates
    )
    optimizer = accelerator.prepare(optimizer)
    params = [p for g in groups for p in g["params"]]

    kl_ctl = make_kl_controller(cfg.kl.controller, cfg.kl.coef, cfg.kl.target, cfg.kl.horizon)
    engine = make_engine(policy, tokenizer, cfg.sampling)
    sp = sampling_params(cfg.sampling)
    temperature = sp.logprob_temperature
    identity = {"batch_size": tc.batch_size, "processes": world, "seed": tc.seed, "rows": len(prompts)}

    start = 0
    set_seed(tc.seed + rank)
    state = resume_or_refuse(out, tc.resume, accelerator, model, optimizer, scheduler, identity)
    if state:
        start = state["step"]
        kl_ctl.load_state_dict(state["kl_controller"])
        if normalizer is not None and state.get("reward_normalizer"):
            normalizer.load_state_dict(state["reward_normalizer"])
        accelerator.print(f"resuming from {latest_checkpoint(out)} (rollout {start}/{n_steps})")

    def checkpoint(step: int, prune: bool = True) -> Path:
        # a divergence mid-rollout saves what it has under a name --resume does not pick up
        path = out / "checkpoints" / (f"step-{step:06d}" if prune else f"diverged-step-{step:06d}")
        extra = {
            **identity,
            "kl_controller": kl_ctl.state_dict(),
            "reward_normalizer": normalizer and normalizer.state_dict(),
        }
        keep = tc.keep_checkpoints if prune else None
        write_checkpoint(path, accelerator, model, optimizer, scheduler, step, extra, keep)
        return path

    def evaluate() -> dict[str, float]:
        if not eval_prompts:
            return {}
        return evaluate_policy(engine, eval_prompts, reward, reference, sp, micro_size, gold=gold)

    logger = MetricsLogger(out, tc.report_to, to_dict(cfg)) if accelerator.is_main_process else None
    evals_before = evaluate() if start == 0 else {}
    if logger and evals_before:
        logger.log(0, {f"eval/{k}": v for k, v in evals_before.items()})
    bar = tqdm(total=n_steps, initial=start, desc=out.name, disable=not (tc.progress and accelerator.is_main_process))
    t0, gen_tokens, last, good_ckpt = time.perf_counter(), 0, {}, latest_checkpoint(out)
    reuse_old = a.epochs == 1 and mini == n_rows and not module.has_critic and (cfg.kl.placement == "loss")
    update_loss = UPDATE_LOSSES[a.name]
    unwrapped = accelerator.unwrap_model(model)

    for step in range(start, n_steps):
        timings: dict[str, float] = {}
        # 1. rollout
        t = time.perf_counter()
        batch_prompts = [
            prompts[i] for i in order.rows_for_step(step)[rank * tc.batch_size : (rank + 1) * tc.batch_size]
        ]
        ro = engine.generate([p.ids for p in batch_prompts], sp, a.num_samples).to(device)
        timings["generate"] = time.perf_counter() - t
        gen_tokens += int(ro.response_mask.sum()) * world

        # 2. score
        t = time.perf_counter()
        scored = reward([p.messages for p in batch_prompts for _ in range(a.num_samples)], ro.texts)
        raw = scored.total.to(device).float()
        if normalizer is not None:  # statistics over every process's scores, so all ranks standardize alike
            normalizer.update(accelerator.gather(raw))
            scores = normalizer.standardize(raw).to(device)
        else:
            scores = raw
        if cfg.reward.clip is not None:
            scores = scores.clamp(-cfg.reward.clip, cfg.reward.clip)
        if a.missing_eos_penalty is not None:
            scores = scores - a.missing_eos_penalty * (~ro.finished).float()
        ro.scores = scores
        timings["score"] = time.perf_counter() - t

        # 3. log pi_old, log pi_ref, values (no gradients)
        t = time.perf_counter()
        with accelerator.autocast():  # the same precision as the update's forward, so the first ratio is 1
            if not reuse_old:
                ro.logprobs, ro.values = rollout_forward(
                    lambda mb: unwrapped(mb.input_ids, mb.attention_mask, mb.position_ids, mb.response_ids.shape[1]),
                    ro,
                    temperature,
                    micro_size,
                )
            ro.ref_logprobs, _ = rollout_forward(_reference_fn(reference), ro, temperature, micro_size)
        timings["forward"] = time.perf_counter() - t

        # 4. per-token KL, token rewards (the coefficient may grow where an ensemble disagrees)
        mask = ro.response_mask
        coef = torch.full_like(scores, kl_ctl.value)
        if cfg.kl.uncertainty_scale > 0 and scored.uncertainty is not None:
            coef = coef * (1.0 + cfg.kl.uncertainty_scale * scored.uncertainty.to(device).float())
        kl_logps = ro.logprobs if ro.logprobs is not None else None
        if kl_logps is not None:
            kl_tok = per_token_kl_penalty(kl_logps, ro.ref_logprobs, mask, 1.0, cfg.kl.estimator)
            seq_kl = ((kl_logps - ro.ref_logprobs) * mask).sum(-1)  # k1 per sequence, for the controller and logs
        else:  # reuse_old: the penalty is in the loss; the KL is logged from the training forward
            kl_tok, seq_kl = torch.zeros_like(mask), None
        penalty = coef.unsqueeze(1) * kl_tok if cfg.kl.placement == "reward" else torch.zeros_like(mask)
        token_rewards = shape_rewards(scores, penalty, mask)

        # 5. advantages (and returns for the critic); online DPO picks (best, worst) pairs instead
        ro.advantages, ro.returns = ADVANTAGES[a.name](ro, token_rewards, a)
        if a.name == "online-dpo":  # every process trains on the same number of pairs (DDP steps in lockstep)
            pairs = best_worst_pairs(scores, a.num_samples)
            n_pairs = int(accelerator.reduce(torch.tensor(len(pairs) // 2, device=device), "min").item())
            train_ro = ro.select(pairs[: 2 * n_pairs])
        else:
            train_ro = ro

        # 6. epochs over mini-batches
        t = time.perf_counter()
        ctx = UpdateContext(a, kl_ctl.value, cfg.kl.estimator, cfg.kl.placement == "loss", temperature, reuse_old)
        stat_sums: dict[str, float] = {}
        n_updates, stopped_early, loss_sum, grad_norm = 0, False, 0.0, float("nan")
        rows_now = len(train_ro)
        mini_now = min(mini, rows_now) if a.name != "online-dpo" else min(mini, rows_now) // 2 * 2
        for _epoch in range(a.epochs if rows_now else 0):
            if a.name == "online-dpo":  # shuffle pairs, keep each pair's two rows together
                perm = (torch.randperm(rows_now // 2) * 2).repeat_interleave(2) + torch.arange(rows_now) % 2
            else:
                perm = torch.randperm(rows_now)
            for m0 in range(0, rows_now, max(mini_now, 1)):  # online-dpo's last mini-batch may be smaller
                mb_rows = perm[m0 : m0 + mini_now]
                micro = [mb_rows[i : i + micro_size] for i in range(0, len(mb_rows), micro_size)]
                batches = [train_ro.select(m).trimmed() for m in micro]
                # the normalizer counts every micro-batch of every process (masks only, no forward needed)
                local = torch.tensor(sum(_count(b, a) for b in batches), dtype=torch.float64, device=device)
                global_count = accelerator.reduce(local, "sum").item()
                mb_loss, mb_approx_kl = 0.0, 0.0
                for i, b in enumerate(batches):
                    sync = accelerator.no_sync(model) if i < len(batches) - 1 else contextlib.nullcontext()
                    with sync:
                        with accelerator.autocast():
                            total, _, stats = update_loss(model, b, ctx)
                            loss = total / max(global_count, 1e-12) * world
                        if world == 1 and not torch.isfinite(loss):
                            optimizer.zero_grad(set_to_none=True)
                            saved = checkpoint(step, False)
                            raise _diverged(step, "loss", float(loss.detach()), micro[i].tolist(), saved, good_ckpt)
                        accelerator.backward(loss)
                    mb_loss += float(loss.detach())
                    for k, v in stats.items():
                        stat_sums[k] = stat_sums.get(k, 0.0) + float(v) * len(b) / len(mb_rows)
                    mb_approx_kl += float(stats.get("approx_kl", 0.0)) * len(b) / len(mb_rows)
                grad_norm = (
                    float(accelerator.clip_grad_norm_(params, tc.max_grad_norm)) if tc.max_grad_norm > 0 else 0.0
                )
                if not math.isfinite(grad_norm):
                    optimizer.zero_grad(set_to_none=True)
                    saved = checkpoint(step, False)
                    raise _diverged(step, "gradient norm", grad_norm, mb_rows.tolist(), saved, good_ckpt)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                n_updates += 1
                loss_sum += mb_loss
                if a.target_kl is not None and a.name != "online-dpo":  # this mini-batch's KL to the rollout policy
                    approx_t = accelerator.reduce(torch.tensor(mb_approx_kl, device=device), "mean").item()
                    if approx_t > a.target_kl:
                        stopped_early = True
                        break
            if stopped_early:
                break
        timings["train"] = time.perf_counter() - t

        # 7. KL controller, logs, evaluation, checkpoint
        if seq_kl is None:
            seq_kl = torch.full_like(scores, stat_sums.get("policy_kl", 0.0) / max(n_updates, 1))
        kl_mean = accelerator.reduce(seq_kl.mean().detach().float(), "mean").item()  # one beta for every process
        kl_ctl.update(kl_mean, len(ro) * world)
        done = step + 1
        elapsed = time.perf_counter() - t0
        last = {
            "score": float(raw.mean()),
            "score_std": float(raw.std()) if len(raw) > 1 else 0.0,
            "reward": float(scores.mean()),
            "kl": kl_mean,
            "kl_coef": ctx.kl_coef,
            "response_length": float(ro.response_lengths.mean()),
            "finished": float(ro.finished.float().mean()),
            "loss": loss_sum / max(n_updates, 1),
            "lr": scheduler.get_last_lr()[0],
            "grad_norm": grad_norm,
            "updates": n_updates,
            "stopped_early": float(stopped_early),
            "gen_tokens_per_s": gen_tokens / max(elapsed, 1e-9),
            **{k: v / max(n_updates, 1) for k, v in stat_sums.items()},
            **{f"time/{k}": v for k, v in timings.items()},
        }
        for name, part in scored.parts.items():
            last[f"score/{name}"] = float(part.float().mean())
        if ro.returns is not None and ro.values is not None:
            last["explained_variance"] = float(explained_variance(ro.values, ro.returns, mask))
        if logger and (done % tc.log_every == 0 or done == n_steps):
            logger.log(done, {f"train/{k}": v for k, v in last.items()})
        bar.set_postfix(score=f"{last['score']:.3f}", kl=f"{last['kl']:.2f}", len=f"{last['response_length']:.0f}")
        bar.update(1)
        if tc.eval_every and done % tc.eval_every == 0 and done < n_steps:
            ev = evaluate()
            if logger and ev:
                logger.log(done, {f"eval/{k}": v for k, v in ev.items()})
        if tc.save_every and done % tc.save_every == 0 and done < n_steps:
            good_ckpt = checkpoint(done)
    bar.close()

    evals = evaluate()
    if logger and evals:
        logger.log(n_steps, {f"eval/{k}": v for k, v in evals.items()})
    if n_steps > start:
        checkpoint(n_steps)
    seconds = time.perf_counter() - t0
    if logger:
        logger.close()
    if not accelerator.is_main_process:
        return {}
    result = LoopResult(n_steps, seconds, last, evals, gen_tokens / max(seconds, 1e-9))
    before = {f"before/{k}": v for k, v in evals_before.items()}
    return finish_run(
        out, a.name, policy, tokenizer, result, notes, len(prompts), len(eval_prompts), eval_extra=before, algo=a.name
    )


def _count(b: Rollout, a: AlgoConfig) -> float:
    """A micro-batch's share of the loss normalizer (matches aggregate_sum_and_count / the DPO pair count)."""
    if a.name == "online-dpo":
        return len(b) / 2
    if a.aggregation == "token-mean":
        return float(b.response_mask.sum())
    return float((b.response_mask.sum(-1) > 0).sum())


__all__ = ["ADVANTAGES", "UPDATE_LOSSES", "best_worst_pairs", "encode_prompts", "evaluate_policy", "train_rl"]
