"""Helpers shared by the page and session browser tests (polling waits, no fixed sleeps)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from playwright.sync_api import Browser, BrowserContext, Locator, Page, expect
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

# one way to fill a number field, find Train, read a run id and wait, shared with the benchmarks
# that drive the app
from dml_core.bench.app_speed import RUN_IN_URL as RUN_IN_URL
from dml_core.bench.app_speed import set_number as set_number
from dml_core.bench.app_speed import train_button as train_button
from dml_core.bench.app_speed import wait_until as wait_until

ASSETS = Path(__file__).resolve().parents[2] / "assets"
# Screenshots refresh the README's pictures in assets/ only when asked (DML_REFRESH_ASSETS=1);
# otherwise they go to a temporary folder, so a test run leaves the checkout untouched.
SHOTS = (
    ASSETS
    if os.environ.get("DML_REFRESH_ASSETS") == "1"
    else Path(tempfile.gettempdir()) / "dml-e2e-shots"
)
CONNECTED = "[data-testid='stApp'][data-test-connection-state='CONNECTED']"
LOAD_TIMEOUT_MS = 60_000
FIGURE_TIMEOUT_MS = 120_000
SHOT_VIEWPORT = {"width": 1500, "height": 1700}
VIEWPORT = {"width": 1500, "height": 1900}
# How long an action or an ``expect`` waits before it fails (``expect`` waits 5 s by default).
# On CI's two loaded cores a page's script run can take longer than that to reach a widget low
# in the sidebar (seen on 2026-11-30: the Steps field of a link's page was missing after 5 s).
# A condition that holds passes as soon as it holds, so this only bounds a failure.
WAIT_MS = 30_000


def new_context(browser: Browser, viewport: dict[str, int] | None = None) -> BrowserContext:
    """A browser context (its own Streamlit session) whose pages prefer reduced motion; its
    actions wait up to ``WAIT_MS``.

    The page's animations then stop, which headless Chromium would otherwise raster frame by
    frame in software: measured, about 1 CPU-s of its GPU process per Train page opened on 2
    cores, and 20 of the e2e group's 264 Chromium CPU-s. The tests read content, not motion.
    """
    context = browser.new_context(viewport=viewport or VIEWPORT, reduced_motion="reduce")
    context.set_default_timeout(WAIT_MS)
    return context


# Titles of every drawn plotly figure, HTML tags (<b>, <br>, <sup>) stripped.
FIGURE_TITLES_JS = """() => [...document.querySelectorAll('.js-plotly-plot')]
    .filter(el => el._fullLayout)
    .map(el => String((el.layout && el.layout.title && el.layout.title.text) || ''))
    .map(t => t.replace(/<[^>]*>/g, ' ').replace(/\\s+/g, ' ').trim())"""

# True once every pattern matches the title of some drawn plotly figure.
WAIT_FIGURES_JS = f"""(patterns) => {{
    const titles = ({FIGURE_TITLES_JS})();
    return patterns.every(p => titles.some(t => new RegExp(p).test(t)));
}}"""

# True when the script is idle: nothing faded as stale, no spinner or skeleton, not "Running".
SETTLED_JS = """() =>
    [...document.querySelectorAll('[data-testid="stElementContainer"]')]
        .every(e => getComputedStyle(e).opacity === '1')
    && !document.querySelector('[data-testid="stSpinner"], [data-testid="stSkeleton"]')
    && !document.querySelector('[data-testid^="stStatusWidgetRunning"]')"""


def healthy(url: str, timeout_s: float = 5.0) -> bool:
    """Whether the server answers ``/_stcore/health`` with "ok" within ``timeout_s``."""
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=timeout_s) as response:
            return response.read().decode().strip() == "ok"
    except (urllib.error.URLError, OSError):
        return False


def open_app(page: Page, url: str) -> None:
    """Load ``url`` and wait for the websocket to connect."""
    page.goto(url, timeout=LOAD_TIMEOUT_MS)
    page.wait_for_selector(CONNECTED, timeout=LOAD_TIMEOUT_MS)


def expect_title(page: Page, title: str) -> None:
    """The page's ``st.title`` (an h1) is visible."""
    expect(page.locator("h1", has_text=title).first).to_be_visible(timeout=LOAD_TIMEOUT_MS)


def go_via_sidebar(page: Page, server: str, link: str, title: str) -> None:
    """Home first, then ``link`` in the sidebar navigation; waits for the page's title."""
    open_app(page, f"{server}/")
    expect_title(page, "Metric Learning Playground")
    page.locator("[data-testid='stSidebarNav'] a", has_text=link).first.click()
    expect_title(page, title)


def wait_figures(page: Page, *patterns: str, timeout_ms: int = FIGURE_TIMEOUT_MS) -> None:
    """Wait until a drawn plotly figure's title matches each regex in ``patterns``."""
    page.wait_for_function(WAIT_FIGURES_JS, arg=list(patterns), timeout=timeout_ms, polling=250)


def figure_titles(page: Page) -> list[str]:
    return page.evaluate(FIGURE_TITLES_JS)


def wait_settled(page: Page, timeout_ms: int = 20_000) -> None:
    """Best effort: wait until the script is idle (a page that keeps polling never is)."""
    with contextlib.suppress(PlaywrightTimeoutError):
        page.wait_for_function(SETTLED_JS, timeout=timeout_ms, polling=100)


def scroll_to(element: Locator) -> None:
    """Scroll ``element`` to the middle of the viewport, for a screenshot.

    Playwright's ``scroll_into_view_if_needed`` first waits for the element to stand still,
    which a figure of a page that redraws may not do within its timeout (seen once, on the
    hardest-triplets strip); the scroll itself needs no such wait.
    """
    element.evaluate("e => e.scrollIntoView({block: 'center'})")


# The i-th live chart (pages/live_chart.py) of the page, if there is one.
NTH_LIVE_CHART_JS = "(i) => document.querySelectorAll('.dml-live-chart')[i]"


def scroll_through_live_charts(page: Page) -> None:
    """Scroll to each live chart as a user reading down the page would; each gets drawn.

    A live chart out of view draws nothing until it comes near the viewport (its figure
    waits: ``pages/live_chart.js``). Ends back at the page's title.
    """
    i = 0
    while i < page.locator(".dml-live-chart").count():  # a rerun may add or remove one
        page.evaluate(f"(i) => ({NTH_LIVE_CHART_JS})(i)?.scrollIntoView({{block: 'center'}})", i)
        page.wait_for_function(
            f"(i) => {{ const e = ({NTH_LIVE_CHART_JS})(i); return !e || !!e._fullLayout; }}",
            arg=i,
            timeout=WAIT_MS,
        )
        i += 1
    page.evaluate("() => document.querySelector('h1').scrollIntoView()")


def screenshot(page: Page, name: str, showing: Locator | None = None) -> Path:
    """Save ``<SHOTS>/<name>`` of the current viewport, preferably with nothing faded.

    With ``showing``, retake the picture (a few times) until that element is visible both
    before and after it: a page that reruns on a timer may be mid-rerun at the first try.
    """
    SHOTS.mkdir(exist_ok=True)
    path = SHOTS / name
    for _ in range(5):
        wait_settled(page)
        if showing is not None and not showing.is_visible():
            page.wait_for_timeout(500)
            continue
        page.screenshot(path=str(path))
        if showing is None or showing.is_visible():
            break
    return path


def assert_no_exception(page: Page) -> None:
    """No traceback on the page, and no "Connection error" dialog over it."""
    errors = page.locator("[data-testid='stException']")
    assert errors.count() == 0, errors.first.inner_text()
    dialog = page.get_by_text("Connection error", exact=True)
    assert dialog.count() == 0, page.locator("[role='dialog']").first.inner_text()


def choose(page: Page, label: str, option: str) -> None:
    """Pick ``option`` (exact text) in the Streamlit selectbox ``label``.

    A rerun that redraws the sidebar meanwhile (a change just before, the URL kept in step)
    closes the open list; the pick is then tried again, up to three times.
    """
    box = page.get_by_role("combobox", name=label, exact=True)
    for attempt in range(3):
        wait_settled(page)
        box.click()
        box.fill("")  # a retry starts from an empty filter
        box.press_sequentially(option)
        try:
            page.get_by_role("option", name=option, exact=True).click(timeout=10_000)
            break
        except PlaywrightTimeoutError:
            if attempt == 2:
                raise
            page.keyboard.press("Escape")
    expect(box).to_have_value(option, timeout=LOAD_TIMEOUT_MS)


def choose_containing(page: Page, label: str, text: str) -> None:
    """Pick the option of selectbox ``label`` whose text contains ``text`` (e.g. a run id)."""
    box = page.get_by_role("combobox", name=label, exact=True)
    box.click()
    box.press_sequentially(text)
    page.get_by_role("option", name=re.compile(re.escape(text))).first.click()
    expect(box).to_have_value(re.compile(re.escape(text)), timeout=LOAD_TIMEOUT_MS)


def progress_text(page: Page) -> str:
    """The Train page's progress text, or "" when absent or re-rendering."""
    bar = page.locator("[data-testid='stProgress']")
    try:
        return bar.first.inner_text(timeout=2_000) if bar.count() else ""
    except Exception:  # the live fragment replaced the node between count and read
        return ""


def run_status(runs_dir: Path, run_id: str) -> dict:
    """A run's status.json as written (``{}`` while absent or mid-replace)."""
    try:
        return json.loads((runs_dir / run_id / "status.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def wait_healthy(url: str, within_s: float = 30.0) -> float:
    """Assert the server answers its health check within ``within_s`` (retrying, since 2 busy
    cores can delay one answer); returns the seconds it took."""
    start = time.monotonic()
    while not healthy(url, timeout_s=max(1.0, within_s - (time.monotonic() - start))):
        if time.monotonic() - start > within_s:
            raise AssertionError(f"the server did not answer /_stcore/health in {within_s:.0f} s")
        time.sleep(0.5)
    return time.monotonic() - start
