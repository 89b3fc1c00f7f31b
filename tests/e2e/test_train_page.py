"""End-to-end: the home page and the live Train page in a real browser.

Every wait polls page content (connection state, figure titles, progress text); no test relies on
a fixed sleep. Screenshots of a live run go to ``assets/`` for the README.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

pytestmark = pytest.mark.e2e

ASSETS = Path(__file__).resolve().parents[2] / "assets"
CONNECTED = "[data-testid='stApp'][data-test-connection-state='CONNECTED']"
LOAD_TIMEOUT_MS = 60_000
FIGURE_TIMEOUT_MS = 90_000
STEPS = 400

# Titles of every plotly figure on the page (read from the DOM nodes plotly decorates).
FIGURE_TITLES_JS = """() => [...document.querySelectorAll('.js-plotly-plot')]
    .map(el => String((el.layout && el.layout.title && el.layout.title.text) || ''))"""

# The three live figures the Train page must show.
LIVE_FIGURES = {
    "embedding": r"UMAP|PCA",
    "histogram": r"Positive and negative pair distances",
    "sphere": r"unit sphere",
}

WAIT_FIGURES_JS = """(patterns) => {
    const titles = [...document.querySelectorAll('.js-plotly-plot')]
        .map(el => String((el.layout && el.layout.title && el.layout.title.text) || ''));
    return patterns.every(p => titles.some(t => new RegExp(p).test(t)));
}"""

# The histogram's trace data (x values of every trace) as JSON, to compare two snapshots.
HIST_DATA_JS = """() => {
    const el = [...document.querySelectorAll('.js-plotly-plot')].find(e =>
        /Positive and negative pair distances/.test(
            String((e.layout && e.layout.title && e.layout.title.text) || '')));
    if (!el || !el.data) return null;
    return JSON.stringify(el.data.map(t => Array.from(t.x || [])));
}"""


def open_app(page: Page, url: str) -> None:
    """Load ``url`` and wait for the websocket to connect and the script to render something."""
    page.goto(url, timeout=LOAD_TIMEOUT_MS)
    page.wait_for_selector(CONNECTED, timeout=LOAD_TIMEOUT_MS)


def wait_connected(page: Page) -> None:
    page.wait_for_selector(CONNECTED, timeout=LOAD_TIMEOUT_MS)


def choose(page: Page, label: str, option: str) -> None:
    """Pick ``option`` in the Streamlit selectbox ``label`` with a click, typing and a click."""
    box = page.get_by_role("combobox", name=label, exact=True)
    box.click()
    box.press_sequentially(option)
    page.get_by_role("option", name=option, exact=True).click()
    expect(box).to_have_value(option, timeout=LOAD_TIMEOUT_MS)


def set_number(page: Page, label: str, value: int) -> None:
    """Type ``value`` into the Streamlit number input ``label`` and commit it with Enter."""
    field = page.get_by_label(label, exact=True)
    field.click()
    field.fill(str(value))
    field.press("Enter")
    expect(field).to_have_value(str(value), timeout=LOAD_TIMEOUT_MS)


def train_button(page: Page):
    return page.get_by_role("button", name=re.compile(r"^\W*Train$"))


def progress_text(page: Page) -> str:
    return page.locator("[data-testid='stProgress']").first.inner_text()


def wait_progress(page: Page, pattern: str, timeout_ms: int = FIGURE_TIMEOUT_MS) -> re.Match:
    """Poll the progress bar's text until it matches ``pattern``; return the match."""
    regex = re.compile(pattern)
    deadline = time.monotonic() + timeout_ms / 1000
    text = ""
    while time.monotonic() < deadline:
        bar = page.locator("[data-testid='stProgress']")
        if bar.count():
            try:
                text = bar.first.inner_text(timeout=5_000)
            except Exception:  # the fragment re-rendered the node between count and read
                text = ""
            if match := regex.search(text):
                return match
        page.wait_for_timeout(250)
    raise AssertionError(f"progress never matched {pattern!r}; last text: {text!r}")


def step_of(page: Page) -> int:
    return int(wait_progress(page, rf"step (\d+)/{STEPS}").group(1))


def snapshot_caption(page: Page) -> tuple[int, int]:
    """(snapshot index, step) from the caption ``Snapshot i/n: step S, ...``."""
    text = page.get_by_text(re.compile(r"Snapshot \d+/\d+: step \d+")).first.inner_text()
    match = re.search(r"Snapshot (\d+)/\d+: step (\d+)", text)
    assert match, text
    return int(match.group(1)), int(match.group(2))


def wait_live_figures(page: Page) -> None:
    page.wait_for_function(
        WAIT_FIGURES_JS, arg=list(LIVE_FIGURES.values()), timeout=FIGURE_TIMEOUT_MS, polling=500
    )


def assert_no_exception(page: Page) -> None:
    assert page.locator("[data-testid='stException']").count() == 0, page.locator(
        "[data-testid='stException']"
    ).first.inner_text()


def goto_train(page: Page, server: str) -> None:
    """Home first, then Train through the sidebar navigation."""
    open_app(page, f"{server}/")
    expect(page.get_by_role("heading", name="Metric Learning Playground")).to_be_visible(
        timeout=LOAD_TIMEOUT_MS
    )
    page.locator("[data-testid='stSidebarNav'] a", has_text="Train").click()
    expect(page.get_by_role("heading", name="Train an embedding")).to_be_visible(
        timeout=LOAD_TIMEOUT_MS
    )
    expect(train_button(page)).to_be_visible(timeout=LOAD_TIMEOUT_MS)
    assert page.url.rstrip("/").endswith("/train")


def test_home_page(page: Page, server: str) -> None:
    open_app(page, f"{server}/")
    expect(page.get_by_role("heading", name="Metric Learning Playground")).to_be_visible(
        timeout=LOAD_TIMEOUT_MS
    )
    expect(page.get_by_text("Start here", exact=False).first).to_be_visible()
    expect(page.get_by_text("Losses", exact=True).first).to_be_visible()
    page.get_by_role("link", name=re.compile("Go to Train")).click()
    expect(page.get_by_role("heading", name="Train an embedding")).to_be_visible(
        timeout=LOAD_TIMEOUT_MS
    )
    assert page.url.rstrip("/").endswith("/train")
    assert_no_exception(page)


def test_invalid_k_explained_and_train_disabled(page: Page, server: str) -> None:
    goto_train(page, server)
    expect(train_button(page)).to_be_enabled(timeout=LOAD_TIMEOUT_MS)
    set_number(page, "K per class", 1)
    alert = page.locator("[data-testid='stAlert']", has_text="'samples_per_class'")
    expect(alert).to_be_visible(timeout=LOAD_TIMEOUT_MS)
    expect(train_button(page)).to_be_disabled(timeout=LOAD_TIMEOUT_MS)
    assert_no_exception(page)


def test_train_live_stop_and_reload(page: Page, server: str) -> None:
    goto_train(page, server)
    set_number(page, "Steps", STEPS)
    choose(page, "Loss", "contrastive")
    expect(page.get_by_text("About contrastive")).to_be_visible(timeout=LOAD_TIMEOUT_MS)
    choose(page, "Miner", "batch_hard")
    expect(page.get_by_text("About batch_hard")).to_be_visible(timeout=LOAD_TIMEOUT_MS)
    expect(train_button(page)).to_be_enabled(timeout=LOAD_TIMEOUT_MS)

    train_button(page).click()
    page.wait_for_url(re.compile(r"[?&]run="), timeout=LOAD_TIMEOUT_MS)
    run_id = re.search(r"[?&]run=([^&]+)", page.url).group(1)
    assert "contrastive" in run_id, run_id

    wait_live_figures(page)
    ASSETS.mkdir(exist_ok=True)
    page.screenshot(path=str(ASSETS / "train-early.png"))

    # The step counter advances while the page stays connected.
    first_step = step_of(page)
    assert first_step < STEPS, "the run finished before the live checks; raise STEPS"
    wait_progress(page, rf"step (?!{first_step}/)\d+/{STEPS}")
    assert step_of(page) > first_step

    # The figures follow the snapshots: a later snapshot, and different histogram data.
    first_index, first_snap_step = snapshot_caption(page)
    first_hist = page.evaluate(HIST_DATA_JS)
    assert first_hist and json.loads(first_hist), "no histogram data"
    page.wait_for_function(
        """(n) => [...document.querySelectorAll('[data-testid="stCaptionContainer"]')]
            .some(e => { const m = /Snapshot (\\d+)\\/\\d+: step/.exec(e.innerText);
                         return m && Number(m[1]) > n; })""",
        arg=first_index,
        timeout=FIGURE_TIMEOUT_MS,
        polling=500,
    )
    later_index, later_snap_step = snapshot_caption(page)
    assert later_index > first_index and later_snap_step > first_snap_step
    page.wait_for_function(
        f"(before) => {{ const now = ({HIST_DATA_JS})(); return now && now !== before; }}",
        arg=first_hist,
        timeout=FIGURE_TIMEOUT_MS,
        polling=500,
    )
    wait_live_figures(page)

    # Stop: the state reaches "stopped" and the buttons follow.
    page.get_by_role("button", name="Stop", exact=True).click()
    wait_progress(page, r"· stopped")
    expect(page.get_by_role("button", name="Stop", exact=True)).to_be_disabled(
        timeout=LOAD_TIMEOUT_MS
    )
    wait_live_figures(page)
    page.screenshot(path=str(ASSETS / "train-late.png"))
    assert_no_exception(page)

    # A reload is a new session: the URL keeps the run and its figures render again.
    page.reload(timeout=LOAD_TIMEOUT_MS)
    wait_connected(page)
    assert f"run={run_id}" in page.url
    wait_progress(page, r"· stopped")
    wait_live_figures(page)
    assert_no_exception(page)
