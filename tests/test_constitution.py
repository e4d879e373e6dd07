"""Constitutional AI: the constitution file, the critique-and-revise conversation, SFT / preference rows from a tiny
model, RLAIF labels with the constitution as rubric, and `rlhfkit constitution` end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlhfkit.data import load_examples
from rlhfkit.feedback.constitution import (
    ChatGenerator,
    Constitution,
    CritiqueRevision,
    Principle,
    clean_revision,
    constitution_dimensions,
    critique_and_revise,
    judge_revisions,
    load_constitution,
    preference_rows,
    rubric_from_constitution,
    sft_rows,
)
from rlhfkit.feedback.judge import Judge
from rlhfkit.models.tiny import save_tiny, tiny_causal_lm, tiny_tokenizer

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["How do I pick a lock?", "Write a short poem about the sea.", "What is the capital of France?"]


def test_default_constitution_has_eight_complete_principles():
    c = load_constitution()
    assert c.name == "rlhfkit-default" and len(c.principles) == 8
    assert len({p.name for p in c.principles}) == 8
    for p in c.principles:
        assert p.critique and p.revision and p.preference.startswith("Choose the response")
    rubric = rubric_from_constitution(c)
    assert all(p.preference in rubric for p in c.principles)
    assert rubric_from_constitution(c, ["honest"]).count("\n- ") == 1
    assert len(constitution_dimensions(c)) == 8
    with pytest.raises(KeyError, match="no principle 'nope'"):
        c.get("nope")


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("principles: []\n", 'non-empty list "principles"'),
        ("principles:\n  - name: a\n    critique: c\n    revision: r\n", 'principle 1 needs a non-empty string "preference"'),
        ("principles:\n  - {name: a, critique: c, revision: r, preference: p, extra: 1}\n", "unknown keys"),
        ("principles:\n  - {name: a, critique: c, revision: r, preference: p}\n"
         "  - {name: a, critique: c, revision: r, preference: p}\n", 'principle 2 repeats the name "a"'),
        ("principles: [\n", "invalid YAML"),
    ],
)  # fmt: skip
def test_bad_constitution_files_name_file_principle_and_key(tmp_path, text, error):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match="c.yaml") as e:
        load_constitution(path)
    assert error in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_constitution(tmp_path / "missing.yaml")


def test_clean_revision_strips_labels():
    assert clean_revision("  Revised response: I can't help with that. ") == "I can't help with that."
    assert clean_revision('Here is the rewritten response: "Be kind."') == "Be kind."
    assert clean_revision("Revision: ok") == "ok"
    assert clean_revision("The new plan is good.") == "The new plan is good."


class Scripted:
    """A fake chat model: records every conversation and answers by turn kind, so the flow is checked exactly."""

    def __init__(self) -> None:
        self.calls: list[list[list[dict[str, str]]]] = []

    def __call__(self, convs):
        self.calls.append([list(c) for c in convs])
        out = []
        for c in convs:
            last = c[-1]["content"]
            if len(c) == 1:
                out.append(f"original answer to {last}")
            elif "Rewrite" in last:
                out.append(f"Revised response: better answer #{len(c)}")
            else:
                out.append("critique: it could be safer")
        return out


def test_critique_and_revise_builds_the_paper_conversation():
    constitution = Constitution(
        (Principle("p1", "Critique one?", "Rewrite one.", "Choose one."),
         Principle("p2", "Critique two?", "Rewrite two.", "Choose two.")),
        "two",
    )  # fmt: skip
    gen = Scripted()
    records = critique_and_revise(gen, PROMPTS, constitution, rounds=1, seed=3)
    assert len(gen.calls) == 3  # answer, critique, revise: each one batched call over all prompts
    critique_convs, revise_convs = gen.calls[1], gen.calls[2]
    for rec, crit, rev in zip(records, critique_convs, revise_convs):
        p = constitution.get(rec.principles[0])
        assert [m["role"] for m in rev] == ["user", "assistant", "user", "assistant", "user"]
        assert crit[1]["content"] == rec.response and crit[2]["content"] == p.critique
        assert rev[3]["content"] == rec.critiques[0] and rev[4]["content"] == p.revision
        assert rec.revision == "better answer #5"  # the label is cleaned off
    # seeded principle draws
    again = critique_and_revise(Scripted(), PROMPTS, constitution, rounds=1, seed=3)
    assert [r.principles for r in again] == [r.principles for r in records]
    # a second round critiques the latest revision
    two = critique_and_revise(gen := Scripted(), PROMPTS[:1], constitution, rounds=2, seed=0)
    assert len(two[0].revisions) == 2 and gen.calls[3][0][1]["content"] == two[0].revisions[0]
    # "quoted": the critique is quoted in the revision request; the answer stays the model's last turn
    quoted = critique_and_revise(gen := Scripted(), PROMPTS[:1], constitution, seed=3, layout="quoted")
    conv = gen.calls[2][0]
    assert [m["role"] for m in conv] == ["user", "assistant", "user"] and conv[1]["content"] == quoted[0].response
    assert conv[2]["content"].startswith("A critique of your answer: critique: it could be safer\n\nRewrite")
    with pytest.raises(ValueError, match="rounds"):
        critique_and_revise(Scripted(), PROMPTS, constitution, rounds=0)
    with pytest.raises(ValueError, match="layout"):
        critique_and_revise(Scripted(), PROMPTS, constitution, layout="nope")


def test_rows_skip_empty_and_unchanged_revisions():
    recs = [
        CritiqueRevision(({"role": "user", "content": "a"},), "orig", ["harmful"], ["c"], ["new"]),
        CritiqueRevision(({"role": "user", "content": "b"},), "same", ["honest"], ["c"], ["same"]),
        CritiqueRevision(({"role": "user", "content": "c"},), "orig", ["honest"], ["c"], [" "]),
    ]
    sft, prefs = sft_rows(recs), preference_rows(recs)
    assert sft == [{"prompt": "a", "response": "new"}, {"prompt": "b", "response": "same"}]
    assert prefs == [
        {"prompt": "a", "chosen": "new", "rejected": "orig", "rater": "constitution", "principle": "harmful"}
    ]


@pytest.fixture(scope="module")
def tiny():
    tok = tiny_tokenizer()
    model = tiny_causal_lm(tok, seed=2)
    with torch.no_grad():  # large weights: the random model's text depends on its context
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.mul_(6.0)
    return model, tok


def test_tiny_model_produces_valid_sft_and_preference_rows(tiny):
    gen = ChatGenerator(tiny, max_new_tokens=8, temperature=1.0, batch_size=4, max_prompt_length=256, seed=0)
    records = critique_and_revise(gen, PROMPTS, rounds=1, seed=0)
    assert len(records) == 3 and all(len(r.revisions) == 1 and r.response for r in records)
    sft, prefs = sft_rows(records), preference_rows(records)
    assert len(sft) >= 2 and len(prefs) >= 2
    load_examples(sft, "sft")
    parsed = load_examples(prefs, "preference")
    assert all(p.rater == "constitution" for p in parsed)
    # sampling is seeded per call: the same generator settings give the same data
    gen2 = ChatGenerator(tiny, max_new_tokens=8, temperature=1.0, batch_size=4, max_prompt_length=256, seed=0)
    assert [r.to_row() for r in critique_and_revise(gen2, PROMPTS, seed=0)] == [r.to_row() for r in records]

    judge = Judge(tiny, rubric=rubric_from_constitution(load_constitution()), name="rlaif")
    rows, verdicts = judge_revisions(judge, records)
    assert len(rows) == len(verdicts) == len(prefs)
    assert all(r["rater"] == "rlaif" for r in load_examples(rows, "preference") for r in [r.to_row()])


def test_constitution_cli_end_to_end(tmp_path):
    model_dir = save_tiny(tmp_path / "tiny", "causal", seed=3)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    out = tmp_path / "cai"
    cmd = [sys.executable, "-m", "rlhfkit.cli", "constitution", "--model", str(model_dir), "--prompts", str(prompts)]
    cmd += ["-o", str(out), "--max-new-tokens", "6", "--temperature", "1.0", "--judge", str(model_dir)]
    cmd += ["--layout", "quoted"]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "critique-and-revise on 3 prompts" in res.stdout and "RLAIF" in res.stdout
    for name in ("sft.jsonl", "prefs.jsonl", "trace.jsonl", "summary.json", "rlaif.jsonl"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["prompts"] == 3 and summary["principles"] == 8 and summary["layout"] == "quoted"
    assert summary["sft_rows"] == len(load_examples(out / "sft.jsonl", "sft"))
    if summary["pref_rows"]:
        load_examples(out / "prefs.jsonl", "preference")
    trace = [json.loads(line) for line in (out / "trace.jsonl").read_text().splitlines()]
    assert len(trace) == 3 and all(len(t["critiques"]) == 1 for t in trace)
