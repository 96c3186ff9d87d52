"""The labeling store over one SQLite file: settings, annotators and their tokens, and the pairs to compare
(schema and connections in schema.py, the queue and votes in labels.py); one `Store` serves many threads."""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import Iterable

from reward.labeling.labels import Labels, now_iso
from reward.labeling.records import MAX_ID_CHARS, Annotator, LabelingError, LabelPair, hash_token
from rlhf.errors import DataError


def _conflict(pair: LabelPair, message: str) -> LabelingError:
    return DataError(pair.where, message, field="id") if pair.where else LabelingError(message)


class Store(Labels):
    """Access to one labeling database file; `create=False` refuses to make a new, empty one."""

    def set_overlap(self, k: int) -> None:
        if type(k) is not int or k < 1:
            raise LabelingError(f"overlap must be an integer of at least 1, got {k!r}")
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
                    (name, hash_token(token), int(is_admin), now_iso()),
                )
        except sqlite3.IntegrityError as e:
            raise LabelingError(f"an annotator named '{name}' already exists") from e
        return token

    def annotator_by_token(self, token: str) -> Annotator | None:
        """The annotator holding this token, None for an unknown or revoked one."""
        with self._connect() as conn:
            row = conn.execute("SELECT id, name, is_admin FROM annotators WHERE token_hash = ? AND revoked_at IS NULL",
                               (hash_token(token),)).fetchone()
        return Annotator(row[0], row[1], bool(row[2])) if row else None

    def annotator_by_name(self, name: str) -> Annotator | None:
        with self._connect() as conn:
            row = conn.execute("SELECT id, name, is_admin FROM annotators WHERE name = ?", (name,)).fetchone()
        return Annotator(row[0], row[1], bool(row[2])) if row else None

    def annotators(self) -> list[Annotator]:
        with self._connect() as conn:
            rows = conn.execute("SELECT id, name, is_admin FROM annotators ORDER BY id").fetchall()
        return [Annotator(i, n, bool(a)) for i, n, a in rows]

    def annotator_table(self) -> list[dict]:
        """Every annotator with role, dates, labels, skips, edits and median seconds per label (for list and admin)."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT a.id, a.name, a.is_admin, a.created_at, a.revoked_at,"
                " (SELECT COUNT(*) FROM current_labels l WHERE l.annotator_id = a.id AND l.choice != 'skip'),"
                " (SELECT COUNT(*) FROM current_labels l WHERE l.annotator_id = a.id AND l.choice = 'skip'),"
                " (SELECT COALESCE(SUM(l.edits), 0) FROM current_labels l WHERE l.annotator_id = a.id)"
                " FROM annotators a ORDER BY a.id"
            ).fetchall()
            times = {}
            for annotator_id, time_ms in conn.execute(
                "SELECT annotator_id, time_ms FROM labels WHERE time_ms IS NOT NULL ORDER BY annotator_id, time_ms"
            ):
                times.setdefault(annotator_id, []).append(time_ms)
        table = []
        for annotator_id, name, is_admin, created, revoked, labeled, skipped, edits in rows:
            mine = times.get(annotator_id, [])
            median = mine[len(mine) // 2] / 1000 if mine else None
            table.append({"name": name, "is_admin": bool(is_admin), "created_at": created,
                          "revoked": revoked is not None,
                          "labeled": labeled, "skipped": skipped, "edits": edits, "median_seconds": median})
        return table

    def revoke_annotator(self, name: str) -> None:
        """Make this annotator's token stop working at once; their labels stay."""
        with self._write() as conn:
            if not conn.execute("UPDATE annotators SET revoked_at = ? WHERE name = ?", (now_iso(), name)).rowcount:
                raise LabelingError(f"no annotator named '{name}'")

    def rotate_token(self, name: str) -> str:
        """Give the annotator a new token (and lift a revocation); the old token stops working at once."""
        token = secrets.token_urlsafe(32)
        with self._write() as conn:
            updated = conn.execute("UPDATE annotators SET token_hash = ?, revoked_at = NULL WHERE name = ?",
                                   (hash_token(token), name)).rowcount
            if not updated:
                raise LabelingError(f"no annotator named '{name}'")
        return token

    # pairs

    def add_pairs(self, pairs: Iterable[LabelPair], present_at: list[tuple[str, str]] | None = None) -> tuple[int, int]:
        """Insert pairs in one transaction; returns (added, already present with the same content).

        A pair is already present when its id or its content (responses in either order) is; with a
        `present_at` list, (where, stored id) of each is appended to it.
        """
        added = present = 0
        with self._write() as conn:
            for pair in pairs:
                key, prompt, content = pair.key(), json.dumps(pair.prompt, ensure_ascii=False), pair.content_hash()
                if len(key) > MAX_ID_CHARS:
                    raise _conflict(pair, f"id is longer than {MAX_ID_CHARS} characters")
                row = conn.execute("SELECT content_hash FROM pairs WHERE id = ?", (key,)).fetchone()
                if row is not None and row[0] != content:
                    raise _conflict(pair, f"pair id '{key}' is already in {self.path} with different content")
                same = (key,) if row is not None else conn.execute(
                    "SELECT id FROM pairs WHERE content_hash = ? LIMIT 1", (content,)).fetchone()
                if same:
                    present += 1
                    if present_at is not None:
                        present_at.append((pair.where or "?", same[0]))
                    continue
                conn.execute(
                    "INSERT INTO pairs (id, prompt, response_a, response_b, model_a, model_b, created_at, content_hash)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (key, prompt, pair.response_a, pair.response_b, pair.model_a, pair.model_b, now_iso(), content),
                )
                added += 1
        return added, present

    def pairs(self) -> dict[str, LabelPair]:
        """All pairs by id, in import order."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT id, prompt, response_a, response_b, model_a, model_b FROM pairs ORDER BY rowid"
            ).fetchall()
        return {r[0]: LabelPair(json.loads(r[1]), r[2], r[3], r[4], r[5], r[0]) for r in rows}
