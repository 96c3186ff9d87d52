"""`rlhf reward --config FILE.yaml [--key value ...]`: train a reward model on preference pairs (TRL's RewardTrainer).

Writes held-out pairwise accuracy to metrics.jsonl and summary.json, and `reward_stats.json` for PPO."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from trl import RewardConfig, RewardTrainer

from reward import pairs as pairs_lib
from reward.score import MARGIN_BUCKETS, pair_metrics
from rlhf import hf_stage
from rlhf import runs
from rlhf.config import key
from rlhf.hf_stage import LengthReport
from rlhf.errors import ConfigError

# Pairs in any supported format (reward.pairs) are rendered through the chat template, then a LoRA adapter plus the
# score head (or all weights) is trained with the Bradley-Terry loss, optionally with per-pair margins and reward
# centering.

@dataclass
class RewardStageConfig(hf_stage.StageArgs, RewardConfig):
    """Reward keys: the stage keys (see hf_stage.StageArgs and below) plus every key of TRL's RewardConfig
    (e.g. center_rewards_coefficient)."""

    output_dir: str = "runs/rm"
    data_format: str = key("auto", "auto | pairs | hosted | hh | label_export (see reward/pairs.py)")
    drop_bad_rows: bool = key(False, "false: a bad row is an error; true: bad rows are dropped, counted and reported")
    margin_column: str | None = key("margin", "field with a per-pair margin m, loss -logsigmoid(r_c - r_r - m); "
                                              "null ignores margins")
    margin_buckets: list = key(list(MARGIN_BUCKETS), "margin edges for held-out accuracy by margin bucket")
    # The checkpoint kept at the end (and early stopping, with early_stopping_patience) follows validation accuracy:
    # what PPO needs from a reward model is the ranking, and the loss keeps falling on confident pairs after it stops
    # improving.
    metric_for_best_model: str | None = "eval_accuracy"
    greater_is_better: bool | None = True

    def __post_init__(self):
        self.apply_stage_defaults(default_lr=1e-4)
        if self.data_format not in ("auto", *pairs_lib.FORMATS):
            raise ConfigError(f"data_format '{self.data_format}' is not one of auto, {', '.join(pairs_lib.FORMATS)}")
        edges = self.margin_buckets
        if not all(isinstance(e, (int, float)) for e in edges) or edges != sorted(edges):
            raise ConfigError(f"margin_buckets {self.margin_buckets} must be increasing numbers")
        super().__post_init__()


class PreferenceTrainer(RewardTrainer):
    """TRL's RewardTrainer (its loss: Bradley-Terry, margin, centering) with exact held-out metrics.

    TRL averages per-batch accuracies and, when evaluating with another prefix (the test split), logs them under
    `eval_`. Here every evaluated pair's rewards are kept, and accuracy, mean margin and accuracy by margin bucket
    are computed over all of them under the evaluation's own prefix.
    """

    def __init__(self, *args, margin_buckets: list[float] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.data_collator = with_ties(self.data_collator)
        self.margin_buckets = list(margin_buckets)
        self.pair_rewards = torch.empty(0, 4)  # (chosen, rejected, margin or NaN, tie) of the last evaluation
        self._evaluated: list[torch.Tensor] = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        ties = inputs.pop("tie", None)  # TRL's loss passes every other key to the model
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if not self.model.training:
            chosen, rejected = outputs.logits.detach().float().squeeze(-1).chunk(2)
            margin = inputs["margin"].float() if "margin" in inputs else torch.full_like(chosen, float("nan"))
            tie = torch.zeros_like(chosen) if ties is None else ties.to(chosen)
            rows = torch.stack([chosen, rejected, margin, tie], dim=1)
            batch = self.accelerator.gather_for_metrics(rows)
            self._evaluated.append(batch.cpu())
        return (loss, outputs) if return_outputs else loss

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval"):
        self._evaluated = []
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        self._metrics["eval"].clear()  # TRL's per-batch averages; replaced by the exact figures below
        self.pair_rewards = torch.cat(self._evaluated) if self._evaluated else torch.empty(0, 4)
        if len(self.pair_rewards):
            chosen, rejected, margin, ties = self.pair_rewards.unbind(1)
            metrics = pair_metrics(chosen, rejected, None if margin.isnan().any() else margin, self.margin_buckets,
                                   ties.bool())
            output.metrics.update({f"{metric_key_prefix}_{name}": value for name, value in metrics.items()})
        return output


    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if "tie" not in self._signature_columns:  # kept through `remove_unused_columns` for with_ties
            self._signature_columns = [*self._signature_columns, "tie"]


def with_ties(collate):
    """TRL's preference collator, plus each pair's `tie` flag (its collator keeps only ids and margins)."""
    def collate_with_ties(examples: list[dict]) -> dict:
        batch = collate(examples)
        batch["tie"] = torch.tensor([bool(example["tie"]) for example in examples])
        return batch
    return collate_with_ties


def tokenize_pairs(pairs: list[pairs_lib.PreferencePair], tokenizer, max_length: int | None,
                   too_long: str) -> tuple[list[dict], LengthReport]:
    """`chosen_ids`/`rejected_ids` (and `margin`) per pair; over-long pairs truncated (keep the start) or dropped."""
    report, out = LengthReport(rows=len(pairs)), []
    for pair in pairs:
        chosen = pairs_lib.encode(tokenizer, pair.prompt, pair.chosen)
        rejected = pairs_lib.encode(tokenizer, pair.prompt, pair.rejected)
        if max_length and max(len(chosen), len(rejected)) > max_length:
            report.too_long += 1
            chosen, rejected = chosen[:max_length], rejected[:max_length]
            if too_long == "drop" or chosen == rejected:  # truncation may cut off the only difference
                report.dropped += 1
                continue
        record = {"chosen_ids": chosen, "rejected_ids": rejected, "tie": pair.tie}
        if pair.margin is not None:
            record["margin"] = pair.margin
        out.append(record)
    return out, report


def build_datasets(config: RewardStageConfig, tokenizer):
    """Tokenized train/validation/test `datasets.Dataset`s (None when empty), length reports, dropped bad rows."""
    import datasets

    if not config.dataset_path:
        raise ConfigError("dataset_path is not set")
    splits, dropped = pairs_lib.load_pair_splits(config.dataset_path, config.data_format, config.drop_bad_rows,
                                                 config.margin_column)
    parts = hf_stage.split(splits.get("train", []), splits, config.val_ratio, config.test_ratio, config.seed)
    out, reports = {}, {}
    for name, split_pairs in parts.items():
        records, reports[name] = tokenize_pairs(split_pairs, tokenizer, config.max_length, config.too_long)
        out[name] = datasets.Dataset.from_list(records) if records else None
    if out["train"] is None:
        raise ConfigError(f"{config.dataset_path}: no training pairs left after the split and length limits")
    return out, reports, dropped


def reward_stats(trainer: PreferenceTrainer, run_dir: Path) -> dict:
    """Mean and std (population) of the reward over every training response, chosen and rejected, written to
    `reward_stats.json` so that PPO can normalise scores."""
    trainer.predict(trainer.train_dataset, metric_key_prefix="train")
    rewards = trainer.pair_rewards[:, :2].flatten().double()
    stats = {"mean": rewards.mean().item(), "std": rewards.std(correction=0).item(), "count": rewards.numel()}
    if trainer.is_world_process_zero():
        runs.write_json(stats, run_dir / runs.REWARD_STATS)
    return {"reward_stats": stats}


def run(config: RewardStageConfig, callbacks: tuple = ()) -> dict:
    """Train and write the run directory; `callbacks` are extra transformers TrainerCallbacks."""
    from transformers import set_seed

    from rlhf.models import load_sequence_classifier, load_tokenizer

    if (summary := hf_stage.finished_summary(config)) is not None:
        return summary
    tokenizer = load_tokenizer(config.model_name_or_path, padding_side="right")
    data, reports, dropped = build_datasets(config, tokenizer)  # bad rows fail here, before any model is loaded
    if config.drop_bad_rows:
        print(pairs_lib.describe_drops(dropped))
    for name, report in reports.items():
        print(f"{name}: {report}")
    run_dir, resume = hf_stage.prepare_run_dir(config, "reward")
    set_seed(config.seed)  # before peft wraps the model: LoRA's initial weights come from this seed
    model = load_sequence_classifier(config.model_name_or_path, config.dtype)
    trainer = PreferenceTrainer(
        model=model, args=config, train_dataset=data["train"], eval_dataset=data["validation"],
        processing_class=tokenizer, peft_config=hf_stage.peft_config(config, "SEQ_CLS"),
        margin_buckets=config.margin_buckets,
    )
    facts = {**hf_stage.data_counts(reports), "bad_rows_dropped": len(dropped),
             "bad_rows": pairs_lib.dropped_rows(dropped)}  # every dropped row: file:line, field, reason
    return hf_stage.train_and_finish(trainer, run_dir, resume, data["test"], tokenizer, {"data": facts}, callbacks,
                                     perplexity=False, after_test=lambda t: reward_stats(t, run_dir))


def main(argv: list[str]) -> int:
    return hf_stage.stage_main(argv, RewardStageConfig, run, __doc__)
