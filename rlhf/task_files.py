"""Writing a built-in task's data files (`python -m rlhf.demo_task`, `python -m rlhf.yes_no_task`): the shipped
files under configs/ are this output, and a test checks that they still are."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from rlhf.config import command_main, key
from rlhf.datafiles import write_jsonl
from rlhf.errors import ConfigError, RLHFError

Files = dict[str, "list[dict] | str"]  # file name -> JSONL rows or text


def write_files(files: Files, out: str | Path) -> list[Path]:
    """Write each file into `out`; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, content in files.items():
        path = out / name
        if isinstance(content, str):
            path.write_text(content, encoding="utf-8")
        else:
            write_jsonl(path, content)
        written.append(path)
    return written


@dataclass
class TaskFilesConfig:
    out: str | None = key(None, "folder to write the data files to (default: the task's folder under configs/)")
    seed: int = key(0, "seed of the prompt splits and demonstrations (the shipped files use the default)")

    def __post_init__(self):
        if self.out is not None:
            self.out = str(self.out)  # a number-like --out arrives parsed
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")


def task_files_main(argv: list[str], files_of_seed: Callable[[int], Files], shipped: str, doc: str) -> int:
    """The command of a task module: write `files_of_seed(seed)` into --out (default `shipped`), one line per file."""
    def write(config: TaskFilesConfig) -> int:
        for path in write_files(files_of_seed(config.seed), config.out or shipped):
            print(f"wrote {path}")
        return 0

    return command_main(argv, TaskFilesConfig, doc, write)


def run_script(main: Callable[[list[str]], int]) -> None:
    """`python -m MODULE ARGS`: exit with main's status; an error is one line and status 2, as `rlhf COMMAND` does."""
    try:
        sys.exit(main(sys.argv[1:]))
    except RLHFError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def prefer(score_a: float, score_b: float) -> str:
    """A simulated annotator's answer from two gold scores: "a", "b" or "tie" (noise is the labeling app's)."""
    return "a" if score_a > score_b else "b" if score_b > score_a else "tie"


def split_files(items: list, sizes: dict[str, int], prompt: Callable, answer: Callable) -> Files:
    """`<split>.jsonl` rows from consecutive, disjoint parts of shuffled `items`: chats (`prompt(item)` answered
    by `answer(item)`, in order) for the "sft" split, `{"prompt"}` rows for the others."""
    files: Files = {}
    start = 0
    for name, size in sizes.items():
        part, start = items[start:start + size], start + size
        if name == "sft":
            files["sft.jsonl"] = [{"messages": [{"role": "user", "content": prompt(item)},
                                                {"role": "assistant", "content": answer(item)}]} for item in part]
        else:
            files[f"{name}.jsonl"] = [{"prompt": prompt(item)} for item in part]
    return files
