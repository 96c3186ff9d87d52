"""Inter-annotator agreement on nominal labels: Cohen's kappa, Krippendorff's alpha, agreement with the majority.

Pure functions checked against hand-computed numbers; None where a statistic is undefined."""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from itertools import combinations


def cohen_kappa(x: Sequence[Hashable], y: Sequence[Hashable]) -> float | None:
    """Cohen's kappa of two annotators' labels on the same items: (p_o - p_e) / (1 - p_e)."""
    if len(x) != len(y):
        raise ValueError(f"cohen_kappa needs two equally long label lists, got {len(x)} and {len(y)}")
    n = len(x)
    if n == 0:
        return None
    observed = sum(a == b for a, b in zip(x, y, strict=True)) / n
    count_x, count_y = Counter(x), Counter(y)
    expected = sum(count_x[c] * count_y[c] for c in count_x) / (n * n)
    if expected == 1:
        return None
    return (observed - expected) / (1 - expected)


def krippendorff_alpha_nominal(units: Iterable[Sequence[Hashable]]) -> float | None:
    """Krippendorff's alpha (nominal) from each unit's list of values; units with fewer than 2 values are ignored.

    alpha = 1 - (n - 1) * sum_{c != k} o_ck / sum_{c != k} n_c n_k, with o the coincidence matrix
    (each ordered pair of values within a unit of m values adds 1 / (m - 1)) and n_c its margins.
    """
    disagreement = 0.0
    totals: Counter = Counter()
    for values in units:
        m = len(values)
        if m < 2:
            continue
        counts = Counter(values)
        totals.update(counts)
        # ordered pairs of different values within the unit: m^2 - sum of squared counts
        disagreement += (m * m - sum(c * c for c in counts.values())) / (m - 1)
    n = sum(totals.values())
    expected = n * n - sum(c * c for c in totals.values())
    if expected == 0:
        return None
    return 1 - (n - 1) * disagreement / expected


def majority(values: Iterable[Hashable]) -> Hashable | None:
    """The value given strictly more often than any other, or None when the top is shared (or no values)."""
    ranked = Counter(values).most_common(2)
    if not ranked or (len(ranked) == 2 and ranked[0][1] == ranked[1][1]):
        return None
    return ranked[0][0]


def pairwise_kappas(
    units: Mapping[Hashable, Mapping[str, Hashable]],
) -> dict[tuple[str, str], tuple[float | None, int]]:
    """Cohen's kappa and the number of shared items for every pair of annotators who share an item.

    `units` maps an item to {annotator: value}.
    """
    shared: dict[tuple[str, str], tuple[list, list]] = {}
    for by_annotator in units.values():
        for first, second in combinations(sorted(by_annotator), 2):
            xs, ys = shared.setdefault((first, second), ([], []))
            xs.append(by_annotator[first])
            ys.append(by_annotator[second])
    return {key: (cohen_kappa(xs, ys), len(xs)) for key, (xs, ys) in sorted(shared.items())}


def majority_agreement(units: Mapping[Hashable, Mapping[str, Hashable]]) -> dict[str, tuple[float | None, int]]:
    """Per annotator: how often they match the majority of the *other* annotators of an item, and on how many items.

    Leaving the annotator out keeps their own vote from inflating their score; items where the others
    have no strict majority are not counted.
    """
    hits: Counter = Counter()
    seen: Counter = Counter()
    for by_annotator in units.values():
        for name, value in by_annotator.items():
            others = majority(v for other, v in by_annotator.items() if other != name)
            if others is not None:
                seen[name] += 1
                hits[name] += value == others
    names = sorted({name for by_annotator in units.values() for name in by_annotator})
    return {name: (hits[name] / seen[name] if seen[name] else None, seen[name]) for name in names}
