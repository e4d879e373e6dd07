"""Loading and writing rows: JSONL, JSON (a list), parquet, gzip of either JSON form, and ``datasets.Dataset``.

Every row keeps its location (file and 1-based line, or row for tables) so a malformed row is reported where it is.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import random
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from rlhfkit.data.schemas import PARSERS, DataError, Example, location

log = logging.getLogger(__name__)

KINDS = tuple(PARSERS)
TEXT_SUFFIXES = (".jsonl", ".json", ".ndjson")
T = TypeVar("T")


def _format(path: Path) -> tuple[str, bool]:
    """(format, gzipped) from the suffixes: x.jsonl, x.json, x.parquet, x.jsonl.gz, x.json.gz (bare .gz = JSONL)."""
    suffixes = [s.lower() for s in path.suffixes]
    gz = bool(suffixes) and suffixes[-1] == ".gz"
    inner = suffixes[-2] if gz and len(suffixes) >= 2 else (suffixes[-1] if suffixes and not gz else ".jsonl")
    if inner in (".jsonl", ".ndjson"):
        return "jsonl", gz
    if inner == ".json":
        return "json", gz
    if inner == ".parquet" and not gz:
        return "parquet", False
    if gz:
        return "jsonl", True
    raise ValueError(f"{path}: unsupported file type {''.join(path.suffixes)!r} (use .jsonl, .json, .parquet or .gz)")


def _check_path(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data file not found: {path}")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory; pass a .jsonl, .json, .parquet or .gz file")
    return path


def read_rows(path: str | Path, skip: Callable[[DataError], None] | None = None) -> Iterator[tuple[int, Any]]:
    """Yield (index, row): 1-based line number for JSON text, 1-based row number for parquet. Blank lines skipped.

    A line of JSON Lines that is not JSON or not UTF-8 raises a one-line DataError naming the file and line, or, when
    ``skip`` is given, is passed to it and skipped. A file that cannot be read at all (a broken gzip or parquet file)
    raises a DataError naming the file.
    """
    path = _check_path(path)
    fmt, gz = _format(path)
    name = str(path)
    try:
        if fmt == "parquet":
            yield from _read_parquet(path)
            return
        opener = gzip.open if gz else open
        with opener(path, "rb") as f:
            if fmt == "jsonl":
                yield from _read_jsonl(f, name, skip)
            else:
                yield from _read_json(decode_text(f.read(), name), name, skip)
    except (OSError, EOFError, zlib.error) as e:  # gzip: not a gzip file, truncated stream
        raise DataError(name, f"cannot read the file ({e})") from None
    except Exception as e:  # pyarrow's errors (ArrowInvalid) are not importable without pyarrow
        if type(e).__module__.startswith("pyarrow"):
            raise DataError(name, f"cannot read the parquet file ({e})") from None
        raise


def _not_utf8(raw: bytes, start: int) -> str:
    return f"not UTF-8 text (byte 0x{raw[start]:02x} at column {start + 1}): save the file as UTF-8"


def decode_text(data: bytes, name: str) -> str:
    """A whole file as text (a BOM from spreadsheet exports tolerated); bad bytes name their line."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line_start = data.rfind(b"\n", 0, e.start) + 1
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(location(name, line), _not_utf8(data[line_start:], e.start - line_start)) from None


def _read_jsonl(
    lines: Iterable[bytes | str], name: str, skip: Callable[[DataError], None] | None = None
) -> Iterator[tuple[int, Any]]:
    for line_no, raw in enumerate(lines, start=1):
        try:
            line = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        except UnicodeDecodeError as e:
            error = DataError(location(name, line_no), _not_utf8(raw, e.start))  # type: ignore[arg-type]
            if skip is None:
                raise error from None
            skip(error)
            continue
        if line_no == 1:
            line = line.removeprefix("\ufeff")  # a BOM from spreadsheet exports
        if not line.strip():
            continue
        try:
            row = json.loads(line.rstrip("\r\n"))  # columns refer to this line
        except json.JSONDecodeError as e:
            error = DataError(location(name, line_no), f"invalid JSON ({e.msg} at column {e.colno})")
            if skip is None:
                raise error from None
            skip(error)
            continue
        yield line_no, row


def _read_json(text: str, name: str, skip: Callable[[DataError], None] | None = None) -> Iterator[tuple[int, Any]]:
    """A JSON array of objects, reporting each element's real line; falls back to JSONL if the file is JSON Lines.
    Inside an array a syntax error cannot be skipped (where the next element starts is unknown): it always raises."""
    decoder = json.JSONDecoder()
    pos = _skip_ws(text, 0)
    if pos >= len(text):
        return
    if text[pos] != "[":
        try:  # one (possibly pretty-printed) object
            obj, end = decoder.raw_decode(text, pos)
            if _skip_ws(text, end) == len(text):
                yield text.count("\n", 0, pos) + 1, obj
                return
        except json.JSONDecodeError:
            pass
        yield from _read_jsonl(io.StringIO(text), name, skip)  # JSON Lines saved as .json (datasets' to_json does this)
        return
    pos = _skip_ws(text, pos + 1)
    line = text.count("\n", 0, pos) + 1
    last = pos
    while pos < len(text) and text[pos] != "]":
        line += text.count("\n", last, pos)
        last = pos
        try:
            obj, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise DataError(location(name, e.lineno), f"invalid JSON ({e.msg} at column {e.colno})") from None
        yield line, obj
        pos = _skip_ws(text, pos)
        if pos < len(text) and text[pos] == ",":
            pos = _skip_ws(text, pos + 1)
        elif pos >= len(text) or text[pos] != "]":
            bad_line = text.count("\n", 0, pos) + 1
            raise DataError(location(name, bad_line), "invalid JSON (expected ',' or ']' between list elements)")
    if pos >= len(text):
        raise DataError(location(name, text.count("\n") + 1), "invalid JSON (unterminated list)")


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _read_parquet(path: Path) -> Iterator[tuple[int, Any]]:
    # pyarrow: parquet files only, and `rlhfkit --help` imports this module, so it stays lazy
    import pyarrow.parquet as pq

    n = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):  # stream: parquet files can be large
        for row in batch.to_pylist():
            n += 1
            yield n, row


def _dataset_rows(dataset: Any) -> Iterator[tuple[int, Any]]:
    if isinstance(dataset, Mapping):  # DatasetDict / IterableDatasetDict
        raise TypeError(f"got a DatasetDict with splits {list(dataset.keys())}; pass one split, e.g. ds['train']")
    yield from enumerate(dataset, start=1)


def _is_path(source: Any) -> bool:
    return isinstance(source, (str, Path))


def load_examples(
    source: str | Path | Any, kind: str, errors: str = "raise", notes: list[str] | None = None
) -> list[Example]:
    """Load and validate every row of ``source`` (a file path, a ``datasets.Dataset`` or an iterable of dicts).

    kind: "sft" | "preference" | "prompt" | "unpaired" | "steps"; "preference" also expands ranking rows to all pairs.
    errors: "raise" stops at the first malformed row (a one-line DataError); "skip" drops malformed rows, lines of
    broken JSON and lines that are not UTF-8 included, and logs how many (real exports are rarely perfectly clean);
    the count is also appended to ``notes`` when given. A source without a single row is an error naming it.
    """
    if kind not in PARSERS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if errors not in ("raise", "skip"):
        raise ValueError(f'errors must be "raise" or "skip", got {errors!r}')
    parse = PARSERS[kind]
    skipped: list[str] = []

    def skip(error: DataError) -> None:
        skipped.append(str(error))

    if _is_path(source):
        path = Path(source)
        name, unit = str(source), ("row" if _format(_check_path(path))[0] == "parquet" else "line")
        rows = read_rows(path, skip if errors == "skip" else None)
    else:
        name, unit, rows = "<dataset>", "row", _dataset_rows(source)
    out: list[Example] = []
    for n, row in rows:
        where = location(name, n, unit)
        try:
            parsed = parse(row, where, source=where)
        except DataError as e:
            if errors == "raise":
                raise
            skip(e)
            continue
        out.extend(parsed if isinstance(parsed, list) else [parsed])
    if skipped:
        message = f"{name}: skipped {len(skipped)} malformed rows, e.g. {'; '.join(skipped[:3])}"
        log.warning("%s", message)
        if notes is not None:
            notes.append(message)
    if not out:
        what = "file" if _is_path(source) else "dataset"
        if skipped:
            raise DataError(name, f"no valid rows: all {len(skipped)} are malformed, e.g. {skipped[0]}")
        raise DataError(name, f"the {what} is empty: it has no {kind} rows")
    return out


def write_jsonl(path: str | Path, rows: Iterable[Any]) -> int:
    """Write dicts or examples (``to_row()``) as JSON Lines (gzip if the name ends in .gz); returns the row count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if path.suffix.lower() == ".gz" else open
    n = 0
    with opener(path, "wt", encoding="utf-8") as f:
        for row in rows:
            obj = row.to_row() if hasattr(row, "to_row") else row
            f.write(json.dumps(obj, ensure_ascii=False) + "\n")
            n += 1
    return n


def _group_key(example: Any, index: int) -> str:
    """Examples that share a prompt go to the same split (ranking rows expand to many pairs with one prompt)."""
    # SFTExample.prompt = context before its final assistant turn; plain rows (dicts) group by their "prompt" field
    prompt = example.get("prompt") if isinstance(example, dict) else getattr(example, "prompt", None)
    if prompt is None:
        return f"#{index}"
    return json.dumps(prompt if isinstance(prompt, str) else list(prompt), sort_keys=True, ensure_ascii=False)


def train_eval_split(examples: Sequence[T], eval_fraction: float, seed: int = 0) -> tuple[list[T], list[T]]:
    """Deterministic split by prompt groups (no prompt appears in both), original order kept inside each split.

    The eval split holds about ``eval_fraction`` of the examples: whole groups are taken in a seeded random order
    until the target is reached. With eval_fraction > 0 and at least two groups, both splits are non-empty.
    """
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    if eval_fraction == 0.0 or not examples:
        return list(examples), []
    groups: dict[str, list[int]] = {}
    for i, ex in enumerate(examples):
        groups.setdefault(_group_key(ex, i), []).append(i)
    order = list(groups.values())
    random.Random(seed).shuffle(order)
    target = max(1, round(eval_fraction * len(examples)))
    eval_idx: set[int] = set()
    for g, members in enumerate(order):
        if len(eval_idx) >= target or g == len(order) - 1:  # always leave at least one group for training
            break
        eval_idx.update(members)
    train = [ex for i, ex in enumerate(examples) if i not in eval_idx]
    evals = [ex for i, ex in enumerate(examples) if i in eval_idx]
    return train, evals
