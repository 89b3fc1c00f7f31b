"""AppTest of the home and Train pages: widgets from the registry, clear errors, a live run."""

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

import pages.ui
from dml_core.config import margin_link
from dml_core.registry import LOSSES, MINERS
from tests.page_apps import figure_specs, live_chart_places, live_charts, number_widget
from tests.saved_runs import make_tiny_run

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    monkeypatch.setenv("DML_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setattr("pages.ui.RUNS_DIR", str(tmp_path / "runs"))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.run()
    assert not at.exception
    return at


def test_home_page_says_what_it_is_and_where_to_start(app: AppTest) -> None:
    assert app.title[0].value == "Metric Learning Playground"
    assert any("Start here" in h.value for h in app.subheader)
    assert [m.value for m in app.metric] == [str(len(LOSSES)), str(len(MINERS))]


@pytest.fixture
def train(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[AppTest]:
    """The Train page on its own (AppTest loses button clicks on pages behind st.navigation)."""
    monkeypatch.setenv("DML_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setattr("pages.ui.RUNS_DIR", str(tmp_path / "runs"))
    at = AppTest.from_file(str(ROOT / "pages" / "train.py"), default_timeout=60)
    at.run()
    assert not at.exception
    yield at
    _, manager, _ = pages.ui.services()  # this test's own, keyed by its runs dir
    manager.stop_all()


def test_train_page_is_reachable_through_the_router(app: AppTest) -> None:
    app.switch_page("pages/train.py").run()
    assert not app.exception
    assert app.title[0].value == "Train an embedding"


@pytest.mark.parametrize("loss", list(LOSSES))
def test_every_loss_renders_its_parameter_widgets(train: AppTest, loss: str) -> None:
    train.selectbox(key="cfg.loss").set_value(loss).run()
    assert not train.exception
    keys = {
        w.key
        for kind in ("slider", "number_input", "checkbox", "selectbox")
        for w in train.get(kind)
    }
    link = margin_link(loss, "semi_hard")  # the default miner
    for field in LOSSES[loss].params.model_fields:
        if link is not None and field == link.loss_field:  # one "Margin α" for loss and miner
            assert f"cfg.margin.{loss}.semi_hard" in keys
        else:
            assert f"loss.{loss}.{field}" in keys
    assert any(LOSSES[loss].equation in latex.value for latex in train.latex)


@pytest.mark.parametrize("miner", list(MINERS))
def test_every_miner_renders(train: AppTest, miner: str) -> None:
    train.selectbox(key="cfg.miner").set_value(miner).run()
    assert not train.exception
    assert not train.error


@pytest.mark.parametrize(
    ("widget", "value", "message"),
    [
        ("cfg.samples_per_class", 1, "'samples_per_class' (K) parameter must be at least 2"),
        ("cfg.samples_per_class", 500, "'samples_per_class' (K) parameter must be at most"),
        ("cfg.lr", 0.0, "'lr' parameter of the run config must be in (0, 10]"),
    ],
)
def test_invalid_settings_show_a_message_and_disable_train(
    train: AppTest, widget: str, value: float, message: str
) -> None:
    train.number_input(key=widget).set_value(value).run()
    assert not train.exception
    assert any(message in e.value for e in train.error)
    assert train.button(key="btn.train").disabled


def test_open_set_with_too_many_classes_is_explained(train: AppTest) -> None:
    train.radio(key="cfg.split").set_value("open-set").run()
    train.number_input(key="cfg.classes_per_batch").set_value(8).run()
    assert any(
        "'classes_per_batch' (P) parameter must be at most 6" in e.value for e in train.error
    )


def test_train_starts_a_background_run_and_shows_live_figures(train: AppTest) -> None:
    train.number_input(key="cfg.steps").set_value(60).run()
    train.button(key="btn.train").click().run()
    assert not train.exception
    assert train.session_state["current_run"] in train.session_state["my_runs"]
    deadline = time.monotonic() + 120
    titles: list[str] = []
    while time.monotonic() < deadline:
        time.sleep(1.0)
        train.run()  # timed fragments do not fire by themselves in AppTest
        titles = [s["layout"].get("title", {}).get("text", "") for s in figure_specs(train)]
        if any("pair distances" in t for t in titles) and any(
            "step 60" in c.value for c in train.caption
        ):
            break
    assert any("pair distances" in t for t in titles), titles
    assert any("unit sphere" in t for t in titles), titles
    assert any(t.startswith("Alignment and uniformity") for t in titles), titles
    assert any(t.startswith("Effective rank") for t in titles), titles
    assert any("step 60" in c.value for c in train.caption)


@pytest.mark.parametrize("bad", ["../../etc", "no-such-run", ""])
def test_a_bad_run_id_in_the_url_shows_the_idle_page(train: AppTest, bad: str) -> None:
    train.query_params["run"] = bad
    train.run()
    assert not train.exception
    assert any("Idle" in i.value for i in train.info)


def test_the_idle_page_previews_the_loss_at_the_sidebars_settings(train: AppTest) -> None:
    """Catches: the preview drawn at the loss's defaults instead of the sidebar's margin, or
    not redrawn when it moves: its negative-pair curve is ``loss_profile`` at the set margin."""
    from dml_core.analysis.loss_curves import loss_profile

    link = margin_link("triplet", "semi_hard")  # the defaults: one "Margin α" for both
    assert link is not None
    for margin in (0.1, 0.6):
        number_widget(train, "cfg.margin.triplet.semi_hard").set_value(margin).run()
        assert not train.exception
        specs = figure_specs(train)
        preview = [s for s in specs if "a positive and a negative" in s["layout"]["title"]["text"]]
        assert len(preview) == 1, [s["layout"]["title"]["text"] for s in specs]
        curves = [t for t in preview[0]["data"] if t.get("name") == "negative pair"]
        params = {**LOSSES["triplet"].params().model_dump(), link.loss_field: margin}
        want = loss_profile("triplet", params, "negative")
        assert curves, preview[0]["data"]
        assert curves[0]["y"] == pytest.approx(want.value.tolist(), abs=1e-6)


@pytest.mark.parametrize("run_id", [None, "tiny-digits"])
def test_a_rerun_sends_every_chart_unchanged(
    run_id: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rerun that has nothing new sends each chart as it was, so the browser draws nothing.

    The idle page's loss preview and a saved run's five snapshot figures (histogram, sphere,
    curves, alignment, rank) are live charts: each keeps its key's id, and its figure JSON is
    the same from the run that built the figure to the next, which reads it from the cache;
    ``live_chart.js`` then draws nothing.
    The projection is left out: it changes when its UMAP layout arrives between the runs.

    Catches: a cached figure function that returns the figure it built, whose JSON orders its
    properties otherwise than the cache's copies (as ``st.plotly_chart``s, each such chart got
    a new id, and the browser drew it anew on the first rerun after it was built); and a
    figure that changes with every rerun.
    """
    make_tiny_run(tmp_path / "runs")
    monkeypatch.setenv("DML_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setattr("pages.ui.RUNS_DIR", str(tmp_path / "runs"))
    at = AppTest.from_file(str(ROOT / "pages" / "train.py"), default_timeout=60)
    if run_id:
        at.query_params["run"] = run_id

    def drawn() -> tuple[list[str], dict[str, str]]:
        ids = [chart.proto.id for chart in at.get("plotly_chart")]
        live = {
            key: json.dumps(chart["spec"])
            for key, chart in live_charts(at).items()
            if not key.startswith("chart.embedding")
        }
        return ids, live

    try:
        at.run()
        built = drawn()
        at.run()
        assert not at.exception
        assert drawn() == built
        assert (len(built[0]), len(built[1])) == ((0, 5) if run_id else (0, 1))
    finally:
        _, manager, _ = pages.ui.services()
        manager.stop_all()


def test_a_clicked_point_is_marked_only_in_the_run_it_was_clicked_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A click on the embedding marks that point's true neighbours in that run alone.

    The embedding keeps its selection from snapshot to snapshot (a live chart keeps its
    identity), so its key names the run. Catches (tried): one key for every run, where
    opening another run marked the neighbours of the same probe index there.
    """
    for run_id in ("run-a", "run-b"):
        make_tiny_run(tmp_path / "runs", run_id)
    monkeypatch.setenv("DML_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setattr("pages.ui.RUNS_DIR", str(tmp_path / "runs"))
    at = AppTest.from_file(str(ROOT / "pages" / "train.py"), default_timeout=60)

    def embedding() -> tuple[str, dict]:
        (key,) = [k for k in live_charts(at) if k.startswith("chart.embedding")]
        return key, live_charts(at)[key]["spec"]

    def marked() -> set[int]:
        return {t["meta"]["index"] for t in embedding()[1]["data"] if t.get("meta")}

    try:
        at.query_params["run"] = "run-a"
        at.run()
        at.radio(key="view.method").set_value("PCA").run()
        key, _ = embedding()
        at.session_state[key] = {"selection": {"points": [{"customdata": 3}]}}
        at.run()
        assert not at.exception
        assert marked() == {3}
        at.selectbox(key="run.picker").set_value("run-b").run()  # "Open a run"
        assert not at.exception
        assert at.session_state["current_run"] == "run-b"
        assert marked() == set()
    finally:
        _, manager, _ = pages.ui.services()
        manager.stop_all()


def test_the_live_charts_keep_their_places_when_the_final_metrics_arrive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run's page with and without its final metrics puts every live chart in the same
    place, so the finished run's redraw updates the charts the user watched (their zoom kept).

    Catches: the final metrics' second row of columns added above the charts (seen in
    Chromium: all six charts mounted anew when a run finished).
    """
    store = make_tiny_run(tmp_path / "runs")
    monkeypatch.setenv("DML_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setattr("pages.ui.RUNS_DIR", str(tmp_path / "runs"))
    status_file = store.root / "tiny-digits" / "status.json"

    def places() -> dict[str, tuple[int, ...]]:
        at = AppTest.from_file(str(ROOT / "pages" / "train.py"), default_timeout=60)
        at.query_params["run"] = "tiny-digits"
        at.run()
        assert not at.exception
        return live_chart_places(at)

    before_the_verdict = places()
    final = {"precision_at_1": 0.9, "r_precision": 0.8, "map_at_r": 0.7, "nmi": 0.6}
    status = json.loads(status_file.read_text())
    status_file.write_text(json.dumps({**status, "final_metrics": final}))
    finished = places()
    assert len(finished) == 6, finished
    assert finished == before_the_verdict
