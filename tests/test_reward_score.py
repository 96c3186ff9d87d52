"""Reward scores do not depend on the batch a text is scored in, also for absolute-position models (GPT-2)."""

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from conftest import make_tiny
from reward.score import pair_metrics, score_ids
from rlhf.models import load_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_a_text_scores_the_same_alone_and_in_a_left_padded_batch(tmp_path_factory, arch):
    folder = make_tiny(tmp_path_factory, arch)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1).eval()
    tokenizer = load_tokenizer(str(folder), padding_side="left")
    model.config.pad_token_id = tokenizer.pad_token_id
    short = tokenizer("A red apple.", add_special_tokens=False)["input_ids"]
    long = tokenizer("I am Anna. Describe a red apple, please, in one sentence.", add_special_tokens=False)["input_ids"]
    alone = score_ids(model, tokenizer, [short])
    batched = score_ids(model, tokenizer, [short, long])
    torch.testing.assert_close(batched[:1], alone, atol=1e-5, rtol=1e-5)
    assert batched.std() > 0  # the two texts score differently: the head is not constant


def test_disable_dropout_also_zeroes_rates_read_from_the_config(tmp_path):
    """A config's attention_dropout is applied by the attention layer itself, not by an nn.Dropout module."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlhf.models import disable_dropout

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, attention_dropout=0.3)).train()
    ids = torch.randint(0, 64, (2, 12))
    assert not torch.allclose(model(ids).logits, model(ids).logits)  # dropout is on in train mode
    disable_dropout(model)
    torch.testing.assert_close(model(ids).logits, model(ids).logits, atol=0, rtol=0)
    assert model.config.attention_dropout == 0.0


def test_pair_accuracy_leaves_ties_out_and_reports_how_far_apart_they_score():
    chosen, rejected = torch.tensor([2.0, 0.0, 1.0, 1.0]), torch.tensor([1.0, 1.0, 3.0, 1.0])
    ties = torch.tensor([False, False, True, True])
    metrics = pair_metrics(chosen, rejected, torch.tensor([0.5, 0.5, 0.0, 0.0]), [0.34], ties)
    # decided pairs: differences +1 and -1; ties: |1 - 3| and |1 - 1|
    assert metrics == {"accuracy": 0.5, "margin": 0.0, "pairs": 2, "tie_pairs": 2, "tie_gap": 1.0,
                       "accuracy_margin_ge_0.34": 0.5}
    assert pair_metrics(chosen, rejected)["accuracy"] == 0.25  # without the flags every pair counts
