"""End-to-end: the Sweep page in real Chromium (issue 15).

A user defines a 2 x 2 grid (margin x learning rate) with 2 seeds of tiny digits runs, launches
it and waits for all 8 runs; the heatmap's cells are the means and sds of the runs' final
MAP@R, computed here from the run store; picking a cell opens its two runs in Compare. A
second sweep of endless runs is stopped with the page's Stop button: every run ends stopped,
none is left training or queued. Whatever a test started is stopped (and removed from the
session's shared runs directory) at teardown.
"""

from __future__ import annotations

import json
import re
import shutil
import statistics
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_util import (
    LOAD_TIMEOUT_MS,
    assert_no_exception,
    choose,
    expect_title,
    new_context,
    open_app,
    run_status,
    screenshot,
    scroll_to,
    set_number,
    wait_figures,
    wait_settled,
    wait_until,
)
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Page, expect

pytestmark = pytest.mark.e2e

SWEEP_TIMEOUT_S = 420.0  # 8 tiny runs, two at a time, on 2 loaded cores
STOP_TIMEOUT_S = 120.0
FINAL = {"finished", "stopped", "failed", "diverged", "interrupted"}
HEATMAP_JS = """() => {
    for (const el of document.querySelectorAll('.js-plotly-plot')) {
        const t = (el._fullData || []).find(d => d.type === 'heatmap');
        if (!t) continue;
        const rows = Array.from(t.z, r => Array.from(r, v => (v === null ? NaN : Number(v))));
        const runs = Array.from(t.customdata, r => Array.from(r, c => Number(c[1])));
        return {x: Array.from(t.x), y: Array.from(t.y), z: rows, runs: runs,
                text: Array.from(t.text, r => Array.from(r))};
    }
    return null;
}"""


def sweeps_dir(server) -> Path:
    return Path(server.runs_dir) / "sweeps"


def sweep_ids(server) -> set[str]:
    folder = sweeps_dir(server)
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def sweep_file(server, sweep_id: str, name: str) -> dict:
    """A sweep's sweep.json or status.json (``{}`` while absent or mid-replace)."""
    try:
        return json.loads((sweeps_dir(server) / sweep_id / name).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def run_ids(server, sweep_id: str) -> list[str]:
    return [run["run_id"] for run in sweep_file(server, sweep_id, "sweep.json")["runs"]]


def states(server, sweep_id: str) -> list[str]:
    return [run_status(server.runs_dir, r).get("state", "") for r in run_ids(server, sweep_id)]


def table_rows(page: Page) -> dict[str, dict[str, str]]:
    """The Sweep page's run table as shown, by run id: column name -> cell text (read from
    the data grid's accessible table, which holds the text the canvas draws)."""
    grid = page.locator("[data-testid='stDataFrame']").first
    header = [t.strip() for t in grid.locator("[role='columnheader']").all_inner_texts()]
    rows = {}
    for row in grid.locator("[role='row']").all():
        cells = [t.strip() for t in row.locator("[role='gridcell']").all_inner_texts()]
        if len(cells) == len(header) and cells:
            named = dict(zip(header, cells, strict=True))
            rows[named["run"]] = named
    return rows


def open_sweep_page(page: Page, server) -> None:
    open_app(page, f"{server}/sweep")
    expect_title(page, "Sweep")
    panel = page.locator("[data-testid='stExpander']", has_text="New sweep").first
    expect(panel).to_be_visible(timeout=LOAD_TIMEOUT_MS)
    wait_settled(page)
    if panel.locator("details").get_attribute("open") is None:  # folded once a sweep exists
        panel.locator("summary").click()
    launch = page.get_by_role("button", name=re.compile(r"Launch sweep"))
    expect(launch).to_be_visible(timeout=LOAD_TIMEOUT_MS)


def set_values(page: Page, name: str, text: str) -> None:
    """Type an axis' comma-separated values and commit them."""
    field = page.get_by_label(f"Values of {name} (comma-separated)", exact=True)
    field.fill(text)
    field.press("Enter")
    expect(field).to_have_value(text, timeout=LOAD_TIMEOUT_MS)
    wait_settled(page)


def define_and_launch(page: Page, server, steps: int, every: int, second_axis: bool) -> str:
    """Fill the grid panel (margin 0.1, 0.3 [x lr 0.001, 0.003], 2 seeds) and launch it;
    returns the new sweep's id."""
    before = sweep_ids(server)
    set_number(page, "Steps", steps)
    set_number(page, "Snapshot every (steps)", every)
    set_number(page, "Probe points", 100)
    set_number(page, "Seeds per cell", 2)
    choose(page, "Axis 1", "margin")
    set_values(page, "margin", "0.1, 0.3")
    if second_axis:
        choose(page, "Axis 2", "lr")
        set_values(page, "lr", "0.001, 0.003")
    page.get_by_role("button", name=re.compile(r"Launch sweep")).click()
    wait_until(lambda: sweep_ids(server) - before, "the sweep to be saved", 60)
    (sweep_id,) = sweep_ids(server) - before
    expect(page.get_by_text(sweep_id).first).to_be_visible(timeout=LOAD_TIMEOUT_MS)
    return sweep_id


@pytest.fixture
def started(browser, server, request: pytest.FixtureRequest) -> Iterator[list[str]]:
    """The sweeps a test launched: stopped (through the page) if still running afterwards,
    then, when the test passed, removed with their runs, so the session's other tests see
    the runs dir as it was (a failed test's runs stay, to be looked at)."""
    sweeps: list[str] = []
    yield sweeps
    report = getattr(request.node, "rep_call", None)
    keep = report is None or report.failed
    for sweep_id in sweeps:
        if sweep_file(server, sweep_id, "status.json").get("state") == "running":
            context = new_context(browser)
            try:
                page = context.new_page()
                open_app(page, f"{server}/sweep")
                choose(page, "Sweep", sweep_id)
                page.get_by_role("button", name=re.compile(r"Stop sweep")).click()
                wait_until(
                    lambda s=sweep_id: set(states(server, s)) <= FINAL,
                    f"the runs of {sweep_id} to stop at teardown",
                    STOP_TIMEOUT_S,
                )
            finally:
                context.close()
        if keep:
            continue
        for run_id in run_ids(server, sweep_id):
            shutil.rmtree(Path(server.runs_dir) / run_id, ignore_errors=True)
        shutil.rmtree(sweeps_dir(server) / sweep_id, ignore_errors=True)


def test_a_2x2_grid_with_2_seeds_finishes_and_its_heatmap_matches_its_runs(
    page: Page, server, started: list[str]
) -> None:
    """Catches: a heatmap with its axes swapped or cells misplaced (cell (0.1, 0.003) shows
    (0.3, 0.001)'s mean), means over the wrong runs or a population sd instead of the sample
    sd (the cells' text), a table that shows other values than the runs' final MAP@R, and a
    cell picker that opens another cell's runs in Compare."""
    open_sweep_page(page, server)
    sweep_id = define_and_launch(page, server, steps=20, every=10, second_axis=True)
    started.append(sweep_id)
    ids = run_ids(server, sweep_id)
    assert len(ids) == 8
    wait_until(
        lambda: states(server, sweep_id) == ["finished"] * 8,
        "all 8 runs to finish",
        SWEEP_TIMEOUT_S,
    )
    wait_until(
        lambda: sweep_file(server, sweep_id, "status.json").get("state") == "finished",
        "the sweep to read finished",
        60,
    )
    # The run store, read here: each cell's final MAP@R over its two seeds.
    sweep = sweep_file(server, sweep_id, "sweep.json")
    cells = {}
    for run in sweep["runs"]:
        status = run_status(server.runs_dir, run["run_id"])
        cells.setdefault(run["cell"], []).append(status["final_metrics"]["map_at_r"])
    assert all(len(v) == 2 for v in cells.values())
    assert len(cells) == 4

    def heatmap() -> dict | None:
        """The drawn heatmap once every cell counts its 2 finished runs (it redraws as
        the page polls)."""
        drawn = page.evaluate(HEATMAP_JS)
        return drawn if drawn and drawn["runs"] == [[2, 2], [2, 2]] else None

    wait_figures(page, r"^Mean MAP@R per cell", timeout_ms=LOAD_TIMEOUT_MS)
    wait_until(heatmap, "every heatmap cell to show its mean", 60)
    drawn = heatmap()
    assert drawn["y"] == ["0.1", "0.3"]  # margin down
    assert drawn["x"] == ["0.001", "0.003"]  # lr across
    for index, values in cells.items():
        i, j = divmod(index, 2)  # cells: the first axis varies slowest
        mean, sd = statistics.mean(values), statistics.stdev(values)
        assert drawn["z"][i][j] == pytest.approx(mean, abs=1e-9), (index, drawn)
        assert drawn["text"][i][j] == f"{mean:.3f} ± {sd:.3f}"
    assert len({round(z, 9) for row in drawn["z"] for z in row}) == 4  # cells differ

    # The page's own table (its grid's accessible rows): each run's MAP@R as shown, whose
    # per-cell means are the heatmap's (to the table's 3 decimals).
    shown: dict[str, dict[str, str]] = {}

    def table_done() -> bool:
        """Read the table once it shows 8 finished rows (it redraws as the page polls)."""
        try:
            rows = table_rows(page)
        except PlaywrightError:  # a row replaced while read
            return False
        finished = [r for r in rows.values() if r.get("state", "").endswith("finished")]
        if len(finished) == 8:
            shown.update(rows)
        return len(finished) == 8

    wait_until(table_done, "the table's 8 finished rows", 60)
    assert sorted(shown) == sorted(ids)
    for run in sweep["runs"]:
        final = run_status(server.runs_dir, run["run_id"])["final_metrics"]["map_at_r"]
        assert shown[run["run_id"]]["MAP@R"] == f"{final:.3f}"
    for index in cells:
        i, j = divmod(index, 2)
        in_table = [float(shown[r["run_id"]]["MAP@R"]) for r in sweep["runs"] if r["cell"] == index]
        assert statistics.mean(in_table) == pytest.approx(drawn["z"][i][j], abs=6e-4)
    expect(page.get_by_text(re.compile(r"8/8 runs ended")).first).to_be_visible()
    assert_no_exception(page)
    figure = page.locator(".js-plotly-plot", has_text=re.compile("Mean MAP@R per cell")).first
    scroll_to(figure)
    screenshot(page, "sweep-page.png", showing=figure)

    # Pick the cell margin=0.3, lr=0.001 and open its runs in Compare.
    choose(page, "Cell", "margin=0.3, lr=0.001")
    page.get_by_role("button", name=re.compile(r"Open in Compare")).click()
    expect_title(page, "Compare runs")
    wanted = sorted(r["run_id"] for r in sweep["runs"] if r["cell"] == 2)
    tags = page.locator("[data-tag-index]")
    expect(tags).to_have_count(2, timeout=LOAD_TIMEOUT_MS)
    shown = sorted(re.sub(r"\s+", "", t) for t in tags.all_inner_texts())
    assert shown == wanted
    # (Their embeddings cannot share one layout: each seed draws its own probe points.)
    wait_figures(page, r"^Positive and negative pair distances", timeout_ms=180_000)
    assert_no_exception(page)
    screenshot(page, "sweep-compare.png")


def test_stop_ends_every_run_of_a_running_sweep(page: Page, server, started: list[str]) -> None:
    """Catches: a Stop button that leaves runs training (they would run on to 100,000 steps
    and the wait fail), queued runs left queued (or trained later), and a sweep that does
    not read stopped once its runs ended."""
    open_sweep_page(page, server)
    sweep_id = define_and_launch(page, server, steps=100_000, every=20, second_axis=False)
    started.append(sweep_id)
    ids = run_ids(server, sweep_id)
    assert len(ids) == 4  # 2 cells x 2 seeds, two train at a time

    def training() -> list[str]:
        return [r for r in ids if run_status(server.runs_dir, r).get("step", 0) >= 20]

    wait_until(training, "a run to train 20 steps", SWEEP_TIMEOUT_S)
    stop = page.get_by_role("button", name=re.compile(r"Stop sweep"))
    expect(stop).to_be_visible(timeout=LOAD_TIMEOUT_MS)
    stop.click()
    wait_until(lambda: set(states(server, sweep_id)) <= FINAL, "every run to end", STOP_TIMEOUT_S)
    wait_until(
        lambda: sweep_file(server, sweep_id, "status.json").get("state") == "stopped",
        "the sweep to read stopped",
        60,
    )
    statuses = [run_status(server.runs_dir, r) for r in ids]
    assert {s["state"] for s in statuses} == {"stopped"}, statuses
    for status in statuses:
        assert status.get("step", 0) < 100_000
    assert any(s.get("step", 0) >= 20 for s in statuses)
    expect(page.get_by_text(re.compile(r"· stopped ·")).first).to_be_visible(
        timeout=LOAD_TIMEOUT_MS
    )
    expect(stop).to_have_count(0, timeout=LOAD_TIMEOUT_MS)  # nothing left to stop
    assert_no_exception(page)
