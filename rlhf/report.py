"""`rlhf report RUN_DIR... [--out DIR]`: one PNG of training curves per run, from its metrics.jsonl.

The metrics a run logged decide the plots (PPO: score, reward, KL, value loss, entropy, length; SFT/reward: losses)."""

import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from rlhf import runs
from rlhf.config import command_main, key
from rlhf.errors import ConfigError

METRICS = (  # plotted in this order when present
    "ppo/score_mean", "ppo/reward_mean", "ppo/kl", "ppo/loss_value", "ppo/entropy", "ppo/response_length",
    "train/loss", "eval/loss", "eval/accuracy",
)
COLUMNS = 3


def series(records: list[dict], name: str) -> tuple[list[int], list[float]]:
    """(steps, values) of a metric over the records that hold a finite number for it."""
    points = [(r["step"], float(r[name])) for r in records
              if isinstance(r.get(name), (int, float)) and math.isfinite(r[name])]
    return [s for s, _ in points], [v for _, v in points]


def plot_run(run_dir: str | Path, out_path: str | Path | None = None, metrics: tuple[str, ...] = METRICS) -> list[str]:
    """Save a grid of the run's curves to `out_path` (default RUN_DIR/report.png); returns the metrics plotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    records = runs.MetricsFile(run_dir).read()
    if not records:
        raise ConfigError(f"{run_dir}: no {runs.METRICS} (is this a run directory?)")
    present = [name for name in metrics if series(records, name)[0]]
    if not present:
        raise ConfigError(f"{run_dir}: none of {', '.join(metrics)} in {runs.METRICS}")
    cols = min(COLUMNS, len(present))
    rows = math.ceil(len(present) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    for ax, name in zip(axes.flat, present):
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
    return present


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
    metrics: list[str] = key(list(METRICS), "metric names to plot (repeat --metrics, or comma-separated)")

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
