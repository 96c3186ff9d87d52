"""`rlhf report`: one PNG per run with a subplot for each known metric the run logged."""

import matplotlib.image
import pytest

from rlhf import cli, report
from rlhf.config import load_config
from rlhf.errors import ConfigError
from rlhf.runs import MetricsFile

PPO = ["ppo/score_mean", "ppo/reward_mean", "ppo/kl", "ppo/loss_value", "ppo/entropy", "ppo/response_length"]


def _run(path, records):
    path.mkdir(parents=True)
    metrics = MetricsFile(path)
    for step, values in records:
        metrics.log(step, values)
    return path


def test_ppo_run_gets_six_curves_in_a_two_by_three_grid(tmp_path):
    run = _run(tmp_path / "ppo", [(s, {**{m: s * 0.1 for m in PPO}, "ppo/lr": 1e-5}) for s in range(1, 6)])
    assert report.plot_run(run) == PPO
    height, width, _ = matplotlib.image.imread(run / "report.png").shape
    assert (height, width) == (640, 1350)


def test_sft_and_reward_runs_get_their_losses(tmp_path):
    sft = _run(tmp_path / "sft", [(5, {"train/loss": 2.0}), (10, {"train/loss": 1.0}), (10, {"eval/loss": 1.5}),
                                  (10, {"test/loss": 1.4})])
    rm = _run(tmp_path / "rm", [(5, {"train/loss": 0.7}), (10, {"eval/loss": 0.6, "eval/accuracy": 0.8})])
    assert report.plot_run(sft, tmp_path / "sft.png") == ["train/loss", "eval/loss"]
    assert report.plot_run(rm, tmp_path / "rm.png") == ["train/loss", "eval/loss", "eval/accuracy"]
    assert matplotlib.image.imread(tmp_path / "sft.png").shape[:2] == (320, 900)


def test_cli_writes_one_png_per_run_into_out(tmp_path, capsys):
    a = _run(tmp_path / "a", [(1, {"train/loss": 1.0}), (2, {"train/loss": float("nan")})])
    b = _run(tmp_path / "b", [(1, {"ppo/kl": 0.1})])
    assert cli.main(["report", str(a), str(b), "--out", str(tmp_path / "plots")]) == 0
    assert (tmp_path / "plots" / "a.png").is_file() and (tmp_path / "plots" / "b.png").is_file()
    assert "a.png: train/loss" in capsys.readouterr().out
    assert report.series(MetricsFile(a).read(), "train/loss") == ([1], [1.0])  # NaN is skipped


def test_runs_without_known_metrics_are_errors(tmp_path):
    with pytest.raises(ConfigError, match="no metrics.jsonl"):
        report.plot_run(tmp_path)
    run = _run(tmp_path / "x", [(1, {"train/grad_norm": 1.0})])
    with pytest.raises(ConfigError, match="none of"):
        report.plot_run(run)
    assert report.plot_run(run, metrics=("train/grad_norm",)) == ["train/grad_norm"]


def test_run_dirs_first_then_keys_and_the_metrics_key(tmp_path, capsys):
    a = _run(tmp_path / "a", [(1, {"train/loss": 1.0, "eval/loss": 2.0, "ppo/kl": 0.1})])
    b = _run(tmp_path / "b", [(1, {"train/loss": 1.0, "eval/loss": 2.0})])
    plots = tmp_path / "plots"
    assert cli.main(["report", str(a), str(b), "--out", str(plots), "--metrics", "eval/loss,train/loss"]) == 0
    printed = capsys.readouterr().out
    assert printed == f"{plots / 'a.png'}: eval/loss, train/loss\n{plots / 'b.png'}: eval/loss, train/loss\n"
    assert cli.main(["report", "--run_dirs", str(a), "--metrics", "ppo/kl", "--metrics", "eval/loss"]) == 0
    assert capsys.readouterr().out == f"{a / 'report.png'}: ppo/kl, eval/loss\n"
    assert (a / "report.png").is_file()


def test_report_config_and_errors(tmp_path, capsys):
    config_file = tmp_path / "report.yaml"
    config_file.write_text("run_dirs: [runs/sft, runs/ppo]\nmetrics: [ppo/kl]\n")
    config = load_config(report.ReportConfig, ["--config", str(config_file)])
    assert config.run_dirs == ["runs/sft", "runs/ppo"] and config.metrics == ["ppo/kl"] and config.out is None
    assert load_config(report.ReportConfig, ["runs/x"]).metrics == list(report.METRICS)
    with pytest.raises(ConfigError, match="run_dirs is not set"):
        report.main(["--out", str(tmp_path)])
    with pytest.raises(ConfigError, match="several run directories have the same name"):
        report.main([str(tmp_path / "one" / "run"), str(tmp_path / "two" / "run"), "--out", str(tmp_path / "p")])
    assert cli.main(["report", str(tmp_path), "--metric", "ppo/kl"]) == 2
    assert "unknown config key 'metric'; did you mean 'metrics'" in capsys.readouterr().err
    assert cli.main(["report", "--help"]) == 0
    text = capsys.readouterr().out
    for name in ("run_dirs", "out", "metrics"):
        assert f"--{name} (default " in text


def _ppo_with_evals(path, evals):
    """A PPO run logging training metrics every step and `evals` (name -> value per eval) every second step."""
    records = [(s, {m: s * 0.1 for m in PPO}) for s in range(1, 7)]
    records += [(s, {"eval/kl": 0.5 * s, **{name: f(s) for name, f in evals.items()}}) for s in (2, 4, 6)]
    return _run(path, records)


def test_evaluations_add_the_overoptimization_panel(tmp_path):
    run = _ppo_with_evals(tmp_path / "ppo", {"eval/gold_score": lambda s: 1 - (s - 4) ** 2 / 10,
                                             "eval/rm_score": lambda s: s / 2, "eval/win_rate": lambda s: 0.5})
    records = MetricsFile(run).read()
    assert report.against(records, "eval/kl", "eval/rm_score") == ([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert report.plot_run(run) == PPO + ["eval/gold_score & eval/rm_score vs eval/kl"]
    assert matplotlib.image.imread(run / "report.png").shape[:2] == (960, 1350)  # a third row for the panel
    assert report.plot_run(run, tmp_path / "only.png", ("overoptimization",)) == [
        "eval/gold_score & eval/rm_score vs eval/kl"]


def test_without_a_gold_judge_the_panel_draws_the_reward_model_score(tmp_path):
    run = _ppo_with_evals(tmp_path / "ppo", {"eval/rm_score": lambda s: s / 2})
    assert report.plot_run(run)[-1] == "eval/rm_score vs eval/kl"


def test_eval_loss_and_kl_alone_do_not_make_the_panel(tmp_path):
    rm = _run(tmp_path / "rm", [(5, {"train/loss": 0.7}), (10, {"eval/loss": 0.6, "eval/accuracy": 0.8})])
    kl_only = _run(tmp_path / "ppo", [(2, {"ppo/kl": 0.1, "eval/kl": 0.3})])
    assert report.plot_run(rm) == ["train/loss", "eval/loss", "eval/accuracy"]
    assert report.plot_run(kl_only) == ["ppo/kl"]
