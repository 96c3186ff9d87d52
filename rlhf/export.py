"""`rlhf export RUN_DIR --out DIR`: a standalone model folder (safetensors + tokenizer) from a run.

A LoRA run's `final/` is an adapter on a base model; export merges it into the base weights, so the
result loads with plain `AutoModelForCausalLM.from_pretrained(DIR)` and needs neither peft nor the
base. Prompt and prefix tuning add virtual tokens rather than weight deltas and cannot be merged.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rlhf import runs
from rlhf.errors import ConfigError
from rlhf.models import load_causal_lm, load_tokenizer, resolve


def adapter_type(adapter_dir: str) -> str:
    return json.loads((Path(adapter_dir) / "adapter_config.json").read_text())["peft_type"]


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


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="rlhf export", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="run directory (or adapter/model folder) to export")
    parser.add_argument("--out", required=True, help="folder to write the merged model to")
    parser.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float16", "float32"))
    args = parser.parse_args(argv)
    out = export(args.run_dir, args.out, args.dtype)
    print(f"wrote a standalone model to {out}")
    return 0
