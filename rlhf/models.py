"""Loading models and tokenizers from a hub name, a model folder, or a previous stage's run directory."""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rlhf.convert import gguf_source, local_model
from rlhf.errors import ConfigError
from rlhf.runs import CONFIG, FINAL

# A run directory's `final/` holds either full weights or a peft adapter (with the base's name or path recorded in
# `adapter_config.json`); both resolve here to "base + optional adapter". A `.gguf` file or a known model name
# resolves to its converted folder in the cache (rlhf.convert), wherever a model is named.

ADAPTER_CONFIG = "adapter_config.json"  # a peft adapter folder: its config (naming its base) and weights
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def read_adapter_config(adapter_dir: str | Path) -> dict:
    """The `adapter_config.json` of a peft adapter folder, with a clear error when it is unreadable."""
    path = Path(adapter_dir) / ADAPTER_CONFIG
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: cannot read the adapter config: {e}") from e


def position_ids(attention_mask):
    """Positions counted from each row's first real token (left padding), as `generate` counts them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


@dataclass(frozen=True)
class ModelSource:
    base: str  # hub name or folder with full weights
    adapter: str | None  # folder with a peft adapter on top of `base`, if any
    tokenizer: str  # where the tokenizer lives
    merged: tuple[str, ...] = ()  # LoRA adapters merged into `base` first, in order (e.g. SFT under a PPO adapter)


def resolve(path_or_name: str) -> ModelSource:
    """Resolve a run directory, a model/adapter folder, a `.gguf` file, a known model name, or a hub name."""
    path = Path(local_model(path_or_name))
    if (path / FINAL).is_dir():
        path = path / FINAL
    elif path.is_dir() and (path / CONFIG).is_file() and not (path / "config.json").is_file():
        raise ConfigError(f"{path_or_name}: run directory has no `{FINAL}/` yet (did that stage finish?)")
    if (path / ADAPTER_CONFIG).is_file():
        base = read_adapter_config(path)["base_model_name_or_path"]
        inner = resolve(base)  # the base may itself be base + adapter (e.g. PPO on an SFT adapter)
        if inner.adapter is not None and not _is_lora(inner.adapter):
            raise ConfigError(f"{path}: adapter on top of a non-LoRA adapter; export the base with `rlhf export` first")
        tokenizer = str(path) if (path / "tokenizer_config.json").is_file() else inner.tokenizer
        merged = inner.merged + ((inner.adapter,) if inner.adapter else ())
        return ModelSource(inner.base, str(path), tokenizer, merged)
    where = str(path) if path.exists() else path_or_name
    return ModelSource(where, None, where)


def load_tokenizer(source: str | ModelSource, padding_side: str = "left"):
    from transformers import AutoTokenizer

    src = source if isinstance(source, ModelSource) else resolve(source)
    tokenizer = AutoTokenizer.from_pretrained(src.tokenizer)
    tokenizer.padding_side = padding_side
    if tokenizer.pad_token is None:  # many base models ship without one; EOS is the usual stand-in
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def torch_dtype(name: str):
    import torch

    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[name]


def load_causal_lm(path_or_name: str, dtype: str = "auto", merge: bool = True):
    """Base causal LM with the run's adapter applied; LoRA adapters are merged into the weights."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    src = resolve(path_or_name)
    model = AutoModelForCausalLM.from_pretrained(src.base, dtype=torch_dtype(dtype))
    keep_source_name(model, path_or_name)
    for adapter in src.merged:
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    if src.adapter:
        model = PeftModel.from_pretrained(model, src.adapter)
        if merge and model.peft_config["default"].peft_type.value == "LORA":
            model = model.merge_and_unload()
    return model


def keep_source_name(model, path_or_name: str) -> None:
    """A model loaded from a converted GGUF is named by the file or model name it came from, not by its cache
    folder, so that adapters trained on it record that name as their base (and resolve it again anywhere)."""
    if gguf_source(path_or_name) is not None:
        model.name_or_path = path_or_name


def _is_lora(adapter_dir: str) -> bool:
    return read_adapter_config(adapter_dir).get("peft_type") == "LORA"


def load_sequence_classifier(path_or_name: str, dtype: str = "auto"):
    """A scalar-output model (reward/value) built on a causal LM base, with any causal-LM adapter merged.

    A run directory from SFT holds a causal-LM LoRA adapter: its body weights are merged first,
    then the causal LM's body is loaded into the classifier, which gets a fresh `score` head.
    """
    from transformers import AutoModelForSequenceClassification

    src = resolve(path_or_name)
    model = AutoModelForSequenceClassification.from_pretrained(src.base, num_labels=1, dtype=torch_dtype(dtype))
    keep_source_name(model, path_or_name)
    if src.adapter:
        merged = load_causal_lm(path_or_name, dtype)
        body = {k: v for k, v in merged.state_dict().items() if not k.startswith(_lm_head_names(merged))}
        missing, unexpected = model.load_state_dict(body, strict=False)
        if unexpected or any(not k.startswith("score") for k in missing):
            raise ConfigError(f"{path_or_name}: adapter body does not match the classifier ({unexpected[:3]} {missing[:3]})")
        model.name_or_path = path_or_name  # adapters trained on top record the run (not the bare base) as base
    if model.config.pad_token_id is None:
        model.config.pad_token_id = load_tokenizer(src).pad_token_id
    return model


def _lm_head_names(model) -> tuple[str, ...]:
    head = model.get_output_embeddings()
    return tuple(name for name, module in model.named_modules() if module is head and name)


def disable_dropout(model) -> None:
    """Dropout off everywhere: RL log-prob ratios and reward scores must be deterministic, also in train mode.

    Beside `nn.Dropout` modules, many attention layers apply functional dropout with a rate copied from the config
    at build time (`self.attention_dropout`), so rates are zeroed on the modules and on every config as well."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        for holder in (module, getattr(module, "config", None)):
            for name, value in list(vars(holder).items()) if holder is not None else ():
                if isinstance(value, float) and not isinstance(value, bool) and _is_dropout_rate(name):
                    setattr(holder, name, 0.0)


def _is_dropout_rate(name: str) -> bool:
    return name.endswith(("dropout", "_pdrop", "dropout_rate", "dropout_prob")) and not name.startswith("_")


@contextmanager
def final_states(body):
    """A list that receives the `last_hidden_state` output of `body` (a transformer body) at each forward inside."""
    kept: list = []
    handle = body.register_forward_hook(lambda module, args, output: kept.append(output.last_hidden_state))
    try:
        yield kept
    finally:
        handle.remove()
