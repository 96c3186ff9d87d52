"""`rlhf sft --config FILE.yaml [--key value ...]`: supervised fine-tuning with TRL's SFTTrainer.

Writes a run directory (see rlhf.runs) that the reward and PPO stages read."""

from __future__ import annotations

from dataclasses import dataclass

from trl import SFTConfig

from rlhf import datafiles, hf_stage, sft_data
from rlhf.errors import ConfigError, DataError


@dataclass
class SFTStageConfig(hf_stage.StageArgs, SFTConfig):
    """SFT keys: the stage keys (see hf_stage.StageArgs) plus every key of TRL's SFTConfig."""

    output_dir: str = "runs/sft"

    def __post_init__(self):
        self.apply_stage_defaults(default_lr=2e-4)
        super().__post_init__()


def build_datasets(config: SFTStageConfig, tokenizer):
    """Tokenized train/validation/test `datasets.Dataset`s and the length report."""
    import datasets

    if not config.dataset_path:
        raise ConfigError("dataset_path is not set")
    splits = datafiles.read_splits(config.dataset_path)
    checked = {name: sft_data.validate(rows)[1] for name, rows in splits.items()}
    parts = hf_stage.split(checked.get("train", []), checked, config.val_ratio, config.test_ratio, config.seed)
    out, reports = {}, {}
    for name, examples in parts.items():
        tokens, reports[name] = sft_data.tokenize_all(examples, tokenizer, config.max_length, config.too_long)
        out[name] = datasets.Dataset.from_list(tokens) if tokens else None
    if out["train"] is None:
        raise DataError(config.dataset_path, f"no training rows left ({reports['train']}; max_length={config.max_length})")
    return out, reports


def run(config: SFTStageConfig, callbacks: tuple = ()) -> dict:
    """Train and write the run directory; `callbacks` are extra transformers TrainerCallbacks."""
    from transformers import set_seed
    from trl import SFTTrainer

    from rlhf.models import load_causal_lm, load_tokenizer

    if (summary := hf_stage.finished_summary(config)) is not None:
        return summary
    tokenizer = load_tokenizer(config.model_name_or_path, padding_side="right")
    data, reports = build_datasets(config, tokenizer)  # bad rows fail here, before any model is loaded
    for name, report in reports.items():
        print(f"{name}: {report}")
    run_dir, resume = hf_stage.prepare_run_dir(config, "sft")
    set_seed(config.seed)  # before peft wraps the model: LoRA's initial weights come from this seed
    model = load_causal_lm(config.model_name_or_path, config.dtype)
    trainer = SFTTrainer(
        model=model, args=config, train_dataset=data["train"], eval_dataset=data["validation"],
        processing_class=tokenizer, peft_config=hf_stage.peft_config(config, "CAUSAL_LM"),
    )
    counts = hf_stage.data_counts(reports)
    return hf_stage.train_and_finish(trainer, run_dir, resume, data["test"], tokenizer, {"data": counts}, callbacks)


def main(argv: list[str]) -> int:
    return hf_stage.stage_main(argv, SFTStageConfig, run, __doc__)
