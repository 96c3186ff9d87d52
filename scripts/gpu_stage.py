"""One `rlhf` command run in this process, with its wall time and peak GPU memory recorded (for scripts/gpu_check.sh).

    python scripts/gpu_stage.py RESULTS.jsonl LABEL COMMAND [ARGS ...]   run `rlhf COMMAND ARGS`, append one line
    python scripts/gpu_stage.py RESULTS.jsonl --summary                   print the recorded lines as a table

Under `accelerate launch` only process 0 records. A stage that raises is recorded with status "error" first."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

COLUMNS = ("stage", "status", "wall_s", "peak_allocated_gib", "peak_reserved_gib")


def peak_memory_gib() -> dict[str, float | None]:
    """torch.cuda's peak allocated and reserved memory on this process's GPU, in GiB (None without a GPU)."""
    import torch

    if not torch.cuda.is_available():
        return {"peak_allocated_gib": None, "peak_reserved_gib": None}
    return {"peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3),
            "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 3)}


def record(results: Path, row: dict) -> None:
    """Print `row` and append it to `results` (process 0 only)."""
    if int(os.environ.get("RANK", "0")) != 0:
        return
    print(f"[gpu_check] {json.dumps(row)}", flush=True)
    with results.open("a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def run_stage(results: Path, label: str, command: list[str]) -> int:
    """Run `rlhf COMMAND ...` and record its label, exit status, wall time and peak GPU memory."""
    from rlhf import cli

    status: int | str = "error"  # what is recorded when the stage raises
    started = time.perf_counter()
    try:
        status = cli.main(command)
        return status
    finally:
        record(results, {"stage": label, "status": status, "wall_s": round(time.perf_counter() - started, 1),
                         **peak_memory_gib()})


def summary(results: Path) -> str:
    """The recorded stages as a fixed-width table."""
    rows = [json.loads(line) for line in results.read_text(encoding="utf-8").splitlines()]
    lines = [COLUMNS] + [tuple(str(row[c]) for c in COLUMNS) for row in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)) for line in lines)


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[1] == "--summary":
        print(summary(Path(argv[0])))
        return 0
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    return run_stage(Path(argv[0]), argv[1], argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
