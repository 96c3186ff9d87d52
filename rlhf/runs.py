"""Run directories, the contract between stages: the names of the files a stage writes and the next one reads,
resume from the last complete checkpoint, atomic writes, and trackers."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rlhf.config import save_config

# What `runs/<name>/` holds:
CONFIG = "config.yaml"  # resolved config of the latest start
CHECKPOINTS = "checkpoints"  # checkpoint-N/, complete only once it holds the COMPLETE marker (written last)
COMPLETE = "COMPLETE"
FINAL = "final"  # the result; renamed into place after it is fully written
METRICS = "metrics.jsonl"  # one JSON object per logged step: {"step": N, "train/loss": ..., ...}
REWARD_STATS = "reward_stats.json"  # reward runs: mean and std of the model's scores, read by PPO to normalise them
COMPLETIONS = "completions.jsonl"  # PPO runs: a few sampled completions every `log_completions_steps`
SUMMARY = "summary.json"  # written last: its presence means the stage finished
_CKPT = re.compile(r"^checkpoint-(\d+)$")


def is_finished(run_dir: str | Path) -> bool:
    return (Path(run_dir) / SUMMARY).is_file()


def checkpoint_step(path: Path) -> int:
    match = _CKPT.match(path.name)
    return int(match.group(1)) if match else -1


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoints that were fully written, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if checkpoint_step(p) >= 0 and (p / COMPLETE).is_file()]
    return sorted(found, key=checkpoint_step)


def last_checkpoint(run_dir: str | Path) -> Path | None:
    found = complete_checkpoints(run_dir)
    return found[-1] if found else None


def discard_incomplete_checkpoints(run_dir: str | Path) -> list[Path]:
    """Remove checkpoint folders a crash left half-written (no COMPLETE marker); returns them."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    broken = [p for p in root.iterdir() if p.is_dir() and not (p / COMPLETE).is_file()]
    for path in broken:
        shutil.rmtree(path, ignore_errors=True)
    return broken


def mark_complete(checkpoint_dir: str | Path) -> None:
    (Path(checkpoint_dir) / COMPLETE).write_text(time.strftime("%Y-%m-%dT%H:%M:%S") + "\n")


class MetricsFile:
    """Append-only `metrics.jsonl` (or another per-step JSONL log, `name`); on resume, entries after the
    checkpoint's step are dropped first."""

    def __init__(self, run_dir: str | Path, name: str = METRICS):
        self.path = Path(run_dir) / name

    def truncate_after(self, step: int) -> None:
        if not self.path.is_file():
            return
        kept = [line for line in self.path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        tmp.replace(self.path)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        record = {"step": int(step), **{k: _number(v) for k, v in metrics.items()}}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


def _number(value: Any) -> Any:
    try:
        return float(value) if not isinstance(value, (int, str)) else value
    except (TypeError, ValueError):
        return str(value)


def staging_dir(target: str | Path) -> Path:
    """An empty `target.tmp` to write a folder into before `replace_dir` puts it in place."""
    tmp = Path(target).with_name(Path(target).name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def replace_dir(tmp: Path, target: str | Path) -> None:
    """Put a fully written `tmp` at `target` by renames: a crash leaves the old or the new folder, never half."""
    target = Path(target)
    if target.exists():
        old = target.with_name(target.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(target)


@contextmanager
def atomic_dir(target: str | Path):
    """Yield a temporary folder; on success it replaces `target` in one rename."""
    tmp = staging_dir(target)
    yield tmp
    replace_dir(tmp, target)


def write_json(obj: Any, path: str | Path) -> None:
    """Write JSON atomically (a temporary file, then a rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)


def read_summary(run_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / SUMMARY).read_text())


def write_summary(run_dir: str | Path, summary: dict[str, Any]) -> None:
    write_json(summary, Path(run_dir) / SUMMARY)


def launched_processes() -> int:
    """How many processes the launcher (torchrun, accelerate launch, deepspeed) started to share this run."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def prepare(run_dir: str | Path, config, is_main: bool, wait_for_everyone) -> Path | None:
    """Start (or restart) a stage on `run_dir`: write config.yaml, drop half-written checkpoints and the metrics
    logged after the last complete one; returns that checkpoint to resume from, or None. Only the main process
    writes; every process returns the same checkpoint."""
    run_dir = Path(run_dir)
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / CONFIG)
        for broken in discard_incomplete_checkpoints(run_dir):
            print(f"removed incomplete checkpoint {broken}")
    wait_for_everyone()
    resume = last_checkpoint(run_dir)
    if is_main:
        MetricsFile(run_dir).truncate_after(checkpoint_step(resume) if resume else 0)
    if resume:
        print(f"resuming from {resume}")
    return resume


def trackers(report_to: list[str] | str | None) -> list[str]:
    """The trackers a `report_to` value names (a name or a list; "none" and empty mean none)."""
    targets = [report_to] if isinstance(report_to, str) else list(report_to or [])
    return [t for t in targets if t != "none"]


def setup_tracking(report_to: list[str] | str, run_dir: str | Path, stage: str) -> None:
    """Environment for the trackers: W&B offline (inside the run dir) when no API key is configured."""
    targets = trackers(report_to)
    if "tensorboard" in targets or "all" in targets:
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(Path(run_dir) / "tensorboard")  # read by transformers' callback
    if "wandb" not in targets and "all" not in targets:
        return
    os.environ.setdefault("WANDB_PROJECT", "rlhf")
    os.environ["WANDB_DIR"] = str(Path(run_dir).resolve())  # per stage: a pipeline runs several in one process
    os.environ["WANDB_NAME"] = f"{Path(run_dir).name}-{stage}"
    os.environ["WANDB_JOB_TYPE"] = stage
    if not os.environ.get("WANDB_API_KEY") and not _wandb_logged_in():
        os.environ["WANDB_MODE"] = "offline"
        print(f"W&B: no API key found, logging offline under {run_dir}/wandb; upload later with "
              f"`wandb sync {run_dir}/wandb/offline-run-*`")


def finish_tracking() -> None:
    """Close the W&B run a stage opened, so the next stage in the same process starts its own (in its own dir)."""
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None:
        if wandb.run is not None:
            wandb.finish()
        wandb.teardown()  # W&B caches WANDB_DIR from its first run in the process; start afresh


def _wandb_logged_in() -> bool:
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")
