"""Loading every format from every file type (jsonl, json, parquet, gz, datasets.Dataset), ranking expansion, splits."""

from __future__ import annotations

import gzip
import itertools
import json
import logging
from pathlib import Path

import pytest

from rlhfkit.data import (
    DataError,
    PreferenceExample,
    PromptExample,
    SFTExample,
    UnpairedExample,
    load_examples,
    read_rows,
    train_eval_split,
    write_jsonl,
)

HH_FILE = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf" / "harmless-base.jsonl.gz"

ROWS = {
    "sft": [
        {"prompt": "What is 2+2?", "response": "4"},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]},
    ],
    "preference": [
        {"prompt": "Say hi", "chosen": "Hi!", "rejected": "No.", "strength": 1.5, "rater": "ann", "confidence": 0.9},
        {"prompt": "Count", "chosen": "1 2 3", "rejected": "3 2 1", "tie": True},
    ],
    "prompt": [
        {"prompt": "Write a haiku."},
        {"messages": [{"role": "user", "content": "Tell a joke."}, {"role": "assistant", "content": "No."}]},
    ],
    "unpaired": [
        {"prompt": "p", "response": "good", "label": True},
        {"prompt": "p", "response": "bad", "label": False},
    ],
}
TYPES = {"sft": SFTExample, "preference": PreferenceExample, "prompt": PromptExample, "unpaired": UnpairedExample}


def _write(path: Path, rows: list[dict], fmt: str) -> Path:
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "json":
        path.write_text(json.dumps(rows, indent=2))
    elif fmt == "jsonl.gz":
        with gzip.open(path, "wt") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    elif fmt == "json.gz":
        with gzip.open(path, "wt") as f:
            json.dump(rows, f)
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pydict(_columns(rows)), path)
    return path


def _columns(rows: list[dict]) -> dict[str, list]:
    """Column-wise with the union of keys (from_pylist would take the schema from the first row only)."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return {k: [r.get(k) for r in rows] for k in keys}


@pytest.mark.parametrize(("kind", "fmt"), itertools.product(ROWS, ["jsonl", "json", "jsonl.gz", "json.gz", "parquet"]))
def test_every_kind_loads_from_every_file_type(tmp_path: Path, kind: str, fmt: str) -> None:
    reference = load_examples(ROWS[kind], kind)  # plain list of dicts: the rows as written
    path = _write(tmp_path / f"data.{fmt}", ROWS[kind], fmt)
    loaded = load_examples(path, kind)
    assert len(loaded) == len(ROWS[kind]) and all(isinstance(ex, TYPES[kind]) for ex in loaded)
    # Sources differ (file:line vs <dataset>:row); everything else must match.
    assert [_strip_source(e) for e in loaded] == [_strip_source(e) for e in reference]


def _strip_source(ex: object) -> object:
    import dataclasses

    return dataclasses.replace(ex, source="")  # type: ignore[type-var]


@pytest.mark.parametrize("kind", list(ROWS))
def test_datasets_dataset_is_accepted(kind: str) -> None:
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict(_columns(ROWS[kind]))
    loaded = load_examples(ds, kind)
    assert [_strip_source(e) for e in loaded] == [_strip_source(e) for e in load_examples(ROWS[kind], kind)]
    assert loaded[1].source == "<dataset>:row 2"


def test_dataset_errors_name_the_row() -> None:
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list([ROWS["preference"][0], {"prompt": "p", "chosen": "x", "rejected": "x"}])
    with pytest.raises(DataError, match=r'^<dataset>:row 2: fields "chosen" and "rejected" are identical$'):
        load_examples(ds, "preference")
    with pytest.raises(TypeError, match="DatasetDict"):
        load_examples(datasets.DatasetDict({"train": ds}), "preference")


def test_preference_values(tmp_path: Path) -> None:
    first, second = load_examples(_write(tmp_path / "p.jsonl", ROWS["preference"], "jsonl"), "preference")
    assert first == PreferenceExample(
        ({"role": "user", "content": "Say hi"},), "Hi!", "No.", False, 1.5, "ann", 0.9, source=f"{tmp_path}/p.jsonl:1"
    )
    assert second.tie is True and second.strength is None


def test_ranking_rows_expand_to_all_pairs_with_ties(tmp_path: Path) -> None:
    rows = [
        ROWS["preference"][0],
        {"prompt": "Rank", "responses": ["b", "a", "c", "d"], "ranks": [2, 1, 2, 3], "rater": "r1", "confidence": 0.7},
    ]
    examples = load_examples(_write(tmp_path / "rank.jsonl", rows, "jsonl"), "preference")
    assert len(examples) == 1 + 6  # C(4, 2) pairs from the ranking row
    pairs = {(e.chosen, e.rejected, e.tie) for e in examples[1:]}
    # a (rank 1) beats everyone; b and c tie (rank 2) and both beat d (rank 3).
    assert pairs == {
        ("a", "b", False),
        ("b", "c", True),
        ("b", "d", False),
        ("a", "c", False),
        ("a", "d", False),
        ("c", "d", False),
    }
    assert all(e.rater == "r1" and e.confidence == 0.7 for e in examples[1:])
    assert all(e.source.endswith("rank.jsonl:2") for e in examples[1:])


def test_json_list_errors_report_the_real_line(tmp_path: Path) -> None:
    path = tmp_path / "prefs.json"
    rows = [ROWS["preference"][0], {"prompt": "p", "chosen": "c"}]
    path.write_text(json.dumps(rows, indent=2))
    text_lines = path.read_text().splitlines()
    line = next(
        i for i, t in enumerate(text_lines, 1) if t.strip() == "{" and i > 1 and '"chosen": "c"' in text_lines[i + 1]
    )
    with pytest.raises(DataError) as info:
        load_examples(path, "preference")
    assert str(info.value) == f'{path}:{line}: field "rejected" is missing'


def test_json_list_syntax_error_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('[\n  {"prompt": "a"},\n  {"prompt": }\n]\n')
    with pytest.raises(DataError, match=r"bad.json:3: invalid JSON \(Expecting value"):
        list(read_rows(path))


def test_json_single_object_jsonl_as_json_and_empty(tmp_path: Path) -> None:
    single = tmp_path / "one.json"
    single.write_text(json.dumps({"prompt": "a"}, indent=2))
    assert list(read_rows(single)) == [(1, {"prompt": "a"})]
    lines = tmp_path / "lines.json"
    lines.write_text('{"prompt": "a"}\n{"prompt": "b"}\n')
    assert list(read_rows(lines)) == [(1, {"prompt": "a"}), (2, {"prompt": "b"})]
    empty = tmp_path / "empty.json"
    empty.write_text("\n")
    assert list(read_rows(empty)) == []


def test_read_rows_line_numbers_skip_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n\n   \n{"a": 2}\n')
    assert list(read_rows(path)) == [(1, {"a": 1}), (4, {"a": 2})]


def test_parquet_errors_name_the_row(tmp_path: Path) -> None:
    rows = [ROWS["unpaired"][0], {"prompt": "p", "response": "r", "label": None}]
    path = _write(tmp_path / "kto.parquet", rows, "parquet")
    with pytest.raises(DataError, match=r'kto.parquet:row 2: field "label" is missing$'):
        load_examples(path, "unpaired")


def test_missing_file_and_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_examples(tmp_path / "nope.jsonl", "sft")
    path = _write(tmp_path / "a.jsonl", ROWS["sft"], "jsonl")
    with pytest.raises(ValueError, match="kind must be one of"):
        load_examples(path, "dpo")
    (tmp_path / "a.csv").write_text("x")
    with pytest.raises(ValueError, match="unsupported file type"):
        load_examples(tmp_path / "a.csv", "sft")


def test_errors_skip_drops_bad_rows_and_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "mixed.jsonl"
    path.write_text(
        json.dumps(ROWS["preference"][0]) + "\n" + '{"prompt": "p"}\n' + json.dumps(ROWS["preference"][1]) + "\n"
    )
    with caplog.at_level(logging.WARNING):
        examples = load_examples(path, "preference", errors="skip")
    assert len(examples) == 2
    assert "skipped 1 malformed rows" in caplog.text and 'mixed.jsonl:2: field "chosen" is missing' in caplog.text


@pytest.mark.parametrize("name", ["out.jsonl", "out.jsonl.gz"])
def test_write_jsonl_round_trip(tmp_path: Path, name: str) -> None:
    for kind, rows in ROWS.items():
        examples = load_examples(rows, kind)
        path = tmp_path / kind / name
        assert write_jsonl(path, examples) == len(examples)
        again = load_examples(path, kind)
        assert [_strip_source(e) for e in again] == [_strip_source(e) for e in examples]


def test_write_jsonl_keeps_unicode(tmp_path: Path) -> None:
    path = tmp_path / "u.jsonl"
    write_jsonl(path, [{"prompt": "héllo 🙂"}])
    assert "héllo 🙂" in path.read_text(encoding="utf-8")


def test_train_eval_split_is_deterministic_and_keeps_prompts_together() -> None:
    examples = [
        PreferenceExample(({"role": "user", "content": f"q{i // 3}"},), f"c{i}", f"r{i}") for i in range(60)
    ]  # 20 prompts x 3 pairs (as from ranking rows)
    train, evals = train_eval_split(examples, 0.2, seed=1)
    assert (train, evals) == train_eval_split(examples, 0.2, seed=1)
    assert train_eval_split(examples, 0.2, seed=2) != (train, evals)
    assert len(train) + len(evals) == 60 and len(evals) == 12
    assert not {e.prompt[0]["content"] for e in train} & {e.prompt[0]["content"] for e in evals}
    assert train == [e for e in examples if e in train]  # original order kept
    assert train_eval_split(examples, 0.0) == (examples, [])
    with pytest.raises(ValueError, match="eval_fraction"):
        train_eval_split(examples, 1.0)


def test_train_eval_split_leaves_training_data() -> None:
    examples = [PromptExample(({"role": "user", "content": str(i)},)) for i in range(3)]
    train, evals = train_eval_split(examples, 0.9, seed=0)
    assert len(train) >= 1 and len(evals) >= 1


@pytest.mark.shared
@pytest.mark.skipif(not HH_FILE.exists(), reason=f"shared data not present: {HH_FILE}")
def test_real_hh_rlhf_rows(tmp_path: Path) -> None:
    rows = []
    for _, row in read_rows(HH_FILE):
        rows.append(row)
        if len(rows) == 50:
            break
    path = tmp_path / "hh.jsonl"
    write_jsonl(path, rows)
    examples = load_examples(path, "preference", errors="skip")
    assert len(examples) >= 45  # a few real rows are degenerate (identical or empty responses)
    for ex in examples:
        assert ex.prompt[0]["role"] == "user" and ex.prompt[-1]["role"] == "user"
        assert ex.chosen != ex.rejected and ex.chosen.strip() and "\n\nHuman:" not in ex.chosen
