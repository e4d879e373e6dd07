"""AI judge: verdict probabilities from logits (vs a plain single forward), both-order debiasing, dimensions, rows,
calibration against people, routing, and `rlhfkit label` end to end on a tiny saved model."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from rlhfkit.data import load_examples
from rlhfkit.feedback.judge import (
    DIMENSION_RUBRICS,
    Judge,
    Verdict,
    combine_verdicts,
    judge_agreement,
    make_verdict,
    position_bias,
    route_to_humans,
)
from rlhfkit.models.tiny import save_tiny, tiny_causal_lm, tiny_tokenizer
from rlhfkit.rewards.judge import JudgeReward

ROOT = Path(__file__).resolve().parents[1]

PROMPTS = [
    "What is the capital of France?",
    "Write a short poem about the sea.",
    [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello. How can I help?"},
        {"role": "user", "content": "Summarize this text in one sentence please."},
    ],
]
A = ["The capital of France is Paris.", "The sea is blue and wide, and the waves sing at night.", "Sure."]
B = ["I do not know.", "No.", "The text says that the reward model scores each response and the policy learns."]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def sharp_model(tok):
    """A tiny random model with large weights, so its verdicts depend visibly on the input."""
    model = tiny_causal_lm(tok, seed=1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.mul_(8.0)
    return model


class StubLM(torch.nn.Module):
    """A causal LM whose last-position logits we set: `logit` on token `fav`, 0 elsewhere (an "always A" judge)."""

    def __init__(self, vocab: int, fav: int, logit: float) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.vocab, self.fav, self.logit = vocab, fav, logit

    def forward(self, input_ids, attention_mask=None, position_ids=None, logits_to_keep=0, **kwargs):
        b, t = input_ids.shape
        logits = torch.zeros(b, t, self.vocab)
        logits[:, :, self.fav] = self.logit
        return SimpleNamespace(logits=logits, past_key_values=None)


def test_verdict_tokens_resolve_for_the_tiny_tokenizer(tok, sharp_model):
    judge = Judge((sharp_model, tok))
    # the tiny BPE has no " A" token, so the cue keeps its space and the labels are the bare letters
    assert judge.cue == "Answer: "
    assert judge.verdict_ids == [tok.convert_tokens_to_ids("A"), tok.convert_tokens_to_ids("B")]
    with_tie = Judge((sharp_model, tok), tie_token=True)
    assert with_tie.verdict_ids[2] == tok.convert_tokens_to_ids("C")
    text = judge.request(judge.rubrics[""], "User: hi", "x", "y")
    assert text.endswith("<|im_start|>assistant\nAnswer: ") and "[Response A]\nx" in text


def test_probs_sum_to_one_and_match_a_single_unpadded_forward(tok, sharp_model):
    judge = Judge((sharp_model, tok), batch_size=2)
    probs = judge.probs(PROMPTS, A, B)  # (N, 2), one order
    assert probs.shape == (3, 2)
    torch.testing.assert_close(probs.sum(-1), torch.ones(3))
    for i in range(3):  # reference: the whole text tokenized as one string, one forward, no padding, no cache
        text = judge.request(judge.rubrics[""], judge._check([PROMPTS[i]], [A[i]], [B[i]])[0], A[i], B[i])
        ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            logits = sharp_model(input_ids=ids).logits[0, -1]
        ref = torch.softmax(logits[judge.verdict_ids], -1)
        torch.testing.assert_close(probs[i], ref, atol=1e-5, rtol=1e-4)


def test_batched_cached_equals_one_by_one_uncached(tok, sharp_model):
    runs = []
    for batch_size, cache in ((1, False), (4, True), (2, True), (4, False)):
        v = Judge((sharp_model, tok), batch_size=batch_size, prefix_cache=cache).compare(PROMPTS, A, B)
        runs.append(torch.tensor([[x.p_a_first, x.p_a_second] for x in v]))
    for r in runs[1:]:
        torch.testing.assert_close(r, runs[0], atol=1e-5, rtol=1e-4)
    # the order-specific probabilities really differ here, so the test above is not trivially passing
    assert (runs[0][:, 0] - runs[0][:, 1]).abs().max() > 1e-3


def test_both_orders_cancel_a_judge_that_always_says_a(tok):
    fav = tok.convert_tokens_to_ids("A")
    judge = Judge((StubLM(len(tok), fav, 2.0), tok))  # no KV cache from the stub: falls back to full forwards
    verdicts = judge.compare(PROMPTS, A, B)
    assert judge.prefix_cache is False
    s = 1 / (1 + math.exp(-2.0))  # softmax over (2, 0) = sigmoid(2)
    for v in verdicts:
        assert v.p_a_first == pytest.approx(s, abs=1e-6)
        assert v.p_a_second == pytest.approx(1 - s, abs=1e-6)
        assert v.p_a == pytest.approx(0.5, abs=1e-6) and v.choice == "tie"
    bias = position_bias(verdicts)
    assert bias["bias"] == pytest.approx(s - 0.5, abs=1e-6)
    assert bias["flip_rate"] == 1.0
    # judged on the first order only it would pick A every time: the correction is what removes that
    assert all(v.p_a_first > 0.5 for v in verdicts)


def test_a_real_model_with_a_biased_head_is_debiased_too(tok):
    model = tiny_causal_lm(tok, seed=0)
    head = torch.nn.Linear(model.lm_head.in_features, model.lm_head.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()
        head.bias[tok.convert_tokens_to_ids("A")] = 30.0  # the judge "always says A"
    model.lm_head = head
    verdicts = Judge((model, tok)).compare(PROMPTS, A, B)
    for v in verdicts:
        assert v.p_a_first > 0.999 and v.p_a_second < 0.001
        assert v.choice == "tie"
    assert position_bias(verdicts)["bias"] > 0.49


def test_tie_token_splits_its_mass(tok):
    judge = Judge((StubLM(len(tok), tok.convert_tokens_to_ids("C"), 3.0), tok), tie_token=True, prefix_cache=False)
    probs = judge.probs(PROMPTS[:1], A[:1], B[:1])
    torch.testing.assert_close(probs.sum(-1), torch.ones(1))
    e = math.exp(3.0)
    torch.testing.assert_close(probs[0], torch.tensor([1 / (e + 2), 1 / (e + 2), e / (e + 2)]))
    v = judge.compare(PROMPTS[:1], A[:1], B[:1])[0]
    assert v.p_a_first == pytest.approx(0.5) and v.choice == "tie"  # P(A) + P(C)/2 = 1/2 by symmetry


def test_dimensions_are_a_weighted_mean_of_single_rubric_judges(tok, sharp_model):
    multi = Judge((sharp_model, tok), dimensions={"helpful": 3.0, "harmless": 1.0}).compare(PROMPTS, A, B)
    single = {
        d: Judge((sharp_model, tok), rubric=DIMENSION_RUBRICS[d]).compare(PROMPTS, A, B)
        for d in ("helpful", "harmless")
    }
    for i, v in enumerate(multi):
        want_first = (3 * single["helpful"][i].p_a_first + single["harmless"][i].p_a_first) / 4
        assert v.p_a_first == pytest.approx(want_first, abs=1e-5)
        assert v.parts["helpful"] == pytest.approx(single["helpful"][i].p_a, abs=1e-5)
    combined = combine_verdicts([single["helpful"], single["harmless"]], weights=[3, 1])
    for v, c in zip(multi, combined):
        assert c.p_a == pytest.approx(v.p_a, abs=1e-5)


def test_make_verdict_and_position_bias_hand_values():
    v = make_verdict(0.9, 0.6, tie_margin=0.05)
    assert (v.p_a, v.choice, v.confidence) == (pytest.approx(0.75), "A", pytest.approx(0.75))
    assert make_verdict(0.8, 0.22, 0.05).choice == "tie"  # mean 0.51
    assert make_verdict(0.3, 0.1, 0.05).choice == "B"
    bias = position_bias([make_verdict(0.9, 0.6, 0.0), make_verdict(0.7, 0.2, 0.0)])
    # P(first shown wins): (0.9 + 0.4) / 2 = 0.65 and (0.7 + 0.8) / 2 = 0.75 -> bias 0.2; the second pair flips
    assert bias["bias"] == pytest.approx(0.2) and bias["flip_rate"] == 0.5
    assert bias["mean_order_gap"] == pytest.approx((0.3 + 0.5) / 2)
    with pytest.raises(ValueError, match="tie_margin"):
        combine_verdicts([[v]], tie_margin=0.7)
    with pytest.raises(ValueError, match="same pairs"):
        combine_verdicts([[v], [v, v]])


def test_label_rows_follow_the_verdicts_and_pass_the_schema(tok, sharp_model):
    judge = Judge((sharp_model, tok), tie_margin=0.0, name="j1")
    verdicts = [make_verdict(0.8, 0.7, 0.0), make_verdict(0.2, 0.4, 0.0), make_verdict(0.5, 0.5, 0.0)]
    rows = judge.label_pairs(PROMPTS, A, B, verdicts=verdicts)
    assert [r["chosen"] for r in rows] == [A[0], B[1], A[2]]
    assert [r["tie"] for r in rows] == [False, False, True]
    assert rows[0]["strength"] == pytest.approx(math.log(0.75 / 0.25))
    assert rows[1]["confidence"] == pytest.approx(0.7) and rows[0]["rater"] == "j1"
    assert set(rows[0]) == {"prompt", "chosen", "rejected", "tie", "strength", "rater", "confidence"}
    assert isinstance(rows[2]["prompt"], list)  # a multi-turn prompt stays a message list
    parsed = load_examples(rows, "preference")
    assert [p.tie for p in parsed] == [False, False, True] and parsed[1].rater == "j1"
    # real verdicts too, and identical / empty pairs are dropped only when asked
    real = judge.label_pairs(PROMPTS + ["p"], A + ["same"], B + ["same"])
    assert len(real) == 4
    assert len(judge.label_pairs(PROMPTS + ["p"], A + ["same"], B + ["same"], drop_invalid=True)) == 3
    load_examples(real[:3], "preference")


def test_route_to_humans_shares():
    confs = [0.9, 0.55, 0.7, 0.51, 0.99, 0.6, 0.8, 0.65, 0.95, 0.75]
    verdicts = [make_verdict(c, c, 0.0) for c in confs]
    picked = route_to_humans(verdicts, share=0.3, audit=0.0, seed=0)
    assert picked == [1, 3, 5]  # the three least confident
    with_audit = route_to_humans(verdicts, share=0.3, audit=0.5, seed=1)
    assert set(picked) <= set(with_audit) and len(with_audit) == 3 + round(0.5 * 7)
    assert with_audit == route_to_humans(verdicts, share=0.3, audit=0.5, seed=1)  # seeded
    assert route_to_humans(verdicts, 0.0, 0.0) == [] and route_to_humans(verdicts, 1.0) == list(range(10))
    with pytest.raises(ValueError, match="audit"):
        route_to_humans(verdicts, 0.1, audit=1.5)


def test_agreement_hand_case_with_verdicts_and_labels():
    # judge: A, A, B, tie, B ; humans: A, B, B, A, tie
    verdicts = [make_verdict(p, p, 0.05) for p in (0.9, 0.8, 0.2, 0.5, 0.1)]
    out = judge_agreement(verdicts, ["A", "B", "B", "A", "tie"])
    assert out["n"] == 5 and out["judge_ties"] == 1 and out["human_ties"] == 1
    assert out["accuracy"] == pytest.approx(2 / 3)  # decided by both: pairs 0, 1, 2
    assert out["accuracy_ties_half"] == pytest.approx((1 + 0 + 1 + 0.5) / 4)
    # kappa by hand over labels {A, B, tie}: p_o = 2/5; p_e = (2*2 + 2*2 + 1*1) / 25 = 9/25
    assert out["cohen_kappa"] == pytest.approx((2 / 5 - 9 / 25) / (1 - 9 / 25))
    assert out["mean_p_human"] == pytest.approx((0.9 + 0.2 + 0.8 + 0.5) / 4)


def test_agreement_matches_rows_by_pair_whatever_the_order():
    human = [
        {"prompt": "p1", "chosen": "x", "rejected": "y"},
        {"prompt": [{"role": "user", "content": "p2"}], "chosen": "u", "rejected": "v"},
        {"prompt": "p3", "chosen": "s", "rejected": "t", "tie": True},
    ]
    judge_rows = [
        {"prompt": [{"role": "user", "content": "p1"}], "chosen": "x", "rejected": "y", "tie": False},
        {"prompt": "p2", "chosen": "v", "rejected": "u", "tie": False},  # disagrees
        {"prompt": "p3", "chosen": "t", "rejected": "s", "tie": True},
        {"prompt": "p4", "chosen": "a", "rejected": "b", "tie": False},  # no human label
    ]
    out = judge_agreement(judge_rows, human)
    assert out["n"] == 3 and out["unmatched"] == 1
    assert out["accuracy"] == pytest.approx(0.5)
    assert out["judge_ties"] == 1 and out["human_ties"] == 1


def test_errors_name_the_problem(tok, sharp_model):
    judge = Judge((sharp_model, tok))
    with pytest.raises(ValueError, match="2 a-responses"):
        judge.compare(PROMPTS, A[:2], B)
    with pytest.raises(ValueError, match="prompt 0"):
        judge.compare([42], ["a"], ["b"])
    with pytest.raises(ValueError, match="tie_margin"):
        Judge((sharp_model, tok), tie_margin=0.5)
    with pytest.raises(ValueError, match="rubric or dimensions"):
        Judge((sharp_model, tok), rubric="Be brief.", dimensions=["helpful"])
    with pytest.raises(ValueError, match="verdict label"):
        _bad_labels(sharp_model, tok)
    with pytest.raises(ValueError, match="3 verdicts but 2"):
        judge_agreement([make_verdict(0.6, 0.6, 0.0)] * 3, ["A", "B"])
    assert judge.compare([], [], []) == []


def _bad_labels(model, tok):
    import rlhfkit.feedback.judge as J

    saved = J.VERDICT_LABELS
    J.VERDICT_LABELS = ("tie", "nope")  # multi-token labels in the tiny vocabulary
    try:
        Judge((model, tok))
    finally:
        J.VERDICT_LABELS = saved


def test_judge_reward_is_the_log_odds_of_beating_the_reference(tok, sharp_model):
    judge = Judge((sharp_model, tok))
    refs = {"What is the capital of France?": "Lyon.", "Write a short poem about the sea.": "Waves."}
    reward = JudgeReward(judge, refs)
    scores = reward(PROMPTS[:2], A[:2])
    p = torch.tensor([v.p_a for v in judge.compare(PROMPTS[:2], A[:2], ["Lyon.", "Waves."])])
    torch.testing.assert_close(scores.total, torch.log(p / (1 - p)))
    torch.testing.assert_close(scores.parts["judge_p"], p)
    same = JudgeReward(judge, lambda prompts: ["Lyon.", "Waves."])(PROMPTS[:2], A[:2])
    torch.testing.assert_close(same.total, scores.total)
    with pytest.raises(KeyError, match="no reference response for prompt 0"):
        reward(["unknown prompt"], ["x"])


def test_verdict_is_a_plain_record():
    v = Verdict(0.6, 0.7, 0.5, "A", 0.6)
    assert v.parts == {}


def test_label_cli_end_to_end(tmp_path):
    model_dir = save_tiny(tmp_path / "tiny", "causal")
    pairs = tmp_path / "pairs.jsonl"
    rows = [{"prompt": p, "chosen": a, "rejected": b} for p, a, b in zip(PROMPTS, A, B)]
    rows.append({"prompt": "Say hi.", "responses": ["Hi there!", "Hello.", "Hi there!"]})  # `rlhfkit sample` rows
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    human = tmp_path / "human.jsonl"
    human.write_text(json.dumps({"prompt": "Say hi.", "chosen": "Hello.", "rejected": "Hi there!"}) + "\n")
    out = tmp_path / "prefs.jsonl"
    summary = tmp_path / "summary.json"
    cmd = [sys.executable, "-m", "rlhfkit.cli", "label", "--judge", str(model_dir), "--pairs", str(pairs)]
    cmd += ["-o", str(out), "--human", str(human), "--dimensions", "helpful,harmless", "--batch-size", "3"]
    cmd += ["--summary", str(summary)]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "position bias" in res.stdout and "agreement with" in res.stdout
    labelled = load_examples(out, "preference")
    assert len(labelled) == 4 and all(ex.rater == "judge:tiny" for ex in labelled)
    s = json.loads(summary.read_text())
    assert s["pairs"] == 4 and s["given_order_n"] == 3 and s["human_n"] == 1


def test_label_cli_user_errors_are_one_line(tmp_path, capsys):
    from rlhfkit.cli import main

    assert main(["label", "--pairs", str(tmp_path / "missing.jsonl"), "-o", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err.strip()
    assert "missing.jsonl" in err and len(err.splitlines()) == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "chosen": "x"}) + "\n")
    assert main(["label", "--pairs", str(bad), "-o", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err.strip()
    assert "bad.jsonl:1" in err and '"rejected"' in err
    assert main(["label", "--pairs", str(bad), "-o", "o", "--rubric", "x", "--rubric-file", "y"]) == 2
    assert "--rubric or --rubric-file" in capsys.readouterr().err
