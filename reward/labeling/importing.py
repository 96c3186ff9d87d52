"""Turn data-file rows into pairs to label, naming the file, line and field of any bad row.

Prompts and responses are checked with the reward stage's own rules, so whatever is labeled here
exports to a file that stage accepts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reward.labeling.store import Pair
from reward.pairs import required
from rlhf.chat import check_prompt, check_response
from rlhf.errors import DataError
from rlhf.datafiles import Row, read_rows


def prompt_from_row(row: Row) -> str | list[dict[str, str]]:
    """A non-empty string, or chat messages that do not end with an assistant turn."""
    return check_prompt(required(row, "prompt"), row.where, "prompt")


def _optional_text(row: Row, field: str) -> str | None:
    value: Any = row.data.get(field)
    if value is None or value == "":
        return None
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        return str(value)
    raise DataError(row.where, f"must be a string, got {type(value).__name__}", field=field)


def pair_from_row(row: Row) -> Pair:
    prompt = prompt_from_row(row)
    response_a = check_response(required(row, "response_a"), row.where, "response_a")
    response_b = check_response(required(row, "response_b"), row.where, "response_b")
    if response_a.strip() == response_b.strip():
        raise DataError(row.where, "identical to 'response_a': nothing to compare", field="response_b")
    return Pair(
        prompt=prompt,
        response_a=response_a,
        response_b=response_b,
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
