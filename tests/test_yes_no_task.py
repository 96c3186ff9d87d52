"""The real-model task: the gold rule on hand-written answers, the demonstrations and the prompt splits."""

import random

import pytest

from rlhf import yes_no_task as task

PROMPT = "Is Paris the capital of France? Start your answer with Yes or No."


@pytest.mark.parametrize("response, kind", [
    ("Yes, Paris is the capital of France.", "yes/no first"),
    ("No. The capital of France is Paris!", "yes/no first"),
    ("  yes, Paris is.\n", "yes/no first"),  # any case; surrounding whitespace is not judged
    ("Paris is the capital of France.", "other start"),
    ("Correct, Paris is the capital of France.", "other start"),
    ("Yessir, France.", "other start"),  # the first word must be Yes or No
    ("Yes.", "off topic"),  # names nothing it was asked about
    ("Yes, I like trains.", "off topic"),
    ("Yes, Paris is the capital of France", "broken"),  # cut off: no final punctuation
    ("Yes, " + "Paris " * task.MAX_WORDS + "is.", "broken"),
    ("", "broken"),
    ("...", "broken"),
])
def test_outcome_and_gold_score_on_hand_written_answers(response, kind):
    assert task.outcome(PROMPT, response) == kind
    assert task.gold_score(PROMPT, response) == task.GOLD[kind]


def test_gold_score_reads_chat_prompts():
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Can a bat fly? " + task.INSTRUCTION}]
    assert task.gold_score(chat, "Yes, a bat can fly.") == 1.0
    assert task.gold_score(chat, "Yes, Paris is the capital of France.") == 0.0  # another question's topic


def test_judge_prefers_the_higher_gold_score_whichever_side_it_is_shown():
    good, plain, bad = "Yes, Paris is the capital of France.", "Paris is the capital of France.", "Yes."
    assert task.judge(PROMPT, good, plain) == "a" and task.judge(PROMPT, plain, good) == "b"
    assert task.judge(PROMPT, plain, bad) == "a"
    assert task.judge(PROMPT, good, "No, the capital of France is Paris.") == "tie"  # the facts are not judged


def test_facts_are_true():
    facts = {f["question"]: f for f in task.facts()}
    assert len(facts) == len(task.facts())  # no question twice
    assert facts["Is Paris the capital of France?"]["truth"] and not facts["Is Rome the capital of France?"]["truth"]
    assert facts["Is a whale a mammal?"]["truth"] and not facts["Is a whale a fish?"]["truth"]
    assert facts["Can a bat fly?"]["truth"] and not facts["Can a penguin fly?"]["truth"]
    assert facts["Is 12 greater than 7?"]["truth"] and not facts["Is 7 greater than 12?"]["truth"]
    assert facts["Is an owl an insect?"]["correction"] == "an owl is a bird"


def test_demonstrations_are_good_answers_and_start_with_yes_or_no_at_the_set_rate():
    rng = random.Random(1)
    scores = [task.gold_score(task.prompt_of(f), task.demonstration(f, rng)) for f in task.facts()]
    assert min(scores) == 0.5
    assert abs(sum(s == 1.0 for s in scores) / len(scores) - task.YES_NO_RATE) < 0.05
