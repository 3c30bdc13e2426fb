"""Dataset files -> records: .jsonl, .json, .csv and .parquet tables read into (source, record) pairs.

The bottom of the data path: swiftlite/dataset_formats.py turns a record into a Conversation,
swiftlite/dataset_registry reads named sets' copies with these readers, and swiftlite/data.py (`--dataset`)
uses both. A record is a dict of columns, or the RowError of a row that could not be read (bad JSON, bytes
that are not UTF-8), kept in place so that the caller decides whether to raise or skip it; a source is
`file:row` (the line number for .jsonl, the row number for .json, .csv and .parquet, 1-based).
A whole file that cannot be read (a .json or .csv that is not UTF-8 or not JSON) is a UserError naming
`file:line`. `sampled_indices` is the `#N` sampling rule, shared by files and named sets.
Only the stdlib is imported at module level (pyarrow when a .parquet file is read).
"""

from __future__ import annotations

import csv
import io
import json
import random
from dataclasses import dataclass
from pathlib import Path

from swiftlite.errors import UserError

# Columns of a .csv file that hold JSON (lists of turns, of pairs, of media) inside a cell.
CSV_JSON_COLUMNS = ("conversations", "messages", "history", "images", "audios", "videos")


class RowError(ValueError):
    """A problem with one row; the loader adds `file:row` and decides whether to raise or skip."""


@dataclass(frozen=True)
class ParquetRow:
    """One row of a parquet table, converted to a dict only when asked: sampling picks rows before that."""

    table: object  # pyarrow.Table
    index: int

    def load(self) -> dict:
        return self.table.slice(self.index, 1).to_pylist()[0]


def read_file(path: Path, name: str) -> list[tuple[str, object]]:
    """[(source, record)] of one table file, read by its suffix (a record: dict, RowError or ParquetRow)."""
    readers = {".jsonl": read_jsonl, ".json": read_json, ".csv": read_csv, ".parquet": read_parquet}
    return readers[path.suffix.lower()](path, name)


def materialise(record):
    """A record as a dict (or the RowError it is): a ParquetRow is converted here."""
    return record.load() if isinstance(record, ParquetRow) else record


def sampled_indices(count: int, sample: int | None, seed: int) -> list[int]:
    """The rows a `#N` suffix picks out of `count`: all of them without one; N drawn without replacement
    (seeded); beyond the size, whole copies and then a sample. Files and named sets sample alike."""
    if sample is None:
        return list(range(count))
    if count == 0:
        return []
    copies, remainder = divmod(sample, count)
    return list(range(count)) * copies + random.Random(seed).sample(range(count), remainder)


def read_jsonl(path: Path, name: str) -> list:
    records = []
    with open(path, "rb") as handle:  # decoded line by line: a row that is not UTF-8 is that row's error
        for line_number, raw in enumerate(handle, start=1):
            source = f"{name}:{line_number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                records.append((source, RowError(_not_utf8(error))))
                continue
            if not line.strip():
                continue
            try:
                records.append((source, json.loads(line)))
            except json.JSONDecodeError as error:
                records.append((source, RowError(f"invalid JSON ({error.msg} at column {error.colno})")))
    return records


def read_json(path: Path, name: str) -> list:
    text = _read_text(path, name)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        if text.lstrip().startswith("{") and "\n{" in text:
            return read_jsonl(path, name)  # JSON lines saved with a .json name: read it as such
        raise UserError(f"{name}:{error.lineno}: invalid JSON ({error.msg} at column {error.colno})") from None
    if isinstance(data, dict):
        lists = [value for value in data.values() if isinstance(value, list)]
        if len(lists) == 1 and not _looks_like_row(data):
            data = lists[0]  # {"data": [...]}: a list under a single key
        else:
            data = [data]
    if not isinstance(data, list):
        raise UserError(f"{name}: expected a JSON list of rows, got {type(data).__name__}")
    return [(f"{name}:{index}", record) for index, record in enumerate(data, start=1)]


def read_csv(path: Path, name: str) -> list:
    records = []
    with io.StringIO(_read_text(path, name), newline="") as handle:
        reader = csv.DictReader(handle)
        for index, record in enumerate(reader, start=1):
            source = f"{name}:{index}"
            try:
                records.append((source, {key: _csv_value(key, value) for key, value in record.items()
                                         if key is not None and value not in (None, "")}))
            except RowError as error:
                records.append((source, error))
    return records


def read_parquet(path: Path, name: str) -> list:
    import pyarrow.parquet as parquet

    table = parquet.read_table(path, memory_map=True)
    return [(f"{name}:{index + 1}", ParquetRow(table, index)) for index in range(table.num_rows)]


def _not_utf8(error: UnicodeDecodeError) -> str:
    return f"not UTF-8 text (byte 0x{error.object[error.start]:02x} at column {error.start + 1}); save the file as UTF-8"


def _read_text(path: Path, name: str) -> str:
    """A whole .json/.csv file as text; bytes that are not UTF-8 are an error naming the line and column."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line_start = data.rfind(b"\n", 0, error.start) + 1
        line = data.count(b"\n", 0, error.start) + 1
        error.start -= line_start
        error.object = data[line_start:]
        raise UserError(f"{name}:{line}: {_not_utf8(error)}") from None


def _looks_like_row(data: dict) -> bool:
    return any(key in data for key in ("conversations", "messages", "query", "instruction"))


def _csv_value(key: str, value: str):
    # Structured columns (conversations, messages, history, images) are written as JSON inside a cell.
    stripped = value.strip()
    if stripped[:1] in "[{" and key in CSV_JSON_COLUMNS:
        try:
            return json.loads(stripped)
        except json.JSONDecodeError as error:
            raise RowError(f"column {key!r}: invalid JSON ({error.msg})") from None
    return value
