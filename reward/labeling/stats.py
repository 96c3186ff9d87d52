"""Labeling progress and agreement for a whole store, as a JSON-ready dict and as a text report."""

from __future__ import annotations

from collections import Counter

from reward.labeling.agreement import krippendorff_alpha_nominal, majority_agreement, pairwise_kappas
from reward.labeling.store import Store


def compute_stats(store: Store) -> dict:
    """Labels per annotator, Cohen's kappa per annotator pair, Krippendorff's alpha, agreement with the majority.

    Agreement is measured on non-skip labels over the four categories a, b, tie and both_bad.
    """
    units: dict[str, dict[str, str]] = {}
    for vote in store.votes():
        units.setdefault(vote.pair_id, {})[vote.annotator] = vote.choice
    leave_one_out = majority_agreement(units)
    return {
        "pairs": len(store.pairs()),
        "overlap": store.overlap(),
        "pairs_with_votes": len(units),
        "labels_per_annotator": store.label_counts(),
        "cohen_kappa": [
            {"annotators": list(names), "kappa": kappa, "shared_pairs": n}
            for names, (kappa, n) in pairwise_kappas(units).items()
        ],
        "krippendorff_alpha": krippendorff_alpha_nominal(list(u.values()) for u in units.values()),
        "majority_agreement": {
            name: {"agreement": rate, "pairs": n} for name, (rate, n) in leave_one_out.items()
        },
    }


def disagreements(store: Store) -> list[dict]:
    """Pairs whose current votes are not all the same, most split first: what a lead should review."""
    by_pair: dict[str, Counter] = {}
    for vote in store.votes():
        by_pair.setdefault(vote.pair_id, Counter())[vote.choice] += 1
    pairs = store.pairs()
    split = [(pair_id, counts) for pair_id, counts in by_pair.items() if len(counts) > 1]
    split.sort(key=lambda item: (max(item[1].values()) / sum(item[1].values()), item[0]))
    return [{"pair_id": pair_id, "prompt": pairs[pair_id].prompt, "votes": dict(counts)} for pair_id, counts in split]


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def format_stats(stats: dict) -> str:
    lines = [
        f"pairs: {stats['pairs']} (overlap {stats['overlap']}, {stats['pairs_with_votes']} with votes)",
        "",
        "labels per annotator:",
    ]
    for name, counts in stats["labels_per_annotator"].items():
        detail = ", ".join(f"{choice} {n}" for choice, n in counts.items())
        lines.append(f"  {name}: {sum(counts.values())} ({detail})")
    lines += ["", f"Krippendorff's alpha (nominal): {_number(stats['krippendorff_alpha'])}", "", "Cohen's kappa:"]
    if not stats["cohen_kappa"]:
        lines.append("  (no two annotators labeled the same pair)")
    for entry in stats["cohen_kappa"]:
        first, second = entry["annotators"]
        lines.append(f"  {first} / {second}: {_number(entry['kappa'])} on {entry['shared_pairs']} pairs")
    lines += ["", "agreement with the majority of the other annotators:"]
    for name, entry in stats["majority_agreement"].items():
        lines.append(f"  {name}: {_number(entry['agreement'])} on {entry['pairs']} pairs")
    return "\n".join(lines)
