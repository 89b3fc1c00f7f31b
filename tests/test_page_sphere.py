"""AppTest of the Sphere & sampling page."""

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from dml_core.analysis.batch_view import SAMPLING_METHODS

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    monkeypatch.setenv("DML_RUNS_DIR", str(tmp_path / "runs"))
    at = AppTest.from_file(str(ROOT / "pages" / "sphere.py"), default_timeout=30)
    at.run()
    assert not at.exception
    return at


def specs(at: AppTest) -> list[dict]:
    return [json.loads(el.proto.spec) for el in at.get("plotly_chart")]


def test_default_page(page: AppTest) -> None:
    assert page.title[0].value == "Sphere & sampling"
    assert not page.error
    charts = specs(page)
    assert len(charts) == 3
    one = charts[0]
    assert {t["type"] for t in one["data"]} >= {"scatter", "histogram"}
    selected = charts[2]
    assert sum(t["type"] == "histogram" for t in selected["data"]) == len(SAMPLING_METHODS)
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
