"""The demo task: the gold rule on hand-written answers, and the shipped files against their generator."""

import json
import random
from pathlib import Path

import pytest

from rlhf import demo_task

DEMO = Path(__file__).parent.parent / "configs" / "demo"
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


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_shipped_files_equal_the_generator_output():
    files = demo_task.demo_files()
    assert sorted(files) == sorted(p.name for p in DEMO.iterdir() if p.suffix in (".jsonl", ".txt"))
    for name, content in files.items():
        shipped = (DEMO / name).read_text(encoding="utf-8") if name.endswith(".txt") else _read_jsonl(DEMO / name)
        assert shipped == content, f"configs/demo/{name} is stale: run python -m rlhf.demo_task --out configs/demo"


def test_prompt_splits_are_disjoint_and_sized():
    files = demo_task.demo_files()
    sets = {"sft": {row["messages"][0]["content"] for row in files["sft.jsonl"]}}
    for split in ("label_prompts", "ppo_prompts", "eval_prompts"):
        sets[split] = {row["prompt"] for row in files[f"{split}.jsonl"]}
    for split, size in demo_task.SPLITS.items():
        assert len(sets[split]) == size
    union = set().union(*sets.values())
    assert len(union) == sum(demo_task.SPLITS.values())
    assert all(demo_task.parse_prompt(p) for p in union)


def test_write_demo_files_round_trips(tmp_path):
    written = demo_task.write_demo_files(tmp_path, seed=3)
    assert {p.name for p in written} == set(demo_task.demo_files(seed=3))
    assert _read_jsonl(tmp_path / "eval_prompts.jsonl") == demo_task.demo_files(seed=3)["eval_prompts.jsonl"]


def test_command_line_writes_the_files(tmp_path, capsys):
    assert demo_task.main(["--out", str(tmp_path / "a"), "--seed", "3"]) == 0
    assert f"wrote {tmp_path / 'a' / 'eval_prompts.jsonl'}" in capsys.readouterr().out
    assert _read_jsonl(tmp_path / "a" / "eval_prompts.jsonl") == demo_task.demo_files(seed=3)["eval_prompts.jsonl"]
    config_file = tmp_path / "demo.yaml"
    config_file.write_text("seed: 3\n")
    assert demo_task.main(["--config", str(config_file), f"--out={tmp_path / 'b'}"]) == 0
    assert (tmp_path / "b" / "sft.jsonl").read_text() == (tmp_path / "a" / "sft.jsonl").read_text()


def test_command_line_help_and_errors(capsys):
    from rlhf.errors import ConfigError

    assert demo_task.main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "--out (default 'configs/demo')" in text and "--seed (default 0)" in text
    with pytest.raises(ConfigError, match="unknown config key 'sed'; did you mean 'seed'"):
        demo_task.main(["--sed", "1"])
    with pytest.raises(ConfigError, match="seed must be an integer"):
        demo_task.main(["--seed", "one"])


@pytest.mark.parametrize("response, kind", [
    ("Sure, Anna! A red apple is sweet.", "right name"),
    ("A red apple is sweet. Have fun, Anna!", "right name"),
    ("Hello Anna! A red apple is sweet. Hope this helps, Anna.", "right name"),  # the name in opener and closer
    ("Okay. The apple is red and fresh.", "no name"),
    ("A red apple is sweet.", "no name"),
    ("Sure, Ben! A red apple is sweet.", "wrong name"),
    ("This red apple looks fresh. Thanks for asking, Zoe.", "wrong name"),
    ("Hello Ben! A red apple is sweet. Hope this helps, Anna.", "wrong name"),  # right and wrong name
    ("Hello Ben! A red apple is sweet. Hope this helps, Cleo.", "wrong name"),  # two other names
    ("Sure, Bob! A red apple is sweet.", "broken"),  # not a name of the task
    ("Sure, Ben! A blue apple is sweet.", "broken"),  # wrong colour as well as the wrong name
    ("Sure, Anna! A red apple is sweet. Anna", "broken"),
    ("Ben", "broken"),
    ("", "broken"),
])
def test_outcome_kinds_on_hand_written_answers(response, kind):
    assert demo_task.outcome(PROMPT, response) == kind
    assert demo_task.gold_score(PROMPT, response) == {"right name": 1.0, "no name": 0.5}.get(kind, 0.0)


def test_outcome_of_a_request_outside_the_language_is_broken():
    assert demo_task.outcome("Describe a red apple.", "Sure, Ben! A red apple is sweet.") == "broken"
    assert demo_task.outcome("I am Ben. Describe a red apple.", "Sure, Ben! A red apple is sweet.") == "right name"
