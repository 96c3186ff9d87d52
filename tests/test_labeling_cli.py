"""`rlhf label` commands against the audit's defects: export guards, import checks, annotator management, keys."""

import json
import sqlite3

import pytest

from reward.labeling.importing import read_pairs
from reward.labeling.records import MAX_ID_CHARS, LabelPair
from reward.labeling.store import Store
from rlhf.cli import main as rlhf
from rlhf.errors import DataError

GOOD = {"prompt": "Hi", "response_a": "Hello!", "response_b": "Go away."}


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture
def labeled_db(tmp_path):
    """A database with one pair and one vote on it."""
    store = Store(tmp_path / "v.sqlite")
    store.set_overlap(1)
    store.add_pairs([LabelPair("q", "x", "y", id="p0")])
    store.add_annotator("ann")
    ann = store.annotator_by_name("ann")
    store.next_assignment(ann.id)
    store.add_label(ann.id, "p0", "left")
    return store


def _label_count(db):
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT COUNT(*) FROM labels").fetchone()[0]


def test_export_onto_the_database_or_another_sqlite_file_is_refused(labeled_db, tmp_path, capsys):
    db = str(labeled_db.path)
    for out in (db, db + "-wal"):
        assert rlhf(["label", "export", "--db", db, "--out", out, "--force"]) == 2
        assert "is the labeling database itself" in capsys.readouterr().err
    other = Store(tmp_path / "other.sqlite").path
    assert rlhf(["label", "export", "--db", db, "--out", str(other), "--force"]) == 2
    assert "is an SQLite database" in capsys.readouterr().err
    assert _label_count(db) == 1 and other.read_bytes().startswith(b"SQLite format 3")


def test_export_overwrites_only_a_previous_export_unless_forced(labeled_db, tmp_path, capsys):
    db, out = str(labeled_db.path), tmp_path / "prefs.jsonl"
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    assert rlhf(["label", "export", "--db", db, "--out", str(notes)]) == 2
    assert "exists and is not a previous export; pass --force" in capsys.readouterr().err
    assert notes.read_text() == "my notes\n"
    assert rlhf(["label", "export", "--db", db, "--out", str(out)]) == 0
    assert rlhf(["label", "export", "--db", db, "--out", str(out)]) == 0  # a previous export is replaced
    assert rlhf(["label", "export", "--db", db, "--out", str(notes), "--force"]) == 0
    assert json.loads(notes.read_text())["pair_id"] == "p0"


def test_export_to_a_directory_or_unwritable_path_is_one_line_and_leaves_nothing(labeled_db, tmp_path, capsys):
    db, folder = str(labeled_db.path), tmp_path / "out"
    folder.mkdir()
    assert rlhf(["label", "export", "--db", db, "--out", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a directory" in err and "Traceback" not in err
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert rlhf(["label", "export", "--db", db, "--out", str(blocker / "x.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot write" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "out", "v.sqlite", "v.sqlite-shm", "v.sqlite-wal"]


def test_raw_export_has_every_vote_with_order_and_models(tmp_path, capsys):
    store = Store(tmp_path / "l.sqlite")
    store.set_overlap(2)
    store.add_pairs([LabelPair("q", "x", "y", model_a="sft", model_b="ppo", id="p0")])
    ids = {}
    for name, choice in (("ann", "left"), ("bob", "skip")):
        store.add_annotator(name)
        ids[name] = store.annotator_by_name(name).id
        shown = store.next_assignment(ids[name]).shown_order
        label_id = store.add_label(ids[name], "p0", choice, reason="unsure" if choice == "skip" else "", time_ms=900)
    store.edit_label(ids["bob"], label_id, "tie", time_ms=1500)  # bob changes the skip into a tie
    out = tmp_path / "votes.jsonl"
    assert rlhf(["label", "export", "--db", str(store.path), "--out", str(out), "--raw"]) == 0
    assert "exported 2 votes" in capsys.readouterr().out
    ann, bob = [json.loads(line) for line in out.read_text().splitlines()]
    fields = ("annotator", "model_a", "model_b", "choice", "strength", "time_ms", "edits")
    assert [ann[k] for k in fields] == ["ann", "sft", "ppo", ann["choice"], None, 900, 0]
    assert ann["choice"] == ("a" if ann["shown_order"] == "ab" else "b")
    assert [bob[k] for k in fields] == ["bob", "sft", "ppo", "tie", None, 1500, 1]
    assert bob["shown_order"] == shown


def test_import_refuses_an_id_longer_than_the_api_accepts_with_its_line(tmp_path):
    path = _write_jsonl(tmp_path / "pairs.jsonl", [GOOD, {**GOOD, "response_b": "No.", "id": "x" * (MAX_ID_CHARS + 1)}])
    with pytest.raises(DataError, match=rf"pairs.jsonl:2: field 'id': is 201 characters long; at most {MAX_ID_CHARS}"):
        read_pairs(path)


def test_empty_import_file_and_serving_a_missing_database_are_refused(tmp_path, capsys):
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n  \n")
    db = tmp_path / "l.sqlite"
    assert rlhf(["label", "import", "--db", str(db), str(blank)]) == 2
    assert "blank.jsonl: no pairs: the file is empty or blank" in capsys.readouterr().err
    assert not db.exists()
    assert rlhf(["label", "serve", "--db", str(tmp_path / "typo.sqlite")]) == 2
    assert "no labeling database here" in capsys.readouterr().err
    assert not (tmp_path / "typo.sqlite").exists()


def test_duplicate_rows_are_reported_with_lines_and_a_swapped_pair_is_the_same_pair(tmp_path, capsys):
    swapped = {**GOOD, "response_a": GOOD["response_b"], "response_b": GOOD["response_a"]}
    twice = _write_jsonl(tmp_path / "twice.jsonl", [GOOD, swapped])
    same = r"twice.jsonl:2: the same prompt and responses \(in either order\) as .*twice.jsonl:1"
    with pytest.raises(DataError, match=same):
        read_pairs(twice)
    db = tmp_path / "l.sqlite"
    assert rlhf(["label", "import", "--db", str(db), str(_write_jsonl(tmp_path / "a.jsonl", [GOOD]))]) == 0
    b = _write_jsonl(tmp_path / "b.jsonl", [swapped])
    assert rlhf(["label", "import", "--db", str(db), str(b)]) == 0
    assert capsys.readouterr().out.splitlines()[-2:] == [
        f"added 0 pairs from {b} (1 already in {db})", f"  {b}:1: already in as '{LabelPair(**GOOD).key()}'"]
    assert len(Store(db).pairs()) == 1


def test_an_existing_id_with_other_content_is_refused_with_file_and_line(tmp_path, capsys):
    db = tmp_path / "l.sqlite"
    first = _write_jsonl(tmp_path / "a.jsonl", [{**GOOD, "id": "x"}])
    assert rlhf(["label", "import", "--db", str(db), str(first)]) == 0
    changed = _write_jsonl(tmp_path / "b.jsonl", [{**GOOD, "response_b": "Bye.", "id": "x"}])
    assert rlhf(["label", "import", "--db", str(db), str(changed)]) == 2
    assert f"{changed}:1: field 'id': pair id 'x' is already in {db} with different content" in capsys.readouterr().err


def test_a_utf8_bom_is_accepted_and_errors_still_name_the_file(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + (json.dumps(GOOD) + "\n" + json.dumps({"prompt": "x"}) + "\n").encode())
    with pytest.raises(DataError) as error:
        read_pairs(path)
    assert error.value.where == f"{path}:2"
    path.write_bytes(b"\xef\xbb\xbf" + (json.dumps(GOOD) + "\n").encode())
    (pair,) = read_pairs(path)
    assert (pair.prompt, pair.where) == ("Hi", f"{path}:1")


@pytest.mark.parametrize("argv,message", [
    (["export", "--out", "x.jsonl", "--min-votes", "-1"], "--min-votes must be an integer of at least 0, got -1"),
    (["export", "--out", "x.jsonl", "--min-votes", "two"], "--min-votes must be an integer"),
    (["serve", "--port", "0"], "--port must be an integer from 1 to 65535"),
    (["simulate", "--rule", "m:f", "--noise", "2"], "--noise must be a probability"),
    (["annotators", "fire", "ann"], "action must be list, revoke or rotate"),
    (["export", "--out", "x.jsonl", "--min-vote", "2"], "did you mean 'min_votes'"),
])
def test_bad_keys_are_refused_before_anything_runs(tmp_path, capsys, argv, message):
    db = tmp_path / "l.sqlite"
    assert rlhf(["label", *argv, "--db", str(db)]) == 2
    assert message in capsys.readouterr().err
    assert not db.exists()


def test_help_lists_subcommands_and_their_keys(capsys):
    assert rlhf(["label", "--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("serve", "import", "generate", "add-annotator", "annotators", "export"))
    assert rlhf(["label", "export", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--min_votes (default 1)" in out and "--force (default False)" in out
    assert rlhf(["label", "generate", "--help"]) == 0
    assert "--n (default 2)" in capsys.readouterr().out


def test_annotators_list_revoke_and_rotate(tmp_path, capsys):
    db = str(tmp_path / "l.sqlite")
    assert rlhf(["label", "add-annotator", "007", "--db", db]) == 0  # a name that looks like a number stays text
    store = Store(db)
    assert store.annotator_by_name("007") is not None
    old = store.add_annotator("ann")
    assert rlhf(["label", "annotators", "revoke", "ann", "--db", db]) == 0
    assert store.annotator_by_token(old) is None
    assert rlhf(["label", "annotators", "--db", db]) == 0
    assert capsys.readouterr().out.splitlines()[-1].split()[:3] == ["ann", "annotator", "revoked"]
    assert rlhf(["label", "annotators", "rotate", "ann", "--db", db]) == 0
    new = capsys.readouterr().out.strip()
    assert store.annotator_by_token(new).name == "ann" and store.annotator_by_token(old) is None
    assert rlhf(["label", "annotators", "revoke", "nobody", "--db", db]) == 2
    assert "no annotator named 'nobody'" in capsys.readouterr().err


def test_a_database_of_the_previous_schema_is_migrated_on_open(tmp_path):
    from reward.labeling.schema import SCHEMA

    db = tmp_path / "old.sqlite"
    with sqlite3.connect(db) as conn:  # what the previous version wrote: no edits, no revocation, no content hash
        conn.executescript(SCHEMA)
        conn.execute("INSERT INTO pairs (id, prompt, response_a, response_b, created_at) VALUES"
                     " ('old', '\"q\"', 'x', 'y', 'then')")
        conn.execute("INSERT INTO annotators (name, token_hash, created_at) VALUES ('ann', 'h', 'then')")
        conn.execute("INSERT INTO labels (pair_id, annotator_id, choice, shown_order, created_at) VALUES"
                     " ('old', 1, 'b', 'ab', 'then')")
    store = Store(db)
    assert store.add_pairs([LabelPair("q", "y", "x")]) == (0, 1)  # found by content, in either order
    assert list(store.pairs()) == ["old"]
    assert [(v.pair_id, v.annotator, v.choice) for v in store.votes()] == [("old", "ann", "b")]
    store.edit_label(1, 1, "left")  # the old label can be changed like a new one
    assert store.votes()[0].choice == "a"
    assert Store(db).pairs()["old"].response_a == "x"  # opening again changes nothing
