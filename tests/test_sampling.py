"""`rlhf.sampling`: the one sampling path (exactly the configured warpers, whatever the model ships), the sampling
keys, and the re-tokenization check."""

from unittest import mock

import pytest

from conftest import make_tiny
from rlhf.errors import ConfigError
from rlhf.models import load_causal_lm, load_tokenizer
from rlhf.sampling import Sampling, retokenization_mismatch, sample_tokens

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["Tell me about the number 1.", "Count to 3."]
SHIPPED = dict(do_sample=True, top_k=50, top_p=0.5, temperature=0.3, repetition_penalty=1.3, min_p=0.05,
               suppress_tokens=[5], eos_token_id=2, pad_token_id=0, bos_token_id=1)  # defaults a model may ship


def processors_run_by(causal_lm, seen: list):
    """Patches `causal_lm` so that `seen` collects the type names of the final logits processors of each generate."""
    build = causal_lm._get_logits_processor

    def recording(*args, **kwargs):
        processors = build(*args, **kwargs)
        seen.append([type(p).__name__ for p in processors])
        return processors

    return mock.patch.object(causal_lm, "_get_logits_processor", recording)


@pytest.fixture(scope="module")
def shipping_model(tmp_path_factory):
    """A tiny causal LM whose generation config ships top-k 50, a repetition penalty, min-p and suppressed tokens."""
    from transformers import GenerationConfig

    folder = make_tiny(tmp_path_factory, "llama", hidden=32, layers=1)
    model = load_causal_lm(str(folder)).eval()
    model.generation_config = GenerationConfig(**SHIPPED)
    return model, load_tokenizer(str(folder), padding_side="left")


@pytest.mark.parametrize("temperature, top_p, top_k, expected", [
    (1.0, 1.0, 0, []),
    (0.7, 1.0, 0, ["TemperatureLogitsWarper"]),
    (0.7, 0.9, 5, ["TemperatureLogitsWarper", "TopKLogitsWarper", "TopPLogitsWarper"]),
    (1.0, 0.5, 0, ["TopPLogitsWarper"]),
    (0.0, 0.9, 5, []),  # greedy: no warpers
])
def test_generate_runs_exactly_the_configured_processors(shipping_model, temperature, top_p, top_k, expected):
    model, tokenizer = shipping_model
    shipped, seen = model.generation_config, []
    with processors_run_by(model, seen):
        sample_tokens(model, tokenizer, PROMPTS, max_new_tokens=3, temperature=temperature, top_p=top_p, top_k=top_k)
    assert seen == [expected]
    assert model.generation_config is shipped  # put back


def test_an_adapter_model_samples_without_its_shipped_config(ppo_runs, shipping_model):
    """Under a peft wrapper (how `rlhf eval` loads a LoRA policy) the causal LM inside is the one generating."""
    model = load_causal_lm(str(ppo_runs["sft"]), merge=False).eval()
    causal_lm = model.get_base_model()
    causal_lm.generation_config = shipping_model[0].generation_config
    seen = []
    with processors_run_by(causal_lm, seen):
        sample_tokens(model, shipping_model[1], PROMPTS, max_new_tokens=3, top_k=4)
    assert seen == [["TopKLogitsWarper"]]


def test_top_k_1_samples_the_greedy_completion(shipping_model):
    model, tokenizer = shipping_model
    greedy = sample_tokens(model, tokenizer, PROMPTS, max_new_tokens=6, temperature=0)
    assert sample_tokens(model, tokenizer, PROMPTS, max_new_tokens=6, top_k=1, seed=3) == greedy


@pytest.mark.parametrize("value, message", [(-1, "top_k must not be negative"), ("many", "top_k must be an integer"),
                                            (True, "top_k must be an integer")])
def test_top_k_is_a_non_negative_integer(value, message):
    assert Sampling().top_k == 0 and Sampling(top_k=5).top_k == 5
    with pytest.raises(ConfigError, match=message):
        Sampling(top_k=value)


def test_retokenization_mismatch_counts_responses_that_decode_then_encode_changes(shipping_model):
    _, tokenizer = shipping_model
    canonical = tokenizer("hello world", add_special_tokens=False)["input_ids"]
    spelled = [tokenizer.convert_tokens_to_ids(c) for c in "hello"]  # the same text, one token per letter
    special = [tokenizer.convert_tokens_to_ids("<|im_start|>"), *canonical]  # decoding drops the special token
    assert len(canonical) < len("hello world") and tokenizer.decode(spelled) == "hello"
    assert retokenization_mismatch(tokenizer, [canonical]) == 0.0
    assert retokenization_mismatch(tokenizer, [canonical, spelled, special, []]) == 0.5
    assert retokenization_mismatch(tokenizer, []) == 0.0
