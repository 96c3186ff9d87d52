"""Rollout pieces: the response mask, prompt rows, and sampling from exactly the policy's distribution."""

import json

import pytest
import torch

from rlhf.errors import DataError
from rlhf.models import load_tokenizer
from rlhf.ppo import rollout


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
    with pytest.raises(DataError, match=r"bad.jsonl:2: field 'messages': the last message is the assistant's"):
        rollout.read_prompts(str(bad), tokenizer, 512)
    bad.write_text(json.dumps({"question": "Hi"}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:1: field 'prompt': no 'prompt' or 'messages' field"):
        rollout.read_prompts(str(bad), tokenizer, 512)


def test_sampling_follows_the_policy_distribution_whatever_the_model_ships(ppo_runs):
    """Samples come from softmax(logits / temperature): shipped top-k, repetition penalty etc. are dropped."""
    from transformers import GenerationConfig

    from rlhf.ppo.models import load_base, sampling_defaults

    shipped = GenerationConfig(top_k=5, top_p=0.5, temperature=0.3, repetition_penalty=1.3, eos_token_id=2,
                               pad_token_id=0, bos_token_id=1)
    assert sampling_defaults(shipped).to_diff_dict().keys() <= {"eos_token_id", "pad_token_id", "bos_token_id",
                                                                "transformers_version"}
    model = load_base(str(ppo_runs["sft"]), "float32")
    tokenizer = load_tokenizer(str(ppo_runs["sft"]))

    class Recorder:  # what rollout.generate asks of the model, with the processed scores returned too
        def generate(self, **kwargs):
            return model.generate(**kwargs, return_dict_in_generate=True, output_scores=True, output_logits=True)

    batch = tokenizer(["<|im_start|>user\nHi<|im_end|>\n"] * 2, return_tensors="pt", add_special_tokens=False)
    out = rollout.generate(Recorder(), tokenizer, batch["input_ids"], batch["attention_mask"], 3, 0.7, 1.0)
    for scores, logits in zip(out.scores, out.logits):
        torch.testing.assert_close(scores, logits / 0.7)
