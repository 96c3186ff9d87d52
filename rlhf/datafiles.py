"""Read tabular records (JSONL, JSON, CSV, Parquet, a saved `datasets` folder), each with its location
(`data.jsonl:12`, `data.csv:3`, `data.parquet row 4`) so that errors can name the file and line of a bad row."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhf.errors import DataError

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


@dataclass
class Row:
    where: str  # "file:line" or "file row N"
    data: dict[str, Any]


def read_rows(path: str | Path, bad_lines: list[DataError] | None = None) -> list[Row]:
    """All records of a data file or a saved `datasets` folder (train split if it has splits)."""
    splits = read_splits(path, bad_lines)
    return splits.get("train") or next(iter(splits.values()), [])


def read_splits(path: str | Path, bad_lines: list[DataError] | None = None) -> dict[str, list[Row]]:
    """Records by split. A single file is one split, `train`; a DatasetDict folder keeps its splits.

    With a `bad_lines` list, malformed JSONL lines are appended to it (to be counted and reported) instead of raised.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(str(path), "file not found")
    if path.is_dir():
        return _read_datasets_folder(path)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return {"train": _read_jsonl(path, bad_lines)}
    if suffix == ".json":
        return {"train": _read_json(path)}
    if suffix == ".csv":
        return {"train": _read_csv(path)}
    if suffix == ".parquet":
        return {"train": _read_parquet(path)}
    raise DataError(str(path), f"unsupported file type '{suffix}' (expected one of {', '.join(SUFFIXES)} or a datasets folder)")


def _read_jsonl(path: Path, bad_lines: list[DataError] | None = None) -> list[Row]:
    rows = []
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()  # -sig: a leading BOM is no data
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(str(path), f"cannot read file: {e}") from e
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            rows.append(Row(where, _json_object(line, where)))
        except DataError as error:
            if bad_lines is None:
                raise
            bad_lines.append(error)
    return rows


def _json_object(line: str, where: str) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(where, f"malformed JSON ({e.msg} at column {e.colno})") from e
    if not isinstance(record, dict):
        raise DataError(where, f"expected a JSON object, got {type(record).__name__}")
    return record


def _read_json(path: Path) -> list[Row]:
    try:
        records = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}", f"malformed JSON ({e.msg} at column {e.colno})") from e
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(str(path), f"cannot read file: {e}") from e
    if isinstance(records, dict) and isinstance(records.get("data"), list):
        records = records["data"]
    if not isinstance(records, list):
        raise DataError(str(path), "expected a JSON array of objects (or {\"data\": [...]})")
    rows = []
    for index, record in enumerate(records):
        where = f"{path} row {index}"
        if not isinstance(record, dict):
            raise DataError(where, f"expected a JSON object, got {type(record).__name__}")
        rows.append(Row(where, record))
    return rows


def _decode_cell(value: str) -> Any:
    """CSV cells holding JSON lists/objects (e.g. a `messages` column) are decoded; others stay text."""
    stripped = value.strip()
    if stripped[:1] in ("[", "{"):
        try:
            return json.loads(stripped)
        except json.JSONDecodeError:
            return value
    return value


def _read_csv(path: Path) -> list[Row]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows = []
            for record in reader:
                where = f"{path}:{reader.line_num}"
                if None in record:
                    raise DataError(where, "more cells than header columns")
                rows.append(Row(where, {k: _decode_cell(v) if isinstance(v, str) else v for k, v in record.items()}))
            return rows
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(str(path), f"cannot read CSV: {e}") from e


def _read_parquet(path: Path) -> list[Row]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several unrelated types for a bad file
        raise DataError(str(path), f"cannot read Parquet: {e}") from e
    return [Row(f"{path} row {i}", record) for i, record in enumerate(table.to_pylist())]


def _read_datasets_folder(path: Path) -> dict[str, list[Row]]:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as e:  # datasets raises FileNotFoundError or its own errors for a non-dataset folder
        raise DataError(str(path), f"not a saved `datasets` folder: {e}") from e
    if isinstance(loaded, datasets.Dataset):
        loaded = {"train": loaded}
    return {name: [Row(f"{path}[{name}] row {i}", r) for i, r in enumerate(split)] for name, split in loaded.items()}


def write_jsonl(path: str | Path, records) -> None:
    """Write records as JSONL atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    tmp.replace(path)
