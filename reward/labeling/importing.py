"""Turn data-file rows into pairs to label, naming the file, line and field of any bad row; prompts and responses
are checked with the reward stage's own rules, so whatever is labeled exports to a file that stage accepts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reward.labeling.records import MAX_ID_CHARS, LabelPair, has_lone_surrogate
from reward.pairs import required
from rlhf.chat import check_prompt, check_response
from rlhf.datafiles import Row, read_rows
from rlhf.errors import DataError


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


def _pair_id(row: Row) -> str | None:
    """The row's id, short enough to be sent back with a label and free of unpaired surrogates."""
    pair_id = _optional_text(row, "id")
    if pair_id is not None and len(pair_id) > MAX_ID_CHARS:
        raise DataError(row.where, f"is {len(pair_id)} characters long; at most {MAX_ID_CHARS}", field="id")
    if pair_id is not None and (has_lone_surrogate(pair_id) or not pair_id.strip()):
        raise DataError(row.where, "must be printable text", field="id")
    return pair_id


def pair_from_row(row: Row) -> LabelPair:
    prompt = prompt_from_row(row)
    response_a = check_response(required(row, "response_a"), row.where, "response_a")
    response_b = check_response(required(row, "response_b"), row.where, "response_b")
    if response_a.strip() == response_b.strip():
        raise DataError(row.where, "identical to 'response_a': nothing to compare", field="response_b")
    return LabelPair(
        prompt=prompt,
        response_a=response_a,
        response_b=response_b,
        model_a=_optional_text(row, "model_a"),
        model_b=_optional_text(row, "model_b"),
        id=_pair_id(row),
        where=row.where,
    )


def read_pairs(path: str | Path) -> list[LabelPair]:
    """All pairs of a file; every row is checked before any is returned; ids and contents must be unique."""
    path = Path(path)
    pairs, ids, contents = [], {}, {}
    for row in read_rows(path):  # a UTF-8 BOM is read past
        pair = pair_from_row(row)
        if pair.id is not None:
            if pair.id in ids:
                raise DataError(row.where, f"duplicate id '{pair.id}' (first at {ids[pair.id]})", field="id")
            ids[pair.id] = row.where
        content = pair.content_hash()
        if content in contents:
            raise DataError(row.where, f"the same prompt and responses (in either order) as {contents[content]}")
        contents[content] = row.where
        pairs.append(pair)
    if not pairs:
        raise DataError(str(path), "no pairs: the file is empty or blank")
    return pairs
