"""Demonstrations for SFT: rows of any supported format validated, then tokenized with loss masks."""

from __future__ import annotations

import re

from rlhf.errors import DataError
from rlhf.chat import as_messages, check_messages, format_prompt
from rlhf.datafiles import Row
from rlhf.hf_stage import LengthReport

# Formats (one per file, detected from the first row):
#   {"messages": [{"role", "content"}, ...]}   loss on assistant turns only
#   {"prompt", "completion"}                     loss on the completion only (strings or message lists)
#   {"text"}                                     loss on every token
# Tokenizing here (not inside SFTTrainer) lets us count and report rows over `max_length`, drop them when asked, and
# hand TRL finished `input_ids`/`labels` for every split, the test split included.

IGNORE = -100
GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")  # `{% generation %}`: the template marks assistant text


def detect_format(row: Row) -> str:
    keys = set(row.data)
    if "messages" in keys:
        return "messages"
    if "prompt" in keys or "completion" in keys:
        return "prompt_completion"
    if "text" in keys:
        return "text"
    raise DataError(row.where, f"no 'messages', 'prompt'/'completion' or 'text' field (found: {', '.join(sorted(keys)) or 'none'})", field="messages")


def _text(row: Row, name: str) -> str:
    if name not in row.data:
        raise DataError(row.where, "missing", field=name)
    value = row.data[name]
    if not isinstance(value, str) or not value.strip():
        raise DataError(row.where, "must be a non-empty string", field=name)
    return value


def validate(rows: list[Row]) -> tuple[str, list[dict]]:
    """(format, canonical examples) for all rows; the first bad row raises a DataError."""
    if not rows:
        raise DataError("dataset", "no rows")
    fmt = detect_format(rows[0])
    examples = []
    for row in rows:
        if detect_format(row) != fmt:
            raise DataError(row.where, f"row format '{detect_format(row)}' differs from the file's '{fmt}'")
        if fmt == "messages":
            examples.append({"messages": check_messages(row.data["messages"], row.where)})
        elif fmt == "text":
            examples.append({"text": _text(row, "text")})
        else:
            prompt = row.data.get("prompt")
            if isinstance(prompt, list):
                prompt = check_messages(prompt, row.where, "prompt", need_assistant=False)
            else:
                prompt = _text(row, "prompt")
            completion = row.data.get("completion")
            if isinstance(completion, list):
                completion = check_messages(completion, row.where, "completion")
            else:
                completion = _text(row, "completion")
            examples.append({"prompt": prompt, "completion": completion})
    return fmt, examples


def tokenize(example: dict, tokenizer) -> dict[str, list[int]]:
    """input_ids and labels (IGNORE outside the tokens that carry the loss)."""
    if "messages" in example:
        ids, mask = chat_tokens(example["messages"], tokenizer)
        if 1 not in mask:
            raise DataError("chat template", "marks no assistant tokens in a conversation (with `{% generation %}` "
                            "markers: none around the assistant text; use prompt/completion data otherwise)",
                            field="chat_template")
        return {"input_ids": ids, "labels": [t if m else IGNORE for t, m in zip(ids, mask)]}
    if "text" in example:
        ids = tokenizer(example["text"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        return {"input_ids": ids, "labels": list(ids)}
    prompt, completion = example["prompt"], example["completion"]
    if isinstance(prompt, list) or isinstance(completion, list):  # conversational: template, mask the prompt part
        prompt_msgs = as_messages(prompt)
        completion_msgs = completion if isinstance(completion, list) else [{"role": "assistant", "content": completion}]
        prompt_ids = tokenizer(format_prompt(tokenizer, prompt_msgs), add_special_tokens=False)["input_ids"]
        full = tokenizer.apply_chat_template(prompt_msgs + completion_msgs, tokenize=False)
        ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    else:
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        ids = prompt_ids + tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return {"input_ids": ids, "labels": [IGNORE] * len(prompt_ids) + ids[len(prompt_ids):]}


def chat_tokens(messages: list[dict], tokenizer) -> tuple[list[int], list[int]]:
    """The conversation's token ids through the chat template, and per token 1 if it belongs to an assistant turn.

    A template with `{% generation %}` markers says which tokens those are; for one without (SmolLM2's ChatML, most
    shipped templates) the turns are found by rendering the conversation prefix by prefix (`assistant_spans`)."""
    if GENERATION_TAG.search(str(tokenizer.chat_template or "")):
        out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=True)
        return list(out["input_ids"]), list(out["assistant_masks"])
    text, spans = assistant_spans(messages, tokenizer)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    starts = [start for start, _ in encoded["offset_mapping"]]
    return list(encoded["input_ids"]), [int(any(a <= start < b for a, b in spans)) for start in starts]


def assistant_spans(messages: list[dict], tokenizer) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character span of each assistant turn in it.

    A turn is the text that rendering the messages through it adds to rendering the messages before it with
    `add_generation_prompt=True` (the header `<|im_start|>assistant\n` is the prompt's, not the answer's), up to its
    last non-space character (the EOS; the newline between turns is the template's). This holds only if every
    shorter render starts the longer ones; a template that renders earlier turns differently (e.g. strips their
    reasoning) is an error instead of a wrong mask."""
    def render(part: list[dict], add_generation_prompt: bool) -> str:
        return tokenizer.apply_chat_template(part, tokenize=False, add_generation_prompt=add_generation_prompt)

    text, spans = render(messages, False), []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before, through = render(messages[:i], True), render(messages[: i + 1], False)
        if not (through.startswith(before) and text.startswith(through)):
            raise DataError("chat template", f"has no {{% generation %}} markers, and rendering the conversation "
                            f"through messages[{i}] (an assistant turn) does not extend the render of the turns before it (or does "
                            "not start the full render), so its assistant tokens cannot be found; add the markers "
                            "or use prompt/completion data", field="chat_template")
        spans.append((len(before), len(through.rstrip())))
    return text, spans


def tokenize_all(examples: list[dict], tokenizer, max_length: int | None, too_long: str) -> tuple[list[dict], LengthReport]:
    """Tokenized examples with over-long rows truncated (keep the start) or dropped."""
    report, out = LengthReport(rows=len(examples)), []
    for example in examples:
        tokens = tokenize(example, tokenizer)
        if max_length and len(tokens["input_ids"]) > max_length:
            report.too_long += 1
            if too_long == "drop":
                report.dropped += 1
                continue
            tokens = {k: v[:max_length] for k, v in tokens.items()}
            if all(label == IGNORE for label in tokens["labels"]):
                report.dropped += 1  # nothing left to learn from once the response is cut off
                continue
        out.append(tokens)
    return out, report
