"""AppTest of the Miner view page: figures for every miner, clear messages for bad settings."""

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from dml_core.registry import MINERS

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    monkeypatch.setenv("DML_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setattr("pages.ui.RUNS_DIR", str(tmp_path / "runs"), raising=False)
    at = AppTest.from_file(str(ROOT / "pages" / "miner_view.py"), default_timeout=30)
    at.run()
    assert not at.exception
    return at


def specs(at: AppTest) -> list[dict]:
    return [json.loads(el.proto.spec) for el in at.get("plotly_chart")]


def test_default_page_shows_the_batch_the_polar_view_and_the_table(page: AppTest) -> None:
    assert page.title[0].value == "Miner view"
    assert not page.error
    charts = specs(page)
    assert len(charts) == 2
    polar = charts[1]
    polar_axes = [k for k in polar["layout"] if k.startswith("polar")]
    assert len(polar_axes) == len(MINERS)
    table = page.dataframe[0].value
    assert list(table.miner) == list(MINERS)


@pytest.mark.parametrize("miner", list(MINERS))
def test_renders_for_every_registered_miner(page: AppTest, miner: str) -> None:
    page.pills(key="mv.miners").set_value([miner]).run()
    assert not page.exception
    assert not page.error
    assert page.selectbox(key="mv.focus").value == miner
    assert list(page.dataframe[0].value.miner) == [miner]
    assert len(specs(page)) == 2


def test_changing_the_anchor_redraws(page: AppTest) -> None:
    page.number_input(key="mv.anchor").set_value(7).run()
    assert not page.exception
    assert "anchor #7" in specs(page)[1]["layout"]["title"]["text"]


@pytest.mark.parametrize(
    ("widget", "value", "field"),
    [("mv.K", 1, "'K'"), ("mv.P", 12, "'P'"), ("mv.P", 1, "'P'")],
)
def test_bad_batch_sizes_give_a_message_naming_the_field(
    page: AppTest, widget: str, value: int, field: str
) -> None:
    page.number_input(key=widget).set_value(value).run()
    assert not page.exception
    assert any(field in e.value for e in page.error)
    assert not page.get("plotly_chart")


def test_no_miner_chosen_is_explained(page: AppTest) -> None:
    page.pills(key="mv.miners").set_value([]).run()
    assert not page.exception
    assert any("'miners'" in e.value for e in page.error)


def test_anchor_is_clamped_when_the_batch_shrinks(page: AppTest) -> None:
    page.number_input(key="mv.anchor").set_value(40).run()
    page.number_input(key="mv.K").set_value(2).run()
    assert not page.exception
    assert page.number_input(key="mv.anchor").value == 11
