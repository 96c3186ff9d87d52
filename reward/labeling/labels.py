"""The queue and the votes: reserving the next pair, recording labels and their edits, reading them back."""

from __future__ import annotations

import json
import random
import time
from datetime import datetime, timezone

from reward.labeling.records import (
    CHOICES,
    Assignment,
    DuplicateLabel,
    NotAssigned,
    UnknownPair,
    Vote,
    check_label,
    to_shown_choice,
    to_stored_choice,
)
from reward.labeling.schema import Database

# A label row is never changed: an edit appends to `label_edits`, and the newest edit is the current vote (the
# `current_labels` view), so one annotator has one current vote per pair plus its history.

DEFAULT_OVERLAP = 3
RESERVE_SECONDS = 600.0

# Per pair: current votes (skips do not count) plus live reservations of other annotators, among the
# pairs :me has not labeled. The queue serves the least-loaded pair first, in import order.
_QUEUE = """
SELECT id FROM (
    SELECT p.id, p.rowid AS seq,
        (SELECT COUNT(*) FROM current_labels l WHERE l.pair_id = p.id AND l.choice != 'skip')
      + (SELECT COUNT(*) FROM assignments s
         WHERE s.pair_id = p.id AND s.annotator_id != :me AND s.expires_at > :now) AS load
    FROM pairs p
    WHERE NOT EXISTS (SELECT 1 FROM labels l WHERE l.pair_id = p.id AND l.annotator_id = :me)
)
WHERE load < :k ORDER BY load, seq LIMIT 1
"""

_PROGRESS = """
SELECT
    (SELECT COUNT(*) FROM current_labels WHERE annotator_id = :me AND choice != 'skip'),
    (SELECT COUNT(*) FROM current_labels WHERE annotator_id = :me AND choice = 'skip'),
    (SELECT COUNT(*) FROM pairs p
     WHERE NOT EXISTS (SELECT 1 FROM labels l WHERE l.pair_id = p.id AND l.annotator_id = :me)
       AND (SELECT COUNT(*) FROM current_labels l WHERE l.pair_id = p.id AND l.choice != 'skip') < :k)
"""

_RAW = """
SELECT l.id, l.pair_id, a.name, l.choice, l.strength, l.reason, l.time_ms, l.shown_order, l.created_at, l.edits,
       p.model_a, p.model_b
FROM current_labels l JOIN annotators a ON a.id = l.annotator_id JOIN pairs p ON p.id = l.pair_id
ORDER BY l.id
"""
RAW_FIELDS = ("label_id", "pair_id", "annotator", "choice", "strength", "reason", "time_ms", "shown_order",
              "created_at", "edits", "model_a", "model_b")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class Labels(Database):
    """Queue and label access on top of the database file."""

    def __init__(self, path, create: bool = True, reserve_seconds: float = RESERVE_SECONDS):
        super().__init__(path, create)
        self.reserve_seconds = reserve_seconds

    def overlap(self) -> int:
        """K: how many annotators label each pair."""
        with self._connect() as conn:
            row = conn.execute("SELECT value FROM settings WHERE key = 'overlap'").fetchone()
        return int(row[0]) if row else DEFAULT_OVERLAP

    def next_assignment(self, annotator_id: int, rng: random.Random | None = None) -> Assignment | None:
        """The pair this annotator should label now, reserved for them, or None when their queue is empty.

        A live reservation is served again (a page reload shows the same pair in the same order);
        otherwise the least-labeled pair they have not labeled yet, in a random left/right order.
        """
        now, k = time.time(), self.overlap()
        with self._write() as conn:
            row = conn.execute(
                "SELECT pair_id, shown_order FROM assignments WHERE annotator_id = ? AND expires_at > ?"
                " ORDER BY expires_at DESC LIMIT 1",
                (annotator_id, now),
            ).fetchone()
            if row is None:
                conn.execute("DELETE FROM assignments WHERE annotator_id = ?", (annotator_id,))
                picked = conn.execute(_QUEUE, {"me": annotator_id, "now": now, "k": k}).fetchone()
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

    def add_label(self, annotator_id: int, pair_id: str, shown_choice: str, strength: int | None = None,
                  reason: str = "", time_ms: int | None = None) -> int:
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
                    raise DuplicateLabel(f"pair '{pair_id}' is already labeled by this annotator (edit it instead)")
                if not conn.execute("SELECT 1 FROM pairs WHERE id = ?", (pair_id,)).fetchone():
                    raise UnknownPair(f"no pair with id '{pair_id}'")
                raise NotAssigned(f"pair '{pair_id}' is not assigned to this annotator (ask for the next pair first)")
            shown_order = row[0]
            choice = to_stored_choice(shown_choice, shown_order)
            check_label(choice, strength, reason, time_ms)
            cursor = conn.execute(
                "INSERT INTO labels (pair_id, annotator_id, choice, strength, reason, shown_order, time_ms, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (pair_id, annotator_id, choice, strength, reason.strip(), shown_order, time_ms, now_iso()),
            )
            conn.execute("DELETE FROM assignments WHERE pair_id = ? AND annotator_id = ?", (pair_id, annotator_id))
            return cursor.lastrowid

    def edit_label(self, annotator_id: int, label_id: int, shown_choice: str, strength: int | None = None,
                   reason: str = "", time_ms: int | None = None) -> None:
        """Change one of this annotator's own labels; the old vote stays in the history."""
        with self._write() as conn:
            row = conn.execute(
                "SELECT shown_order FROM labels WHERE id = ? AND annotator_id = ?", (label_id, annotator_id)
            ).fetchone()
            if row is None:
                raise UnknownPair(f"no label {label_id} of this annotator")
            choice = to_stored_choice(shown_choice, row[0])
            check_label(choice, strength, reason, time_ms)
            conn.execute(
                "INSERT INTO label_edits (label_id, choice, strength, reason, time_ms, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (label_id, choice, strength, reason.strip(), time_ms, now_iso()),
            )

    def history(self, annotator_id: int, limit: int = 20) -> list[dict]:
        """This annotator's most recent labels, newest first, as shown to them (left/right and their vote)."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT l.id, l.pair_id, l.choice, l.strength, l.reason, l.shown_order, p.prompt, p.response_a,"
                " p.response_b FROM current_labels l JOIN pairs p ON p.id = l.pair_id"
                " WHERE l.annotator_id = ? ORDER BY l.id DESC LIMIT ?",
                (annotator_id, limit),
            ).fetchall()
        out = []
        for label_id, pair_id, choice, strength, reason, order, prompt, a, b in rows:
            left, right = (a, b) if order == "ab" else (b, a)
            out.append({"label_id": label_id, "id": pair_id, "prompt": json.loads(prompt), "left": left,
                        "right": right, "choice": to_shown_choice(choice, order), "strength": strength,
                        "reason": reason})
        return out

    def progress(self, annotator_id: int) -> dict[str, int]:
        """Labeled and skipped by this annotator, and pairs still waiting for them."""
        k = self.overlap()
        with self._connect() as conn:
            labeled, skipped, remaining = conn.execute(_PROGRESS, {"me": annotator_id, "k": k}).fetchone()
        return {"labeled": labeled, "skipped": skipped, "remaining": remaining}

    def votes(self) -> list[Vote]:
        """Every current non-skip vote, oldest label first."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT l.pair_id, a.name, l.choice, l.strength FROM current_labels l"
                " JOIN annotators a ON a.id = l.annotator_id WHERE l.choice != 'skip' ORDER BY l.id"
            ).fetchall()
        return [Vote(*row) for row in rows]

    def raw_votes(self) -> list[dict]:
        """Every current label (skips included) with annotator, order shown, timing and the models, for analysis."""
        with self._connect() as conn:
            return [dict(zip(RAW_FIELDS, row, strict=True)) for row in conn.execute(_RAW)]

    def label_counts(self) -> dict[str, dict[str, int]]:
        """Per annotator name: number of current labels of each choice (skips included), zero-filled."""
        with self._connect() as conn:
            names = [r[0] for r in conn.execute("SELECT name FROM annotators ORDER BY id")]
            rows = conn.execute(
                "SELECT a.name, l.choice, COUNT(*) FROM current_labels l JOIN annotators a ON a.id = l.annotator_id"
                " GROUP BY a.name, l.choice"
            ).fetchall()
        counts: dict[str, dict[str, int]] = {name: dict.fromkeys(CHOICES, 0) for name in names}
        for name, choice, n in rows:
            counts[name][choice] = n
        return counts
