"""The demo task: the gold rule on hand-written answers, and the shipped files against their generator."""

import random

import pytest

from rlhf import demo_task

PROMPT = "I am Anna. Describe a red apple."


@pytest.mark.parametrize("response, score", [
    ("A red apple is sweet.", 0.5),
    ("Sure! The apple is red and round. Have fun!", 0.5),
    ("Sure, Anna! A red apple is sweet.", 1.0),
    ("This red apple looks fresh. Thanks for asking, Anna.", 1.0),
    ("Hello Anna! A red apple is sweet. Hope this helps, Anna.", 1.0),
    ("  Okay, Anna. A red apple is round.\n", 1.0),  # surrounding whitespace is not judged
    ("Sure, Ben! A red apple is sweet.", 0.0),  # someone else's name
    ("A blue apple is sweet.", 0.0),  # wrong colour
    ("A red ball is sweet.", 0.0),  # wrong thing
    ("A red apple is loud.", 0.0),  # adjective that does not fit
    ("Anna Anna Anna", 0.0),
    ("Sure, Anna! A red apple is sweet. Anna", 0.0),  # outside the grammar
    ("", 0.0),
])
def test_gold_score_on_hand_written_answers(response, score):
    assert demo_task.gold_score(PROMPT, response) == score


def test_gold_score_reads_chat_prompts_and_rejects_other_requests():
    chat = [{"role": "system", "content": "Be nice."}, {"role": "user", "content": "I am Zoe. Tell me about a black kite."}]
    assert demo_task.gold_score(chat, "Have fun! The kite is black and big. Have fun, Zoe!") == 0.0
    assert demo_task.gold_score(chat, "Hello! The kite is black and big. Have fun, Zoe!") == 1.0
    assert demo_task.gold_score("I am Bob. Describe a red apple.", "A red apple is sweet.") == 0.0  # unknown name
    assert demo_task.gold_score("Describe a red apple.", "A red apple is sweet.") == 0.0


def test_judge_prefers_the_named_answer_whichever_side_it_is_shown():
    named, plain, wrong = "Sure, Anna! A red apple is sweet.", "Sure! A red apple is sweet.", "A red car is fast."
    assert demo_task.judge(PROMPT, named, plain) == "a"
    assert demo_task.judge(PROMPT, plain, named) == "b"
    assert demo_task.judge(PROMPT, plain, wrong) == "a"
    assert demo_task.judge(PROMPT, plain, "Okay. This red apple looks fresh.") == "tie"


def test_named_and_unnamed_answers_differ_only_in_the_name():
    """Length is not the gold feature: every opener/closer with the name has a counterpart without it."""
    words = lambda text: text.replace(",", "").replace("!", "").replace(".", "").split()
    named = demo_task.NAME_OPENERS + demo_task.NAME_CLOSERS
    plain = demo_task.OPENERS[1:] + demo_task.CLOSERS[1:]  # the unnamed sets also hold the empty opener/closer
    assert len(named) == len(plain)
    for with_name, without in zip(named, plain):
        assert [w for w in words(with_name.format(name="Anna")) if w != "Anna"] == words(without)


def test_demonstrations_are_correct_and_name_the_requester_at_the_set_rate():
    rng = random.Random(1)
    requests = [demo_task.parse_prompt(p) for p in demo_task.all_prompts()]
    answers = [(r, demo_task.demonstration(r, rng)) for r in requests]
    scores = [demo_task.gold_score(f"I am {r['name']}. Describe a {r['color']} {r['thing']}.", a) for r, a in answers]
    assert min(scores) == 0.5
    named = sum(s == 1.0 for s in scores) / len(scores)
    assert abs(named - demo_task.NAME_RATE) < 0.05


def test_name_questions_teach_the_copy_and_are_outside_the_request_language():
    files = demo_task.demo_files(0)
    chats = [[m["content"] for m in row["messages"]] for row in files["sft.jsonl"]]
    questions = [(q, a) for q, a in chats if demo_task.parse_prompt(q) is None]
    assert len(questions) == demo_task.NAME_QUESTION_ROWS
    assert len(chats) == demo_task.SPLITS["sft"] + demo_task.NAME_QUESTION_ROWS
    assert chats.index(list(questions[0])) < demo_task.SPLITS["sft"]  # shuffled in, not appended
    for question, answer in questions:
        name = question.split(".")[0].removeprefix("I am ")
        assert answer == demo_task.NAME_QUESTIONS[question.split(". ", 1)[1]].format(name=name)
        assert demo_task.gold_score(question, answer) == 0.0
    assert {name for q, _ in questions for name in demo_task.NAMES if f"I am {name}." in q} == set(demo_task.NAMES)
    prompts = {row["prompt"] for split in ("label_prompts", "ppo_prompts", "eval_prompts")
               for row in files[f"{split}.jsonl"]}
    assert not prompts & {q for q, _ in questions}
