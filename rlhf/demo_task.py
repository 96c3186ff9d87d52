"""The built-in demo task: a tiny request language, its data splits, and a simulated annotator.

A user introduces themselves and asks for something ("I am Anna. Describe a red apple." or
"I am Ben. Name three fruits."). Acceptable answers are built from a small grammar: an optional
opener, a core answer, an optional closer. The hidden gold preference is that of a person who likes
being addressed by name: among correct answers, one that uses the requester's name (in the opener
or the closer) is better; an answer that is wrong (wrong colour or object, wrong number of items,
someone else's name, anything outside the grammar) is worst. Answers with and without the name have
the same shapes ("Sure! ..." / "Sure, Anna! ..."), so length is not what the annotator rewards.

The demonstrations use the name in about a third of the answers, so a fine-tuned policy does too and
PPO has room to improve. `write_demo_files` produces the files shipped in configs/demo/; run
`python -m rlhf.demo_task --out configs/demo` to regenerate them.
"""

from __future__ import annotations

import argparse
import itertools
import random
import re
from pathlib import Path
from typing import Any

from rlhf.io import write_jsonl

SEED = 0
NAME_RATE = 0.3  # share of demonstrations that address the requester by name
NAMES = ("Anna", "Ben", "Cleo", "Dan", "Eva", "Finn", "Gina", "Hugo",
         "Ida", "Jon", "Kim", "Leo", "Mia", "Nora", "Omar", "Paul")
COLORS = ("red", "blue", "green", "yellow", "white", "black")
OBJECTS = {  # object -> adjectives that may describe it
    "apple": ("round", "sweet", "crisp", "fresh"),
    "ball": ("round", "light", "soft", "bouncy"),
    "car": ("fast", "shiny", "small", "loud"),
    "cup": ("small", "clean", "warm", "full"),
    "hat": ("soft", "warm", "big", "new"),
    "book": ("thick", "old", "heavy", "good"),
    "bird": ("small", "fast", "loud", "pretty"),
    "kite": ("light", "big", "bright", "fast"),
}
CATEGORIES = {
    "fruits": ("apple", "pear", "plum", "lemon", "grape", "mango"),
    "animals": ("cat", "dog", "horse", "fox", "bear", "mouse"),
    "tools": ("hammer", "saw", "drill", "rake", "spade", "knife"),
}
COUNTS = {"two": 2, "three": 3}
DESCRIBE = ("A {color} {thing} is {a} and {b}.", "This {color} {thing} is {a} and {b}.",
            "The {color} {thing} looks {a} and {b}.")
LIST = ("{Items}.", "Here are {count} {category}: {items}.")
# Each opener/closer with the name has a counterpart without it, of the same shape.
OPENERS = ("", "Sure! ", "Okay. ", "Hello! ")
NAME_OPENERS = ("Sure, {name}! ", "Okay, {name}. ", "Hello {name}! ")
CLOSERS = ("", " Hope this helps.", " Have fun!", " Thanks for asking.")
NAME_CLOSERS = (" Hope this helps, {name}.", " Have fun, {name}!", " Thanks for asking, {name}.")
SPLITS = {"sft": 400, "label_prompts": 200, "ppo_prompts": 200, "eval_prompts": 64}  # prompts per split


# ---- requests ------------------------------------------------------------------------------------

def all_prompts() -> list[str]:
    """Every request of the language, in a fixed order."""
    requests = [f"Describe a {color} {thing}." for thing in OBJECTS for color in COLORS]
    requests += [f"Name {count} {category}." for category in CATEGORIES for count in COUNTS]
    return [f"I am {name}. {request}" for name in NAMES for request in requests]


def parse_prompt(prompt: Any) -> dict[str, str] | None:
    """{"name", "kind", ...} of a request (a string, or a chat whose last user turn is one); None if not one."""
    if isinstance(prompt, list):
        users = [m.get("content", "") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        prompt = users[-1] if users else ""
    match = re.fullmatch(r"I am (\w+)\. (Describe a|Name) (\w+) (\w+)\.", str(prompt).strip())
    if match is None or match[1] not in NAMES:
        return None
    name, verb, first, second = match.groups()
    if verb == "Describe a" and first in COLORS and second in OBJECTS:
        return {"name": name, "kind": "describe", "color": first, "thing": second}
    if verb == "Name" and first in COUNTS and second in CATEGORIES:
        return {"name": name, "kind": "list", "count": first, "category": second}
    return None


# ---- answers -------------------------------------------------------------------------------------

def _core_answers(request: dict[str, str]) -> list[str]:
    """All correct core answers to a request (without opener or closer)."""
    if request["kind"] == "describe":
        pairs = itertools.permutations(OBJECTS[request["thing"]], 2)
        return [t.format(color=request["color"], thing=request["thing"], a=a, b=b) for a, b in pairs for t in DESCRIBE]
    answers = []
    for words in itertools.permutations(CATEGORIES[request["category"]], COUNTS[request["count"]]):
        items = ", ".join(words[:-1]) + " and " + words[-1]
        answers += [t.format(items=items, Items=items[0].upper() + items[1:], count=request["count"],
                             category=request["category"]) for t in LIST]
    return answers


def demonstration(request: dict[str, str], rng: random.Random) -> str:
    """One acceptable answer; it addresses the requester by name with probability NAME_RATE."""
    core = rng.choice(_core_answers(request))
    opener, closer = rng.choice(OPENERS), rng.choice(CLOSERS)
    if rng.random() < NAME_RATE:
        if rng.random() < 0.5:
            opener = rng.choice(NAME_OPENERS)
        else:
            closer = rng.choice(NAME_CLOSERS)
    return opener.format(name=request["name"]) + core + closer.format(name=request["name"])


# ---- the gold preference -------------------------------------------------------------------------

def gold_score(prompt: Any, response: str) -> float:
    """1.0: a correct answer that uses the requester's name; 0.5: correct without it; 0.0: not a correct answer."""
    request = parse_prompt(prompt)
    if request is None:
        return 0.0
    name, text = request["name"], response.strip()
    openers = [(o, False) for o in OPENERS] + [(o.format(name=name), True) for o in NAME_OPENERS]
    closers = [(c, False) for c in CLOSERS] + [(c.format(name=name), True) for c in NAME_CLOSERS]
    cores = set(_core_answers(request))
    best = 0.0
    for opener, named_open in openers:
        if not text.startswith(opener):
            continue
        for closer, named_close in closers:
            if text.endswith(closer) and len(text) >= len(opener) + len(closer):
                if text[len(opener):len(text) - len(closer)] in cores:
                    best = max(best, 1.0 if named_open or named_close else 0.5)
    return best


def judge(prompt: Any, response_a: str, response_b: str) -> str:
    """The simulated annotator: "a" or "b" for the response with the higher gold score, else "tie".

    Annotation noise is added by the labeling app (`rlhf label simulate --noise P`).
    """
    a, b = gold_score(prompt, response_a), gold_score(prompt, response_b)
    return "a" if a > b else "b" if b > a else "tie"


# ---- the shipped files ---------------------------------------------------------------------------

def demo_files(seed: int = SEED) -> dict[str, list[dict] | str]:
    """The demo's data: SFT chats, three disjoint prompt sets, and tokenizer text (file name -> content)."""
    rng = random.Random(seed)
    prompts = all_prompts()
    rng.shuffle(prompts)
    files: dict[str, list[dict] | str] = {}
    start = 0
    for split, size in SPLITS.items():
        chosen = prompts[start:start + size]
        start += size
        if split == "sft":
            files["sft.jsonl"] = [{"messages": [{"role": "user", "content": p},
                                                {"role": "assistant", "content": demonstration(parse_prompt(p), rng)}]}
                                  for p in chosen]
        else:
            files[f"{split}.jsonl"] = [{"prompt": p} for p in chosen]
    files["corpus.txt"] = tokenizer_text(files["sft.jsonl"])
    return files


def tokenizer_text(chats: list[dict]) -> str:
    """Demo text for the tiny model's tokenizer, so that names and words of the language are single tokens."""
    lines = [m["content"] for chat in chats for m in chat["messages"]]
    lines += [o.format(name=n) + c.format(name=n) for n in NAMES for o, c in zip(NAME_OPENERS, NAME_CLOSERS)]
    return "\n".join(lines) + "\n"


def write_demo_files(out: str | Path, seed: int = SEED) -> list[Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, content in demo_files(seed).items():
        path = out / name
        if isinstance(content, str):
            path.write_text(content, encoding="utf-8")
        else:
            write_jsonl(path, content)
        written.append(path)
    return written


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="write the demo task's data files")
    parser.add_argument("--out", default="configs/demo")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args()
    for path in write_demo_files(args.out, args.seed):
        print(f"wrote {path}")
