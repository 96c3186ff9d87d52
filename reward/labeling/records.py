"""What the labeling store holds and hands out (pairs, annotators, votes), its errors, and the shared checks."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from rlhf.errors import RLHFError

CHOICES = ("a", "b", "tie", "both_bad", "skip")  # stored: "a"/"b" name the underlying response
SHOWN_CHOICES = ("left", "right", "tie", "both_bad", "skip")  # what an annotator picks on screen
STRENGTHS = {1: "slight", 2: "clear", 3: "strong"}
MAX_REASON_CHARS = 2000
MAX_ID_CHARS = 200  # one limit for import, the store and the API, so nothing imported is unlabelable
MAX_TIME_MS = 7 * 24 * 3600 * 1000  # a week: more is a broken clock, and it keeps SQLite integers small


class LabelingError(RLHFError):
    """The labeling store refused an operation; the message says why."""


class DuplicateLabel(LabelingError):
    """The annotator has already labeled (or skipped) this pair; a change goes through an edit."""


class NotAssigned(LabelingError):
    """A label was sent for a pair the queue did not hand to this annotator."""


class UnknownPair(LabelingError):
    """No pair (or no label of this annotator) has this id."""


class InvalidLabel(LabelingError):
    """A label's fields do not fit together (unknown choice, strength without a preference, skip without reason)."""


@dataclass(frozen=True)
class Annotator:
    id: int
    name: str
    is_admin: bool


@dataclass(frozen=True)
class LabelPair:
    """Two responses to one prompt to be labeled; `prompt` is a string or a list of chat messages."""

    prompt: str | list[dict[str, str]]
    response_a: str
    response_b: str
    model_a: str | None = None
    model_b: str | None = None
    id: str | None = None
    where: str | None = field(default=None, compare=False)  # file:line it was read from, for errors

    def content_hash(self) -> str:
        """Hash of prompt and the two responses in either order: a swapped pair is the same pair."""
        return content_hash(json.dumps(self.prompt, ensure_ascii=False), self.response_a, self.response_b)

    def key(self) -> str:
        """The given id, or a content hash so that importing the same file twice adds nothing."""
        return self.id if self.id is not None else self.content_hash()[:16]


@dataclass(frozen=True)
class Assignment:
    """A pair as one annotator sees it: `left`/`right` are the responses in the order shown."""

    pair_id: str
    prompt: str | list[dict[str, str]]
    left: str
    right: str
    shown_order: str  # "ab": response_a is on the left


@dataclass(frozen=True)
class Vote:
    """One current non-skip vote, in terms of the underlying responses."""

    pair_id: str
    annotator: str
    choice: str  # a, b, tie, both_bad
    strength: int | None


def content_hash(prompt_json: str, response_a: str, response_b: str) -> str:
    blob = json.dumps([prompt_json, *sorted((response_a, response_b))], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def to_stored_choice(shown_choice: str, shown_order: str) -> str:
    """Map what the annotator clicked (left/right/...) to the underlying response (a/b/...)."""
    if shown_choice not in SHOWN_CHOICES:
        raise InvalidLabel(f"choice must be one of {', '.join(SHOWN_CHOICES)}, got '{shown_choice}'")
    if shown_choice not in ("left", "right"):
        return shown_choice
    return shown_order[0] if shown_choice == "left" else shown_order[1]


def to_shown_choice(choice: str, shown_order: str) -> str:
    """The inverse of `to_stored_choice`: which side the stored choice was on screen."""
    if choice not in ("a", "b"):
        return choice
    return "left" if shown_order[0] == choice else "right"


def has_lone_surrogate(text: str) -> bool:
    """True when `text` cannot be stored as UTF-8 (JSON allows an unpaired \\ud800 escape)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def check_label(choice: str, strength: int | None, reason: str, time_ms: int | None) -> None:
    """Refuse a label whose fields do not fit together or do not fit the database."""
    if strength is not None and (choice not in ("a", "b") or type(strength) is not int or strength not in STRENGTHS):
        raise InvalidLabel("strength must be 1, 2 or 3 and only goes with a preference for one response")
    if choice == "skip" and not reason.strip():
        raise InvalidLabel("a skip needs a reason")
    if len(reason) > MAX_REASON_CHARS:
        raise InvalidLabel(f"reason is longer than {MAX_REASON_CHARS} characters")
    if has_lone_surrogate(reason):
        raise InvalidLabel("reason contains an unpaired surrogate (not valid Unicode text)")
    if time_ms is not None and (type(time_ms) is not int or not 0 <= time_ms <= MAX_TIME_MS):
        raise InvalidLabel(f"time_ms must be an integer from 0 to {MAX_TIME_MS}")
