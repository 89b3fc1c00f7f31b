"""Compare names runs by what differs (or by the user's name) and keeps its axes while scrubbing.

Issue 19, item 8 ("Runs are labelled only by id") and "Steady axes" across runs. Three tiny real
runs, trained once for the module: a margin sweep at D = 8 (0.1 and 0.5) and a D = 2 run at
margin 0.1, so that (m01, m05) is a margin sweep and (m01, d2) a dimension sweep.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from dml_core.analysis import compare
from dml_core.config import make_config
from dml_core.figures import compare as compare_figures
from dml_core.figures import live
from dml_core.runs import RunState, RunStore
from tests.page_apps import page_on_runs
from tests.saved_runs import train_and_save

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "dataset": "digits",
    "embedding_dim": 8,
    "classes_per_batch": 4,
    "samples_per_class": 8,
    "steps": 30,
    "snapshot_every": 15,
    "probe_size": 100,
    "final_eval": False,
    "device": "cpu",
}
RUNS = {"m01": (0.1, 8), "m05": (0.5, 8), "d2": (0.1, 2)}  # run id -> (margin, D)
TITLE_LINE_MAX = 30  # characters: a quarter of a 1000 px figure at 12 px


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("named-runs")
    store = RunStore(root)
    for run_id, (margin, dim) in RUNS.items():
        margins = {"margin": margin}
        cfg = make_config(
            **{**TINY, "embedding_dim": dim, "loss_params": margins, "miner_params": margins}
        )
        train_and_save(store, cfg, run_id)
    return root


@pytest.fixture(scope="module")
def store(runs_dir: Path) -> RunStore:
    return RunStore(runs_dir)


@contextmanager
def renamed(store: RunStore, run_id: str, text: str) -> Iterator[None]:
    """The run carries ``text`` as its name inside the block (the shared runs stay unnamed)."""
    store.set_label(run_id, text)
    try:
        yield
    finally:
        store.set_label(run_id, "")


def final_snapshots(store: RunStore, run_ids: list[str]) -> list:
    return [store.load_snapshot(r, store.snapshot_steps(r)[-1]) for r in run_ids]


def lines_of(text: str) -> list[str]:
    """The visible lines of a plotly text (``<br>`` breaks, tags dropped)."""
    return [re.sub(r"<[^>]+>", "", line) for line in text.split("<br>")]


# --- names ---------------------------------------------------------------------------------


def test_a_margin_sweep_is_named_by_its_margin(store: RunStore) -> None:
    names = compare.run_names(store, ["m01", "m05"])
    assert names == {"m01": "margin = 0.1", "m05": "margin = 0.5"}


def test_a_dimension_sweep_is_named_by_d(store: RunStore) -> None:
    assert compare.run_names(store, ["d2", "m01"]) == {"d2": "D = 2", "m01": "D = 8"}
    assert compare.run_names(store, list(RUNS)) == {
        "m01": "D = 8, margin = 0.1",
        "m05": "D = 8, margin = 0.5",
        "d2": "D = 2, margin = 0.1",
    }


def test_a_renamed_run_shows_its_name_and_names_stay_unique(store: RunStore) -> None:
    with renamed(store, "m05", "wide margin"):
        assert compare.run_names(store, ["m01", "m05"]) == {
            "m01": "margin = 0.1",
            "m05": "wide margin",
        }
    with renamed(store, "m05", "margin = 0.1"):  # a name that another run has already
        names = compare.run_names(store, ["m01", "m05"])
        assert names == {"m01": "margin = 0.1 (m01)", "m05": "margin = 0.1 (m05)"}


def test_a_setting_that_a_run_does_not_have_is_not_named(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    store.create(make_config(), "t")
    store.create(make_config(loss="contrastive"), "c")
    names = compare.run_names(store, ["t", "c"])
    assert names["t"] == "loss = triplet"  # its margin is triplet's default
    assert names["c"] == "loss = contrastive"
    assert "None" not in names["t"] + names["c"]


def test_the_results_table_lists_runs_by_name_then_id(store: RunStore) -> None:
    table = compare.results_table(store, ["m01", "m05"])
    assert list(table["run"]) == ["margin = 0.1", "margin = 0.5"]
    assert list(table["id"]) == ["m01", "m05"]


def test_long_names_wrap_between_settings_and_are_cut_after_two_lines() -> None:
    assert compare_figures.wrap_name("margin = 0.1") == "margin = 0.1"
    wrapped = compare_figures.wrap_name("D = 8, loss = triplet, margin = 0.1, soft = False, K = 4")
    assert wrapped == "D = 8, loss = triplet,<br>margin = 0.1, …"
    assert all(len(line) <= 26 for line in lines_of(compare_figures.wrap_name("x" * 90)))


# --- figures -------------------------------------------------------------------------------


def test_four_panel_titles_keep_to_a_quarter_of_the_width(store: RunStore) -> None:
    ids = ["m01", "m05", "d2", "m01"]
    snaps = final_snapshots(store, ids)
    names = [
        "D = 8, loss = triplet, margin = 0.1, soft = False",
        "D = 8, loss = triplet, margin = 0.5, soft = False",
        "D = 2, loss = contrastive, neg_margin = 1, pos_margin = 0",
        "a run whose user gave it a long name of eighty characters or nearly that many",
    ]
    titles = compare_figures.panel_titles(names, snaps)
    fig = compare_figures.histogram_panels_figure(snaps, titles)
    panel_titles = [a.text for a in fig.layout.annotations if a.yref == "paper"]
    assert len(panel_titles) == 4
    for text in panel_titles:
        assert all(len(line) <= TITLE_LINE_MAX for line in lines_of(text)), text


def test_one_reference_curve_per_distinct_d_in_its_runs_colour(store: RunStore) -> None:
    ids = ["m01", "m05", "d2"]
    names = list(compare.run_names(store, ids).values())
    fig = compare_figures.sphere_overlay_figure(
        [s.probe_emb for s in final_snapshots(store, ids)], names
    )
    runs = [t for t in fig.data if not t.name.startswith("uniform")]
    references = {t.name: t.line.color for t in fig.data if t.name.startswith("uniform")}
    assert [t.name for t in runs] == [compare_figures.wrap_name(n, 30, 3) for n in names]
    assert references == {
        "uniform on S<sup>1</sup> (D = 2)": compare_figures.run_color(2),  # d2's own
        "uniform on S<sup>7</sup> (D = 8)": compare_figures.SHARED_REFERENCE_COLOR,  # two runs
    }


def test_histogram_and_sphere_axes_stay_put_from_first_to_last_snapshot(store: RunStore) -> None:
    ids = ["m01", "d2"]
    every = [store.load_snapshot(r, s) for r in ids for s in store.snapshot_steps(r)]
    axes = live.steady_axes(every, on_sphere=True)
    assert axes.histogram.x_range == (0.0, 2.0)
    seen = []
    for step in (0, 30):
        snaps = [store.load_snapshot(r, step) for r in ids]
        hist = compare_figures.histogram_panels_figure(snaps, [str(step)] * 2, axes=axes.histogram)
        sphere = compare_figures.sphere_overlay_figure(
            [s.probe_emb for s in snaps], ids, y_max=axes.sphere_top
        )
        seen.append(
            (
                hist.layout.xaxis.range,
                hist.layout.yaxis.range,
                {(tuple(np.asarray(t.x).tolist()), t.width) for t in hist.data},  # the bins
                sphere.layout.yaxis.range,
            )
        )
    assert seen[0] == seen[1]
    assert seen[0][1][1] == pytest.approx(axes.histogram.y_max)


# --- the page ------------------------------------------------------------------------------


@pytest.fixture
def page(runs_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[AppTest]:
    """The Compare page on its own, with services() built over ``runs_dir``."""
    yield from page_on_runs("compare.py", runs_dir, monkeypatch)


def figures(at: AppTest) -> dict[str, dict]:
    """The page's plotly figures by title."""
    specs = [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]
    return {spec["layout"]["title"]["text"]: spec for spec in specs}


def panel_titles(spec: dict) -> list[str]:
    return [a["text"] for a in spec["layout"]["annotations"] if a.get("yref") == "paper"]


def legend_names(spec: dict) -> list[str]:
    return [t["name"] for t in spec["data"] if t.get("showlegend", True) and "name" in t]


def compare_runs(at: AppTest, run_ids: list[str]) -> dict[str, dict]:
    at.multiselect(key="cmp.runs").set_value(run_ids).run()
    assert not at.exception
    assert not at.error
    return figures(at)


@pytest.mark.parametrize(
    ("run_ids", "names"),
    [(["m01", "m05"], ["margin = 0.1", "margin = 0.5"]), (["m01", "d2"], ["D = 8", "D = 2"])],
    ids=["margin-sweep", "d-sweep"],
)
def test_every_figure_names_the_runs_by_what_differs(
    page: AppTest, run_ids: list[str], names: list[str]
) -> None:
    figs = compare_runs(page, run_ids)
    embedding = next(f for t, f in figs.items() if "probe images" in t)
    hist = figs["Positive and negative pair distances"]
    for spec in (embedding, hist):
        titles = panel_titles(spec)
        assert [lines_of(t)[0] for t in titles] == names
        assert not any(r in t for t in titles for r in run_ids)
    assert legend_names(figs["Retrieval on the probe set"]) == names
    sphere = legend_names(figs["Pairwise distances on the unit sphere"])
    assert [n for n in sphere if not n.startswith("uniform")] == names
    assert list(page.dataframe[0].value["run"]) == names
    status = next(c.value for c in page.caption if " step " in c.value)
    assert all(f"**{name}**" in status for name in names)


def test_the_d_sweep_draws_each_reference_curve_once_in_its_runs_colour(page: AppTest) -> None:
    sphere = compare_runs(page, ["m01", "d2"])["Pairwise distances on the unit sphere"]
    colours = {t["name"]: t["line"]["color"] for t in sphere["data"]}
    references = {n: c for n, c in colours.items() if n.startswith("uniform")}
    assert references == {
        "uniform on S<sup>7</sup> (D = 8)": colours["D = 8"],
        "uniform on S<sup>1</sup> (D = 2)": colours["D = 2"],
    }


def test_a_run_renamed_on_the_page_keeps_its_name(page: AppTest, store: RunStore) -> None:
    compare_runs(page, ["m01", "m05"])
    try:
        page.text_input(key="cmp.name.m05").set_value("wide margin").run()
        page.button(key="cmp.rename.m05").click().run()
        assert not page.exception
        assert store.label("m05") == "wide margin"
        hist = figures(page)["Positive and negative pair distances"]
        assert [lines_of(t)[0] for t in panel_titles(hist)] == ["margin = 0.1", "wide margin"]
        assert list(page.dataframe[0].value["run"]) == ["margin = 0.1", "wide margin"]
        page.text_input(key="cmp.name.m01").set_value("tab\there").run()
        page.button(key="cmp.rename.m01").click().run()
        assert not page.exception
        assert [e.value for e in page.error] == [
            "The label of a run must be one line, without control characters."
        ]
        assert store.label("m01") is None
    finally:
        store.set_label("m05", "")


def test_scrubbing_moves_the_data_but_not_the_axes(page: AppTest) -> None:
    compare_runs(page, ["m01", "d2"])
    seen = []
    for progress in (0, 100):
        page.slider(key="cmp.progress").set_value(progress).run()
        assert not page.exception
        figs = figures(page)
        hist = figs["Positive and negative pair distances"]
        sphere = figs["Pairwise distances on the unit sphere"]
        axes = (
            hist["layout"]["xaxis"]["range"],
            hist["layout"]["yaxis"]["range"],
            sphere["layout"]["xaxis"]["range"],
            sphere["layout"]["yaxis"]["range"],
        )
        data = (hist["data"][0]["x"], sphere["data"][0]["y"])
        seen.append((axes, data))
        for title in panel_titles(hist):
            assert all(len(line) <= TITLE_LINE_MAX for line in lines_of(title)), title
    (first_axes, first_data), (last_axes, last_data) = seen
    assert first_axes == last_axes
    assert first_data != last_data  # the scrubber did move the data


def test_a_picked_run_stays_picked_when_its_state_changes(page: AppTest, store: RunStore) -> None:
    compare_runs(page, ["m01", "m05"])
    try:  # a sweep's runs go from queued to training to finished while they are shown
        store.set_status("m01", state=RunState.STOPPED)
        page.run()
        assert not page.exception
        assert page.multiselect(key="cmp.runs").value == ["m01", "m05"]
    finally:
        store.set_status("m01", state=RunState.FINISHED)
