"""The labeling database file: schema, migration of older files on open, and per-thread connections."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from reward.labeling.records import LabelingError, content_hash

# Writes run in `BEGIN IMMEDIATE` transactions in WAL mode with `synchronous=FULL`: once a method has returned, its
# write survives the process being killed.

SQLITE_MAGIC = b"SQLite format 3\x00"
SCHEMA_VERSION = 2

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

# Version 2: edits of a label (append-only history; the newest is the current vote), revoked tokens,
# and an order-independent content hash per pair (a swapped pair is the same pair).
SCHEMA_V2 = """
CREATE TABLE IF NOT EXISTS label_edits (
    id INTEGER PRIMARY KEY,
    label_id INTEGER NOT NULL REFERENCES labels(id),
    choice TEXT NOT NULL CHECK (choice IN ('a', 'b', 'tie', 'both_bad', 'skip')),
    strength INTEGER CHECK (strength IS NULL OR strength BETWEEN 1 AND 3),
    reason TEXT NOT NULL DEFAULT '',
    time_ms INTEGER CHECK (time_ms IS NULL OR time_ms >= 0),
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS label_edits_label ON label_edits(label_id);
CREATE TRIGGER IF NOT EXISTS label_edits_no_update BEFORE UPDATE ON label_edits
    BEGIN SELECT RAISE(ABORT, 'label edits are append-only'); END;
CREATE TRIGGER IF NOT EXISTS label_edits_no_delete BEFORE DELETE ON label_edits
    BEGIN SELECT RAISE(ABORT, 'label edits are append-only'); END;
CREATE VIEW IF NOT EXISTS current_labels AS
SELECT l.id, l.pair_id, l.annotator_id, l.shown_order, l.created_at,
       COALESCE(e.choice, l.choice) AS choice,
       CASE WHEN e.id IS NULL THEN l.strength ELSE e.strength END AS strength,
       COALESCE(e.reason, l.reason) AS reason,
       CASE WHEN e.id IS NULL THEN l.time_ms ELSE e.time_ms END AS time_ms,
       (SELECT COUNT(*) FROM label_edits x WHERE x.label_id = l.id) AS edits
FROM labels l
LEFT JOIN label_edits e ON e.id = (SELECT MAX(id) FROM label_edits x WHERE x.label_id = l.id);
"""


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def _run_script(conn: sqlite3.Connection, script: str) -> None:
    """Run statements one by one: `executescript` would commit the caller's transaction first."""
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            conn.execute(statement)
            statement = ""


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring a file of any earlier version up to SCHEMA_VERSION, in the caller's transaction (idempotent)."""
    _run_script(conn, SCHEMA)
    if "revoked_at" not in _columns(conn, "annotators"):
        conn.execute("ALTER TABLE annotators ADD COLUMN revoked_at TEXT")
    if "content_hash" not in _columns(conn, "pairs"):
        conn.execute("ALTER TABLE pairs ADD COLUMN content_hash TEXT")
    rows = conn.execute("SELECT id, prompt, response_a, response_b FROM pairs WHERE content_hash IS NULL").fetchall()
    conn.executemany("UPDATE pairs SET content_hash = ? WHERE id = ?", [(content_hash(*r[1:]), r[0]) for r in rows])
    conn.execute("CREATE INDEX IF NOT EXISTS pairs_content ON pairs(content_hash)")
    _run_script(conn, SCHEMA_V2)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def is_sqlite_file(path: Path) -> bool:
    """True when `path` is a file starting with SQLite's magic header."""
    try:
        with path.open("rb") as f:
            return f.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC
    except OSError:
        return False


class Database:
    """One labeling database file; `create=False` refuses to make a new, empty one."""

    def __init__(self, path: str | Path, create: bool = True):
        self.path = Path(path)
        self._local = threading.local()
        if not create and not self.path.is_file():
            raise LabelingError(f"{self.path}: no labeling database here (create one with `rlhf label import`)")
        if self.path.exists() and not self.path.is_file():
            raise LabelingError(f"{self.path}: is a directory, not a labeling database")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as conn:
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                if conn.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                    conn.execute("BEGIN IMMEDIATE")
                    try:
                        _migrate(conn)
                    except BaseException:
                        conn.execute("ROLLBACK")
                        raise
                    conn.execute("COMMIT")
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
