"""Decoding with prepacked weights: the same logits and tokens as the model's own layers, LoRA merged per the active
adapter, and nothing left behind."""

from __future__ import annotations

import pytest
import torch

from conftest import make_tiny
from rlhf import packed_weights
from rlhf.models import load_causal_lm

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def lora_model(tmp_path_factory, monkeypatch):
    """A tiny causal LM with two LoRA adapters (non-zero B, so each changes the output), every layer packable."""
    from peft import LoraConfig, get_peft_model

    monkeypatch.setattr(packed_weights, "MIN_PACKED_ELEMENTS", 0)
    torch.manual_seed(0)
    model = load_causal_lm(str(make_tiny(tmp_path_factory)))
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0)
    model = get_peft_model(model, config, adapter_name="a")
    model.add_adapter("b", config)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.5)
    return model.eval()


def patched(model) -> list[str]:
    return [name for name, module in model.named_modules() if "forward" in module.__dict__]


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("adapter", ["a", "b"])
def test_packed_layers_give_the_logits_of_the_active_adapter(lora_model, adapter):
    ids = torch.randint(3, 100, (3, 7))
    lora_model.set_adapter(adapter)
    expected = logits(lora_model, ids)
    with packed_weights.packed_linears(lora_model, rows=3):
        assert patched(lora_model), "nothing was packed"
        assert all(name.endswith(("_proj", "lm_head")) for name in patched(lora_model))
        got = logits(lora_model, ids)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    other = "b" if adapter == "a" else "a"
    lora_model.set_adapter(other)
    assert (logits(lora_model, ids) - expected).abs().max() > 1e-2  # the adapters do differ


def test_disabled_adapters_pack_the_base_weights(lora_model):
    ids = torch.randint(3, 100, (2, 5))
    with lora_model.disable_adapter():
        expected = logits(lora_model, ids)
        with packed_weights.packed_linears(lora_model, rows=2):
            got = logits(lora_model, ids)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_packed_greedy_decoding_gives_the_same_tokens_and_leaves_the_model_as_it_was(lora_model):
    ids = torch.randint(3, 100, (2, 4))
    before = {k: v.clone() for k, v in lora_model.state_dict().items()}
    kwargs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                  pad_token_id=0)
    expected = lora_model.generate(**kwargs)
    with packed_weights.packed_linears(lora_model, rows=2):
        got = lora_model.generate(**kwargs)
    assert torch.equal(got, expected)
    assert patched(lora_model) == []
    assert all(torch.equal(v, before[k]) for k, v in lora_model.state_dict().items())


def test_what_is_not_packed(lora_model, tmp_path_factory, monkeypatch):
    from peft import LoraConfig, get_peft_model

    with packed_weights.packed_linears(lora_model.to(torch.bfloat16), rows=2):  # only float32 is packed
        assert patched(lora_model) == []
    monkeypatch.setattr(packed_weights, "MIN_PACKED_ELEMENTS", 1 << 18)
    with packed_weights.packed_linears(lora_model.float(), rows=2):  # a tiny model's layers are too small to gain
        assert patched(lora_model) == []
    monkeypatch.setattr(packed_weights, "MIN_PACKED_ELEMENTS", 0)
    dora = get_peft_model(load_causal_lm(str(make_tiny(tmp_path_factory))),
                          LoraConfig(r=4, target_modules="all-linear", use_dora=True))
    with packed_weights.packed_linears(dora, rows=2):  # DoRA is not a plain sum of weights: its layers stay as they are
        assert patched(dora) == ["base_model.model.lm_head"]


def test_every_sampling_command_decodes_packed_with_the_same_tokens(lora_model, monkeypatch):
    from rlhf.sampling import generate_ids

    ids = torch.randint(3, 100, (4, 5))
    calls, packed_call = [], packed_weights.PackedLinear.__call__
    monkeypatch.setattr(packed_weights.PackedLinear, "__call__",
                        lambda self, *args, **kwargs: calls.append(1) or packed_call(self, *args, **kwargs))

    def sampled():
        torch.manual_seed(3)
        return generate_ids(lora_model, ids, torch.ones_like(ids), 10, temperature=1.0, top_p=1.0, top_k=0,
                            eos_token_id=2, pad_token_id=0)

    packed = sampled()
    assert calls
    monkeypatch.setattr(packed_weights, "MIN_PACKED_ELEMENTS", 1 << 40)
    calls.clear()
    assert torch.equal(sampled(), packed) and not calls
