"""The labeling database: pairs to compare, annotators, append-only labels and short-lived assignments.

Each thread gets its own SQLite connection, so one `Store` can be shared by the threads of a web
server. Writes run in `BEGIN IMMEDIATE` transactions in WAL mode with `synchronous=FULL`: once a
method has returned, its write survives the process being killed.
"""

from __future__ import annotations

import hashlib
import json
import random
import secrets
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator

from rlhf.errors import RLHFError

CHOICES = ("a", "b", "tie", "both_bad", "skip")  # stored: "a"/"b" name the underlying response
SHOWN_CHOICES = ("left", "right", "tie", "both_bad", "skip")  # what an annotator picks on screen
STRENGTHS = {1: "slight", 2: "clear", 3: "strong"}
DEFAULT_OVERLAP = 3
RESERVE_SECONDS = 600.0
MAX_REASON_CHARS = 2000

SCHEMA = """
CREATE TABLE IF NOT EXISTS settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS annotators (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    token_hash TEXT NOT NULL UNIQUE,          -- sha256 hex of the bearer token; the token is never stored
    is_admin INTEGER NOT NULL DEFAULT 0 CHECK (is_admin IN (0, 1)),
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS pairs (
    id TEXT PRIMARY KEY,
    prompt TEXT NOT NULL,                     -- JSON: a string or a list of {"role", "content"} messages
    response_a TEXT NOT NULL,
    response_b TEXT NOT NULL,
    model_a TEXT,
    model_b TEXT,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS labels (
    id INTEGER PRIMARY KEY,
    pair_id TEXT NOT NULL REFERENCES pairs(id),
    annotator_id INTEGER NOT NULL REFERENCES annotators(id),
    choice TEXT NOT NULL CHECK (choice IN ('a', 'b', 'tie', 'both_bad', 'skip')),
    strength INTEGER CHECK (strength IS NULL OR strength BETWEEN 1 AND 3),
    reason TEXT NOT NULL DEFAULT '',
    shown_order TEXT NOT NULL CHECK (shown_order IN ('ab', 'ba')),  -- 'ba': response_b was shown on the left
    time_ms INTEGER CHECK (time_ms IS NULL OR time_ms >= 0),
    created_at TEXT NOT NULL,
    UNIQUE (pair_id, annotator_id)
);
CREATE INDEX IF NOT EXISTS labels_annotator ON labels(annotator_id);
CREATE TRIGGER IF NOT EXISTS labels_no_update BEFORE UPDATE ON labels
    BEGIN SELECT RAISE(ABORT, 'labels are append-only'); END;
CREATE TRIGGER IF NOT EXISTS labels_no_delete BEFORE DELETE ON labels
    BEGIN SELECT RAISE(ABORT, 'labels are append-only'); END;
CREATE TABLE IF NOT EXISTS assignments (
    pair_id TEXT NOT NULL REFERENCES pairs(id),
    annotator_id INTEGER NOT NULL REFERENCES annotators(id),
    shown_order TEXT NOT NULL CHECK (shown_order IN ('ab', 'ba')),
    expires_at REAL NOT NULL,                 -- unix time; until then the pair is reserved for this annotator
    PRIMARY KEY (pair_id, annotator_id)
);
"""

# Per pair: votes so far (skips do not count) plus live reservations of other annotators, among the
# pairs :me has not labeled. The queue serves the least-loaded pair first, in import order.
_QUEUE = """
SELECT id FROM (
    SELECT p.id, p.rowid AS seq,
        (SELECT COUNT(*) FROM labels l WHERE l.pair_id = p.id AND l.choice != 'skip')
      + (SELECT COUNT(*) FROM assignments s
         WHERE s.pair_id = p.id AND s.annotator_id != :me AND s.expires_at > :now) AS load
    FROM pairs p
    WHERE NOT EXISTS (SELECT 1 FROM labels l WHERE l.pair_id = p.id AND l.annotator_id = :me)
)
WHERE load < :k ORDER BY load, seq LIMIT 1
"""

_PROGRESS = """
SELECT
    (SELECT COUNT(*) FROM labels WHERE annotator_id = :me AND choice != 'skip'),
    (SELECT COUNT(*) FROM labels WHERE annotator_id = :me AND choice = 'skip'),
    (SELECT COUNT(*) FROM pairs p
     WHERE NOT EXISTS (SELECT 1 FROM labels l WHERE l.pair_id = p.id AND l.annotator_id = :me)
       AND (SELECT COUNT(*) FROM labels l WHERE l.pair_id = p.id AND l.choice != 'skip') < :k)
"""


class LabelingError(RLHFError):
    """The labeling store refused an operation; the message says why."""


class DuplicateLabel(LabelingError):
    """The annotator has already labeled (or skipped) this pair; labels are never replaced."""


class NotAssigned(LabelingError):
    """A label was sent for a pair the queue did not hand to this annotator."""


class UnknownPair(LabelingError):
    """No pair has this id."""


class InvalidLabel(LabelingError):
    """A label's fields do not fit together (unknown choice, strength without a preference, skip without reason)."""


@dataclass(frozen=True)
class Annotator:
    id: int
    name: str
    is_admin: bool


@dataclass(frozen=True)
class Pair:
    """Two responses to one prompt. `prompt` is a string or a list of chat messages."""

    prompt: str | list[dict[str, str]]
    response_a: str
    response_b: str
    model_a: str | None = None
    model_b: str | None = None
    id: str | None = None

    def key(self) -> str:
        """The given id, or a content hash so that importing the same file twice adds nothing."""
        if self.id is not None:
            return self.id
        blob = json.dumps([self.prompt, self.response_a, self.response_b], ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


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
    """One non-skip label, in terms of the underlying responses."""

    pair_id: str
    annotator: str
    choice: str  # a, b, tie, both_bad
    strength: int | None


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def to_stored_choice(shown_choice: str, shown_order: str) -> str:
    """Map what the annotator clicked (left/right/...) to the underlying response (a/b/...)."""
    if shown_choice not in SHOWN_CHOICES:
        raise InvalidLabel(f"choice must be one of {', '.join(SHOWN_CHOICES)}, got '{shown_choice}'")
    if shown_choice not in ("left", "right"):
        return shown_choice
    return shown_order[0] if shown_choice == "left" else shown_order[1]


def _check_label(choice: str, strength: int | None, reason: str, time_ms: int | None) -> None:
    if strength is not None and (choice not in ("a", "b") or strength not in STRENGTHS):
        raise InvalidLabel("strength must be 1, 2 or 3 and only goes with a preference for one response")
    if choice == "skip" and not reason.strip():
        raise InvalidLabel("a skip needs a reason")
    if len(reason) > MAX_REASON_CHARS:
        raise InvalidLabel(f"reason is longer than {MAX_REASON_CHARS} characters")
    if time_ms is not None and time_ms < 0:
        raise InvalidLabel("time_ms must not be negative")


class Store:
    """Access to one labeling database file; `create=False` refuses to make a new, empty one."""

    def __init__(self, path: str | Path, create: bool = True, reserve_seconds: float = RESERVE_SECONDS):
        self.path = Path(path)
        self.reserve_seconds = reserve_seconds
        self._local = threading.local()
        if not create and not self.path.exists():
            raise LabelingError(f"{self.path}: no labeling database here (create one with `rlhf label import`)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as conn:
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.executescript(f"BEGIN IMMEDIATE; {SCHEMA} COMMIT;")
            except sqlite3.DatabaseError as e:
                raise LabelingError(f"{self.path}: not a usable labeling database: {e}") from e

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection, opened on first use and kept: reopening costs a WAL checkpoint each time."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
                conn.execute("PRAGMA synchronous=FULL")
                conn.execute("PRAGMA foreign_keys=ON")
                conn.execute("PRAGMA busy_timeout=30000")
            except sqlite3.Error as e:
                raise LabelingError(f"{self.path}: cannot open database: {e}") from e
            self._local.conn = conn
        yield conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken with BEGIN IMMEDIATE so concurrent writers queue instead of failing."""
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    # settings

    def overlap(self) -> int:
        """K: how many annotators label each pair."""
        with self._connect() as conn:
            return self._overlap(conn)

    def set_overlap(self, k: int) -> None:
        if k < 1:
            raise LabelingError(f"overlap must be at least 1, got {k}")
        with self._write() as conn:
            conn.execute("INSERT OR REPLACE INTO settings (key, value) VALUES ('overlap', ?)", (str(k),))

    # annotators

    def add_annotator(self, name: str, is_admin: bool = False) -> str:
        """Create an annotator and return their bearer token; only its hash is kept."""
        if not name.strip():
            raise LabelingError("an annotator needs a non-empty name")
        token = secrets.token_urlsafe(32)
        try:
            with self._write() as conn:
                conn.execute(
                    "INSERT INTO annotators (name, token_hash, is_admin, created_at) VALUES (?, ?, ?, ?)",
                    (name, hash_token(token), int(is_admin), _now_iso()),
                )
        except sqlite3.IntegrityError as e:
            raise LabelingError(f"an annotator named '{name}' already exists") from e
        return token

    def annotator_by_token(self, token: str) -> Annotator | None:
        return self._annotator("token_hash", hash_token(token))

    def annotator_by_name(self, name: str) -> Annotator | None:
        return self._annotator("name", name)

    def _annotator(self, column: str, value: str) -> Annotator | None:
        with self._connect() as conn:
            row = conn.execute(f"SELECT id, name, is_admin FROM annotators WHERE {column} = ?", (value,)).fetchone()
        return Annotator(row[0], row[1], bool(row[2])) if row else None

    def annotators(self) -> list[Annotator]:
        with self._connect() as conn:
            rows = conn.execute("SELECT id, name, is_admin FROM annotators ORDER BY id").fetchall()
        return [Annotator(i, n, bool(a)) for i, n, a in rows]

    # pairs

    def add_pairs(self, pairs: Iterable[Pair]) -> tuple[int, int]:
        """Insert pairs in one transaction; returns (added, already present with the same content)."""
        added = present = 0
        with self._write() as conn:
            for pair in pairs:
                key, prompt = pair.key(), json.dumps(pair.prompt, ensure_ascii=False)
                row = conn.execute("SELECT prompt, response_a, response_b FROM pairs WHERE id = ?", (key,)).fetchone()
                if row is None:
                    conn.execute(
                        "INSERT INTO pairs (id, prompt, response_a, response_b, model_a, model_b, created_at)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (key, prompt, pair.response_a, pair.response_b, pair.model_a, pair.model_b, _now_iso()),
                    )
                    added += 1
                elif row == (prompt, pair.response_a, pair.response_b):
                    present += 1
                else:
                    raise LabelingError(f"pair id '{key}' is already in the database with different content")
        return added, present

    def pairs(self) -> dict[str, Pair]:
        """All pairs by id, in import order."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT id, prompt, response_a, response_b, model_a, model_b FROM pairs ORDER BY rowid"
            ).fetchall()
        return {r[0]: Pair(json.loads(r[1]), r[2], r[3], r[4], r[5], r[0]) for r in rows}

    # queue and labels

    def next_assignment(self, annotator_id: int, rng: random.Random | None = None) -> Assignment | None:
        """The pair this annotator should label now, reserved for them, or None when their queue is empty.

        A live reservation is served again (a page reload shows the same pair in the same order);
        otherwise the least-labeled pair they have not labeled yet, in a random left/right order.
        """
        now = time.time()
        with self._write() as conn:
            row = conn.execute(
                "SELECT pair_id, shown_order FROM assignments WHERE annotator_id = ? AND expires_at > ?"
                " ORDER BY expires_at DESC LIMIT 1",
                (annotator_id, now),
            ).fetchone()
            if row is None:
                conn.execute("DELETE FROM assignments WHERE annotator_id = ?", (annotator_id,))
                picked = conn.execute(_QUEUE, {"me": annotator_id, "now": now, "k": self._overlap(conn)}).fetchone()
                if picked is None:
                    return None
                row = (picked[0], (rng or random).choice(("ab", "ba")))
                conn.execute(
                    "INSERT INTO assignments (pair_id, annotator_id, shown_order, expires_at) VALUES (?, ?, ?, ?)",
                    (row[0], annotator_id, row[1], now + self.reserve_seconds),
                )
            pair_id, shown_order = row
            prompt, a, b = conn.execute(
                "SELECT prompt, response_a, response_b FROM pairs WHERE id = ?", (pair_id,)
            ).fetchone()
        left, right = (a, b) if shown_order == "ab" else (b, a)
        return Assignment(pair_id, json.loads(prompt), left, right, shown_order)

    def add_label(
        self,
        annotator_id: int,
        pair_id: str,
        shown_choice: str,
        strength: int | None = None,
        reason: str = "",
        time_ms: int | None = None,
    ) -> int:
        """Record the annotator's judgement of a pair they were assigned; returns the new label's id.

        `shown_choice` is in screen terms (left/right/tie/both_bad/skip) and is stored in terms of the
        underlying responses, together with the order they were shown in.
        """
        with self._write() as conn:
            row = conn.execute(
                "SELECT shown_order FROM assignments WHERE pair_id = ? AND annotator_id = ?", (pair_id, annotator_id)
            ).fetchone()
            if row is None:
                if conn.execute("SELECT 1 FROM labels WHERE pair_id = ? AND annotator_id = ?",
                                (pair_id, annotator_id)).fetchone():
                    raise DuplicateLabel(f"pair '{pair_id}' is already labeled by this annotator")
                if not conn.execute("SELECT 1 FROM pairs WHERE id = ?", (pair_id,)).fetchone():
                    raise UnknownPair(f"no pair with id '{pair_id}'")
                raise NotAssigned(f"pair '{pair_id}' is not assigned to this annotator (ask for the next pair first)")
            shown_order = row[0]
            choice = to_stored_choice(shown_choice, shown_order)
            _check_label(choice, strength, reason, time_ms)
            cursor = conn.execute(
                "INSERT INTO labels (pair_id, annotator_id, choice, strength, reason, shown_order, time_ms, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (pair_id, annotator_id, choice, strength, reason.strip(), shown_order, time_ms, _now_iso()),
            )
            conn.execute("DELETE FROM assignments WHERE pair_id = ? AND annotator_id = ?", (pair_id, annotator_id))
            return cursor.lastrowid

    def progress(self, annotator_id: int) -> dict[str, int]:
        """Labeled and skipped by this annotator, and pairs still waiting for them."""
        with self._connect() as conn:
            labeled, skipped, remaining = conn.execute(
                _PROGRESS, {"me": annotator_id, "k": self._overlap(conn)}
            ).fetchone()
        return {"labeled": labeled, "skipped": skipped, "remaining": remaining}

    def votes(self) -> list[Vote]:
        """Every non-skip label, oldest first."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT l.pair_id, a.name, l.choice, l.strength FROM labels l"
                " JOIN annotators a ON a.id = l.annotator_id WHERE l.choice != 'skip' ORDER BY l.id"
            ).fetchall()
        return [Vote(*row) for row in rows]

    def label_counts(self) -> dict[str, dict[str, int]]:
        """Per annotator name: number of labels of each choice (skips included), zero-filled."""
        with self._connect() as conn:
            names = [r[0] for r in conn.execute("SELECT name FROM annotators ORDER BY id")]
            rows = conn.execute(
                "SELECT a.name, l.choice, COUNT(*) FROM labels l JOIN annotators a ON a.id = l.annotator_id"
                " GROUP BY a.name, l.choice"
            ).fetchall()
        counts: dict[str, dict[str, int]] = {name: dict.fromkeys(CHOICES, 0) for name in names}
        for name, choice, n in rows:
            counts[name][choice] = n
        return counts

    @staticmethod
    def _overlap(conn: sqlite3.Connection) -> int:
        row = conn.execute("SELECT value FROM settings WHERE key = 'overlap'").fetchone()
        return int(row[0]) if row else DEFAULT_OVERLAP
