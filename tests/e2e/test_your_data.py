"""End-to-end: a user uploads a zip of their own image folder on the Train page and trains
(issue 17), in real Chromium.

The sidebar's "Your data" takes the upload, reads it (the caption names what was read), fits
P, K and the net to the data, and Train runs on it; the live views draw its classes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from e2e_util import (
    LOAD_TIMEOUT_MS,
    RUN_IN_URL,
    assert_no_exception,
    choose_containing,
    expect_title,
    go_via_sidebar,
    open_app,
    screenshot,
    scroll_to,
    set_number,
    train_button,
    wait_figures,
    wait_settled,
)
from playwright.sync_api import Page, expect

from tests.user_data_files import SHAPES, write_shapes, zip_folder

pytestmark = pytest.mark.e2e

FIGURE_TIMEOUT_MS = 180_000


def test_an_uploaded_image_folder_trains_with_its_own_classes(
    page: Page, server, tmp_path: Path
) -> None:
    folder = write_shapes(tmp_path / "shapes", per_class=30, size=28)
    archive = zip_folder(folder, tmp_path / "my_shapes.zip")
    open_app(page, f"{server}/train")
    expect_title(page, "Train an embedding")
    sidebar = page.locator("[data-testid='stSidebar']")
    sidebar.get_by_text("Your data", exact=True).click()
    sidebar.get_by_text("Upload", exact=True).click()
    wait_settled(page)
    sidebar.locator("input[type='file']").set_input_files(str(archive))
    expect(sidebar.get_by_text(re.compile(r"^Source: .*image folder"))).to_be_visible(
        timeout=LOAD_TIMEOUT_MS
    )
    wait_settled(page)
    expect(page.get_by_label("P classes", exact=True)).to_have_value("4")  # fitted: 4 shapes
    set_number(page, "Steps", 60)
    expect(train_button(page)).to_be_enabled(timeout=LOAD_TIMEOUT_MS)
    train_button(page).click()
    page.wait_for_url(RUN_IN_URL, timeout=LOAD_TIMEOUT_MS)
    run_id = RUN_IN_URL.search(page.url).group(1)
    config = json.loads((server.runs_dir / run_id / "config.json").read_text())
    assert "extracted" in Path(config["dataset"]).parts  # where the upload was extracted
    assert (config["classes_per_batch"], config["net"]) == (4, "convnet")

    bar = page.locator("[data-testid='stProgress']", has_text=re.compile("finished"))
    expect(bar.first).to_be_visible(timeout=FIGURE_TIMEOUT_MS)
    wait_figures(page, r"^Positive and negative pair distances", timeout_ms=FIGURE_TIMEOUT_MS)
    # the projection's legend names the user's classes (its figure may still be coming: on a
    # machine whose numba cache is cold, UMAP compiles while the run trains)
    for shape in SHAPES:
        expect(page.locator(".js-plotly-plot .legendtext", has_text=shape).first).to_be_visible()
    screenshot(page, "train-your-data.png")
    assert_no_exception(page)

    # The hardest triplets of the latest snapshot, as the user's images (issue 16).
    page.get_by_text("Show the hardest triplets now", exact=True).click()
    strip = page.locator(".js-plotly-plot", has_text=re.compile("hardest", re.I)).first
    expect(strip).to_be_visible(timeout=LOAD_TIMEOUT_MS)
    scroll_to(strip)
    screenshot(page, "train-hardest-triplets.png", showing=strip)
    assert_no_exception(page)

    # Retrieval opens the finished run from its saved embeddings: the user's images as
    # thumbnails, the query first, its neighbours named by their classes.
    go_via_sidebar(page, server, "Retrieval", "Retrieval")
    choose_containing(page, "Run", run_id)
    wait_figures(page, r"^Query 0 and its 8 nearest", timeout_ms=FIGURE_TIMEOUT_MS)
    picker = page.get_by_label(re.compile(r"^Query \(index in the \d+ test images\)"))
    expect(picker).to_be_visible()
    strip = page.locator(".js-plotly-plot", has_text=re.compile("^Query 0 and its")).first
    scroll_to(strip)
    screenshot(page, "retrieval-your-data.png", showing=strip)
    assert_no_exception(page)
