"""Config loading: YAML + CLI overrides, unknown keys named with suggestions, CPU-safe defaults."""

import pytest
import yaml

from rlhf.config import load_config, save_config
from rlhf.errors import ConfigError
from rlhf.sft import SFTStageConfig


def test_yaml_then_cli_overrides(tmp_path):
    cfg_file = tmp_path / "sft.yaml"
    cfg_file.write_text("model_name_or_path: some/model\nmax_steps: 7\nlearning_rate: 0.001\nreport_to: none\n")
    cfg = load_config(SFTStageConfig, ["--config", str(cfg_file), "--max_steps", "9", "--weight_decay", "5e-4", "--lora_target_modules", "[q_proj, v_proj]",
                                       "--output_dir=" + str(tmp_path / "run")])
    assert cfg.max_steps == 9 and cfg.learning_rate == 0.001 and cfg.model_name_or_path == "some/model"
    assert cfg.lora_target_modules == ["q_proj", "v_proj"]
    assert cfg.weight_decay == 0.0005
    assert cfg.bf16 is False and cfg.gradient_checkpointing is False  # no GPU here
    save_config(cfg, tmp_path / "resolved.yaml")
    resolved = yaml.safe_load((tmp_path / "resolved.yaml").read_text())
    assert resolved["max_steps"] == 9 and resolved["model_name_or_path"] == "some/model"


def test_unknown_yaml_key_names_file_line_and_suggestion(tmp_path):
    cfg_file = tmp_path / "bad.yaml"
    cfg_file.write_text("model_name_or_path: m\nlearning_rat: 0.1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:2: unknown config key 'learning_rat'; did you mean 'learning_rate'"):
        load_config(SFTStageConfig, ["--config", str(cfg_file)])


def test_unknown_cli_key(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'lora_rank'.*'lora_r'"):
        load_config(SFTStageConfig, ["--lora_rank", "8"])


def test_invalid_value_is_config_error():
    with pytest.raises(ConfigError, match="^command line: peft_method 'qlora'"):
        load_config(SFTStageConfig, ["--peft_method", "qlora"])


def test_invalid_value_names_the_file_and_line_it_came_from(tmp_path):
    """A check's error names the key's YAML line, or the command line when an override set it."""
    from rlhf.ppo.stage_config import PPOStageConfig

    cfg_file = tmp_path / "ppo.yaml"
    cfg_file.write_text("policy_path: p\ndataset_path: d\nreward_fn: m:f\nvalue_model: separate\n")
    with pytest.raises(ConfigError, match=r"ppo\.yaml:4: value_model 'separate' is not one of"):
        load_config(PPOStageConfig, ["--config", str(cfg_file)])
    with pytest.raises(ConfigError, match=r"^command line: value_model 'critic' is not one of"):
        load_config(PPOStageConfig, ["--config", str(cfg_file), "--value_model", "critic"])
    cfg_file.write_text("policy_path: p\ndataset_path: d\n")  # no reward: the check names two keys, no line
    with pytest.raises(ConfigError, match=r"ppo\.yaml: set exactly one of reward_model_path and reward_fn"):
        load_config(PPOStageConfig, ["--config", str(cfg_file)])


def test_help_lists_stage_keys_with_their_defaults():
    from rlhf.config import config_help
    from rlhf.pipeline import PipelineConfig

    text = config_help(PipelineConfig, "pipeline")
    assert "--sft_overrides (default {}): keys that override the SFT config" in text
    assert "--annotators (default 3)" in text and "MISSING" not in text
    assert "--lora_r (default 16): LoRA rank" in config_help(SFTStageConfig, "sft")


def test_command_line_values_keep_their_type_and_text():
    """A string key takes the text as written (also where annotations are strings, as in the pipeline's module);
    list keys collect repeats or read [a, b]; a list key named last in POSITIONAL takes every leading argument."""
    from rlhf.generate import GenerateConfig
    from rlhf.pipeline import PipelineConfig
    from rlhf.report import ReportConfig

    pipeline = load_config(PipelineConfig, ["--label_prompts", "yes: no", "--gold_judge", "null",
                                            "--ppo_overrides", "{max_steps: 3}", "--label_temperature", "5e-1"])
    assert (pipeline.label_prompts, pipeline.gold_judge, pipeline.ppo_overrides) == ("yes: no", None, {"max_steps": 3})
    assert pipeline.label_temperature == 0.5
    generate = load_config(GenerateConfig, ["--model", "m", "--prompt", "Q: a: b", "--prompt", "[draft] hi",
                                            "--max-new-tokens", "5"])
    assert generate.prompt == ["Q: a: b", "[draft] hi"] and generate.max_new_tokens == 5
    assert load_config(GenerateConfig, ["--model", "m", "--prompt", "[a, b]"]).prompt == ["a", "b"]
    assert load_config(ReportConfig, ["r1", "--out", "x", "r2"]).run_dirs == ["r1", "r2"]  # bare values anywhere
    from reward.labeling.commands import AddAnnotatorConfig

    admin = load_config(AddAnnotatorConfig, ["--admin", "alice"])  # a yes/no key takes no name as its value
    assert (admin.name, admin.admin) == ("alice", True)
    assert load_config(AddAnnotatorConfig, ["alice", "--admin", "false"]).admin is False
    with pytest.raises(ConfigError, match=r"--n '\[1,' is not a valid value"):
        load_config(GenerateConfig, ["--model", "m", "--prompt", "p", "--n", "[1,"])
    with pytest.raises(ConfigError, match="unexpected argument 'stray'"):
        load_config(GenerateConfig, ["stray", "--model", "m"])
