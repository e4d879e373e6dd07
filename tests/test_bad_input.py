"""Bad input never reaches a model: a corpus of malformed files through every command, each refused in one line that
names the file, the line and the field, before any model (or tokenizer) is loaded; settings that would be ignored are
refused; relative paths in a YAML file are relative to the file."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlhfkit.cli import main
from rlhfkit.config import (
    ConfigError,
    DPOConfig,
    KTOConfig,
    PPOConfig,
    RMConfig,
    SampleConfig,
    SFTConfig,
    load_config,
)
from rlhfkit.data import DataError, load_examples, read_rows

ROOT = Path(__file__).resolve().parents[1]

GOOD = {
    "sft": {"prompt": "Tell me about films.", "response": "Films are fun."},
    "preference": {"prompt": "Say something.", "chosen": "Lovely day.", "rejected": "Awful day."},
    "unpaired": {"prompt": "Say something.", "response": "Lovely day.", "label": True},
    "prompt": {"prompt": "Continue this review: the film"},
}
# (file name, the bad second line for each kind, what the one error line must say after "<file>:2: ")
_TEXT = {"sft": "response", "preference": "chosen", "unpaired": "response", "prompt": "prompt"}


def _bad_rows(kind: str) -> list[tuple[str, bytes, str]]:
    text = _TEXT[kind]
    good = GOOD[kind]
    dump = lambda row: json.dumps(row).encode()  # noqa: E731
    return [
        ("broken_json", dump(good)[:-3], "invalid JSON"),
        ("missing_field", dump({k: v for k, v in good.items() if k != text}), f'field "{text}" is missing'),
        ("wrong_type", dump({**good, text: 3}), f'field "{text}" must be a string'),
        ("empty_string", dump({**good, text: "  "}), f'field "{text}" is empty'),
        ("not_an_object", b"[1, 2]", "expected a JSON object, got list"),
        ("not_utf8", b'{"prompt": "caf\xe9"}', "not UTF-8 text (byte 0xe9 at column 16)"),
    ]


def corpus(d: Path, kind: str) -> list[tuple[Path, str]]:
    """Malformed files of one kind -> (path, the error line's expected text after 'rlhfkit CMD: error: ')."""
    d.mkdir(parents=True, exist_ok=True)
    out = []
    good = json.dumps(GOOD[kind]).encode()
    for name, line, expected in _bad_rows(kind):
        path = d / f"{name}.jsonl"
        path.write_bytes(good + b"\n" + line + b"\n" + good + b"\n")
        out.append((path, f"{path}:2: {expected}"))
    extra = {
        "preference": [
            ("bad_tie", {**GOOD[kind], "tie": "yes"}, 'field "tie" must be true or false, got string "yes"')
        ],
        "unpaired": [("bad_label", {**GOOD[kind], "label": "yes"}, 'field "label" must be true or false')],
        "sft": [
            (
                "no_assistant",
                {"messages": [{"role": "user", "content": "hi"}]},
                'field "messages" has no assistant turn',
            )
        ],
        "prompt": [("null_prompt", {"prompt": None}, 'field "prompt" is missing')],
    }[kind]
    for name, row, expected in extra:
        path = d / f"{name}.jsonl"
        path.write_text(json.dumps(GOOD[kind]) + "\n" + json.dumps(row) + "\n")
        out.append((path, f"{path}:2: {expected}"))
    empty, blank = d / "empty.jsonl", d / "blank.jsonl"
    empty.write_bytes(b"")
    blank.write_text("\n  \n")
    out += [(p, f"{p}: the file is empty: it has no {kind} rows") for p in (empty, blank)]
    array = d / "array.json"
    array.write_text("[\n" + json.dumps(GOOD[kind]) + ",\n" + json.dumps(GOOD[kind])[:-2] + "\n]\n")
    out.append((array, f"{array}:3: invalid JSON"))
    latin = d / "latin1.json"
    latin.write_bytes(b'[\n{"prompt": "na\xefve"}\n]\n')
    out.append((latin, f"{latin}:2: not UTF-8 text (byte 0xef at column 15)"))
    not_gzip = d / "not_gzip.jsonl.gz"
    not_gzip.write_bytes(good + b"\n")
    out.append((not_gzip, f"{not_gzip}: cannot read the file (Not a gzipped file"))
    return out


COMMANDS = {
    "sft": "sft",
    "rm": "preference",
    "dpo": "preference",
    "kto": "unpaired",
    "ppo": "prompt",
    "grpo": "prompt",
    "rloo": "prompt",
    "reinforce": "prompt",
    "online-dpo": "prompt",
    "sample": "prompt",
}


def _run(capsys, *argv: str) -> tuple[int, list[str]]:
    rc = main(list(argv))
    err = capsys.readouterr().err
    return rc, [line for line in err.splitlines() if line.strip()]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_malformed_file_is_one_line_before_any_model(command, tmp_path, capsys, monkeypatch):
    # the model path does not exist: an error about it would mean the model was reached before the data was read
    monkeypatch.chdir(tmp_path)
    model = tmp_path / "no-model-here"
    online = COMMANDS[command] == "prompt" and command != "sample"
    extra = ["reward.sources=[{kind: rule, path: length}]"] if online else []  # online RL needs a reward source
    for path, expected in corpus(tmp_path / "corpus", COMMANDS[command]):
        rc, lines = _run(
            capsys, command, f"model.name_or_path={model}", f"data.train={path}", "-o", str(tmp_path / "o"), *extra
        )
        assert rc == 2, (path, lines)
        # exactly one line (a gzip error ends with the library's own detail, hence startswith)
        assert len(lines) == 1 and lines[0].startswith(f"rlhfkit {command}: error: {expected}"), (path, lines)
        assert not (tmp_path / "o").exists()  # nothing written either


@pytest.mark.parametrize("command", ["sft", "dpo", "ppo", "sample"])
def test_held_out_file_is_checked_before_any_model(command, tmp_path, capsys):
    kind = COMMANDS[command]
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps(GOOD[kind]) + "\n" for _ in range(16)))
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"\xff\xfe\n")
    extra = ["reward.sources=[{kind: rule, path: length}]"] if command == "ppo" else []
    key = "data.eval" if command != "sample" else "data.train"
    train = [f"data.train={good}"] if command != "sample" else []
    rc, lines = _run(capsys, command, f"model.name_or_path={tmp_path / 'nowhere'}", *train, f"{key}={bad}", *extra)
    assert rc == 2 and lines == [
        f"rlhfkit {command}: error: {bad}:1: not UTF-8 text (byte 0xff at column 1): save the file as UTF-8"
    ]


def test_too_few_rows_for_a_batch_is_refused_before_any_model(tmp_path, capsys):
    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps({**GOOD["preference"], "chosen": f"c{i}"}) + "\n" for i in range(3)))
    rc, lines = _run(
        capsys, "rm", f"model.name_or_path={tmp_path / 'nowhere'}", f"data.train={data}", "data.eval_fraction=0"
    )
    assert rc == 2
    assert lines == [
        "rlhfkit rm: error: only 3 training pairs for a global batch of 8: lower train.batch_size or add data"
    ]
    ties = tmp_path / "ties.jsonl"
    ties.write_text(
        "".join(json.dumps({**GOOD["preference"], "chosen": f"c{i}", "tie": True}) + "\n" for i in range(9))
    )
    rc, lines = _run(
        capsys, "dpo", f"model.name_or_path={tmp_path / 'nowhere'}", f"data.train={ties}", "data.eval_fraction=0"
    )
    assert rc == 2 and len(lines) == 1 and "every training pair is a tie" in lines[0]


def test_eval_checks_prompts_and_held_out_pairs_before_any_model(tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps(GOOD["prompt"]) + "\n" + '{"prompt": 7}\n')
    base = ["eval", "--policy", str(tmp_path / "p"), "--baseline", str(tmp_path / "b"), "--gold", "sentiment"]
    rc, lines = _run(capsys, *base, "--prompts", str(prompts))
    assert rc == 2 and lines == [
        f'rlhfkit eval: error: {prompts}:2: field "prompt" must be a string or a list of messages, got number 7'
    ]
    prompts.write_text(json.dumps(GOOD["prompt"]) + "\n")
    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text(json.dumps({"prompt": "p", "chosen": "a"}) + "\n")
    rc, lines = _run(capsys, *base, "--prompts", str(prompts), "--rm", str(tmp_path / "rm"), "--heldout", str(heldout))
    assert rc == 2 and lines == [f'rlhfkit eval: error: {heldout}:1: field "rejected" is missing']


# ---------------------------------------------------------------------------------------------------------------------
# the data layer: file-level errors name the file, skip_invalid skips broken lines too


def test_non_utf8_names_file_and_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"prompt": "a"}\n\n{"prompt": "\xff"}\n')
    with pytest.raises(DataError, match=r"x.jsonl:3: not UTF-8 text \(byte 0xff at column 13\)"):
        list(read_rows(path))
    gz = tmp_path / "x.jsonl.gz"
    gz.write_bytes(gzip.compress(b'{"prompt": "a"}\n\xff\n'))
    with pytest.raises(DataError, match=r"x.jsonl.gz:2: not UTF-8"):
        list(read_rows(gz))


def test_skip_invalid_skips_broken_json_and_bad_bytes_with_a_count(tmp_path, caplog):
    path = tmp_path / "mixed.jsonl"
    good = json.dumps(GOOD["preference"]).encode()
    path.write_bytes(b"\n".join([good, b'{"prompt": ', good, b"\xff\xfe", b'{"prompt": "p"}', good]) + b"\n")
    notes: list[str] = []
    examples = load_examples(path, "preference", errors="skip", notes=notes)
    assert len(examples) == 3
    assert notes and notes[0].startswith(f"{path}: skipped 3 malformed rows, e.g. {path}:2: invalid JSON")
    assert "skipped 3 malformed rows" in caplog.text
    with pytest.raises(DataError, match=r"mixed.jsonl:2: invalid JSON"):
        load_examples(path, "preference")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": \n{"chosen": 1}\n')
    with pytest.raises(DataError, match=r"broken.jsonl: no valid rows: all 2 are malformed, e.g. .*broken.jsonl:1"):
        load_examples(broken, "preference", errors="skip")


def test_skip_invalid_reaches_the_trainer_notes(tmp_path):
    from rlhfkit.data import load_train_eval

    path = tmp_path / "p.jsonl"
    good = json.dumps(GOOD["preference"])
    path.write_text(good + "\n{oops\n" + json.dumps({**GOOD["preference"], "chosen": "Nice."}) + "\n")
    cfg = load_config(RMConfig, None, [f"data.train={path}", "data.skip_invalid=true", "data.eval_fraction=0"])
    train, _, notes = load_train_eval(cfg.data, "preference", seed=0)
    assert len(train) == 2 and any("skipped 1 malformed rows" in n for n in notes)


# ---------------------------------------------------------------------------------------------------------------------
# settings never ignored without a word


@pytest.mark.parametrize("cls", [RMConfig, DPOConfig, KTOConfig, PPOConfig, SampleConfig])
def test_packing_is_refused_where_nothing_packs(cls):
    over = (
        ["data.packing=yes", "reward.sources=[{kind: rule, path: length}]"]
        if cls in (PPOConfig,)
        else ["data.packing=yes"]
    )
    with pytest.raises(ConfigError, match=r"data.packing=true is not used by this command \(only `rlhfkit sft` packs"):
        load_config(cls, None, over)
    assert load_config(SFTConfig, None, ["data.packing=yes"]).data.packing


def test_pipeline_refuses_packing_in_a_stage_at_load():
    from rlhfkit.pipeline.config import load_pipeline

    with pytest.raises(ConfigError, match="section 'rm'.*data.packing=true is not used"):
        load_pipeline(None, ["rm.data.packing=true"])


def test_missing_metric_sink_is_refused_at_load_with_the_install_line(monkeypatch):
    monkeypatch.setattr("rlhfkit.config._sink_installed", lambda sink: sink != "tensorboard")
    with pytest.raises(
        ConfigError,
        match=r"train.report_to=tensorboard needs the tensorboard package, which is not installed: "
        r"pip install tensorboard \(or pip install 'rlhfkit\[tracking\]' for every sink\)",
    ):
        load_config(DPOConfig, None, ["train.report_to=[tensorboard]"])
    assert load_config(DPOConfig, None, ["train.report_to=[mlflow]"]).train.report_to == ("mlflow",)
    from rlhfkit.pipeline.config import load_pipeline

    with pytest.raises(ConfigError, match="section 'rm'.*pip install tensorboard"):
        load_pipeline(None, ["rm.train.report_to=[tensorboard]"])


def test_missing_metric_sink_stops_the_cli_before_any_model(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("rlhfkit.config._sink_installed", lambda sink: False)
    rc, lines = _run(
        capsys, "dpo", "data.train=sample:prefs", "train.report_to=[tensorboard]", "-o", str(tmp_path / "o")
    )
    assert rc == 2 and len(lines) == 1 and "pip install tensorboard" in lines[0]
    assert not (tmp_path / "o").exists()


def test_prompt_length_follows_max_length():
    assert load_config(SFTConfig, None, ["data.max_length=128"]).data.prompt_length == 64
    assert SFTConfig().data.prompt_length == 256  # the default 512 // 2, as before
    assert load_config(SFTConfig, None, ["data.max_length=128", "data.max_prompt_length=100"]).data.prompt_length == 100
    with pytest.raises(
        ConfigError, match=r"data.max_prompt_length=128 must be positive and smaller than max_length=128"
    ):
        load_config(SFTConfig, None, ["data.max_length=128", "data.max_prompt_length=128"])
    assert PPOConfig().data.prompt_length == SampleConfig().data.prompt_length == 256  # unchanged defaults


def test_sft_yaml_with_a_short_max_length_loads(tmp_path):
    f = tmp_path / "sft.yaml"
    f.write_text("data: {train: sample:sft, max_length: 128}\n")
    assert load_config(SFTConfig, f).data.prompt_length == 64


# ---------------------------------------------------------------------------------------------------------------------
# relative paths in a YAML file are relative to the file


def test_yaml_paths_are_relative_to_the_file(tmp_path, monkeypatch):
    conf = tmp_path / "configs"
    (conf / "data").mkdir(parents=True)
    (conf / "rm").mkdir()
    (conf / "rm" / "config.json").write_text("{}")
    (conf / "rewards.py").write_text("def f(p, r):\n    return [0.0] * len(r)\n")
    f = conf / "ppo.yaml"
    f.write_text(
        "model: {name_or_path: smollm2-135m-instruct}\n"
        "reference: rm\n"
        "data: {train: data/prompts.jsonl, eval: sample:prompts}\n"
        "train: {output_dir: outputs/ppo}\n"
        "reward:\n  sources:\n"
        "    - {kind: model, path: rm}\n"
        "    - {kind: callable, path: 'rewards.py:f'}\n"
        "    - {kind: callable, path: 'my_pkg.rewards:f'}\n"
        "    - {kind: rule, path: length}\n"
        "    - {kind: ensemble, path: 'rm,../elsewhere/rm2'}\n"
    )
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(PPOConfig, f, ["gold.sources=[{kind: model, path: cli/rm}]"])
    base = conf.resolve()
    assert cfg.data.train == str(base / "data" / "prompts.jsonl")
    assert cfg.data.eval == "sample:prompts"  # builtin data names are not paths
    assert cfg.model.name_or_path == "smollm2-135m-instruct"  # a builtin model name is not a path
    assert cfg.reference == str(base / "rm")
    assert cfg.train.output_dir == "outputs/ppo"  # outputs: relative to where the command runs
    paths = [s.path for s in cfg.reward.sources]
    assert paths == [
        str(base / "rm"),
        f"{base / 'rewards.py'}:f",
        "my_pkg.rewards:f",
        "length",
        f"{base / 'rm'},{base / '../elsewhere/rm2'}",
    ]
    assert cfg.gold.sources[0].path == "cli/rm"  # command-line overrides: relative to the current directory
    assert load_config(PPOConfig, f, ["data.train=here.jsonl"]).data.train == "here.jsonl"
    assert load_config(PPOConfig, f, relative_to_yaml=False).data.train == "data/prompts.jsonl"


def test_pipeline_yaml_paths_are_relative_to_the_file(tmp_path, monkeypatch):
    from rlhfkit.pipeline.config import load_pipeline

    conf = tmp_path / "exp"
    conf.mkdir()
    f = conf / "pipeline.yaml"
    f.write_text(
        "output: runs/p\nmodel: smollm2-135m-instruct\nprompts: {train: prompts.jsonl}\n"
        "sft: {data: {train: sft.jsonl}}\nlabel: {source: file, file: 'labels-{round}.jsonl'}\n"
        "rm: {data: {max_length: 64}}\noptimize: {algorithm: dpo, reference: base}\n"
    )
    monkeypatch.chdir(tmp_path)
    cfg = load_pipeline(f)
    base = conf.resolve()
    assert cfg.prompts.train == str(base / "prompts.jsonl") and cfg.sft["data"]["train"] == str(base / "sft.jsonl")
    assert cfg.label.file.format(round=1) == str(base / "labels-1.jsonl")
    assert cfg.optimize["reference"] == "base" and cfg.output == "runs/p"  # a bare name that is no folder; an output


# ---------------------------------------------------------------------------------------------------------------------
# the pipeline: too few labels for the reward model's batch names the key; a label file is validated


def _pipeline(tmp_path, *overrides):
    from rlhfkit.pipeline.config import load_pipeline
    from rlhfkit.pipeline.stages import Pipeline

    cfg = load_pipeline(None, [f"output={tmp_path / 'run'}", f"model={tmp_path / 'no-model'}", *overrides])
    return Pipeline(cfg)


def test_pipeline_names_the_rm_batch_key_when_labels_are_too_few(tmp_path):
    pl = _pipeline(tmp_path)
    prefs = [{**GOOD["preference"], "chosen": f"c{i}"} for i in range(5)]
    from rlhfkit.data import write_jsonl

    write_jsonl(pl.layout.prefs(1), prefs)
    write_jsonl(pl.layout.heldout(1), [])
    stage = pl.rm_stage(1)
    d = pl.layout.stage_dir(1, "rm")
    with pytest.raises(ConfigError) as e:
        stage.run(d, False)
    assert str(e.value) == (
        "round 1 rm: only 5 training pairs for a global batch of 8: lower rm.train.batch_size, or label more pairs "
        "(prompts.per_round, sample.num_samples, label.pairs=all)"
    )
    write_jsonl(pl.layout.prefs(1), [])
    with pytest.raises(ConfigError, match=r"round 1 rm: the label source gave no training pairs: label more pairs"):
        stage.run(d, False)


def test_pipeline_label_file_is_validated(tmp_path):
    labels = tmp_path / "labels.jsonl"
    labels.write_text(json.dumps(GOOD["preference"]) + "\n" + json.dumps({"prompt": "p", "chosen": "a"}) + "\n")
    pl = _pipeline(tmp_path, "label.source=file", f"label.file={labels}")
    from rlhfkit.data import write_jsonl

    write_jsonl(pl.layout.samples(1), [{"prompt": "p", "responses": ["a", "b"]}])
    with pytest.raises(DataError, match=f'{labels}:2: field "rejected" is missing'):
        pl.label_stage(1).run(pl.layout.stage_dir(1, "label"), False)


# ---------------------------------------------------------------------------------------------------------------------
# end to end in a subprocess: one line, and a reward model's new head is one line of ours


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "rlhfkit.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def test_cli_rm_bad_file_then_a_new_head_in_one_line(tmp_path):
    from rlhfkit.models.tiny import save_tiny

    model = tmp_path / "tiny"
    save_tiny(model, kind="causal")
    bad = tmp_path / "prefs.jsonl"
    bad.write_bytes(b"\xff" + json.dumps(GOOD["preference"]).encode() + b"\n")
    r = _cli("rm", f"model.name_or_path={model}", f"data.train={bad}", "-o", str(tmp_path / "bad"), cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"rlhfkit rm: error: {bad}:1: not UTF-8 text (byte 0xff at column 1): save the file as UTF-8"
    ]
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps({**GOOD["preference"], "chosen": f"Lovely day {i}."}) + "\n" for i in range(8)))
    r = _cli(
        "rm",
        f"model.name_or_path={model}",
        f"data.train={good}",
        "data.eval_fraction=0",
        "data.max_length=64",
        "train.batch_size=4",
        "train.max_steps=1",
        "train.progress=false",
        "-o",
        str(tmp_path / "rm"),
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert "MISSING" not in r.stderr and "LOAD REPORT" not in r.stderr and "newly initialized" not in r.stderr
    assert f"a new scalar head (score) on the causal LM {model}; its lm_head is not used" in r.stderr


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    from rlhfkit.models.tiny import save_tiny

    d = tmp_path_factory.mktemp("tiny") / "causal"
    save_tiny(d, kind="causal")
    return d


@pytest.mark.parametrize(
    "command, setting, named",
    [
        ("dpo", "reference={missing}", "reference: model '{missing}' not found"),
        ("kto", "reference={missing}", "reference: model '{missing}' not found"),
        (
            "ppo",
            "reward.sources=[{{kind: model, path: {missing}}}]",
            "reward.sources[0].path: model '{missing}' not found",
        ),
        (
            "grpo",
            "reward.sources=[{{kind: ensemble, path: '{tiny},{missing}'}}]",
            "reward.sources[0].path: model '{missing}' not found",
        ),
        ("rloo", "reward.sources=[{{kind: callable, path: '{missing}.py:f'}}]", "reward.sources[0].path="),
        (
            "ppo",
            "gold.sources=[{{kind: model, path: {missing}}}]",
            "gold.sources[0].path: model '{missing}' not found",
        ),
        ("sample", "reward.sources=[{{kind: model, path: {missing}}}]", "reward.sources[0].path: model '{missing}'"),
    ],
)
def test_missing_models_are_named_before_any_model_loads(command, setting, named, tiny_dir, tmp_path, capsys):
    kind = COMMANDS[command]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({**GOOD[kind], _TEXT[kind]: f"Nice {i}."}) + "\n" for i in range(16)))
    missing = tmp_path / "gone"
    extra = ["reward.sources=[{kind: rule, path: length}]"] if kind == "prompt" and "reward." not in setting else []
    rc, lines = _run(
        capsys,
        command,
        f"model.name_or_path={tiny_dir}",
        f"data.train={data}",
        setting.format(missing=missing, tiny=tiny_dir),
        *extra,
        "-o",
        str(tmp_path / "o"),
    )
    assert rc == 2 and len(lines) == 1, lines  # one line: no transformers load report, no progress bar
    assert lines[0].startswith(f"rlhfkit {command}: error: {named.format(missing=missing)}"), lines
    assert not (tmp_path / "o").exists()


def test_pipeline_stage_checks_its_data_before_its_first_model(tmp_path, capsys):
    sft = tmp_path / "sft.jsonl"
    sft.write_text(json.dumps(GOOD["sft"]) + "\n" + json.dumps({"prompt": "p", "response": 5}) + "\n")
    run = tmp_path / "run"
    rc, lines = _run(
        capsys,
        "run",
        f"output={run}",
        f"model={tmp_path / 'no-model'}",
        f"sft.data.train={sft}",
        "prompts.eval_count=4",
    )
    assert rc == 2 and lines == [f'rlhfkit run: error: {sft}:2: field "response" must be a string, got number 5']
    assert json.loads((run / "round-0" / "prompts" / "stage.json").read_text())["status"] == "done"


def test_a_yaml_file_that_is_not_utf8_is_named(tmp_path):
    f = tmp_path / "dpo.yaml"
    f.write_bytes(b"loss: {beta: 0.2}\n# caf\xe9\n")
    with pytest.raises(ConfigError, match=r"dpo.yaml:2: not UTF-8 text \(byte 0xe9\)"):
        load_config(DPOConfig, f)
