"""`rlhf tiny-model`: every architecture builds, reloads as causal LM and as a scalar classifier."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from conftest import make_tiny
from rlhf.cli import main


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2", "gpt_neox"])
def test_tiny_model_reloads(arch, tmp_path_factory):
    folder = make_tiny(tmp_path_factory, arch)
    tok = AutoTokenizer.from_pretrained(folder)
    assert len({tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id}) == 4
    assert tok.padding_side == "left"
    lm = AutoModelForCausalLM.from_pretrained(folder)
    assert lm.config.model_type == arch
    clf = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1)
    batch = tok(["short", "a much longer input text"], return_tensors="pt", padding=True)
    assert clf(**batch).logits.shape == (2, 1)
    out = lm.generate(**batch, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape == (2, batch["input_ids"].shape[1] + 4)


def test_chat_template_marks_assistant_turns(tiny_llama):
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"},
            {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "See you"}]
    out = tok.apply_chat_template(chat, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    marked = tok.decode([t for t, m in zip(out["input_ids"], out["assistant_masks"]) if m])
    assert marked == "Hello there<|im_end|>See you<|im_end|>"


def test_cli_seed_changes_weights(tmp_path):
    for seed in (0, 1):
        assert main(["tiny-model", "--arch", "gpt2", "--output", str(tmp_path / f"s{seed}"), "--hidden", "32",
                     "--layers", "1", "--seed", str(seed)]) == 0
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "s0").transformer.wte.weight
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "s1").transformer.wte.weight
    assert a.shape == (len(AutoTokenizer.from_pretrained(tmp_path / "s0")), 32)
    assert not torch.equal(a, b)
