"""Sampling the policy outside training's random stream: the score statistics measured on the starting policy when a
run starts, and the held-out evaluation every `eval_steps` (gold judge, reward model and KL: the over-optimisation
curve of Gao et al. 2022).

The rows are sampled in fixed, separately seeded chunks dealt to the processes, and the results are gathered: every
process ends with the same numbers, and they are the same for any number of processes."""

from __future__ import annotations

import statistics
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Callable

import torch

from rlhf.chat import format_prompt
from rlhf.config import import_function
from rlhf.errors import ConfigError
from rlhf.ppo import rollout

STATS_SEED_OFFSET = 1_000_003  # keeps the statistics' prompts and samples apart from the training stream's
EVAL_SEED_OFFSET = 2_000_003
CHUNK_ROWS = 8  # rows sampled together; fixed, so that the samples do not depend on the process layout


@dataclass
class Probe:
    """Where and how to sample: the policy model, its reward, tokenizer, sampling settings and the process layout."""

    model: Any  # the PolicyValueModel (unwrapped)
    reward: Any
    tokenizer: Any
    settings: rollout.Settings
    device: Any
    process_index: int = 0
    num_processes: int = 1
    generation_weights: Callable[[], AbstractContextManager] = nullcontext


def sample_and_score(probe: Probe, prompts: list, seed: int) -> list[dict[str, Any]]:
    """{"prompt", "response", "score", "kl", "tokens"} of each of `prompts`, sampled from the policy with `seed`
    (the caller's random state is left as it was).

    The prompts go in fixed chunks of CHUNK_ROWS, each sampled with its own seed, and the chunks are dealt to the
    processes in turn: the numbers do not depend on how many processes there are or on `scoring_rows`. Every
    process runs the same number of chunks (a process short of one repeats its last, discarded), so ZeRO-3's
    collective gathers stay in step."""
    chunks = [prompts[i:i + CHUNK_ROWS] for i in range(0, len(prompts), CHUNK_ROWS)]
    rounds = -(-len(chunks) // probe.num_processes)
    rows: list[tuple[int, list[dict[str, Any]]]] = []
    devices = [probe.device] if torch.device(probe.device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        for turn in range(rounds):
            index = turn * probe.num_processes + probe.process_index
            chunk = chunks[min(index, len(chunks) - 1)]
            torch.manual_seed(seed + index)
            texts = [format_prompt(probe.tokenizer, p) for p in chunk]
            samples = rollout.sample(probe.model, probe.tokenizer, texts, probe.settings, probe.device,
                                     probe.generation_weights())
            ro = rollout.score(probe.model, probe.reward, chunk, samples, probe.settings, with_values=False)
            kl = ((ro.logprobs - ro.ref_logprobs) * ro.mask).sum(1)
            if index < len(chunks):
                columns = zip(chunk, ro.responses, ro.scores.tolist(), kl.tolist(), ro.mask.sum(1).tolist())
                rows.append((index, [{"prompt": p, "response": r, "score": float(s), "kl": float(k), "tokens": int(n)}
                                     for p, r, s, k, n in columns]))
    in_order = sorted(gathered(rows, probe.num_processes), key=lambda item: item[0])
    return [row for _, chunk_rows in in_order for row in chunk_rows]


def gathered(items: list, num_processes: int) -> list:
    """Every process's items, in process order."""
    if num_processes == 1:
        return items
    from accelerate.utils import gather_object

    return gather_object(items)


# ---- the score statistics of the starting policy ---------------------------------------------------------------


def measure_score_stats(probe: Probe, prompts: list, rows: int, seed: int) -> dict[str, float]:
    """{"mean", "std"} of the reward's scores on `rows` samples of the starting policy, on prompts drawn from
    `prompts` (cycled when there are fewer): the gain and bias that make the policy's first scores ~N(0, 1)."""
    order = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(seed + STATS_SEED_OFFSET)).tolist()
    chosen = [prompts[order[i % len(order)]] for i in range(rows)]
    scores = [row["score"] for row in sample_and_score(probe, chosen, seed + STATS_SEED_OFFSET)]
    std = statistics.stdev(scores) if len(scores) > 1 else 0.0
    if std <= 1e-8:
        raise ConfigError(f"the reward gives every one of {len(scores)} samples of the starting policy the same score "
                          f"({scores[0]:.4g}); set normalize_scores: false or score_stats: reward_data")
    return {"mean": statistics.fmean(scores), "std": std, "rows": len(scores)}


# ---- the held-out evaluation -----------------------------------------------------------------------------------


@dataclass
class HeldOut:
    """The held-out prompts, the gold judge (or None), and the starting policy's gold scores (the win rate's
    baseline)."""

    prompts: list
    judge: Callable[[Any, str], float] | None
    seed: int
    baseline_gold: list[float] | None = None

    def evaluate(self, probe: Probe) -> tuple[dict[str, float], list[dict[str, Any]]]:
        """(eval/* metrics, the rows with their gold scores) of the policy now."""
        rows = sample_and_score(probe, self.prompts, self.seed + EVAL_SEED_OFFSET)
        metrics = {"eval/rm_score": statistics.fmean(r["score"] for r in rows),
                   "eval/kl": statistics.fmean(r["kl"] for r in rows),
                   "eval/response_length": statistics.fmean(r["tokens"] for r in rows)}
        if self.judge is not None:
            for row in rows:
                row["gold"] = float(self.judge(row["prompt"], row["response"]))
            gold = [r["gold"] for r in rows]
            metrics["eval/gold_score"] = statistics.fmean(gold)
            if self.baseline_gold is not None:
                metrics["eval/win_rate"] = win_rate(gold, self.baseline_gold)
        return metrics, rows


def win_rate(scores: list[float], baseline: list[float]) -> float:
    """Share of paired comparisons the first side wins; ties count half."""
    if len(scores) != len(baseline) or not scores:
        raise ValueError("win_rate needs two equally long, non-empty score lists")
    return sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(scores, baseline)) / len(scores)


def held_out(config, tokenizer) -> HeldOut | None:
    """The held-out set of a PPO config (None without `eval_dataset_path`); a bad judge spec fails here."""
    if not config.eval_dataset_path:
        return None
    judge = import_function(config.gold_judge, "gold_judge") if config.gold_judge else None
    prompts = rollout.read_prompts(config.eval_dataset_path, tokenizer, config.max_prompt_length).prompts
    return HeldOut(prompts, judge, config.seed)
