"""The labeling store, import, export, simulation, generation and the `rlhf label` commands."""

import json
import sqlite3
import sys
import types

import pytest

from reward.labeling.export import aggregate
from reward.labeling.importing import read_pairs
from reward.labeling.records import LabelingError, LabelPair, Vote
from reward.labeling.simulate import simulate_annotators
from reward.labeling.store import Store
from rlhf.cli import main as rlhf
from rlhf.errors import DataError


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


GOOD = {"prompt": "Hi", "response_a": "Hello!", "response_b": "Go away."}


@pytest.mark.parametrize(
    "bad,field,message",
    [
        ({"response_b": None}, "response_b", "missing"),
        ({"response_b": "   "}, "response_b", "empty response"),
        ({"response_b": "Hello! "}, "response_b", "identical to 'response_a'"),
        ({"response_a": 3}, "response_a", "expected a string"),
        ({"prompt": ""}, "prompt", "non-empty string or a list of messages"),
        ({"prompt": [{"role": "user"}]}, "prompt[0].content", "missing"),
        ({"prompt": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}, "prompt",
         "ends with an assistant turn"),
    ],
)
def test_import_errors_name_file_line_and_field(tmp_path, bad, field, message):
    row = {k: v for k, v in {**GOOD, **bad}.items() if v is not None}
    path = _write_jsonl(tmp_path / "pairs.jsonl", [GOOD, row])
    with pytest.raises(DataError) as error:
        read_pairs(path)
    assert error.value.where == f"{path}:2" and error.value.field == field
    assert message in str(error.value)


def test_import_command_reports_errors_and_exits_2(tmp_path, capsys):
    path = _write_jsonl(tmp_path / "pairs.jsonl", [GOOD, {"prompt": "x", "response_a": "y"}])
    assert rlhf(["label", "import", "--db", str(tmp_path / "l.sqlite"), str(path)]) == 2
    assert f"{path}:2: field 'response_b': missing" in capsys.readouterr().err


def test_duplicate_ids_in_a_file_are_refused(tmp_path):
    path = _write_jsonl(tmp_path / "pairs.jsonl", [{**GOOD, "id": "x"}, {**GOOD, "id": "x"}])
    with pytest.raises(DataError, match=r"pairs.jsonl:2: field 'id': duplicate id 'x' \(first at .*pairs.jsonl:1\)"):
        read_pairs(path)


def test_import_keeps_chat_prompts_and_is_idempotent(tmp_path, capsys):
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]
    path = _write_jsonl(tmp_path / "pairs.jsonl", [GOOD, {"prompt": chat, "response_a": "4", "response_b": "5",
                                                           "model_a": "sft", "model_b": "ppo", "id": 7}])
    db = tmp_path / "l.sqlite"
    assert rlhf(["label", "import", "--db", str(db), str(path)]) == 0
    assert rlhf(["label", "import", str(path), "--db", str(db)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-3:] == [f"added 0 pairs from {path} (2 already in {db})",
                        f"  {path}:1: already in as '{LabelPair('Hi', 'Hello!', 'Go away.').key()}'",
                        f"  {path}:2: already in as '7'"]
    pairs = Store(db).pairs()
    assert len(pairs) == 2
    assert pairs["7"] == LabelPair(chat, "4", "5", "sft", "ppo", "7")


def test_conflicting_pair_id_is_refused(tmp_path):
    store = Store(tmp_path / "l.sqlite")
    store.add_pairs([LabelPair("q", "a", "b", id="x")])
    with pytest.raises(LabelingError, match=r"pair id 'x' is already in .*l.sqlite with different content"):
        store.add_pairs([LabelPair("q", "a", "changed", id="x")])


def test_store_refuses_to_create_for_read_only_commands(tmp_path, capsys):
    assert rlhf(["label", "stats", "--db", str(tmp_path / "missing.sqlite")]) == 2
    assert "no labeling database" in capsys.readouterr().err
    assert not (tmp_path / "missing.sqlite").exists()


def test_add_annotator_prints_a_token_and_stores_only_its_hash(tmp_path, capsys):
    db = tmp_path / "l.sqlite"
    assert rlhf(["label", "add-annotator", "--db", str(db), "ann", "--admin"]) == 0
    token = capsys.readouterr().out.strip()
    assert len(token) >= 40
    assert Store(db).annotator_by_token(token).is_admin
    dump = "\n".join(sqlite3.connect(db).iterdump())
    assert token not in dump
    assert rlhf(["label", "add-annotator", "--db", str(db), "ann"]) == 2
    assert "already exists" in capsys.readouterr().err


# --- export: pure aggregation over hand-made votes ---

PAIRS = {f"p{i}": LabelPair(f"q{i}", f"A{i}", f"B{i}", id=f"p{i}") for i in range(5)}


def _votes(pair_id, *choices):
    return [Vote(pair_id, f"ann{i}", *c) if isinstance(c, tuple) else Vote(pair_id, f"ann{i}", c, None)
            for i, c in enumerate(choices)]


VOTES = (
    _votes("p0", ("a", 3), ("a", 1), ("b", 2))  # a wins 2-1; margin (3 + 1 - 2) / 3 / 3 = 2/9
    + _votes("p1", "b", "b")  # b wins; margin (2 + 2) / 2 / 3 = 2/3
    + _votes("p2", "a", "b")  # no majority
    + _votes("p3", "both_bad", "both_bad", "a")  # both bad
    + _votes("p4", ("a", 1))  # one vote
)


def test_export_majority_margin_and_exclusions():
    result = aggregate(PAIRS, VOTES, min_votes=2)
    assert [(r["pair_id"], r["chosen"], r["rejected"], r["margin"]) for r in result.records] == [
        ("p0", "A0", "B0", pytest.approx(2 / 9, abs=1e-4)),
        ("p1", "B1", "A1", pytest.approx(2 / 3, abs=1e-4)),
    ]
    first = result.records[0]
    assert {k: first[k] for k in ("votes_chosen", "votes_rejected", "votes_tie", "votes_both_bad", "n_votes")} == {
        "votes_chosen": 2, "votes_rejected": 1, "votes_tie": 0, "votes_both_bad": 0, "n_votes": 3}
    assert (first["prompt"], first["tie"], first["both_bad"]) == ("q0", False, False)
    assert dict(result.excluded) == {"tie": 1, "both_bad": 1, "too_few_votes": 1}
    assert result.summary().splitlines() == [
        "exported 2 records from 2 pairs",
        "excluded 1 pairs: majority says both are bad",
        "excluded 1 pairs: tie or no majority",
        "excluded 1 pairs: fewer votes than --min-votes",
    ]


def test_export_keeps_ties_and_both_bad_in_both_orders_with_zero_margin():
    result = aggregate(PAIRS, VOTES, min_votes=1, keep_ties=True, keep_both_bad=True)
    kept = [(r["pair_id"], r["chosen"], r["margin"], r["tie"], r["both_bad"]) for r in result.records[2:]]
    assert kept == [
        ("p2", "A2", 0.0, True, False), ("p2", "B2", 0.0, True, False),
        ("p3", "A3", 0.0, False, True), ("p3", "B3", 0.0, False, True),
        ("p4", "A4", pytest.approx(1 / 3, abs=1e-4), False, False),
    ]
    assert result.pairs_exported == 5 and not result.excluded


def test_margin_is_clipped_at_zero():
    votes = _votes("p0", ("a", 1), ("a", 1), ("b", 3))  # a wins, but (1 + 1 - 3) / 3 < 0
    assert aggregate(PAIRS, votes).records[0]["margin"] == 0.0


# --- simulated annotators and the export command ---


def prefer_longer(prompt, first, second):
    return "a" if len(first) > len(second) else "b" if len(second) > len(first) else "tie"


def test_simulated_annotators_label_through_the_queue_and_export(tmp_path, capsys):
    db = tmp_path / "l.sqlite"
    store = Store(db)
    store.set_overlap(3)
    store.add_pairs([LabelPair(f"q{i}", "short", "a much longer answer " * (i + 1), id=f"p{i}") for i in range(6)])
    assert simulate_annotators(db, prefer_longer, n_annotators=3, noise=0.0, seed=0) == 18
    with sqlite3.connect(db) as conn:
        orders = {row[0] for row in conn.execute("SELECT shown_order FROM labels")}
        per_pair = conn.execute("SELECT COUNT(DISTINCT annotator_id) FROM labels GROUP BY pair_id").fetchall()
    assert orders == {"ab", "ba"} and per_pair == [(3,)] * 6

    out = tmp_path / "prefs.jsonl"
    assert rlhf(["label", "export", "--db", str(db), "--out", str(out), "--min-votes", "3"]) == 0
    assert "exported 6 records from 6 pairs" in capsys.readouterr().out
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(r["rejected"] == "short" and r["votes_chosen"] == 3 for r in records)
    assert all(r["margin"] == pytest.approx(2 / 3, abs=1e-4) for r in records)  # three "clear" votes
    assert not list(tmp_path.glob("*.tmp"))

    assert rlhf(["label", "stats", "--db", str(db), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["krippendorff_alpha"] is None  # everybody always agrees: no variation to measure
    assert {k["kappa"] for k in stats["cohen_kappa"]} == {None}
    assert rlhf(["label", "stats", "--db", str(db)]) == 0
    assert "sim-1: 6 (a " in capsys.readouterr().out


def test_simulate_command_with_noise_uses_the_rule(tmp_path, capsys, monkeypatch):
    module = types.ModuleType("judges_for_test")
    module.prefer_longer = prefer_longer
    monkeypatch.setitem(sys.modules, "judges_for_test", module)
    db = tmp_path / "l.sqlite"
    Store(db).add_pairs([LabelPair(f"q{i}", "x", "yy", id=f"p{i}") for i in range(40)])
    argv = ["label", "simulate", "--db", str(db), "--annotators", "2", "--rule", "judges_for_test:prefer_longer"]
    assert rlhf(argv + ["--noise", "0.5", "--seed", "1"]) == 0
    assert "2 simulated annotators wrote 80 labels" in capsys.readouterr().out
    with sqlite3.connect(db) as conn:
        wrong = conn.execute("SELECT COUNT(*), MAX(strength) FROM labels WHERE choice = 'a'").fetchone()
    assert 5 < wrong[0] < 40 and wrong[1] == 1  # coin flips land on "a" about a quarter of the time, marked slight
    assert rlhf(["label", "simulate", "--db", str(db), "--rule", "judges_for_test:nope"]) == 2
    assert "has no function 'nope'" in capsys.readouterr().err


def test_generate_samples_pairs_from_a_policy(tmp_path, monkeypatch, capsys):
    calls = {}

    def sample(model, tokenizer, prompts, n, max_new_tokens, temperature, top_p, seed, batch_size, top_k):
        calls.update(prompts=prompts, n=n, max_new_tokens=max_new_tokens, seed=seed, top_k=top_k)
        return [[f"{i}-x", f"{i}-y", f"{i}-x"] for i in range(len(prompts))]

    from rlhf import sampling

    monkeypatch.setattr(sampling, "load_for_generation", lambda path: ("model", "tokenizer"))
    monkeypatch.setattr(sampling, "sample", sample)
    chat = [{"role": "user", "content": "two"}]
    prompts = _write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "one"}, {"prompt": chat}])
    db = tmp_path / "l.sqlite"
    argv = ["label", "generate", "--db", str(db), "--model", "runs/sft", "--prompts", str(prompts), "--n", "3",
            "--max-new-tokens", "16", "--seed", "5"]
    assert rlhf(argv) == 0
    assert calls == {"prompts": ["one", [{"role": "user", "content": "two"}]], "n": 3, "max_new_tokens": 16, "seed": 5,
                     "top_k": 0}  # every sampling parameter explicit: no library default applies
    assert "added 2 pairs (0 already present; 2 empty or repeated completions left out)" in capsys.readouterr().out
    pairs = list(Store(db).pairs().values())
    assert [(p.prompt, p.response_a, p.response_b, p.model_a) for p in pairs] == [
        ("one", "0-x", "0-y", "runs/sft"),
        ([{"role": "user", "content": "two"}], "1-x", "1-y", "runs/sft"),
    ]
    assert rlhf(argv[:-4] + ["--n", "1"]) == 2


def test_export_is_accepted_by_the_reward_stage(tmp_path):
    from reward.labeling.export import export_file
    from reward.pairs import load_pair_splits

    db = tmp_path / "l.sqlite"
    store = Store(db)
    store.set_overlap(2)
    chat = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Rate my poem."}]
    store.add_pairs([
        LabelPair("Say hi", "hi", "hello there", id="plain"),
        LabelPair(chat, "It rhymes nicely.", "No.", id="chat"),
        LabelPair("Pick", "same", "emas", id="tie"),  # equal lengths: the judge says tie
    ])
    simulate_annotators(db, prefer_longer, n_annotators=2)
    out = tmp_path / "prefs.jsonl"
    result = export_file(store, out, min_votes=2, keep_ties=True)
    splits, dropped = load_pair_splits(out)
    loaded = splits["train"]
    assert not dropped
    assert [(p.prompt, p.chosen, p.rejected, p.margin) for p in loaded] == [
        (r["prompt"], r["chosen"], r["rejected"], r["margin"]) for r in result.records
    ]
    assert loaded[1].prompt == chat and loaded[1].chosen == "It rhymes nicely."
    assert [p.margin for p in loaded[2:]] == [0.0, 0.0]  # the tie, once in each order
