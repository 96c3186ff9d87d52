"""Preference pairs: the supported formats read into one `PreferencePair`, and the text a reward model reads."""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhf import datafiles
from rlhf.chat import Prompt, as_messages, check_prompt, check_response
from rlhf.errors import ConfigError, DataError
from rlhf.datafiles import Row

# Formats (detected per file from its rows' fields, or named with `data_format`):
#   pairs         {"prompt", "chosen", "rejected"}: strings, or a message-list prompt with responses given as
#                 strings or as a list holding one assistant message
#   hosted        {"input": {"messages"}, "preferred_output": [assistant], "non_preferred_output": [assistant]}
#   hh            {"chosen", "rejected"} full "\n\nHuman: ...\n\nAssistant: ..." transcripts: the shared dialogue
#                 before the last assistant turn is the prompt (as messages), the two last turns are the responses
#   label_export  `pairs` plus the labeling app's `pair_id`, `votes_chosen`, `votes_rejected`, `n_votes`, `margin`
# A per-pair margin is read from the `margin_column` field in any format (required in every row once one row has it).
# Bad rows raise a DataError naming file, line and field, or, with `drop_bad_rows`, are returned as dropped errors.

FORMATS = ("pairs", "hosted", "hh", "label_export")
VOTE_FIELDS = ("votes_chosen", "votes_rejected", "n_votes")  # with `pair_id`: what marks the labeling app's export
HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):")
HH_ROLES = {"Human": "user", "Assistant": "assistant"}
DROP_HINT = "`drop_bad_rows: true` skips such rows and reports them: counted, and listed in summary.json"



@dataclass(frozen=True)
class PreferencePair:
    """One preference: `chosen` is preferred over `rejected` as the response to `prompt`."""

    prompt: Prompt  # a string (one user turn) or the chat so far as messages
    chosen: str
    rejected: str
    margin: float | None  # how much more `chosen` is preferred, when the data says
    where: str  # file:line of the source row
    tie: bool = False  # no preference (the labeling app's tie or both-bad pairs): no order to get right


def row_format(data: dict[str, Any]) -> str | None:
    """The format a single row looks like, from its fields (None: no preference fields at all)."""
    if {"input", "preferred_output", "non_preferred_output"} & data.keys():
        return "hosted"
    if "prompt" in data:
        return "label_export" if set(VOTE_FIELDS) & data.keys() else "pairs"
    if {"chosen", "rejected"} & data.keys():
        return "hh"
    return None


def detect_format(rows: list[Row]) -> str:
    """The format most rows look like; rows that differ then fail (or are dropped) naming their missing field."""
    counts = Counter(fmt for fmt in (row_format(row.data) for row in rows) if fmt)
    if not counts:
        found = ", ".join(sorted(rows[0].data)) or "none"
        raise DataError(rows[0].where, f"no preference fields ('prompt'/'chosen'/'rejected', 'input'/"
                        f"'preferred_output'/'non_preferred_output') (found: {found})", field="chosen")
    return counts.most_common(1)[0][0]


def required(row: Row, name: str) -> Any:
    if name not in row.data or row.data[name] is None:
        raise DataError(row.where, "missing", field=name)
    return row.data[name]


def _number(row: Row, name: str) -> float:
    """A finite number (CSV cells arrive as text)."""
    value = required(row, name)
    try:
        number = float(value) if isinstance(value, (int, float, str)) and not isinstance(value, bool) else None
    except ValueError:
        number = None
    if number is None:
        raise DataError(row.where, f"expected a number, got {value!r}", field=name)
    if not math.isfinite(number):
        raise DataError(row.where, f"expected a finite number, got {value!r}", field=name)
    return number


def _hh_turns(text: Any, where: str, field: str) -> list[dict[str, str]]:
    """'\\n\\nHuman: ...\\n\\nAssistant: ...' as messages."""
    if not isinstance(text, str):
        raise DataError(where, f"expected a Human/Assistant transcript string, got {type(text).__name__}", field=field)
    parts = HH_TURN.split(text)
    if parts[0].strip():
        raise DataError(where, "text before the first 'Human:' or 'Assistant:' turn", field=field)
    turns = [{"role": HH_ROLES[name], "content": content.strip()} for name, content in zip(parts[1::2], parts[2::2])]
    if not any(turn["role"] == "assistant" for turn in turns):
        raise DataError(where, "transcript has no assistant turn", field=field)
    if turns[-1]["role"] != "assistant":
        raise DataError(where, "transcript does not end with an assistant turn", field=field)
    return turns


def _parse_hh(row: Row) -> tuple[Prompt, str, str]:
    chosen = _hh_turns(required(row, "chosen"), row.where, "chosen")
    rejected = _hh_turns(required(row, "rejected"), row.where, "rejected")
    if chosen[:-1] != rejected[:-1] or len(chosen) < 2:
        raise DataError(row.where, "shares no prompt with 'chosen' (the dialogues before the last assistant turns "
                        "differ or are empty)", field="rejected")
    return (chosen[:-1], check_response(chosen[-1]["content"], row.where, "chosen"),
            check_response(rejected[-1]["content"], row.where, "rejected"))


def _parse_hosted(row: Row) -> tuple[Prompt, str, str]:
    source = required(row, "input")
    if not isinstance(source, dict) or "messages" not in source:
        raise DataError(row.where, "expected an object with 'messages'", field="input.messages")
    prompt = check_prompt(source["messages"], row.where, "input.messages")
    return (prompt, check_response(required(row, "preferred_output"), row.where, "preferred_output"),
            check_response(required(row, "non_preferred_output"), row.where, "non_preferred_output"))


def _parse_pairs(row: Row) -> tuple[Prompt, str, str]:
    return (check_prompt(required(row, "prompt"), row.where, "prompt"),
            check_response(required(row, "chosen"), row.where, "chosen"),
            check_response(required(row, "rejected"), row.where, "rejected"))


PARSERS = {"pairs": _parse_pairs, "label_export": _parse_pairs, "hosted": _parse_hosted, "hh": _parse_hh}


def parse_row(row: Row, fmt: str, margin_column: str | None) -> PreferencePair:
    """One row of format `fmt` as a PreferencePair (margin read from `margin_column` when given)."""
    prompt, chosen, rejected = PARSERS[fmt](row)
    if chosen.strip() == rejected.strip():
        raise DataError(row.where, "identical to 'chosen'", field="rejected")
    if fmt == "label_export":
        required(row, "pair_id")
        for name in VOTE_FIELDS:
            if _number(row, name) < 0:
                raise DataError(row.where, "must not be negative", field=name)
    margin = _number(row, margin_column) if margin_column else None
    tie = fmt == "label_export" and (_flag(row, "tie") or _flag(row, "both_bad"))
    return PreferencePair(prompt, chosen, rejected, margin, row.where, tie)


def _flag(row: Row, name: str) -> bool:
    """An optional true/false field (absent: false)."""
    value = row.data.get(name, False)
    if not isinstance(value, bool):
        raise DataError(row.where, f"must be true or false, got {value!r}", field=name)
    return value


def parse_rows(rows: list[Row], data_format: str = "auto", drop_bad_rows: bool = False,
               margin_column: str | None = "margin") -> tuple[list[PreferencePair], list[DataError]]:
    """(pairs, dropped rows' errors). Without `drop_bad_rows` the first bad row raises its DataError."""
    if not rows:
        return [], []
    fmt = detect_format(rows) if data_format == "auto" else data_format
    if fmt not in FORMATS:
        raise ConfigError(f"unknown data_format '{fmt}' (expected auto or one of {', '.join(FORMATS)})")
    uses_margin = bool(margin_column) and (fmt == "label_export" or any(margin_column in r.data for r in rows))
    pairs, dropped = [], []
    for row in rows:
        try:
            pairs.append(parse_row(row, fmt, margin_column if uses_margin else None))
        except DataError as error:
            if not drop_bad_rows:
                raise
            dropped.append(error)
    return pairs, dropped


def load_pair_splits(path: str | Path, data_format: str = "auto", drop_bad_rows: bool = False,
                     margin_column: str | None = "margin") -> tuple[dict[str, list[PreferencePair]], list[DataError]]:
    """Pairs by split (a file is one split, `train`; a `datasets` folder keeps its splits) and the dropped rows.

    Without `drop_bad_rows` the first bad row is an error that also says how to skip such rows (public data sets
    have a few: empty answers, pairs whose dialogues differ before the last turn)."""
    dropped: list[DataError] = []
    splits = datafiles.read_splits(path, dropped)
    out = {}
    for name, rows in splits.items():
        out[name], bad = parse_rows(rows, data_format, drop_bad_rows=True, margin_column=margin_column)
        dropped += bad
    if dropped and not drop_bad_rows:
        first = dropped[0]
        raise DataError(first.where, f"{first.detail} ({DROP_HINT})", field=first.field)
    if not any(out.values()):
        raise DataError(str(path), "no usable preference pairs")
    return out, dropped


def dropped_rows(dropped: list[DataError]) -> list[dict[str, str | None]]:
    """Every dropped row's file:line, field and reason, for the run summary."""
    return [{"where": e.where, "field": e.field, "reason": e.detail} for e in dropped]


def describe_drops(dropped: list[DataError], show: int = 5) -> str:
    """'dropped N bad rows: where: why; ...' (the first few), for the console and the run summary."""
    if not dropped:
        return "dropped 0 bad rows"
    shown = "; ".join(str(e) for e in dropped[:show])
    more = f"; and {len(dropped) - show} more" if len(dropped) > show else ""
    return f"dropped {len(dropped)} bad rows: {shown}{more}"


def render(tokenizer, prompt: Prompt, response: str) -> str:
    """The text a reward model reads: prompt and response through the chat template once, the response as the
    final assistant turn (a string prompt is one user turn). Without a template: prompt + response + EOS."""
    if tokenizer.chat_template is None:
        if not isinstance(prompt, str):
            raise DataError("chat template", "message-list prompts need a tokenizer with a chat template",
                            field="chat_template")
        return prompt + response + tokenizer.eos_token
    return tokenizer.apply_chat_template(as_messages(prompt) + [{"role": "assistant", "content": response}], tokenize=False)


def encode(tokenizer, prompt: Prompt, response: str) -> list[int]:
    """Token ids of `render(...)` (the template already holds any special tokens)."""
    return tokenizer(render(tokenizer, prompt, response), add_special_tokens=False)["input_ids"]
