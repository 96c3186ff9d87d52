"""`rlhf tiny-model`: every architecture builds, reloads as causal LM and as a scalar classifier."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from conftest import make_tiny
from rlhf import tiny
from rlhf.cli import main
from rlhf.config import load_config
from rlhf.errors import ConfigError


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


def test_cli_vocab_size_in_snake_and_kebab_case_and_corpus_files(tmp_path, capsys):
    corpus = [tmp_path / "a.txt", tmp_path / "b.txt"]
    corpus[0].write_text("Zyxwvut qwertyuiop\n" * 2000)
    corpus[1].write_text("Plonkety plonk\n" * 2000)
    common = ["--arch", "gpt2", "--hidden", "16", "--layers", "1", "--heads", "2"]
    assert main(["tiny-model", *common, "--output", str(tmp_path / "snake"), "--vocab_size", "400",
                 "--corpus", str(corpus[0]), "--corpus", str(corpus[1])]) == 0
    assert capsys.readouterr().out == f"wrote gpt2 model to {tmp_path / 'snake'}\n"
    assert main(["tiny-model", *common, f"--output={tmp_path / 'kebab'}", "--vocab-size", "400",
                 "--corpus", str(corpus[0]), "--corpus", str(corpus[1])]) == 0
    snake, kebab = (AutoTokenizer.from_pretrained(tmp_path / name) for name in ("snake", "kebab"))
    assert len(snake) == len(kebab) <= 400 + 1  # the vocabulary plus the chat start token at most
    assert snake.get_vocab() == kebab.get_vocab()
    plain = tiny.build_tokenizer("", vocab_size=400)  # the words of both corpus files take fewer tokens
    assert len(snake.tokenize("Zyxwvut")) < len(plain.tokenize("Zyxwvut"))
    assert len(snake.tokenize("Plonkety")) < len(plain.tokenize("Plonkety"))


def test_config_errors_and_help(capsys):
    assert load_config(tiny.TinyModelConfig, ["--output", "x"]).arch == "llama"
    with pytest.raises(ConfigError, match="output is not set"):
        load_config(tiny.TinyModelConfig, ["--arch", "gpt2"])
    with pytest.raises(ConfigError, match="arch 'mamba' is not one of llama, qwen2, gpt2, gpt_neox"):
        load_config(tiny.TinyModelConfig, ["--output", "x", "--arch", "mamba"])
    with pytest.raises(ConfigError, match="hidden must be an integer"):
        load_config(tiny.TinyModelConfig, ["--output", "x", "--hidden", "1.5"])
    assert main(["tiny-model", "--output", "x", "--layer", "1"]) == 2
    assert "did you mean 'layers'" in capsys.readouterr().err
    assert main(["tiny-model", "--help"]) == 0
    text = capsys.readouterr().out
    for name in ("output", "arch", "hidden", "layers", "heads", "seed", "vocab_size", "corpus"):
        assert f"--{name} (default " in text
    assert "--hidden (default 64)" in text and "--vocab_size (default 1024)" in text
