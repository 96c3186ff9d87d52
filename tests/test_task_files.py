"""The built-in tasks' shipped data files equal their generators' output, and the command that writes them."""

import json
from pathlib import Path

import pytest

from rlhf import demo_task, yes_no_task
from rlhf.errors import ConfigError

CONFIGS = Path(__file__).parent.parent / "configs"
TASKS = [(demo_task, demo_task.demo_files, "demo"), (yes_no_task, yes_no_task.task_files, "smollm2")]


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("module, files_of_seed, folder", TASKS, ids=[t[2] for t in TASKS])
def test_shipped_files_equal_the_generator_output(module, files_of_seed, folder):
    files = files_of_seed(0)
    shipped = CONFIGS / folder
    assert sorted(files) == sorted(p.name for p in shipped.iterdir() if p.suffix in (".jsonl", ".txt"))
    for name, content in files.items():
        text = (shipped / name).read_text(encoding="utf-8") if name.endswith(".txt") else _read_jsonl(shipped / name)
        assert text == content, f"configs/{folder}/{name} is stale: run python -m {module.__name__}"


@pytest.mark.parametrize("module, files_of_seed, folder", TASKS, ids=[t[2] for t in TASKS])
def test_command_line_writes_the_files(module, files_of_seed, folder, tmp_path, capsys):
    assert module.main(["--out", str(tmp_path / "a"), "--seed", "3"]) == 0
    assert f"wrote {tmp_path / 'a' / 'eval_prompts.jsonl'}" in capsys.readouterr().out
    assert _read_jsonl(tmp_path / "a" / "eval_prompts.jsonl") == files_of_seed(3)["eval_prompts.jsonl"]
    assert files_of_seed(3)["eval_prompts.jsonl"] != files_of_seed(0)["eval_prompts.jsonl"]
    config_file = tmp_path / "task.yaml"
    config_file.write_text("seed: 3\n")
    assert module.main(["--config", str(config_file), f"--out={tmp_path / 'b'}"]) == 0
    assert (tmp_path / "b" / "sft.jsonl").read_text() == (tmp_path / "a" / "sft.jsonl").read_text()


@pytest.mark.parametrize("module, files_of_seed, folder", TASKS, ids=[t[2] for t in TASKS])
def test_prompt_splits_are_disjoint_and_sized(module, files_of_seed, folder):
    files = files_of_seed(0)
    sft_prompts = {row["messages"][0]["content"] for row in files["sft.jsonl"]}
    if module is demo_task:  # the demo's SFT also holds name questions, which are outside the request language
        sft_prompts = {p for p in sft_prompts if demo_task.parse_prompt(p)}
    sets = {"sft": sft_prompts}
    for split in ("label_prompts", "ppo_prompts", "eval_prompts"):
        sets[split] = {row["prompt"] for row in files[f"{split}.jsonl"]}
    assert {split: len(prompts) for split, prompts in sets.items()} == module.SPLITS
    assert len(set().union(*sets.values())) == sum(module.SPLITS.values())
    assert len(sets["eval_prompts"]) >= 100


def test_command_line_help_and_errors(capsys):
    assert yes_no_task.main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "yes/no task" in text and "--out (default None)" in text and "--seed (default 0)" in text
    with pytest.raises(ConfigError, match="unknown config key 'sed'; did you mean 'seed'"):
        demo_task.main(["--sed", "1"])
    with pytest.raises(ConfigError, match="seed must be an integer"):
        yes_no_task.main(["--seed", "one"])
