"""`rlhf pipeline --seeds`: the sweep's pure summaries, its `seeds` key, and a shortened two-seed sweep end to end."""

import json

import pytest

from rlhf import demo_task, pipeline, sweep
from rlhf.config import load_config
from rlhf.errors import ConfigError
from test_pipeline import first_lines

PROMPT = "I am Anna. Describe a red apple."
NAMED, PLAIN, WRONG = "Sure, Anna! A red apple is sweet.", "A red apple is sweet.", "Sure, Ben! A red apple is sweet."


def test_spread_of_equal_values_is_zero_and_of_one_value_too():
    assert sweep.spread([0.5, 0.5, 0.5]) == {"mean": 0.5, "sd": 0.0}
    assert sweep.spread([0.7]) == {"mean": 0.7, "sd": 0.0}
    assert sweep.spread([1.0, 3.0])["sd"] == pytest.approx(2 ** 0.5)


def test_bootstrap_interval_holds_the_mean_and_repeats_with_its_seed():
    groups = [[1.0, 0.0, 0.5, 1.0, 1.0, 0.0, 1.0, 0.5], [0.0, 1.0, 1.0, 1.0, 0.5, 1.0]]
    low, high = sweep.bootstrap_interval(groups, resamples=500)
    centre = sum(sum(g) / len(g) for g in groups) / len(groups)
    assert low < centre < high and 0.0 <= low and high <= 1.0
    assert sweep.bootstrap_interval(groups, resamples=500) == [low, high]
    assert sweep.bootstrap_interval(groups, resamples=500, seed=1) != [low, high]
    assert sweep.bootstrap_interval([[1.0] * 5, [0.0] * 5], resamples=100) == [0.5, 0.5]  # no spread within seeds


def test_prompt_win_rates_and_outcome_counts_read_the_samples():
    pairs = [(NAMED, PLAIN), (PLAIN, PLAIN), (WRONG, NAMED), ("", WRONG)]
    samples = [{"prompt": PROMPT, "policy": policy, "baseline": baseline} for policy, baseline in pairs]
    assert sweep.prompt_win_rates(samples, 1, demo_task.gold_score) == [1.0, 0.5, 0.0, 0.5]
    assert sweep.prompt_win_rates(samples, 2, demo_task.gold_score) == [0.75, 0.25]  # two samples per prompt
    assert sweep.outcome_counts(samples, "policy", demo_task.outcome) == {
        "right name": 1, "no name": 1, "wrong name": 1, "broken": 1}
    assert sweep.outcome_counts(samples, "baseline", demo_task.outcome) == {
        "no name": 2, "right name": 1, "wrong name": 1}


def test_summary_and_table_over_seeds():
    rows = [{"seed": s, "win_rate": w, "kl": k, "policy_gold_score": 0.8, "baseline_gold_score": 0.6,
             "rm_test_accuracy": None if s else 0.9, "outcomes": {"policy": {"right name": 3, "broken": 1},
                                                                    "baseline": {"no name": 4}}}
            for s, w, k in ((0, 0.75, 2.0), (1, 0.5, 4.0))]
    summary = sweep.summarize(rows, [[1.0, 0.5, 1.0, 0.5], [0.5, 0.5, 0.0, 1.0]], resamples=200)
    assert summary["win_rate"]["mean"] == 0.625 and summary["kl"] == {"mean": 3.0, "sd": pytest.approx(2 ** 0.5)}
    assert summary["rm_test_accuracy"] == {"mean": 0.9, "sd": 0.0}  # the seeds that have one
    assert summary["win_rate"]["resamples"] == 200 and len(summary["win_rate"]["ci95"]) == 2
    assert summary["outcomes"] == {"policy": {"right name": 6, "broken": 2}, "baseline": {"no name": 8}}
    table = sweep.markdown("Sweep", rows, summary)
    assert "| gold win rate vs SFT | 0.750 | 0.500 | 0.625 ± 0.177 |" in table
    assert "| reward-model test accuracy | 0.900 |  | 0.900 ± 0.000 |" in table
    assert "| right name | 6 (75%) | 0 (0%) |" in table and "| no name | 0 (0%) | 8 (100%) |" in table


@pytest.mark.parametrize("argv, seeds", [
    (["--seeds", "0,1"], [0, 1]),
    (["--seeds", "0", "--seeds", "1"], [0, 1]),
    (["--seeds", "[0, 1]"], [0, 1]),
    (["--seeds=2, 5"], [2, 5]),
    ([], []),
])
def test_seeds_key_parses(argv, seeds):
    assert load_config(pipeline.PipelineConfig, argv).seeds == seeds


def test_seeds_from_yaml_and_bad_seeds(tmp_path):
    config_file = tmp_path / "pipeline.yaml"
    config_file.write_text("seeds: [3, 4]\n")
    assert load_config(pipeline.PipelineConfig, ["--config", str(config_file)]).seeds == [3, 4]
    with pytest.raises(ConfigError, match="seeds: 'one' is not an integer"):
        load_config(pipeline.PipelineConfig, ["--seeds", "0,one"])
    with pytest.raises(ConfigError, match="seeds: .* repeats a seed"):
        load_config(pipeline.PipelineConfig, ["--seeds", "1,1"])


def test_a_sweep_without_gold_judge_or_with_a_bad_outcome_fails_before_training(tmp_path):
    ran = []
    with pytest.raises(ConfigError, match="gold_judge is not set"):
        sweep.run(load_config(pipeline.PipelineConfig, ["--seeds", "0", "--gold_judge", "null"]), ran.append)
    with pytest.raises(ConfigError, match="gold_outcome 'rlhf.demo_task:nothing'"):
        sweep.run(load_config(pipeline.PipelineConfig, ["--seeds", "0", "--gold_outcome", "rlhf.demo_task:nothing",
                                                        "--output_dir", str(tmp_path)]), ran.append)
    assert ran == []


@pytest.mark.slow
def test_two_seed_sweep_runs_each_seed_then_summarises(tmp_path, capsys):
    root = tmp_path / "sweep"
    overrides = {
        "output_dir": str(root), "seeds": [0, 1], "tiny_hidden": 32, "report_to": "none",
        "label_prompts": first_lines("configs/demo/label_prompts.jsonl", tmp_path / "label.jsonl", 16),
        "eval_prompts": first_lines("configs/demo/eval_prompts.jsonl", tmp_path / "eval.jsonl", 8),
        "label_samples": 3, "annotator_rule": "test_pipeline:longer_is_better", "annotator_noise": 0.0,
        "label_max_new_tokens": 16, "eval_max_new_tokens": 16,
        "sft_overrides": {"max_steps": 20, "eval_steps": 10, "save_steps": 10},
        "reward_overrides": {"max_steps": 4, "eval_steps": 2, "save_steps": 2},
        "ppo_overrides": {"max_steps": 2, "save_steps": 2, "batch_size": 8, "mini_batch_size": 4, "max_new_tokens": 8},
    }
    config = load_config(pipeline.PipelineConfig, ["--config", "configs/demo/pipeline.yaml"], overrides)
    timings = pipeline.run(config)
    assert set(timings) == {"seed-0", "seed-1"} and set(timings["seed-0"]) == set(pipeline.STAGES)
    for seed in (0, 1):
        saved = load_config(pipeline.PipelineConfig, ["--config", str(root / f"seed-{seed}" / "pipeline.yaml")])
        assert saved.seed == seed and saved.seeds == [] and saved.output_dir == str(root / f"seed-{seed}")
    result = json.loads((root / "sweep.json").read_text())
    assert [row["seed"] for row in result["seeds"]] == [0, 1]
    for seed, row in zip((0, 1), result["seeds"]):
        evaluation = json.loads((root / f"seed-{seed}" / "eval" / "eval.json").read_text())
        assert row["win_rate"] == pytest.approx(evaluation["models"]["policy"]["win_rate"])
        assert row["kl"] == evaluation["models"]["policy"]["kl"]
        assert sum(row["outcomes"]["policy"].values()) == len(evaluation["samples"])
    low, high = result["summary"]["win_rate"]["ci95"]
    assert low <= result["summary"]["win_rate"]["mean"] <= high
    assert "| gold win rate vs SFT |" in capsys.readouterr().out

    (root / "sweep.json").unlink()
    again = pipeline.run(config)  # every seed's stages are complete; the summary is recomputed from eval.json
    assert capsys.readouterr().out.count("complete, skipped") == 2 * len(pipeline.STAGES)
    assert again == timings and json.loads((root / "sweep.json").read_text()) == result
