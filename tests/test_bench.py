"""scripts/bench.py: the report's arithmetic, its data, and a smoke run on a tiny model without the anchor."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_ppo_result_leaves_out_the_warm_up_step(bench):
    steps = [{"generation": 9.0, "scoring": 9.0, "training": 9.0},
             {"generation": 1.0, "scoring": 0.5, "training": 0.5},
             {"generation": 3.0, "scoring": 0.5, "training": 0.5}]
    result = bench.ppo_result(steps, batch_size=8)
    assert result == {"completions_per_s": 16 / 6, "measured_steps": 2, "generation_s": 2.0, "scoring_s": 0.5,
                      "training_s": 0.5}


def test_summary_median_range_mfu_and_ratios(bench):
    runs = [{"tokens_per_s": 100.0, "peak_rss_mb": 500.0, "wall_s": 10.0, "note": "x"},
            {"tokens_per_s": 300.0, "peak_rss_mb": 700.0, "wall_s": 30.0, "note": "x"},
            {"tokens_per_s": 200.0, "peak_rss_mb": 600.0, "wall_s": 20.0, "note": "x"}]
    ours = bench.summarise(runs, flops=[6e6, 6e6, 6e6], params=1000)
    assert ours["tokens_per_s"] == {"median": 200.0, "min": 100.0, "max": 300.0}
    assert ours["mfu"] == {"median": pytest.approx(0.2), "min": pytest.approx(0.1), "max": pytest.approx(0.3)}
    assert "note" not in ours
    anchor = bench.summarise([dict(r, tokens_per_s=r["tokens_per_s"] / 2) for r in runs], [6e6] * 3, 1000)
    assert bench.ratios("sft", ours, anchor) == {"tokens_per_s": 2.0, "peak_rss_mb": 1.0, "wall_s": 1.0}
    assert bench.ratios("sft", ours, None) == {"tokens_per_s": None, "peak_rss_mb": None, "wall_s": None}


def test_preference_pairs_prefer_the_higher_gold_score(bench):
    from rlhf import demo_task

    pairs = bench.preference_pairs(seed=0)
    assert len(pairs) == len(demo_task.demo_files()["label_prompts.jsonl"])
    for pair in pairs:
        prompt = pair["prompt"][0]["content"]
        chosen, rejected = pair["chosen"][0]["content"], pair["rejected"][0]["content"]
        assert demo_task.gold_score(prompt, chosen) > demo_task.gold_score(prompt, rejected)
    assert pairs == bench.preference_pairs(seed=0)


def test_allocator_is_preloaded_from_the_system_libraries_or_named_as_missing(bench, tmp_path, monkeypatch):
    assert bench.allocator_env("glibc") == {}
    monkeypatch.setattr(bench, "LIBRARY_DIRS", (str(tmp_path / "none"), str(tmp_path)))
    with pytest.raises(SystemExit, match="apt-get install libjemalloc2"):
        bench.allocator_env("jemalloc")
    (tmp_path / "libtcmalloc_minimal.so.4").write_bytes(b"")
    assert bench.allocator_env("tcmalloc") == {"LD_PRELOAD": str(tmp_path / "libtcmalloc_minimal.so.4")}


def test_unknown_stage_is_refused(bench):
    with pytest.raises(SystemExit, match="unknown stage"):
        bench.main(["--only", "sft,dpo", "--skip-anchor"])


@pytest.mark.slow
def test_tiny_benchmark_without_anchor_reports_every_stage(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--reps", "1", "--skip-anchor", "--threads", "1",
                           "--workdir", str(tmp_path / "work"), "--out", str(out)],
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    report = json.loads(out.read_text())
    s = report["settings"]
    assert (s["hidden"], s["layers"], s["heads"], s["steps"]) == (64, 2, 4, 3)
    assert report["matmul_flops"]["median"] > 0 and report["model_parameters"] > 0
    expected = {"sft": {"tokens_per_s", "mfu", "peak_rss_mb", "wall_s"},
                "reward": {"tokens_per_s", "mfu", "peak_rss_mb", "wall_s"},
                "ppo": {"completions_per_s", "peak_rss_mb", "generation_s", "scoring_s", "training_s", "wall_s"}}
    for stage, fields in expected.items():
        part = report[stage]
        assert part["anchor"] is None
        assert part["ratios"] and all(value is None for value in part["ratios"].values())
        assert fields <= part["ours"].keys()
        for name in fields:
            stat = part["ours"][name]
            assert 0 < stat["min"] <= stat["median"] <= stat["max"], (stage, name, stat)
        assert f"| {stage} |" in proc.stdout
    for stage in ("sft", "reward"):
        (run,) = report[stage]["runs"]["ours"]
        assert run["tokens_per_s"] == pytest.approx(run["tokens"] / run["train_s"])
        assert s["steps"] * s["batch_size"] * 10 <= run["tokens"] <= s["steps"] * s["batch_size"] * 2 * s["max_length"]
    (ppo,) = report["ppo"]["runs"]["ours"]
    assert ppo["measured_steps"] == s["steps"] - 1
    # the stage's default value model, auto, resolved: the reward model reads the policy's tokens
    assert ppo["value_model"] == "reward_head" and "our value model reward_head" in proc.stdout


def test_streaming_fraction_is_the_bound_over_the_measured_time_per_token(bench):
    runs = [{"generation_s": 2.0}, {"generation_s": 4.0}]
    bench.add_streaming(runs, bandwidths=[1e9, 2e9], weight_bytes=10**7, tokens=100)
    assert runs[0]["generation_token_ms"] == pytest.approx(20.0) and runs[1]["generation_token_ms"] == pytest.approx(40.0)
    assert runs[0]["streaming_fraction"] == pytest.approx(0.01 / 0.02)  # 10 MB at 1 GB/s: 10 ms of 20 ms per token
    assert runs[1]["streaming_fraction"] == pytest.approx(0.005 / 0.04)
    assert bench.memory_bandwidth(megabytes=64, repeats=2) > 0


def test_decode_products_run_every_linear_layer_with_the_kernels_decoding_uses(bench, tmp_path_factory, monkeypatch):
    import torch

    from rlhf.packed_weights import PackedLinear
    from tests.conftest import make_tiny

    model = make_tiny(tmp_path_factory, "llama", hidden=256, layers=1, heads=4)
    calls = {"packed": 0, "plain": 0}
    packed_call, plain_forward = PackedLinear.__call__, torch.nn.Linear.forward
    monkeypatch.setattr(PackedLinear, "__call__", lambda self, x: calls.__setitem__("packed", calls["packed"] + 1)
                        or packed_call(self, x))
    monkeypatch.setattr(torch.nn.Linear, "forward", lambda self, x: calls.__setitem__("plain", calls["plain"] + 1)
                        or plain_forward(self, x))
    assert bench.decode_products_seconds(model, rows=8, repeats=2) > 0
    # gate, up and down are large enough to pack; q, k, v, o and the lm_head are not; 1 warm-up + 2 timed passes
    assert calls == {"packed": 3 * 3, "plain": 5 * 3}


def test_critic_free_estimators_take_what_their_trl_anchor_does(bench):
    def keys(*argv):
        return bench.estimator_keys(bench.settings_from(bench.parse_args(list(argv))))

    assert keys() == {}  # gae with the stage's default value model
    assert keys("--value-model", "reward_head") == {"value_model": "reward_head"}
    assert keys("--estimator", "grpo") == {"advantage_estimator": "grpo", "num_samples_per_prompt": 4,
                                           "kl_in_loss": True, "normalize_scores": False}
    assert keys("--estimator", "rloo", "--num-samples", "2")["kl_in_loss"] is False  # RLOO: KL in the reward
    with pytest.raises(SystemExit, match="--num-samples"):
        keys("--estimator", "rloo", "--num-samples", "3")


def test_response_length_flag_sets_the_new_tokens_of_both_sides(bench):
    settings = bench.settings_from(bench.parse_args(["--response-length", "48"]))
    assert settings.response_length == 48
    assert bench.settings_from(bench.parse_args([])).response_length == 64


def test_dtype_flag_sets_the_weights_of_both_sides(bench):
    assert bench.settings_from(bench.parse_args([])).dtype == "float32"
    assert bench.settings_from(bench.parse_args(["--dtype", "bfloat16"])).dtype == "bfloat16"
    with pytest.raises(SystemExit):
        bench.parse_args(["--dtype", "fp8"])


@pytest.fixture(scope="module")
def shared_workdir(tmp_path_factory):
    """One bench model, data set and reward run for the critic-free smoke runs."""
    return tmp_path_factory.mktemp("bench-work")


@pytest.mark.slow
@pytest.mark.parametrize("estimator, kl_coef, dtype", [("grpo", "0.05", "float32"), ("rloo", "0", "bfloat16")])
def test_tiny_critic_free_benchmark_against_trl(estimator, kl_coef, dtype, shared_workdir, tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--only", "ppo", "--estimator", estimator,
                           "--kl-coef", kl_coef, "--dtype", dtype, "--steps", "1", "--reps", "1", "--threads", "1",
                           "--workdir", str(shared_workdir), "--out", str(out)],
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    report = json.loads(out.read_text())
    assert (report["settings"]["estimator"], report["settings"]["kl_coef"]) == (estimator, float(kl_coef))
    assert report["settings"]["dtype"] == dtype and report["memory_bandwidth"]["median"] > 0
    assert report["weight_bytes"] == {"float32": 4, "bfloat16": 2}[dtype] * report["model_parameters"]
    part = report["ppo"]
    assert set(part["ratios"]) == {"completions_per_s", "peak_rss_mb", "generation_s", "scoring_s", "training_s",
                                   "wall_s"}
    assert all(ratio > 0 for ratio in part["ratios"].values()), part["ratios"]
    for side in ("ours", "anchor"):
        assert part[side]["completions_per_s"]["median"] > 0
        assert 0 < part[side]["streaming_fraction"]["median"] and part[side]["generation_token_ms"]["median"] > 0
        (run,) = part["runs"][side]
        assert run["measured_steps"] == 1
    # the products alone reach a larger share of the bound than the whole decode loop: they are part of its time
    assert report["products_streaming_fraction"]["median"] > part["ours"]["streaming_fraction"]["median"]
    assert f"PPO estimator {estimator}" in proc.stdout and "| ppo | completions/s |" in proc.stdout
    assert "linear products alone" in proc.stdout
    assert {"float32": "fp32 weights", "bfloat16": "bf16 weights"}[dtype] in proc.stdout
