"""`rlhf report RUN_DIR... [--out DIR]`: one PNG of training curves per run, from its metrics.jsonl.

The metrics a run logged decide the plots (PPO: score, reward, KL, value loss, entropy, length; SFT/reward: losses).
A PPO run with periodic evaluations (`eval/kl` with `eval/gold_score` and/or `eval/rm_score`) also gets the
over-optimisation panel: gold and reward-model score against KL (Gao et al. 2022)."""

import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from rlhf import runs
from rlhf.config import command_main, key
from rlhf.errors import ConfigError

OVEROPTIMIZATION = "overoptimization"  # the panel of scores against KL, named like a metric
OVEROPT_X = "eval/kl"
OVEROPT_Y = ("eval/gold_score", "eval/rm_score")  # left and right axis
METRICS = (  # plotted in this order when present
    "ppo/score_mean", "ppo/reward_mean", "ppo/kl", "ppo/loss_value", "ppo/entropy", "ppo/response_length",
    "train/loss", "eval/loss", "eval/accuracy", OVEROPTIMIZATION,
)
COLUMNS = 3


def series(records: list[dict], name: str) -> tuple[list[int], list[float]]:
    """(steps, values) of a metric over the records that hold a finite number for it."""
    points = [(r["step"], float(r[name])) for r in records
              if isinstance(r.get(name), (int, float)) and math.isfinite(r[name])]
    return [s for s, _ in points], [v for _, v in points]


def against(records: list[dict], x_name: str, y_name: str) -> tuple[list[float], list[float]]:
    """(x, y) of two metrics at the steps that logged both, in step order."""
    x = dict(zip(*series(records, x_name)))
    steps, ys = series(records, y_name)
    points = [(x[s], y) for s, y in zip(steps, ys) if s in x]
    return [a for a, _ in points], [b for _, b in points]


def overoptimization_metrics(records: list[dict]) -> list[str]:
    """The scores the over-optimisation panel can draw against `eval/kl` (none without evaluations)."""
    return [name for name in OVEROPT_Y if against(records, OVEROPT_X, name)[0]]


def panel_name(records: list[dict]) -> str:
    """The over-optimisation panel as the report names it: the metrics it draws."""
    return f"{' & '.join(overoptimization_metrics(records))} vs {OVEROPT_X}"


def plot_overoptimization(ax, records: list[dict]) -> None:
    """Gold score (left axis) and reward-model score (right axis, or left if alone) against KL."""
    axis = ax
    for i, name in enumerate(overoptimization_metrics(records)):
        if i:
            axis = ax.twinx()
        x, y = against(records, OVEROPT_X, name)
        color = f"C{OVEROPT_Y.index(name)}"
        axis.plot(x, y, marker="o", markersize=3, linewidth=1.2, color=color, label=name)
        axis.set_ylabel(name, color=color)
    ax.set_title("score vs KL (over-optimisation)")
    ax.set_xlabel(f"{OVEROPT_X} (nats)")
    ax.grid(alpha=0.3)


def plot_run(run_dir: str | Path, out_path: str | Path | None = None, metrics: tuple[str, ...] = METRICS) -> list[str]:
    """Save a grid of the run's curves to `out_path` (default RUN_DIR/report.png); returns the metrics plotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    records = runs.MetricsFile(run_dir).read()
    if not records:
        raise ConfigError(f"{run_dir}: no {runs.METRICS} (is this a run directory?)")
    present = [name for name in metrics
               if (overoptimization_metrics(records) if name == OVEROPTIMIZATION else series(records, name)[0])]
    if not present:
        raise ConfigError(f"{run_dir}: none of {', '.join(metrics)} in {runs.METRICS}")
    cols = min(COLUMNS, len(present))
    rows = math.ceil(len(present) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    for ax, name in zip(axes.flat, present):
        if name == OVEROPTIMIZATION:
            plot_overoptimization(ax, records)
            continue
        steps, values = series(records, name)
        ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, linewidth=1.2)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(present):]:
        ax.set_visible(False)
    fig.suptitle(run_dir.resolve().name)
    fig.tight_layout()
    fig.savefig(out_path or run_dir / "report.png", dpi=100)
    plt.close(fig)
    return [panel_name(records) if name == OVEROPTIMIZATION else name for name in present]


def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


@dataclass
class ReportConfig:
    """`rlhf report` keys; the run directories come first without their key (`rlhf report RUN_DIR...`)."""

    POSITIONAL: ClassVar[tuple[str, ...]] = ("run_dirs",)

    run_dirs: list[str] = key([], "run directories to plot (required; also written --run_dirs DIR, repeated)")
    out: str | None = key(None, "folder for the PNGs (RUN_NAME.png); default: report.png in each run directory")
    metrics: list[str] = key(list(METRICS), "metric names to plot (repeat --metrics, or comma-separated); "
                                            f"{OVEROPTIMIZATION}: the scores against {OVEROPT_X}")

    def __post_init__(self):
        self.run_dirs = [str(d) for d in _as_list(self.run_dirs)]
        self.metrics = [name.strip() for m in _as_list(self.metrics) for name in str(m).split(",") if name.strip()]
        if not self.run_dirs:
            raise ConfigError("run_dirs is not set: name one or more run directories")
        if not self.metrics:
            raise ConfigError("metrics is empty")
        names = [Path(d).resolve().name for d in self.run_dirs]
        if self.out and len(set(names)) < len(names):
            raise ConfigError("out: several run directories have the same name; write each report into its run "
                              "directory")


def report_command(config: ReportConfig) -> int:
    for run_dir in config.run_dirs:
        name = Path(run_dir).resolve().name
        out_path = Path(config.out) / f"{name}.png" if config.out else Path(run_dir) / "report.png"
        out_path.parent.mkdir(parents=True, exist_ok=True)
        plotted = plot_run(run_dir, out_path, tuple(config.metrics))
        print(f"{out_path}: {', '.join(plotted)}")
    return 0


def main(argv: list[str]) -> int:
    return command_main(argv, ReportConfig, __doc__, report_command)
