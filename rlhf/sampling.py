"""Sampling completions for label candidates, evaluation and `rlhf generate`, with the keys commands share; and
`generate_ids`, the one function that samples token ids (PPO's rollouts too)."""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from dataclasses import dataclass

from rlhf.chat import Prompt, format_prompt
from rlhf.config import key
from rlhf.errors import ConfigError

@dataclass
class Sampling:
    """How completions are sampled (`rlhf generate`, `rlhf eval`, `rlhf label generate`, the pipeline).

    A command's config inherits these keys (re-declaring a key changes its default there); `sampling()` takes
    them back out."""

    n: int = key(1, "completions per prompt")
    max_new_tokens: int = key(64, "response length limit")
    temperature: float = key(1.0, "sampling temperature; 0 = greedy")
    top_p: float = key(1.0, "nucleus sampling")
    seed: int = key(0, "sampling seed")
    batch_size: int = key(16, "sequences generated at once")
    top_k: int = key(0, "sample from the k most likely tokens only; 0 = the full distribution")

    def __post_init__(self):
        """The sampling keys as numbers in range; temperature and top_p become floats (YAML reads `1` as an int)."""
        for name in ("n", "max_new_tokens", "batch_size", "seed", "temperature", "top_p", "top_k"):
            value = getattr(self, name)
            number = (int, float) if name in ("temperature", "top_p") else int
            if isinstance(value, bool) or not isinstance(value, number):
                kind = "a number" if number != int else "an integer"
                raise ConfigError(f"{name} must be {kind}, got {value!r}")
        for name in ("n", "max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        self.temperature, self.top_p = float(self.temperature), float(self.top_p)
        if self.temperature < 0:
            raise ConfigError(f"temperature must not be negative (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ConfigError(f"top_k must not be negative (0 = the full distribution), got {self.top_k}")

    def sampling(self) -> Sampling:
        return Sampling(**{f.name: getattr(self, f.name) for f in dataclasses.fields(Sampling)})


# ---- the one sampling path -----------------------------------------------------------------------

def warpers(temperature: float, top_p: float, top_k: int) -> list:
    """The logits warpers of a sampling configuration, in transformers' order (none for greedy decoding)."""
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    chosen = []
    if temperature == 0:
        return chosen
    if temperature != 1.0:
        chosen.append(TemperatureLogitsWarper(temperature))
    if top_k > 0:
        chosen.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        chosen.append(TopPLogitsWarper(top_p))
    return chosen


def generation_config(max_new_tokens: int, greedy: bool, eos_token_id: int, pad_token_id: int):
    """A generation config built from scratch: no shipped sampling default (top_k, repetition penalty, ...)
    applies, and sampling runs the full softmax (the warpers come as explicit processors)."""
    from transformers import GenerationConfig

    neutral = {} if greedy else {"temperature": 1.0, "top_p": 1.0, "top_k": 0}
    return GenerationConfig(max_new_tokens=max_new_tokens, do_sample=not greedy, eos_token_id=eos_token_id,
                            pad_token_id=pad_token_id, **neutral)


@contextmanager
def only_generation_config(model, config):
    """`config` as the generation config of the causal LM inside `model` (itself, or under a peft or PPO wrapper)
    while generating: transformers fills every field a passed config leaves unset (min_p, suppress_tokens, ...)
    from the model's own."""
    from transformers import GenerationMixin

    lm = next(m for m in model.modules() if isinstance(m, GenerationMixin))
    shipped, lm.generation_config = lm.generation_config, config
    try:
        yield
    finally:
        lm.generation_config = shipped


def generate_ids(model, prompt_ids, prompt_mask, max_new_tokens: int, temperature: float, top_p: float, top_k: int,
                 eos_token_id: int, pad_token_id: int, extra_processors=()):
    """Sequences [B, P + R] continuing the prompts (greedy when temperature is 0), with exactly the configured
    warpers, after `extra_processors` (which thus see the raw logits), and nothing from the model's own config.
    On a CPU the large linear layers decode with prepacked weights, LoRA adapters merged in (rlhf.packed_weights)."""
    from transformers import LogitsProcessorList

    from rlhf.packed_weights import packed_linears

    config = generation_config(max_new_tokens, temperature == 0, eos_token_id, pad_token_id)
    processors = LogitsProcessorList([*extra_processors, *warpers(temperature, top_p, top_k)])
    with only_generation_config(model, config), packed_linears(model, rows=prompt_ids.shape[0]):
        return model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=config,
                              logits_processor=processors)


def retokenization_mismatch(tokenizer, response_ids: list[list[int]]) -> float:
    """Share of responses (ids without the closing EOS) that decoding, then encoding, does not give back: a reward
    model reading the text scores other tokens than the ones sampled. 0 for no responses."""
    if not response_ids:
        return 0.0
    texts = tokenizer.batch_decode(response_ids, skip_special_tokens=True)
    again = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return sum(a != list(r) for a, r in zip(again, response_ids)) / len(response_ids)


def without_eos(ids: list[int], eos_id: int) -> list[int]:
    """A response's ids without its closing EOS (if it has one)."""
    return ids[:-1] if ids and ids[-1] == eos_id else ids


# ---- completions of prompts ----------------------------------------------------------------------

def load_for_generation(path_or_name: str):
    """(model in eval mode on the GPU if there is one, left-padding tokenizer) from a model, adapter folder or run."""
    import torch

    from rlhf.models import load_causal_lm, load_tokenizer

    model = load_causal_lm(path_or_name)
    model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
    return model, load_tokenizer(path_or_name, padding_side="left")


def sample(model, tokenizer, prompts: list[Prompt], n: int = 1, max_new_tokens: int = 64, temperature: float = 1.0,
           top_p: float = 1.0, seed: int = 0, batch_size: int = 16, top_k: int = 0) -> list[list[str]]:
    """`n` completions for each prompt (greedy when temperature is 0), decoded without special tokens."""
    tokens = sample_tokens(model, tokenizer, prompts, n, max_new_tokens, temperature, top_p, seed, batch_size, top_k)
    return [tokenizer.batch_decode(ids, skip_special_tokens=True) for ids in tokens]


def sample_tokens(model, tokenizer, prompts: list[Prompt], n: int = 1, max_new_tokens: int = 64,
                  temperature: float = 1.0, top_p: float = 1.0, seed: int = 0, batch_size: int = 16,
                  top_k: int = 0) -> list[list[list[int]]]:
    """Token ids of `n` completions for each prompt, up to and including the first EOS (no padding)."""
    import torch

    texts = [format_prompt(tokenizer, p) for p in prompts]
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    out: list[list[list[int]]] = [[] for _ in texts]
    jobs = [(i, t) for i, t in enumerate(texts) for _ in range(n)]
    device = next(model.parameters()).device
    try:
        for start in range(0, len(jobs), batch_size):
            chunk = jobs[start:start + batch_size]
            batch = tokenizer([t for _, t in chunk], return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            generated = generate_ids(model, batch["input_ids"], batch["attention_mask"], max_new_tokens, temperature,
                                     top_p, top_k, tokenizer.eos_token_id, tokenizer.pad_token_id)
            for (i, _), ids in zip(chunk, generated[:, batch["input_ids"].shape[1]:].tolist()):
                out[i].append(_until_eos(ids, tokenizer.eos_token_id))
    finally:
        torch.random.set_rng_state(generator_state)
    return out


def _until_eos(ids: list[int], eos_id: int) -> list[int]:
    return ids[:ids.index(eos_id) + 1] if eos_id in ids else ids
