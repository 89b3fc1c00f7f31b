"""AppTest of the Loss explorer: every loss renders its curves, equation and boundaries."""

import base64
import json
import time
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from dml_core.analysis import loss_curves, loss_geometry
from dml_core.errors import ConfigError
from dml_core.losses.triplet import TripletLoss
from dml_core.registry import LOSSES
from tests.page_apps import number_widget

ROOT = Path(__file__).resolve().parents[1]
PAGE = str(ROOT / "pages" / "loss_explorer.py")


def specs(at: AppTest) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


def trace_types(spec: dict) -> set[str]:
    return {trace.get("type", "scatter") for trace in spec["data"]}


@pytest.fixture
def explorer() -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=30).run()
    assert not at.exception
    return at


def test_opens_on_the_triplet_loss_with_profiles_and_a_heat_map(explorer: AppTest) -> None:
    assert explorer.title[0].value == "Loss explorer"
    assert any(LOSSES["triplet"].equation in latex.value for latex in explorer.latex)
    charts = specs(explorer)
    titles = [s["layout"]["title"]["text"] for s in charts]
    assert any(t.startswith("Positive pair") and "d(a,n) = 1" in t for t in titles)
    assert any(t.startswith("Negative pair") and "d(a,p) = 0.5" in t for t in titles)
    heat = next(s for s in charts if "heatmap" in trace_types(s))
    names = [t.get("name") for t in heat["data"]]
    assert "d(a,n) = d(a,p) + α" in names
    notes = [m.value for m in explorer.markdown if "how much farther the negative" in m.value]
    assert notes
    assert "(α in the equation)" in notes[0], notes
    assert "[x]₊" in notes[0], notes
    assert "[x]_+" not in notes[0], notes


@pytest.mark.parametrize("name", list(LOSSES))
def test_every_loss_renders_curves_equation_and_parameter_widgets(
    explorer: AppTest, name: str
) -> None:
    explorer.selectbox(key="explorer.loss").set_value(name).run()
    assert not explorer.exception
    assert not explorer.error
    charts = specs(explorer)
    assert len(charts) >= 3
    assert any("heatmap" in trace_types(s) for s in charts)
    profile = next(s for s in charts if s["layout"]["title"]["text"].startswith("Positive pair"))
    assert len(profile["data"]) == 2  # value and |grad|
    assert any(LOSSES[name].equation in latex.value for latex in explorer.latex)
    keys = {
        w.key
        for kind in ("slider", "number_input", "checkbox", "selectbox")
        for w in explorer.get(kind)
    }
    assert {f"explorer.{name}.{field}" for field in LOSSES[name].params.model_fields} <= keys


@pytest.mark.parametrize("name", ["circle", "proxy_anchor", "histogram"])
def test_similarity_axis(explorer: AppTest, name: str) -> None:
    explorer.selectbox(key="explorer.loss").set_value(name).run()
    explorer.radio(key="explorer.scale").set_value("similarity").run()
    assert not explorer.exception
    titles = [s["layout"]["title"]["text"] for s in specs(explorer)]
    if name == "circle":
        assert any("(s_n, s_p) plane" in t for t in titles)
    x_titles = [s["layout"]["xaxis2"]["title"]["text"] for s in specs(explorer)[:2]]
    assert x_titles[0].startswith(("s_p", "cos(x, own proxy)"))


def test_circle_loss_also_shows_its_circular_boundary_in_the_similarity_plane(
    explorer: AppTest,
) -> None:
    explorer.selectbox(key="explorer.loss").set_value("circle").run()
    circle = next(s for s in specs(explorer) if "Sun et al. 2020" in s["layout"]["title"]["text"])
    names = [t.get("name") or "" for t in circle["data"]]
    assert any(n.startswith("circle:") for n in names)
    assert any(n.startswith("linear:") for n in names)


def test_compare_overlays_a_second_setting_of_the_same_loss(explorer: AppTest) -> None:
    explorer.toggle(key="explorer.compare").set_value(True).run()
    explorer.slider(key="explorer2.triplet.margin").set_value(0.5).run()
    assert not explorer.exception
    profile = specs(explorer)[0]
    legend = [t["name"] for t in profile["data"] if t.get("showlegend", True)]
    assert legend == ["triplet (margin=0.2, soft=False)", "triplet (margin=0.5, soft=False)"]
    assert sum("heatmap" in trace_types(s) for s in specs(explorer)) == 2


def test_compare_overlays_a_second_loss(explorer: AppTest) -> None:
    explorer.toggle(key="explorer.compare").set_value(True).run()
    explorer.selectbox(key="explorer2.loss").set_value("contrastive").run()
    assert not explorer.exception
    legend = [t["name"] for t in specs(explorer)[1]["data"] if t.get("showlegend", True)]
    assert legend[1].startswith("contrastive")
    assert any(m.value == "**contrastive**" for m in explorer.markdown)


def test_an_overlaid_pair_loss_is_labelled_by_its_own_coordinates(explorer: AppTest) -> None:
    explorer.selectbox(key="explorer.loss").set_value("proxy_anchor").run()
    explorer.toggle(key="explorer.compare").set_value(True).run()
    explorer.selectbox(key="explorer2.loss").set_value("contrastive").run()
    assert not explorer.exception
    positive, negative = specs(explorer)[:2]
    for spec, own, held in ((positive, "d(a,p)", "d(a,n)"), (negative, "d(a,n)", "d(a,p)")):
        assert f"contrastive: {own}" in spec["layout"]["xaxis2"]["title"]["text"]
        assert f"contrastive: {held} = " in spec["layout"]["title"]["subtitle"]["text"]
        contrastive = next(t for t in spec["data"] if t["name"].startswith("contrastive"))
        assert contrastive["hovertemplate"].startswith(f"{own} = ")
    sliders = {s.key: s.label for s in explorer.slider}
    assert sliders["explorer.held.distance.negative"] == "d(x, other proxy) / d(a,n) held at"
    assert sliders["explorer.held.distance.positive"] == "d(x, own proxy) / d(a,p) held at"


def test_figures_keep_the_legend_below_and_the_title_clear(explorer: AppTest) -> None:
    explorer.selectbox(key="explorer.loss").set_value("circle").run()
    explorer.toggle(key="explorer.compare").set_value(True).run()
    for spec in specs(explorer):
        legend, title = spec["layout"]["legend"], spec["layout"]["title"]
        assert (legend["yref"], legend["y"], legend["yanchor"]) == ("container", 0, "bottom")
        assert (title["yref"], title["y"], title["yanchor"]) == ("container", 1, "top")


def test_a_rejected_setting_shows_a_message_not_a_traceback(
    explorer: AppTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    def reject(name, params=None):
        raise ConfigError("The 'margin' parameter of triplet must be in (0, 2]. Got -1.")

    monkeypatch.setattr(loss_curves, "build_loss", reject)
    explorer.run()
    assert not explorer.exception
    assert any("'margin' parameter of triplet" in e.value for e in explorer.error)


def test_a_loss_without_a_curve_says_so(explorer: AppTest, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_curve(self, d_ap, d_an):
        raise NotImplementedError

    monkeypatch.setattr(TripletLoss, "curve", no_curve)
    explorer.run()
    assert not explorer.exception
    assert any("defines no curve" in e.value for e in explorer.error)


def test_redraws_in_well_under_two_seconds_of_cpu(explorer: AppTest) -> None:
    # Imports are warm, as in a running server. CPU time of the whole process (all threads),
    # not wall time, so a busy test machine does not make this flaky.
    explorer.selectbox(key="explorer.loss").set_value("histogram").run()  # the slowest curve
    start = time.process_time()
    explorer.run()
    assert time.process_time() - start < 2.0


def plotted(trace: dict, axis: str) -> np.ndarray:
    """A trace's x or y values; plotly writes numpy arrays as base64 ``bdata``."""
    values = trace[axis]
    if isinstance(values, dict):
        return np.frombuffer(base64.b64decode(values["bdata"]), dtype=values["dtype"])
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


# (loss, non-default values set through its widgets)
SETTINGS = [
    ("triplet", {"margin": 0.7}),
    ("contrastive", {"pos_margin": 0.3, "neg_margin": 1.4}),
    ("multi_similarity", {"alpha": 4.0, "beta": 20.0, "lam": 0.3}),
]


@pytest.mark.parametrize(("name", "values"), SETTINGS, ids=[s[0] for s in SETTINGS])
def test_plotted_profiles_at_non_default_parameters_are_loss_profile(
    name: str, values: dict
) -> None:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    at.switch_page("pages/loss_explorer.py").run()
    set_params(at, name, values)
    params = LOSSES[name].defaults() | values
    charts = specs(at)
    for chart, axis, fixed in ((charts[0], "positive", 1.0), (charts[1], "negative", 0.5)):
        expected = loss_curves.loss_profile(name, params, axis, fixed=fixed)
        value, grad = chart["data"][:2]
        np.testing.assert_allclose(plotted(value, "x"), expected.x)
        np.testing.assert_allclose(plotted(value, "y"), expected.value, rtol=1e-12)
        np.testing.assert_allclose(plotted(grad, "y"), np.abs(expected.grad), rtol=1e-12)
    assert not np.allclose(
        plotted(charts[0]["data"][0], "y"), loss_curves.loss_profile(name).value
    ), "the setting does not change the plotted curve: the check would be vacuous"


def set_params(at: AppTest, name: str, values: dict) -> None:
    """Pick ``name`` and set its parameters through their registry widgets."""
    at.selectbox(key="explorer.loss").set_value(name).run()
    for field, value in values.items():
        number_widget(at, f"explorer.{name}.{field}").set_value(value).run()
    assert not at.exception


def titled(at: AppTest, start: str) -> list[dict]:
    return [s for s in specs(at) if s["layout"]["title"]["text"].startswith(start)]


@pytest.mark.parametrize("name", ["ntxent", "supcon"])
def test_plotted_negative_weights_at_a_non_default_tau_are_the_analysis(
    explorer: AppTest, name: str
) -> None:
    """The hardness view plots ``negative_weights`` at the slider's tau, highlighted.

    Catches: the page ignoring the slider (the default tau 0.1 would be the thick curve and the
    0.3 curve missing), or plotting anything but the analysis's weights.
    """
    set_params(explorer, name, {"temperature": 0.3})
    (chart,) = titled(explorer, f"{name}: how much each negative pushes back")
    expected = loss_geometry.negative_weights(name, {"temperature": 0.3})
    curves = chart["data"][: len(expected.values)]
    for trace, row in zip(curves, expected.weight, strict=True):
        np.testing.assert_allclose(plotted(trace, "x"), expected.similarity)
        np.testing.assert_allclose(plotted(trace, "y"), row, rtol=1e-12)
    (chosen,) = [t for t in curves if "(yours)" in t["name"]]
    assert chosen["name"].startswith("τ = 0.3 (yours)")
    explorer.toggle(key="explorer.hardness.log").set_value(True).run()
    assert titled(explorer, f"{name}: how much")[0]["layout"]["yaxis"]["type"] == "log"
    assert not titled(explorer, "Decision boundary")


# (loss, non-default values) of the losses that declare angular boundaries
ANGULAR = [
    ("arcface", {"margin": 0.3}),
    ("cosface", {"margin": 0.2}),
    ("sub_center_arcface", {"margin": 0.7}),
    ("normalized_softmax", {"temperature": 0.3}),
]


@pytest.mark.parametrize(("name", "values"), ANGULAR, ids=[a[0] for a in ANGULAR])
def test_plotted_angular_boundaries_at_non_default_parameters_are_the_analysis(
    explorer: AppTest, name: str, values: dict
) -> None:
    """The angle view plots ``angular_plane`` (degrees) at the sliders' margin.

    Catches a page that draws the default margin or a retyped boundary.
    """
    set_params(explorer, name, values)
    (chart,) = titled(explorer, "Decision boundary between two classes")
    params = LOSSES[name].defaults() | values
    (boundary,) = loss_geometry.angular_plane(name, params).boundaries
    (line,) = [t for t in chart["data"] if t["name"].startswith(name) and "fill" not in t]
    np.testing.assert_allclose(plotted(line, "x"), np.degrees(boundary.theta_own))
    np.testing.assert_allclose(plotted(line, "y"), np.degrees(boundary.theta_other), rtol=1e-12)
    (default,) = loss_geometry.angular_plane(name).boundaries
    if name != "normalized_softmax":  # its T does not move the boundary
        assert not np.allclose(
            np.nan_to_num(plotted(line, "y")), np.nan_to_num(np.degrees(default.theta_other))
        ), "the setting does not change the plotted boundary: the check would be vacuous"
    assert not titled(explorer, f"{name}: how much")


def test_compare_overlays_a_second_angular_loss(explorer: AppTest) -> None:
    set_params(explorer, "arcface", {})
    explorer.toggle(key="explorer.compare").set_value(True).run()
    explorer.selectbox(key="explorer2.loss").set_value("cosface").run()
    (chart,) = titled(explorer, "Decision boundary between two classes")
    names = [t["name"] for t in chart["data"]]
    assert any(n.startswith("arcface (") for n in names)
    assert any(n.startswith("cosface (") for n in names)


def test_losses_without_these_views_show_neither(explorer: AppTest) -> None:
    assert not titled(explorer, "Decision boundary between two classes")
    assert not [s for s in specs(explorer) if "pushes back" in s["layout"]["title"]["text"]]
