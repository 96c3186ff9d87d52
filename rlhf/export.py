"""`rlhf export RUN_DIR --out DIR`: a standalone model folder (safetensors + tokenizer) from a run.

A LoRA adapter is merged into its base; prompt and prefix tuning add virtual tokens and cannot be merged."""

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from rlhf import runs
from rlhf.config import command_main, key
from rlhf.errors import ConfigError
from rlhf.models import load_causal_lm, load_tokenizer, read_adapter_config, resolve

DTYPES = ("auto", "bfloat16", "float16", "float32")


def adapter_type(adapter_dir: str) -> str:
    return read_adapter_config(adapter_dir)["peft_type"]


def export(run_dir: str, out: str | Path, dtype: str = "auto") -> Path:
    """Merge the run's adapter (if any) into its base and write the full model and tokenizer to `out`."""
    source = resolve(run_dir)
    if source.adapter and adapter_type(source.adapter) != "LORA":
        raise ConfigError(f"{run_dir}: a {adapter_type(source.adapter)} adapter adds virtual tokens and cannot be "
                          "merged into the weights; load it with peft on top of its base instead")
    model = load_causal_lm(run_dir, dtype, merge=True)
    tokenizer = load_tokenizer(source)
    with runs.atomic_dir(out) as tmp:
        model.save_pretrained(tmp)  # safetensors
        tokenizer.save_pretrained(tmp)
    return Path(out)


@dataclass
class ExportConfig:
    """`rlhf export` keys; the run directory may come first without its key (`rlhf export RUN_DIR --out DIR`)."""

    POSITIONAL: ClassVar[tuple[str, ...]] = ("run_dir",)

    run_dir: str | None = key(None, "run directory (or adapter/model folder) to export (required)")
    out: str | None = key(None, "folder to write the merged model to (required)")
    dtype: str = key("auto", "dtype of the written weights: " + " | ".join(DTYPES))

    def __post_init__(self):
        for name in ("run_dir", "out"):
            if not getattr(self, name):
                raise ConfigError(f"{name} is not set")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype '{self.dtype}' is not one of {', '.join(DTYPES)}")


def export_command(config: ExportConfig) -> int:
    out = export(config.run_dir, config.out, config.dtype)
    print(f"wrote a standalone model to {out}")
    return 0


def main(argv: list[str]) -> int:
    return command_main(argv, ExportConfig, __doc__, export_command)
