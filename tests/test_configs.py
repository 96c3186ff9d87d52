"""Every shipped config loads: stage YAMLs into their config class (unknown keys fail), accelerate files for accelerate.

Nothing is downloaded: building a stage config does not touch the model or the data.
"""

import importlib
import json
import re
from pathlib import Path

import pytest
import yaml

from rlhf.config import load_config
from rlhf.errors import ConfigError

CONFIGS = Path(__file__).parent.parent / "configs"
ACCELERATE = CONFIGS / "accelerate"
STAGES = {  # a word of the file name (or the folder name) -> the stage's config class
    "sft": "rlhf.sft:SFTStageConfig",
    "reward": "reward.train:RewardStageConfig",
    "ppo": "rlhf.ppo.stage_config:PPOStageConfig",
    "pipeline": "rlhf.pipeline:PipelineConfig",
}
STAGE_FILES = sorted(p for p in CONFIGS.rglob("*.yaml") if ACCELERATE not in p.parents)


def stage_class(path: Path):
    words = set(re.split(r"[-_.]", path.stem)) | {path.parent.name}
    found = words & STAGES.keys()
    assert len(found) == 1, f"{path}: name or folder must name exactly one stage of {sorted(STAGES)}"
    module, _, name = STAGES[found.pop()].partition(":")
    return getattr(importlib.import_module(module), name)


def _id(path: Path) -> str:
    return str(path.relative_to(CONFIGS))


def test_the_configs_folder_has_stage_files():
    assert {_id(p) for p in STAGE_FILES} >= {"demo/sft.yaml", "examples/qwen2.5-0.5b-sft.yaml",
                                             "examples/llama-3.1-8b-ppo-zero3.yaml"}


@pytest.mark.parametrize("path", STAGE_FILES, ids=_id)
def test_stage_config_loads_into_its_class(path):
    config = load_config(stage_class(path), ["--config", str(path)])
    assert config.seed == yaml.safe_load(path.read_text()).get("seed", config.seed)


@pytest.mark.parametrize("path", STAGE_FILES, ids=_id)
def test_a_misspelt_key_fails(path, tmp_path):
    first = next(iter(yaml.safe_load(path.read_text())))
    bad = tmp_path / path.name
    bad.write_text(path.read_text() + f"\n{first}s: 1\n")
    with pytest.raises(ConfigError, match=f"unknown config key '{first}s'"):
        load_config(stage_class(path), ["--config", str(bad)])


def _launch_options() -> set[str]:
    from accelerate.commands.launch import launch_command_parser

    return {action.dest for action in launch_command_parser()._actions}


@pytest.mark.parametrize("path", sorted(ACCELERATE.glob("*.yaml")), ids=_id)
def test_accelerate_config_is_valid_for_accelerate(path):
    from accelerate.commands.config.config_args import ClusterConfig

    config = ClusterConfig.from_yaml_file(str(path))  # raises on unknown top-level keys
    assert config.num_processes >= 1 and config.num_machines >= 1
    nested = config.deepspeed_config or {}
    unknown = set(nested) - _launch_options()  # accelerate passes these on as `accelerate launch` options
    assert not unknown, f"{path}: deepspeed_config keys accelerate does not know: {sorted(unknown)}"
    if config.distributed_type.value == "DEEPSPEED":
        assert "zero_stage" in nested or "deepspeed_config_file" in nested
    if "deepspeed_config_file" in nested:
        assert (CONFIGS.parent / nested["deepspeed_config_file"]).is_file()


@pytest.mark.parametrize("path", sorted(ACCELERATE.glob("*.json")), ids=_id)
def test_deepspeed_json_has_a_zero_stage(path):
    config = json.loads(path.read_text())
    assert config["zero_optimization"]["stage"] in (0, 1, 2, 3)
    assert config["train_micro_batch_size_per_gpu"] == "auto"  # filled in from the trainer's batch size
