"""Multi-objective rewards: per-dimension preference labels, the multi-head reward loss and trainer, the multi_rm
reward source, the preference-vector policy (weights in the prompt, reward = w . r) and the Pareto front."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlhfkit.config import RMConfig, load_config
from rlhfkit.data import DataError, write_jsonl
from rlhfkit.data.schemas import parse_preference
from rlhfkit.losses.reward import multi_head_reward_loss, reward_loss
from rlhfkit.models.tiny import save_tiny

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tiny") / "causal"
    save_tiny(d, kind="causal")
    return d


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "rlhfkit.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


# ----------------------------------------------------------------------------------------------------------------------
# rows


def test_dimensions_are_parsed_and_bad_labels_name_line_and_field():
    ex = parse_preference(
        {"prompt": "p", "chosen": "a", "rejected": "b", "dimensions": {"safe": "rejected", "helpful": "chosen"}},
        "prefs.jsonl:3",
    )[0]
    assert ex.dimensions == (("helpful", "chosen"), ("safe", "rejected"))
    assert ex.to_row()["dimensions"] == {"helpful": "chosen", "safe": "rejected"}
    with pytest.raises(DataError) as e:
        parse_preference({"prompt": "p", "chosen": "a", "rejected": "b", "dimensions": {"safe": "A"}}, "prefs.jsonl:7")
    assert (
        str(e.value) == 'prefs.jsonl:7: field "dimensions.safe" must be "chosen", "rejected" or "tie", got string "A"'
    )
    with pytest.raises(DataError) as e:
        parse_preference({"prompt": "p", "chosen": "a", "rejected": "b", "dimensions": ["safe"]}, "prefs.jsonl:2")
    assert str(e.value) == 'prefs.jsonl:2: field "dimensions" must be an object {dimension: label}, got list'


# ----------------------------------------------------------------------------------------------------------------------
# the loss


def test_multi_head_loss_matches_hand_values():
    r_c = torch.tensor([[1.0, 0.5], [0.0, 2.0]])
    r_r = torch.tensor([[0.0, 1.5], [1.0, 2.0]])
    label = torch.tensor([[1, -1], [1, 0]])  # pair 1: chosen won on head 0, rejected on head 1; pair 2: tie on head 1
    present = torch.tensor([[True, True], [True, False]])
    got = multi_head_reward_loss(r_c, r_r, label, present, ties=False)
    sp = lambda x: math.log1p(math.exp(-x))  # -log sigmoid(x)  # noqa: E731
    want = torch.tensor([[sp(1.0), sp(1.5 - 0.5)], [sp(-1.0), 0.0]])
    assert torch.allclose(got, want, atol=1e-6)
    # a tie under Davidson nu=1: -log(1 / (e^{d/2} + e^{-d/2} + 1)) at d = 0 is log 3
    present2 = torch.ones(2, 2, dtype=torch.bool)
    got = multi_head_reward_loss(r_c, r_r, label, present2, ties=True, tie_model="davidson", tie_param=1.0)
    assert got[1, 1].item() == pytest.approx(math.log(3.0), abs=1e-6)
    # confidence weights multiply every head of the pair
    w = multi_head_reward_loss(r_c, r_r, label, present, weight=torch.tensor([0.5, 2.0]), tie_param=0.0)
    assert torch.allclose(w, want * torch.tensor([[0.5], [2.0]]), atol=1e-6)


def test_multi_head_loss_equals_separate_single_head_losses():
    torch.manual_seed(0)
    n, k = 12, 3
    r_c, r_r = torch.randn(n, k), torch.randn(n, k)
    label = torch.randint(-1, 2, (n, k))
    present = torch.rand(n, k) > 0.3
    conf = torch.rand(n)
    got = multi_head_reward_loss(r_c, r_r, label, present, weight=conf, tie_model="rao-kupper", tie_param=1.5)
    total = 0.0
    for j in range(k):  # head j alone: the pairs labelled on it, winner first, as a single-head reward model sees them
        rows = present[:, j].nonzero().flatten()
        for i in rows.tolist():
            win, lose = (r_c[i, j], r_r[i, j]) if label[i, j] >= 0 else (r_r[i, j], r_c[i, j])
            one = reward_loss(
                win[None],
                lose[None],
                tie=torch.tensor([label[i, j] == 0]),
                weight=conf[i],
                tie_model="rao-kupper",
                tie_param=1.5,
            )
            assert got[i, j].item() == pytest.approx(one.item(), abs=1e-6)
            total += one.item()
    assert got.sum().item() == pytest.approx(total, abs=1e-5)
    assert (got[~present] == 0).all()
    # gradients reach only the heads a pair is labelled on
    r_c.requires_grad_(True)
    multi_head_reward_loss(r_c, r_r, label, present).sum().backward()
    assert (r_c.grad[~present] == 0).all() and (r_c.grad[present & (label != 0)] != 0).all()


# ----------------------------------------------------------------------------------------------------------------------
# the reward model


def _two_dimension_prefs(path: Path, n: int = 40) -> Path:
    """Two dimensions with opposite labels: "pos" prefers the wonderful response, "neg" the awful one; every fifth row
    labels only "pos" (the "neg" head skips it)."""
    rows = []
    for i in range(n):
        dims = {"pos": "chosen"} if i % 5 == 4 else {"pos": "chosen", "neg": "rejected"}
        rows.append(
            {
                "prompt": f"Say something about film number {i}.",
                "chosen": f"film {i} was wonderful and great",
                "rejected": f"film {i} was awful and dull",
                "dimensions": dims,
            }
        )
    write_jsonl(path, rows)
    return path


def _rm_overrides(tiny_dir: Path, out: Path, data: Path, steps: int = 20) -> list[str]:
    return [
        f"model.name_or_path={tiny_dir}",
        f"train.output_dir={out}",
        f"train.max_steps={steps}",
        "train.batch_size=4",
        "train.progress=false",
        "train.lr=3e-3",
        "data.max_length=64",
        "data.max_prompt_length=32",
        "data.eval_fraction=0.25",
        f"data.train={data}",
        "objectives=[pos, neg]",
    ]


@pytest.fixture(scope="module")
def two_head_rm(tiny_dir, tmp_path_factory) -> tuple[Path, dict]:
    """A two-head reward model trained once (in process) for the tests below: (its run directory, its summary)."""
    from rlhfkit.trainers.rm import train_rm

    root = tmp_path_factory.mktemp("two_head")
    cfg = load_config(RMConfig, None, _rm_overrides(tiny_dir, root / "rm", _two_dimension_prefs(root / "p.jsonl")))
    return root / "rm", train_rm(cfg)


def test_two_head_reward_model_learns_opposite_orderings(two_head_rm):
    from transformers import AutoModelForSequenceClassification

    from rlhfkit.rewards.sources import RewardModelSource

    run_dir, summary = two_head_rm
    ev = summary["eval"]
    assert ev["accuracy/pos"] >= 0.9 and ev["accuracy/neg"] >= 0.9, ev
    assert ev["pairs/pos"] > ev["pairs/neg"]  # the rows without a "neg" label do not count for it
    assert any("pos on" in n for n in summary["notes"])
    # a plain Hugging Face directory that names its heads
    model_dir = run_dir / "model"
    hf = AutoModelForSequenceClassification.from_pretrained(model_dir)
    assert hf.config.num_labels == 2 and hf.config.id2label == {0: "pos", 1: "neg"}
    src = RewardModelSource.from_path(model_dir, name="rm")
    assert src.heads == ["pos", "neg"]
    prompts = [[{"role": "user", "content": "Say something about film number 99."}]] * 2
    s = src(prompts, ["film 99 was wonderful and great", "film 99 was awful and dull"])
    assert s.parts["pos"][0] > s.parts["pos"][1] and s.parts["neg"][0] < s.parts["neg"][1]
    assert torch.allclose(s.total, s.parts["pos"] + s.parts["neg"])  # default head weights: 1 each


def test_objectives_without_labels_are_refused_before_loading(tiny_dir, tmp_path):
    from rlhfkit.config import ConfigError
    from rlhfkit.trainers.rm import train_rm

    over = _rm_overrides(tiny_dir, tmp_path / "rm", _two_dimension_prefs(tmp_path / "p.jsonl"))
    over[-1] = "objectives=[pos, helpful]"
    over[0] = f"model.name_or_path={tmp_path / 'no-model-here'}"  # never reached: the data check comes first
    with pytest.raises(
        ConfigError,
        match=r'objectives: no training pair in .*p.jsonl has a "dimensions" label for '
        r'"helpful" \(dimensions in the rows: neg, pos\)',
    ):
        train_rm(load_config(RMConfig, None, over))


# ----------------------------------------------------------------------------------------------------------------------
# the preference-vector policy

LETTERS = (
    "reward.sources=[{kind: callable, path: 'tests.toy:letter_reward', name: e, params: {letter: e}}, "
    "{kind: callable, path: 'tests.toy:letter_reward', name: a, params: {letter: a}}]"
)


def test_weights_are_drawn_on_the_simplex_and_formatted():
    from rlhfkit.rollout import condition_messages, draw_weights, format_weights

    w = draw_weights(500, 3, 1.0, (0, 7, 1), decimals=2)
    assert w.shape == (500, 3) and (w >= 0).all() and abs(w.sum(1) - 1).max() <= 0.03
    assert (w == draw_weights(500, 3, 1.0, (0, 7, 1), decimals=2)).all()  # seeded: a resumed run draws the same
    assert not (w == draw_weights(500, 3, 1.0, (0, 8, 1), decimals=2)).all()
    assert abs(w.mean(0) - 1 / 3).max() < 0.03  # Dirichlet(1, 1, 1) has mean 1/3 per coordinate
    corners = draw_weights(2000, 2, 0.1, (1,), decimals=2)
    assert (corners.max(1) > 0.9).mean() > 0.6  # alpha < 1 favours the corners
    assert format_weights(["e", "a"], [0.7, 0.3], "[weights {weights}]") == "[weights e=0.70 a=0.30]"
    turns = condition_messages([{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}], "[w]")
    assert turns == ({"role": "system", "content": "s"}, {"role": "user", "content": "hi\n[w]"})


def test_mirrored_weights_pair_each_drawn_vector_with_its_reverse():
    from rlhfkit.config import PreferenceVectorConfig
    from rlhfkit.rewards.preference import PreferenceConditioner
    from rlhfkit.rollout import Prompt, draw_weights

    for n, k in [(6, 2), (7, 3), (1, 2)]:
        w = draw_weights(n, k, 0.3, (4, 2), decimals=2, mirrored=True)
        half = (n + 1) // 2
        assert w.shape == (n, k)
        assert (w[:half] == draw_weights(half, k, 0.3, (4, 2), decimals=2)).all()  # the first half: a plain draw
        assert (w[half:] == w[: n // 2, ::-1]).all()  # the rest: those rows reversed
    big = draw_weights(4000, 2, 0.3, (9,), decimals=2, mirrored=True)
    assert big.mean(0) == pytest.approx([0.5, 0.5], abs=1e-12)  # the whole draw favours neither objective
    plain = draw_weights(4000, 2, 0.3, (9,), decimals=2)
    assert abs(big[:, 0].std() - plain[:, 0].std()) < 0.02  # each vector keeps its law (same spread)
    assert (big.max(1) > 0.9).mean() == pytest.approx((plain.max(1) > 0.9).mean(), abs=0.03)

    class Fmt:
        def encode_prompt(self, messages):
            return [len(messages[-1]["content"])]

    cfg = PreferenceVectorConfig(objectives=("s", "b"), dirichlet_alpha=0.3, mirrored=True)
    cfg.validate()
    _, weights = PreferenceConditioner(cfg, Fmt()).prepare([Prompt(({"role": "user", "content": "x"},), [1])] * 4)
    assert weights[2:].tolist() == weights[:2].flip(-1).tolist()  # a step's prompts: half drawn, half mirrored


def test_weights_as_words_are_snapped_to_the_levels_the_tag_shows():
    from rlhfkit.config import PreferenceVectorConfig
    from rlhfkit.rewards.preference import PreferenceConditioner
    from rlhfkit.rollout import Prompt, draw_weights, format_weights

    levels = ("not", "slightly", "fairly", "very", "only")
    w = draw_weights(400, 2, 0.3, (3,), levels=5)
    assert set(w.ravel().tolist()) <= {0.0, 0.25, 0.5, 0.75, 1.0} and len(set(w[:, 0].tolist())) == 5
    assert (abs(w.sum(1) - 1) < 1e-9).all()  # two objectives on a symmetric grid: each row still sums to 1
    tag = format_weights(["sentiment", "brevity"], [0.75, 0.25], "[{weights}]", 2, levels, "{weight} {name}", ", ")
    assert tag == "[very sentiment, slightly brevity]"
    assert format_weights(["a", "b"], [0.62, 0.38], "<{weights}>", 2, levels) == "<a=fairly b=fairly>"  # nearest

    class Fmt:  # records what the policy is shown
        def encode_prompt(self, messages):
            return [len(messages[-1]["content"])], messages[-1]["content"]

    cfg = PreferenceVectorConfig(objectives=("s", "b"), levels=levels, entry="{weight} {name}", separator=", ")
    cfg.validate()
    c = PreferenceConditioner(cfg, Fmt())
    prompts, weights = c.prepare([Prompt(({"role": "user", "content": "Review:"},), [1])] * 3, weights=[0.7, 0.3])
    assert weights.tolist() == [[0.75, 0.25]] * 3  # the reward uses the weights the words stand for
    assert prompts[0].ids[1] == "Review:\n[weights very s, slightly b]"
    assert c.uniform() == [0.5, 0.5] and c.tag(c.uniform()) == "[weights fairly s, fairly b]"
    for bad, needle in [({"levels": ("only",)}, "levels needs >= 2"), ({"entry": "{name}"}, "entry must contain")]:
        with pytest.raises(Exception, match=needle):
            PreferenceVectorConfig(objectives=("s", "b"), **bad).validate()


def test_collect_writes_weights_into_prompts_and_rewards_the_weighted_sum(tiny_dir, tmp_path):
    from rlhfkit.config import RLOOConfig
    from rlhfkit.trainers import rl_common
    from tests.toy import letter_reward

    write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Write about film {i}."} for i in range(16)])
    cfg = load_config(
        RLOOConfig,
        None,
        [
            f"model.name_or_path={tiny_dir}",
            f"data.train={tmp_path / 'prompts.jsonl'}",
            f"train.output_dir={tmp_path / 'out'}",
            "train.batch_size=4",
            "sampling.max_new_tokens=12",
            LETTERS,
            "preference.objectives=[e, a]",
            "eval_samples=4",
        ],
    )
    run = rl_common.setup_online(cfg, "rloo")
    ro, raw, scored = rl_common.collect(run, step=0)
    n = cfg.algo.num_samples
    seen = [run.tokenizer.decode(ids[mask.bool()]) for ids, mask in zip(ro.prompt_ids, ro.prompt_mask)]
    weights = []
    for text in seen[::n]:
        tag = text.split("[weights ")[1].split("]")[0]  # "e=0.62 a=0.38"
        weights.append([float(kv.split("=")[1]) for kv in tag.split()])
    assert len(set(map(tuple, weights))) > 1  # a weight vector per prompt
    assert all(abs(sum(w) - 1) <= 0.02 for w in weights)
    assert all(s == seen[g * n] for g in range(len(weights)) for s in seen[g * n : (g + 1) * n])  # shared by a group
    e, a = letter_reward([], ro.texts, "e"), letter_reward([], ro.texts, "a")
    want = [weights[i // n][0] * e[i] + weights[i // n][1] * a[i] for i in range(len(ro))]
    assert torch.allclose(raw.cpu(), torch.tensor(want), atol=1e-6)
    assert torch.allclose(scored.parts["e"], torch.tensor(e)) and torch.allclose(scored.parts["a"], torch.tensor(a))
    # held-out evaluation: equal weights in the tag, each objective logged
    ev = rl_common.evaluate(run, micro=4)
    assert ev["score"] == pytest.approx(0.5 * ev["objective/e"] + 0.5 * ev["objective/a"], abs=1e-6)


WORDS = (
    "reward.sources=[{kind: rule, path: length, name: short, params: {max_words: 0, coef: 1.0}}, "
    "{kind: rule, path: length, name: long, params: {max_words: 0, coef: -1.0}}]"
)


@pytest.mark.parametrize("fmt", ["prefs", "sft"])
def test_sample_writes_preference_conditioned_rows_ranked_under_each_drawn_vector(tiny_dir, tmp_path, fmt):
    from rlhfkit.rollout.prompts import draw_weights, format_weights

    write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Write about film {i}."} for i in range(6)])
    args = [
        "sample",
        f"model.name_or_path={tiny_dir}",
        f"data.train={tmp_path / 'prompts.jsonl'}",
        "num_samples=4",
        f"format={fmt}",
        "sampling.max_new_tokens=10",
        WORDS,
        "preference.objectives=[short, long]",
        "preference.dirichlet_alpha=0.3",
        "preference.decimals=1",
        "weights_per_prompt=3",
        "seed=5",
    ]
    r = _cli(*args, "-o", str(tmp_path / "rows.jsonl"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(x) for x in (tmp_path / "rows.jsonl").read_text().splitlines()]
    drawn = [list(map(tuple, draw_weights(3, 2, 0.3, (5, i), 1))) for i in range(6)]  # as an online run draws them
    expected = [w for ws in drawn for w in ws if fmt == "sft" or w[0] != w[1]]  # equal weights: no preference
    assert len(rows) <= len(expected) and len(rows) >= len(expected) - 2  # (a prompt's 4 samples may tie)
    assert {tuple(r["weights"]) for r in rows} <= {w for ws in drawn for w in ws}
    for row in rows:
        w = row["weights"]
        prompt = row["prompt"]  # one user turn is written as a plain string
        user = prompt if isinstance(prompt, str) else [m for m in prompt if m["role"] == "user"][-1]["content"]
        assert user.endswith("\n" + format_weights(["short", "long"], w, "[weights {weights}]", 1))
        objectives = torch.tensor(row["objectives"])  # (4 responses, 2): -words, +words
        assert torch.equal(objectives[:, 0], -objectives[:, 1])
        under_w = objectives @ torch.tensor(w)
        if fmt == "sft":
            assert len(row["response"].split()) == objectives[int(under_w.argmax()), 1]
            assert row["score"] == pytest.approx(float(under_w.max()), abs=1e-5)
            continue
        chosen, rejected = len(row["chosen"].split()), len(row["rejected"].split())
        assert (chosen > rejected) == (w[1] > w[0])  # the long objective weighs more: the longer response wins
        assert {chosen, rejected} == {int(objectives[:, 1].max()), int(objectives[:, 1].min())}
        assert row["strength"] == pytest.approx(float(under_w.max() - under_w.min()), abs=1e-5)
    if fmt == "prefs":  # a conditioned DPO run reads them (the tagged prompt is an ordinary chat prompt)
        r = _cli(
            "dpo", f"model.name_or_path={tiny_dir}", f"data.train={tmp_path / 'rows.jsonl'}", "train.max_steps=1",
            "train.batch_size=2", "train.progress=false", "data.eval_fraction=0", "eval_kl_samples=0", "-o",
            str(tmp_path / "dpo"), cwd=tmp_path,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr[-2000:]
    # bad combinations: one line, before any model loads
    r = _cli(*args, "format=samples", "-o", str(tmp_path / "x.jsonl"), cwd=tmp_path)
    assert r.returncode == 2 and "preference.objectives needs format=sft or format=prefs" in r.stderr, r.stderr
    assert "Loading weights" not in r.stderr and not (tmp_path / "x.jsonl").exists()


def test_sample_mirrored_rows_swap_chosen_and_rejected_under_each_prompts_two_tags(tiny_dir, tmp_path):
    write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Write about film {i}."} for i in range(5)])
    r = _cli(
        "sample", f"model.name_or_path={tiny_dir}", f"data.train={tmp_path / 'prompts.jsonl'}", "num_samples=4",
        "format=prefs", "sampling.max_new_tokens=10", WORDS, "preference.objectives=[short, long]",
        "preference.dirichlet_alpha=0.3", "preference.decimals=1", "preference.mirrored=true",
        "weights_per_prompt=2", "seed=3", "-o", str(tmp_path / "rows.jsonl"), cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(x) for x in (tmp_path / "rows.jsonl").read_text().splitlines()]
    by_prompt: dict[str, list] = {}
    for row in rows:
        by_prompt.setdefault(row["prompt"].split("\n[weights")[0], []).append(row)
    assert len(by_prompt) >= 4  # (a prompt whose 4 samples tie, or whose draw is (0.5, 0.5), has no rows)
    for pair in by_prompt.values():
        assert len(pair) == 2  # the opposed objectives: a vector and its mirror always disagree
        a, b = pair
        assert a["weights"] == b["weights"][::-1]
        assert (a["chosen"], a["rejected"]) == (b["rejected"], b["chosen"])  # the same two responses, swapped


def test_preference_vector_is_checked_against_the_reward_sources(tiny_dir, tmp_path):
    from rlhfkit.config import ConfigError, RLOOConfig
    from rlhfkit.trainers import rl_common

    write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Write about film {i}."} for i in range(8)])
    base = [f"model.name_or_path={tiny_dir}", f"data.train={tmp_path / 'prompts.jsonl'}", "train.batch_size=4", LETTERS]
    with pytest.raises(ConfigError, match=r"preference.objectives: 'x': no reward source has that name or head"):
        rl_common.setup_online(
            load_config(
                RLOOConfig, None, [*base, "preference.objectives=[e, x]", f"train.output_dir={tmp_path / 'o1'}"]
            ),
            "rloo",
        )
    with pytest.raises(ConfigError, match=r"reward source 'a' serves none of preference.objectives \(e, e2\)"):
        extra = (
            "reward.sources=[{kind: callable, path: 'tests.toy:letter_reward', name: e}, "
            "{kind: callable, path: 'tests.toy:letter_reward', name: a}, "
            "{kind: callable, path: 'tests.toy:letter_reward', name: e2}]"
        )
        rl_common.setup_online(
            load_config(
                RLOOConfig, None, [*base, extra, "preference.objectives=[e, e2]", f"train.output_dir={tmp_path / 'o2'}"]
            ),
            "rloo",
        )
    with pytest.raises(ConfigError, match=r"reward.sources\[1\].weight=2.0: with preference.objectives"):
        two = LETTERS.replace("params: {letter: a}", "params: {letter: a}, weight: 2")
        load_config(RLOOConfig, None, [*base, two, "preference.objectives=[e, a]"])
    with pytest.raises(ConfigError, match=r"preference.format must contain \{weights\}"):
        load_config(RLOOConfig, None, [*base, "preference.objectives=[e, a]", "preference.format=hello"])


# ----------------------------------------------------------------------------------------------------------------------
# the Pareto front


def test_pareto_mask_hypervolume_and_grid_by_hand():
    from rlhfkit.eval.pareto import hypervolume_2d, pareto_mask, weight_grid

    pts = [[1.0, 0.0], [0.5, 0.5], [0.0, 1.0], [0.4, 0.4], [0.5, 0.5], [0.0, 0.9]]
    assert pareto_mask(pts).tolist() == [True, True, True, False, True, False]
    # staircase above (0, 0): 1*0 + ... sorted by x: (1, 0) adds 0, (0.5, 0.5) adds 0.5*0.5, (0, 1) adds 0
    assert hypervolume_2d([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]], [0.0, 0.0]) == pytest.approx(0.25)
    assert hypervolume_2d([[2.0, 1.0], [1.0, 2.0]], [0.0, 0.0]) == pytest.approx(2.0 + 1.0)
    assert weight_grid(2, 4) == [(1.0, 0.0), (0.75, 0.25), (0.5, 0.5), (0.25, 0.75), (0.0, 1.0)]
    grid3 = weight_grid(3, 2)
    assert len(grid3) == 6 and all(abs(sum(w) - 1) < 1e-9 for w in grid3)


# ----------------------------------------------------------------------------------------------------------------------
# where per-dimension labels come from: the annotation app's export and simulated raters


def test_annotation_export_writes_every_dimension_relative_to_the_row():
    from rlhfkit.data.pairs import EncodedPair, dimension_labels
    from tests.test_annotate_store import assignments, make_store, pairs, rater_id

    store, tokens = make_store(3)
    store.create_campaign("c", pairs(1), raters_per_item=3, dimensions=["helpful", "harmless"])
    # canonical winners per rater: overall "0"; helpful "1"; harmless tie, "0", "0"
    harmless = {"r0": "tie", "r1": "0", "r2": "0"}
    for a in assignments(store, "c"):
        disp = {w: "AB"[a["order"].index(int(w))] if w != "tie" else "tie" for w in ("0", "1", "tie")}
        answer = {
            "choice": disp["0"],
            "strength": 1,
            "dimensions": {"helpful": disp["1"], "harmless": disp[harmless[a["rater"]]]},
        }
        store.submit(rater_id(store, tokens[a["rater"]]), a["id"], answer)
    none = store.export("c", "none")
    assert [r["chosen"] for r in none] == ["first 0"] * 3
    assert sorted(r["rater"] + ":" + r["dimensions"]["harmless"] for r in none) == ["r0:tie", "r1:chosen", "r2:chosen"]
    assert all(r["dimensions"]["helpful"] == "rejected" for r in none)
    (row,) = store.export("c", "majority")
    assert row["dimensions"] == {"helpful": "rejected", "harmless": "chosen"} and row["chosen"] == "first 0"
    ex = parse_preference(row, "export:1")[0]
    label, present = dimension_labels([EncodedPair([1], [2], [3], dimensions=ex.dimensions)], ["helpful", "harmless"])
    assert label.tolist() == [[-1, 1]] and present.all()
    assert "dimensions" not in store.export("c", "none", dimension="helpful")[0]  # one dimension as the overall choice


def test_simulated_raters_label_each_dimension_with_its_own_gold():
    from rlhfkit.feedback import RaterSpec, simulate_dimensions

    prompts = [f"p{i}" for i in range(200)]
    a = ["good " * (1 + i % 5) for i in range(200)]  # positive, longer
    b = ["bad" for _ in range(200)]  # negative, short
    golds = {
        "sentiment": lambda ps, rs: [r.count("good") - r.count("bad") for r in rs],
        "brevity": lambda ps, rs: [-len(r.split()) for r in rs],
    }
    rows = simulate_dimensions(prompts, a, b, golds, [RaterSpec("x", temperature=0.0)], overall=golds["sentiment"])
    assert all(r["chosen"].startswith("good") for r in rows)  # noiseless: the overall gold decides the order
    assert all(r["dimensions"]["sentiment"] == "chosen" for r in rows)
    longer = [r for r, x in zip(rows, a) if len(x.split()) > 1]  # (equal lengths are a coin flip at temperature 0)
    assert len(longer) == 160 and all(r["dimensions"]["brevity"] == "rejected" for r in longer)
    # each dimension's label noise is its own: with flip 0.2 the sentiment winner is "good ..." about 80% of the time,
    # whatever the (separately flipped) overall order of the row
    noisy = simulate_dimensions(prompts, a, b, golds, [RaterSpec("y", temperature=0.0, flip=0.2)], seed=3)
    winners = [r["chosen"] if r["dimensions"]["sentiment"] == "chosen" else r["rejected"] for r in noisy]
    assert 0.7 < sum(w.startswith("good") for w in winners) / len(noisy) < 0.9
    assert any(r["chosen"] == "bad" for r in noisy)  # the overall order is flipped too, independently
    assert simulate_dimensions(prompts, a, b, golds, [RaterSpec("y", temperature=0.0, flip=0.2)], seed=3) == noisy


# ----------------------------------------------------------------------------------------------------------------------
# the CLI end to end: multi-head reward model -> preference-vector RLOO on it -> Pareto sweep


def test_cli_multi_objective_end_to_end(tiny_dir, two_head_rm, tmp_path):
    rm_dir = two_head_rm[0] / "model"  # `rlhfkit rm objectives=[pos, neg]`, in process above
    assert json.loads((rm_dir / "rlhfkit_encoding.json").read_text())["objectives"] == ["pos", "neg"]
    write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Say something about film number {i}."} for i in range(16)])
    write_jsonl(tmp_path / "held.jsonl", [{"prompt": f"Say something about film number {i}."} for i in range(50, 54)])
    common = ["train.batch_size=4", "train.progress=false", "data.max_length=64", "data.max_prompt_length=40"]
    r = _cli(
        "rloo",
        f"model.name_or_path={tiny_dir}",
        f"data.train={tmp_path / 'prompts.jsonl'}",
        f"data.eval={tmp_path / 'held.jsonl'}",
        f"reward.sources=[{{kind: multi_rm, path: {rm_dir}}}]",
        "preference.objectives=[pos, neg]",
        "train.max_steps=2",
        "sampling.max_new_tokens=6",
        "eval_samples=4",
        *common,
        "-o",
        str(tmp_path / "rloo"),
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "rloo" / "summary.json").read_text())
    assert {"objective/pos", "objective/neg", "before/objective/pos"} <= set(summary["eval"])
    r = _cli(
        "pareto",
        "--run",
        str(tmp_path / "rloo"),
        "--policy",
        f"warm={tiny_dir}",
        "--prompts",
        str(tmp_path / "held.jsonl"),
        "--steps",
        "2",
        "--max-new-tokens",
        "6",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    data = json.loads((tmp_path / "rloo" / "pareto" / "pareto.json").read_text())
    assert [(x["policy"], x["weights"]) for x in data["pareto"]] == [
        (p, w) for p in ("base", "warm", "trained") for w in ([1.0, 0.0], [0.5, 0.5], [0.0, 1.0])
    ]
    assert all(
        x["scalarized"] == pytest.approx(x["weights"][0] * x["pos"] + x["weights"][1] * x["neg"], abs=1e-5)
        for x in data["pareto"]
    )
    html = (tmp_path / "rloo" / "pareto" / "report.html").read_text()
    assert "Pareto front" in html and "data:image/png;base64," in html
    assert all(isinstance(x["example"], str) for x in data["pareto"])  # one response per row, in the report too
    md = (tmp_path / "rloo" / "pareto" / "report.md").read_text()
    assert "example (first prompt)" in md
    assert (tmp_path / "rloo" / "pareto" / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    # bad input: one line, before any model loads
    from rlhfkit.config import ConfigError
    from rlhfkit.pipeline.pareto import load_run_config, parse_weights

    with pytest.raises(ConfigError, match=r"rm/config.yaml: command 'rm' is not an online trainer"):
        load_run_config(two_head_rm[0])
    with pytest.raises(ConfigError, match=r"^--weights '1,2,3': give 2 non-negative numbers with a positive sum$"):
        parse_weights(["1,2,3"], 2)
