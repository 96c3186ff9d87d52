"""Sample responses from a policy and turn them into pairs to label: every two distinct completions of a prompt
make one pair (n=2 gives at most one pair per prompt, n=4 six)."""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

from reward.labeling.importing import prompt_from_row
from reward.labeling.records import LabelPair
from rlhf.datafiles import read_rows
from rlhf.errors import ConfigError
from rlhf.sampling import Sampling


def generate_pairs(model: str, prompts_path: str | Path, sampling: Sampling) -> tuple[list[LabelPair], int]:
    """Pairs of completions from `model` (a run directory or model name), and how many completions
    were left out for being empty or repeating an earlier completion of the same prompt."""
    if sampling.n < 2:
        raise ConfigError(f"--n must be at least 2 to make a pair, got {sampling.n}")
    prompts = [prompt_from_row(row) for row in read_rows(prompts_path)]
    from rlhf.sampling import load_for_generation, sample  # torch-heavy: only when generating

    policy, tokenizer = load_for_generation(model)
    completions = sample(
        policy,
        tokenizer,
        prompts,
        **vars(sampling),
    )
    pairs, dropped = [], 0
    for prompt, outputs in zip(prompts, completions, strict=True):
        distinct: dict[str, str] = {}
        for output in outputs:
            if output.strip():
                distinct.setdefault(output.strip(), output)
        dropped += len(outputs) - len(distinct)
        for first, second in combinations(distinct.values(), 2):
            pairs.append(LabelPair(prompt, first, second, model_a=str(model), model_b=str(model)))
    return pairs, dropped
