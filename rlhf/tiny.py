"""`rlhf tiny-model`: a randomly initialised model folder with an offline-trained tokenizer, for tests and the demo."""

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from rlhf.config import command_main, key
from rlhf.errors import ConfigError

# The tokenizer is a byte-level BPE trained on text shipped with the package, so any string can be encoded; it has
# distinct pad/bos/eos/unk tokens, left padding, and a chat template whose assistant turns are wrapped in
# `{% generation %}` markers (what TRL's assistant-only loss needs).

ARCHITECTURES = ("llama", "qwen2", "gpt2", "gpt_neox")
SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "<|im_end|>", "unk_token": "<unk>"}
CHAT_START = "<|im_start|>"

# ChatML-style; the assistant's text and its closing <|im_end|> (the EOS the policy must learn to
# emit) are inside the generation block, so they are the tokens that carry the loss.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def default_corpus() -> str:
    return resources.files("rlhf").joinpath("assets/tokenizer_corpus.txt").read_text(encoding="utf-8")


def build_tokenizer(extra_text: str = "", vocab_size: int = 1024):
    """Train a byte-level BPE on the shipped corpus (plus `extra_text`) and wrap it for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = list(SPECIAL_TOKENS.values()) + [CHAT_START]
    tokenizer = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = (default_corpus() + "\n" + extra_text).splitlines()
    tokenizer.train_from_iterator(lines, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        padding_side="left",
        additional_special_tokens=[CHAT_START],
        **SPECIAL_TOKENS,
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def build_config(arch: str, vocab_size: int, hidden: int, layers: int, heads: int, special_ids: dict[str, int]):
    """A small transformers config of the given architecture."""
    from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig, Qwen2Config

    common = dict(vocab_size=vocab_size, tie_word_embeddings=False, **special_ids)
    if arch == "llama":
        return LlamaConfig(hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                           num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=1024, **common)
    if arch == "qwen2":
        return Qwen2Config(hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                           num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
                           max_position_embeddings=1024, **common)
    if arch == "gpt2":
        return GPT2Config(n_embd=hidden, n_layer=layers, n_head=heads, n_positions=1024, **common)
    if arch == "gpt_neox":
        return GPTNeoXConfig(hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                             num_attention_heads=heads, max_position_embeddings=1024, **common)
    raise ValueError(f"unknown architecture '{arch}' (choose from {', '.join(ARCHITECTURES)})")


def make_tiny_model(output: str | Path, arch: str = "llama", hidden: int = 64, layers: int = 2, heads: int = 4,
                    seed: int = 0, extra_text: str = "", vocab_size: int = 1024) -> Path:
    """Write a random `arch` model and its tokenizer to `output`; returns the folder."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture '{arch}' (choose from {', '.join(ARCHITECTURES)})")
    output = Path(output)
    tokenizer = build_tokenizer(extra_text, vocab_size)
    special_ids = {"pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
                   "eos_token_id": tokenizer.eos_token_id}
    config = build_config(arch, len(tokenizer), hidden, layers, heads, special_ids)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config = GenerationConfig(**special_ids)
    model.save_pretrained(output)
    tokenizer.save_pretrained(output)
    return output


@dataclass
class TinyModelConfig:
    """`rlhf tiny-model` keys."""

    output: str | None = key(None, "folder to write the model and tokenizer to (required)")
    arch: str = key("llama", "architecture: " + " | ".join(ARCHITECTURES))
    hidden: int = key(64, "hidden size")
    layers: int = key(2, "transformer layers")
    heads: int = key(4, "attention heads")
    seed: int = key(0, "seed of the random weights")
    vocab_size: int = key(1024, "vocabulary size the tokenizer is trained to")
    corpus: list[str] = key([], "extra text file(s) for the tokenizer (repeat --corpus for several)")

    def __post_init__(self):
        if not self.output:
            raise ConfigError("output is not set")
        if self.arch not in ARCHITECTURES:
            raise ConfigError(f"arch '{self.arch}' is not one of {', '.join(ARCHITECTURES)}")
        for name in ("hidden", "layers", "heads", "seed", "vocab_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{name} must be an integer, got {value!r}")
            if name != "seed" and value < 1:
                raise ConfigError(f"{name} must be at least 1, got {value}")
        corpus = self.corpus if isinstance(self.corpus, (list, tuple)) else [] if self.corpus is None else [self.corpus]
        self.corpus = [str(p) for p in corpus]


def tiny_model_command(config: TinyModelConfig) -> int:
    extra = "\n".join(Path(p).read_text(encoding="utf-8") for p in config.corpus)
    out = make_tiny_model(config.output, config.arch, config.hidden, config.layers, config.heads, config.seed, extra,
                          config.vocab_size)
    print(f"wrote {config.arch} model to {out}")
    return 0


def main(argv: list[str]) -> int:
    return command_main(argv, TinyModelConfig, __doc__, tiny_model_command)
