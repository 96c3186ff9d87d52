"""`rlhf generate --model DIR_OR_RUN --prompt "..."`: print completions from a model, adapter or run directory.

Prompts go through the model's chat template as one user turn (see rlhf.generation.format_prompt).
"""

from __future__ import annotations

import argparse

from rlhf.generation import load_for_generation, sample


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="rlhf generate", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="hub name, model folder, adapter folder or run directory")
    parser.add_argument("--prompt", action="append", required=True, help="a prompt (repeat for several)")
    parser.add_argument("--n", type=int, default=1, help="completions per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    model, tokenizer = load_for_generation(args.model)
    outputs = sample(model, tokenizer, args.prompt, n=args.n, max_new_tokens=args.max_new_tokens,
                     temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    for prompt, completions in zip(args.prompt, outputs):
        print(f"### {prompt}")
        for i, completion in enumerate(completions, start=1):
            print(f"[{i}] {completion}" if args.n > 1 else completion)
    return 0
