"""The SFT stage: loss falls for every peft method, runs are reproducible and resumable."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import DATA, StopAt
from rlhf import runs, sft
from rlhf.config import load_config
from rlhf.errors import DataError


def sft_config(model, out, *extra):
    argv = ["--model_name_or_path", str(model), "--dataset_path", str(DATA / "sft_chat.jsonl"), "--output_dir", str(out),
            "--max_steps", "20", "--per_device_train_batch_size", "8", "--eval_steps", "10", "--save_steps", "10",
            "--logging_steps", "5", "--learning_rate", "0.01", *extra]
    return load_config(sft.SFTStageConfig, argv)


def train_losses(run_dir):
    return [r["train/loss"] for r in runs.MetricsFile(run_dir).read() if "train/loss" in r]


@pytest.mark.parametrize("method,lr,drop", [("lora", "0.01", 0.4), ("full", "0.003", 1.5),
                                            ("prompt_tuning", "0.1", 0.02), ("prefix_tuning", "0.03", 0.05)])
def test_loss_falls(tiny_llama, tmp_path, method, lr, drop):
    summary = sft.run(sft_config(tiny_llama, tmp_path / "run", "--peft_method", method, "--learning_rate", lr))
    losses = train_losses(tmp_path / "run")
    assert len(losses) == 4
    assert losses[-1] < losses[0] - drop, losses
    assert summary["global_step"] == 20 and "test/loss" in summary and "test/perplexity" in summary
    final = tmp_path / "run" / "final"
    assert (final / ("model.safetensors" if method == "full" else "adapter_model.safetensors")).is_file()
    assert (final / "tokenizer.json").is_file()
    assert (tmp_path / "run" / "config.yaml").is_file()


def test_final_adapter_loads_with_plain_peft(tiny_llama, tmp_path):
    from peft import PeftModel

    sft.run(sft_config(tiny_llama, tmp_path / "run", "--max_steps", "10"))
    base = AutoModelForCausalLM.from_pretrained(tiny_llama)
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), tmp_path / "run" / "final")
    ids = torch.tensor([[5, 6, 7, 8]])
    assert not torch.allclose(base(ids).logits, tuned(ids).logits, atol=1e-4)


def test_same_seed_same_losses(tiny_llama, tmp_path):
    for name in ("a", "b"):
        sft.run(sft_config(tiny_llama, tmp_path / name, "--max_steps", "10", "--seed", "3"))
    assert train_losses(tmp_path / "a") == train_losses(tmp_path / "b")
    sft.run(sft_config(tiny_llama, tmp_path / "c", "--max_steps", "10", "--seed", "4"))
    assert train_losses(tmp_path / "a") != train_losses(tmp_path / "c")



def test_resume_matches_uninterrupted(tiny_llama, tmp_path):
    sft.run(sft_config(tiny_llama, tmp_path / "full"))
    with pytest.raises(KeyboardInterrupt):
        sft.run(sft_config(tiny_llama, tmp_path / "resumed"), callbacks=(StopAt(15),))
    assert runs.last_checkpoint(tmp_path / "resumed").name == "checkpoint-10"
    assert not runs.is_finished(tmp_path / "resumed")
    summary = sft.run(sft_config(tiny_llama, tmp_path / "resumed"))
    assert summary["global_step"] == 20
    steps = [r["step"] for r in runs.MetricsFile(tmp_path / "resumed").read() if "train/loss" in r]
    assert steps == [5, 10, 15, 20]  # the step-15 entry of the stopped run was replaced, not duplicated
    assert train_losses(tmp_path / "resumed") == pytest.approx(train_losses(tmp_path / "full"), rel=1e-4)
    # a finished run is not trained again
    assert sft.run(sft_config(tiny_llama, tmp_path / "resumed"))["global_step"] == 20


def test_incomplete_checkpoint_is_ignored(tiny_llama, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        sft.run(sft_config(tiny_llama, tmp_path / "run"), callbacks=(StopAt(12),))
    half = tmp_path / "run" / "checkpoints" / "checkpoint-20"
    half.mkdir()
    (half / "adapter_model.safetensors").write_bytes(b"partial")  # a crash mid-save leaves no COMPLETE marker
    assert runs.last_checkpoint(tmp_path / "run").name == "checkpoint-10"
    assert sft.run(sft_config(tiny_llama, tmp_path / "run"))["global_step"] == 20


def test_prompt_completion_and_drop_too_long(tiny_llama, tmp_path):
    cfg = sft_config(tiny_llama, tmp_path / "run", "--dataset_path", str(DATA / "sft_prompt_completion.jsonl"),
                     "--max_length", "12", "--too_long", "drop", "--max_steps", "2", "--val_ratio", "0", "--test_ratio", "0")
    with pytest.raises(DataError, match="no training rows left .*48 over max_length \\(dropped 48\\)"):
        sft.run(cfg)  # every row is longer than 12 tokens and dropped: refusing to train on nothing
    cfg = sft_config(tiny_llama, tmp_path / "run2", "--dataset_path", str(DATA / "sft_prompt_completion.jsonl"),
                     "--max_length", "22", "--max_steps", "2")
    summary = sft.run(cfg)
    assert summary["data"]["train_too_long"] > 0 and summary["data"]["train_dropped"] == 0
    assert json.loads((tmp_path / "run2" / "summary.json").read_text())["data"]["train_rows"] == 38


def test_early_stopping_keeps_the_best_checkpoint_and_tensorboard_logs(tiny_llama, tmp_path):
    # Falling eval loss counted as getting worse (greater_is_better) makes the first evaluation the best
    # one, so early stopping must end the run `patience` evaluations later and keep that first model.
    summary = sft.run(sft_config(tiny_llama, tmp_path / "run", "--max_steps", "40", "--eval_steps", "5",
                                 "--save_steps", "5", "--early_stopping_patience", "2", "--greater_is_better", "true",
                                 "--report_to", "tensorboard"))
    assert summary["global_step"] == 15
    evals = [r for r in runs.MetricsFile(tmp_path / "run").read() if "eval/loss" in r]
    assert [r["step"] for r in evals] == [5, 10, 15] and evals[0]["eval/loss"] > evals[-1]["eval/loss"]
    from safetensors.torch import load_file

    best = load_file(tmp_path / "run" / "checkpoints" / "checkpoint-5" / "adapter_model.safetensors")
    final = load_file(tmp_path / "run" / "final" / "adapter_model.safetensors")
    assert best.keys() == final.keys() and all(torch.equal(best[k], final[k]) for k in best)
    assert list((tmp_path / "run" / "tensorboard").rglob("events.out.tfevents.*"))
