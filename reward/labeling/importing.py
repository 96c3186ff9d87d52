"""Turn data-file rows into pairs to label, naming the file, line and field of any bad row."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reward.labeling.store import Pair
from rlhf.errors import DataError
from rlhf.io import Row, read_rows


def check_prompt(row: Row, field: str = "prompt") -> str | list[dict[str, str]]:
    """A prompt is a non-empty string or a non-empty list of {"role", "content"} string messages."""
    value = row.data.get(field)
    if isinstance(value, str):
        if not value.strip():
            raise DataError(row.where, "is empty", field=field)
        return value
    if isinstance(value, list) and value:
        for i, message in enumerate(value):
            if not (isinstance(message, dict) and isinstance(message.get("role"), str)
                    and isinstance(message.get("content"), str)):
                raise DataError(row.where, f"message {i} must be an object with string 'role' and 'content'", field=field)
        return [{"role": m["role"], "content": m["content"]} for m in value]
    if value is None:
        raise DataError(row.where, "is missing", field=field)
    raise DataError(row.where, "must be a string or a list of chat messages", field=field)


def _text(row: Row, field: str) -> str:
    value = row.data.get(field)
    if value is None:
        raise DataError(row.where, "is missing", field=field)
    if not isinstance(value, str):
        raise DataError(row.where, f"must be a string, got {type(value).__name__}", field=field)
    if not value.strip():
        raise DataError(row.where, "is empty", field=field)
    return value


def _optional_text(row: Row, field: str) -> str | None:
    value: Any = row.data.get(field)
    if value is None or value == "":
        return None
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        return str(value)
    raise DataError(row.where, f"must be a string, got {type(value).__name__}", field=field)


def pair_from_row(row: Row) -> Pair:
    return Pair(
        prompt=check_prompt(row),
        response_a=_text(row, "response_a"),
        response_b=_text(row, "response_b"),
        model_a=_optional_text(row, "model_a"),
        model_b=_optional_text(row, "model_b"),
        id=_optional_text(row, "id"),
    )


def read_pairs(path: str | Path) -> list[Pair]:
    """All pairs of a file; every row is checked before any is returned, and ids must be unique."""
    pairs, seen = [], {}
    for row in read_rows(path):
        pair = pair_from_row(row)
        if pair.id is not None:
            if pair.id in seen:
                raise DataError(row.where, f"duplicate id '{pair.id}' (first at {seen[pair.id]})", field="id")
            seen[pair.id] = row.where
        pairs.append(pair)
    return pairs
