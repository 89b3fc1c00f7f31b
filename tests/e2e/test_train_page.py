"""End-to-end: the home page and the live Train page in a real browser.

Every wait polls page content (connection state, figure titles, progress text); no test relies on
a fixed sleep. Screenshots of a live run go to ``e2e_util.SHOTS`` (``assets/`` when
DML_REFRESH_ASSETS=1).
"""

from __future__ import annotations

import json
import re
import time
from urllib.parse import urlparse

import pytest
from e2e_util import (
    CONNECTED,
    LOAD_TIMEOUT_MS,
    VIEWPORT,
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

from dml_core.figures.dark import DARK_PAGE_INKS

pytestmark = pytest.mark.e2e

FIGURE_TIMEOUT_MS = 180_000
# The test stops the run itself: it must never finish on its own first, however fast the machine
# (CI's 2 cores once finished 400 steps before the first live check).
STEPS = 100_000
SNAPSHOT_EVERY = 5
PROBE_POINTS = 300  # fewer than digits' 540 test images: cheaper snapshots

# The three live figures the Train page must show.
LIVE_FIGURES = {
    "embedding": r"UMAP|PCA",
    "histogram": r"Positive and negative pair distances",
    "sphere": r"unit sphere",
}

# The bars of every histogram figure on the page (each bin's density: the bins stay put), as JSON
# strings (plotly keeps arrays as typed arrays or {dtype, bdata} objects: both serialise). Stale
# copies may linger mid-rerun.
HIST_DATA_JS = """() => [...document.querySelectorAll('.js-plotly-plot')]
    .filter(e => /Positive and negative pair distances/.test(
        String((e.layout && e.layout.title && e.layout.title.text) || '')))
    .filter(e => e.data && e.data.length)
    .map(e => JSON.stringify(e.data.map(t => t.y)))"""


# The live charts (pages/live_chart.py): each chart's node gets a mark; a chart mounted anew
# (as st.plotly_chart does for every new figure) is a new node, without it.
LIVE_CHARTS_JS = "() => [...document.querySelectorAll('.dml-live-chart')]"
MARK_LIVE_JS = f"() => ({LIVE_CHARTS_JS})().map((e, i) => {{ e.e2eMark = i; return i; }})"
MARKED_LIVE_JS = f"() => ({LIVE_CHARTS_JS})().map(e => e.e2eMark)"
# What a live chart shows of Streamlit's plotly theme (CustomTheme.tsx), and where its
# plotly.js came from.
THEME_JS = f"""() => ({LIVE_CHARTS_JS})().filter(e => e._fullLayout).map(e => ({{
    font: e._fullLayout.font.family, title: e.layout.title.text,
    xgrid: e._fullLayout.xaxis.showgrid, paper: e._fullLayout.paper_bgcolor,
    page: getComputedStyle(e).getPropertyValue('--st-background-color').trim()}}))"""
# Indices of the live charts not drawn (yet): out of view, a chart waits with its height kept.
UNDRAWN_JS = f"""() => ({LIVE_CHARTS_JS})().flatMap((e, i) =>
    e._fullLayout ? [] : [[i, Math.round(e.getBoundingClientRect().height)]])"""
# The newest step the effective-rank chart plots (its x axis is the snapshots' steps).
RANK_STEP_JS = f"""() => {{ const e = ({LIVE_CHARTS_JS})().find(e =>
    /Effective rank/.test(String(e.layout && e.layout.title && e.layout.title.text)));
    return e ? Math.max(...Array.from(e._fullData[0].x)) : null; }}"""
PLOTLY_JS_SRC = "() => [...document.scripts].map(s => s.src).filter(s => /plotly/.test(s))"
LIVE_PLOTLY_JS = "() => window.__dmlPlotly.then(p => p.version)"
FETCH_JS = "(url) => fetch(url).then(r => r.text().then(t => [r.status, t.slice(0, 200)]))"
# The embedding's plot area in page pixels, to zoom into as a user drags a box.
EMBEDDING_JS = f"""() => ({LIVE_CHARTS_JS})().find(e =>
    /probe set|PCA/.test(String(e.layout && e.layout.title && e.layout.title.text)))"""
PLOT_AREA_JS = f"""() => {{ const e = ({EMBEDDING_JS})(), b = e.getBoundingClientRect(),
    x = e._fullLayout.xaxis, y = e._fullLayout.yaxis;
    return [b.left + x._offset, b.top + y._offset, x._length, y._length]; }}"""
ZOOMED_JS = f"() => ({EMBEDDING_JS})()._fullLayout.xaxis.range"


def check_live_charts(page: Page) -> None:
    """Six live charts in Streamlit's theme, drawn by the plotly package's own plotly.js."""
    import plotly.offline

    themes = page.evaluate(THEME_JS)
    assert len(themes) == 6, themes
    for theme in themes:
        assert "Source Sans" in theme["font"], theme
        assert theme["title"].startswith("<b>"), theme
        assert theme["xgrid"] is False, theme  # plotly_white draws it; Streamlit's theme not
        assert theme["paper"].lower() == theme["page"].lower(), theme
    (src,) = page.evaluate(PLOTLY_JS_SRC)
    assert "/component/" in src, src
    assert src.endswith("/plotly.min.js"), src
    status, head = page.evaluate(FETCH_JS, src)
    assert status == 200, head
    assert f"v{plotly.offline.get_plotlyjs_version()}" in head, head
    # the one the charts use, though the idle page's preview loaded Streamlit's (4.2.0 here)
    assert page.evaluate(LIVE_PLOTLY_JS) == plotly.offline.get_plotlyjs_version()


# The probe point of the embedding farthest from any other, in page pixels, and its index.
ISOLATED_POINT_JS = f"""() => {{ const e = ({EMBEDDING_JS})(), b = e.getBoundingClientRect(),
    x = e._fullLayout.xaxis, y = e._fullLayout.yaxis, pts = [];
    for (const t of e._fullData) for (let i = 0; i < t.x.length; i++)
        pts.push({{x: b.left + x._offset + x.l2p(t.x[i]), y: b.top + y._offset + y.l2p(t.y[i]),
                   index: Number(t.customdata[i])}});
    let best = null, gap = -1;
    for (const p of pts) {{
        let g = Infinity;
        for (const q of pts) if (q !== p) g = Math.min(g, Math.hypot(p.x - q.x, p.y - q.y));
        if (g > gap) {{ best = p; gap = g; }}
    }}
    return best; }}"""
# Whether the embedding marks the true neighbours of point ``index`` (figures.neighbours).
MARKED_POINT_JS = f"""(index) => (({EMBEDDING_JS})().data || []).some(t =>
    t.meta && t.meta.role === 'point' && t.meta.index === index)"""


def drag_zoom(page: Page) -> list[float]:
    """Drag a zoom box over the middle of the embedding, as a user would; its new x-range."""
    left, top, width, height = page.evaluate(PLOT_AREA_JS)
    before = page.evaluate(ZOOMED_JS)
    page.mouse.move(left + 0.3 * width, top + 0.3 * height)
    page.mouse.down()
    page.mouse.move(left + 0.6 * width, top + 0.6 * height, steps=8)
    page.mouse.up()
    page.wait_for_function(
        f"(b) => JSON.stringify(({ZOOMED_JS})()) !== JSON.stringify(b)",
        arg=before,
        timeout=LOAD_TIMEOUT_MS,
    )
    return page.evaluate(ZOOMED_JS)


def wait_connected(page: Page) -> None:
    page.wait_for_selector(CONNECTED, timeout=LOAD_TIMEOUT_MS)


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
    """(snapshot index, step) of the newest caption ``Snapshot i of n: step S, ...``."""
    texts = page.get_by_text(re.compile(r"Snapshot \d+ of \d+: step \d+")).all_inner_texts()
    found = [re.search(r"Snapshot (\d+) of \d+: step (\d+)", t) for t in texts]
    pairs = [(int(m.group(1)), int(m.group(2))) for m in found if m]
    assert pairs, texts
    return max(pairs)


def wait_live_figures(page: Page) -> None:
    wait_figures(page, *LIVE_FIGURES.values(), timeout_ms=FIGURE_TIMEOUT_MS)


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
    assert urlparse(page.url).path.rstrip("/").endswith("/train")  # the query: its settings


# Each drawn live chart's background beside the page's (Streamlit's theme variable).
BACKGROUNDS_JS = f"""() => ({LIVE_CHARTS_JS})().filter(e => e._fullLayout).map(e => [
    e._fullLayout.paper_bgcolor.toLowerCase(),
    getComputedStyle(e).getPropertyValue('--st-background-color').trim().toLowerCase()])"""
# The label boxes (annotations' backgrounds) and line colours the drawn live charts show.
INKS_JS = f"""() => ({LIVE_CHARTS_JS})().filter(e => e._fullLayout).flatMap(e => [
    ...(e._fullLayout.annotations || []).map(a => ['box', a.bgcolor]),
    ...(e._fullLayout.shapes || []).map(s => ['line', s.line.color]),
    ...e._fullData.map(t => ['line', t.line && t.line.color])])"""
LIGHT_BOX = re.compile(r"^rgba\(255, ?255, ?255, ?(0\.\d*[1-9]|1)")
DARK_INKS = set(DARK_PAGE_INKS)  # the paper inks, none left on a dark page


def test_a_live_chart_follows_the_theme(page: Page, server: str) -> None:
    """The reader's system turns to dark mode while the Train page is open (Streamlit follows
    the system's theme by default): its live chart, the loss preview, is drawn again in the
    dark theme, though its figure did not change.

    Catches (tried once each): a live chart that redraws only for a new figure (the theme
    left out of what it compares with the drawn one) kept its light background on the dark
    page; without the dark page's inks, its labels kept light boxes behind light text.
    """
    page.emulate_media(color_scheme="light")
    open_app(page, f"{server}/train")
    expect_title(page, "Train an embedding")
    page.wait_for_function(f"() => ({BACKGROUNDS_JS})().length > 0", timeout=LOAD_TIMEOUT_MS)
    ((light, page_light),) = page.evaluate(BACKGROUNDS_JS)
    assert light == page_light
    boxes = [color for kind, color in page.evaluate(INKS_JS) if kind == "box"]
    assert any(LIGHT_BOX.match(str(c)) for c in boxes), boxes  # on paper: light label boxes
    page.emulate_media(color_scheme="dark")
    dark = f"""() => {{ const b = ({BACKGROUNDS_JS})(), light = {json.dumps(page_light)};
        return b.length === 1 && b[0][1] !== light && b[0][0] === b[0][1]; }}"""
    page.wait_for_function(dark, timeout=LOAD_TIMEOUT_MS)
    # On the dark page no light box hides the labels' light text, and no line keeps dark ink.
    inks = page.evaluate(INKS_JS)
    assert not [c for kind, c in inks if kind == "box" and LIGHT_BOX.match(str(c))], inks
    assert not [c for kind, c in inks if str(c).lower() in DARK_INKS], inks
    preview = page.locator(".dml-live-chart").first
    scroll_to(preview)
    screenshot(page, "train-idle-dark.png", showing=preview)
    assert_no_exception(page)


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
    assert urlparse(page.url).path.rstrip("/").endswith("/train")  # the query: its settings
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
    marks = page.evaluate(MARK_LIVE_JS)
    assert marks == list(range(6)), marks
    zoomed = drag_zoom(page)
    # A laptop's screen from here on: the rank chart lies far below it (2,300 px down)
    page.set_viewport_size({**VIEWPORT, "height": 900})

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
            .some(e => { const m = /Snapshot (\\d+) of \\d+: step/.exec(e.innerText);
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
    # ... and those out of view are drawn as they scroll into view, with the newest figure
    # ... but not those far out of view: they wait, their place kept (drawn or not yet)
    stale = page.evaluate(RANK_STEP_JS)
    assert stale is None or stale < later_snap_step, (stale, later_snap_step)
    assert all(height >= 400 for _, height in page.evaluate(UNDRAWN_JS))
    scroll_through_live_charts(page)
    assert page.evaluate(RANK_STEP_JS) >= later_snap_step  # the newest, not one that came earlier
    page.set_viewport_size(VIEWPORT)
    check_live_charts(page)
    # ... in the same charts, updated in place, the user's zoom kept (plotly's uirevision)
    assert page.evaluate(MARKED_LIVE_JS) == marks
    assert page.evaluate(ZOOMED_JS) == zoomed
    embedding = page.locator(".dml-live-chart", has_text=re.compile("probe set|PCA")).first
    embedding.hover()
    embedding.locator(".modebar-btn[data-title='Reset axes']").click()
    page.wait_for_function(
        f"(z) => JSON.stringify(({ZOOMED_JS})()) !== JSON.stringify(z)",
        arg=zoomed,
        timeout=LOAD_TIMEOUT_MS,
    )

    # Stop: the state reaches "stopped" and the buttons follow.
    page.get_by_role("button", name="Stop", exact=True).click()
    wait_progress(page, r"· stopped")
    wait_live_figures(page)
    wait_settled(page)  # the stopped run's redraw, scrubber and all: the same charts
    assert page.evaluate(MARKED_LIVE_JS) == marks
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

    # A click on a point of the embedding marks that point's true neighbours.
    page.locator("[data-testid='stRadio']", has_text="Projection").get_by_text(
        "PCA", exact=True
    ).click()
    wait_figures(page, r"^PCA of the probe set")
    target = page.evaluate(ISOLATED_POINT_JS)
    page.mouse.move(target["x"], target["y"])
    page.mouse.click(target["x"], target["y"])
    page.wait_for_function(MARKED_POINT_JS, arg=target["index"], timeout=LOAD_TIMEOUT_MS)
    assert_no_exception(page)
