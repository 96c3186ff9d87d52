"""`rlhf export`: a merged standalone model that generates exactly like base + adapter."""

import pytest
import torch
from peft import PeftModel, PromptTuningConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhf import cli, export
from rlhf.config import load_config
from rlhf.errors import ConfigError
from rlhf.sampling import sample_tokens
from rlhf.models import load_causal_lm

PROMPTS = ["Tell me about the number 3.", "What color is the sky?"]


def test_exported_model_loads_with_plain_transformers_and_matches_the_adapter(ppo_runs, tmp_path, one_thread):
    out = tmp_path / "exported"
    assert cli.main(["export", str(ppo_runs["sft"]), "--out", str(out)]) == 0
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    plain = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    adapter = load_causal_lm(str(ppo_runs["sft"]), merge=False).eval()
    assert isinstance(adapter, PeftModel)

    ids = tokenizer(PROMPTS[0], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, adapter(input_ids=ids).logits, atol=1e-5, rtol=1e-4)
    greedy = lambda model: sample_tokens(model, tokenizer, PROMPTS, max_new_tokens=12, temperature=0)
    assert greedy(plain) == greedy(adapter)

    base = AutoModelForCausalLM.from_pretrained(ppo_runs["base"])
    changed = [not torch.equal(a, b) for a, b in zip(plain.state_dict().values(), base.state_dict().values())]
    assert any(changed)  # the LoRA deltas were merged in, not dropped


def test_prompt_tuning_cannot_be_exported(ppo_runs, tmp_path, capsys):
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(ppo_runs["base"]),
                           PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    model.save_pretrained(tmp_path / "pt" / "final")
    with pytest.raises(ConfigError, match="PROMPT_TUNING adapter"):
        export.export(str(tmp_path / "pt"), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert cli.main(["export", str(tmp_path / "pt"), "--out", str(tmp_path / "out")]) == 2
    assert "cannot be merged" in capsys.readouterr().err


def test_export_with_snake_case_keys_and_dtype(ppo_runs, tmp_path, capsys, one_thread):
    out = tmp_path / "exported"
    assert cli.main(["export", "--run_dir", str(ppo_runs["sft"]), "--out", str(out), "--dtype", "bfloat16"]) == 0
    assert capsys.readouterr().out == f"wrote a standalone model to {out}\n"
    assert AutoModelForCausalLM.from_pretrained(out).dtype == torch.bfloat16


def test_export_config_keys_and_errors(tmp_path, capsys):
    config_file = tmp_path / "export.yaml"
    config_file.write_text("out: somewhere\ndtype: float16\n")
    config = load_config(export.ExportConfig, ["runs/ppo", "--config", str(config_file), "--dtype=float32"])
    assert (config.run_dir, config.out, config.dtype) == ("runs/ppo", "somewhere", "float32")
    assert load_config(export.ExportConfig, ["--run-dir", "r", "--out", "x"]).run_dir == "r"  # kebab-case too
    with pytest.raises(ConfigError, match="out is not set"):
        load_config(export.ExportConfig, ["runs/ppo"])
    with pytest.raises(ConfigError, match="run_dir is not set"):
        load_config(export.ExportConfig, ["--out", "x"])
    with pytest.raises(ConfigError, match="dtype 'fp8' is not one of auto, bfloat16, float16, float32"):
        load_config(export.ExportConfig, ["runs/ppo", "--out", "x", "--dtype", "fp8"])
    assert cli.main(["export", "a", "b", "--out", "x"]) == 2
    assert "unexpected argument 'b'" in capsys.readouterr().err
    assert cli.main(["export", "--help"]) == 0
    text = capsys.readouterr().out
    assert "usage: RUN_DIR [--config FILE.yaml]" in text
    for name in ("run_dir", "out", "dtype"):
        assert f"--{name} (default " in text
    assert "--dtype (default 'auto')" in text
