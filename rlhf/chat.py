"""Chat data shared by every stage: checking messages, prompts and responses, and turning a prompt into text."""

from __future__ import annotations

from typing import Any

from rlhf.datafiles import Row
from rlhf.errors import DataError

Prompt = str | list[dict[str, str]]  # a string (one user turn) or a message list ending before the assistant's turn
ROLES = ("system", "user", "assistant")


def check_messages(messages: Any, where: str, field: str = "messages", need_assistant: bool = True) -> list[dict]:
    """A valid chat: a non-empty list of {role, content} with known roles (and an assistant turn)."""
    if not isinstance(messages, list):
        raise DataError(where, f"expected a list of messages, got {type(messages).__name__}", field=field)
    if not messages:
        raise DataError(where, "empty conversation", field=field)
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise DataError(where, "expected an object with 'role' and 'content'", field=f"{field}[{i}]")
        for name in ("role", "content"):
            if name not in message:
                raise DataError(where, "missing", field=f"{field}[{i}].{name}")
        if message["role"] not in ROLES:
            raise DataError(where, f"unknown role '{message['role']}' (expected one of {', '.join(ROLES)})",
                            field=f"{field}[{i}].role")
        if not isinstance(message["content"], str):
            raise DataError(where, "content must be a string", field=f"{field}[{i}].content")
    if need_assistant and not any(m["role"] == "assistant" for m in messages):
        raise DataError(where, "conversation has no assistant turn", field=field)
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def check_prompt(value: Any, where: str, field: str) -> Prompt:
    """A non-empty string, or messages that end before the assistant's turn."""
    if isinstance(value, list):
        messages = check_messages(value, where, field, need_assistant=False)
        if messages[-1]["role"] == "assistant":
            raise DataError(where, "ends with an assistant turn (the responses are the next assistant turn)",
                            field=field)
        return messages
    if not isinstance(value, str) or not value.strip():
        raise DataError(where, "must be a non-empty string or a list of messages", field=field)
    return value


def prompt_of_row(row: Row) -> Prompt:
    """The prompt of a `{"prompt"}` row (string or messages) or of a `{"messages"}` row."""
    field = "prompt" if "prompt" in row.data else "messages" if "messages" in row.data else None
    if field is None:
        raise DataError(row.where, f"no 'prompt' or 'messages' field (found: {', '.join(sorted(row.data)) or 'none'})",
                        field="prompt")
    return check_prompt(row.data[field], row.where, field)


def check_response(value: Any, where: str, field: str) -> str:
    """A response given as a string or as a list holding one assistant message."""
    if isinstance(value, list):
        messages = check_messages(value, where, field)
        if len(messages) != 1 or messages[0]["role"] != "assistant":
            raise DataError(where, f"expected one assistant message, got {len(messages)} message(s)", field=field)
        value = messages[0]["content"]
    if not isinstance(value, str):
        raise DataError(where, f"expected a string or a list with one assistant message, got {type(value).__name__}",
                        field=field)
    if not value.strip():
        raise DataError(where, "empty response", field=field)
    return value


def as_messages(prompt: Prompt) -> list[dict[str, str]]:
    """A prompt as a message list (a string is one user turn)."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def format_prompt(tokenizer, prompt: Prompt) -> str:
    """Prompt text ready for generation: chat template with a generation prompt when the tokenizer has one.

    A plain-string prompt is one user turn for chat models and used verbatim otherwise."""
    if tokenizer.chat_template is None:
        if not isinstance(prompt, str):
            raise ValueError("message-list prompts need a tokenizer with a chat template")
        return prompt
    return tokenizer.apply_chat_template(as_messages(prompt), tokenize=False, add_generation_prompt=True)
