"""What the SFT and reward stages (TRL trainers) share and TRL leaves to the user: stage keys, peft set-up, data
splits, a resumable run directory, early stopping, and test-set figures at the end."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import EarlyStoppingCallback, TrainerCallback

from rlhf import runs
from rlhf.config import command_main, key, on_gpu
from rlhf.errors import ConfigError

PEFT_METHODS = ("lora", "full", "prompt_tuning", "prefix_tuning")


@dataclass
class StageArgs:
    """Keys common to the trainer-based stages (mixed into TRL's config classes)."""

    model_name_or_path: str | None = key(None, "hub name, model folder, or a previous stage's run directory")
    dataset_path: str | None = key(None, "JSONL/JSON/CSV/Parquet file or saved `datasets` folder")
    peft_method: str = key("lora", "lora | full | prompt_tuning | prefix_tuning")
    lora_r: int = key(16, "LoRA rank")
    lora_alpha: int = key(32, "LoRA alpha (scale = alpha / r)")
    lora_dropout: float = key(0.0, "LoRA dropout")
    lora_target_modules: Any = key("all-linear", "module names, or 'all-linear'")
    num_virtual_tokens: int = key(16, "virtual tokens for prompt/prefix tuning")
    val_ratio: float = key(0.1, "fraction held out for validation when the data has no validation split")
    test_ratio: float = key(0.1, "fraction held out for the final test when the data has no test split")
    early_stopping_patience: int | None = key(None, "stop after this many evaluations without improvement")
    too_long: str = key("truncate", "rows over max_length: truncate | drop (the count is reported either way)")
    dtype: str = key("auto", "auto (bf16 on a GPU that has it, else fp32) | bfloat16 | float16 | float32")

    # Trainer keys whose TRL defaults are GPU-first or unsuited to a run directory; None = resolved below.
    bf16: bool | None = None
    gradient_checkpointing: bool | None = None
    learning_rate: float | None = None
    max_length: int | None = 512
    report_to: str | list[str] = "none"
    logging_steps: float = 5
    eval_strategy: str = "steps"
    eval_steps: float = 50
    save_steps: float = 50
    save_total_limit: int | None = 2
    metric_for_best_model: str | None = "eval_loss"
    greater_is_better: bool | None = False
    lr_scheduler_type: str = "cosine"
    warmup_steps: float = 0.03

    def apply_stage_defaults(self, default_lr: float) -> None:
        """Resolve CPU/GPU-dependent defaults before TrainingArguments validates itself."""
        if self.peft_method not in PEFT_METHODS:
            raise ConfigError(f"peft_method '{self.peft_method}' is not one of {', '.join(PEFT_METHODS)}")
        if self.too_long not in ("truncate", "drop"):
            raise ConfigError(f"too_long '{self.too_long}' must be 'truncate' or 'drop'")
        if self.bf16 is None:
            self.bf16 = on_gpu() and self.dtype in ("auto", "bfloat16")
        if self.gradient_checkpointing is None:
            self.gradient_checkpointing = on_gpu()
        if self.learning_rate is None:
            self.learning_rate = 2e-5 if self.peft_method == "full" else default_lr
        if self.val_ratio <= 0:
            self.eval_strategy = "no"
        if self.eval_strategy != "no" and self.save_strategy == "steps" and self.save_steps % self.eval_steps:
            self.save_steps = self.eval_steps * max(1, round(self.save_steps / self.eval_steps))
        self.load_best_model_at_end = self.eval_strategy != "no"
        if self.early_stopping_patience and self.eval_strategy == "no":
            raise ConfigError("early_stopping_patience needs a validation split (val_ratio > 0)")
        self.join_cpu_processes()

    def join_cpu_processes(self) -> None:
        """Several launched processes on a machine without GPUs: make them one gloo group.

        Without this, transformers leaves each CPU process on its own (N copies training alone);
        it joins them when told it runs on CPU, and DeepSpeed's CPU accelerator when given gloo.
        """
        if on_gpu() or runs.launched_processes() < 2:
            return
        if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
            self.ddp_backend = self.ddp_backend or "gloo"
        else:
            self.use_cpu = True


@dataclass
class LengthReport:
    """Rows of a split, how many were over `max_length`, and how many of those were dropped (for summary.json)."""

    rows: int = 0
    too_long: int = 0
    dropped: int = 0

    def __str__(self) -> str:
        action = f"dropped {self.dropped}" if self.dropped else "truncated"
        return f"{self.rows} rows, {self.too_long} over max_length ({action})"


def peft_config(args: StageArgs, task_type: str):
    """peft config for the stage's method (None for full fine-tuning)."""
    from peft import LoraConfig, PrefixTuningConfig, PromptTuningConfig

    if args.peft_method == "full":
        return None
    if args.peft_method == "lora":
        target = args.lora_target_modules
        modules_to_save = ["score"] if task_type == "SEQ_CLS" else None
        return LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                          target_modules=target, task_type=task_type, modules_to_save=modules_to_save)
    if args.peft_method == "prompt_tuning":
        return PromptTuningConfig(num_virtual_tokens=args.num_virtual_tokens, task_type=task_type)
    return PrefixTuningConfig(num_virtual_tokens=args.num_virtual_tokens, task_type=task_type)


def split(rows: list, splits: dict[str, list], val_ratio: float, test_ratio: float, seed: int) -> dict[str, list]:
    """train/validation/test: explicit splits when the source has them, else a seeded ratio split."""
    import random

    explicit = {name: data for name, data in splits.items() if name in ("validation", "test")}
    if explicit:
        return {"train": splits.get("train", rows), "validation": explicit.get("validation", []), "test": explicit.get("test", [])}
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_test = int(round(len(rows) * test_ratio))
    n_val = int(round(len(rows) * val_ratio))
    if val_ratio > 0 and n_val == 0 and len(rows) > 2:
        n_val = 1
    if test_ratio > 0 and n_test == 0 and len(rows) > 2:
        n_test = 1
    pick = lambda ids: [rows[i] for i in sorted(ids)]  # noqa: E731 - keep the file's order inside a split
    return {"test": pick(order[:n_test]), "validation": pick(order[n_test:n_test + n_val]),
            "train": pick(order[n_test + n_val:])}


class RunDirCallback(TrainerCallback):
    """metrics.jsonl from the trainer's logs, and a COMPLETE marker once a checkpoint is fully saved."""

    def __init__(self, run_dir: Path):
        self.metrics = runs.MetricsFile(run_dir)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            self.metrics.log(state.global_step, metric_names(logs))

    def on_save(self, args, state, control, **kwargs):
        args.distributed_state.wait_for_everyone()  # every process's shards and RNG state are on disk
        if state.is_world_process_zero:
            runs.mark_complete(Path(args.output_dir) / f"checkpoint-{state.global_step}")


def metric_names(logs: dict[str, Any]) -> dict[str, Any]:
    """HF log keys to the project's names: loss -> train/loss, eval_loss -> eval/loss, test_x -> test/x."""
    out = {}
    for name, value in logs.items():
        if name.startswith("eval_"):
            out["eval/" + name[5:]] = value
        elif name.startswith("test_"):
            out["test/" + name[5:]] = value
        elif not name.startswith(("train_runtime", "train_samples", "train_steps", "train_loss", "total_flos")):
            out["train/" + name.removeprefix("train_")] = value
    return out


def finished_summary(config) -> dict | None:
    """Check the model is set; the summary of an already finished run (which is then not trained again)."""
    if not config.model_name_or_path:
        raise ConfigError("model_name_or_path is not set")
    if runs.is_finished(config.output_dir):
        print(f"{config.output_dir} is already finished (summary.json); nothing to do")
        return runs.read_summary(config.output_dir)
    return None


def data_counts(reports: dict) -> dict[str, int]:
    """Per split: rows, rows over max_length, rows dropped (for summary.json)."""
    return {f"{name}_{what}": getattr(report, what) for name, report in reports.items()
            for what in ("rows", "too_long", "dropped")}


def stage_main(argv: list[str], config_class, run, doc: str) -> int:
    """`rlhf STAGE` entry point of a trainer-based stage: `command_main`, printing the summary."""
    return command_main(argv, config_class, doc, lambda config: print({k: v for k, v in run(config).items()
                                                                         if k != "data"}))


def prepare_run_dir(config, stage: str) -> tuple[Path, Path | None]:
    """`runs.prepare` the run directory, then point the trainer at its checkpoints/ and name the tracker run."""
    run_dir = Path(config.output_dir)
    resume = runs.prepare(run_dir, config, config.process_index == 0, config.distributed_state.wait_for_everyone)
    runs.setup_tracking(config.report_to, run_dir, stage)
    config.output_dir = str(run_dir / runs.CHECKPOINTS)
    if not config.run_name or config.run_name == str(run_dir / runs.CHECKPOINTS):
        config.run_name = f"{run_dir.name}-{stage}"
    return run_dir, resume


def train_and_finish(trainer, run_dir: Path, resume: Path | None, test_dataset, tokenizer, extra_summary: dict,
                     callbacks: tuple = (), perplexity: bool = True, after_test=None) -> dict:
    """Train (resuming if asked), save `final/` atomically, evaluate on the test split, write summary.json.

    `perplexity`: report exp(test loss) (language-model stages). `after_test(trainer) -> dict`: the stage's own
    finishing work (e.g. reward statistics), run by every process before `final/`; its result joins the summary.
    """
    if trainer.accelerator.num_processes != runs.launched_processes():
        raise ConfigError(f"{runs.launched_processes()} processes were launched but the trainer runs as "
                          f"{trainer.accelerator.num_processes}; see docs/distributed.md")
    callbacks = [RunDirCallback(run_dir), *callbacks]
    if trainer.args.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(trainer.args.early_stopping_patience))
    for cb in callbacks:
        trainer.add_callback(cb)
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    summary = {"global_step": trainer.state.global_step, "world_size": trainer.accelerator.num_processes,
               "train_loss": mean_over_processes(trainer, result.training_loss), **extra_summary}
    if test_dataset is not None and len(test_dataset):
        test = trainer.evaluate(test_dataset, metric_key_prefix="test")
        summary.update(metric_names(test))  # the trainer already logged these to metrics.jsonl
        if perplexity and "test_loss" in test:
            summary["test/perplexity"] = math.exp(min(test["test_loss"], 50.0))
            if trainer.is_world_process_zero():
                runs.MetricsFile(run_dir).log(trainer.state.global_step, {"test/perplexity": summary["test/perplexity"]})
    if after_test is not None:
        summary.update(after_test(trainer))
    trainer.accelerator.wait_for_everyone()
    save_final(trainer, run_dir, tokenizer)
    if trainer.is_world_process_zero():
        runs.write_summary(run_dir, summary)
    return summary


def mean_over_processes(trainer, value: float) -> float:
    """The trainer's `training_loss` covers only the steps its own process saw since the last log."""
    import torch

    return trainer.accelerator.reduce(torch.tensor(value, device=trainer.accelerator.device), "mean").item()


def save_final(trainer, run_dir: Path, tokenizer) -> None:
    """Every process takes part in saving (ZeRO-3 gathers shards); the main one renames `final/` into place."""
    final = run_dir / runs.FINAL
    tmp = runs.staging_dir(final) if trainer.is_world_process_zero() else final.with_name(runs.FINAL + ".tmp")
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(tmp))
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(tmp))
        (tmp / "README.md").unlink(missing_ok=True)  # TRL's model card names machine paths
        runs.replace_dir(tmp, final)
    trainer.accelerator.wait_for_everyone()
