"""The rater page in a real headless Chromium (playwright) against uvicorn: log in, label with the mouse and with the
keyboard, resume after a reload, labels land canonical in the database, hostile model text stays inert text."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium); the browser test needs it", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the python playwright package is not installed")
uvicorn = pytest.importorskip("uvicorn")

from rlhfkit.feedback.app import create_app  # noqa: E402
from rlhfkit.feedback.store import Store  # noqa: E402
from tests.annotate_server import Server  # noqa: E402

expect = sync_api.expect
IMG = '<img src=x onerror="window.__pwned=1">'
SCRIPT = "<script>window.__pwned=2</script>"
HOSTILE_NAME = '<img src=y onerror="window.__pwned=3">'
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Store, str]]:
    db = tmp_path_factory.mktemp("browser") / "ann.db"
    store = Store(db)
    token = store.add_rater(HOSTILE_NAME)
    store.create_campaign(
        "mouse",
        [
            {"prompt": "Say hi", "responses": ["Hello there!", "Go away."]},
            {"prompt": SCRIPT, "responses": [IMG, SCRIPT]},
        ],
        rubric="Prefer the kinder answer. " + IMG,
        dimensions=["helpful", "harmless"],
        seed=2,
    )
    store.create_campaign(
        "keys", [{"prompt": f"q{i}", "responses": [f"keys-{i}-0", f"keys-{i}-1"]} for i in range(3)], seed=3
    )
    store.create_campaign("rank", [{"prompt": "order", "responses": ["x", "y", "z"]}], kind="ranking", seed=4)
    with Server(create_app(store, "admin-token-of-at-least-32-characters")) as server:
        yield server.url, store, token
    store.close()


@pytest.fixture(scope="module")
def browser() -> Iterator:
    with sync_api.sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, timeout=60_000)
        except sync_api.Error as e:  # a broken browser install is an environment problem, not a failure of the app
            pytest.skip(f"{CHROMIUM} does not start under playwright: {str(e).splitlines()[0]}")
        yield b
        b.close()


def labels_by_prompt(store: Store, campaign: str) -> dict:
    _, items = store._items(campaign)
    prompts = {i.position: i.prompt for i in items}
    return {prompts[lab["item"]]: lab for lab in store.labels(campaign)}


def open_campaign(page, name: str) -> None:
    page.click(f'button[data-campaign="{name}"]')
    expect(page.locator("#label-view")).to_be_visible()
    expect(page.locator("#campaign-name")).to_have_text(name)


def test_rater_labels_with_mouse_and_keyboard(site, browser) -> None:
    url, store, token = site
    context = browser.new_context()
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))

    # ---- log in: the token goes to sessionStorage, the API calls carry it as a bearer header
    page.goto(url + "/")
    expect(page.locator("#login-view")).to_be_visible()
    page.fill("#token", "wrong-token")
    page.click("#login-btn")
    expect(page.locator("#login-error")).to_contain_text("log in again")
    page.fill("#token", token)
    page.click("#login-btn")
    expect(page.locator("#campaigns-view")).to_be_visible()
    expect(page.locator("#whoami")).to_have_text("rater: " + HOSTILE_NAME)  # a hostile name is text too
    assert page.evaluate("sessionStorage.getItem('rlhfkit.annotate.token')") == token

    # ---- mouse: choose B, strength 3, the two dimensions, submit
    open_campaign(page, "mouse")
    expect(page.locator("#rubric")).to_have_text("Prefer the kinder answer. " + IMG)
    for n in range(2):
        expect(page.locator("#progress-text")).to_have_text(f"{n} / 2 done")
        texts = page.locator("#responses .response-text").all_text_contents()
        if SCRIPT in texts:
            # hostile model output: literal text, no element created, nothing ran
            assert sorted(texts) == sorted([IMG, SCRIPT])
            assert page.locator("#prompt .message-text").text_content() == SCRIPT
            assert page.locator("#label-view img").count() == 0
            assert page.locator("#label-view script").count() == 0
        expect(page.locator("#submit")).to_be_disabled()
        page.click("#choose-B")
        page.click('#strength input[value="3"]')
        page.click('.dimension[data-dimension="helpful"] input[value="A"]')
        expect(page.locator("#submit")).to_be_disabled()  # every dimension needs an answer
        page.click('.dimension[data-dimension="harmless"] input[value="tie"]')
        page.click("#submit")
    expect(page.locator("#done-view")).to_be_visible()
    expect(page.locator("#done-text")).to_contain_text("all 2 items")
    page.click("#done-back")

    # ---- keyboard: "1" + ArrowUp + Enter; then a reload mid-campaign resumes at the next item
    open_campaign(page, "keys")
    expect(page.locator("#progress-text")).to_have_text("0 / 3 done")
    first_shown = page.locator("#responses .response-text").all_text_contents()
    page.keyboard.press("1")
    expect(page.locator("#choose-A")).to_have_class("choice selected")
    page.keyboard.press("ArrowUp")  # strength 2 (middle default) -> 3
    page.keyboard.press("Enter")
    expect(page.locator("#progress-text")).to_have_text("1 / 3 done")
    second_shown = page.locator("#responses .response-text").all_text_contents()
    page.keyboard.press("b")
    page.reload()  # sessionStorage keeps the login; nothing was submitted for the second item
    expect(page.locator("#campaigns-view")).to_be_visible()
    open_campaign(page, "keys")
    expect(page.locator("#progress-text")).to_have_text("1 / 3 done")
    assert page.locator("#responses .response-text").all_text_contents() == second_shown
    page.keyboard.press("2")
    page.keyboard.press("ArrowDown")  # strength 2 -> 1
    page.keyboard.press("Enter")
    expect(page.locator("#progress-text")).to_have_text("2 / 3 done")
    page.keyboard.press("0")
    page.fill("#reason", "both fine")  # typing in the reason box is not a shortcut
    page.keyboard.press("Enter")  # Enter inside the textarea does not submit ...
    expect(page.locator("#progress-text")).to_have_text("2 / 3 done")
    page.keyboard.press("Control+Enter")  # ... Ctrl+Enter does
    expect(page.locator("#done-view")).to_be_visible()
    page.click("#done-back")

    # ---- ranking: press 3, click the first card, press 2, Enter
    open_campaign(page, "rank")
    rank_shown = page.locator("#responses .response-text").all_text_contents()
    page.keyboard.press("3")
    page.click("#response-1")
    expect(page.locator("#submit")).to_be_disabled()
    page.keyboard.press("2")
    expect(page.locator("#rank-order")).to_have_text("3 > 1 > 2")
    page.keyboard.press("Enter")
    expect(page.locator("#done-view")).to_be_visible()

    # ---- nothing hostile ran, nothing failed
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert errors == [] and dialogs == []
    context.close()

    # ---- the labels are in the database, canonical
    mouse = labels_by_prompt(store, "mouse")
    assert set(mouse) == {"Say hi", SCRIPT}
    for lab in mouse.values():
        order = lab["display_order"]
        assert lab["choice"] == str(order[1]) and lab["strength"] == 3  # "B" = the response shown second
        assert lab["dimensions"] == {"helpful": str(order[0]), "harmless": "tie"}
        assert lab["seconds"] is not None and lab["seconds"] >= 0
    keys = labels_by_prompt(store, "keys")
    first_item = next(p for p in keys if f"keys-{p[1:]}-0" in first_shown)
    second_item = next(p for p in keys if f"keys-{p[1:]}-0" in second_shown)
    third_item = ({"q0", "q1", "q2"} - {first_item, second_item}).pop()
    a, b, c = keys[first_item], keys[second_item], keys[third_item]
    assert (a["choice"], a["strength"]) == (str(a["display_order"][0]), 3)
    assert (b["choice"], b["strength"]) == (str(b["display_order"][1]), 1)
    assert (c["choice"], c["strength"], c["reason"]) == ("tie", 0, "both fine")
    (rank,) = store.labels("rank")
    order = rank["display_order"]  # displayed position p shows response order[p]
    expected = [0, 0, 0]
    for r, position in enumerate([2, 0, 1], start=1):
        expected[order[position]] = r
    assert rank["ranks"] == expected
    assert [["x", "y", "z"][i] for i in order] == rank_shown
    assert store.progress("keys") == {"labelled_items": 3, "total_items": 3, "labels": 3, "required_labels": 3}


def test_csp_blocks_inline_script_even_if_injected(site, browser) -> None:
    """Defence in depth: were markup ever injected, the page's CSP refuses inline handlers and inline scripts."""
    url, _, _ = site
    page = browser.new_page()
    violations: list[str] = []
    page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
    page.goto(url + "/")
    page.evaluate(
        """() => {
            const box = document.createElement('div');
            document.body.appendChild(box);
            box.innerHTML = '<img src=x onerror="window.__pwned=1">';       // a deliberate bad sink, for this test
            const s = document.createElement('script');
            s.textContent = 'window.__pwned = 2';
            document.body.appendChild(s);
        }"""
    )
    page.wait_for_timeout(300)
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert violations, "expected the browser to report CSP violations"
    page.close()


def test_page_without_server_session_shows_login(site, browser, tmp_path: Path) -> None:
    url, _, _ = site
    page = browser.new_page()
    page.goto(url + "/")
    page.evaluate("sessionStorage.setItem('rlhfkit.annotate.token', 'stale')")
    page.reload()
    expect(page.locator("#login-view")).to_be_visible()
    expect(page.locator("#login-error")).to_contain_text("log in again")
    assert page.evaluate("sessionStorage.getItem('rlhfkit.annotate.token')") is None
    page.close()


def test_a_changed_answer_is_refused_and_the_page_says_the_earlier_one_stands(site, browser) -> None:
    """Two tabs on one item: the second answer meets the first one's saved label. The server keeps the first (409)
    and the page says so, shows that answer, and moves on only when the rater presses Enter."""
    url, store, token = site
    store.create_campaign(
        "twice",
        [{"prompt": "two tabs", "responses": ["left", "right"]}, {"prompt": "after", "responses": ["p", "q"]}],
        dimensions=["helpful"],
        seed=5,
    )
    rid = store.rater_by_token(token).id
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url + "/")
    page.fill("#token", token)
    page.click("#login-btn")
    open_campaign(page, "twice")
    shown = page.locator("#prompt .message-text").text_content()
    aid = next(q["id"] for q in store.rater_queue(rid, "twice") if not q["labelled"])  # the item on screen
    store.submit(rid, aid, {"choice": "A", "strength": 1, "dimensions": {"helpful": "A"}})  # the other tab
    page.keyboard.press("2")
    page.click('.dimension[data-dimension="helpful"] input[value="B"]')
    page.keyboard.press("Enter")
    status = page.locator("#status")
    expect(status).to_contain_text("your earlier answer stands")
    expect(status).to_contain_text("A is better (strength 1), helpful: A")
    expect(page.locator("#choose-A")).to_have_class("choice selected")  # the page shows the answer that stands
    expect(page.locator("#submit")).to_contain_text("Next item")
    page.keyboard.press("2")  # no effect now: the answer is saved
    expect(page.locator("#choose-A")).to_have_class("choice selected")
    assert page.locator("#prompt .message-text").text_content() == shown  # still on the item until Enter
    page.keyboard.press("Enter")
    expect(page.locator("#progress-text")).to_have_text("1 / 2 done")
    expect(page.locator("#prompt .message-text")).not_to_have_text(shown)
    expect(page.locator("#submit")).to_contain_text("Submit")
    (lab,) = store.labels("twice")
    assert lab["choice"] == str(lab["display_order"][0]) and lab["strength"] == 1  # A, as first saved
    assert errors == []
    page.close()
