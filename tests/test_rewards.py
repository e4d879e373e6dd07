"""rlhfkit.rewards: reward model, ensemble, rules, callables, sentiment, weighted sum, running normalization, build."""

from __future__ import annotations

import math
import random
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from rlhfkit.config import ConfigError, PPOConfig, RewardConfig, from_dict, load_config
from rlhfkit.models.loading import ModelNotFoundError, load_reward_model, load_tokenizer
from rlhfkit.models.tiny import save_tiny
from rlhfkit.rewards import (
    RULES,
    CallableSource,
    EnsembleSource,
    Normalized,
    RewardModelSource,
    RuleSource,
    RunningNormalizer,
    Scores,
    WeightedSum,
    apply_rule,
    build_reward,
    load_callable,
)
from rlhfkit.tasks.sentiment import SentimentSource, analyzer, sentiment_scores

PROMPTS = [
    [{"role": "user", "content": "Continue this movie review: The film opens"}],
    [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Say something nice."}],
    [{"role": "user", "content": "Hi"}],
    [
        {"role": "user", "content": "Tell me a joke."},
        {"role": "assistant", "content": "Why did the chicken cross the road?"},
        {"role": "user", "content": "Why?"},
    ],
    [{"role": "user", "content": "What is the capital of France?"}],
]
RESPONSES = [
    "with a wonderful shot of the sea, and the music is great.",
    "You are great.",
    "",
    "To get to the other side, of course. It is the oldest joke in the book and it still works.",
    "Paris.",
]


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg, msg
    return msg


class Const:
    """A reward source returning fixed values (ignores its inputs), optionally with an uncertainty."""

    def __init__(self, name: str, values: Sequence[float], uncertainty: Sequence[float] | None = None) -> None:
        self.name, self.values, self.u = name, list(values), uncertainty

    def __call__(self, prompts, responses) -> Scores:
        t = torch.tensor(self.values, dtype=torch.float32)
        u = None if self.u is None else torch.tensor(self.u, dtype=torch.float32)
        return Scores(total=t, parts={self.name: t}, uncertainty=u)


# ----------------------------------------------------------------------------------------------------------------------
# reward model


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("rewards") / "rm", "reward", seed=3)


@pytest.fixture(scope="module")
def rm_dir2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("rewards") / "rm_b", "reward", seed=4)


@pytest.fixture(scope="module")
def rm(rm_dir: Path) -> RewardModelSource:
    return RewardModelSource.from_path(rm_dir, batch_size=2)


def hand_ids(tokenizer, prompt, response: str) -> list[int]:
    """ChatML by hand: the rendered conversation up to and including the assistant turn's <|im_end|> (one EOS)."""
    text = tokenizer.apply_chat_template(
        list(prompt) + [{"role": "assistant", "content": response}], tokenize=False, add_generation_prompt=False
    )
    assert text.endswith("<|im_end|>\n")
    return tokenizer(text[: -len("\n")], add_special_tokens=False)["input_ids"]


def test_rm_source_equals_hand_forward_one_sequence_at_a_time(rm_dir: Path, rm: RewardModelSource) -> None:
    model, tok = load_reward_model(rm_dir).eval(), load_tokenizer(rm_dir)
    expected = []
    for p, r in zip(PROMPTS, RESPONSES):
        ids = hand_ids(tok, p, r)
        # every ChatML turn ends with <|im_end|> (= EOS): one per prompt turn plus exactly one for the response
        assert rm.encode(p, r) == ids and ids[-1] == tok.eos_token_id and ids.count(tok.eos_token_id) == len(p) + 1
        with torch.no_grad():  # no padding at all: batch of one
            expected.append(model(input_ids=torch.tensor([ids])).logits[0, 0].item())
    got = rm(PROMPTS, RESPONSES)
    assert got.total.dtype == torch.float32 and got.total.shape == (len(PROMPTS),)
    torch.testing.assert_close(got.total, torch.tensor(expected), atol=1e-5, rtol=0)
    assert set(got.parts) == {"rm:rm"} and got.uncertainty is None
    assert len(set(expected)) == len(expected)  # a random head gives distinct scores: order errors would show


def test_rm_source_invariant_to_order_and_batch_size(rm_dir: Path, rm: RewardModelSource) -> None:
    base = rm(PROMPTS, RESPONSES).total
    perm = [3, 0, 4, 2, 1]
    shuffled = rm([PROMPTS[i] for i in perm], [RESPONSES[i] for i in perm]).total
    torch.testing.assert_close(shuffled, base[perm], atol=1e-5, rtol=0)
    for bs in (1, 3, 16):
        other = RewardModelSource(rm.model, rm.tokenizer, batch_size=bs, name="x")
        torch.testing.assert_close(other(PROMPTS, RESPONSES).total, base, atol=1e-5, rtol=0)
    # a plain string prompt is one user turn
    as_str = rm(["Hi"], [""]).total
    torch.testing.assert_close(as_str, base[2:3], atol=1e-6, rtol=0)
    assert rm([], []).total.shape == (0,)


def test_rm_source_keeps_the_trained_prompt_cut_when_only_max_length_is_given(rm_dir: Path, tmp_path: Path) -> None:
    """A reward model trained on the end of its prompts (rlhfkit_encoding.json) reads the same tokens when a caller
    only changes max_length: the prompt is still cut to the trained max_prompt_length, not to half of max_length."""
    import shutil

    from rlhfkit.rewards.sources import ENCODING_FILE

    saved = tmp_path / "rm"
    shutil.copytree(rm_dir, saved)
    (saved / ENCODING_FILE).write_text('{"max_length": 32, "max_prompt_length": 6}')
    long_prompt = [{"role": "user", "content": "one two three four five six seven eight nine ten " * 3}]
    trained = RewardModelSource.from_path(saved)
    wider = RewardModelSource.from_path(saved, max_length=48)  # room for more response, same prompt cut
    assert (trained.formatter.max_length, trained.formatter.max_prompt_length) == (32, 6)
    assert (wider.formatter.max_length, wider.formatter.max_prompt_length) == (48, 6)
    assert wider.encode(long_prompt, "ok") == trained.encode(long_prompt, "ok")
    explicit = RewardModelSource.from_path(saved, max_length=48, max_prompt_length=20)
    assert explicit.formatter.max_prompt_length == 20
    assert len(explicit.encode(long_prompt, "ok")) > len(trained.encode(long_prompt, "ok"))


def test_rm_source_restores_training_mode_and_keeps_no_grad(rm: RewardModelSource) -> None:
    rm.model.train()
    try:
        scores = rm(PROMPTS[:2], RESPONSES[:2])
        assert rm.model.training and not scores.total.requires_grad
    finally:
        rm.model.eval()


def test_rm_source_truncates_long_rows_keep_end(rm: RewardModelSource) -> None:
    short = RewardModelSource(rm.model, rm.tokenizer, batch_size=4, max_length=24, name="short")
    long_prompt = [{"role": "user", "content": "The movie was wonderful and the actors were great. " * 6}]
    ids = short.encode(long_prompt, "I loved it. " * 10)
    assert len(ids) == 24 and short.truncation_report.truncated == 1
    assert short([long_prompt], ["I loved it. " * 10]).total.shape == (1,)


def test_rm_source_errors(rm: RewardModelSource) -> None:
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        rm(PROMPTS[:2], RESPONSES[:1])
    with pytest.raises(ValueError, match="batch_size"):
        RewardModelSource(rm.model, rm.tokenizer, batch_size=0)


# ----------------------------------------------------------------------------------------------------------------------
# ensemble


def test_ensemble_reductions_and_uncertainty_by_hand() -> None:
    a, b, c = Const("a", [1.0, 4.0, -2.0]), Const("b", [3.0, 4.0, 0.0]), Const("c", [2.0, 4.0, 5.0])
    # member scores per response: (1,3,2), (4,4,4), (-2,0,5); population std = sqrt(sum of squared deviations / 3)
    means = [2.0, 4.0, 1.0]
    stds = [math.sqrt((1 + 1 + 0) / 3), 0.0, math.sqrt((9 + 1 + 16) / 3)]
    x = ["p"] * 3
    mean = EnsembleSource([a, b, c], "mean")(x, x)
    torch.testing.assert_close(mean.total, torch.tensor(means))
    torch.testing.assert_close(mean.uncertainty, torch.tensor(stds))
    assert set(mean.parts) == {"a", "b", "c"}
    torch.testing.assert_close(mean.parts["b"], torch.tensor([3.0, 4.0, 0.0]))
    torch.testing.assert_close(EnsembleSource([a, b, c], "min")(x, x).total, torch.tensor([1.0, 4.0, -2.0]))
    pess = EnsembleSource([a, b, c], "mean-std", std_coef=2.0)(x, x)
    torch.testing.assert_close(pess.total, torch.tensor([m - 2.0 * s for m, s in zip(means, stds)]))
    # population std agrees with numpy's default (ddof=0)
    np.testing.assert_allclose(mean.uncertainty.numpy(), np.std([[1, 4, -2], [3, 4, 0], [2, 4, 5]], axis=0), rtol=1e-6)


def test_ensemble_duplicate_names_and_errors() -> None:
    ens = EnsembleSource([Const("rm:model", [1.0]), Const("rm:model", [2.0])])
    assert set(ens(["p"], ["r"]).parts) == {"rm:model", "rm:model#2"}
    with pytest.raises(ValueError, match="reduce='median'"):
        EnsembleSource([Const("a", [1.0])], "median")
    with pytest.raises(ValueError, match="at least one member"):
        EnsembleSource([])


def test_ensemble_of_reward_models(rm_dir: Path, rm_dir2: Path) -> None:
    a, b = RewardModelSource.from_path(rm_dir), RewardModelSource.from_path(rm_dir2)
    ens = EnsembleSource([a, b], "mean-std", std_coef=1.0)(PROMPTS, RESPONSES)
    ta, tb = a(PROMPTS, RESPONSES).total, b(PROMPTS, RESPONSES).total
    torch.testing.assert_close(ens.uncertainty, (ta - tb).abs() / 2)  # population std of two values
    torch.testing.assert_close(ens.total, (ta + tb) / 2 - (ta - tb).abs() / 2)  # = min for two members
    assert set(ens.parts) == {"rm:rm", "rm:rm_b"}


# ----------------------------------------------------------------------------------------------------------------------
# rules


def test_rule_length_hand_values() -> None:
    resp = ["one two three", "", "a b c d e f g"]
    assert apply_rule("length", [""] * 3, resp, {"target": 5, "coef": 0.1}) == pytest.approx([-0.2, -0.5, -0.2])
    assert apply_rule("length", [""] * 3, resp, {"max_words": 4, "coef": 0.5}) == pytest.approx([0.0, 0.0, -1.5])
    assert RULES["length"]([], ["  spaced\n\tout  words "], target=3) == pytest.approx([0.0])
    assert apply_rule("length", ["x"], ["a b"], {"target": 0}) == pytest.approx([-0.02])  # default coef 0.01


def test_rule_format_hand_values() -> None:
    resp = ["Answer: 42", "The answer: 42", "answer: none", "Answer: 7\nmore"]
    search = apply_rule("format", [""] * 4, resp, {"pattern": r"Answer: \d+"})
    assert search == [1.0, 0.0, 0.0, 1.0]
    full = apply_rule("format", [""] * 4, resp, {"pattern": r"Answer: \d+", "fullmatch": True, "miss_reward": -1})
    assert full == [1.0, -1.0, -1.0, -1.0]
    ci = apply_rule("format", [""] * 4, resp, {"pattern": r"answer: \w+", "flags": "i", "match_reward": 0.5})
    assert ci == [0.5, 0.5, 0.5, 0.5]
    dotall = apply_rule(
        "format", [""], ["Answer: 7\nmore"], {"pattern": r"Answer.*more", "fullmatch": True, "flags": "s"}
    )
    assert dotall == [1.0]


def test_rule_keywords_hand_values() -> None:
    resp = ["Great film, great cast. GREAT!", "the greatest show", "a must see, truly great", "nothing"]
    presence = apply_rule("keywords", [""] * 4, resp, {"words": ["great", "must see"], "weight": 0.5})
    assert presence == [0.5, 0.0, 1.0, 0.0]  # "greatest" is not the word "great"
    counts = apply_rule("keywords", [""] * 4, resp, {"words": ["great"], "count": True})
    assert counts == [3.0, 0.0, 1.0, 0.0]
    cased = apply_rule("keywords", [""] * 4, resp, {"words": "great", "count": True, "case_sensitive": True})
    assert cased == [1.0, 0.0, 1.0, 0.0]
    banned = apply_rule("keywords", [""], ["I love C++ and c++"], {"words": ["c++"], "count": True, "weight": -1})
    assert banned == [-2.0]


@pytest.mark.parametrize(
    ("rule", "params", "needle"),
    [
        ("length", {"target": 5, "tagret": 3}, "rule 'length': unknown param 'tagret'"),
        ("length", {}, "exactly one of the params 'target' or 'max_words'"),
        ("length", {"target": 5, "max_words": 9}, "exactly one of the params 'target' or 'max_words'"),
        ("length", {"target": "five"}, "rule 'length': param 'target' must be a finite number"),
        ("format", {}, "rule 'format': missing required param 'pattern'"),
        ("format", {"pattern": "(unclosed"}, "rule 'format': param 'pattern' '(unclosed' is not a valid regex"),
        ("format", {"pattern": "x", "fullmatch": "yes"}, "rule 'format': param 'fullmatch' must be true or false"),
        ("format", {"pattern": "x", "flags": "q"}, "rule 'format': param 'flags' has unknown letter 'q'"),
        ("keywords", {"words": []}, "rule 'keywords': param 'words' must be a non-empty list"),
        ("keywords", {"words": ["a"], "weigth": 2}, "rule 'keywords': unknown param 'weigth'"),
        ("sentiment", {}, "unknown rule 'sentiment'"),
    ],
)
def test_rule_param_errors(rule: str, params: dict, needle: str) -> None:
    with pytest.raises(ValueError) as exc:
        RuleSource(rule, params)
    assert needle in one_line(exc)


def test_rule_source_uses_last_user_turn_and_names() -> None:
    src = RuleSource("format", {"pattern": "x"})
    assert src.name == "rule:format"
    out = src(PROMPTS[:2], ["x", "y"])
    torch.testing.assert_close(out.total, torch.tensor([1.0, 0.0]))
    assert list(out.parts) == ["rule:format"]


# ----------------------------------------------------------------------------------------------------------------------
# callables

MODULE_SOURCE = textwrap.dedent(
    """
    def prompt_chars(prompts, responses, scale=1.0):
        return [scale * (len(p) + len(r)) for p, r in zip(prompts, responses)]

    def too_few(prompts, responses):
        return [0.0] * (len(responses) - 1)

    def not_finite(prompts, responses):
        return [float("nan")] * len(responses)

    NOT_A_FUNCTION = 3
    """
)


def test_callable_from_module_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_rewards_mod.py").write_text(MODULE_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    src = CallableSource("my_rewards_mod:prompt_chars", {"scale": 2.0})
    assert src.name == "callable:prompt_chars"
    out = src(PROMPTS[:3], RESPONSES[:3])
    expected = [
        2.0 * (len(t) + len(r))
        for t, r in zip(["Continue this movie review: The film opens", "Say something nice.", "Hi"], RESPONSES[:3])
    ]
    torch.testing.assert_close(out.total, torch.tensor(expected))


def test_callable_from_file(tmp_path: Path) -> None:
    f = tmp_path / "sub dir" / "scorer.py"
    f.parent.mkdir()
    f.write_text(MODULE_SOURCE)
    src = CallableSource(f"{f}:prompt_chars", name="chars")
    torch.testing.assert_close(src(["ab"], ["cde"]).total, torch.tensor([5.0]))
    assert load_callable(f"{f}:prompt_chars") is src.fn  # the file is imported once


def test_callable_errors(tmp_path: Path) -> None:
    f = tmp_path / "scorer_errs.py"
    f.write_text(MODULE_SOURCE)
    with pytest.raises(ValueError) as exc:
        CallableSource(f"{f}:too_few")(["a", "b"], ["c", "d"])
    assert "too_few" in one_line(exc) and "returned 1 values for 2 responses" in str(exc.value)
    with pytest.raises(ValueError) as exc:
        CallableSource(f"{f}:not_finite")(["a"], ["c"])
    assert "not_finite" in one_line(exc) and "non-finite value (nan) for response 0" in str(exc.value)
    with pytest.raises(TypeError, match="prompt_chars.*scael"):
        CallableSource(f"{f}:prompt_chars", {"scael": 2})
    with pytest.raises(AttributeError, match="no attribute 'missing'"):
        load_callable(f"{f}:missing")
    with pytest.raises(TypeError, match="NOT_A_FUNCTION"):
        load_callable(f"{f}:NOT_A_FUNCTION")
    with pytest.raises(FileNotFoundError, match="nope.py"):
        load_callable(f"{tmp_path / 'nope.py'}:f")
    with pytest.raises(ImportError, match="no_such_module_xyz"):
        load_callable("no_such_module_xyz:f")
    with pytest.raises(ValueError, match="expected 'package.module:function'"):
        load_callable("just_a_name")
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(ImportError) as exc:
        load_callable(f"{broken}:f")
    assert "RuntimeError: boom" in one_line(exc)


# ----------------------------------------------------------------------------------------------------------------------
# sentiment


def test_vader_sentiment_orders_positive_above_negative() -> None:
    pos, neg, neutral = sentiment_scores(
        ["This movie was wonderful, I loved it!", "A terrible, boring film. I hated it.", ""]
    )
    assert 0.5 < pos <= 1.0 and -1.0 <= neg < -0.5 and neutral == 0.0
    src = SentimentSource()
    assert src.kind == "sentiment" and src.name == "sentiment"
    out = src(PROMPTS[:2], ["What a great and beautiful film.", "awful"])
    assert out.total[0] > 0 > out.total[1] and list(out.parts) == ["sentiment"]
    assert analyzer() is analyzer()  # the lexicon is loaded once


def test_negative_polarity_scores_minus_compound_and_is_its_own_part() -> None:
    texts = ["What a great and beautiful film.", "awful", "The film is ninety minutes long."]
    compound = sentiment_scores(texts)
    cfg = from_dict(
        RewardConfig,
        {
            "sources": [
                {"kind": "sentiment"},
                {"kind": "sentiment", "name": "negativity", "params": {"polarity": "negative"}},
            ]
        },
    )
    out = build_reward(cfg)(PROMPTS[:1] * 3, texts)
    assert out.parts["sentiment"].tolist() == pytest.approx(compound)
    assert out.parts["negativity"].tolist() == pytest.approx([-c for c in compound])
    assert out.total.tolist() == pytest.approx([0.0, 0.0, 0.0], abs=1e-6)  # opposed objectives, equal weights
    assert compound[0] > 0.5 and compound[1] < -0.4 and compound[2] == 0.0


# ----------------------------------------------------------------------------------------------------------------------
# weighted sum


def test_weighted_sum_by_hand() -> None:
    a, b = Const("a", [1.0, -2.0], uncertainty=[0.5, 1.0]), Const("b", [10.0, 20.0])
    ens = EnsembleSource([Const("m1", [0.0, 2.0]), Const("m2", [2.0, 2.0])], name="ens")  # mean 1, 2; std 1, 0
    out = WeightedSum([a, b, ens], [2.0, -0.5, 1.0])(["p"] * 2, ["r"] * 2)
    torch.testing.assert_close(out.total, torch.tensor([2 * 1 - 5 + 1, 2 * -2 - 10 + 2.0]))
    assert set(out.parts) == {"a", "b", "ens", "ens/m1", "ens/m2"}
    torch.testing.assert_close(out.parts["b"], torch.tensor([10.0, 20.0]))  # unweighted
    torch.testing.assert_close(out.uncertainty, torch.tensor([math.sqrt(1.0**2 + 1.0**2), math.sqrt(2.0**2)]))
    assert WeightedSum([b], [3.0])(["p"] * 2, ["r"] * 2).uncertainty is None
    with pytest.raises(ValueError, match="2 sources but 1 weights"):
        WeightedSum([a, b], [1.0])


# ----------------------------------------------------------------------------------------------------------------------
# running normalization


def test_running_normalizer_matches_numpy_over_concatenation() -> None:
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, size=n) for n in (1, 5, 17, 2, 64)] + [rng.normal(-50, 0.1, size=9)]
    norm = RunningNormalizer()
    seen: list[float] = []
    for batch in batches:
        out = norm.normalize(torch.tensor(batch, dtype=torch.float32))
        seen.extend(np.float32(batch).tolist())
        all_ = np.array(seen, dtype=np.float64)
        assert norm.count == len(all_)
        assert norm.mean == pytest.approx(all_.mean(), rel=1e-12, abs=1e-12)
        assert norm.var == pytest.approx(all_.var(), rel=1e-10, abs=1e-12)
        expected = (np.float32(batch) - all_.mean()) / np.sqrt(all_.var() + norm.eps)  # stats include this batch
        np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-6)
    first = RunningNormalizer().normalize([1.0, 2.0, 3.0, 6.0])
    assert float(first.mean()) == pytest.approx(0.0, abs=1e-6)
    assert float(first.std(correction=0)) == pytest.approx(1.0, abs=1e-6)


def test_running_normalizer_state_round_trip_and_clip() -> None:
    rng = random.Random(1)
    batches = [[rng.gauss(0, 1) for _ in range(n)] for n in (4, 7, 3, 5)]
    a = RunningNormalizer(clip=1.0)
    for batch in batches[:3]:
        a.normalize(batch)
    b = RunningNormalizer(clip=1.0)
    b.load_state_dict(a.state_dict())
    assert b.state_dict() == a.state_dict()
    torch.testing.assert_close(a.normalize(batches[3]), b.normalize(batches[3]), rtol=0, atol=0)
    assert float(b.normalize([100.0, -100.0]).abs().max()) == 1.0
    with pytest.raises(ValueError, match="non-finite"):
        b.normalize([float("nan")])
    with pytest.raises(KeyError, match="m2"):
        b.load_state_dict({"count": 1, "mean": 0.0})


def test_normalized_wrapper_scales_total_and_uncertainty() -> None:
    src = Const("s", [1.0, 3.0], uncertainty=[2.0, 2.0])
    wrapped = Normalized(src, RunningNormalizer(eps=0.0), clip=None)
    out = wrapped(["p"] * 2, ["r"] * 2)
    torch.testing.assert_close(out.total, torch.tensor([-1.0, 1.0]))  # mean 2, std 1
    torch.testing.assert_close(out.uncertainty, torch.tensor([2.0, 2.0]))
    torch.testing.assert_close(out.parts["raw_total"], torch.tensor([1.0, 3.0]))
    clipped = Normalized(Const("s", [-5.0, 0.5]), None, clip=2.0)(["p"] * 2, ["r"] * 2)
    torch.testing.assert_close(clipped.total, torch.tensor([-2.0, 0.5]))
    restored = Normalized(src, RunningNormalizer(eps=0.0))
    restored.load_state_dict(wrapped.state_dict())
    assert restored.normalizer.state_dict() == {"count": 2, "mean": 2.0, "m2": 2.0}


# ----------------------------------------------------------------------------------------------------------------------
# build_reward


def test_build_reward_single_model_from_yaml(tmp_path: Path, rm_dir: Path, rm: RewardModelSource) -> None:
    cfg_file = tmp_path / "ppo.yaml"
    cfg_file.write_text(f"reward:\n  sources:\n    - kind: model\n      path: {rm_dir}\n      batch_size: 3\n")
    cfg = load_config(PPOConfig, cfg_file)
    reward = build_reward(cfg.reward)
    assert isinstance(reward, RewardModelSource) and reward.name == "rm:rm" and reward.batch_size == 3
    torch.testing.assert_close(reward(PROMPTS, RESPONSES).total, rm(PROMPTS, RESPONSES).total, atol=1e-6, rtol=0)


def test_build_reward_weighted_normalized_clipped(tmp_path: Path, rm_dir: Path, rm: RewardModelSource) -> None:
    cfg = load_config(
        PPOConfig,
        overrides=[
            f"reward.sources=[{{kind: model, path: '{rm_dir}', weight: 2.0}}, "
            "{kind: rule, path: length, weight: 0.5, params: {target: 5, coef: 0.1}}, "
            "{kind: rule, path: length, params: {max_words: 3}}, {kind: sentiment, weight: -1}]",
        ],
    )
    raw = build_reward(cfg.reward)
    assert isinstance(raw, WeightedSum)
    assert raw.names == ["rm:rm", "rule:length", "rule:length#2", "sentiment"]
    out = raw(PROMPTS, RESPONSES)
    length = torch.tensor([-0.1 * abs(len(r.split()) - 5) for r in RESPONSES])
    length2 = torch.tensor([-0.01 * max(0, len(r.split()) - 3) for r in RESPONSES])
    senti = torch.tensor(sentiment_scores(RESPONSES))
    expected = 2.0 * rm(PROMPTS, RESPONSES).total + 0.5 * length + length2 - senti
    torch.testing.assert_close(out.total, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.parts["rule:length#2"], length2)

    norm_cfg = from_dict(RewardConfig, {**_plain(cfg.reward), "normalize": True, "clip": 1.5})
    normed = build_reward(norm_cfg)
    assert isinstance(normed, Normalized)
    got = normed(PROMPTS, RESPONSES)
    x = expected.double()
    ref = ((x - x.mean()) / (x.var(correction=0) + 1e-8).sqrt()).clamp(-1.5, 1.5).float()
    torch.testing.assert_close(got.total, ref, atol=1e-5, rtol=0)
    assert normed.state_dict()["count"] == len(RESPONSES)


def _plain(reward_cfg: RewardConfig) -> dict:
    from rlhfkit.config import to_dict

    return to_dict(reward_cfg)


def test_build_reward_single_source_weight_and_ensemble(rm_dir: Path, rm_dir2: Path) -> None:
    weighted = build_reward(from_dict(RewardConfig, {"sources": [{"kind": "sentiment", "weight": 3}]}))
    assert isinstance(weighted, WeightedSum)
    torch.testing.assert_close(weighted(["p"], ["great!"]).total, torch.tensor([3 * sentiment_scores(["great!"])[0]]))
    ens = build_reward(
        from_dict(
            RewardConfig,
            {"sources": [{"kind": "ensemble", "path": f"{rm_dir}, {rm_dir2}", "reduce": "min", "batch_size": 2}]},
        )
    )
    assert isinstance(ens, EnsembleSource) and ens.member_names == ["rm:rm", "rm:rm_b"]
    out = ens(PROMPTS, RESPONSES)
    torch.testing.assert_close(out.total, torch.minimum(out.parts["rm:rm"], out.parts["rm:rm_b"]))
    assert out.uncertainty is not None and out.uncertainty.shape == (len(PROMPTS),)


def test_build_reward_callable(tmp_path: Path) -> None:
    f = tmp_path / "cb_scorer.py"
    f.write_text(MODULE_SOURCE)
    cfg = from_dict(
        RewardConfig, {"sources": [{"kind": "callable", "path": f"{f}:prompt_chars", "params": {"scale": 0.5}}]}
    )
    torch.testing.assert_close(build_reward(cfg)(["ab"], ["c"]).total, torch.tensor([1.5]))


@pytest.mark.parametrize(
    ("sources", "error", "needles"),
    [
        (
            [{"kind": "rule", "path": "length", "params": {"target": 1, "tagret": 2}}],
            ConfigError,
            ["reward.sources[0]", "rule 'length'", "unknown param 'tagret'"],
        ),
        (
            [{"kind": "sentiment"}, {"kind": "rule", "path": "lenght"}],
            ConfigError,
            ["reward.sources[1]", "unknown rule 'lenght'"],
        ),
        ([{"kind": "judge", "path": "x"}], ConfigError, ["sources[0].kind='judge'", "choose one of model"]),
        ([{"kind": "rule"}], ConfigError, ["reward.sources[0].path is empty"]),
        ([{"kind": "sentiment", "params": {"x": 1}}], ConfigError, ["reward.sources[0].params", "sentiment"]),
        (
            [{"kind": "sentiment", "params": {"polarity": "neg"}}],
            ConfigError,
            ["reward.sources[0]", "'polarity' must be positive or negative, got 'neg'"],
        ),
        ([{"kind": "callable", "path": "no_such_mod_abc:f"}], ConfigError, ["reward.sources[0]", "no_such_mod_abc"]),
        ([{"kind": "ensemble", "path": "a,,b"}], ConfigError, ["reward.sources[0].path", "empty entry"]),
        ([{"kind": "ensemble", "path": "a", "std_coef": -1}], ConfigError, ["reward.sources[0].std_coef"]),
        ([], ConfigError, ["reward.sources is empty"]),
    ],
)
def test_build_reward_bad_specs(sources: list, error: type, needles: list[str]) -> None:
    with pytest.raises(error) as exc:
        build_reward(from_dict(RewardConfig, {"sources": sources}))
    msg = one_line(exc)
    for needle in needles:
        assert needle in msg, msg


def test_build_reward_missing_model_dir_names_path_and_index(tmp_path: Path, rm_dir: Path) -> None:
    missing = tmp_path / "no_rm_here"
    cfg = from_dict(
        RewardConfig,
        {"sources": [{"kind": "model", "path": str(rm_dir)}, {"kind": "model", "path": str(missing)}]},
    )
    with pytest.raises(ModelNotFoundError) as exc:
        build_reward(cfg)
    msg = one_line(exc)
    assert "reward.sources[1]" in msg and str(missing) in msg
    ens = from_dict(RewardConfig, {"sources": [{"kind": "ensemble", "path": f"{rm_dir},{missing}"}]})
    with pytest.raises(ModelNotFoundError, match=r"reward\.sources\[0\] \(member 1\)"):
        build_reward(ens)
    with pytest.raises(ConfigError, match="reward.clip must be > 0"):
        build_reward(from_dict(RewardConfig, {"sources": [{"kind": "sentiment"}], "clip": 0}))
