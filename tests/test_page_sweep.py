"""The Sweep page (AppTest): define a grid, launch it, watch it finish, read the means, open a cell
in Compare. Training is real (tiny digits runs on the local backend, no mocks)."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from dml_core.analysis import compare
from dml_core.runs import RunStore
from dml_core.services import sweep_session
from dml_core.sweeps import SweepStore
from tests.page_apps import page_on_runs

TINY = {"steps": 20, "snapshot_every": 10, "probe_size": 100}
MAX_POLLS = 240  # bounded wait: at most this many looks at the page


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[AppTest, RunStore]]:
    """The Sweep page alone over an empty runs directory; its sweeps are stopped afterwards."""
    try:
        for at in page_on_runs("sweep.py", tmp_path, monkeypatch):
            yield at, RunStore(tmp_path)
    finally:
        sweep_session.stop_all_shared()


def _define(at: AppTest, values: str) -> None:
    """A grid of tiny digits runs over margin (one axis), one seed."""
    for name, value in TINY.items():
        at.number_input(key=f"swp.{name}").set_value(value)
    at.number_input(key="swp.seeds").set_value(1)
    at.selectbox(key="swp.axis0").set_value("margin")
    at.selectbox(key="swp.axis1").set_value("(none)")
    at.run()
    at.text_input(key="swp.values0.margin").set_value(values)
    at.run()


def _wait_finished(at: AppTest, store: RunStore, sweep_id: str) -> None:
    """Poll the page until every run of the sweep ended (bounded; the sleep only paces it)."""
    sweep = SweepStore(store).load(sweep_id)
    for _ in range(MAX_POLLS):
        at.run()
        if not sweep_session.shared(store).active(sweep_id):
            at.run()  # one more look, with every run's final metrics on disk
            return
        time.sleep(0.5)
    pytest.fail(f"sweep {sweep.sweep_id} did not end within {MAX_POLLS} polls")


def _array(value: object) -> list:
    """A trace's data as a list (plotly writes numpy arrays as base64 ``bdata``)."""
    if isinstance(value, dict) and "bdata" in value:
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"]).tolist()
    return list(value)


def _figure(at: AppTest) -> dict:
    charts = at.get("plotly_chart")
    assert charts, "no figure on the page"
    return json.loads(charts[-1].proto.spec)


def test_one_axis_sweep_runs_and_plots_the_mean_of_each_cell(app) -> None:
    """2 x 1 grid (margin 0.1, 0.3; 1 seed): both runs finish, and the line's y values are the
    runs' final MAP@R, read from the run store independently of the page.

    Catches: a figure that averages over the wrong axis (e.g. one mean over all cells, or the
    cells in another order), a page that never launches, or a launch on the wrong values.
    """
    at, store = app
    _define(at, "0.1, 0.3")
    at.button(key="swp.launch").click().run()
    assert not at.exception
    assert not at.error, [e.value for e in at.error]
    sweep_id = at.session_state["swp.current"]
    sweep = SweepStore(store).load(sweep_id)
    assert [a.values for a in sweep.axes] == [(0.1, 0.3)]
    assert sweep.seeds == (0,)
    _wait_finished(at, store, sweep_id)
    assert not at.exception
    finals = {}
    for run in sweep.runs:
        status = store.status(run.run_id)
        assert status["state"] == "finished", status
        finals[sweep.cells[run.cell]["margin"]] = status["final_metrics"]["map_at_r"]
    assert finals[0.1] != finals[0.3]  # else the test could not tell the cells apart
    spec = _figure(at)
    mean = next(t for t in spec["data"] if t.get("name", "").startswith("mean"))
    assert _array(mean["x"]) == [0.1, 0.3]
    assert _array(mean["y"]) == pytest.approx([finals[0.1], finals[0.3]])
    table = at.dataframe[0].value
    assert set(table["state"]) == {"✅ finished"}
    names = compare.run_names(store, [run.run_id for run in sweep.runs])  # as Compare shows them
    assert sorted(names.values()) == ["margin = 0.1", "margin = 0.3"]


def test_bad_grid_is_one_line_of_error(app) -> None:
    """A value out of range is refused by build_sweep: one st.error naming the field, no
    traceback, and no sweep saved. Catches a page that lets the ConfigError escape."""
    at, store = app
    _define(at, "0.1, -5")
    at.button(key="swp.launch").click().run()
    assert not at.exception
    assert len(at.error) == 1
    assert "margin" in at.error[0].value
    assert "\n" not in at.error[0].value.strip()
    assert SweepStore(store).list() == []


def test_a_sweep_beyond_its_budget_is_refused_in_one_sentence(app) -> None:
    """Six runs of a million steps of 6 x 16 images exceed the sweep budget: one sentence
    that says how long it would take and to lower it, nothing saved or queued (issue 19,
    checked on Compare's panel before the panel became a link here).

    Catches: a sweep of any size queued at once, or a budget error that escapes as a
    traceback."""
    at, store = app
    _define(at, "0.1, 0.2, 0.3, 0.4, 0.5, 0.6")
    at.number_input(key="swp.steps").set_value(1_000_000).run()
    at.button(key="swp.launch").click().run()
    assert not at.exception
    assert len(at.error) == 1
    assert "would take about" in at.error[0].value
    assert "lower" in at.error[0].value
    assert SweepStore(store).list() == []
    assert store.list() == []


def test_open_cell_in_compare_preselects_its_runs(app) -> None:
    """The cell picker's button puts the cell's runs in Compare's picker ("cmp.runs")."""
    at, store = app
    _define(at, "0.1, 0.3")
    at.number_input(key="swp.steps").set_value(2)
    at.number_input(key="swp.snapshot_every").set_value(1)
    at.button(key="swp.launch").click().run()
    sweep_id = at.session_state["swp.current"]
    _wait_finished(at, store, sweep_id)
    sweep = SweepStore(store).load(sweep_id)
    at.selectbox(key="swp.cell").set_value(1).run()
    at.button(key="swp.compare").click().run()
    assert at.session_state["cmp.runs"] == [r.run_id for r in sweep.runs if r.cell == 1]
