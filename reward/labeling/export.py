"""Turn votes into preference records `{"prompt", "chosen", "rejected", "margin", ...}` for the reward stage
(and every vote as it was cast, for analysis)."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from reward.labeling.agreement import majority
from reward.labeling.labels import RAW_FIELDS
from reward.labeling.records import LabelingError, LabelPair, Vote
from reward.labeling.schema import is_sqlite_file
from reward.labeling.store import Store

# The majority (the choice given strictly more often than any other) decides each pair. The margin is the mean signed
# strength toward the winner: a vote for the winner adds its strength (1 slight, 2 clear, 3 strong; 2 when not given),
# a vote for the loser subtracts it, tie and both-bad votes add 0; the mean is clipped at 0 and divided by 3, so
# margins lie in [0, 1]. Pairs without a winner are left out by default. With `keep_ties` (or `keep_both_bad`), such
# a pair is written twice, once in each order, with margin 0 and `tie` (or `both_bad`) set: under a pairwise
# (Bradley-Terry) loss the two records pull the two rewards together, which is what "no preference" means.

DEFAULT_STRENGTH = 2
MAX_STRENGTH = 3
EXCLUSION_REASONS = {
    "too_few_votes": "fewer votes than --min-votes",
    "tie": "tie or no majority",
    "both_bad": "majority says both are bad",
}


@dataclass
class ExportResult:
    records: list[dict] = field(default_factory=list)
    pairs_exported: int = 0
    excluded: Counter = field(default_factory=Counter)  # reason -> pairs

    def summary(self) -> str:
        lines = [f"exported {len(self.records)} records from {self.pairs_exported} pairs"]
        lines += [f"excluded {n} pairs: {EXCLUSION_REASONS[reason]}" for reason, n in sorted(self.excluded.items())]
        return "\n".join(lines)


def margin(votes: list[Vote], winner: str) -> float:
    """Mean signed strength toward `winner` ("a" or "b"), clipped at 0 and scaled to [0, 1]."""
    signed = 0
    for vote in votes:
        if vote.choice in ("a", "b"):
            strength = vote.strength or DEFAULT_STRENGTH
            signed += strength if vote.choice == winner else -strength
    return round(max(0.0, signed / len(votes)) / MAX_STRENGTH, 4)


def _record(pair: LabelPair, counts: Counter, chosen: str, margin_value: float, flag: str | None) -> dict:
    rejected = "b" if chosen == "a" else "a"
    text = {"a": pair.response_a, "b": pair.response_b}
    return {
        "prompt": pair.prompt,
        "chosen": text[chosen],
        "rejected": text[rejected],
        "margin": margin_value,
        "pair_id": pair.id,
        "votes_chosen": counts[chosen],
        "votes_rejected": counts[rejected],
        "votes_tie": counts["tie"],
        "votes_both_bad": counts["both_bad"],
        "n_votes": sum(counts.values()),
        "tie": flag == "tie",
        "both_bad": flag == "both_bad",
    }


def aggregate(
    pairs: dict[str, LabelPair], votes: list[Vote], min_votes: int = 1, keep_ties: bool = False,
    keep_both_bad: bool = False,
) -> ExportResult:
    """Preference records for every pair, in import order, and why the others were left out."""
    by_pair: dict[str, list[Vote]] = {}
    for vote in votes:
        by_pair.setdefault(vote.pair_id, []).append(vote)
    result = ExportResult()
    for pair_id, pair in pairs.items():
        pair_votes = by_pair.get(pair_id, [])
        if not pair_votes or len(pair_votes) < min_votes:
            result.excluded["too_few_votes"] += 1
            continue
        counts = Counter(v.choice for v in pair_votes)
        winner = majority(v.choice for v in pair_votes)
        if winner in ("a", "b"):
            result.records.append(_record(pair, counts, winner, margin(pair_votes, winner), None))
        else:
            reason = "both_bad" if winner == "both_bad" else "tie"
            if not (keep_both_bad if reason == "both_bad" else keep_ties):
                result.excluded[reason] += 1
                continue
            result.records += [_record(pair, counts, "a", 0.0, reason), _record(pair, counts, "b", 0.0, reason)]
        result.pairs_exported += 1
    return result


EXPORT_FIELDS = {"prompt", "chosen", "rejected", "pair_id"}  # what every aggregated record has


def _is_previous_export(path: Path) -> bool:
    """True for an empty file or one whose first line is an aggregated or raw export record."""
    try:
        with path.open(encoding="utf-8") as f:
            first = f.readline()
        record = json.loads(first) if first.strip() else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    if not isinstance(record, dict):
        return False
    return not record or EXPORT_FIELDS <= record.keys() or set(RAW_FIELDS) <= record.keys()


def check_output(store: Store, out: Path, force: bool) -> None:
    """Refuse to write over the database, any SQLite file, a folder, or (without `force`) anything but an export."""
    database = store.path.resolve()
    if out.resolve() in [database, *(database.with_name(database.name + s) for s in ("-wal", "-shm", "-journal"))]:
        raise LabelingError(f"--out {out}: that is the labeling database itself (or its journal); choose another file")
    if out.is_dir():
        raise LabelingError(f"--out {out}: is a directory; give a file name such as {out / 'prefs.jsonl'}")
    if is_sqlite_file(out):
        raise LabelingError(f"--out {out}: is an SQLite database; refusing to write over it")
    if out.exists() and not force and not _is_previous_export(out):
        raise LabelingError(f"--out {out}: exists and is not a previous export; pass --force to replace it")


def write_lines(out: Path, records: Iterable[dict]) -> None:
    """Write JSON lines atomically and durably: a temporary file, fsync, rename; on failure nothing is left behind."""
    tmp = out.with_name(out.name + ".tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(out)
    except OSError as e:
        if tmp.is_file():
            tmp.unlink()
        raise LabelingError(f"--out {out}: cannot write: {e.strerror or e}") from e


def export_file(store: Store, out: str | Path, force: bool = False, **options) -> ExportResult:
    """Aggregate the store's votes and write them as JSONL, refusing to overwrite anything but an earlier export."""
    out = Path(out)
    check_output(store, out, force)
    result = aggregate(store.pairs(), store.votes(), **options)
    write_lines(out, result.records)
    return result


def export_raw(store: Store, out: str | Path, force: bool = False) -> int:
    """Write every current label with its annotator, order shown and models; returns how many."""
    out = Path(out)
    check_output(store, out, force)
    votes = store.raw_votes()
    write_lines(out, votes)
    return len(votes)
