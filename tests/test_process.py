"""Process supervision: step rows, step ends in tokens, process rewards on tokens, GRPO's process advantage, the
process reward model (loss, training, scoring), the arithmetic task's rule checker, and the CLI end to end."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlhfkit.advantages import group_process_advantages
from rlhfkit.commands import trainer
from rlhfkit.config import ConfigError, GRPOConfig, PPOConfig, PRMConfig, RLOOConfig, load_config
from rlhfkit.data import DataError, load_examples, write_jsonl
from rlhfkit.data.steps import split_steps, step_end_tokens, token_char_ends
from rlhfkit.kl import shape_rewards
from rlhfkit.losses.reward import process_reward_loss
from rlhfkit.models.tiny import save_tiny, tiny_tokenizer
from rlhfkit.rewards import RewardModelSource, WeightedSum
from rlhfkit.rewards.process import place_step_rewards, process_token_scores
from rlhfkit.rewards.sources import CallableSource
from rlhfkit.tasks.arithmetic import ArithmeticSource, check_response, problems, rows, solution_steps
from rlhfkit.tracking import read_metrics

ROOT = Path(__file__).resolve().parents[1]
SOLUTION = "37 + 45 = 82\n82 + 18 = 100\nAnswer: 100"


class PieceTokenizer:
    """Tokens are given strings: decoding is concatenation (id 0 = EOS, a special token), so positions are known."""

    def __init__(self, pieces: list[str]):
        self.vocab = ["<eos>", *(p for p in dict.fromkeys(pieces) if p != "<eos>")]
        self.index = {p: i for i, p in enumerate(self.vocab)}

    def ids(self, pieces: list[str]) -> list[int]:
        return [self.index[p] for p in pieces]

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return "".join(self.vocab[i] for i in ids if not (skip_special_tokens and i == 0))


# the solution's tokens: " 82\n" ends step 1 and carries the delimiter; "\nAnswer" starts step 3 with it
PIECES = ["37", " +", " 45", " =", " 82\n", "82", " +", " 18", " =", " 100", "\nAnswer", ":", " 100", "<eos>"]


# ---------------------------------------------------------------------------------------------------------------------
# rows


def _load(tmp_path: Path, *rows: object) -> list:
    path = tmp_path / "steps.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return load_examples(path, "steps")


def test_step_rows_parse_and_bad_rows_name_file_line_field(tmp_path):
    good = {"prompt": "Add 1 + 2 step by step.", "steps": ["1 + 2 = 3", "Answer: 3"], "labels": [True, 0.25]}
    (ex,) = _load(tmp_path, good)
    assert ex.steps == ("1 + 2 = 3", "Answer: 3") and ex.labels == (1.0, 0.25)
    assert ex.to_row() == {**good, "labels": [True, 0.25]}
    cases = {
        'field "labels" has 1 entries but "steps" has 2': {**good, "labels": [True]},
        'field "labels[1]" must be true, false or a number in [0, 1], got number 1.5': {**good, "labels": [True, 1.5]},
        'field "labels[0]" must be true, false or a number in [0, 1], got string "yes"': {**good, "labels": ["yes", 1]},
        'field "steps[1]" is empty': {**good, "steps": ["1 + 2 = 3", "  "]},
        'field "steps" is empty': {**good, "steps": [], "labels": []},
        'field "steps" must be a list of strings, got string "1 + 2 = 3"': {**good, "steps": "1 + 2 = 3"},
        'field "labels" is missing': {"prompt": "p", "steps": ["a"]},
    }
    for problem, row in cases.items():
        with pytest.raises(DataError) as e:
            _load(tmp_path, good, row)
        assert str(e.value) == f"{tmp_path / 'steps.jsonl'}:2: {problem}"


# ---------------------------------------------------------------------------------------------------------------------
# step ends: characters, then tokens


def test_split_steps_by_hand():
    assert split_steps(SOLUTION) == [(0, 12), (13, 26), (27, 38)]
    # blank lines and surrounding spaces are not steps; a trailing delimiter adds nothing
    assert split_steps("  a b \n\n c\n") == [(2, 5), (9, 10)]
    assert split_steps("") == [] and split_steps("\n \n") == []
    assert split_steps("x. y. z", ". ") == [(0, 1), (3, 4), (6, 7)]


def test_step_end_tokens_on_hand_made_tokens():
    tok = PieceTokenizer(PIECES)
    ids = tok.ids(PIECES)
    ends = token_char_ends(tok, ids)
    assert ends[:6] == [2, 4, 7, 9, 13, 15] and ends[-1] == ends[-2] == 38  # the EOS adds no character
    steps = [end for _, end in split_steps(SOLUTION)]
    # step 1 ends inside " 82\n" (token 4), step 2 on " 100" (token 9), the last step on the last token (the EOS)
    assert step_end_tokens(SOLUTION, ends, steps, len(ids)) == [4, 9, 13]
    # an offset with only whitespace after it is the final token; a truncated response ends on its last token
    assert step_end_tokens(SOLUTION, ends, [38, 12], 6) == [5, 4]


def test_step_end_tokens_on_a_real_tokenizer():
    """Byte-level BPE merges across the delimiter: the step end is the first token whose decoded prefix covers the
    step's last character, for texts built at random."""
    tok = tiny_tokenizer()
    rng = random.Random(0)
    for _ in range(20):
        steps = [" ".join(rng.choice(["12", "+", "=", "the", "movie", "was", "3.5", "ok!"]) for _ in range(4))]
        steps += [rng.choice(["a b", "The end.", "Answer: 7"]) for _ in range(rng.randint(1, 3))]
        text = "\n".join(steps)
        ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        spans = split_steps(text)
        positions = step_end_tokens(text, token_char_ends(tok, ids), [e for _, e in spans], len(ids))
        assert positions[-1] == len(ids) - 1
        for (_, end), t in zip(spans[:-1], positions):
            assert len(tok.decode(ids[: t + 1])) >= end > len(tok.decode(ids[:t]))


def test_process_rewards_placed_on_step_end_tokens():
    tok = PieceTokenizer(PIECES)
    short = ["37", " +", " 45", "<eos>"]
    width = len(PIECES)
    ids = torch.tensor([tok.ids(PIECES), tok.ids(short) + [0] * (width - len(short))])
    mask = torch.tensor([[1.0] * width, [1.0] * len(short) + [0.0] * (width - len(short))])
    steps = [[(12, 0.5), (26, 0.25), (38, 1.0), (11, 0.125)], []]  # (11, .) ends on token 4 too: the rewards add up
    scores, ends = place_step_rewards(steps, ids, mask, tok)
    expected = torch.zeros(2, width)
    expected[0, 4], expected[0, 9], expected[0, 13] = 0.625, 0.25, 1.0
    assert torch.equal(scores, expected)
    assert ends[0].nonzero().flatten().tolist() == [4, 9, 13]
    assert ends[1].nonzero().flatten().tolist() == [3]  # a row without steps: its last token still ends one
    # the missing-EOS penalty (scores - raw) goes on each row's last token
    scored = ArithmeticSource()(["Add 37 + 45 + 18 step by step."] * 2, [SOLUTION, "37 +"])
    placed, _ = process_token_scores(scored, [SOLUTION, "37 +"], ids, mask, tok, torch.tensor([0.0, -1.0]))
    assert placed[0, [4, 9, 13]].tolist() == pytest.approx([1 / 3] * 3)
    assert placed[0].sum().item() == pytest.approx(1.0)
    assert placed[1].tolist() == pytest.approx([0, 0, 0, -1] + [0] * (width - 4))


def test_shape_rewards_with_process_scores_by_hand():
    mask = torch.tensor([[1.0, 1, 1, 0], [1, 1, 1, 1]])
    kl = torch.tensor([[0.1, 0.2, 0.3, 9], [0.0, 0.1, 0.0, 0.1]])
    per_token = torch.tensor([[0.0, 0.5, 1.0, 7.0], [0.25, 0.0, 0.0, 0.75]])
    got = shape_rewards(per_token, kl, mask)
    torch.testing.assert_close(got, torch.tensor([[-0.1, 0.3, 0.7, 0.0], [0.25, -0.1, 0.0, 0.65]]))
    outcome = shape_rewards(torch.tensor([1.0, 2.0]), kl, mask)  # (B,) scores: unchanged behaviour
    torch.testing.assert_close(outcome, torch.tensor([[-0.1, -0.2, 0.7, 0.0], [0.0, -0.1, 0.0, 1.9]]))


# ---------------------------------------------------------------------------------------------------------------------
# GRPO with process rewards (Shao et al. 2024 §4.1.3)


def test_grpo_process_advantages_by_hand():
    token_rewards = torch.tensor([[0.0, 1, 0, 3], [2, 0, 0, 0]])
    step_mask = torch.tensor([[0.0, 1, 0, 1], [1, 0, 1, 0]])
    mask = torch.tensor([[1.0, 1, 1, 1], [1, 1, 1, 0]])
    # group steps {1, 3, 2, 0}: mean 1.5, sample std sqrt(5/3); normalized: row 0 -0.387 (t1), 1.162 (t3);
    # row 1 0.387 (t0), -1.162 (t2); a token's advantage sums the normalized steps ending at or after it
    s = math.sqrt(5 / 3)
    adv = group_process_advantages(token_rewards, step_mask, mask, 2)
    expected = [[1.0 / s, 1.0 / s, 1.5 / s, 1.5 / s], [-1.0 / s, -1.5 / s, -1.5 / s, 0.0]]
    torch.testing.assert_close(adv, torch.tensor(expected), atol=1e-5, rtol=0)
    centred = group_process_advantages(token_rewards, step_mask, mask, 2, scale_by_std=False)  # Dr. GRPO
    torch.testing.assert_close(centred, torch.tensor([[1.0, 1.0, 1.5, 1.5], [-1.0, -1.5, -1.5, 0.0]]))


def _reference_process_advantages(token_rewards, step_mask, mask, group_size, eps=1e-6):
    B, T = mask.shape
    steps = []  # (row, end, reward)
    for i in range(B):
        acc = 0.0
        for t in range(T):
            if mask[i, t]:
                acc += float(token_rewards[i, t])
                if step_mask[i, t]:
                    steps.append((i, t, acc))
                    acc = 0.0
    out = torch.zeros(B, T)
    for g in range(B // group_size):
        group = [s for s in steps if s[0] // group_size == g]
        values = torch.tensor([r for _, _, r in group], dtype=torch.float64)
        mean, std = values.mean(), values.std() if len(values) > 1 else None
        for i, end, r in group:
            norm = (r - mean) / (std + eps) if std is not None else r - mean
            for t in range(end + 1):
                if mask[i, t]:
                    out[i, t] += float(norm)
    return out


def test_grpo_process_advantages_match_a_reference_loop():
    g = torch.Generator().manual_seed(0)
    B, T, G = 12, 9, 4
    mask = torch.ones(B, T)
    for i in range(B):
        mask[i, int(torch.randint(1, T + 1, (1,), generator=g)) :] = 0
    step_mask = (torch.rand(B, T, generator=g) < 0.3).float() * mask
    last = mask.sum(-1).long() - 1
    step_mask[torch.arange(B), last] = 1.0  # the last token always ends a step
    token_rewards = torch.randn(B, T, generator=g) * mask  # step rewards plus per-token KL-like terms
    token_rewards[5] = 0.0  # padding holds anything: it must not count
    token_rewards[5, T - 1] = 100.0 * (1 - mask[5, T - 1])
    got = group_process_advantages(token_rewards, step_mask, mask, G)
    assert torch.allclose(got, _reference_process_advantages(token_rewards, step_mask, mask, G), atol=1e-5)
    # with one step per response at its last token and no other reward, it is GRPO's outcome advantage
    outcome = torch.zeros(B, T)
    outcome[torch.arange(B), last] = torch.randn(B, generator=g)
    one_step = torch.zeros(B, T)
    one_step[torch.arange(B), last] = 1.0
    seq = outcome.sum(-1).view(-1, G)
    expected = ((seq - seq.mean(1, keepdim=True)) / (seq.std(1, keepdim=True) + 1e-6)).view(-1, 1) * mask
    assert torch.allclose(group_process_advantages(outcome, one_step, mask, G), expected, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------------
# the process reward model


def test_process_reward_loss_by_hand():
    got = process_reward_loss(torch.tensor([0.0, 2.0, 1.0]), torch.tensor([1.0, 0.0, 0.25]))
    # -log σ(0) = log 2; -log σ(-2) = log(1 + e^2); soft label: -(0.25 log σ(1) + 0.75 log σ(-1))
    soft = -(0.25 * math.log(1 / (1 + math.exp(-1))) + 0.75 * math.log(1 / (1 + math.exp(1))))
    assert got.tolist() == pytest.approx([math.log(2), math.log(1 + math.e**2), soft], rel=1e-6)
    assert process_reward_loss(torch.tensor([1.0]), torch.tensor([1.0]), weight=2.0).item() == pytest.approx(
        2 * math.log(1 + math.exp(-1)), rel=1e-6
    )


def _marker_rows(n: int, seed: int) -> list[dict]:
    """Synthetic step rows: a step is correct when it ends with "right"; three steps per response, so a model that
    read the wrong step's end could not separate them."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        labels = [rng.random() < 0.5 for _ in range(3)]
        steps = [
            f"{rng.choice(['the movie', 'a story', 'one scene'])} is {'right' if ok else 'wrong'}" for ok in labels
        ]
        out.append({"prompt": "Check each step.", "steps": steps, "labels": labels})
    return out


@pytest.fixture(scope="module")
def prm(tmp_path_factory) -> tuple[Path, dict, Path]:
    root = tmp_path_factory.mktemp("prm")
    save_tiny(root / "tiny", "causal")
    write_jsonl(root / "train.jsonl", _marker_rows(96, 0))
    write_jsonl(root / "eval.jsonl", _marker_rows(24, 1))
    cfg = load_config(
        PRMConfig,
        None,
        [
            f"model.name_or_path={root / 'tiny'}",
            f"data.train={root / 'train.jsonl'}",
            f"data.eval={root / 'eval.jsonl'}",
            f"train.output_dir={root / 'out'}",
            "train.batch_size=8",
            "train.epochs=3",
            "train.lr=3e-3",
            "train.progress=false",
        ],
    )
    with contextlib.redirect_stdout(io.StringIO()):
        summary = trainer("prm")(cfg)
    return root, summary, root / "out" / "model"


def test_prm_learns_to_separate_correct_from_wrong_steps(prm):
    root, summary, model_dir = prm
    ev = summary["eval"]
    assert ev["steps"] == 72 and ev["auc"] > 0.95 and ev["step_accuracy"] > 0.9, ev
    rows = [r for r in read_metrics(root / "out" / "metrics.jsonl") if "train/loss" in r]
    assert sum(r["train/loss"] for r in rows[-3:]) < 0.5 * sum(r["train/loss"] for r in rows[:3])
    enc = json.loads((model_dir / "rlhfkit_encoding.json").read_text())
    assert enc["process"] == {"delimiter": "\n"}


def test_prm_scores_every_step_as_a_reward_source(prm):
    _, _, model_dir = prm
    source = RewardModelSource.from_path(model_dir)
    response = "the movie is right\none scene is wrong\na story is right"
    scored = source([[{"role": "user", "content": "Check each step."}]], [response])
    ((e1, p1), (e2, p2), (e3, p3)) = scored.steps[0]
    assert (e1, e2, e3) == (18, 37, len(response))
    assert p1 > 0.5 > p2 and p3 > 0.5
    assert scored.total.item() == pytest.approx(p2)  # the worst step
    # the same text without the delimiter metadata is an outcome reward model: its score is the last step's logit
    plain = RewardModelSource(source.model, source.tokenizer, name="plain")
    assert plain([[{"role": "user", "content": "Check each step."}]], [response]).steps is None
    assert torch.sigmoid(plain([[{"role": "user", "content": "Check each step."}]], [response]).total).item() == (
        pytest.approx(p3, rel=1e-4)
    )


# ---------------------------------------------------------------------------------------------------------------------
# the arithmetic task


def test_arithmetic_checker_by_hand():
    n = (37, 45, 18)
    assert solution_steps(n) == SOLUTION.split("\n")
    cases = {
        SOLUTION: ([True, True, True], True),
        "37 + 45 = 83\n83 + 18 = 101\nAnswer: 101": ([False, False, False], False),  # a slip spoils what follows
        "37 + 45 = 82\n82 + 18 = 99\nAnswer: 100": ([True, False, True], True),  # right answer, wrong step
        SOLUTION + "\nAnswer: 100": ([True, True, True, False], True),  # past the n steps: wrong
        "37 + 45 = 82\nAnswer: 100": ([True, False], True),
        "The answer is 100": ([False], False),
        "": ([], False),
    }
    for response, (correct, answer) in cases.items():
        check = check_response(n, response)
        assert (check.correct, check.answer_correct) == (correct, answer), response
    scored = ArithmeticSource()(["Add 37 + 45 + 18 step by step."] * 2, [SOLUTION, "37 + 45 = 82\n82 + 18 = 99"])
    assert scored.total.tolist() == [1.0, 0.0]
    assert scored.parts["steps"].tolist() == pytest.approx([1.0, 1 / 3])
    assert scored.steps == [[(12, 1 / 3), (26, 1 / 3), (38, 1 / 3)], [(12, 1 / 3), (25, 0.0)]]
    with pytest.raises(ValueError, match="not an arithmetic prompt"):
        ArithmeticSource()(["Say hi."], ["hi"])
    # generated step rows carry the checker's labels; the shipped files are up to date
    for row in rows(problems(20, 3), "steps", seed=3):
        assert (
            row["labels"]
            == check_response([int(x) for x in row["prompt"][4:-14].split(" + ")], "\n".join(row["steps"])).correct
        )
    spec = importlib.util.spec_from_file_location("make_arithmetic", ROOT / "tools" / "make_arithmetic.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert all((tool.DATA_DIR / name).read_text() == text for name, text in tool.build().items())


def test_a_sum_of_process_and_outcome_sources_scores_steps():
    both = WeightedSum([ArithmeticSource(), CallableSource("tests.toy:letter_reward")], [1.0, 2.0])
    text = "37 + 45 = 82\nAnswer: 100e"
    scored = both(["Add 37 + 45 + 18 step by step."], [text])
    # the outcome source (share of "e": 2 of 25 characters) is one step ending with the response, weighted 2
    assert scored.steps == [[(12, 1 / 3), (25, 0.0), (25, pytest.approx(2 * 2 / 25))]]
    steps = CallableSource("tests.toy:letter_steps")(["p"], ["see the tree"])  # a callable returning steps
    assert steps.steps == [[(3, 2 / 3), (7, 1 / 3), (12, 0.5)]] and steps.total.item() == pytest.approx(1.5)
    with pytest.raises(ValueError, match="response 0 has step"):
        CallableSource(lambda p, r: [[(99, 1.0)]])(["p"], ["short"])


# ---------------------------------------------------------------------------------------------------------------------
# online RL with process rewards


def test_process_placement_config_is_checked():
    base = ["reward.sources=[{kind: arithmetic}]", "algo.reward_placement=process"]
    with pytest.raises(ConfigError, match="use ppo, grpo or reinforce"):
        load_config(RLOOConfig, None, base)
    with pytest.raises(ConfigError, match="turn them off"):
        load_config(GRPOConfig, None, [*base, "reward.normalize=true"])
    assert load_config(PPOConfig, None, base).algo.reward_placement == "process"


@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_process_rewards_raise_the_toy_reward(tmp_path, algo):
    """The toy task with a reward on every word (a process callable): the per-word rewards rise under GRPO's
    process advantage and under PPO's GAE over the step rewards."""
    save_tiny(tmp_path / "tiny", "causal")
    write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Write about film {i}."} for i in range(64)])
    extra = ["kl.coef=0.01", "algo.num_samples=4"] if algo == "ppo" else []
    cfg = load_config(
        GRPOConfig if algo == "grpo" else PPOConfig,
        None,
        [
            f"model.name_or_path={tmp_path / 'tiny'}",
            f"data.train={tmp_path / 'prompts.jsonl'}",
            f"train.output_dir={tmp_path / 'out'}",
            "train.max_steps=25",
            "train.batch_size=8",
            "train.lr=1e-2",
            "train.progress=false",
            "sampling.max_new_tokens=8",
            "reward.sources=[{kind: callable, path: 'tests.toy:letter_steps'}]",
            "algo.reward_placement=process",
            "eval_samples=0",
            *extra,
        ],
    )
    with contextlib.redirect_stdout(io.StringIO()):
        trainer(algo)(cfg)
    scores = [r["train/score"] for r in read_metrics(tmp_path / "out" / "metrics.jsonl") if "train/score" in r]
    first, last = sum(scores[:5]) / 5, sum(scores[-5:]) / 5
    assert last > first + 0.1, (first, last)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "rlhfkit.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def test_prm_refuses_a_step_with_the_delimiter_before_loading_a_model(tmp_path):
    bad = tmp_path / "bad.jsonl"
    write_jsonl(bad, [*_marker_rows(1, 0), {"prompt": "p", "steps": ["a\nb", "c"], "labels": [True, False]}])
    cfg = load_config(
        PRMConfig, None, ["model.name_or_path=/nowhere", f"data.train={bad}", f"train.output_dir={tmp_path}/x"]
    )
    with pytest.raises(DataError) as e:
        trainer("prm")(cfg)
    assert str(e.value) == f"{bad}:2: field \"steps[0]\" contains the step delimiter '\\n'"
    assert not (tmp_path / "x").exists()


def test_cli_prm_then_grpo_with_its_process_rewards(prm, tmp_path):
    tiny = prm[0] / "tiny"
    r = _cli(
        "prm",
        f"model.name_or_path={tiny}",
        "data.train=sample:arithmetic-steps",
        "train.max_steps=2",
        "train.progress=false",
        "-o",
        str(tmp_path / "prm"),
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((tmp_path / "prm/model/rlhfkit_encoding.json").read_text())["process"]["delimiter"] == "\n"
    r = _cli(
        "grpo",
        f"model.name_or_path={tiny}",
        "data.train=sample:arithmetic",
        "train.max_steps=2",
        "train.batch_size=2",
        "train.progress=false",
        "sampling.max_new_tokens=12",
        "eval_samples=2",
        f"reward.sources=[{{kind: model, path: {tmp_path / 'prm/model'}}}, {{kind: arithmetic, weight: 0.5}}]",
        "algo.reward_placement=process",
        "-o",
        str(tmp_path / "grpo"),
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((tmp_path / "grpo/summary.json").read_text())
    assert summary["steps"] == 2 and "score/arithmetic" in summary["final_train"]
    config = (tmp_path / "grpo/config.yaml").read_text()
    assert "reward_placement: process" in config
