"""AppTest of the Compare page: two tiny runs side by side, messages for bad picks, the link
to the Sweep page (and that page opened from it)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs

import pytest
from streamlit.testing.v1 import AppTest

from dml_core.analysis import compare
from dml_core.config import make_config
from dml_core.runs import RunStore
from dml_core.services import sweep_session
from dml_core.sweeps import SweepStore
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


@pytest.fixture
def routed(runs_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[AppTest]:
    """The whole app (app.py's navigation, where page links resolve), on Compare."""
    import pages.ui

    monkeypatch.setenv("DML_RUNS_DIR", str(runs_dir))
    monkeypatch.setattr(pages.ui, "RUNS_DIR", str(runs_dir))
    pages.ui._jobs.clear()
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.run()
    at.switch_page("pages/compare.py").run()
    assert not at.exception
    yield at
    pages.ui._jobs.clear()


def sweep_page(runs_dir: Path, monkeypatch: pytest.MonkeyPatch, query: dict) -> AppTest:
    """The Sweep page alone, opened with ``query`` (as Compare's link opens it)."""
    import pages.ui

    monkeypatch.setenv("DML_RUNS_DIR", str(runs_dir))
    monkeypatch.setattr(pages.ui, "RUNS_DIR", str(runs_dir))
    pages.ui._jobs.clear()
    at = AppTest.from_file(str(ROOT / "pages" / "sweep.py"), default_timeout=60)
    at.query_params.update(query)
    at.run()
    assert not at.exception
    return at


def test_the_sweep_panel_links_to_the_sweep_page_with_its_parameter(
    routed: AppTest, runs_dir: Path
) -> None:
    """Compare no longer trains sweeps: its panel is one link to the Sweep page whose query
    names the chosen parameter and base run.

    Catches: a link to another page, a query that drops the base or the parameter (the
    Sweep page would open on its defaults), a panel that still launches runs itself.
    """
    routed.selectbox(key="sweep.base").set_value("a-triplet").run()
    routed.selectbox(key="sweep.param").set_value("embedding_dim").run()
    assert not routed.exception
    links = [link.proto for link in routed.get("page_link") if "Sweep" in link.proto.label]
    assert len(links) == 1
    assert links[0].page == "sweep"
    assert parse_qs(links[0].query_string) == {"axis": ["embedding_dim"], "base": ["a-triplet"]}
    assert not [b for b in routed.button if b.key == "sweep.launch"]
    routed.selectbox(key="sweep.base").set_value("defaults").run()
    (link,) = [link.proto for link in routed.get("page_link") if "Sweep" in link.proto.label]
    assert parse_qs(link.query_string) == {"axis": ["embedding_dim"]}
    assert sorted(RunStore(runs_dir).list()) == ["a-triplet", "b-contrastive", "c-open-set"]


def test_the_link_opens_the_sweep_page_with_that_base_and_axis(
    runs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Followed, the link opens the grid on the linked base run and axis, with the values
    Compare used to suggest; launched, it is one run per value of that parameter from that
    base (the old panel's sweep, now with seeds).

    Catches: a Sweep page that ignores the query (base "defaults", axis margin), values
    not suggested from the base, a sweep from another base (the loss would be triplet).
    """
    try:
        query = compare.sweep_link("b-contrastive", "embedding_dim")
        at = sweep_page(runs_dir, monkeypatch, query)
        assert at.selectbox(key="swp.base").value == "b-contrastive"
        assert at.selectbox(key="swp.axis0").value == "embedding_dim"
        base = RunStore(runs_dir).load("b-contrastive").config
        suggested = compare.suggested_values(base, "embedding_dim")
        assert at.text_input(key="swp.values0.embedding_dim").value == suggested
        at.text_input(key="swp.values0.embedding_dim").set_value("4, 16").run()
        at.number_input(key="swp.steps").set_value(2)
        at.number_input(key="swp.seeds").set_value(1)
        at.button(key="swp.launch").click().run()
        assert not at.exception
        assert not at.error, [e.value for e in at.error]
        sweep = SweepStore(RunStore(runs_dir)).load(at.session_state["swp.current"])
        configs = [sweep.config(run) for run in sweep.runs]
        assert [c.embedding_dim for c in configs] == [4, 16]
        assert {(c.loss, c.steps, c.seed) for c in configs} == {("contrastive", 2, base.seed)}
    finally:
        sweep_session.stop_all_shared()
        for run_id in RunStore(runs_dir).list():  # the module's runs stay as they were
            if run_id.startswith("sweep-"):
                RunStore(runs_dir).delete(run_id)


@pytest.mark.parametrize(
    ("query", "base", "axis"),
    [
        ({"axis": "embedding_dim", "base": "deleted-run"}, "defaults", "embedding_dim"),
        ({"axis": "no-such-parameter"}, "defaults", "margin"),
        ({}, "defaults", "margin"),
    ],
)
def test_a_stale_or_empty_link_opens_the_sweep_page_on_its_defaults(
    runs_dir: Path, monkeypatch: pytest.MonkeyPatch, query: dict, base: str, axis: str
) -> None:
    """A link to a deleted run or an unknown parameter opens the page on its defaults.

    Catches: a ValueError from ``options.index`` for a base or axis that is not offered.
    """
    at = sweep_page(runs_dir, monkeypatch, query)
    assert at.selectbox(key="swp.base").value == base
    assert at.selectbox(key="swp.axis0").value == axis
