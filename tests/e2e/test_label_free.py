"""End-to-end: a label-free run on the Train page, in real Chromium (issue 13).

A user switches Supervision to "views", picks NT-Xent and trains: the page shows the two views
of a few images (what the net is asked to match), the run's path in the (uniformity,
alignment) plane and its effective rank, live; the saved config says it trained on views.
"""

from __future__ import annotations

import json
import re

import pytest
from e2e_util import (
    LOAD_TIMEOUT_MS,
    RUN_IN_URL,
    assert_no_exception,
    choose,
    expect_title,
    open_app,
    screenshot,
    scroll_through_live_charts,
    scroll_to,
    set_number,
    train_button,
    wait_figures,
    wait_settled,
)
from playwright.sync_api import Page, expect

pytestmark = pytest.mark.e2e

FIGURE_TIMEOUT_MS = 180_000


def test_a_label_free_run_shows_its_views_and_its_geometry(page: Page, server) -> None:
    open_app(page, f"{server}/train")
    expect_title(page, "Train an embedding")
    expect(train_button(page)).to_be_enabled(timeout=LOAD_TIMEOUT_MS)
    sidebar = page.locator("[data-testid='stSidebar']")
    sidebar.get_by_text("views", exact=True).first.click()
    wait_settled(page)  # the views section and the URL update redraw the sidebar
    choose(page, "Loss", "ntxent")
    wait_settled(page)  # the sidebar rerenders after each choice (two "Steps" fields meanwhile)
    set_number(page, "Steps", 120)
    # Before training: the strip shows what the net will be asked to match.
    wait_figures(page, r"^What the net is asked to match", timeout_ms=LOAD_TIMEOUT_MS)
    expect(train_button(page)).to_be_enabled(timeout=LOAD_TIMEOUT_MS)
    train_button(page).click()
    page.wait_for_url(RUN_IN_URL, timeout=LOAD_TIMEOUT_MS)
    run_id = RUN_IN_URL.search(page.url).group(1)
    config = json.loads((server.runs_dir / run_id / "config.json").read_text())
    assert config["supervision"] == "views"
    assert config["loss"] == "ntxent"

    bar = page.locator("[data-testid='stProgress']", has_text=re.compile("finished"))
    expect(bar.first).to_be_visible(timeout=FIGURE_TIMEOUT_MS)
    # The finished run's redraw (its final metrics) may move the charts: read them after it.
    final = page.locator("[data-testid='stMetricLabel']", has_text="MAP@R final")
    expect(final.first).to_be_visible(timeout=FIGURE_TIMEOUT_MS)
    wait_settled(page)
    scroll_through_live_charts(page)  # those out of view are drawn as they come into view
    wait_figures(
        page,
        r"^What the net is asked to match",
        r"^Alignment and uniformity",
        r"^Effective rank",
        timeout_ms=FIGURE_TIMEOUT_MS,
    )
    strip = page.locator(".js-plotly-plot", has_text=re.compile("asked to match")).first
    scroll_to(strip)
    screenshot(page, "train-label-free-views.png", showing=strip)
    path = page.locator(".js-plotly-plot", has_text=re.compile("Alignment and uniformity")).first
    scroll_to(path)
    screenshot(page, "train-label-free-geometry.png", showing=path)
    assert_no_exception(page)
