"""Launching stages as several processes from tests: `accelerate launch` with a free port and a time limit."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ACCELERATE_CONFIGS = REPO / "configs" / "accelerate"
PROBE = REPO / "tests" / "dist_probe.py"
ACCELERATE = str(Path(sys.executable).with_name("accelerate"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment(**extra: str) -> dict[str, str]:
    """Offline, one thread per process, and the repository importable without installing it."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               HF_HUB_OFFLINE="1", WANDB_MODE="offline", WANDB_SILENT="true", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1")
    env.update(extra)
    return env


def launch_command(config: str, stage_args: list[str], probe: bool = False, launcher_args: tuple = ()) -> list[str]:
    """`accelerate launch --config_file configs/accelerate/CONFIG.yaml ... -m rlhf STAGE_ARGS` (or the probe)."""
    cmd = [ACCELERATE, "launch", "--config_file", str(ACCELERATE_CONFIGS / f"{config}.yaml"), *launcher_args]
    if "--main_process_port" not in launcher_args:
        cmd += ["--main_process_port", str(free_port())]
    return cmd + ([str(PROBE)] if probe else ["-m", "rlhf"]) + list(stage_args)


def start(cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float) -> tuple[int, str]:
    """(exit status, output); past `timeout` the launcher and every process it started are killed."""
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        raise AssertionError(f"timed out after {timeout} s: {' '.join(proc.args)}\n{output[-4000:]}")
    return proc.returncode, output


def run(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 300, ok: bool = True) -> str:
    """Run to the end; with `ok`, a failure shows the output's tail."""
    code, output = finish(start(cmd, env or environment()), timeout)
    if ok and code != 0:
        raise AssertionError(f"exit status {code}: {' '.join(cmd)}\n{output[-6000:]}")
    return output


def read_probe(probe_dir: Path) -> dict[int, list[dict]]:
    """rank -> the entries the probe recorded in that process, in order."""
    return {int(p.stem.split("-")[1]): [json.loads(line) for line in p.read_text().splitlines()]
            for p in sorted(probe_dir.glob("rank-*.jsonl"))}


def train_losses(run_dir: Path) -> dict[int, float]:
    """step -> logged train/loss from metrics.jsonl; a step logged twice is an error (two writers)."""
    losses: dict[int, float] = {}
    for entry in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(entry)
        if "train/loss" in record:
            assert record["step"] not in losses, f"step {record['step']} logged twice"
            losses[record["step"]] = record["train/loss"]
    return losses


def launch_script(config: str, script: Path, args: list[str]) -> list[str]:
    """`accelerate launch --config_file configs/accelerate/CONFIG.yaml SCRIPT ARGS` on a free port."""
    return [ACCELERATE, "launch", "--config_file", str(ACCELERATE_CONFIGS / f"{config}.yaml"),
            "--main_process_port", str(free_port()), str(script), *args]
