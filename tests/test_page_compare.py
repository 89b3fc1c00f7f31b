"""AppTest of the Compare page: two tiny runs side by side, messages for bad picks, a sweep."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from dml_core.config import make_config
from dml_core.runs import RunStore
from tests.page_apps import page_on_runs
from tests.saved_runs import train_and_save

ROOT = Path(__file__).resolve().parents[1]
TINY = {"steps": 20, "snapshot_every": 10, "probe_size": 100, "final_eval": True, "device": "cpu"}


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two finished tiny runs on digits (triplet and contrastive) and one on open-set."""
    root = tmp_path_factory.mktemp("runs")
    store = RunStore(root)
    settings = {
        "a-triplet": {},
        "b-contrastive": {"loss": "contrastive"},
        "c-open-set": {"split": "open-set", "classes_per_batch": 4, "final_eval": False},
    }
    for run_id, extra in settings.items():
        train_and_save(store, make_config(**{**TINY, **extra}), run_id)
    return root


@pytest.fixture
def page(runs_dir: Path, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    """The Compare page on its own, with services() built over ``runs_dir``."""
    yield from page_on_runs("compare.py", runs_dir, monkeypatch)


def test_fewer_than_two_runs_asks_for_more(page: AppTest) -> None:
    assert page.title[0].value == "Compare runs"
    assert any("at least 2" in i.value for i in page.info)
    page.multiselect(key="cmp.runs").set_value(["a-triplet"]).run()
    assert not page.exception
    assert any("at least 2" in i.value for i in page.info)
    assert not page.get("plotly_chart")


def test_two_runs_side_by_side_with_table(page: AppTest) -> None:
    page.multiselect(key="cmp.runs").set_value(["a-triplet", "b-contrastive"]).run()
    assert not page.exception
    assert not page.error
    assert len(page.get("plotly_chart")) == 4
    table = page.dataframe[0].value
    assert list(table["id"]) == ["a-triplet", "b-contrastive"]
    assert [name.split(",")[0] for name in table["run"]] == ["loss = triplet", "loss = contrastive"]
    assert table["final P@1"].notna().all()
    page.slider(key="cmp.progress").set_value(0).run()
    page.radio(key="cmp.x").set_value("wall time").run()
    assert not page.exception
    assert len(page.get("plotly_chart")) == 4


def test_runs_on_different_data_are_refused(page: AppTest) -> None:
    page.multiselect(key="cmp.runs").set_value(["a-triplet", "c-open-set"]).run()
    assert not page.exception
    assert any("different data" in e.value for e in page.error)
    assert not page.get("plotly_chart")


def test_a_sweep_submits_one_run_per_value_and_selects_them(page: AppTest, runs_dir: Path) -> None:
    page.selectbox(key="sweep.base").set_value("a-triplet").run()
    page.selectbox(key="sweep.param").set_value("margin").run()
    page.text_input(key="sweep.values.margin").set_value("0.1, 0.3").run()
    page.number_input(key="sweep.steps").set_value(2).run()
    page.button(key="sweep.launch").click().run()
    assert not page.exception
    chosen = page.multiselect(key="cmp.runs").value
    assert len(chosen) == 2
    store = RunStore(runs_dir)
    margins = [store.load(r).config.loss_params["margin"] for r in chosen]
    assert margins == [0.1, 0.3]


def test_a_bad_sweep_value_shows_the_parameter(page: AppTest) -> None:
    page.selectbox(key="sweep.param").set_value("margin").run()
    page.text_input(key="sweep.values.margin").set_value("0.1, 9").run()
    page.button(key="sweep.launch").click().run()
    assert not page.exception
    assert any("'margin'" in e.value for e in page.error)
