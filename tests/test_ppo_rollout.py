"""Rollout pieces: the response mask, prompt rows, and sampling from exactly the policy's distribution."""

import json
from unittest import mock

import pytest
import torch

from rlhf.errors import DataError
from rlhf.models import load_tokenizer
from rlhf.ppo import rollout
from test_sampling import SHIPPED, processors_run_by


def test_response_mask_covers_tokens_up_to_and_including_the_first_eos():
    eos, pad = 2, 0
    ids = torch.tensor([[5, 6, eos, pad, pad], [eos, pad, pad, pad, pad], [5, 6, 7, 8, 9], [5, eos, 6, eos, pad]])
    mask, ended = rollout.response_mask(ids, eos)
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert ended.tolist() == [True, True, False, True]


def test_prompt_rows(ppo_runs, tmp_path):
    tokenizer = load_tokenizer(str(ppo_runs["sft"]))
    prompts = rollout.read_prompts(str(ppo_runs["prompts"]), tokenizer, 512)
    assert len(prompts.prompts) == 32 and prompts.too_long == 0
    assert prompts.texts[0].startswith("<|im_start|>user\nTell me about the number 0.")
    assert prompts.texts[-1].startswith("<|im_start|>system\nBe brief.") and prompts.texts[-1].endswith("assistant\n")
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in prompts.texts]
    limit = sorted(lengths)[16]
    short = rollout.read_prompts(str(ppo_runs["prompts"]), tokenizer, limit)
    assert short.too_long == sum(n > limit for n in lengths) > 0 and len(short.prompts) == 32 - short.too_long

    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]
    rows = [{"prompt": "fine"}, {"messages": chat}]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"bad.jsonl:2: field 'messages': ends with an assistant turn"):
        rollout.read_prompts(str(bad), tokenizer, 512)
    bad.write_text(json.dumps({"question": "Hi"}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:1: field 'prompt': no 'prompt' or 'messages' field"):
        rollout.read_prompts(str(bad), tokenizer, 512)


def ppo_model(ppo_runs, **overrides):
    from rlhf.ppo import model_set
    from rlhf.ppo.stage_config import PPOStageConfig

    config = PPOStageConfig(**{"policy_path": str(ppo_runs["sft"]), "reward_model_path": str(ppo_runs["rm"]),
                          "dataset_path": str(ppo_runs["prompts"]), "lora_r": 4, "lora_alpha": 8,
                          "value_model": "lora_head", **overrides})
    model, reward, _ = model_set.build(config, "cpu")
    with torch.no_grad():  # a policy away from the reference, so that the two differ
        for param in model_set.adapter_parameters(model.peft, model_set.POLICY):
            param.add_(torch.randn_like(param) * 0.3)
    return model, reward


@pytest.mark.parametrize("top_k, warpers", [(0, ["TemperatureLogitsWarper", "TopPLogitsWarper"]),
                                            (3, ["TemperatureLogitsWarper", "TopKLogitsWarper", "TopPLogitsWarper"])])
def test_sampling_follows_the_policy_distribution_whatever_the_model_ships(ppo_runs, top_k, warpers):
    """Samples come from softmax(logits / temperature), then top-k and top-p: the model's shipped top-k, repetition
    penalty etc. are dropped, and the processors generate runs are exactly the recorder and the configured warpers."""
    from transformers import GenerationConfig

    from rlhf.ppo.model_set import sampling_defaults

    shipped = GenerationConfig(**SHIPPED)
    assert sampling_defaults(shipped).to_diff_dict().keys() <= {"eos_token_id", "pad_token_id", "bos_token_id",
                                                                "transformers_version"}
    model, _ = ppo_model(ppo_runs)
    model.causal_lm.generation_config = shipped  # generate must not rely on the base's config being cleaned
    tokenizer = load_tokenizer(str(ppo_runs["sft"]))
    batch = tokenizer(["<|im_start|>user\nHi<|im_end|>\n"] * 2, return_tensors="pt", add_special_tokens=False)
    seen, outputs = [], {}

    def recording_generate(**kwargs):
        out = model.peft.generate(**kwargs, return_dict_in_generate=True, output_scores=True, output_logits=True)
        outputs.update(out=out)
        return out.sequences

    with mock.patch.object(model, "generate", recording_generate), processors_run_by(model.causal_lm, seen):
        rollout.generate(model, tokenizer, batch["input_ids"], batch["attention_mask"], 3, 0.7, 0.9, top_k=top_k)
    assert seen == [["SamplingRecord", *warpers]]
    assert model.causal_lm.generation_config is shipped  # put back
    for scores, logits in zip(outputs["out"].scores, outputs["out"].logits):
        kept = torch.isfinite(scores)
        torch.testing.assert_close(scores[kept], (logits / 0.7)[kept])
        assert kept.any(1).all() and not kept.all()  # top-p 0.9 (and top-k) drop the tail
        if top_k:
            assert (kept.sum(1) <= top_k).all()


@pytest.mark.parametrize("value_model,packed", [("lora_head", False), ("policy_head", False), ("policy_head", True)])
def test_what_sampling_records_equals_a_forward_pass(ppo_runs, value_model, packed, monkeypatch):
    """Log-probs and entropy (and, for policy_head, the hidden states the values are read from) recorded while
    sampling equal those of one forward pass over the finished sequences, also when sampling decodes with packed
    weights (every layer packed here; a tiny model's are below the size that is packed by default)."""
    from rlhf import packed_weights
    from rlhf.ppo import core
    from rlhf.ppo.model_set import POLICY

    if packed:
        monkeypatch.setattr(packed_weights, "MIN_PACKED_ELEMENTS", 0)
    model, _ = ppo_model(ppo_runs, value_model=value_model)
    tokenizer = load_tokenizer(str(ppo_runs["sft"]), padding_side="left")
    texts = rollout.read_prompts(str(ppo_runs["prompts"]), tokenizer, 512).texts[-4:]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    torch.manual_seed(0)
    sampled = rollout.generate(model, tokenizer, batch["input_ids"], batch["attention_mask"], 8, 0.7, 1.0,
                               keep_hidden=value_model == "policy_head")
    prompt_length = batch["input_ids"].shape[1]
    mask, _ = rollout.response_mask(sampled.sequences[:, prompt_length:], tokenizer.eos_token_id)
    attention_mask = torch.cat([batch["attention_mask"], mask.long()], 1)
    with torch.no_grad():
        logits, hidden = model.logits(POLICY, sampled.sequences, attention_mask, prompt_length, with_hidden=True)
    response = sampled.sequences[:, prompt_length:]
    on = mask.bool()
    torch.testing.assert_close(sampled.logprobs[on], core.logprobs_from_logits(logits, response, 0.7)[on])
    torch.testing.assert_close(sampled.entropy[on], core.entropy_from_logits(logits, 0.7)[on])
    assert sampled.logprobs.shape == response.shape
    if value_model == "policy_head":
        torch.testing.assert_close(sampled.hidden[on], hidden[on], atol=1e-5, rtol=1e-5)
    else:
        assert sampled.hidden is None


def four_samples(ppo_runs, model):
    """(prompts, samples, settings): 8 new tokens for the first 4 prompts, scored 4 rows at a time."""
    from contextlib import nullcontext

    tokenizer = load_tokenizer(str(ppo_runs["sft"]), padding_side="left")
    data = rollout.read_prompts(str(ppo_runs["prompts"]), tokenizer, 512)
    settings = rollout.Settings(8, 1.0, 1.0, scoring_rows=4)
    torch.manual_seed(0)
    return data.prompts[:4], rollout.sample(model, tokenizer, data.texts[:4], settings, "cpu", nullcontext()), settings


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_scoring_without_values_skips_only_the_value_pass(ppo_runs, dtype, monkeypatch):
    model, reward = ppo_model(ppo_runs, dtype=dtype)
    prompts, samples, settings = four_samples(ppo_runs, model)
    full = rollout.score(model, reward, prompts, samples, settings)
    value_passes = []
    value_states = model.value_states
    monkeypatch.setattr(model, "value_states", lambda *a: value_passes.append(1) or value_states(*a))
    bare = rollout.score(model, reward, prompts, samples, settings, with_values=False)
    assert full.values is not None and bare.values is None and not value_passes
    for name in ("logprobs", "ref_logprobs", "scores"):
        torch.testing.assert_close(getattr(bare, name), getattr(full, name))


def test_in_bfloat16_a_separate_reward_model_runs_in_bfloat16_and_scores_in_float32(ppo_runs):
    """`dtype` covers the reward model of its own too (half its memory), and its scores come back as float32."""
    model, reward = ppo_model(ppo_runs, dtype="bfloat16", reward_model_path=str(ppo_runs["rm_full"]))
    assert {p.dtype for m in reward.modules for p in m.parameters()} == {torch.bfloat16}
    prompts, samples, settings = four_samples(ppo_runs, model)
    ro = rollout.score(model, reward, prompts, samples, settings)
    assert ro.scores.dtype == torch.float32 and torch.isfinite(ro.scores).all()


def rollout_and_forward(ppo_runs, value_model: str, dtype: str):
    """(rollout of 8 prompts, what sampling recorded, the policy's logits and values of a fresh forward pass)."""
    from contextlib import nullcontext

    model, reward = ppo_model(ppo_runs, value_model=value_model, dtype=dtype)
    tokenizer = load_tokenizer(str(ppo_runs["sft"]), padding_side="left")
    data = rollout.read_prompts(str(ppo_runs["prompts"]), tokenizer, 512)
    settings = rollout.Settings(16, 0.7, 1.0, scoring_rows=8)
    torch.manual_seed(0)
    samples = rollout.sample(model, tokenizer, data.texts[-8:], settings, "cpu", nullcontext())
    ro = rollout.score(model, reward, data.prompts[-8:], samples, settings)
    with torch.no_grad():
        logits, values = model(ro.input_ids, ro.attention_mask, ro.prompt_length, reward_states=ro.value_states)
    return ro, samples.sampled, logits, values


@pytest.mark.parametrize("value_model", ["lora_head", "policy_head", "reward_head"])
def test_below_float32_the_old_logprobs_and_values_are_a_forward_pass(ppo_runs, value_model):
    """In bf16 generation's cached steps round differently from a forward pass: the rollout takes the policy's
    log-probs, entropy and values from one forward pass, exactly what the update's first forward computes."""
    from rlhf.ppo import core

    ro, sampled, logits, values = rollout_and_forward(ppo_runs, value_model, "bfloat16")
    assert sampled.hidden is None  # the hidden states are not kept when the values come from the forward
    assert sampled.logprobs is None and sampled.entropy is None  # nor recorded: they would be off
    torch.testing.assert_close(ro.logprobs, core.logprobs_from_logits(logits, ro.response_ids, 0.7) * ro.mask,
                               atol=0, rtol=0)
    torch.testing.assert_close(ro.entropy, core.entropy_from_logits(logits, 0.7), atol=0, rtol=0)
    torch.testing.assert_close(ro.values, values.float() * ro.mask, atol=0, rtol=0)


def test_in_float32_the_rollout_keeps_the_recorded_logprobs(ppo_runs):
    from rlhf.ppo import core

    ro, sampled, logits, _ = rollout_and_forward(ppo_runs, "policy_head", "float32")
    assert sampled.hidden is not None
    torch.testing.assert_close(ro.logprobs, sampled.logprobs * ro.mask, atol=0, rtol=0)
    torch.testing.assert_close(ro.logprobs, core.logprobs_from_logits(logits, ro.response_ids, 0.7) * ro.mask,
                               atol=1e-4, rtol=0)
