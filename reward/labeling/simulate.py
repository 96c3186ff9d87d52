"""Simulated annotators: a judge function plus noise, labeling through the same queue and store calls as people."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

from reward.labeling.store import Store
from rlhf.errors import ConfigError

# A judge is `judge(prompt, first, second) -> "a" | "b" | "tie"`, where "a" means the first response shown is better.
# It sees the responses in the randomised order a person would see.

Judge = Callable[[object, str, str], str]
SHOWN = {"a": "left", "b": "right", "tie": "tie"}
JUDGED_STRENGTH, NOISY_STRENGTH = 2, 1  # "clear" for the judge's own answers, "slight" for coin flips


def simulate_annotators(
    db_path: str | Path, judge: Judge, n_annotators: int, noise: float = 0.0, seed: int = 0, strength: bool = True
) -> int:
    """Let annotators `sim-1` ... `sim-N` (created if missing) label until their queues are empty.

    With probability `noise` an answer is replaced by a fair coin flip between the two responses.
    With `strength`, answers carry a strength: clear for the judge's answers, slight for coin flips.
    Returns the number of labels written.
    """
    if n_annotators < 1:
        raise ConfigError(f"need at least one simulated annotator, got {n_annotators}")
    if not 0.0 <= noise <= 1.0:
        raise ConfigError(f"noise must be a probability in [0, 1], got {noise}")
    store = Store(db_path, create=False)
    rng = random.Random(seed)
    active = []
    for i in range(1, n_annotators + 1):
        name = f"sim-{i}"
        if store.annotator_by_name(name) is None:
            store.add_annotator(name)
        active.append(store.annotator_by_name(name))
    written = 0
    while active:  # round robin, so that pairs fill up evenly as they would with people working side by side
        for annotator in list(active):
            assignment = store.next_assignment(annotator.id, rng)
            if assignment is None:
                active.remove(annotator)
                continue
            answer = judge(assignment.prompt, assignment.left, assignment.right)
            if answer not in SHOWN:
                raise ConfigError(f"the judge must return 'a', 'b' or 'tie', got {answer!r}")
            noisy = rng.random() < noise
            if noisy:
                answer = rng.choice(("a", "b"))
            level = (NOISY_STRENGTH if noisy else JUDGED_STRENGTH) if strength and answer != "tie" else None
            store.add_label(annotator.id, assignment.pair_id, SHOWN[answer], level, reason="simulated")
            written += 1
    return written
