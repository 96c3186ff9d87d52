"""`rlhf pipeline` end to end on a shortened demo: every stage runs once, writes its outputs, and is skipped after."""

import json
import sqlite3

import pytest

from rlhf import pipeline, runs
from rlhf.config import load_config


def first_lines(src, dst, n):
    dst.write_text("".join(open(src).readlines()[:n]))
    return str(dst)


def longer_is_better(prompt, first, second):
    """A judge with an opinion on a barely trained model's samples (the demo's gold judge mostly ties there)."""
    return "a" if len(first) > len(second) else "b" if len(second) > len(first) else "tie"


@pytest.mark.slow
def test_short_pipeline_runs_every_stage_then_skips_them(tmp_path, capsys):
    root = tmp_path / "demo"
    overrides = {
        "output_dir": str(root), "tiny_hidden": 32, "report_to": "wandb",  # offline in tests (conftest)
        "label_prompts": first_lines("configs/demo/label_prompts.jsonl", tmp_path / "label.jsonl", 24),
        "eval_prompts": first_lines("configs/demo/eval_prompts.jsonl", tmp_path / "eval.jsonl", 8),
        "label_samples": 3, "annotator_rule": "test_pipeline:longer_is_better", "annotator_noise": 0.0, "label_max_new_tokens": 16, "eval_max_new_tokens": 16,
        "sft_overrides": {"max_steps": 30, "eval_steps": 15, "save_steps": 15},
        "reward_overrides": {"max_steps": 6, "eval_steps": 3, "save_steps": 3},
        "ppo_overrides": {"max_steps": 2, "save_steps": 2, "batch_size": 8, "mini_batch_size": 4, "max_new_tokens": 8},
    }
    config = load_config(pipeline.PipelineConfig, ["--config", "configs/demo/pipeline.yaml"], overrides)
    timings = pipeline.run(config)
    assert set(timings) == set(pipeline.STAGES)

    for stage in ("sft", "rm", "ppo"):
        assert runs.is_finished(root / stage), stage
        assert (root / stage / "report.png").is_file()
        assert len(list((root / stage / "wandb").glob("offline-run-*"))) == 1, stage  # one W&B run per stage
    with sqlite3.connect(root / "labels" / "labels.sqlite") as conn:
        n_pairs = conn.execute("SELECT COUNT(*) FROM pairs").fetchone()[0]
        n_labels = conn.execute("SELECT COUNT(*) FROM labels").fetchone()[0]
    assert n_pairs > 0 and n_labels == n_pairs * config.annotators  # every pair labeled by every annotator
    exported = (root / "labels" / "prefs.jsonl").read_text().splitlines()
    rm_rows = runs.read_summary(root / "rm")["data"]
    assert rm_rows["train_rows"] + rm_rows["validation_rows"] + rm_rows["test_rows"] == len(exported)
    result = json.loads((root / "eval" / "eval.json").read_text())
    assert result["prompts"] == 8
    assert 0.0 <= result["models"]["policy"]["win_rate"] <= 1.0
    assert {"gold_score", "kl", "reward_score"} <= set(result["models"]["policy"])
    assert "gold win rate vs baseline" in capsys.readouterr().out

    again = pipeline.run(config)  # a second start finds every stage complete
    out = capsys.readouterr().out
    assert out.count("complete, skipped") == len(pipeline.STAGES)
    assert again == timings
