"""SFT data: every format and file type loads; bad rows fail before training, naming file, line and field."""

import json

import pandas as pd
import pytest
from transformers import AutoTokenizer

from rlhf import datafiles, sft_data
from rlhf.cli import main
from rlhf.sft_data import IGNORE
from rlhf.errors import DataError

GOOD = [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}] * 3


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("bad,line,field", [
    ('{"messages": [{"role": "user", "content": "Hi"}', 2, None),  # malformed JSON
    ({"messages": [{"role": "bot", "content": "x"}, {"role": "assistant", "content": "y"}]}, 2, "messages[0].role"),
    ({"messages": []}, 2, "messages"),
    ({"messages": [{"role": "user", "content": "only a question"}]}, 2, "messages"),
    ({"messages": [{"role": "user"}, {"role": "assistant", "content": "y"}]}, 2, "messages[0].content"),
    ({"mesages": [{"role": "user", "content": "x"}]}, 2, "messages"),
])
def test_bad_rows_name_file_line_and_field(tmp_path, capsys, bad, line, field, tiny_llama):
    data = write_jsonl(tmp_path / "sft_data.jsonl", [GOOD[0], bad, GOOD[0]])
    code = main(["sft", "--model_name_or_path", str(tiny_llama), "--dataset_path", str(data), "--output_dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2
    assert f"sft_data.jsonl:{line}" in err
    if field:
        assert f"field '{field}'" in err
    assert not (tmp_path / "run").exists()  # nothing started


def test_missing_completion_field(tmp_path):
    data = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "a", "completion": "b"}, {"prompt": "a"}])
    with pytest.raises(Exception, match=r"pc\.jsonl:2: field 'completion': missing"):
        sft_data.validate(datafiles.read_rows(data))


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(Exception, match="nope.jsonl: file not found"):
        datafiles.read_rows(tmp_path / "nope.jsonl")
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(Exception, match="unsupported file type '.txt'"):
        datafiles.read_rows(tmp_path / "x.txt")


def test_every_file_type_gives_the_same_examples(tmp_path):
    rows = [{"prompt": "Q: sky?", "completion": "blue"}, {"prompt": "Q: grass?", "completion": "green"}]
    write_jsonl(tmp_path / "d.jsonl", rows)
    (tmp_path / "d.json").write_text(json.dumps(rows))
    pd.DataFrame(rows).to_csv(tmp_path / "d.csv", index=False)
    pd.DataFrame(rows).to_parquet(tmp_path / "d.parquet")
    import datasets

    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "folder"))
    for name in ("d.jsonl", "d.json", "d.csv", "d.parquet", "folder"):
        assert sft_data.validate(datafiles.read_rows(tmp_path / name)) == ("prompt_completion", rows), name


def test_csv_row_numbers_are_file_lines(tmp_path):
    (tmp_path / "d.csv").write_text("prompt,completion\na,b\nc,\n")
    with pytest.raises(Exception, match=r"d\.csv:3: field 'completion'"):
        sft_data.validate(datafiles.read_rows(tmp_path / "d.csv"))


def test_assistant_only_masking_token_by_token(tiny_llama):
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Sky?"},
            {"role": "assistant", "content": "Blue."}, {"role": "user", "content": "Grass?"},
            {"role": "assistant", "content": "Green."}]
    out = sft_data.tokenize({"messages": chat}, tok)
    text = tok.apply_chat_template(chat, tokenize=False)
    assert tok.decode(out["input_ids"]) == text
    for token, label in zip(out["input_ids"], out["labels"]):
        assert label in (token, sft_data.IGNORE)
    trained = [tok.decode([t]) for t, label in zip(out["input_ids"], out["labels"]) if label != sft_data.IGNORE]
    assert "".join(trained) == "Blue.<|im_end|>Green.<|im_end|>"
    # everything before the first assistant answer is masked, including the "assistant\n" header
    first = out["labels"].index(next(lbl for lbl in out["labels"] if lbl != sft_data.IGNORE))
    assert tok.decode(out["input_ids"][:first]).endswith("<|im_start|>assistant\n")


CHAT = [{"role": "user", "content": "Sky?"}, {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Grass?"}, {"role": "assistant", "content": "Green."}]


def marker_free_tokenizer(tiny_llama, template: str):
    """The tiny model's tokenizer with another chat template."""
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    tok.chat_template = template
    return tok


def test_assistant_only_masking_without_generation_markers(tiny_llama):
    """SmolLM2's kind of template: ChatML without markers that injects a default system prompt."""
    from gguf_helpers import CHATML_WITH_DEFAULT_SYSTEM

    tok = marker_free_tokenizer(tiny_llama, CHATML_WITH_DEFAULT_SYSTEM)
    out = sft_data.tokenize({"messages": CHAT}, tok)
    text = tok.apply_chat_template(CHAT, tokenize=False)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
    assert out["input_ids"] == tok.apply_chat_template(CHAT, tokenize=True, return_dict=True)["input_ids"]
    trained = [tok.decode([t]) for t, label in zip(out["input_ids"], out["labels"]) if label != IGNORE]
    assert "".join(trained) == "Blue.<|im_end|>Green.<|im_end|>"  # what the marked template trains, too
    first = out["labels"].index(next(lbl for lbl in out["labels"] if lbl != sft_data.IGNORE))
    assert tok.decode(out["input_ids"][:first]).endswith("Sky?<|im_end|>\n<|im_start|>assistant\n")


def test_a_template_that_rewrites_earlier_turns_is_an_error_not_a_wrong_mask(tiny_llama):
    rewrites = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
                "{% if message['role'] == 'assistant' and not loop.last %}(earlier answer){% else %}"
                "{{ message['content'] }}{% endif %}<|im_end|>\n{% endfor %}"
                "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    tok = marker_free_tokenizer(tiny_llama, rewrites)
    with pytest.raises(DataError, match=r"chat template: field 'chat_template': has no \{% generation %\} markers, "
                                        r"and rendering the conversation through messages\[1\]"):
        sft_data.tokenize({"messages": CHAT}, tok)
    out = sft_data.tokenize({"messages": CHAT[:2]}, tok)  # one assistant turn: nothing rewritten, so it is found
    assert tok.decode([t for t, label in zip(out["input_ids"], out["labels"]) if label != IGNORE]) == "Blue.<|im_end|>"


def test_prompt_completion_masks_the_prompt(tiny_llama):
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    out = sft_data.tokenize({"prompt": "Q: sky?\nA: ", "completion": "blue"}, tok)
    n_prompt = len(tok("Q: sky?\nA: ", add_special_tokens=False)["input_ids"])
    assert out["labels"][:n_prompt] == [sft_data.IGNORE] * n_prompt
    assert out["labels"][n_prompt:] == out["input_ids"][n_prompt:]
    assert out["input_ids"][-1] == tok.eos_token_id
