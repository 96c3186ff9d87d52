"""`rlhf pipeline --config configs/demo/pipeline.yaml`: every stage in order, into one run folder.

Stages whose output is complete are skipped, so the same command resumes an interrupted pipeline. With `--seeds 0,1,2`
it runs once per seed into OUTPUT_DIR/seed-N and summarises the seeds in OUTPUT_DIR/sweep.md (rlhf.sweep)."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from reward import train as reward_stage
from reward.labeling.export import export_file
from reward.labeling.generate import generate_pairs
from reward.labeling.simulate import simulate_annotators
from reward.labeling.stats import compute_stats
from reward.labeling.store import Store
from rlhf import evaluate, report, runs, sft, sweep
from rlhf.config import command_main, import_function, key, load_config, save_config
from rlhf.ppo import train as ppo_stage
from rlhf.ppo.stage_config import PPOStageConfig
from rlhf.sampling import Sampling
from rlhf.tiny import make_tiny_model

# The run folder:
#   base/    the starting model (built offline by `rlhf tiny-model`, or `base_model` if given)
#   sft/     SFT run directory                       (rlhf.sft)
#   labels/  labels.sqlite, prefs.jsonl, stats.json  (reward.labeling: sampled pairs, simulated annotators, export)
#   rm/      reward-model run directory              (reward.train)
#   ppo/     PPO run directory                       (rlhf.ppo.train)
#   eval/    eval.json and eval.md: PPO policy vs the SFT policy on held-out prompts


@dataclass
class PipelineConfig:
    output_dir: str = key("runs/demo", "the pipeline's run folder (one sub-folder per stage)")
    seed: int = key(0, "seed of every stage")
    seeds: list[int] = key([], "a seed sweep, e.g. 0,1,2: one pipeline per seed into output_dir/seed-N (instead of "
                               "seed), then output_dir/sweep.json and sweep.md")
    report_to: Any = key("none", "tracker of every stage: none | wandb | tensorboard (one W&B group per pipeline)")
    base_model: str | None = key(None, "model to start from (name or folder); null: build a tiny model offline")
    tiny_arch: str = key("llama", "architecture of the tiny base model")
    tiny_hidden: int = key(64, "hidden size of the tiny base model")
    tiny_layers: int = key(2, "layers of the tiny base model")
    tiny_heads: int = key(4, "attention heads of the tiny base model")
    tokenizer_corpus: str | None = key(None, "extra text the tiny model's tokenizer is trained on")
    sft_config: str = key("configs/demo/sft.yaml", "SFT stage config")
    reward_config: str = key("configs/demo/reward.yaml", "reward stage config")
    ppo_config: str = key("configs/demo/ppo.yaml", "PPO stage config")
    sft_overrides: dict = key({}, "keys that override the SFT config, e.g. {max_steps: 20}")
    reward_overrides: dict = key({}, "keys that override the reward config")
    ppo_overrides: dict = key({}, "keys that override the PPO config")
    label_prompts: str = key("configs/demo/label_prompts.jsonl", "prompts whose SFT samples are labeled")
    label_samples: int = key(2, "completions per label prompt (every two distinct ones make a pair)")
    label_temperature: float = key(1.0, "sampling temperature of the candidates")
    label_max_new_tokens: int = key(48, "length limit of the candidates")
    annotators: int = key(3, "simulated annotators (each pair is labeled by all of them)")
    annotator_rule: str = key("rlhf.demo_task:judge", "module:function judging (prompt, a, b) -> 'a' | 'b' | 'tie'")
    annotator_noise: float = key(0.1, "probability that an annotator answers with a coin flip")
    min_votes: int = key(2, "pairs with fewer votes are not exported")
    keep_ties: bool = key(False, "export tied pairs too (both orders, margin 0: the reward model learns they are equal)")
    eval_prompts: str = key("configs/demo/eval_prompts.jsonl", "held-out prompts: the final evaluation, and PPO's evaluation during training")
    gold_judge: str | None = key("rlhf.demo_task:gold_score", "module:function(prompt, response) -> gold score")
    eval_max_new_tokens: int = key(48, "length limit of the evaluation samples")
    gold_outcome: str | None = key("rlhf.demo_task:outcome",
                                   "module:function(prompt, response) -> kind, for the sweep's breakdown")

    def __post_init__(self):
        self.seeds = sweep.parse_seeds(self.seeds)


def stage_config(cls, yaml_path: str, wiring: dict, overrides: dict, config: PipelineConfig):
    """A stage's config: its YAML, then the pipeline's wiring (paths, seed, tracker), then user overrides."""
    return load_config(cls, ["--config", yaml_path], {**wiring, "seed": config.seed, "report_to": config.report_to, **overrides})


def build_base(config: PipelineConfig, root: Path) -> None:
    extra = Path(config.tokenizer_corpus).read_text(encoding="utf-8") if config.tokenizer_corpus else ""
    make_tiny_model(root / "base", config.tiny_arch, config.tiny_hidden, config.tiny_layers, config.tiny_heads,
                    config.seed, extra)


def base_path(config: PipelineConfig, root: Path) -> str:
    return config.base_model or str(root / "base")


def train_sft(config: PipelineConfig, root: Path) -> None:
    wiring = {"model_name_or_path": base_path(config, root), "output_dir": str(root / "sft")}
    sft.run(stage_config(sft.SFTStageConfig, config.sft_config, wiring, config.sft_overrides, config))


def collect_labels(config: PipelineConfig, root: Path) -> None:
    """Sample candidate pairs from the SFT policy, have the simulated annotators label them, export."""
    folder = root / "labels"
    store = Store(folder / "labels.sqlite")
    store.set_overlap(config.annotators)
    sampling = Sampling(config.label_samples, config.label_max_new_tokens, config.label_temperature, seed=config.seed)
    pairs, left_out = generate_pairs(str(root / "sft"), config.label_prompts, sampling)
    added, present = store.add_pairs(pairs)
    print(f"  {added} new pairs ({present} already stored, {left_out} empty or repeated samples left out)")
    written = simulate_annotators(folder / "labels.sqlite", import_function(config.annotator_rule, "annotator_rule"), config.annotators,
                                  config.annotator_noise, config.seed)
    print(f"  {config.annotators} simulated annotators wrote {written} labels")
    result = export_file(store, folder / "prefs.jsonl", min_votes=config.min_votes, keep_ties=config.keep_ties)
    print("  " + result.summary().replace("\n", "\n  "))
    runs.write_json(compute_stats(store), folder / "stats.json")


def train_reward(config: PipelineConfig, root: Path) -> None:
    wiring = {"model_name_or_path": str(root / "sft"), "dataset_path": str(root / "labels" / "prefs.jsonl"),
              "output_dir": str(root / "rm")}
    reward_stage.run(stage_config(reward_stage.RewardStageConfig, config.reward_config, wiring, config.reward_overrides, config))


def train_ppo(config: PipelineConfig, root: Path) -> None:
    wiring = {"policy_path": str(root / "sft"), "reward_model_path": str(root / "rm"),
              "output_dir": str(root / "ppo"), "eval_dataset_path": config.eval_prompts,
              "gold_judge": config.gold_judge}
    ppo_stage.run(stage_config(PPOStageConfig, config.ppo_config, wiring, config.ppo_overrides, config))


def run_evaluation(config: PipelineConfig, root: Path) -> None:
    (root / "eval").mkdir(exist_ok=True)
    sampling = Sampling(max_new_tokens=config.eval_max_new_tokens, seed=config.seed)
    evaluate.run_eval(policy=str(root / "ppo"), prompts=config.eval_prompts, baseline=str(root / "sft"),
                reward_model=str(root / "rm"), judge=config.gold_judge, out=root / "eval" / "eval.json",
                sampling=sampling)


def plot_reports(config: PipelineConfig, root: Path) -> None:
    for name in ("sft", "rm", "ppo"):
        report.plot_run(root / name)


# name -> (work, "is it done?")
STAGES: dict[str, tuple[Callable[[PipelineConfig, Path], None], Callable[[PipelineConfig, Path], bool]]] = {
    "base": (build_base, lambda c, r: c.base_model is not None or (r / "base" / "config.json").is_file()),
    "sft": (train_sft, lambda c, r: runs.is_finished(r / "sft")),
    "labels": (collect_labels, lambda c, r: (r / "labels" / "stats.json").is_file()),
    "reward": (train_reward, lambda c, r: runs.is_finished(r / "rm")),
    "ppo": (train_ppo, lambda c, r: runs.is_finished(r / "ppo")),
    "eval": (run_evaluation, lambda c, r: (r / "eval" / "eval.json").is_file()),
    "report": (plot_reports, lambda c, r: (r / "ppo" / "report.png").is_file()),
}


def run(config: PipelineConfig) -> dict[str, Any]:
    """Run (or finish) every stage; returns seconds per stage (0 for skipped ones), per seed for a sweep."""
    if config.seeds:
        return sweep.run(config, run)
    root = Path(config.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    save_config(config, root / "pipeline.yaml")
    os.environ.setdefault("WANDB_RUN_GROUP", f"pipeline-{root.resolve().name}")
    timings_path = root / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    for i, (name, (work, done)) in enumerate(STAGES.items(), start=1):
        prefix = f"[{i}/{len(STAGES)}] {name}"
        if done(config, root):
            print(f"{prefix}: complete, skipped", flush=True)
            continue
        print(f"{prefix}: running", flush=True)
        start = time.perf_counter()
        work(config, root)
        runs.finish_tracking()
        timings[name] = round(time.perf_counter() - start, 1)
        runs.write_json(timings, timings_path)
        print(f"{prefix}: done in {timings[name]:.1f} s", flush=True)
    table = root / "eval" / "eval.md"
    if table.is_file():
        print("\n" + table.read_text())
    print(f"total {sum(timings.values()):.0f} s; outputs in {root}")
    return timings


def main(argv: list[str]) -> int:
    return command_main(argv, PipelineConfig, __doc__, run)
