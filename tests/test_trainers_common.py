"""Data preparation shared by the trainers: sample data, malformed rows, max_rows, eval split."""

from __future__ import annotations

import json

import pytest

from rlhfkit.config import DataConfig
from rlhfkit.data import DataError, load_train_eval, resolve_data_path


def _write(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return str(path)


def test_sample_data_resolves_and_loads():
    train, evals, notes = load_train_eval(DataConfig(train="sample:prefs", eval_fraction=0.1), "preference", seed=0)
    assert len(train) + len(evals) == 200 and len(evals) >= 10
    assert any(ex.tie for ex in train)
    with pytest.raises(FileNotFoundError, match="sample:nope"):
        resolve_data_path("sample:nope")


def test_skip_invalid_drops_only_bad_rows(tmp_path, caplog):
    good = {"prompt": "p", "chosen": "a", "rejected": "b"}
    path = _write(tmp_path / "p.jsonl", [good, {"prompt": "p", "chosen": "", "rejected": "b"}, {**good, "chosen": "c"}])
    with pytest.raises(DataError, match=r'p.jsonl:2: field "chosen" is empty'):
        load_train_eval(DataConfig(train=path, eval_fraction=0.0), "preference", seed=0)
    train, _, _ = load_train_eval(DataConfig(train=path, eval_fraction=0.0, skip_invalid=True), "preference", seed=0)
    assert [ex.chosen for ex in train] == ["a", "c"]
    assert "skipped 1 malformed rows" in caplog.text


def test_max_rows_is_a_seeded_sample(tmp_path):
    rows = [{"prompt": f"p{i}", "response": f"r{i}"} for i in range(50)]
    path = _write(tmp_path / "s.jsonl", rows)
    a, _, notes = load_train_eval(DataConfig(train=path, eval_fraction=0.0, max_rows=10), "sft", seed=1)
    b, _, _ = load_train_eval(DataConfig(train=path, eval_fraction=0.0, max_rows=10), "sft", seed=1)
    c, _, _ = load_train_eval(DataConfig(train=path, eval_fraction=0.0, max_rows=10), "sft", seed=2)
    assert len(a) == 10 and a == b and a != c
    assert [ex.response for ex in a] != [f"r{i}" for i in range(10)]  # not simply the first rows of the file
    assert any("max_rows" in n for n in notes)
