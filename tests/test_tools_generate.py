"""`rlhf generate`: prints the completions `rlhf.sampling.sample` produces."""

import pytest

from rlhf import cli, generate
from rlhf.config import load_config
from rlhf.errors import ConfigError
from rlhf.sampling import Sampling, load_for_generation, sample


def test_generate_prints_greedy_completion(ppo_runs, capsys, one_thread):
    prompt = "Tell me about the number 7."
    assert cli.main(["generate", "--model", str(ppo_runs["sft"]), "--prompt", prompt, "--max_new_tokens", "8"]) == 0
    model, tokenizer = load_for_generation(str(ppo_runs["sft"]))
    expected = sample(model, tokenizer, [prompt], max_new_tokens=8, temperature=0)[0][0]
    assert expected.strip()
    assert capsys.readouterr().out == f"### {prompt}\n{expected}\n"


def test_generate_numbers_several_samples_per_prompt(ppo_runs, capsys, one_thread):
    # old kebab-case spelling (--max-new-tokens) next to snake_case; a list key repeated collects the prompts
    args = ["generate", "--model", str(ppo_runs["base"]), "--prompt", "a", "--prompt", "b", "--n", "2",
            "--temperature", "1", "--max-new-tokens", "4", "--seed", "3"]
    assert cli.main(args) == 0
    model, tokenizer = load_for_generation(str(ppo_runs["base"]))
    a, b = sample(model, tokenizer, ["a", "b"], n=2, max_new_tokens=4, temperature=1.0, seed=3)
    assert capsys.readouterr().out == f"### a\n[1] {a[0]}\n[2] {a[1]}\n### b\n[1] {b[0]}\n[2] {b[1]}\n"


def test_generate_reads_a_yaml_config_and_kebab_case_keys(ppo_runs, tmp_path, capsys, one_thread):
    config_file = tmp_path / "generate.yaml"
    config_file.write_text(f"model: {ppo_runs['sft']}\nprompt: [a, 'Say: yes']\nmax_new_tokens: 20\n")
    assert generate.main(["--config", str(config_file), "--max-new-tokens", "3", "--batch-size", "1"]) == 0
    model, tokenizer = load_for_generation(str(ppo_runs["sft"]))
    a, b = sample(model, tokenizer, ["a", "Say: yes"], max_new_tokens=3, temperature=0)
    assert capsys.readouterr().out == f"### a\n{a[0]}\n### Say: yes\n{b[0]}\n"


def test_generate_config_defaults_and_errors():
    config = load_config(generate.GenerateConfig, ["--model", "m", "--prompt", "p", "--temperature", "1"])
    assert config.prompt == ["p"]
    assert config.sampling() == Sampling(temperature=1.0) and isinstance(config.temperature, float)
    assert load_config(generate.GenerateConfig, ["--model", "m", "--prompt", "p"]).temperature == 0.0  # greedy
    with pytest.raises(ConfigError, match="prompt is not set"):
        load_config(generate.GenerateConfig, ["--model", "m"])
    with pytest.raises(ConfigError, match="model is not set"):
        load_config(generate.GenerateConfig, ["--prompt", "p"])
    with pytest.raises(ConfigError, match="max_new_tokens must be an integer"):
        load_config(generate.GenerateConfig, ["--model", "m", "--prompt", "p", "--max-new-tokens", "many"])
    with pytest.raises(ConfigError, match="unknown config key 'temprature'; did you mean 'temperature'"):
        load_config(generate.GenerateConfig, ["--model", "m", "--prompt", "p", "--temprature", "1"])


def test_generate_help_lists_the_keys(capsys):
    assert cli.main(["generate", "--help"]) == 0
    text = capsys.readouterr().out
    for name in ("model", "prompt", "n", "max_new_tokens", "temperature", "top_p", "top_k", "seed", "batch_size"):
        assert f"--{name} (default " in text
    assert "--temperature (default 0.0): sampling temperature; 0 = greedy" in text
