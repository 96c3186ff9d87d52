"""Preference data: every format reads into the same canonical pairs; each kind of bad row names file, line, field."""

import json

import pytest

from conftest import DATA
from reward import pairs as pairs_lib
from reward.pairs import PreferencePair, load_pair_splits, render
from rlhf import cli
from rlhf.errors import DataError
from rlhf.datafiles import Row


def load_pairs(path, **options):
    """(the pairs of a one-split file, the dropped rows)."""
    splits, dropped = load_pair_splits(path, **options)
    return splits["train"], dropped


PICNIC = [{"role": "user", "content": "Can you help me plan a picnic?"},
          {"role": "assistant", "content": "Of course. Where would you like to go?"},
          {"role": "user", "content": "Somewhere near a lake."}]
SKY = [{"role": "user", "content": "What color is the sky?"}]
GOOD = {"prompt": "Hi?", "chosen": "Hello, nice to meet you.", "rejected": "Go away."}


@pytest.mark.parametrize("fmt", ["pairs", "hosted", "hh", "label_export"])
def test_each_format_gives_the_same_canonical_pairs(fmt):
    path = DATA / f"prefs_{fmt}.jsonl"
    pairs, dropped = load_pairs(path)
    assert dropped == []
    margins = (0.6667, 0.2222) if fmt == "label_export" else (None, None)
    assert pairs == [
        PreferencePair(PICNIC, "A lakeside park with shade and tables would be lovely.", "Just go anywhere, who cares.",
             margins[0], f"{path}:1"),
        PreferencePair(SKY, "The sky is blue on a clear day.", "Green, obviously.", margins[1], f"{path}:2"),
    ]
    assert load_pairs(path, data_format=fmt)[0] == pairs  # naming the format gives what detection gave


def test_margin_column_is_optional_and_can_be_ignored(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({**GOOD, "strength": "0.5"}) + "\n")  # CSV-style text numbers are accepted
    assert load_pairs(path, margin_column="strength")[0][0].margin == 0.5
    assert load_pairs(path)[0][0].margin is None
    label_export = DATA / "prefs_label_export.jsonl"
    assert [p.margin for p in load_pairs(label_export, margin_column=None)[0]] == [None, None]


def test_an_id_column_alone_does_not_make_a_label_export(tmp_path):
    path = tmp_path / "ids.jsonl"
    path.write_text(json.dumps({**GOOD, "pair_id": "x1"}) + "\n")
    assert pairs_lib.detect_format([Row("x", {**GOOD, "pair_id": "x1"})]) == "pairs"
    assert load_pairs(path)[0][0].chosen == GOOD["chosen"]


def test_render_applies_the_chat_template_once(tiny_llama):
    from rlhf.models import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_llama))
    text = render(tokenizer, PICNIC, "A park.")
    assert text.count("<|im_start|>") == 4 and text.endswith("<|im_start|>assistant\nA park.<|im_end|>\n")
    assert render(tokenizer, "What color is the sky?", "Blue.") == render(tokenizer, SKY, "Blue.")
    tokenizer.chat_template = None
    assert render(tokenizer, "Sky? ", "Blue.") == "Sky? Blue.<|im_end|>"
    with pytest.raises(DataError, match="message-list prompts need a tokenizer with a chat template"):
        render(tokenizer, SKY, "Blue.")


def hh(*turns):
    return "".join(f"\n\n{role}: {text}" for role, text in turns)


def hosted(messages, preferred, non_preferred):
    return {"input": {"messages": messages}, "preferred_output": [{"role": "assistant", "content": preferred}],
            "non_preferred_output": [{"role": "assistant", "content": non_preferred}]}


VOTES = {"pair_id": "p", "votes_chosen": 2, "votes_rejected": 0, "n_votes": 2, "margin": 0.5}
GOOD_HOSTED = hosted(SKY, "Blue.", "Red.")
GOOD_HH = {"chosen": hh(("Human", "Hi"), ("Assistant", "Hello")), "rejected": hh(("Human", "Hi"), ("Assistant", "No"))}
ASSISTANT_EMPTY = [{"role": "assistant", "content": ""}]
TWO_TURNS = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]

# (a good first row of the file's format, the bad second row, the field named, words of the message)
BAD_ROWS = [
    (GOOD, {**GOOD, "chosen": "Same.", "rejected": "Same. "}, "rejected", "identical to 'chosen'"),
    (GOOD, {**GOOD, "chosen": "  "}, "chosen", "empty response"),
    (GOOD, {**GOOD, "rejected": ASSISTANT_EMPTY}, "rejected", "empty response"),
    (GOOD, {"prompt": "Hi?", "rejected": "No."}, "chosen", "missing"),
    (GOOD, {**GOOD, "rejected": 3}, "rejected", "expected a string"),
    (GOOD, {**GOOD, "chosen": TWO_TURNS}, "chosen", "expected one assistant message"),
    (GOOD, {**GOOD, "prompt": [{"role": "user"}]}, "prompt[0].content", "missing"),
    (GOOD, {**GOOD, "prompt": TWO_TURNS}, "prompt", "ends with an assistant turn"),
    ({**GOOD, "margin": 1}, {**GOOD, "margin": "lots"}, "margin", "expected a number"),
    ({**GOOD, "margin": 1}, GOOD, "margin", "missing"),
    ({**GOOD, **VOTES}, {**GOOD, **VOTES, "votes_rejected": None}, "votes_rejected", "missing"),
    ({**GOOD, **VOTES}, {**GOOD, **VOTES, "n_votes": -1}, "n_votes", "must not be negative"),
    ({**GOOD, **VOTES}, {**GOOD, **VOTES, "tie": "yes"}, "tie", "must be true or false"),
    (GOOD_HOSTED, hosted([], "a", "b"), "input.messages", "empty conversation"),
    (GOOD_HOSTED, {**GOOD_HOSTED, "non_preferred_output": None}, "non_preferred_output", "missing"),
    (GOOD_HH, {**GOOD_HH, "chosen": hh(("Human", "Hi"), ("Human", "Hello?"))}, "chosen",
     "transcript has no assistant turn"),
    (GOOD_HH, {**GOOD_HH, "rejected": hh(("Human", "Bye"), ("Assistant", "No"))}, "rejected",
     "shares no prompt with 'chosen'"),
    (GOOD_HH, {**GOOD_HH, "rejected": hh(("Human", "Hi"), ("Assistant", " "))}, "rejected", "empty response"),
    (GOOD_HH, {**GOOD_HH, "rejected": hh(("Human", "Hi"), ("Assistant", "Hello"))}, "rejected", "identical"),
]


@pytest.mark.parametrize("good,bad,field,message", BAD_ROWS, ids=[f"{f}: {m}" for _, _, f, m in BAD_ROWS])
def test_bad_row_names_file_line_and_field(tmp_path, good, bad, field, message):
    path = tmp_path / "prefs.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(DataError) as error:
        load_pairs(path)
    assert error.value.where == f"{path}:2" and error.value.field == field and message in error.value.detail
    assert f"{path}:2: field '{field}'" in str(error.value)
    assert str(error.value).endswith(f" ({pairs_lib.DROP_HINT})")  # says how to skip such rows
    pairs, dropped = load_pairs(path, drop_bad_rows=True)  # the same row, dropped and reported instead
    assert len(pairs) == 1 and [f"{e} ({pairs_lib.DROP_HINT})" for e in dropped] == [str(error.value)]


def write_hh_with_public_data_flaws(path):
    """An HH file as public data has it: good pairs, an empty final assistant turn, a pair sharing no prompt."""
    rows = [GOOD_HH,
            {**GOOD_HH, "chosen": "\n\nHuman: Hi\n\nAssistant:"},
            GOOD_HH,
            {**GOOD_HH, "rejected": hh(("Human", "Bye"), ("Assistant", "No"))}]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_flawed_public_hh_rows_say_how_to_skip_them_and_are_listed_when_dropped(tmp_path):
    path = write_hh_with_public_data_flaws(tmp_path / "hh.jsonl")
    with pytest.raises(DataError) as error:
        load_pairs(path)
    assert str(error.value) == (f"{path}:2: field 'chosen': empty response (`drop_bad_rows: true` skips such rows "
                                "and reports them: counted, and listed in summary.json)")
    pairs, dropped = load_pairs(path, drop_bad_rows=True)
    assert [p.where for p in pairs] == [f"{path}:1", f"{path}:3"]
    assert pairs_lib.dropped_rows(dropped) == [
        {"where": f"{path}:2", "field": "chosen", "reason": "empty response"},
        {"where": f"{path}:4", "field": "rejected", "reason": "shares no prompt with 'chosen' (the dialogues before "
                                                              "the last assistant turns differ or are empty)"}]


def test_malformed_line_is_an_error_or_a_counted_drop(tmp_path):
    path = tmp_path / "prefs.jsonl"
    path.write_text(json.dumps(GOOD) + "\n{not json\n" + json.dumps(GOOD) + "\n")
    with pytest.raises(DataError, match=f"{path}:2: malformed JSON .*drop_bad_rows: true"):
        load_pairs(path)
    pairs, dropped = load_pairs(path, drop_bad_rows=True)
    assert [p.where for p in pairs] == [f"{path}:1", f"{path}:3"] and len(dropped) == 1
    assert pairs_lib.describe_drops(dropped).startswith(f"dropped 1 bad rows: {path}:2: malformed JSON")


def test_rows_of_another_format_are_named(tmp_path):
    path = tmp_path / "prefs.jsonl"
    rows = [GOOD, GOOD, {"chosen": "Yes.", "rejected": "No."}]  # the odd row looks like HH, the file is `pairs`
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=f"{path}:3: field 'prompt': missing"):
        load_pairs(path)
    path.write_text('{"question": "Hi?"}\n')
    with pytest.raises(DataError, match=f"{path}:1: .*no preference fields"):
        load_pairs(path)


def test_cli_reports_bad_data_with_exit_status_2(tiny_llama, tmp_path, capsys):
    path = tmp_path / "prefs.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps({**GOOD, "rejected": GOOD["chosen"]}) + "\n")
    status = cli.main(["reward", "--model_name_or_path", str(tiny_llama), "--dataset_path", str(path),
                       "--output_dir", str(tmp_path / "run")])
    assert status == 2
    assert f"error: {path}:2: field 'rejected': identical to 'chosen'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # nothing is written before the data is known to be good
