"""End-to-end: the home page and the live Train page in a real browser.

Every wait polls page content (connection state, figure titles, progress text); no test relies on
a fixed sleep. Screenshots of a live run go to ``assets/`` for the README.
"""

from __future__ import annotations

import contextlib
import re
import time
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

pytestmark = pytest.mark.e2e

ASSETS = Path(__file__).resolve().parents[2] / "assets"
CONNECTED = "[data-testid='stApp'][data-test-connection-state='CONNECTED']"
LOAD_TIMEOUT_MS = 60_000
FIGURE_TIMEOUT_MS = 180_000
# The test stops the run itself: it must never finish on its own first, however fast the machine
# (CI's 2 cores once finished 400 steps before the first live check).
STEPS = 100_000
SNAPSHOT_EVERY = 5
PROBE_POINTS = 300  # fewer than digits' 540 test images: cheaper snapshots

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

# The trace data of every histogram figure on the page, as JSON strings (plotly keeps arrays as
# typed arrays or {dtype, bdata} objects: both serialise). Stale copies may linger mid-rerun.
HIST_DATA_JS = """() => [...document.querySelectorAll('.js-plotly-plot')]
    .filter(e => /Positive and negative pair distances/.test(
        String((e.layout && e.layout.title && e.layout.title.text) || '')))
    .filter(e => e.data && e.data.length)
    .map(e => JSON.stringify(e.data.map(t => t.x)))"""

# True once no element of the page is faded as stale (between two reruns of the live fragment).
SETTLED_JS = """() => [...document.querySelectorAll('[data-testid="stElementContainer"]')]
    .every(e => getComputedStyle(e).opacity === '1')"""


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
    """(snapshot index, step) of the newest caption ``Snapshot i/n: step S, ...`` on the page."""
    texts = page.get_by_text(re.compile(r"Snapshot \d+/\d+: step \d+")).all_inner_texts()
    found = [re.search(r"Snapshot (\d+)/\d+: step (\d+)", t) for t in texts]
    pairs = [(int(m.group(1)), int(m.group(2))) for m in found if m]
    assert pairs, texts
    return max(pairs)


def wait_live_figures(page: Page) -> None:
    page.wait_for_function(
        WAIT_FIGURES_JS, arg=list(LIVE_FIGURES.values()), timeout=FIGURE_TIMEOUT_MS, polling=500
    )


def screenshot(page: Page, name: str) -> None:
    """Save ``assets/<name>``, preferably between two fragment reruns (nothing faded)."""
    # If the live fragment keeps rerunning, a partly faded picture is still a picture.
    with contextlib.suppress(PlaywrightTimeoutError):
        page.wait_for_function(SETTLED_JS, timeout=15_000, polling=100)
    ASSETS.mkdir(exist_ok=True)
    page.screenshot(path=str(ASSETS / name))


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
    page.locator("[data-testid='stSidebar'] [data-testid='stExpander']", has_text="More").click()
    set_number(page, "Snapshot every (steps)", SNAPSHOT_EVERY)
    set_number(page, "Probe points", PROBE_POINTS)
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
    screenshot(page, "train-early.png")

    # The step counter advances while the page stays connected.
    first_step = step_of(page)
    assert first_step < STEPS, "the run finished before the live checks"
    wait_progress(page, rf"step (?!{first_step}/)\d+/{STEPS}")
    assert step_of(page) > first_step

    # The figures follow the snapshots: a later snapshot, and different histogram data.
    first_index, first_snap_step = snapshot_caption(page)
    # the histogram may be mid-redraw at this instant: wait until its data is there
    page.wait_for_function(
        f"() => ({HIST_DATA_JS})().length > 0", timeout=FIGURE_TIMEOUT_MS, polling=250
    )
    first_hist = page.evaluate(HIST_DATA_JS)
    assert first_hist, "no histogram data"
    assert all(len(h) > 100 for h in first_hist), first_hist
    page.wait_for_function(
        """(n) => [...document.querySelectorAll('[data-testid="stCaptionContainer"]')]
            .some(e => { const m = /Snapshot (\\d+)\\/\\d+: step/.exec(e.innerText);
                         return m && Number(m[1]) > n; })""",
        arg=first_index,
        timeout=FIGURE_TIMEOUT_MS,
        polling=500,
    )
    later_index, later_snap_step = snapshot_caption(page)
    assert later_index > first_index
    assert later_snap_step > first_snap_step
    page.wait_for_function(
        f"(before) => ({HIST_DATA_JS})().some(h => !before.includes(h))",
        arg=first_hist,
        timeout=FIGURE_TIMEOUT_MS,
        polling=500,
    )
    wait_live_figures(page)

    # Stop: the state reaches "stopped" and the buttons follow.
    page.get_by_role("button", name="Stop", exact=True).click()
    wait_progress(page, r"· stopped")
    wait_live_figures(page)
    screenshot(page, "train-late.png")
    assert_no_exception(page)

    # A reload is a new session: the URL keeps the run and its figures render again.
    page.reload(timeout=LOAD_TIMEOUT_MS)
    wait_connected(page)
    assert f"run={run_id}" in page.url
    wait_progress(page, r"· stopped")
    wait_live_figures(page)
    expect(page.get_by_role("button", name="Stop", exact=True)).to_be_disabled()
    expect(train_button(page)).to_be_enabled()
    assert_no_exception(page)
