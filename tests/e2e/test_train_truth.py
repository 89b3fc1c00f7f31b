"""End-to-end: what a teacher checks before class, in real Chromium (issue 19).

Moving "Margin α" sets the loss's and the miner's margin; Pause is offered while the run trains
without touching anything else; a finished run's UMAP replaces PCA by itself; Play steps through
the snapshots unattended; the histogram's axes are the same at the first and the last snapshot.
"""

from __future__ import annotations

import json
import re

import pytest
from e2e_util import (
    LOAD_TIMEOUT_MS,
    RUN_IN_URL,
    assert_no_exception,
    expect_title,
    open_app,
    screenshot,
    set_number,
    train_button,
    wait_figures,
)
from playwright.sync_api import Page, expect

pytestmark = pytest.mark.e2e

FIGURE_TIMEOUT_MS = 180_000
HIST_RANGES_JS = """() => [...document.querySelectorAll('.js-plotly-plot')]
    .filter(e => e._fullLayout && /Positive and negative pair distances/.test(
        String((e.layout.title && e.layout.title.text) || '')))
    .map(e => [e._fullLayout.xaxis.range, e._fullLayout.yaxis.range])"""
WATCH_CAPTIONS_JS = """() => {
    window.__seen = [];
    const note = () => {
        const m = document.body.textContent.match(/Snapshot (\\d+) of 7: step/);
        if (m && window.__seen.at(-1) !== Number(m[1])) window.__seen.push(Number(m[1]));
    };
    note();
    new MutationObserver(note).observe(document.body,
        {childList: true, subtree: true, characterData: true});
}"""


def open_train(page: Page, server: str) -> None:
    open_app(page, f"{server}/train")
    expect_title(page, "Train an embedding")
    expect(train_button(page)).to_be_enabled(timeout=LOAD_TIMEOUT_MS)


def more_settings(page: Page) -> None:
    page.locator("[data-testid='stSidebar'] [data-testid='stExpander']", has_text="More").click()


def slide_to(page: Page, label: str, value: float, step: float) -> None:
    """Move the Streamlit slider ``label`` with the arrow keys, as a keyboard user would."""
    thumb = page.get_by_role("slider", name=label)
    thumb.focus()
    now = float(thumb.get_attribute("aria-valuetext"))
    key = "ArrowRight" if value > now else "ArrowLeft"
    for _ in range(round(abs(value - now) / step)):
        thumb.press(key)
    expect(thumb).to_have_attribute("aria-valuetext", f"{value:g}", timeout=LOAD_TIMEOUT_MS)


def start_run(page: Page) -> str:
    train_button(page).click()
    page.wait_for_url(RUN_IN_URL, timeout=LOAD_TIMEOUT_MS)
    return RUN_IN_URL.search(page.url).group(1)


def progress(page: Page, pattern: str, timeout_ms: int = FIGURE_TIMEOUT_MS) -> None:
    bar = page.locator("[data-testid='stProgress']", has_text=re.compile(pattern))
    expect(bar.first).to_be_visible(timeout=timeout_ms)


def test_margin_alpha_drives_both_and_pause_follows_the_run(page: Page, server) -> None:
    open_train(page, server)
    set_number(page, "Steps", 100_000)  # stopped by the test
    slide_to(page, "Margin α", 0.5, step=0.01)
    expect(train_button(page)).to_be_enabled(timeout=LOAD_TIMEOUT_MS)
    run_id = start_run(page)
    config = json.loads((server.runs_dir / run_id / "config.json").read_text())
    assert config["loss_params"]["margin"] == 0.5
    assert config["miner_params"]["margin"] == 0.5

    # Nothing else is touched: the live fragment enables Pause as soon as the run trains.
    pause = page.get_by_role("button", name="Pause", exact=True)
    expect(pause).to_be_enabled(timeout=FIGURE_TIMEOUT_MS)
    pause.click()
    progress(page, r"· paused|^paused")
    expect(page.get_by_role("button", name="Resume", exact=True)).to_be_enabled()
    page.get_by_role("button", name="Stop", exact=True).click()
    progress(page, r"stopped")
    expect(page.get_by_role("button", name="Stop", exact=True)).to_be_disabled()
    assert_no_exception(page)


def test_a_finished_run_replays_on_steady_axes(page: Page, server) -> None:
    open_train(page, server)
    set_number(page, "Steps", 60)
    more_settings(page)
    set_number(page, "Snapshot every (steps)", 10)
    set_number(page, "Probe points", 300)
    start_run(page)
    progress(page, r"finished")

    # No interaction: UMAP of the last step replaces the PCA stand-in by itself.
    wait_figures(page, r"^UMAP of the probe set at step 60", timeout_ms=FIGURE_TIMEOUT_MS)

    page.get_by_text("Follow the latest snapshot").first.click()
    caption = page.get_by_text(re.compile(r"Snapshot 1 of 7: step 0"))
    expect(caption.first).to_be_visible(timeout=LOAD_TIMEOUT_MS)
    page.wait_for_function(f"() => ({HIST_RANGES_JS})().length === 1", timeout=LOAD_TIMEOUT_MS)
    first = page.evaluate(HIST_RANGES_JS)[0]
    page.get_by_text("fast", exact=True).first.click()
    page.evaluate(WATCH_CAPTIONS_JS)  # every caption shown, however briefly (fast play)
    page.get_by_text("Play", exact=True).first.click()
    # Unattended: the snapshots go by in order, one after another, up to the last one.
    page.wait_for_function("() => window.__seen.includes(7)", timeout=60_000)
    seen = page.evaluate("() => window.__seen")
    assert seen[0] in (1, 2), seen
    assert seen[-1] == 7, seen
    assert seen == sorted(set(seen)), str(seen)  # never backwards, no index twice
    assert len([i for i in seen if 2 <= i <= 6]) >= 3, seen  # not a jump to the end
    page.wait_for_function(f"() => ({HIST_RANGES_JS})().length === 1", timeout=LOAD_TIMEOUT_MS)
    last = page.evaluate(HIST_RANGES_JS)[0]
    assert first == last, (first, last)
    assert first[0] == [0, 2]
    screenshot(page, "train-replay.png")
    assert_no_exception(page)
