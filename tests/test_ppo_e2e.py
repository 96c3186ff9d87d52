"""`rlhf sft` -> `rlhf reward` on the SFT run -> `rlhf ppo`, through the command line and the shipped configs."""

from pathlib import Path

import pytest
import torch

from conftest import DATA
from rlhf import cli, runs
from rlhf.models import load_causal_lm, resolve

CPU_SMALL = str(Path(__file__).parents[1] / "configs" / "ppo" / "cpu_small.yaml")


@pytest.mark.usefixtures("one_thread")
def test_sft_then_reward_then_ppo(tiny_llama, tmp_path, capsys):
    sft, rm, ppo = tmp_path / "sft", tmp_path / "rm", tmp_path / "ppo"
    assert cli.main(["sft", "--model_name_or_path", str(tiny_llama), "--dataset_path", str(DATA / "sft_chat.jsonl"),
                     "--output_dir", str(sft), "--max_steps", "10", "--learning_rate", "0.01",
                     "--per_device_train_batch_size", "8", "--eval_steps", "10", "--save_steps", "10"]) == 0
    assert cli.main(["reward", "--model_name_or_path", str(sft), "--dataset_path", str(DATA / "prefs_polite.jsonl"),
                     "--output_dir", str(rm), "--max_steps", "10", "--learning_rate", "0.005",
                     "--per_device_train_batch_size", "8", "--eval_steps", "10", "--save_steps", "10"]) == 0
    assert cli.main(["ppo", "--config", CPU_SMALL,
                     "--policy_path", str(sft), "--reward_model_path", str(rm),
                     "--dataset_path", str(DATA / "sft_chat.jsonl"), "--output_dir", str(ppo),
                     "--max_steps", "3", "--batch_size", "8", "--mini_batch_size", "4", "--max_new_tokens", "8",
                     "--save_steps", "2", "--log_completions_steps", "3", "--report_to", "tensorboard"]) == 2
    # sft_chat.jsonl rows end with the assistant's answer: they are not prompts, and the error names the row.
    assert "sft_chat.jsonl:1: field 'messages': ends with an assistant turn" in capsys.readouterr().err
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(f'{{"prompt": "What color is thing {i}?"}}\n' for i in range(8)))
    assert cli.main(["ppo", "--config", CPU_SMALL,
                     "--policy_path", str(sft), "--reward_model_path", str(rm), "--dataset_path", str(prompts),
                     "--output_dir", str(ppo), "--max_steps", "3", "--batch_size", "8", "--mini_batch_size", "4",
                     "--max_new_tokens", "8", "--save_steps", "2", "--log_completions_steps", "3",
                     "--report_to", "tensorboard"]) == 0

    summary = runs.read_summary(ppo)
    assert summary["global_step"] == 3 and summary["reward"].startswith("shared base")
    assert [m["step"] for m in runs.MetricsFile(ppo).read()] == [1, 2, 3]
    assert any((ppo / "tensorboard").rglob("events.out.tfevents.*"))
    assert len(runs.MetricsFile(ppo, "completions.jsonl").read()) == 4
    source = resolve(str(ppo))
    assert source.merged == (str(sft / "final"),) and source.adapter == str(ppo / "final")
    policy, start = load_causal_lm(str(ppo)), load_causal_lm(str(sft))
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert not torch.allclose(policy(ids).logits, start(ids).logits)  # PPO moved the policy off the SFT model
