"""The labeling HTTP API through FastAPI's TestClient: auth, queue and overlap, labels, export, stats, safety."""

import json
import random
import sqlite3

import pytest
from fastapi.testclient import TestClient

from reward.labeling.records import LabelPair
from reward.labeling.server import create_app
from reward.labeling.store import Store


def _bearer(token):
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / "labels.sqlite")
    store.add_pairs([LabelPair(f"prompt {i}", f"answer A{i}", f"answer B{i}", id=f"p{i}") for i in range(4)])
    return store


@pytest.fixture
def tokens(store):
    return {
        "admin": store.add_annotator("admin", is_admin=True),
        **{name: store.add_annotator(name) for name in ("ann", "bob", "cid")},
    }


@pytest.fixture
def client(store, tokens):
    return TestClient(create_app(store, "# Guidelines\n\nBe fair."))


def _label(client, token, choice="left", **extra):
    """Ask for the next pair and label it; returns (pair or None, response)."""
    pair = client.get("/api/next", headers=_bearer(token)).json()["pair"]
    if pair is None:
        return None, None
    body = {"pair_id": pair["id"], "choice": choice, **extra}
    return pair, client.post("/api/labels", headers=_bearer(token), json=body)


def _labels(store):
    with sqlite3.connect(store.path) as conn:
        return conn.execute(
            "SELECT l.pair_id, a.name, l.choice, l.strength, l.shown_order, l.time_ms, l.reason"
            " FROM labels l JOIN annotators a ON a.id = l.annotator_id ORDER BY l.id"
        ).fetchall()


ENDPOINTS = [("get", "/api/me"), ("get", "/api/next"), ("post", "/api/labels"), ("get", "/api/guidelines"),
             ("get", "/api/export"), ("get", "/api/history"), ("put", "/api/labels/1")]


@pytest.mark.parametrize("method,path", ENDPOINTS)
def test_no_token_or_wrong_token_gets_401(client, method, path):
    body = {"json": {"pair_id": "p0", "choice": "left"}} if method in ("post", "put") else {}
    for headers in ({}, _bearer("not-a-token"), {"Authorization": "Basic abc"}):
        response = getattr(client, method)(path, headers=headers, **body)
        assert response.status_code == 401, (headers, response.text)
        assert response.headers["www-authenticate"] == "Bearer"


def test_admin_endpoints_are_403_for_annotators(client, tokens):
    for path in ("/api/export", "/api/stats", "/api/annotators", "/api/disagreements"):
        assert client.get(path, headers=_bearer(tokens["ann"])).status_code == 403
        assert client.get(path, headers=_bearer(tokens["admin"])).status_code == 200
    names = [a["name"] for a in client.get("/api/annotators", headers=_bearer(tokens["admin"])).json()]
    assert names == ["admin", "ann", "bob", "cid"]


def test_me_and_guidelines(client, tokens):
    me = client.get("/api/me", headers=_bearer(tokens["ann"])).json()
    assert me == {"name": "ann", "is_admin": False, "progress": {"labeled": 0, "skipped": 0, "remaining": 4}}
    guidelines = client.get("/api/guidelines", headers=_bearer(tokens["ann"])).json()
    assert guidelines == {"markdown": "# Guidelines\n\nBe fair."}


def test_overlap_two_sends_each_pair_to_exactly_two_annotators(client, store, tokens):
    store.set_overlap(2)
    active = ["ann", "bob", "cid"]
    while active:
        for name in list(active):
            pair, response = _label(client, tokens[name])
            if pair is None:
                active.remove(name)
            else:
                assert response.status_code == 201, response.text
    labels = _labels(store)
    per_pair = {}
    for pair_id, name, *_ in labels:
        per_pair.setdefault(pair_id, []).append(name)
    assert sorted(per_pair) == ["p0", "p1", "p2", "p3"]
    assert all(len(names) == 2 and len(set(names)) == 2 for names in per_pair.values())
    assert len(labels) == 8
    for name in ("ann", "bob", "cid"):  # every queue is now empty
        assert client.get("/api/next", headers=_bearer(tokens[name])).json()["pair"] is None


def test_queue_serves_least_labeled_pair_and_reserves_it(client, store, tokens):
    store.set_overlap(1)
    first = client.get("/api/next", headers=_bearer(tokens["ann"])).json()["pair"]
    again = client.get("/api/next", headers=_bearer(tokens["ann"])).json()["pair"]
    assert again == first  # a reload shows the same pair in the same order
    other = client.get("/api/next", headers=_bearer(tokens["bob"])).json()["pair"]
    assert other["id"] != first["id"]  # reserved for ann, and K=1
    assert (first["id"], other["id"]) == ("p0", "p1")


def test_expired_reservation_frees_the_pair(tmp_path):
    store = Store(tmp_path / "labels.sqlite", reserve_seconds=-1)  # every reservation is already over
    store.set_overlap(1)
    store.add_pairs([LabelPair("q", "x", "y", id="only")])
    for name in ("ann", "bob"):
        store.add_annotator(name)
    ann, bob = store.annotator_by_name("ann"), store.annotator_by_name("bob")
    assert store.next_assignment(ann.id).pair_id == "only"
    assert store.next_assignment(bob.id).pair_id == "only"


def test_shown_order_is_recorded_and_choice_mapped_to_the_underlying_response(client, store, tokens):
    random.seed(3)
    store.set_overlap(1)
    seen = []
    while True:
        pair, response = _label(client, tokens["ann"], "left", strength=3, time_ms=1234)
        if pair is None:
            break
        assert response.status_code == 201
        seen.append("ab" if pair["left"].startswith("answer A") else "ba")
    labels = _labels(store)
    assert [row[4] for row in labels] == seen
    assert set(seen) == {"ab", "ba"}  # both orders occur
    for _, name, choice, strength, shown_order, time_ms, _ in labels:
        assert choice == ("a" if shown_order == "ab" else "b")
        assert (name, strength, time_ms) == ("ann", 3, 1234)


def test_duplicate_label_is_409_and_unassigned_or_unknown_pairs_refused(client, tokens):
    pair, response = _label(client, tokens["ann"])
    assert response.status_code == 201
    again = client.post("/api/labels", headers=_bearer(tokens["ann"]), json={"pair_id": pair["id"], "choice": "right"})
    assert again.status_code == 409
    not_assigned = client.post("/api/labels", headers=_bearer(tokens["bob"]), json={"pair_id": "p3", "choice": "left"})
    assert not_assigned.status_code == 409
    unknown = client.post("/api/labels", headers=_bearer(tokens["bob"]), json={"pair_id": "nope", "choice": "left"})
    assert unknown.status_code == 404


def test_invalid_labels_are_422(client, tokens):
    pair = client.get("/api/next", headers=_bearer(tokens["ann"])).json()["pair"]
    for body in (
        {"choice": "skip"},  # a skip needs a reason
        {"choice": "tie", "strength": 2},  # strength only goes with a preference
        {"choice": "left", "strength": 5},
        {"choice": "a"},
        {"choice": "left", "time_ms": -1},
        {"choice": "left", "extra": 1},
    ):
        response = client.post("/api/labels", headers=_bearer(tokens["ann"]), json={"pair_id": pair["id"], **body})
        assert response.status_code == 422, body


def test_skip_is_recorded_and_does_not_use_up_the_overlap(client, store, tokens):
    store.set_overlap(1)
    pair, response = _label(client, tokens["ann"], "skip", reason="needs medical expertise")
    assert response.status_code == 201
    assert response.json()["progress"] == {"labeled": 0, "skipped": 1, "remaining": 3}
    (pair_id, name, choice, strength, shown_order, time_ms, reason), = _labels(store)
    assert (pair_id, choice, strength, reason) == (pair["id"], "skip", None, "needs medical expertise")
    assert client.get("/api/next", headers=_bearer(tokens["bob"])).json()["pair"]["id"] == pair["id"]


def test_labels_and_their_edits_are_append_only(client, store, tokens):
    _, response = _label(client, tokens["ann"])
    client.put(f"/api/labels/{response.json()['label_id']}", headers=_bearer(tokens["ann"]), json={"choice": "tie"})
    with sqlite3.connect(store.path) as conn:
        for statement in ("UPDATE labels SET choice = 'b'", "DELETE FROM labels",
                          "UPDATE label_edits SET choice = 'b'", "DELETE FROM label_edits"):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                conn.execute(statement)
        assert conn.execute("SELECT COUNT(*) FROM label_edits").fetchone() == (1,)
    assert len(_labels(store)) == 1


def test_security_headers_on_page_static_files_and_api(client, tokens):
    for path, headers in (("/", {}), ("/static/app.js", {}), ("/api/me", _bearer(tokens["ann"])), ("/api/me", {})):
        response = client.get(path, headers=headers)
        csp = response.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert response.headers["x-content-type-options"] == "nosniff"
    page = client.get("/").text
    assert '<script src="/static/app.js"' in page and "<script>" not in page


def test_oversized_body_is_413(client, tokens):
    big = json.dumps({"pair_id": "p0", "choice": "skip", "reason": "x" * 70_000})
    declared = client.post("/api/labels", headers=_bearer(tokens["ann"]), content=big)
    assert declared.status_code == 413
    chunked = client.post(
        "/api/labels",
        headers={**_bearer(tokens["ann"]), "Content-Type": "application/json"},
        content=(big[i : i + 8192].encode() for i in range(0, len(big), 8192)),
    )
    assert chunked.status_code == 413


# Hand-made votes (underlying response, strength) by ann, bob and cid on p0..p3.
VOTES = {
    "ann": {"p0": ("a", 3), "p1": ("b", None), "p2": ("tie", None), "p3": ("both_bad", None)},
    "bob": {"p0": ("a", 1), "p1": ("b", None), "p2": ("a", None), "p3": ("both_bad", None)},
    "cid": {"p0": ("b", 2), "p1": ("b", None), "p2": ("tie", None), "p3": ("a", None)},
}


def _cast(client, token, votes):
    """Label the whole queue over HTTP, turning each wanted underlying choice into the side it is shown on."""
    while True:
        pair = client.get("/api/next", headers=_bearer(token)).json()["pair"]
        if pair is None:
            return
        choice, strength = votes[pair["id"]]
        if choice in ("a", "b"):
            shown_a = "left" if pair["left"].startswith("answer A") else "right"
            choice = shown_a if choice == "a" else {"left": "right", "right": "left"}[shown_a]
        body = {"pair_id": pair["id"], "choice": choice, "strength": strength}
        assert client.post("/api/labels", headers=_bearer(token), json=body).status_code == 201


def test_export_and_stats_over_http_on_hand_made_votes(client, store, tokens):
    store.set_overlap(3)
    for name, votes in VOTES.items():
        _cast(client, tokens[name], votes)
    admin = _bearer(tokens["admin"])

    exported = client.get("/api/export", headers=admin)
    assert exported.headers["content-type"].startswith("application/x-ndjson")
    records = [json.loads(line) for line in exported.text.splitlines()]
    assert [(r["pair_id"], r["chosen"], r["rejected"]) for r in records] == [
        ("p0", "answer A0", "answer B0"),
        ("p1", "answer B1", "answer A1"),
    ]  # p2: tie majority, p3: both-bad majority
    # p0: a strong (+3), a slight (+1), b clear (-2): mean 2/3, scaled by 1/3
    assert records[0]["margin"] == pytest.approx(2 / 9, abs=1e-4)
    assert records[1]["margin"] == pytest.approx(2 / 3, abs=1e-4)  # three votes of unstated strength (2)
    assert (records[0]["votes_chosen"], records[0]["votes_rejected"], records[0]["n_votes"]) == (2, 1, 3)
    ties = client.get("/api/export", headers=admin, params={"keep_ties": "true"}).text.splitlines()
    assert len(ties) == 4  # the tie is written in both orders

    stats = client.get("/api/stats", headers=admin).json()
    assert stats["labels_per_annotator"]["ann"] == {"a": 1, "b": 1, "tie": 1, "both_bad": 1, "skip": 0}
    kappas = {tuple(k["annotators"]): k["kappa"] for k in stats["cohen_kappa"]}
    # ann [a b tie bb] vs bob [a b a bb]: p_o = 3/4, p_e = (1*2 + 1*1 + 1*1)/16 = 1/4, kappa = 2/3
    # ann vs cid [b b tie a]: p_o = 1/2, p_e = 1/4, kappa = 1/3; bob vs cid: p_o = 1/4 = p_e, kappa = 0
    assert kappas == {("ann", "bob"): pytest.approx(2 / 3), ("ann", "cid"): pytest.approx(1 / 3),
                      ("bob", "cid"): pytest.approx(0.0)}
    # units [a a b] [b b b] [tie a tie] [bb bb a]: sum o_ck = 2 + 0 + 2 + 2 = 6; margins a4 b4 tie2 bb2, n = 12
    # alpha = 1 - 11 * 6 / (144 - 40) = 19/52
    assert stats["krippendorff_alpha"] == pytest.approx(19 / 52)
    assert stats["majority_agreement"] == {
        "ann": {"agreement": 1.0, "pairs": 1},
        "bob": {"agreement": 0.5, "pairs": 2},
        "cid": {"agreement": pytest.approx(1 / 3), "pairs": 3},
    }


def test_a_long_pair_id_cannot_strand_an_annotator(tmp_path):
    """Import refuses what the API would refuse; the store refuses it too, so /api/next can never serve one."""
    from reward.labeling.records import MAX_ID_CHARS, LabelingError

    store = Store(tmp_path / "labels.sqlite")
    with pytest.raises(LabelingError, match=f"at most {MAX_ID_CHARS}|longer than {MAX_ID_CHARS}"):
        store.add_pairs([LabelPair("q", "x", "y", id="x" * (MAX_ID_CHARS + 1))])
    longest = "x" * MAX_ID_CHARS
    store.add_pairs([LabelPair("q", "x", "y", id=longest)])
    token = store.add_annotator("ann")
    client = TestClient(create_app(store, ""))
    pair, response = _label(client, token, "skip", reason="unsure")
    assert pair["id"] == longest and response.status_code == 201


BAD_BODIES = [
    '{"pair_id": "p0", "choice": "left", "time_ms": NaN}',
    '{"pair_id": "p0", "choice": "left", "time_ms": Infinity}',
    '{"pair_id": "p0", "choice": "left", "time_ms": 1e30}',
    '{"pair_id": "p0", "choice": "left", "time_ms": 9223372036854775808}',
    '{"pair_id": "p0", "choice": "left", "strength": NaN}',
    '{"pair_id": "p0", "choice": "left", "strength": "2"}',
    '{"pair_id": "p0", "choice": "left", "strength": true}',
    '{"pair_id": "p0", "choice": "skip", "reason": "\\ud800"}',
    '{"pair_id": "\\ud800", "choice": "left"}',
    '{"pair_id": "p0", "choice": "left", "\\ud800": 1}',
    '{"pair_id": "p0", "choice": "left"',
    '[1, 2]',
]


@pytest.mark.parametrize("body", BAD_BODIES)
def test_bad_bodies_get_a_json_4xx_with_the_security_headers(client, store, tokens, body):
    client.get("/api/next", headers=_bearer(tokens["ann"]))  # p0 is assigned, so only the body can be wrong
    response = client.post("/api/labels", headers={**_bearer(tokens["ann"]), "Content-Type": "application/json"},
                           content=body.encode())
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/json" and "detail" in response.json()
    assert "default-src 'self'" in response.headers["content-security-policy"]
    assert _labels(store) == []


def test_an_internal_error_is_a_json_500_with_the_security_headers(store, tokens, monkeypatch):
    monkeypatch.setattr(store, "progress", lambda annotator_id: 1 / 0)
    response = TestClient(create_app(store, ""), raise_server_exceptions=False).get(
        "/api/me", headers=_bearer(tokens["ann"]))
    assert (response.status_code, response.json()) == (500, {"detail": "internal server error"})
    assert response.headers["x-frame-options"] == "DENY"


def test_head_of_the_page_and_a_favicon(client):
    head = client.head("/")
    assert head.status_code == 200 and head.headers["content-type"].startswith("text/html")
    icon = client.get("/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/svg+xml"


def test_edit_keeps_one_current_vote_and_the_history(client, store, tokens):
    store.set_overlap(1)
    pair, response = _label(client, tokens["ann"], "left", strength=1)
    label_id = response.json()["label_id"]
    history = client.get("/api/history", headers=_bearer(tokens["ann"])).json()["labels"]
    assert [(h["label_id"], h["id"], h["choice"], h["strength"], h["left"]) for h in history] == [
        (label_id, pair["id"], "left", 1, pair["left"])]
    edit = client.put(f"/api/labels/{label_id}", headers=_bearer(tokens["ann"]),
                      json={"choice": "right", "strength": 3, "reason": "misread A", "time_ms": 50})
    assert edit.status_code == 200 and edit.json()["progress"]["labeled"] == 1
    assert client.get("/api/history", headers=_bearer(tokens["ann"])).json()["labels"][0]["choice"] == "right"
    (vote,) = store.votes()
    shown_order = _labels(store)[0][4]
    assert (vote.choice, vote.strength) == ("b" if shown_order == "ab" else "a", 3)
    with sqlite3.connect(store.path) as conn:  # the first vote is kept, unchanged, under the edit
        assert conn.execute("SELECT strength FROM labels").fetchall() == [(1,)]
        assert conn.execute("SELECT reason FROM label_edits").fetchall() == [("misread A",)]
    other = client.put(f"/api/labels/{label_id}", headers=_bearer(tokens["bob"]), json={"choice": "tie"})
    assert other.status_code == 404  # nobody edits another annotator's label
    huge = client.put(f"/api/labels/{2**63}", headers=_bearer(tokens["ann"]), json={"choice": "tie"})
    assert huge.status_code == 422
    skip = client.put(f"/api/labels/{label_id}", headers=_bearer(tokens["ann"]), json={"choice": "skip"})
    assert skip.status_code == 422  # an edit is checked like a new label


def test_a_revoked_or_rotated_token_stops_working_at_once(client, store, tokens):
    assert client.get("/api/me", headers=_bearer(tokens["ann"])).status_code == 200
    store.revoke_annotator("ann")
    assert client.get("/api/next", headers=_bearer(tokens["ann"])).status_code == 401
    new = store.rotate_token("bob")
    assert client.get("/api/me", headers=_bearer(tokens["bob"])).status_code == 401
    assert client.get("/api/me", headers=_bearer(new)).json()["name"] == "bob"


def test_admin_figures_match_the_stats_command(client, store, tokens, capsys):
    from rlhf.cli import main as rlhf

    store.set_overlap(3)
    for name, votes in VOTES.items():
        _cast(client, tokens[name], votes)
    admin = _bearer(tokens["admin"])
    assert rlhf(["label", "stats", "--db", str(store.path), "--json"]) == 0
    assert client.get("/api/stats", headers=admin).json() == json.loads(capsys.readouterr().out)
    table = {a["name"]: a for a in client.get("/api/annotators", headers=admin).json()}
    assert (table["ann"]["labeled"], table["ann"]["skipped"], table["admin"]["labeled"]) == (4, 0, 0)
    review = client.get("/api/disagreements", headers=admin).json()
    assert [(r["pair_id"], r["votes"]) for r in review] == [
        ("p0", {"a": 2, "b": 1}), ("p2", {"tie": 2, "a": 1}), ("p3", {"both_bad": 2, "a": 1})]
    raw = client.get("/api/export", headers=admin, params={"raw": "true"}).text.splitlines()
    assert len(raw) == 12 and {json.loads(line)["annotator"] for line in raw} == {"ann", "bob", "cid"}
    assert client.get("/admin").status_code == 200
