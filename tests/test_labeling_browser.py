"""The labeling page in headless Chromium: sign in, label with the keyboard, hostile model text stays inert."""

import os
import socket
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from reward.labeling.records import LabelPair
from reward.labeling.server import create_app
from reward.labeling.store import Store

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


GUIDELINES = ("# Guidelines\n\nPrefer **correct** answers.\n\n- one\n- two <script>x</script>\n\n"
              "See [the essay](https://en.wikipedia.org/wiki/Essay_(disambiguation)).")
SCREENSHOTS = os.environ.get("LABELING_SCREENSHOTS")  # a folder (docs/) to save the page's pictures in


@contextmanager
def serving(store):
    """A uvicorn server in a thread over `store`; yields its URL."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(store, GUIDELINES), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def site(tmp_path):
    """A server over a store with three pairs; yields (url, store, token)."""
    store = Store(tmp_path / "labels.sqlite")
    store.set_overlap(1)
    store.add_pairs([
        LabelPair("<b>Which is safe?</b>", SCRIPT, IMAGE, id="hostile"),
        LabelPair([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}],
                  "Paris.", "Lyon.", id="chat"),
        LabelPair("Say hi", "Hi!", "Hello there!", id="plain"),
    ])
    token = store.add_annotator("ann")
    with serving(store) as url:
        yield url, store, token


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@contextmanager
def open_page(browser, width=1280, height=800):
    """A fresh page; fails the test if the page breaks its own Content-Security-Policy or throws."""
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    page.set_default_timeout(10_000)
    messages = []
    page.on("console", lambda message: messages.append(message.text))
    page.on("pageerror", lambda error: messages.append(f"page error: {error}"))
    yield page
    context.close()
    assert not [m for m in messages if "Content Security Policy" in m or m.startswith("page error")], messages


@pytest.fixture
def page(browser):
    with open_page(browser) as page:
        yield page


def _sign_in(page, url, token, path="/"):
    page.goto(url + path)
    page.fill("#token", token)
    page.press("#token", "Enter")


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
    link = page.locator("#guidelines-body a")
    assert link.get_attribute("href") == "https://en.wikipedia.org/wiki/Essay_(disambiguation)"  # not cut at ")"
    assert link.text_content() == "the essay"
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


def _shown_choice(page):
    return page.evaluate("document.querySelector('input[name=choice]:checked')?.value ?? null")


def test_bidi_and_invisible_characters_are_shown_and_each_block_is_isolated(tmp_path, browser):
    store = Store(tmp_path / "labels.sqlite")
    store.set_overlap(1)
    store.add_pairs([LabelPair("user\u202etxt.exe", "safe\u200b", "\u2067right-to-left\u2069 ok\r\nnext", id="bidi")])
    token = store.add_annotator("ann")
    with serving(store) as url, open_page(browser) as page:
        _sign_in(page, url, token)
        page.wait_for_selector("#task-view:not([hidden])")
        assert page.text_content("#prompt .text") == "user⟨U+202E⟩txt.exe"
        shown = {page.text_content("#left"), page.text_content("#right")}
        assert shown == {"safe⟨U+200B⟩", "⟨U+2067⟩right-to-left⟨U+2069⟩ ok\r\nnext"}  # CRLF: a line break
        for selector in ("#prompt .text", "#left", "#right"):
            assert page.get_attribute(selector, "dir") == "auto"
            assert page.eval_on_selector(selector, "e => getComputedStyle(e).unicodeBidi") == "isolate"
        # no bidi control reaches the rendered text: what is read is what is stored, marks included
        assert page.evaluate("/[\\u202a-\\u202e\\u2066-\\u2069\\u200b]/.test(document.body.innerText)") is False


def test_undo_and_edit_go_back_prefilled_and_change_the_vote(site, page):
    url, store, token = site
    _sign_in(page, url, token)
    page.wait_for_selector("#prompt:has-text('Which is safe?')")
    page.keyboard.press("1")
    page.keyboard.press("w")
    page.keyboard.press("Enter")
    page.wait_for_selector("#prompt .message")  # pair 2
    page.keyboard.press("Backspace")  # back to pair 1, pre-filled
    page.wait_for_selector("#editing:not([hidden])")
    assert page.text_content("#prompt") == "<b>Which is safe?</b>"
    assert _shown_choice(page) == "left" and page.is_checked("#strength-2")
    page.keyboard.press("2")
    page.keyboard.press("Enter")  # saves the change and returns to the queue: pair 2 again
    page.wait_for_selector("#prompt .message")
    assert page.is_hidden("#editing") and _shown_choice(page) is None
    page.keyboard.press("3")
    page.keyboard.press("Enter")
    page.wait_for_selector("#prompt:has-text('Say hi')")
    page.keyboard.press("Control+z")  # back to pair 2 ...
    page.wait_for_selector("#editing:not([hidden]) >> text=1 back")
    assert _shown_choice(page) == "tie"
    page.keyboard.press("Backspace")  # ... and further back, to pair 1 as changed
    page.wait_for_selector("#editing:not([hidden]) >> text=2 back")
    assert _shown_choice(page) == "right" and page.is_checked("#strength-2")
    page.keyboard.press("Escape")  # nothing changes
    page.wait_for_selector("#prompt:has-text('Say hi')")
    assert page.is_hidden("#editing")
    votes = {v.pair_id: (v.choice, v.strength) for v in store.votes()}
    first_order = _labels(store)[0][4]
    assert votes == {"hostile": ("b" if first_order == "ab" else "a", 2), "chat": ("tie", None)}
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM labels").fetchone() == (2,)
        assert conn.execute("SELECT COUNT(*) FROM label_edits").fetchone() == (1,)
    assert page.text_content("#progress-text") == "2 labeled · 1 to go"


def test_a_revoked_token_signs_an_open_page_out(site, page):
    url, store, token = site
    _sign_in(page, url, token)
    page.wait_for_selector("#task-view:not([hidden])")
    store.revoke_annotator("ann")
    page.keyboard.press("3")
    page.keyboard.press("Enter")
    page.wait_for_selector("#login-view:not([hidden]) >> text=not accepted")
    assert page.evaluate("sessionStorage.getItem('labeling-token')") is None
    assert _labels(store) == []


def test_small_screens_fit_and_long_prompts_scroll_in_their_own_box(tmp_path, browser):
    store = Store(tmp_path / "labels.sqlite")
    store.set_overlap(1)
    store.add_pairs([LabelPair("A long question. " * 12_000, "Short answer.", "Another answer " * 40, id="long")])
    token = store.add_annotator("ann")
    with serving(store) as url:
        with open_page(browser, width=390, height=844) as page:
            _sign_in(page, url, token)
            page.wait_for_selector("#task-view:not([hidden])")
            assert page.evaluate("document.documentElement.scrollWidth") <= 390
            assert page.locator("#card-left").bounding_box()["y"] < 844  # the responses start on the first screen
        with open_page(browser) as page:
            _sign_in(page, url, token)
            page.wait_for_selector("#task-view:not([hidden])")
            assert page.locator("#card-left").bounding_box()["y"] < 800
            assert page.eval_on_selector("#prompt", "e => e.scrollHeight > e.clientHeight")  # scrolls in its box


def test_admin_page_shows_the_figures_of_label_stats(tmp_path, browser, capsys):
    from reward.labeling.simulate import simulate_annotators
    from rlhf.cli import main as rlhf

    store = Store(tmp_path / "labels.sqlite")
    store.set_overlap(3)
    store.add_pairs([LabelPair(f"Question {i}?", f"answer {i}", f"a longer answer {i}", id=f"q{i}")
                     for i in range(12)])
    simulate_annotators(store.path, lambda prompt, a, b: "a" if len(a) > len(b) else "b", 3, noise=0.4, seed=2)
    admin = store.add_annotator("lead", is_admin=True)
    annotator = store.add_annotator("ann")
    assert rlhf(["label", "stats", "--db", str(store.path), "--json"]) == 0
    stats = __import__("json").loads(capsys.readouterr().out)
    with serving(store) as url:
        with open_page(browser) as page:
            _sign_in(page, url, annotator, "/admin")
            page.wait_for_selector("#login-error:has-text('admin token')")
            _sign_in(page, url, admin, "/admin")
            page.wait_for_selector("#admin-view:not([hidden])")
            assert page.text_content("#pairs") == str(stats["pairs"])
            assert page.text_content("#alpha") == f"{stats['krippendorff_alpha']:.3f}"
            rows = page.locator("#annotators tbody tr").all()
            sims = {r.locator("td").nth(0).text_content(): r.locator("td").all_text_contents() for r in rows}
            for name, counts in stats["labels_per_annotator"].items():
                assert int(sims[name][3]) == sum(counts.values()) - counts["skip"]
            kappas = page.locator("#kappas tbody tr td:nth-child(2)").all_text_contents()
            assert kappas == [f"{k['kappa']:.3f}" for k in stats["cohen_kappa"]]
            assert page.locator("#disagreements tbody tr").count() > 0
            if SCREENSHOTS:
                page.screenshot(path=str(Path(SCREENSHOTS) / "labeling-admin.png"), full_page=True)
        with open_page(browser, width=1100, height=640) as page:
            store.add_pairs([LabelPair("Explain why the sky is blue, briefly.",
                                       "Sunlight scatters off air molecules; blue light scatters most (Rayleigh).",
                                       "Because it reflects the ocean.", id="sky")])
            _sign_in(page, url, annotator)
            page.wait_for_selector("#prompt:has-text('sky')")  # the only pair the lead's annotator has not seen
            page.keyboard.press("1")
            page.keyboard.press("w")
            assert page.is_checked("#strength-2")
            if SCREENSHOTS:
                page.screenshot(path=str(Path(SCREENSHOTS) / "labeling-screenshot.png"))
