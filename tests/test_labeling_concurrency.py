"""A real labeling server in a subprocess: many annotators at once lose and duplicate nothing, and
labels acknowledged before a SIGKILL of the server are all in the database afterwards."""

import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from reward.labeling.records import LabelPair
from reward.labeling.store import Store

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(db: Path, overlap: int):
    """`rlhf label serve` in a subprocess; yields (url, process) once it answers."""
    port, log = _free_port(), db.with_suffix(".log")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "rlhf", "label", "serve", "--db", str(db), "--port", str(port),
               "--overlap", str(overlap)]
    with log.open("w") as log_file:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"labeling server did not start:\n{log.read_text()}")
            try:
                if httpx.get(f"{url}/api/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        yield url, process
    finally:
        if process.poll() is None:
            process.terminate()
        process.wait(timeout=10)


def _annotate(url: str, token: str, acks: list, edits: list | None = None, stop_on_disconnect: bool = False) -> None:
    """Label this annotator's whole queue; record (pair_id, label_id) for each acknowledged label.

    With an `edits` list, every fourth label also goes back (as Backspace does) and changes the previous
    one to "both_bad"; each acknowledged edit's label id is recorded."""
    rng = random.Random(token)
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:
        while True:
            try:
                pair = client.get("/api/next").raise_for_status().json()["pair"]
                if pair is None:
                    return
                body = {"pair_id": pair["id"], "choice": rng.choice(["left", "right", "tie"]), "time_ms": 1}
                label = client.post("/api/labels", json=body).raise_for_status().json()
                if edits is not None and len(acks) % 4 == 3:
                    previous = client.get("/api/history", params={"limit": 2}).raise_for_status().json()["labels"][1]
                    client.put(f"/api/labels/{previous['label_id']}", json={"choice": "both_bad"}).raise_for_status()
                    edits.append(previous["label_id"])
            except httpx.TransportError:
                if stop_on_disconnect:
                    return
                raise
            acks.append((pair["id"], label["label_id"]))


def _run_annotators(url, tokens, edits=None, stop_on_disconnect=False):
    """One thread per token; returns the acknowledgements of each and the exceptions raised."""
    acks = {token: [] for token in tokens}
    errors = []

    def work(token):
        try:
            _annotate(url, token, acks[token], edits, stop_on_disconnect)
        except Exception as e:  # reported by the test, not lost in the thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(token,)) for token in tokens]
    for thread in threads:
        thread.start()
    return threads, acks, errors


def _setup(tmp_path, n_pairs, n_annotators):
    store = Store(tmp_path / "labels.sqlite")
    store.add_pairs([LabelPair(f"prompt {i}", f"a{i}", f"b{i}", id=f"p{i}") for i in range(n_pairs)])
    tokens = [store.add_annotator(f"ann{i}") for i in range(n_annotators)]
    return store.path, tokens


@pytest.mark.slow
def test_twenty_annotators_in_parallel_lose_and_duplicate_nothing(tmp_path):
    db, tokens = _setup(tmp_path, n_pairs=50, n_annotators=20)
    edits = []
    with running_server(db, overlap=20) as (url, _):
        threads, acks, errors = _run_annotators(url, tokens, edits)
        in_url = httpx.get(f"{url}/api/next", params={"token": tokens[0]})  # a token in a URL: refused, not logged
        for thread in threads:
            thread.join(timeout=120)
    assert not errors, errors
    assert in_url.status_code == 401
    assert all(len(a) == 50 for a in acks.values())  # everyone labeled every pair once
    label_ids = [label_id for a in acks.values() for _, label_id in a]
    assert len(set(label_ids)) == 1000
    with sqlite3.connect(db) as conn:
        rows, distinct = conn.execute(
            "SELECT COUNT(*), COUNT(DISTINCT pair_id || '/' || annotator_id) FROM labels"
        ).fetchone()
        assert (rows, distinct) == (1000, 1000)
        per_pair = conn.execute("SELECT COUNT(*) FROM labels GROUP BY pair_id").fetchall()
        edited = conn.execute("SELECT label_id, choice FROM label_edits ORDER BY label_id").fetchall()
        current = conn.execute("SELECT COUNT(*), SUM(choice = 'both_bad') FROM current_labels").fetchone()
    assert per_pair == [(20,)] * 50
    assert len(edits) == 20 * 12 and sorted(edits) == [label_id for label_id, _ in edited]  # each edit stored once
    assert {choice for _, choice in edited} == {"both_bad"} and current == (1000, len(edits))
    log = db.with_suffix(".log").read_text()
    assert "POST /api/labels" in log and not any(token in log for token in tokens)  # requests logged, tokens not
    assert '"GET /api/next" 401' in log and "token=" not in log  # never a query string


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_acknowledged_labels_survive_sigkill_of_the_server(tmp_path):
    db, tokens = _setup(tmp_path, n_pairs=1000, n_annotators=4)
    with running_server(db, overlap=1) as (url, process):
        threads, acks, errors = _run_annotators(url, tokens, stop_on_disconnect=True)
        deadline = time.monotonic() + 60
        while sum(map(len, acks.values())) < 100 and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(process.pid, signal.SIGKILL)  # while requests are in flight
        for thread in threads:
            thread.join(timeout=60)
    assert not errors, errors
    acknowledged = {ack for a in acks.values() for ack in a}
    assert len(acknowledged) >= 100
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        stored = set(conn.execute("SELECT pair_id, id FROM labels").fetchall())
    assert acknowledged <= stored
