"""The closed loop on a tiny model: every stage, skipping of unchanged stages, SIGKILL + resume, malformed files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from rlhfkit.config import ConfigError
from rlhfkit.data import write_jsonl
from rlhfkit.models.tiny import save_tiny
from rlhfkit.pipeline import hash_path, load_pipeline, run_pipeline, stage_records, status_table

ROOT = Path(__file__).resolve().parents[1]
GOLD = [{"kind": "callable", "path": "tests.toy:letter_reward"}]


def pipeline_dict(root: Path, out: Path, rounds: int = 2) -> dict:
    return {
        "output": str(out),
        "model": str(root / "tiny"),
        "rounds": rounds,
        "seed": 3,
        "prompts": {"train": str(root / "prompts.jsonl"), "eval_count": 6, "per_round": 8, "template": "Say: {prompt}"},
        "sft": {"data": {"train": str(root / "sft.jsonl")}, "train": {"max_steps": 2, "batch_size": 4}},
        "sample": {"num_samples": 3, "sampling": {"max_new_tokens": 8, "batch_size": 16}},
        "label": {"gold": GOLD, "pairs": "all", "heldout_fraction": 0.25},
        "rm": {"train": {"max_steps": 2, "batch_size": 4}, "data": {"max_length": 64, "max_prompt_length": 32}},
        "optimize": {
            "algorithm": "ppo",
            "train": {"max_steps": 2, "batch_size": 4, "save_every": 1, "lr": 1e-3},
            "sampling": {"max_new_tokens": 8},
            "eval_samples": 4,
        },
        "eval": {"sampling": {"max_new_tokens": 8, "batch_size": 16}, "examples": 2},
    }


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pipeline")
    save_tiny(root / "tiny", "causal")
    write_jsonl(root / "prompts.jsonl", [{"prompt": f"the film number {i} was"} for i in range(40)])
    write_jsonl(root / "sft.jsonl", [{"prompt": f"Say: film {i}", "response": "eeee see three"} for i in range(8)])
    return root


def write_pipeline(root: Path, out: Path, **changes) -> Path:
    d = pipeline_dict(root, out)
    d.update(changes)
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


def finished(run: Path) -> dict[str, str]:
    return {f"{r['round']}/{r['stage']}": r.get("finished") for r in stage_records(run)}


def test_pipeline_end_to_end_then_skips_unchanged_stages(root: Path) -> None:
    out = root / "run"
    path = write_pipeline(root, out)
    cfg = load_pipeline(path)
    run_pipeline(cfg, str(path))

    recs = stage_records(out)
    names = [f"{r['round']}/{r['stage']}" for r in recs]
    assert names == ["0/prompts", "0/sft", "0/eval"] + [
        f"{i}/{s}" for i in (1, 2) for s in ("sample", "label", "rm", "optimize", "eval")
    ]
    assert all(r["status"] == "done" for r in recs)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "done" and manifest["versions"]["torch"] and manifest["seed"] == 3
    # each record: settings, input and output content hashes that match the files
    sample = next(r for r in recs if r["stage"] == "sample" and r["round"] == 2)
    assert sample["outputs"]["samples.jsonl"] == hash_path(out / "round-2/sample/samples.jsonl")
    assert (
        sample["inputs"]["policy"]
        == next(r for r in recs if r["stage"] == "optimize" and r["round"] == 1)["outputs"]["model"]
    )
    # round 2 samples from round 1's policy; the reward model of round 2 saw both rounds' labels
    rm2 = sum(1 for _ in open(out / "round-2/rm/data/train.jsonl"))
    labels = sum(1 for i in (1, 2) for _ in open(out / f"round-{i}/label/prefs.jsonl"))
    assert rm2 == labels > 0
    # the reward model records how its pairs were cut; as a reward source it cuts new responses the same way
    from rlhfkit.rewards.sources import RewardModelSource

    assert json.loads((out / "round-1/rm/model/rlhfkit_encoding.json").read_text()) == {
        "max_length": 64,
        "max_prompt_length": 32,
    }
    source = RewardModelSource.from_path(out / "round-1/rm/model")
    assert (source.formatter.max_length, source.formatter.max_prompt_length) == (64, 32)
    ev = json.loads((out / "round-2/eval/eval.json").read_text())
    assert {"gold", "kl", "length", "distinct_1", "win_rate", "proxy", "reward_model"} <= set(ev)
    assert abs(ev["kl"]) > 1e-3  # the optimized policy moved away from the reference
    w = ev["win_rate"]
    assert w["wins"] + w["ties"] + w["losses"] == 6 and 0 <= w["ci_low"] <= w["rate"] <= w["ci_high"] <= 1
    prompts = [json.loads(x)["prompt"] for x in open(out / "round-0/prompts/train.jsonl")]
    assert all(p.startswith("Say: the film number") for p in prompts) and len(prompts) == 34
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and (out / "report.md").exists()
    table = status_table(out)
    assert "round-2/optimize" in table and "done" in table

    # unchanged: every stage skipped
    before = finished(out)
    run_pipeline(load_pipeline(path), str(path), report=False)
    assert finished(out) == before

    # a changed optimizer setting reruns optimize and what depends on its output; nothing before it
    records = {f"{r['round']}/{r['stage']}": r for r in stage_records(out)}
    d = pipeline_dict(root, out)
    d["optimize"]["train"]["lr"] = 5e-4
    path.write_text(yaml.safe_dump(d))
    run_pipeline(load_pipeline(path), str(path), report=False)
    after = {f"{r['round']}/{r['stage']}": r for r in stage_records(out)}
    for key in ("0/prompts", "0/sft", "0/eval", "1/sample", "1/label", "1/rm"):
        assert after[key]["finished"] == records[key]["finished"], key
    for key in ("1/optimize", "1/eval", "2/sample"):
        assert after[key]["finished"] != records[key]["finished"], key
    for key in ("2/label", "2/rm", "2/optimize", "2/eval"):  # content-addressed: rerun exactly when an input changed
        changed = after[key]["inputs"] != records[key]["inputs"]
        assert (after[key]["finished"] != records[key]["finished"]) == changed, key
    assert after["2/optimize"]["inputs"]["policy"] != records["2/optimize"]["inputs"]["policy"]


def _wait_for(predicate, timeout: float, proc: subprocess.Popen) -> None:
    t0 = time.monotonic()
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"pipeline ended early: {proc.stderr.read() if proc.stderr else ''}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise AssertionError("timed out waiting for the pipeline")
        time.sleep(0.05)


def test_sigkill_mid_stage_resumes_without_repeating_finished_stages(root: Path) -> None:
    out = root / "killed"
    d = pipeline_dict(root, out, rounds=1)
    d["rounds"] = 1
    d["optimize"]["train"]["max_steps"] = 20
    path = out.parent / "killed.yaml"
    path.write_text(yaml.safe_dump(d))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "rlhfkit.cli", "run", str(path)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    opt = out / "round-1" / "optimize"
    # kill once a second checkpoint exists (so the first is complete), well before step 20
    _wait_for(lambda: len(list((opt / "checkpoints").glob("step-*"))) >= 2, 240, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    record = json.loads((opt / "stage.json").read_text())
    assert record["status"] == "running"
    assert any(x.startswith("round-1/optimize") and "interrupted" in x for x in status_table(out).splitlines())
    before = finished(out)
    assert all(before[k] for k in ("0/prompts", "0/sft", "0/eval", "1/sample", "1/label", "1/rm"))

    r = subprocess.run([*cmd, "--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    after = finished(out)
    for key, value in before.items():
        if key != "1/optimize":
            assert after[key] == value, f"{key} ran again"
    record = json.loads((opt / "stage.json").read_text())
    assert record["status"] == "done" and record["resumed"] is True
    steps = [json.loads(x)["step"] for x in open(opt / "metrics.jsonl") if "train/loss" in x]
    assert steps == sorted(set(steps)) and steps[-1] == 20  # continued from the checkpoint, no step repeated
    assert "unchanged: skipped" in r.stdout and (out / "report.html").exists()


@pytest.mark.parametrize(
    "change, key",
    [
        ({"rm": {"train": {"max_stepz": 3}}}, "rm.train.max_stepz"),
        ({"roundz": 3}, "roundz"),
        ({"label": {"source": "crowd"}}, "label.source"),
        ({"optimize": {"algorithm": "ppo", "kl": {"coef": "lots"}}}, "optimize.kl.coef"),
        ({"optimize": {"algorithm": "a2c"}}, "optimize.algorithm"),
    ],
)
def test_malformed_pipeline_is_one_line_naming_the_key(root: Path, tmp_path: Path, change: dict, key: str) -> None:
    d = pipeline_dict(root, tmp_path / "out")
    d.update(change)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(d))
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_pipeline(path)
    r = subprocess.run(
        [sys.executable, "-m", "rlhfkit.cli", "run", str(path)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and key in lines[0] and str(path) in lines[0]
    assert not (tmp_path / "out").exists()  # nothing ran


def test_system_message_goes_before_every_prompt(root: Path, tmp_path: Path) -> None:
    from rlhfkit.pipeline import Pipeline, Runner

    d = pipeline_dict(root, tmp_path / "run")
    d["prompts"]["system"] = "You are a critic."
    pl = Pipeline(load_pipeline_from(d, tmp_path))
    Runner(pl.dir, resume=False, force=False, log=lambda _: None)(pl.prompts_stage())
    rows = [json.loads(x)["prompt"] for x in open(tmp_path / "run/round-0/prompts/eval.jsonl")]
    assert len(rows) == 6 and all(r[0] == {"role": "system", "content": "You are a critic."} for r in rows)
    assert all(r[1]["role"] == "user" and r[1]["content"].startswith("Say: the film number") for r in rows)


def test_bad_prompt_row_names_file_line_and_field(root: Path, tmp_path: Path) -> None:
    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"prompt": "ok one"}\n{"text": "no prompt"}\n')
    d = pipeline_dict(root, tmp_path / "out")
    d["prompts"]["train"] = str(bad)
    with pytest.raises(ConfigError, match=r"prompts\.jsonl:2: field 'prompt'"):
        run_pipeline(load_pipeline_from(d, tmp_path), "x", report=False)


def load_pipeline_from(d: dict, tmp_path: Path):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(d))
    return load_pipeline(path)


def _one_round(root: Path, out: Path, label: dict) -> dict:
    d = pipeline_dict(root, out, rounds=1)
    d["rounds"] = 1
    d["sft"] = None
    d["label"] = {**d["label"], **label}
    d["optimize"] = {
        "algorithm": "dpo",
        "train": {"max_steps": 2, "batch_size": 2},
        "data": {"max_length": 64, "max_prompt_length": 32},
    }
    d["eval"]["judge"] = "gold"
    return d


def test_label_from_file_and_offline_dpo(root: Path, tmp_path: Path) -> None:
    prefs = tmp_path / "prefs-1.jsonl"
    write_jsonl(prefs, [{"prompt": f"p {i}", "chosen": "eee", "rejected": "abc", "rater": "me"} for i in range(8)])
    d = _one_round(root, tmp_path / "run", {"source": "file", "file": str(tmp_path / "prefs-{round}.jsonl")})
    run_pipeline(load_pipeline_from(d, tmp_path), "p.yaml", report=False)
    out = tmp_path / "run"
    rows = [json.loads(x) for f in ("prefs", "heldout") for x in open(out / f"round-1/label/{f}.jsonl")]
    assert sorted(r["prompt"] for r in rows) == sorted(f"p {i}" for i in range(8))
    assert not (out / "round-1/rm").exists()  # DPO judged by gold needs no reward model
    dpo_rows = sum(1 for _ in open(out / "round-1/optimize/data/train.jsonl"))
    assert dpo_rows == sum(1 for _ in open(out / "round-1/label/prefs.jsonl"))
    assert (out / "round-1/optimize/model").exists()
    assert "win_rate" in json.loads((out / "round-1/eval/eval.json").read_text())


def test_label_by_ai_judge(root: Path, tmp_path: Path) -> None:
    d = _one_round(root, tmp_path / "run", {"source": "judge", "judge": str(root / "tiny")})
    d["optimize"]["loss"] = {"ties": "davidson"}  # a random tiny judge calls most pairs ties: train them as ties
    run_pipeline(load_pipeline_from(d, tmp_path), "p.yaml", report=False)
    rec = next(r for r in stage_records(tmp_path / "run") if r["stage"] == "label")
    assert rec["metrics"]["judge"] == str(root / "tiny") and "position_bias" in " ".join(rec["metrics"])
    rows = [json.loads(x) for x in open(tmp_path / "run/round-1/label/prefs.jsonl")]
    assert rows and all(r["rater"] == "judge:tiny" and 0.5 <= r["confidence"] <= 1 for r in rows)


def test_label_by_humans_waits_for_the_campaign_then_continues(root: Path, tmp_path: Path) -> None:
    import threading

    from rlhfkit.feedback.store import Store

    db = f"sqlite:///{tmp_path / 'annotations.db'}"
    store = Store(db)
    tokens = {name: store.add_rater(name) for name in ("alice", "bob")}
    d = _one_round(root, tmp_path / "run", {"source": "human", "db": db, "raters_per_item": 2, "poll_seconds": 0.1})
    cfg = load_pipeline_from(d, tmp_path)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            run_pipeline(cfg, "p.yaml", report=False)
        except BaseException as e:  # surfaced below
            errors.append(e)

    thread = threading.Thread(target=run)
    thread.start()
    t0 = time.monotonic()
    while not store.campaigns():  # the pipeline creates the campaign once the samples exist
        assert thread.is_alive() and time.monotonic() - t0 < 120, errors
        time.sleep(0.1)
    name = store.campaigns()[0]["name"]
    assert thread.is_alive()  # waiting for labels
    submitted = 0
    for rater, token in tokens.items():
        rid = store.rater_by_token(token).id
        while (a := store.next_assignment(rid, name)) is not None:
            # alice prefers the first shown response, bob the second: disagreements get adjudicated
            store.submit(rid, a["id"], {"choice": "A" if rater == "alice" else "B", "strength": 2})
            submitted += 1
    thread.join(timeout=300)
    assert not thread.is_alive() and not errors, errors
    progress = store.progress(name)
    assert progress["labelled_items"] == progress["total_items"] and submitted == 2 * progress["total_items"]
    rows = [json.loads(x) for f in ("prefs", "heldout") for x in open(tmp_path / f"run/round-1/label/{f}.jsonl")]
    assert len(rows) == progress["total_items"] and all(r["rater"] == "adjudicated" for r in rows)
    assert (tmp_path / "run/round-1/optimize/model").exists()


def test_judge_routes_its_least_confident_pairs_to_humans(root: Path, tmp_path: Path) -> None:
    import threading

    from rlhfkit.feedback.store import Store

    db = f"sqlite:///{tmp_path / 'annotations.db'}"
    store = Store(db)
    rid = store.rater_by_token(store.add_rater("carol")).id
    label = {"source": "judge", "judge": str(root / "tiny"), "human_share": 0.25, "audit_share": 0.25}
    d = _one_round(root, tmp_path / "run", label | {"db": db, "poll_seconds": 0.1})
    cfg = load_pipeline_from(d, tmp_path)
    thread = threading.Thread(target=run_pipeline, args=(cfg, "p.yaml"), kwargs={"report": False})
    thread.start()
    t0 = time.monotonic()
    while not store.campaigns():
        assert thread.is_alive() and time.monotonic() - t0 < 120
        time.sleep(0.1)
    name = store.campaigns()[0]["name"]
    while (a := store.next_assignment(rid, name)) is not None:
        store.submit(rid, a["id"], {"choice": "A", "strength": 1})
    thread.join(timeout=300)
    assert not thread.is_alive()
    rec = next(r for r in stage_records(tmp_path / "run") if r["stage"] == "label")["metrics"]
    sampled = rec["pairs"] + rec["dropped_invalid"]
    humans = store.progress(name)["total_items"]
    # the least confident quarter plus a random quarter of the rest (rounding aside) went to people
    assert 0.25 * sampled <= humans <= 0.25 * sampled + 0.25 * sampled * 0.75 + 2
    assert rec["human_pairs"] == humans and "judge_human_accuracy" in rec
    rows = [json.loads(x) for f in ("prefs", "heldout") for x in open(tmp_path / f"run/round-1/label/{f}.jsonl")]
    assert sum(r["rater"] == "adjudicated" for r in rows) == humans
    assert sum(r["rater"] == "judge:tiny" for r in rows) == len(rows) - humans


def test_eval_command_end_to_end(root: Path, tmp_path: Path) -> None:
    import shutil

    prompts = tmp_path / "heldout.jsonl"
    write_jsonl(prompts, [{"prompt": f"Say: film {i}"} for i in range(6)])
    base = tmp_path / "base"
    shutil.copytree(root / "tiny", base)  # the same weights under another name
    out = tmp_path / "eval.json"
    r = subprocess.run(
        [
            sys.executable, "-m", "rlhfkit.cli", "eval", "--policy", str(root / "tiny"), "--baseline", str(base),
            "--prompts", str(prompts), "--gold", "tests.toy:letter_reward", "--max-new-tokens", "6", "--seed", "1",
            "--safety", "-o", str(out),
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    policy = res["policies"][str(root / "tiny")]
    assert abs(policy["kl"]) < 1e-5  # the same weights as the reference (the baseline)
    w = policy["win_rate"]
    assert w["wins"] + w["ties"] + w["losses"] == 6 and w["ties"] == 6  # same weights, same seed: identical samples
    assert sorted(row["name"] for row in res["ratings"]) == sorted([str(root / "tiny"), str(base)])
    assert "win rate 0.500" in r.stdout
    safety = res["safety"][str(root / "tiny")]
    assert 0 <= safety["harmful/refusal_rate"] <= 1 and 0 <= safety["over_refusal_rate"] <= 1


def test_optimize_reward_sources_are_added_to_the_rounds_reward_model(root: Path, tmp_path: Path, monkeypatch) -> None:
    from rlhfkit.pipeline import Pipeline, stages

    d = pipeline_dict(root, tmp_path / "run", rounds=1)
    length = {"kind": "rule", "path": "length", "weight": 0.1, "params": {"target": 5}}
    d["optimize"]["reward"] = {"sources": [length], "clip": 3.0}
    pl = Pipeline(load_pipeline_from(d, tmp_path))
    seen = {}
    monkeypatch.setattr(stages, "trainer", lambda name: lambda cfg: seen.update(name=name, cfg=cfg) or {})
    stage = pl.optimize_stage(1)
    stage.run(tmp_path / "stage", False)
    sources = seen["cfg"].reward.sources
    assert [(s.kind, s.path, s.weight) for s in sources] == [
        ("model", str(pl.layout.model(1, "rm")), 1.0),
        ("rule", "length", 0.1),
    ]
    assert sources[1].params == {"target": 5}
    assert seen["cfg"].reward.clip == 3.0 and seen["cfg"].reward.normalize is True
    # a user source that is not a valid reward source fails at load, naming the key
    d["optimize"]["reward"] = {"sources": [{"kind": "rule", "path": "length", "wieght": 2}]}
    with pytest.raises(ConfigError, match=r"optimize\.reward\.sources\[1\]\.wieght"):
        load_pipeline_from(d, tmp_path)


def test_reinforce_has_one_spelling_and_reinforce_pp_is_read_as_it(root: Path, tmp_path: Path) -> None:
    from rlhfkit.commands import COMMANDS
    from rlhfkit.config import ReinforceConfig
    from rlhfkit.pipeline import Pipeline

    # one name per online algorithm: command == algo.name == the pipeline's optimize.algorithm
    assert all(c.config().algo.name == name for name, c in COMMANDS.items() if c.online)
    rule = "reward.sources=[{kind: rule, path: length}]"
    assert load_config_with(ReinforceConfig, ["algo.name=reinforce++", rule]).algo.name == "reinforce"
    d = pipeline_dict(root, tmp_path / "run", rounds=1)
    d["optimize"]["algorithm"] = "reinforce++"
    cfg = load_pipeline_from(d, tmp_path)
    assert cfg.optimize["algorithm"] == "reinforce" and Pipeline(cfg).algo == "reinforce"
    # the command takes both spellings; the alias runs `rlhfkit reinforce` (stopped here by its missing reward source)
    r = subprocess.run(
        [sys.executable, "-m", "rlhfkit.cli", "reinforce++", "algo.name=reinforce++", "-o", str(tmp_path / "o")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 2 and r.stderr.startswith("rlhfkit reinforce: error: reward.sources is empty"), r.stderr


def load_config_with(cls, overrides: list[str]):
    from rlhfkit.config import load_config

    return load_config(cls, None, overrides)


def test_status_prints_the_win_rate_as_a_line(tmp_path: Path) -> None:
    from rlhfkit.pipeline.layout import RunLayout

    record = RunLayout(tmp_path).record(1, "eval")
    record.parent.mkdir(parents=True)
    win = {"wins": 20, "ties": 2, "losses": 10, "rate": 0.65625, "ci_low": 0.48, "ci_high": 0.8}
    metrics = {"gold": 0.31, "win_rate": win, "kl": 1.5, "length": 12.0}
    record.write_text(json.dumps({"stage": "eval", "round": 1, "status": "done", "seconds": 3.0, "metrics": metrics}))
    line = status_table(tmp_path).splitlines()[1]
    assert "win_rate=0.656 (95% CI 0.480-0.800, n=32)" in line and "{" not in line


def test_demo_help_says_what_the_demo_runs() -> None:
    from rlhfkit.pipeline.config import DEMO_PIPELINE

    demo = load_pipeline(DEMO_PIPELINE)
    r = subprocess.run([sys.executable, "-m", "rlhfkit.cli", "--help"], cwd=ROOT, capture_output=True, text=True)
    shown = " ".join(r.stdout.split())
    rounds = f"{demo.rounds} round{'s' if demo.rounds != 1 else ''} of"
    assert f"demo the closed loop on the builtin model: SFT, {rounds} sample/label/rm/RLOO/eval" in shown
    assert demo.optimize["algorithm"] == "rloo"


def test_eval_prints_reward_model_and_safety_without_an_output_file(root: Path, tmp_path: Path) -> None:
    import shutil

    prompts = tmp_path / "heldout.jsonl"
    write_jsonl(prompts, [{"prompt": f"Say: film {i}"} for i in range(4)])
    pairs = tmp_path / "pairs.jsonl"
    write_jsonl(pairs, [{"prompt": f"Say: film {i}", "chosen": "eee", "rejected": "abc"} for i in range(4)])
    rm = save_tiny(tmp_path / "rm", "reward")
    base = tmp_path / "base"
    shutil.copytree(root / "tiny", base)
    args = [
        sys.executable, "-m", "rlhfkit.cli", "eval", "--policy", str(root / "tiny"), "--baseline", str(base),
        "--prompts", str(prompts), "--gold", "tests.toy:letter_reward", "--max-new-tokens", "4",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [*args, "--rm", str(rm), "--heldout", str(pairs), "--safety"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"reward model {rm} on 4 held-out pairs of {pairs}: accuracy=" in r.stdout
    safety = next(x for x in r.stdout.splitlines() if x.startswith(f"safety of {root / 'tiny'}: "))
    assert "harmful prompts" in safety and "over-refusal" in safety and "jailbreak success" in safety
    assert not list(tmp_path.glob("*.json"))  # printed, not written
    # held-out pairs without a reward model to measure are refused, not ignored
    r = subprocess.run([*args, "--heldout", str(pairs)], cwd=ROOT, capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "--heldout measures a reward model: it needs --rm DIR" in r.stderr


def test_eval_command_with_an_ai_judge(root: Path, tmp_path: Path) -> None:
    """`rlhfkit eval --judge judge`: the judge reads both responses in both orders; identical policies tie."""
    import shutil

    prompts = tmp_path / "heldout.jsonl"
    write_jsonl(prompts, [{"prompt": f"Say: film {i}"} for i in range(4)])
    base = tmp_path / "base"
    shutil.copytree(root / "tiny", base)
    out = tmp_path / "eval.json"
    r = subprocess.run(
        [
            sys.executable, "-m", "rlhfkit.cli", "eval", "--policy", str(root / "tiny"), "--baseline", str(base),
            "--prompts", str(prompts), "--judge", "judge", "--judge-model", str(root / "tiny"),
            "--max-new-tokens", "5", "--tie-margin", "1e-4", "-o", str(out),
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    w = json.loads(out.read_text())["policies"][str(root / "tiny")]["win_rate"]
    assert w["judge"] == "judge" and w["wins"] + w["ties"] + w["losses"] == 4
    assert w["ties"] == 4  # identical samples: the order-debiased judge gives 1/2 (up to float32 rounding)
