"""`rlhf pipeline --seeds 0,1,2`: the pipeline once per seed (into OUTPUT_DIR/seed-N), then `sweep.json` and
`sweep.md` over the seeds' evaluations: gold win rate with a bootstrap interval, KL, reward-model test accuracy,
gold scores, and the gold outcomes by kind."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import statistics
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from rlhf import runs
from rlhf.config import import_function, save_config
from rlhf.errors import ConfigError
from rlhf.evaluate import mean
from rlhf.ppo.evaluation import win_rate

# The bootstrap resamples the held-out prompts (with all of a prompt's samples) within each seed and takes the mean
# of the seeds' win rates: its interval is the uncertainty from the finite prompt set, the sd the spread over seeds.

RESAMPLES = 2000
BOOTSTRAP_SEED = 0
SIDES = {"policy": "PPO", "baseline": "SFT"}  # eval.json model -> label
ROWS = (  # (key of a seed's row, label in sweep.md)
    ("win_rate", "gold win rate vs SFT"),
    ("kl", "KL to SFT (nats)"),
    ("policy_gold_score", "PPO gold score"),
    ("baseline_gold_score", "SFT gold score"),
    ("rm_test_accuracy", "reward-model test accuracy"),
)


# ---- pure summaries ------------------------------------------------------------------------------

def parse_seeds(value: Any) -> list[int]:
    """The `seeds` key as distinct integers, from "0,1,2", a list ([0, 1, 2] or repeated --seeds), or one number."""
    items = value if isinstance(value, (list, tuple)) else [value]
    seeds = [_seed(part) for item in items for part in (item.split(",") if isinstance(item, str) else [item])]
    if len(set(seeds)) < len(seeds):
        raise ConfigError(f"seeds: {seeds} repeats a seed")
    return seeds


def _seed(part: Any) -> int:
    """One seed of the `seeds` key: an integer, or text that reads as one."""
    if isinstance(part, int) and not isinstance(part, bool):
        return part
    if isinstance(part, str) and re.fullmatch(r"\s*-?\d+\s*", part):
        return int(part)
    raise ConfigError(f"seeds: {part!r} is not an integer (write e.g. --seeds 0,1,2)")


def spread(values: list[float]) -> dict[str, float]:
    """Mean and sample standard deviation (0 for a single value) of per-seed figures."""
    return {"mean": mean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0}


def bootstrap_interval(groups: list[list[float]], resamples: int = RESAMPLES,
                       seed: int = BOOTSTRAP_SEED) -> list[float]:
    """95 % percentile interval of the mean over groups of each group's mean, resampling within each group."""
    rng = random.Random(seed)
    means = [mean([mean(rng.choices(group, k=len(group))) for group in groups]) for _ in range(resamples)]
    cuts = statistics.quantiles(means, n=40, method="inclusive")  # cuts[0]: 2.5th percentile, cuts[-1]: 97.5th
    return [cuts[0], cuts[-1]]


def prompt_win_rates(samples: list[dict], per_prompt: int, gold: Callable) -> list[float]:
    """Gold win rate of the policy over the baseline on each prompt's `per_prompt` consecutive samples."""
    chunks = [samples[i:i + per_prompt] for i in range(0, len(samples), per_prompt)]
    return [win_rate([float(gold(s["prompt"], s["policy"])) for s in chunk],
                     [float(gold(s["prompt"], s["baseline"])) for s in chunk]) for chunk in chunks]


def outcome_counts(samples: list[dict], side: str, outcome: Callable) -> dict[str, int]:
    """How many of `side`'s responses fall in each kind that `outcome(prompt, response)` names."""
    return dict(Counter(outcome(s["prompt"], s[side]) for s in samples))


def summarize(rows: list[dict], win_rates: list[list[float]], resamples: int = RESAMPLES) -> dict[str, Any]:
    """Mean and sd of every row figure the seeds have, the win rate's bootstrap interval, outcome totals."""
    summary: dict[str, Any] = {}
    for name, _ in ROWS:
        values = [row[name] for row in rows if row.get(name) is not None]
        if values:
            summary[name] = spread(values)
    summary["win_rate"].update(ci95=bootstrap_interval(win_rates, resamples), resamples=resamples)
    if any("outcomes" in row for row in rows):
        summary["outcomes"] = {side: dict(sum((Counter(row["outcomes"][side]) for row in rows), Counter()))
                               for side in SIDES}
    return summary


def markdown(title: str, rows: list[dict], summary: dict[str, Any]) -> str:
    """sweep.md: the figures per seed with mean ± sd, the interval, and the outcome totals."""
    lines = [f"# {title}", "", "| metric | " + " | ".join(f"seed {row['seed']}" for row in rows) + " | mean ± sd |",
             "|---|" + "---:|" * (len(rows) + 1)]
    for name, label in ROWS:
        if name in summary:
            cells = [f"{row[name]:.3f}" if row.get(name) is not None else "" for row in rows]
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {summary[name]['mean']:.3f} ± "
                                                              f"{summary[name]['sd']:.3f} |")
    low, high = summary["win_rate"]["ci95"]
    lines += ["", f"Gold win rate, mean over seeds: 95 % bootstrap interval [{low:.3f}, {high:.3f}] "
                  f"({summary['win_rate']['resamples']} resamples of the held-out prompts within each seed)."]
    if "outcomes" in summary:
        lines += ["", outcome_table(summary["outcomes"])]
    return "\n".join(lines)


def outcome_table(outcomes: dict[str, dict[str, int]]) -> str:
    """Count and share of each outcome kind per side, kinds in order of the policy's counts."""
    totals = {side: sum(counts.values()) for side, counts in outcomes.items()}
    kinds = sorted({kind for counts in outcomes.values() for kind in counts},
                   key=lambda kind: (-outcomes["policy"].get(kind, 0), kind))
    lines = ["| gold outcome (all seeds) | " + " | ".join(SIDES.values()) + " |", "|---|" + "---:|" * len(SIDES)]
    for kind in kinds:
        cells = [f"{outcomes[side].get(kind, 0)} ({outcomes[side].get(kind, 0) / totals[side]:.0%})" for side in SIDES]
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---- the seeds' run folders ----------------------------------------------------------------------

def seed_dir(root: Path, seed: int) -> Path:
    """Where a seed's pipeline runs: OUTPUT_DIR/seed-N."""
    return root / f"seed-{seed}"


def seed_result(seed: int, folder: Path, outcome: Callable | None) -> tuple[dict[str, Any], list[float]]:
    """(the seed's row, its per-prompt win rates) from FOLDER/eval/eval.json and FOLDER/rm/summary.json."""
    path = folder / "eval" / "eval.json"
    result = json.loads(path.read_text(encoding="utf-8"))
    if not result.get("judge") or "baseline" not in result["models"]:
        raise ConfigError(f"{path}: no gold judge or no baseline; a sweep needs gold_judge set")
    win_rates = prompt_win_rates(result["samples"], result["settings"]["n"], import_function(result["judge"], "judge"))
    policy, baseline = result["models"]["policy"], result["models"]["baseline"]
    row = {"seed": seed, "win_rate": mean(win_rates), "kl": policy["kl"], "policy_gold_score": policy["gold_score"],
           "baseline_gold_score": baseline["gold_score"],
           "rm_test_accuracy": runs.read_summary(folder / "rm").get("test/accuracy")}
    if outcome is not None:
        row["outcomes"] = {side: outcome_counts(result["samples"], side, outcome) for side in SIDES}
    return row, win_rates


def write_summary(root: Path, seeds: list[int], outcome_spec: str | None) -> str:
    """Recompute sweep.json and sweep.md in ROOT from the seeds' evaluations; returns sweep.md's text."""
    outcome = import_function(outcome_spec, "gold_outcome") if outcome_spec else None
    results = [seed_result(seed, seed_dir(root, seed), outcome) for seed in seeds]
    rows = [row for row, _ in results]
    summary = summarize(rows, [rates for _, rates in results])
    runs.write_json({"seeds": rows, "summary": summary, "gold_outcome": outcome_spec}, root / "sweep.json")
    table = markdown(f"Seed sweep of {root} (seeds {', '.join(map(str, seeds))})", rows, summary)
    (root / "sweep.md").write_text(table + "\n", encoding="utf-8")
    return table


def run(config, run_pipeline: Callable) -> dict[str, Any]:
    """`run_pipeline` once per seed (each resumable as a single pipeline), then the summary; timings per seed."""
    if not config.gold_judge:
        raise ConfigError("gold_judge is not set: a seed sweep compares gold win rates")
    for name in ("gold_judge", "gold_outcome"):  # bad specs fail before any training
        if getattr(config, name):
            import_function(getattr(config, name), name)
    root = Path(config.output_dir)
    save_config(config, root / "pipeline.yaml")
    group = os.environ.get("WANDB_RUN_GROUP")  # the user's choice holds for every seed
    timings = {}
    for seed in config.seeds:
        print(f"== seed {seed} ==", flush=True)
        os.environ["WANDB_RUN_GROUP"] = group or f"pipeline-{root.resolve().name}-seed-{seed}"
        one = dataclasses.replace(config, seeds=[], seed=seed, output_dir=str(seed_dir(root, seed)))
        timings[f"seed-{seed}"] = run_pipeline(one)
    print("\n" + write_summary(root, config.seeds, config.gold_outcome))
    return timings
