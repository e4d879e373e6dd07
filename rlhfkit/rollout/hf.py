"""Rollouts from a Hugging Face causal LM: left padding, KV cache, length-bucketed batches, stop at EOS or max tokens.

Each batch is decoded either by transformers' `generate` or by rlhfkit's own loop over the same model
(rollout/fast.py: same distribution, several times less work on a CPU).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from rlhfkit.rollout import fast
from rlhfkit.rollout.types import Rollout, SamplingParams

DECODERS = ("auto", "generate", "loop")


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (B, W), mask (B, W)) with each row right-aligned."""
    width = width or max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r) :] = torch.as_tensor(list(r), dtype=torch.long)
            mask[i, width - len(r) :] = 1
    return ids, mask


def right_pad(t: torch.Tensor, width: int, value: float) -> torch.Tensor:
    """Pad the last dimension of a (B, N) tensor to `width` on the right."""
    return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)


def rollout_from_ids(
    prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad_id: int, eos_ids: Sequence[int]
) -> Rollout:
    """Rows sampled earlier (prompt ids, response ids up to and including any EOS) -> the Rollout generate() built for
    them: prompts left-padded, responses right-padded, each row its own group."""
    prompt_ids, prompt_mask = left_pad(prompts, pad_id)
    width = max([len(r) for r in responses] + [1])
    response_ids = torch.full((len(responses), width), pad_id, dtype=torch.long)
    response_mask = torch.zeros((len(responses), width), dtype=torch.float32)
    for i, r in enumerate(responses):
        if r:
            response_ids[i, : len(r)] = torch.as_tensor(list(r), dtype=torch.long)
            response_mask[i, : len(r)] = 1.0
    finished = torch.tensor([bool(r) and r[-1] in eos_ids for r in responses], dtype=torch.bool)
    return Rollout(prompt_ids, prompt_mask, response_ids, response_mask, finished, torch.arange(len(responses)))


def _response_mask(generated: torch.Tensor, eos_ids: Sequence[int]) -> torch.Tensor:
    """(B, N) float mask of generated tokens up to and including the first EOS."""
    is_eos = torch.isin(generated, torch.as_tensor(list(eos_ids), device=generated.device))
    before = torch.cumsum(is_eos.int(), dim=1) - is_eos.int()  # EOS strictly before each position
    return (before == 0).float()


class RolloutLogprobs(LogitsProcessor):
    """generate()'s rollout log-probs: log softmax(raw logits / temperature) of each sampled token, as the decoding
    loop records them (rollout/fast.py `decode`), O(B x V) memory (not generate's (B, N, V) output_logits).

    A custom processor runs after generate's own ones, whose min_new_tokens processor would hide the EOS logit, so this
    one applies min_new_tokens itself (EOS -> -inf while fewer than `min_new_tokens` tokens were generated) after
    recording; the sampled token of step t is read from input_ids at step t + 1 (and from the output after the last).
    """

    def __init__(self, prompt_width: int, temperature: float, min_new_tokens: int, eos_ids: Sequence[int]):
        self.prompt_width, self.temperature, self.min_new_tokens = prompt_width, temperature, min_new_tokens
        self.eos_ids = list(eos_ids)
        self.pending: torch.Tensor | None = None  # (B, V) log-probs of the last step, waiting for its token
        self.steps: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.pending is not None:
            self.steps.append(self.pending.gather(1, input_ids[:, -1:]).squeeze(1))
        self.pending = torch.log_softmax(scores.float() / self.temperature, -1)  # fp32, as training's
        if input_ids.shape[1] - self.prompt_width < self.min_new_tokens:
            scores = scores.clone()
            scores[:, self.eos_ids] = -float("inf")
        return scores

    def finish(self, generated: torch.Tensor) -> torch.Tensor:
        """(B, N) float32 log-probs, given the (B, N) generated tokens."""
        if self.pending is not None:
            self.steps.append(self.pending.gather(1, generated[:, -1:]).squeeze(1))
            self.pending = None
        if len(self.steps) != generated.shape[1]:
            raise RuntimeError(f"RolloutLogprobs saw {len(self.steps)} steps for {generated.shape[1]} tokens")
        return torch.stack(self.steps, 1).float()


class HFEngine:
    """Samples from the policy module itself (no weight copy): `load_weights` is a no-op.

    static_cache=True uses a static KV cache, whose fixed shapes let transformers compile the decoding step
    (torch.compile, CUDA only): a one-off compile, then several times faster decoding. Prompt widths are then rounded up
    to `pad_to_multiple` so that few distinct shapes are compiled.

    decoder: "generate" (transformers' generate), "loop" (rlhfkit's decoding loop, rollout/fast.py: shared-prefix and
    length-grouped prefill, an in-place KV buffer, finished rows dropped, inverse-CDF sampling; 2.5x+ generate on a
    CPU) or "auto": the loop on CPU unless static_cache, generate otherwise. Models whose cache is not one plain
    key/value pair per layer (sliding window, linear attention) always use generate.

    Both decoders return each sampled token's rollout log-prob (`Rollout.rollout_logprobs`): log softmax(logits / T)
    of the logits the engine computed, at the temperature of the training log-probs and before top-k / top-p, so that
    it differs from the training forward's by the engines' numerics only (the rollout-trainer mismatch).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        batch_size: int = 64,
        static_cache: bool = False,
        pad_to_multiple: int = 64,
        eos_token_ids: Sequence[int] | None = None,
        decoder: str = "auto",
    ):
        if decoder not in DECODERS:
            raise ValueError(f"decoder={decoder!r}: choose one of {', '.join(DECODERS)}")
        self.model, self.tokenizer = model, tokenizer
        self.decoder = decoder
        self.batch_size, self.static_cache, self.pad_to_multiple = batch_size, static_cache, pad_to_multiple
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_ids = list(eos_token_ids) if eos_token_ids else [tokenizer.eos_token_id]

    def load_weights(self, model: torch.nn.Module) -> None:
        self.model = model

    def uses_loop(self) -> bool:
        """Whether batches go through rlhfkit's decoding loop (True) or transformers' generate (False)."""
        if self.decoder == "generate" or (self.decoder == "auto" and self.static_cache):
            return False
        if self.decoder == "auto" and next(self.model.parameters()).device.type != "cpu":
            return False
        return fast.supports_loop(self.model)

    def _generation_config(self, params: SamplingParams) -> GenerationConfig:
        # every processor spelled out: nothing but temperature (and top-k / top-p when asked) shapes the distribution
        sample = params.temperature > 0
        return GenerationConfig(
            do_sample=sample,
            temperature=params.temperature if sample else None,
            top_k=params.top_k if sample else None,
            top_p=params.top_p if sample else None,
            max_new_tokens=params.max_new_tokens,
            min_new_tokens=0,  # applied by RolloutLogprobs, after it records the EOS logit
            eos_token_id=self.eos_ids,
            pad_token_id=self.pad_id,
            bos_token_id=getattr(self.tokenizer, "bos_token_id", None),
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            use_cache=True,
            cache_implementation="static" if self.static_cache else None,
        )

    @torch.no_grad()
    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams, num_samples: int = 1) -> Rollout:
        if not prompts:
            raise ValueError("generate: no prompts")
        rows = [list(p) for p in prompts for _ in range(num_samples)]  # a prompt's samples are consecutive
        group = torch.arange(len(prompts)).repeat_interleave(num_samples)
        device = next(self.model.parameters()).device
        gen_cfg = self._generation_config(params)
        loop = self.uses_loop()
        # length buckets: sorting by prompt length keeps left padding (wasted prefill and cache) small
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        pieces: list[tuple[list[int], torch.Tensor, torch.Tensor]] = []  # (rows, tokens, rollout log-probs)
        was_training = self.model.training
        self.model.eval()
        # generate() fills every unset field (min_p, suppress_tokens, bad_words_ids, ...) from the checkpoint's own
        # generation_config, which would change the sampling distribution: lend it a blank one for the call
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        saved_config, base.generation_config = base.generation_config, GenerationConfig()
        try:
            # the loop's linear layers run on weights reordered once for this call (see fast.prepacked_linears)
            with fast.prepacked_linears(self.model) if loop else contextlib.nullcontext() as packed:
                for start in range(0, len(order), self.batch_size):
                    idx = order[start : start + self.batch_size]
                    if loop:
                        batch = [rows[i] for i in idx]
                        gen, lp = fast.decode(
                            self.model, batch, params, self.eos_ids, self.pad_id, record_logprobs=True, packed=packed
                        )
                        pieces.append((idx, gen.cpu(), lp.cpu()))
                        continue
                    width = max(len(rows[i]) for i in idx)
                    if self.static_cache:
                        width = -(-width // self.pad_to_multiple) * self.pad_to_multiple
                    ids, mask = left_pad([rows[i] for i in idx], self.pad_id, width)
                    record = RolloutLogprobs(width, params.logprob_temperature, params.min_new_tokens, self.eos_ids)
                    out = self.model.generate(
                        input_ids=ids.to(device),
                        attention_mask=mask.to(device),
                        generation_config=gen_cfg,
                        logits_processor=LogitsProcessorList([record]),
                    )
                    pieces.append((idx, out[:, width:].cpu(), record.finish(out[:, width:]).cpu()))
        finally:
            base.generation_config = saved_config
            self.model.train(was_training)

        width_r = max(gen.shape[1] for _, gen, _ in pieces)
        response_ids = torch.full((len(rows), width_r), self.pad_id, dtype=torch.long)
        rollout_lp = torch.zeros((len(rows), width_r), dtype=torch.float32)
        for idx, gen, lp in pieces:
            response_ids[idx, : gen.shape[1]] = gen
            rollout_lp[idx, : lp.shape[1]] = lp
        prompt_ids, prompt_mask = left_pad(rows, self.pad_id)  # one width for all rows, in the original order
        resp_mask = _response_mask(response_ids, self.eos_ids)
        response_ids = torch.where(resp_mask.bool(), response_ids, self.pad_id)
        is_eos = torch.zeros_like(response_ids, dtype=torch.bool)
        for e in self.eos_ids:
            is_eos |= response_ids == e
        finished = (is_eos & resp_mask.bool()).any(dim=1)
        texts = self.tokenizer.batch_decode(response_ids, skip_special_tokens=True)
        return Rollout(
            prompt_ids=prompt_ids,
            prompt_mask=prompt_mask,
            response_ids=response_ids,
            response_mask=resp_mask,
            finished=finished,
            group=group,
            texts=texts,
            rollout_logprobs=rollout_lp * resp_mask,
        )
