"""Turn votes into preference records `{"prompt", "chosen", "rejected", "margin", ...}` for the reward stage.

The majority (the choice given strictly more often than any other) decides each pair. The margin is
the mean signed strength toward the winner: a vote for the winner adds its strength (1 slight,
2 clear, 3 strong; 2 when not given), a vote for the loser subtracts it, tie and both-bad votes add 0;
the mean is clipped at 0 and divided by 3, so margins lie in [0, 1].

Pairs without a winner are left out by default. With `keep_ties` (or `keep_both_bad`), such a pair is
written twice, once in each order, with margin 0 and `tie` (or `both_bad`) set: under a pairwise
(Bradley-Terry) loss the two records pull the two rewards together, which is what "no preference" means.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from reward.labeling.agreement import majority
from reward.labeling.store import Pair, Store, Vote
from rlhf.datafiles import write_jsonl

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


def _record(pair: Pair, counts: Counter, chosen: str, margin_value: float, flag: str | None) -> dict:
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
    pairs: dict[str, Pair], votes: list[Vote], min_votes: int = 1, keep_ties: bool = False, keep_both_bad: bool = False
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


def export_file(store: Store, out: str | Path, **options) -> ExportResult:
    """Aggregate the store's votes and write them as JSONL, atomically (temporary file, then rename)."""
    result = aggregate(store.pairs(), store.votes(), **options)
    write_jsonl(out, result.records)
    return result
