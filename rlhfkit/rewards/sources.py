"""Reward sources: reward model, ensemble, rule, plain callable; weighted sum; running normalization.

Every source is called as ``source(prompts, responses) -> Scores`` (see ``rlhfkit.rewards.base``). Prompts are chat
turns (a plain string is accepted as one user turn); responses are decoded completions without EOS. Totals are (B,)
float32 CPU tensors in input order.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import json
import math
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rlhfkit.data.collate import pad_batch
from rlhfkit.data.steps import encode_steps
from rlhfkit.data.templates import ChatFormatter
from rlhfkit.models import load_for_inference, reward_heads
from rlhfkit.models.head import token_scores
from rlhfkit.rewards.base import Messages, RewardSource, Scores, prompt_text, step_rewards
from rlhfkit.rewards.rules import RULES, check_params

Prompt = Messages | str

__all__ = [
    "ENSEMBLE_REDUCTIONS",
    "CallableSource",
    "EnsembleSource",
    "Normalized",
    "RewardModelSource",
    "RuleSource",
    "RunningNormalizer",
    "WeightedSum",
    "checked_scores",
    "load_callable",
    "unique_names",
]


# ----------------------------------------------------------------------------------------------------------------------
# helpers


def _texts(prompts: Sequence[Prompt]) -> list[str]:
    """What rules and callables receive as prompts: the last user turn."""
    return [p if isinstance(p, str) else prompt_text(p) for p in prompts]


def _check_lengths(name: str, prompts: Sequence[Any], responses: Sequence[str]) -> None:
    if len(prompts) != len(responses):
        raise ValueError(f"reward source {name!r}: {len(prompts)} prompts but {len(responses)} responses")


def checked_scores(values: Any, n: int, who: str) -> Tensor:
    """A (n,) float32 tensor from any sequence of numbers; one-line errors name ``who`` (length, type, non-finite)."""
    try:
        floats = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ValueError(f"{who} must return one number per response, got {type(values).__name__}") from None
    if len(floats) != n:
        raise ValueError(f"{who} returned {len(floats)} values for {n} responses")
    for i, v in enumerate(floats):
        if not math.isfinite(v):
            raise ValueError(f"{who} returned a non-finite value ({v}) for response {i}")
    return torch.tensor(floats, dtype=torch.float32)


def unique_names(names: Sequence[str]) -> list[str]:
    """Suffix repeats with #2, #3, ... so that parts never overwrite each other (two length rules, two "rm:model")."""
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}#{seen[n]}")
    return out


# ----------------------------------------------------------------------------------------------------------------------
# reward model


ENCODING_FILE = "rlhfkit_encoding.json"
"""Written beside a reward model by `rlhfkit rm` / `rlhfkit prm`: the max_length / max_prompt_length its rows were
encoded with, and for a process reward model {"process": {"delimiter": ...}}."""


class RewardModelSource:
    """A scalar-head reward model, encoded exactly as the reward-model trainer encoded pairs.

    Each (prompt, response) goes through ``ChatFormatter.encode_completion`` (chat template, EOS exactly once),
    sequences are right-padded and scored by ``model(input_ids, attention_mask).logits.squeeze(-1)`` as in
    ``rlhfkit.trainers.rm``. Over-long rows follow the trainer's keep_end policy: the prompt is cut from the left to
    ``max_prompt_length`` (default ``max_length // 2``, the RM trainer's default ratio; pass its
    ``data.max_prompt_length`` to match a run exactly), then the response from the right to fit ``max_length``;
    ``truncation_report`` counts them. Batches are formed longest-first to cut padding; scores come back in input order.

    A process reward model (``delimiter`` set; read from the directory of `rlhfkit prm`) scores every step at its end
    token: ``steps`` holds σ(score) = P(step correct) per step, placed by algo.reward_placement=process, and the total
    is the smallest of them (a solution is as good as its worst step; Wang et al. 2024 §3.4, "min"). A step cut off by
    truncation gets the score of the last token the model saw.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        batch_size: int = 16,
        max_length: int = 1024,
        name: str = "rm",
        max_prompt_length: int | None = None,
        heads: Sequence[str] | None = None,
        head_weights: Mapping[str, float] | None = None,
        delimiter: str | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"reward model {name!r}: batch_size must be >= 1, got {batch_size}")
        if max_length < 2:
            raise ValueError(f"reward model {name!r}: max_length must be >= 2, got {max_length}")
        num_labels = getattr(getattr(model, "config", None), "num_labels", 1)
        if heads is None and num_labels != 1:
            raise ValueError(f"reward model {name!r} has num_labels={num_labels}; a scalar reward needs 1")
        if heads is not None and num_labels != len(heads):
            raise ValueError(f"reward model {name!r} has num_labels={num_labels} but {len(heads)} heads {list(heads)}")
        self.heads: list[str] | None = list(heads) if heads is not None else None
        """Multi-objective: the head names; parts are the heads' scores and total = sum_k head_weights[k] * score_k."""
        unknown = sorted(set(head_weights or {}) - set(self.heads or []))
        if unknown:
            raise ValueError(f"reward model {name!r}: weights for unknown heads {unknown} (heads: {self.heads})")
        self.head_weights = [float((head_weights or {}).get(h, 1.0)) for h in self.heads or []]
        self.model, self.tokenizer, self.batch_size, self.name = model, tokenizer, batch_size, name
        self.delimiter = delimiter
        self.formatter = ChatFormatter(tokenizer, max_length, max_prompt_length or max_length // 2, "keep_end")
        # the head pools at the last token that is not config.pad_token_id, so pad with exactly that id
        pad = getattr(getattr(model, "config", None), "pad_token_id", None)
        self.pad_id: int = pad if pad is not None else tokenizer.pad_token_id
        if self.pad_id is None:
            raise ValueError(f"reward model {name!r}: neither the model config nor the tokenizer has a pad token id")

    @classmethod
    def from_path(
        cls,
        path: str | os.PathLike[str],
        device: str | torch.device = "cpu",
        dtype: str = "float32",
        batch_size: int = 16,
        max_length: int | None = None,
        name: str | None = None,
        max_prompt_length: int | None = None,
        head_weights: Mapping[str, float] | None = None,
    ) -> RewardModelSource:
        """Load a reward model directory (or PEFT adapter) saved by ``rlhfkit rm``; frozen, in eval mode, on device.
        A multi-objective one (saved with ``objectives``) scores every head (see ``heads``).

        Lengths left as None are those the model was trained with (``rlhfkit_encoding.json``, written by ``rlhfkit
        rm``), each on its own, so new responses are cut exactly as its training pairs were (a wider max_length
        alone keeps the trained prompt cut: these models can be very sensitive to how much of the prompt they see);
        without that file, 1024 and half of it.
        """
        saved = Path(os.fspath(path)) / ENCODING_FILE
        trained = json.loads(saved.read_text()) if saved.exists() else {}
        if trained:  # each length not given is the trained one (a new max_length alone keeps the prompt's cut)
            max_length = max_length or int(trained["max_length"])
            max_prompt_length = max_prompt_length or min(int(trained["max_prompt_length"]), max_length - 1)
        max_length = max_length or 1024
        delimiter = (trained.get("process") or {}).get("delimiter")

        heads = reward_heads(path)
        kind = "multi_reward" if heads is not None else "reward"
        model, tokenizer = load_for_inference(path, dtype, device, kind=kind)  # type: ignore[arg-type]
        label = name or f"rm:{Path(os.fspath(path)).name}"
        return cls(
            model, tokenizer, batch_size, max_length, label, max_prompt_length, heads, head_weights, delimiter=delimiter
        )

    @property
    def truncation_report(self) -> Any:
        return self.formatter.report

    def encode(self, prompt: Prompt, response: str) -> list[int]:
        enc = self.formatter.encode_completion(prompt, response)  # never None under keep_end
        assert enc is not None
        return enc[0] + enc[1]

    def __call__(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> Scores:
        _check_lengths(self.name, prompts, responses)
        if self.delimiter is not None:
            return self._score_steps(prompts, responses)
        seqs = [self.encode(p, r) for p, r in zip(prompts, responses)]
        out = torch.zeros(len(seqs), len(self.heads or [0]), dtype=torch.float32)  # (B, K)
        for idx, ids, mask in self._batches(seqs):
            out[idx] = self.model(input_ids=ids, attention_mask=mask).logits.float().cpu()
        bad = (~torch.isfinite(out).all(-1)).nonzero().flatten().tolist()
        if bad:
            raise ValueError(f"reward model {self.name!r} produced non-finite scores for responses {bad[:10]}")
        if self.heads is None:
            return Scores(total=out[:, 0], parts={self.name: out[:, 0]})
        total = out @ torch.tensor(self.head_weights, dtype=torch.float32)  # (B,) weighted sum of the heads
        return Scores(total=total, parts={h: out[:, k] for k, h in enumerate(self.heads)})

    def _batches(self, seqs: Sequence[list[int]]) -> Iterator[tuple[list[int], Tensor, Tensor]]:
        """(row indices, ids, attention mask) on the model's device, longest rows first (memory peaks on batch one),
        in eval mode without gradients (no dropout while scoring, even if the caller trains this model elsewhere)."""
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                for start in range(0, len(order), self.batch_size):
                    idx = order[start : start + self.batch_size]
                    ids, mask = pad_batch([seqs[i] for i in idx], self.pad_id, side="right")
                    yield idx, ids.to(device), mask.to(device)
        finally:
            self.model.train(was_training)

    def _score_steps(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> Scores:
        encoded = [encode_steps(self.formatter, p, r, self.delimiter or "\n") for p, r in zip(prompts, responses)]
        probs: list[list[float]] = [[] for _ in encoded]
        for idx, ids, mask in self._batches([e[0] for e in encoded]):
            per_token = token_scores(self.model, ids, mask).cpu()  # (b, T)
            for j, i in enumerate(idx):
                probs[i] = torch.sigmoid(per_token[j, encoded[i][1]]).tolist()
        if any(not math.isfinite(v) for row in probs for v in row):
            raise ValueError(f"process reward model {self.name!r} produced non-finite step scores")
        total = torch.tensor([min(row) if row else 0.0 for row in probs], dtype=torch.float32)
        steps = [list(zip(enc[2], row)) for enc, row in zip(encoded, probs)]
        return Scores(total=total, parts={self.name: total}, steps=steps)


# ----------------------------------------------------------------------------------------------------------------------
# ensemble


# (M, B) member scores, (B,) population std, std_coef -> (B,) total
ENSEMBLE_REDUCTIONS: dict[str, Callable[[Tensor, Tensor, float], Tensor]] = {
    "mean": lambda s, std, k: s.mean(0),
    "min": lambda s, std, k: s.min(0).values,  # worst-case optimization (Coste et al. 2023, "WCO")
    # pessimistic under disagreement; cf. Coste et al. 2023 "UWO", which subtracts the variance instead of the std
    "mean-std": lambda s, std, k: s.mean(0) - k * std,
}


class EnsembleSource:
    """Several reward sources (usually reward models) reduced to one score per response.

    uncertainty = the POPULATION std across members (divide by M, not M-1): defined for any M >= 1 and the std of
    the members' actual scores, so mean-std is mean - std_coef * std of exactly those values. parts = each member.
    """

    def __init__(
        self,
        members: Sequence[RewardSource],
        reduce: str = "mean",
        std_coef: float = 1.0,
        name: str = "ensemble",
    ) -> None:
        if not members:
            raise ValueError(f"ensemble {name!r} needs at least one member")
        if reduce not in ENSEMBLE_REDUCTIONS:
            raise ValueError(f"ensemble {name!r}: reduce={reduce!r}; choose {', '.join(ENSEMBLE_REDUCTIONS)}")
        if not (math.isfinite(std_coef) and std_coef >= 0):
            raise ValueError(f"ensemble {name!r}: std_coef must be a finite number >= 0, got {std_coef}")
        self.members, self.reduce, self.std_coef, self.name = list(members), reduce, float(std_coef), name
        self.member_names = unique_names([m.name for m in self.members])

    def __call__(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> Scores:
        _check_lengths(self.name, prompts, responses)
        totals = [m(prompts, responses).total.float().cpu() for m in self.members]
        stacked = torch.stack(totals)  # (M, B)
        std = stacked.std(0, correction=0)  # population std, see the class docstring
        total = ENSEMBLE_REDUCTIONS[self.reduce](stacked, std, self.std_coef)
        return Scores(total=total, parts=dict(zip(self.member_names, totals)), uncertainty=std)


# ----------------------------------------------------------------------------------------------------------------------
# rule and callable


class RuleSource:
    """A builtin rule from ``rlhfkit.rewards.rules.RULES``; params are checked when the source is built."""

    def __init__(self, rule: str, params: Mapping[str, Any] | None = None, name: str | None = None) -> None:
        self.params = dict(params or {})
        check_params(rule, self.params)
        self.rule, self.fn, self.name = rule, RULES[rule], name or f"rule:{rule}"

    def __call__(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> Scores:
        _check_lengths(self.name, prompts, responses)
        values = self.fn(_texts(prompts), list(responses), **self.params)
        t = checked_scores(values, len(responses), f"rule {self.rule!r}")
        return Scores(total=t, parts={self.name: t})


def load_callable(spec: str) -> Callable[..., Any]:
    """ "package.module:function" or "path/to/file.py:function" -> the function (a file is imported once per path)."""
    if ":" not in spec:
        raise ValueError(f"callable {spec!r}: expected 'package.module:function' or 'path/to/file.py:function'")
    target, attr = spec.rsplit(":", 1)  # rsplit: a Windows drive letter has a colon too
    if not target or not attr:
        raise ValueError(f"callable {spec!r}: expected 'package.module:function' or 'path/to/file.py:function'")
    if target.endswith(".py") or "/" in target or os.sep in target:
        file = Path(target).expanduser().resolve()
        if file.suffix != ".py":
            raise ValueError(f"callable {spec!r}: {file} is not a .py file")
        if not file.is_file():
            raise FileNotFoundError(f"callable {spec!r}: no such file {file}")
        # a unique module name per file, registered in sys.modules so dataclasses / pickling inside it work
        modname = f"rlhfkit_reward_{file.stem}_{hashlib.sha1(str(file).encode()).hexdigest()[:10]}"
        module = sys.modules.get(modname)
        if module is None:
            mspec = importlib.util.spec_from_file_location(modname, file)
            if mspec is None or mspec.loader is None:
                raise ImportError(f"callable {spec!r}: cannot load {file} as a module")
            module = importlib.util.module_from_spec(mspec)
            sys.modules[modname] = module
            try:
                mspec.loader.exec_module(module)
            except Exception as e:
                del sys.modules[modname]
                raise ImportError(f"callable {spec!r}: importing {file} failed: {type(e).__name__}: {e}") from e
    else:
        try:
            module = importlib.import_module(target)
        except Exception as e:
            raise ImportError(f"callable {spec!r}: cannot import module {target!r}: {type(e).__name__}: {e}") from e
    obj: Any = module
    for part in attr.split("."):  # "Class.method" and nested attributes work too
        if not hasattr(obj, part):
            raise AttributeError(f"callable {spec!r}: {target!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"callable {spec!r}: {attr!r} is a {type(obj).__name__}, not a function")
    return obj


class CallableSource:
    """Any Python function ``fn(prompts: list[str], responses: list[str], **params) -> sequence of floats``.

    ``fn`` is a callable or a spec string "package.module:function" / "path/to/file.py:function". Prompts passed to it
    are the last user turns. The params are bound against its signature when the source is built, so a typo fails
    early; the result must hold one finite number per response, or, for a process reward, one list of
    ``(end, reward)`` steps per response (``end`` = the character offset where the step ends in the response; see
    ``Scores.steps``), whose total is the sum of its step rewards.
    """

    def __init__(
        self,
        fn: str | Callable[..., Any],
        params: Mapping[str, Any] | None = None,
        name: str | None = None,
    ) -> None:
        self.spec = fn if isinstance(fn, str) else f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', fn)}"
        self.fn = load_callable(fn) if isinstance(fn, str) else fn
        self.params = dict(params or {})
        self.name = name or f"callable:{getattr(self.fn, '__name__', 'fn')}"
        try:
            sig = inspect.signature(self.fn)
        except (TypeError, ValueError):  # builtins without a signature: checked when called
            sig = None
        if sig is not None:
            try:
                sig.bind([], [], **self.params)
            except TypeError as e:
                raise TypeError(f"callable {self.spec!r} cannot take (prompts, responses, **params): {e}") from None

    def __call__(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> Scores:
        _check_lengths(self.name, prompts, responses)
        values = self.fn(_texts(prompts), list(responses), **self.params)
        who = f"callable {self.spec!r}"
        if isinstance(values, Sequence) and values and all(isinstance(v, (list, tuple)) for v in values):
            steps = checked_steps(values, responses, who)
            t = torch.tensor([sum(r for _, r in row) for row in steps], dtype=torch.float32)
            return Scores(total=t, parts={self.name: t}, steps=steps)
        t = checked_scores(values, len(responses), who)
        return Scores(total=t, parts={self.name: t})


def checked_steps(values: Sequence[Any], responses: Sequence[str], who: str) -> list[list[tuple[int, float]]]:
    """Per-response lists of (end, reward) steps, checked: one list per response, integer ends inside the response,
    finite rewards; one-line errors name ``who`` and the response."""
    if len(values) != len(responses):
        raise ValueError(f"{who} returned {len(values)} step lists for {len(responses)} responses")
    out = []
    for i, (row, text) in enumerate(zip(values, responses)):
        steps = []
        for step in row:
            ok = isinstance(step, (list, tuple)) and len(step) == 2 and isinstance(step[0], int)
            ok = ok and isinstance(step[1], (int, float)) and not isinstance(step[1], bool)
            if not ok or not 0 <= step[0] <= len(text) or not math.isfinite(step[1]):
                raise ValueError(
                    f"{who}: response {i} has step {step!r}; a step is (end, reward) with 0 <= end <= {len(text)}"
                )
            steps.append((int(step[0]), float(step[1])))
        out.append(steps)
    return out


# ----------------------------------------------------------------------------------------------------------------------
# combination and normalization


class WeightedSum:
    """total = sum_i w_i * s_i (multi-objective scalarization).

    parts keep every source's unweighted total under its name, and a source's own parts (e.g. ensemble members) as
    "<source>/<part>". uncertainty, if any source has one: sqrt(sum_i (w_i u_i)^2), i.e. the sources' errors are
    treated as independent; sources without one contribute 0. steps, if any source scores steps: every source's
    weighted step rewards, an outcome-only source's score as a step ending with the response.
    """

    def __init__(self, sources: Sequence[RewardSource], weights: Sequence[float], name: str = "total") -> None:
        if not sources:
            raise ValueError(f"weighted sum {name!r} needs at least one source")
        if len(sources) != len(weights):
            raise ValueError(f"weighted sum {name!r}: {len(sources)} sources but {len(weights)} weights")
        for s, w in zip(sources, weights):
            if not math.isfinite(w):
                raise ValueError(f"weighted sum {name!r}: weight of {s.name!r} must be finite, got {w}")
        self.sources, self.weights, self.name = list(sources), [float(w) for w in weights], name
        self.names = unique_names([s.name for s in self.sources])

    def __call__(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> Scores:
        _check_lengths(self.name, prompts, responses)
        total = torch.zeros(len(responses), dtype=torch.float32)
        variance = torch.zeros(len(responses), dtype=torch.float32)
        parts: dict[str, Tensor] = {}
        any_uncertainty = False
        results = [src(prompts, responses) for src in self.sources]
        steps: list[list[tuple[int, float]]] | None = None
        if any(r.steps is not None for r in results):  # a process source: outcome-only ones score the last step
            rows: list[list[tuple[int, float]]] = [[] for _ in responses]
            for r, w in zip(results, self.weights):
                for row, own in zip(rows, step_rewards(r, responses)):
                    row.extend((end, w * v) for end, v in own)
            steps = [sorted(row) for row in rows]
        for name, src, w, s in zip(self.names, self.sources, self.weights, results):
            t = s.total.float().cpu()
            total += w * t
            parts[name] = t
            for k, v in s.parts.items():
                if k != src.name:
                    parts[f"{name}/{k}"] = v
            if s.uncertainty is not None:
                any_uncertainty = True
                variance += (w * s.uncertainty.float().cpu()) ** 2
        uncertainty = variance.sqrt() if any_uncertainty else None
        return Scores(total=total, parts=parts, uncertainty=uncertainty, steps=steps)


class RunningNormalizer:
    """Running mean and variance of every score seen, merged batch by batch (Chan, Golub & LeVeque 1979).

    Statistics are float64 Python numbers; the variance is the population one (M2 / n), so a first batch comes out with
    mean 0 and std 1 exactly. ``normalize`` updates first, then standardizes with the statistics INCLUDING the batch.
    Each process keeps its own statistics (gather the scores first if all ranks must agree).
    """

    def __init__(self, eps: float = 1e-8, clip: float | None = None) -> None:
        if clip is not None and not clip > 0:
            raise ValueError(f"RunningNormalizer: clip must be > 0, got {clip}")
        self.eps, self.clip = eps, clip
        self.count, self.mean, self.m2 = 0, 0.0, 0.0

    @property
    def var(self) -> float:
        return self.m2 / self.count if self.count else 0.0

    @property
    def std(self) -> float:
        return math.sqrt(self.var)

    def update(self, x: Tensor | Sequence[float]) -> None:
        b = torch.as_tensor(x, dtype=torch.float64).detach().flatten().cpu()
        if b.numel() == 0:
            return
        if not torch.isfinite(b).all():
            raise ValueError("RunningNormalizer: non-finite scores would corrupt the running statistics")
        n_b, mean_b = b.numel(), float(b.mean())
        m2_b = float(((b - mean_b) ** 2).sum())
        n = self.count + n_b
        delta = mean_b - self.mean
        self.mean += delta * n_b / n  # Chan et al. 1979, eq. 2.1 (pairwise merge of two partial results)
        self.m2 += m2_b + delta * delta * self.count * n_b / n
        self.count = n

    def standardize(self, x: Tensor) -> Tensor:
        """(x - mean) / sqrt(var + eps) with the current statistics, then the optional clip; no update."""
        out = ((x.double() - self.mean) / math.sqrt(self.var + self.eps)).float()
        return out.clamp(-self.clip, self.clip) if self.clip is not None else out

    def normalize(self, x: Tensor | Sequence[float]) -> Tensor:
        t = torch.as_tensor(x, dtype=torch.float32).detach().cpu()
        self.update(t)
        return self.standardize(t)

    __call__ = normalize

    def state_dict(self) -> dict[str, float | int]:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        missing = {"count", "mean", "m2"} - set(state)
        if missing:
            raise KeyError(f"RunningNormalizer.load_state_dict: missing {', '.join(sorted(missing))}")
        self.count, self.mean, self.m2 = int(state["count"]), float(state["mean"]), float(state["m2"])


class Normalized:
    """A source whose total is standardized by a RunningNormalizer (if given) and then clipped to [-clip, clip].

    parts stay raw and gain "raw_total" (the total before normalization); uncertainty is divided by the same std;
    process steps stay raw.
    ``state_dict`` / ``load_state_dict`` carry the normalizer's statistics across a resume.
    """

    def __init__(
        self, source: RewardSource, normalizer: RunningNormalizer | None = None, clip: float | None = None
    ) -> None:
        if clip is not None and not clip > 0:
            raise ValueError(f"reward clip must be > 0, got {clip}")
        self.source, self.normalizer, self.clip, self.name = source, normalizer, clip, source.name

    def __call__(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> Scores:
        s = self.source(prompts, responses)
        raw = s.total.float().cpu()
        total, uncertainty = raw, s.uncertainty
        if self.normalizer is not None:
            total = self.normalizer.normalize(raw)
            if uncertainty is not None:
                uncertainty = uncertainty.float().cpu() / math.sqrt(self.normalizer.var + self.normalizer.eps)
        if self.clip is not None:
            total = total.clamp(-self.clip, self.clip)
        return Scores(total=total, parts={**s.parts, "raw_total": raw}, uncertainty=uncertainty, steps=s.steps)

    def state_dict(self) -> dict[str, Any]:
        return self.normalizer.state_dict() if self.normalizer is not None else {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if self.normalizer is not None:
            self.normalizer.load_state_dict(state)
