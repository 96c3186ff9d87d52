"""`rlhf generate --model DIR_OR_RUN --prompt "..."`: print completions from a model, adapter or run directory.

Prompts go through the model's chat template as one user turn (see rlhf.chat.format_prompt).
"""

from __future__ import annotations

import argparse

from rlhf.sampling import add_sampling_args, load_for_generation, sample, sampling_from_args


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="rlhf generate", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="hub name, model folder, adapter folder or run directory")
    parser.add_argument("--prompt", action="append", required=True, help="a prompt (repeat for several)")
    add_sampling_args(parser, temperature=0.0)
    args = parser.parse_args(argv)
    model, tokenizer = load_for_generation(args.model)
    outputs = sample(model, tokenizer, args.prompt, **vars(sampling_from_args(args)))
    for prompt, completions in zip(args.prompt, outputs):
        print(f"### {prompt}")
        for i, completion in enumerate(completions, start=1):
            print(f"[{i}] {completion}" if args.n > 1 else completion)
    return 0
