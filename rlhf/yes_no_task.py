"""The real-model task: yes/no questions that ask for an answer starting with Yes or No, its data splits, and a
simulated annotator with that hidden preference; `python -m rlhf.yes_no_task --out configs/smollm2` rebuilds the
shipped files."""

from __future__ import annotations

import random
import re
from typing import Any

from rlhf.task_files import prefer, run_script, split_files, task_files_main

# Each prompt asks a yes/no question about a fact (a capital, an animal's class or flight, a comparison or parity
# of numbers) and states a constraint a gold judge can check: "Start your answer with Yes or No." A good answer
# follows it, is about the question and ends; the hidden gold preference ranks them:
#   1.0  starts with Yes or No, on topic, complete          ("Yes, Paris is the capital of France.")
#   0.5  on topic and complete, but starts otherwise          ("Paris is the capital of France.")
#   0.0  empty, cut off, longer than MAX_WORDS, or not about the question ("Yes." names nothing it was asked)
# So text that ignores the question cannot win, however it starts. The judge does not check the facts: a 135 M
# model's reward model cannot learn them from a thousand pairs. A share YES_NO_RATE of the demonstrations follows
# the constraint, so the fine-tuned policy does so only sometimes and PPO has room to improve.

SEED = 0
YES_NO_RATE = 0.3  # share of demonstrations that start with Yes or No
MAX_WORDS = 30
INSTRUCTION = "Start your answer with Yes or No."
CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Portugal": "Lisbon",
    "Greece": "Athens", "Austria": "Vienna", "Poland": "Warsaw", "Sweden": "Stockholm", "Norway": "Oslo",
    "Finland": "Helsinki", "Denmark": "Copenhagen", "Ireland": "Dublin", "Egypt": "Cairo", "Kenya": "Nairobi",
    "Japan": "Tokyo", "China": "Beijing", "India": "New Delhi", "Russia": "Moscow", "Canada": "Ottawa",
    "Mexico": "Mexico City", "Peru": "Lima", "Chile": "Santiago", "Argentina": "Buenos Aires", "Cuba": "Havana",
}
ANIMALS = {  # animal -> (class, can it fly)
    "dog": ("mammal", False), "cat": ("mammal", False), "horse": ("mammal", False), "whale": ("mammal", False),
    "dolphin": ("mammal", False), "bat": ("mammal", True), "cow": ("mammal", False), "lion": ("mammal", False),
    "mouse": ("mammal", False), "eagle": ("bird", True), "sparrow": ("bird", True), "penguin": ("bird", False),
    "ostrich": ("bird", False), "owl": ("bird", True), "duck": ("bird", True), "shark": ("fish", False),
    "salmon": ("fish", False), "trout": ("fish", False), "snake": ("reptile", False), "lizard": ("reptile", False),
    "turtle": ("reptile", False), "crocodile": ("reptile", False), "frog": ("amphibian", False),
    "bee": ("insect", True), "ant": ("insect", False), "butterfly": ("insect", True), "beetle": ("insect", False),
}
CLASSES = ("mammal", "bird", "fish", "reptile", "amphibian", "insect")
NUMBERS = range(1, 31)
SPLITS = {"sft": 300, "label_prompts": 250, "ppo_prompts": 300, "eval_prompts": 120}  # prompts per split
STOPWORDS = {"is", "the", "a", "an", "of", "than", "can", "it", "number", "start", "your", "answer", "with", "yes",
             "no", "or", "not", "that", "this"}
# A claim in three forms: the question, the statement if true, and its negation and correction if false.
YES_STARTS = ("Yes, {claim}.", "Yes. {Claim}.", "Yes, that is right: {claim}.")
NO_STARTS = ("No, {negation}.", "No. {Correction}.", "No, {correction}.")
YES_OTHER = ("{Claim}.", "That is right: {claim}.", "Indeed, {claim}.", "Correct, {claim}.")
NO_OTHER = ("{Negation}.", "Actually, {correction}.", "Not quite: {correction}.", "In fact, {correction}.")
_WORD = re.compile(r"[A-Za-z]+|\d+")
_FIRST_WORD = re.compile(r"\W*(\w+)")


def article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def facts() -> list[dict[str, Any]]:
    """Every question of the task with its answer, claim, negation and correction, in a fixed order."""
    out = []
    for country, capital in CAPITALS.items():
        for city in [capital] + [c for c in CAPITALS.values() if c != capital][:3]:
            out.append(dict(question=f"Is {city} the capital of {country}?", truth=city == capital,
                            claim=f"{city} is the capital of {country}",
                            negation=f"{city} is not the capital of {country}",
                            correction=f"the capital of {country} is {capital}"))
    for animal, (cls, flies) in ANIMALS.items():
        for other in CLASSES:
            out.append(dict(question=f"Is {article(animal)} {article(other)}?", truth=other == cls,
                            claim=f"{article(animal)} is {article(other)}",
                            negation=f"{article(animal)} is not {article(other)}",
                            correction=f"{article(animal)} is {article(cls)}"))
        out.append(dict(question=f"Can {article(animal)} fly?", truth=flies, claim=f"{article(animal)} can fly",
                        negation=f"{article(animal)} cannot fly", correction=f"{article(animal)} cannot fly"))
    for a in NUMBERS:
        for b in NUMBERS:
            if a != b:
                out.append(dict(question=f"Is {a} greater than {b}?", truth=a > b, claim=f"{a} is greater than {b}",
                                negation=f"{a} is not greater than {b}", correction=f"{a} is smaller than {b}"))
    return out


def prompt_of(fact: dict[str, Any]) -> str:
    return f"{fact['question']} {INSTRUCTION}"


def demonstration(fact: dict[str, Any], rng: random.Random) -> str:
    """One good answer; it starts with Yes or No with probability YES_NO_RATE."""
    follows = rng.random() < YES_NO_RATE
    templates = (YES_STARTS if follows else YES_OTHER) if fact["truth"] else (NO_STARTS if follows else NO_OTHER)
    parts = {key: fact[key] for key in ("claim", "negation", "correction")}
    parts.update({key.capitalize(): value[0].upper() + value[1:] for key, value in parts.items()})
    return rng.choice(templates).format(**parts)


# ---- the gold preference -------------------------------------------------------------------------

def question_of(prompt: Any) -> str:
    """The question of a prompt (a string, or a chat whose last user turn is one) without the instruction."""
    if isinstance(prompt, list):
        users = [m.get("content", "") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        prompt = users[-1] if users else ""
    return str(prompt).replace(INSTRUCTION, "").strip()


def topic_words(text: str) -> set[str]:
    return {w.lower() for w in _WORD.findall(text)} - STOPWORDS


def outcome(prompt: Any, response: str) -> str:
    """The kind of answer: "yes/no first" (gold 1.0), "other start" (0.5), "off topic" or "broken" (0.0)."""
    text = response.strip()
    words = _WORD.findall(text)
    if not words or len(words) > MAX_WORDS or text[-1] not in ".!?":
        return "broken"
    if not topic_words(question_of(prompt)) & topic_words(text):
        return "off topic"
    first = _FIRST_WORD.match(text)
    return "yes/no first" if first and first[1].lower() in ("yes", "no") else "other start"


GOLD = {"yes/no first": 1.0, "other start": 0.5, "off topic": 0.0, "broken": 0.0}


def gold_score(prompt: Any, response: str) -> float:
    """1.0: starts with Yes or No, on topic, complete; 0.5: on topic and complete only; 0.0: anything else."""
    return GOLD[outcome(prompt, response)]


def judge(prompt: Any, response_a: str, response_b: str) -> str:
    """The simulated annotator: "a" or "b" for the response with the higher gold score, else "tie"."""
    return prefer(gold_score(prompt, response_a), gold_score(prompt, response_b))


# ---- the shipped files ---------------------------------------------------------------------------

def task_files(seed: int = SEED) -> dict[str, list[dict] | str]:
    """The task's data: SFT chats and three disjoint prompt sets (file name -> rows)."""
    rng = random.Random(seed)
    chosen = facts()
    rng.shuffle(chosen)
    return split_files(chosen, SPLITS, prompt_of, lambda f: demonstration(f, rng))


def main(argv: list[str]) -> int:
    return task_files_main(argv, task_files, "configs/smollm2",
                           "Write the yes/no task's data files (`python -m rlhf.yes_no_task --out configs/smollm2`).")


if __name__ == "__main__":
    run_script(main)
