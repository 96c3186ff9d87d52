"""The labeling page in headless Chromium: sign in, label with the keyboard, hostile model text stays inert."""

import socket
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from reward.labeling.server import create_app
from reward.labeling.store import Pair, Store

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync", "--disable-quic"]
SCRIPT = "<script>window.pwned=1</script>"
IMAGE = '<img src=x onerror="window.pwned=1">'

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="needs Chromium at /usr/bin/chromium (scripts/install_browser.sh installs it)"
    ),
]


@pytest.fixture
def site(tmp_path):
    """A uvicorn server in a thread over a store with three pairs; yields (url, store, token)."""
    import uvicorn

    store = Store(tmp_path / "labels.sqlite")
    store.set_overlap(1)
    store.add_pairs([
        Pair("<b>Which is safe?</b>", SCRIPT, IMAGE, id="hostile"),
        Pair([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}],
             "Paris.", "Lyon.", id="chat"),
        Pair("Say hi", "Hi!", "Hello there!", id="plain"),
    ])
    token = store.add_annotator("ann")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(store, "# Guidelines\n\nPrefer **correct** answers.\n\n- one\n- two <script>x</script>")
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}", store, token
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    """A fresh page; fails the test if the page breaks its own Content-Security-Policy."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(10_000)
    messages = []
    page.on("console", lambda message: messages.append(message.text))
    yield page
    context.close()
    assert not [m for m in messages if "Content Security Policy" in m]


def _labels(store):
    with sqlite3.connect(store.path) as conn:
        return conn.execute(
            "SELECT pair_id, choice, strength, reason, shown_order, time_ms FROM labels ORDER BY id"
        ).fetchall()


def _wait_for_labels(store, n):
    deadline = time.monotonic() + 10
    while len(_labels(store)) < n:
        assert time.monotonic() < deadline, f"expected {n} labels, have {_labels(store)}"
        time.sleep(0.05)
    return _labels(store)


def test_sign_in_label_with_keyboard_and_hostile_text_stays_text(site, page):
    url, store, token = site
    page.goto(url + "/")
    page.fill("#token", "wrong-token")
    page.press("#token", "Enter")
    page.wait_for_selector("#login-error:has-text('not accepted')")

    page.fill("#token", token)
    page.press("#token", "Enter")
    page.wait_for_selector("#task-view:not([hidden])")
    assert token not in page.url
    assert page.evaluate("sessionStorage.getItem('labeling-token')") == token

    # pair 1: hostile markup is shown literally and runs nothing
    assert page.text_content("#prompt") == "<b>Which is safe?</b>"
    shown = (page.text_content("#left"), page.text_content("#right"))
    assert sorted(shown) == sorted([SCRIPT, IMAGE])
    assert page.locator("#task-view img, #task-view b, #task-view script").count() == 0
    assert page.evaluate("typeof window.pwned") == "undefined"
    assert page.text_content("#progress-text") == "0 labeled · 3 to go"

    page.keyboard.press("1")  # left is better ...
    page.keyboard.press("e")  # ... by a lot
    page.keyboard.press("r")
    page.keyboard.type("the other one tries to run code")
    page.keyboard.press("Enter")
    (pair_id, choice, strength, reason, shown_order, time_ms), = _wait_for_labels(store, 1)
    assert pair_id == "hostile"
    assert shown_order == ("ab" if shown[0] == SCRIPT else "ba")
    assert choice == ("a" if shown[0] == SCRIPT else "b")  # the left response, whichever it was
    assert (strength, reason) == (3, "the other one tries to run code")
    assert time_ms > 0

    # pair 2: a conversation, skipped with a reason from the dialog
    page.wait_for_selector("#prompt .message")
    assert page.locator("#prompt .message .role").all_text_contents() == ["system", "user"]
    page.keyboard.press("s")
    page.wait_for_selector("#skip-dialog[open]")
    page.keyboard.press("Enter")
    first_reason = "I can't judge this (needs expertise I don't have)"
    assert _wait_for_labels(store, 2)[1][:4] == ("chat", "skip", None, first_reason)

    # pair 3: right is better, then tie overrides it before submitting
    page.wait_for_selector("#prompt:has-text('Say hi')")
    page.keyboard.press("2")
    page.keyboard.press("3")
    assert page.is_disabled("#strength-1")  # strength only goes with A or B
    page.keyboard.press("Enter")
    assert _wait_for_labels(store, 3)[2][:3] == ("plain", "tie", None)

    page.wait_for_selector("#done-view:not([hidden])")
    assert page.text_content("#progress-text") == "2 labeled · 0 to go · 1 skipped"
    assert page.evaluate("typeof window.pwned") == "undefined"


def test_guidelines_render_markdown_safely(site, page):
    url, _, token = site
    page.goto(url + "/")
    page.fill("#token", token)
    page.press("#token", "Enter")
    page.wait_for_selector("#task-view:not([hidden])")
    page.keyboard.press("g")
    page.wait_for_selector("#guidelines:not([hidden])")
    assert page.text_content("#guidelines-body strong") == "correct"
    assert page.locator("#guidelines-body li").all_text_contents() == ["one", "two <script>x</script>"]
    assert page.locator("#guidelines-body script").count() == 0
    page.keyboard.press("Escape")
    page.wait_for_selector("#guidelines", state="hidden")


def test_content_security_policy_stops_injected_markup(site, browser):
    """Defence in depth: even markup that reached the DOM could not run script."""
    url, _, _ = site
    context = browser.new_context()
    page = context.new_page()
    violations = []
    page.on("console", lambda message: violations.append(message.text))
    page.goto(url + "/")
    page.evaluate(f"document.body.insertAdjacentHTML('beforeend', {IMAGE!r})")
    page.wait_for_function("document.querySelector('img') && document.querySelector('img').complete")
    assert page.evaluate("typeof window.pwned") == "undefined"
    assert any("Content Security Policy" in v for v in violations)
    context.close()
