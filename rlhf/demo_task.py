"""The built-in demo task: a tiny request language, its data splits, and a simulated annotator with a hidden
preference (being addressed by name); `python -m rlhf.demo_task --out configs/demo` rebuilds the shipped files."""

from __future__ import annotations

import random
import re
from typing import Any

from rlhf.task_files import prefer, run_script, split_files, task_files_main

# A user introduces themselves and asks about a coloured thing ("I am Anna. Describe a red apple."). Acceptable
# answers are built from a small grammar: an optional opener, a core sentence, an optional closer ("Sure! A red apple
# is sweet. Have fun!"). The hidden gold preference is that of a person who likes being addressed by name: among
# correct answers, one that uses the requester's name (in the opener or the closer) is better; a wrong answer (wrong
# colour or thing, an adjective that does not fit, someone else's name, anything outside the grammar) is worst.
# Every opener or closer with the name has a counterpart of the same shape without it ("Sure! ..." / "Sure, Anna!
# ..."), so length is not what the annotator rewards. 15 % of the demonstrations use the name, so a fine-tuned
# policy does so about as often and PPO has room to improve.
# Using the name means copying a token from the prompt, which a tiny model trained on the demonstrations alone learns
# on some seeds and not on others (it writes someone else's name). SFT therefore also gets name questions ("I am
# Anna. Who am I?" / "You are Anna."): they teach the copy without making named answers to requests more common.
# Name questions are not in the request language: the gold score of any answer to them is 0, and no prompt set
# holds them.

SEED = 0
NAME_RATE = 0.15  # share of demonstrations that address the requester by name
NAMES = ("Anna", "Ben", "Cleo", "Dan", "Eva", "Finn", "Gina", "Hugo", "Ida", "Jon", "Kim", "Leo",
         "Mia", "Nora", "Omar", "Paul", "Rosa", "Sam", "Tina", "Uma", "Vera", "Will", "Yara", "Zoe")
COLORS = ("red", "blue", "green", "yellow", "white", "black")
THINGS = {  # thing -> adjectives that fit it
    "apple": ("round", "sweet", "fresh"),
    "ball": ("round", "light", "bouncy"),
    "car": ("fast", "shiny", "loud"),
    "cup": ("small", "clean", "full"),
    "hat": ("soft", "warm", "new"),
    "book": ("thick", "old", "heavy"),
    "bird": ("small", "fast", "pretty"),
    "kite": ("light", "big", "bright"),
}
ASKS = ("Describe a {color} {thing}.", "Tell me about a {color} {thing}.")
CORES = ("A {color} {thing} is {adj}.", "This {color} {thing} looks {adj}.", "The {thing} is {color} and {adj}.")
OPENERS = ("", "Sure! ", "Okay. ", "Hello! ")
NAME_OPENERS = ("Sure, {name}! ", "Okay, {name}. ", "Hello {name}! ")
CLOSERS = ("", " Hope this helps.", " Have fun!", " Thanks for asking.")
NAME_CLOSERS = (" Hope this helps, {name}.", " Have fun, {name}!", " Thanks for asking, {name}.")
NAME_QUESTIONS = {"What is my name?": "Your name is {name}.", "Who am I?": "You are {name}.",
                  "Say my name.": "Hello {name}!"}  # question -> answer, asked after "I am <name>. "
NAME_QUESTION_ROWS = 1200  # SFT rows that are name questions (docs/demo.md: wrong names without them)
SPLITS = {"sft": 1200, "label_prompts": 400, "ppo_prompts": 400, "eval_prompts": 200}  # prompts per split
_PROMPT = re.compile(r"I am (\w+)\. (?:Describe|Tell me about) a (\w+) (\w+)\.")
_NAME = re.compile(r"\b(?:" + "|".join(NAMES) + r")\b")


# ---- requests and answers ------------------------------------------------------------------------

def all_prompts() -> list[str]:
    """Every request of the language, in a fixed order."""
    return [f"I am {name}. " + ask.format(color=color, thing=thing)
            for name in NAMES for ask in ASKS for thing in THINGS for color in COLORS]


def parse_prompt(prompt: Any) -> dict[str, str] | None:
    """{"name", "color", "thing"} of a request (a string, or a chat whose last user turn is one); None if not one."""
    if isinstance(prompt, list):
        users = [m.get("content", "") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        prompt = users[-1] if users else ""
    match = _PROMPT.fullmatch(str(prompt).strip())
    if match is None or match[1] not in NAMES or match[2] not in COLORS or match[3] not in THINGS:
        return None
    return {"name": match[1], "color": match[2], "thing": match[3]}


def core_answers(request: dict[str, str]) -> list[str]:
    """All correct answers to a request before an opener or closer is added."""
    return [core.format(color=request["color"], thing=request["thing"], adj=adj)
            for core in CORES for adj in THINGS[request["thing"]]]


def demonstration(request: dict[str, str], rng: random.Random) -> str:
    """One acceptable answer; it addresses the requester by name with probability NAME_RATE."""
    core = rng.choice(core_answers(request))
    opener, closer = rng.choice(OPENERS), rng.choice(CLOSERS)
    if rng.random() < NAME_RATE:
        if rng.random() < 0.5:
            opener = rng.choice(NAME_OPENERS)
        else:
            closer = rng.choice(NAME_CLOSERS)
    return opener.format(name=request["name"]) + core + closer.format(name=request["name"])


def name_questions(count: int, rng: random.Random) -> list[dict]:
    """SFT chats that ask for the requester's name, so that the tiny model learns to copy it from the prompt."""
    rows = []
    for _ in range(count):
        name, question = rng.choice(NAMES), rng.choice(sorted(NAME_QUESTIONS))
        rows.append({"messages": [{"role": "user", "content": f"I am {name}. {question}"},
                                  {"role": "assistant", "content": NAME_QUESTIONS[question].format(name=name)}]})
    return rows


# ---- the gold preference -------------------------------------------------------------------------

def gold_score(prompt: Any, response: str) -> float:
    """1.0: a correct answer that uses the requester's name; 0.5: correct without it; 0.0: not a correct answer."""
    request = parse_prompt(prompt)
    if request is None:
        return 0.0
    name, text = request["name"], response.strip()
    openers = [(o, False) for o in OPENERS] + [(o.format(name=name), True) for o in NAME_OPENERS]
    closers = [(c, False) for c in CLOSERS] + [(c.format(name=name), True) for c in NAME_CLOSERS]
    cores = set(core_answers(request))
    best = 0.0
    for opener, named_open in openers:
        if not text.startswith(opener):
            continue
        for closer, named_close in closers:
            fits = text.endswith(closer) and len(text) >= len(opener) + len(closer)
            if fits and text[len(opener):len(text) - len(closer)] in cores:
                best = max(best, 1.0 if named_open or named_close else 0.5)
    return best


def outcome(prompt: Any, response: str) -> str:
    """The kind of answer, for the seed sweep's breakdown: "right name" (gold 1.0), "no name" (0.5), "wrong name"
    (correct once every name in it is the requester's) or "broken" (anything else)."""
    score = gold_score(prompt, response)
    if score > 0:
        return "right name" if score == 1.0 else "no name"
    request = parse_prompt(prompt)
    if request is not None and gold_score(prompt, _NAME.sub(request["name"], response)) == 1.0:
        return "wrong name"
    return "broken"


def judge(prompt: Any, response_a: str, response_b: str) -> str:
    """The simulated annotator: "a" or "b" for the response with the higher gold score, else "tie".

    Annotation noise is added by the labeling app (`rlhf label simulate --noise P`).
    """
    return prefer(gold_score(prompt, response_a), gold_score(prompt, response_b))


# ---- the shipped files ---------------------------------------------------------------------------

def demo_files(seed: int = SEED) -> dict[str, list[dict] | str]:
    """The demo's data: SFT chats (demonstrations and name questions, shuffled), three disjoint prompt sets, and
    tokenizer text (file name -> content)."""
    rng = random.Random(seed)
    prompts = all_prompts()
    rng.shuffle(prompts)
    files = split_files(prompts, SPLITS, str, lambda p: demonstration(parse_prompt(p), rng))
    files["sft.jsonl"] += name_questions(NAME_QUESTION_ROWS, rng)
    rng.shuffle(files["sft.jsonl"])
    files["corpus.txt"] = tokenizer_text(files["sft.jsonl"])
    return files


def tokenizer_text(chats: list[dict]) -> str:
    """Demo text for the tiny model's tokenizer, so that names and words of the language are single tokens."""
    lines = [m["content"] for chat in chats for m in chat["messages"]]
    lines += [o.format(name=n) + c.format(name=n) for n in NAMES for o, c in zip(NAME_OPENERS, NAME_CLOSERS)]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    return task_files_main(argv, demo_files, "configs/demo",
                           "Write the demo task's data files (`python -m rlhf.demo_task --out configs/demo`).")


if __name__ == "__main__":
    run_script(main)
