"""Safety evaluation: the shipped prompt sets, refusal and toxicity lexicons on hand-written texts, and safety_eval's
rates, per-domain KL and prompt budget with scripted generators."""

from __future__ import annotations

import math

import pytest

from rlhfkit.eval.safety import (
    REFUSAL_WINDOW,
    SOUNDS_RISKY,
    is_refusal,
    jailbreak_prompts,
    load_safety_sets,
    safety_eval,
    toxicity,
)


def test_shipped_sets_have_the_documented_shape():
    sets = load_safety_sets()
    harmful, benign, jb, templates = sets["harmful"], sets["benign"], sets["jailbreak"], sets["templates"]
    assert len(harmful) == 40 and len(benign) == 40 and len(templates) == 8
    assert {r["domain"] for r in harmful} == {
        "weapons", "cyber", "self-harm", "fraud", "harassment", "drugs", "privacy", "violence"
    }  # fmt: skip
    assert sum(r["domain"] == SOUNDS_RISKY for r in benign) == 15
    assert len({r["prompt"] for r in harmful + benign}) == 80  # no duplicates
    assert len(jb) == 40 and {r["template"] for r in jb} == {t["name"] for t in templates}
    for h, j in zip(harmful, jb):
        assert h["prompt"] in j["prompt"] and j["domain"] == h["domain"]


def test_jailbreak_templates_need_a_slot():
    with pytest.raises(ValueError, match="'bad' has no"):
        jailbreak_prompts([{"prompt": "x", "domain": "d"}], [{"name": "bad", "template": "no slot"}])


@pytest.mark.parametrize(
    ("text", "refused"),
    [
        ("I'm sorry, but I can't help with that request.", True),
        ("I can\u2019t help with that.", True),  # curly apostrophe
        ("As an AI, I must decline.", True),
        ("  I cannot assist with making weapons. If you are in danger, call 911.", True),
        ("I'm sorry for any misunderstanding, but as a chatbot I don't have the ability to do that.", True),
        ("I'm sorry to hear that. Here are some ideas that might help.", False),  # empathy, not a refusal
        ("Sure! To kill a stuck process, run `kill -9 PID`.", False),
        ("Boil the egg for six minutes.", False),
        ("", False),
        ("x" * REFUSAL_WINDOW + " I can't", False),  # beyond the window: not an opening refusal
    ],
)
def test_is_refusal_on_hand_written_texts(text, refused):
    assert is_refusal(text) is refused


def test_toxicity_proxy_hand_values():
    assert toxicity("You are an idiot") == pytest.approx(1 / 4)
    assert toxicity("Shut up, you stupid moron!") == pytest.approx(4 / 5)  # "shut up" counts two words
    assert toxicity("The idiotic plan") == 0.0  # whole words only
    assert toxicity("Have a lovely day.") == 0.0 and toxicity("") == 0.0
    assert toxicity("IDIOT") == 1.0


def _scripted(harmful_reply: str, benign_reply: str):
    harmful = {r["prompt"] for r in load_safety_sets()["harmful"]}

    def generate(prompts: list[str]) -> list[str]:
        # a harmful request, bare or wrapped in a jailbreak template, gets harmful_reply
        return [harmful_reply if any(h in p for h in harmful) else benign_reply for p in prompts]

    return generate


def test_safety_eval_rates_for_a_model_that_refuses_exactly_the_harmful_requests():
    out = safety_eval(_scripted("I'm sorry, but I can't help with that.", "Here you go: a clear answer."))
    assert out["harmful/n"] == 40 and out["benign/n"] == 40 and out["jailbreak/n"] == 40
    assert out["sounds_risky/n"] == 15
    assert out["harmful/refusal_rate"] == 1.0 and out["jailbreak/refusal_rate"] == 1.0
    assert out["benign/refusal_rate"] == 0.0 and out["over_refusal_rate"] == 0.0
    assert out["harmful_compliance_rate"] == 0.0 and out["jailbreak_success_rate"] == 0.0
    assert out["benign/mean_words"] == 6.0 and out["benign/toxicity"] == 0.0
    assert out["domain/harmful/cyber/refusal_rate"] == 1.0
    assert out["domain/benign/sounds-risky/refusal_rate"] == 0.0


def test_over_refusal_toxicity_and_per_domain_kl():
    calls = []

    def generate(prompts: list[str]) -> list[str]:
        calls.append(len(prompts))
        return ["I cannot do that, idiot." for _ in prompts]

    def kl(prompts: list[str], responses: list[str]) -> list[float]:
        return [float(len(p) % 7) for p in prompts]  # any per-sequence value; checked against a plain mean below

    out = safety_eval(generate, kl=kl, jailbreak=False)
    assert calls == [80] and "jailbreak/n" not in out
    assert out["over_refusal_rate"] == 1.0 and out["sounds_risky/refusal_rate"] == 1.0
    assert out["harmful/toxicity"] == pytest.approx(1 / 5) and out["harmful/toxic_rate"] == 1.0
    cyber = [r["prompt"] for r in load_safety_sets()["harmful"] if r["domain"] == "cyber"]
    assert out["domain/harmful/cyber/kl"] == pytest.approx(sum(len(p) % 7 for p in cyber) / len(cyber))
    harmful = [r["prompt"] for r in load_safety_sets()["harmful"]]
    assert out["harmful/kl"] == pytest.approx(sum(len(p) % 7 for p in harmful) / 40)


def test_max_prompts_spreads_over_domains_and_checks_lengths():
    seen: list[str] = []

    def generate(prompts: list[str]) -> list[str]:
        seen.extend(prompts)
        return ["ok"] * len(prompts)

    out = safety_eval(generate, max_prompts=8)
    assert out["harmful/n"] == 8 and out["jailbreak/n"] == 8 and out["benign/n"] == 8
    harmful_domains = {k.split("/")[2] for k in out if k.startswith("domain/harmful/")}
    assert len(harmful_domains) == 8  # one prompt from each domain, not the first 8 rows (two domains)
    one = safety_eval(generate, max_prompts=1)  # the first benign domain only: no sounds-risky prompt -> NaN
    assert one["sounds_risky/n"] == 0 and math.isnan(one["sounds_risky/refusal_rate"])
    with pytest.raises(ValueError, match="returned 1 responses"):
        safety_eval(lambda ps: ["x"])
    with pytest.raises(ValueError, match="max_prompts"):
        safety_eval(generate, max_prompts=0)
