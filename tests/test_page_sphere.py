"""AppTest of the Sphere & sampling page."""

import base64
import json
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from dml_core.analysis.sphere import SAMPLING_METHODS

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    monkeypatch.setenv("DML_RUNS_DIR", str(tmp_path / "runs"))
    at = AppTest.from_file(str(ROOT / "pages" / "sphere.py"), default_timeout=30)
    at.run()
    assert not at.exception
    assert not at.warning
    return at


def specs(at: AppTest) -> list[dict]:
    return [json.loads(el.proto.spec) for el in at.get("plotly_chart")]


def test_default_page(page: AppTest) -> None:
    assert page.title[0].value == "Sphere & sampling"
    assert not page.error
    charts = specs(page)
    assert len(charts) == 3
    one = charts[0]
    assert {t["type"] for t in one["data"]} >= {"scatter", "bar"}
    selected = charts[2]
    assert sum(t["type"] == "bar" for t in selected["data"]) == len(SAMPLING_METHODS)
    assert list(page.dataframe[0].value.method) == list(SAMPLING_METHODS)
    assert any("Sampling Matters" in c.value for c in page.caption)


@pytest.mark.parametrize("n", [2, 3, 512])
def test_every_end_of_the_dimension_slider(page: AppTest, n: int) -> None:
    page.select_slider(key="sp.n").set_value(n).run()
    assert not page.exception
    assert not page.error
    assert f"S<sup>{n - 1}</sup>" in specs(page)[0]["layout"]["title"]["text"]


@pytest.mark.parametrize(("widget", "field"), [("sp.K", "'K'"), ("sp.P", "'P'")])
def test_a_batch_without_positives_or_negatives_is_explained(
    page: AppTest, widget: str, field: str
) -> None:
    page.number_input(key=widget).set_value(1).run()
    assert not page.exception
    assert any(field in e.value for e in page.error)


def x_ranges(chart: dict) -> list[list[float]]:
    return [v["range"] for k, v in chart["layout"].items() if k.startswith("xaxis")]


def values(array: list | dict) -> np.ndarray:
    """A plotly array from the figure spec: a list, or typed base64 ``{dtype, bdata}``."""
    if isinstance(array, dict):
        return np.frombuffer(base64.b64decode(array["bdata"]), dtype=array["dtype"]).astype(float)
    return np.asarray(array, dtype=float)


def shown_peak(chart: dict) -> float:
    """The largest density a bar, histogram or curve reaches inside the chart's x-range."""
    low, high = x_ranges(chart)[0]
    peak = 0.0
    for trace in chart["data"]:
        if trace["type"] in ("bar", "scatter"):  # a histogram's bars are binned densities
            x, y = values(trace["x"]), values(trace["y"])
        else:
            continue
        inside = (x >= low) & (x <= high)
        if inside.any():
            peak = max(peak, float(np.nanmax(y[inside])))
    return peak


@pytest.mark.parametrize("n", [2, 512])
def test_distance_axes_stay_0_to_2_at_every_n(page: AppTest, n: int) -> None:
    page.select_slider(key="sp.n").set_value(n).run()
    assert not page.exception
    assert page.toggle(key="sp.zoom").value is False
    one, _, selected = specs(page)
    for chart in (one, selected):
        assert x_ranges(chart)
        assert all(r == [0.0, 2.0] for r in x_ranges(chart))
        top = chart["layout"]["yaxis"]["range"][1]
        assert shown_peak(chart) <= top <= 1.1 * shown_peak(chart)


def test_zoom_follows_the_distances(page: AppTest) -> None:
    page.select_slider(key="sp.n").set_value(512).run()
    page.toggle(key="sp.zoom").set_value(True).run()
    assert not page.exception
    one, _, selected = specs(page)
    for chart in (one, selected):
        low, high = x_ranges(chart)[0]
        assert 1.0 < low < 2**0.5 < high < 1.8
        top = chart["layout"]["yaxis"]["range"][1]
        assert shown_peak(chart) <= top <= 1.1 * shown_peak(chart)


def test_a_32_by_32_batch_answers_in_one_piece(page: AppTest) -> None:
    page.number_input(key="sp.P").set_value(32).run()
    page.number_input(key="sp.K").set_value(32).run()
    assert not page.exception
    assert not page.warning
    if page.error:  # a refusal is one sentence, and nothing half-drawn
        assert len(page.error) == 1
        assert ". " not in page.error[0].value
    else:
        assert len(specs(page)) == 3
        table = page.dataframe[0].value
        assert list(table.method) == list(SAMPLING_METHODS)
        assert (table.triplets > 0).all()
        assert any("drawn at random" in c.value for c in page.caption)
