"""The reward stage as two processes (gloo on CPU) under DDP, ZeRO-2 and ZeRO-3."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import DATA, make_tiny
from dist_helpers import launch_command, run, train_losses
from rlhf import runs

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

STEPS = 4


@pytest.mark.parametrize("config", ["cpu_ddp_2proc", "cpu_zero2_2proc", "cpu_zero3_2proc"])
def test_reward_two_processes(tmp_path_factory, tmp_path, config):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    model = make_tiny(tmp_path_factory, "llama", hidden=32, layers=1)
    run_dir = tmp_path / "run"
    run(launch_command(config, [
        "reward", "--model_name_or_path", str(model), "--dataset_path", str(DATA / "prefs_polite.jsonl"),
        "--output_dir", str(run_dir), "--max_steps", str(STEPS), "--per_device_train_batch_size", "4",
        "--logging_steps", "1", "--eval_steps", str(STEPS), "--save_steps", str(STEPS), "--learning_rate", "0.005"]))

    summary = runs.read_summary(run_dir)
    assert summary["world_size"] == 2 and summary["global_step"] == STEPS
    assert sorted(train_losses(run_dir)) == list(range(1, STEPS + 1))  # logged once per step: one writer
    stats = json.loads((run_dir / "reward_stats.json").read_text())
    assert stats["count"] == 2 * summary["data"]["train_rows"]  # both processes' shares, nothing twice

    saved = load_file(run_dir / runs.FINAL / "adapter_model.safetensors")
    assert saved and all(t.numel() > 0 for t in saved.values())
    head = [name for name in saved if "score" in name]
    assert head, sorted(saved)
    base = AutoModelForSequenceClassification.from_pretrained(model, num_labels=1)
    tuned = PeftModel.from_pretrained(base, run_dir / runs.FINAL)
    params = dict(tuned.named_parameters())
    for name in head:
        loaded = next(p for n, p in params.items() if n.replace(".modules_to_save.default", "") == name)
        assert torch.equal(loaded, saved[name]), name
