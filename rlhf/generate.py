"""`rlhf generate --model DIR_OR_RUN --prompt "..."`: print completions from a model, adapter or run directory.

Prompts go through the model's chat template as one user turn (see rlhf.chat.format_prompt)."""

from dataclasses import dataclass

from rlhf.config import command_main, key
from rlhf.errors import ConfigError
from rlhf.sampling import Sampling, load_for_generation, sample


def as_list(value) -> list:
    """A list key given once as a plain value (a positional argument, a YAML scalar) as a one-item list."""
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


@dataclass
class GenerateConfig(Sampling):
    """`rlhf generate` keys: the model, the prompts, and the sampling keys (greedy by default)."""

    temperature: float = key(0.0, "sampling temperature; 0 = greedy")
    model: str | None = key(None, "hub name, model folder, adapter folder or run directory (required)")
    prompt: list[str] = key([], "a prompt (required; repeat --prompt for several)")

    def __post_init__(self):
        self.prompt = [str(p) for p in as_list(self.prompt)]
        if not self.model:
            raise ConfigError("model is not set")
        if not self.prompt:
            raise ConfigError("prompt is not set")
        super().__post_init__()


def generate_command(config: GenerateConfig) -> int:
    model, tokenizer = load_for_generation(config.model)
    outputs = sample(model, tokenizer, config.prompt, **vars(config.sampling()))
    for prompt, completions in zip(config.prompt, outputs):
        print(f"### {prompt}")
        for i, completion in enumerate(completions, start=1):
            print(f"[{i}] {completion}" if config.n > 1 else completion)
    return 0


def main(argv: list[str]) -> int:
    return command_main(argv, GenerateConfig, __doc__, generate_command)
