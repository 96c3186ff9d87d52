"""`rlhf COMMAND ...`: one subcommand per stage or tool; each lives in its own module with `main(argv)`."""

from __future__ import annotations

import importlib
import sys

from rlhf.errors import RLHFError

# command -> (module with main(argv), one-line help). Modules are imported lazily so that
# `rlhf label ...` does not pay for importing torch-heavy stages.
COMMANDS = {
    "tiny-model": ("rlhf.tiny", "write a small random model and an offline tokenizer"),
    "sft": ("rlhf.sft", "supervised fine-tuning on demonstrations"),
    "reward": ("reward.train", "train a reward model on preference pairs"),
    "score": ("reward.score", "score texts or pairs with a reward model"),
    "ppo": ("rlhf.ppo.train", "PPO against a reward model"),
    "label": ("reward.labeling.cli", "the preference labeling app and its store"),
    "pipeline": ("rlhf.pipeline", "run SFT -> labels -> reward -> PPO -> eval"),
    "eval": ("rlhf.evaluate", "evaluate a policy (and compare with a baseline)"),
    "report": ("rlhf.report", "plot metrics.jsonl of run directories to PNG"),
    "export": ("rlhf.export", "merge adapters into a standalone model"),
    "convert": ("rlhf.convert", "convert a GGUF file into a standard model folder"),
    "generate": ("rlhf.generate", "print completions from a model or run directory"),
}


def _usage() -> str:
    lines = ["usage: rlhf COMMAND [ARGS]", "", "commands:"]
    lines += [f"  {name:<11} {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "Run `rlhf COMMAND --help` for a command's arguments."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"rlhf: unknown command '{name}'\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    try:
        return module.main(rest) or 0
    except RLHFError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
