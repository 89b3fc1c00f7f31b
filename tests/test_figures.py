"""Tests for dml_core.figures.live: each builder draws exactly the data it is given."""

import copy
import json
import pickle

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
import pytest
from _plotly_utils import basevalidators
from plotly.subplots import make_subplots

from dml_core.figures import live as F
from dml_core.figures import sphere as SF
from dml_core.figures import style as S
from dml_core.geometry import distance_density
from dml_core.snapshot import Snapshot

NAMES = [f"class {c}" for c in range(10)]


def bar_edges(trace: go.Bar) -> np.ndarray:
    """The bin edges of a binned histogram trace, from each bar's [low, high) in customdata."""
    bounds = np.asarray(trace.customdata, dtype=np.float64)
    return np.append(bounds[:, 0], bounds[-1, 1])


def assert_density_bars(trace: go.Bar, values: np.ndarray, edges: np.ndarray) -> None:
    """The bars are the density of ``values`` on ``edges``, one centred bar per bin."""
    np.testing.assert_array_equal(bar_edges(trace), edges)
    np.testing.assert_allclose(trace.x, (edges[:-1] + edges[1:]) / 2)
    expected, _ = np.histogram(values, bins=edges, density=True)
    np.testing.assert_allclose(trace.y, expected, rtol=1e-12)
    assert trace.width == pytest.approx(edges[1] - edges[0])


def labelled_layout(n=90, dim=2, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, dim)), rng.integers(0, classes, n)


def test_embedding_figure_one_trace_per_class():
    layout, labels = labelled_layout()
    fig = F.embedding_figure(layout, labels, NAMES, "layout", uirevision="keep")
    assert [t.name for t in fig.data] == ["class 0", "class 1", "class 2"]
    for c, trace in enumerate(fig.data):
        assert isinstance(trace, go.Scatter)  # 90 points: SVG
        np.testing.assert_array_equal(trace.x, layout[labels == c, 0])
        np.testing.assert_array_equal(trace.y, layout[labels == c, 1])
        np.testing.assert_array_equal(trace.customdata, np.flatnonzero(labels == c))
        assert trace.marker.color == S.CLASS_COLORS[c]
    assert fig.layout.uirevision == "keep"
    assert fig.layout.yaxis.scaleanchor == "x"
    assert fig.layout.template.layout.paper_bgcolor == "white"
    json.loads(fig.to_json())


def test_use_template_gives_the_named_template_a_copy_per_figure_and_validates_after() -> None:
    named = go.Figure().update_layout(template=S.TEMPLATE, title="t")
    fast = S.use_template(go.Figure()).update_layout(title="t")
    assert fast.to_dict() == named.to_dict()
    fast.layout.template.layout.font.size = 3  # one figure's template is its own
    assert S.use_template(go.Figure()).layout.template.layout.font.size is None
    assert pio.templates[S.TEMPLATE].layout.font.size is None
    with pytest.raises(ValueError, match="not_a_property"):  # validation is back on
        fast.update_layout(not_a_property=1)


def two_panel_figure() -> go.Figure:
    """A templated figure on a 2 x 1 subplot grid, as the loss profiles are built."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True)
    fig.add_trace(go.Scatter(x=[0.0, 1.0], y=[2.0, 3.0], name="loss"), row=1, col=1)
    fig.add_trace(go.Bar(x=[0.5], y=[1.0], marker_color="#d64545"), row=2, col=1)
    return S.use_template(fig).update_layout(title="t", height=400, legend=S.LEGENDS["bottom"])


def test_a_pickled_or_deep_copied_figure_is_the_figure_with_its_subplot_grid() -> None:
    """What ``st.cache_data`` hands a page rerun is the cached figure, to the JSON sent.

    Catches: a copy that loses its subplot grid (``add_trace(row=...)`` on it would raise) or
    any property."""
    fig = two_panel_figure()
    for twin in (pickle.loads(pickle.dumps(fig)), copy.deepcopy(fig)):
        assert twin.to_dict() == fig.to_dict()
        assert json.loads(twin.to_json()) == json.loads(fig.to_json())
        twin.add_trace(go.Scatter(x=[0.0], y=[1.0]), row=2, col=1)
        assert twin.data[-1].yaxis == "y2"


def test_unpickling_a_figure_validates_only_its_subplot_axes_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Catches: copies rebuilt through ``go.Figure(dict)``, plotly's own ``__reduce__``, which
    validates every property again, the whole template's included: 33-70 ms a figure on each
    page rerun that reads a cached figure (the Train page reads six); that copy validates 163
    properties of this figure's traces, layout and template. An unvalidated copy still has
    plotly coerce its subplot axes (``_set_compound_prop``): six properties here."""
    blob = pickle.dumps(two_panel_figure())
    seen: list[str] = []
    for leaf in ("Number", "Integer", "String", "Color", "Enumerated", "Boolean", "Flaglist"):
        kind = getattr(basevalidators, leaf + "Validator")

        def noted(self, v, *args, _validate=kind.validate_coerce, **kwargs):
            seen.append(f"{self.parent_name}.{self.plotly_name}")
            return _validate(self, v, *args, **kwargs)

        monkeypatch.setattr(kind, "validate_coerce", noted)
    assert pickle.loads(blob).layout.title.text == "t"
    assert seen, "no property was seen: the spy is not in place"
    assert all(name.startswith(("layout.xaxis", "layout.yaxis")) for name in seen), seen


@pytest.mark.parametrize(("n", "kind"), [(1000, go.Scatter), (1001, go.Scattergl)])
def test_embedding_figure_draws_svg_up_to_1000_points_and_webgl_above(n, kind):
    """plotly express's render_mode="auto" rule. Catches: every layout drawn in WebGL (a
    WebGL context per redraw of the live page's 540 digits points) or every one in SVG."""
    layout, labels = labelled_layout(n=n)
    fig = F.embedding_figure(layout, labels, NAMES, "layout")
    assert {type(t) for t in fig.data} == {kind}


def test_embedding_figure_custom_data_and_unknown_label_names():
    layout, labels = labelled_layout(n=20, classes=2)
    labels[0] = 12  # beyond class_names: shown as a number, colour cycles
    extra = np.arange(20) * 10
    fig = F.embedding_figure(layout, labels, NAMES[:2], "t", customdata=extra)
    by_name = {t.name: t for t in fig.data}
    assert by_name["12"].customdata.tolist() == [0]
    assert by_name["12"].marker.color == S.CLASS_COLORS[2]
    assert sum(len(t.x) for t in fig.data) == 20


def test_embedding_figure_3d_on_sphere_adds_surface():
    points, labels = labelled_layout(n=60, dim=3)
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    fig = F.embedding_figure(points, labels, NAMES, "sphere")
    scatters = [t for t in fig.data if isinstance(t, go.Scatter3d)]
    assert sum(len(t.x) for t in scatters) == 60
    assert any(isinstance(t, go.Surface) for t in fig.data)
    off_sphere = F.embedding_figure(points * 2.0, labels, NAMES, "sphere")
    assert not any(isinstance(t, go.Surface) for t in off_sphere.data)


def test_embedding_figure_on_unit_circle_draws_circle():
    theta = np.linspace(0, 2 * np.pi, 30, endpoint=False)
    points = np.stack([np.cos(theta), np.sin(theta)], axis=1)
    fig = F.embedding_figure(points, np.zeros(30, dtype=int), NAMES, "circle")
    assert [s.type for s in fig.layout.shapes] == ["circle"]


def test_embedding_figure_rejects_bad_shapes():
    with pytest.raises(ValueError, match="layout"):
        F.embedding_figure(np.zeros((5, 4)), np.zeros(5, dtype=int), NAMES, "t")
    with pytest.raises(ValueError, match="labels"):
        F.embedding_figure(np.zeros((5, 2)), np.zeros(4, dtype=int), NAMES, "t")


def test_distance_histogram_figure():
    rng = np.random.default_rng(0)
    pos, neg = rng.uniform(0, 1, 200), rng.uniform(0.5, 2, 300)
    lines = {"margin": 0.2, "m_neg": 1.4}
    fig = F.distance_histogram_figure(pos, neg, lines, overlap=0.123, uirevision="d")
    assert len(fig.data) == 2
    edges = bar_edges(fig.data[0])  # shared: both traces on the same bins
    assert edges[0] <= min(pos.min(), neg.min())
    assert edges[-1] > max(pos.max(), neg.max())
    assert len(edges) == 62  # 60 bins over the values' range, and one past it
    assert_density_bars(fig.data[0], pos, edges)
    assert_density_bars(fig.data[1], neg, edges)
    assert [t.name for t in fig.data] == ["positive pairs (n=200)", "negative pairs (n=300)"]
    assert [s.x0 for s in fig.layout.shapes] == [0.2, 1.4]
    assert all(s.line.dash == "dash" for s in fig.layout.shapes)
    texts = [a.text for a in fig.layout.annotations]
    assert texts == ["margin = 0.2", "m_neg = 1.4"]
    assert "P(d⁻ < d⁺) ≈ 0.12" in fig.layout.title.text
    assert fig.layout.uirevision == "d"
    json.loads(fig.to_json())


def test_distance_histogram_without_lines_overlap_or_data():
    fig = F.distance_histogram_figure(np.array([]), np.array([]), {}, None)
    assert len(fig.data) == 2
    assert "P(" not in fig.layout.title.text
    assert not fig.layout.shapes
    fig.to_json()


def test_sphere_distance_figure_matches_pairs_and_density():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(50, 8)) * 3.0
    fig = SF.sphere_distance_figure(emb, uirevision="s")
    hist, curve = fig.data
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    expected = np.linalg.norm(unit[:, None] - unit[None], axis=-1)[np.triu_indices(50, 1)]
    assert_density_bars(hist, expected, np.linspace(0.0, 2.0, 81))  # SPHERE_BINS: 0.025 wide
    assert hist.name == "50 probe points (1225 pairs)"
    assert curve.name == "uniform on S<sup>7</sup>"
    np.testing.assert_allclose(curve.y, distance_density(np.asarray(curve.x), dim=8))
    assert np.trapezoid(curve.y, curve.x) == pytest.approx(1.0, abs=1e-3)
    assert fig.layout.shapes[0].x0 == pytest.approx(np.sqrt(2))
    assert fig.layout.shapes[0].line.dash == "dot"
    assert fig.layout.uirevision == "s"


def test_sphere_distance_figure_subsamples_deterministically():
    emb = np.random.default_rng(1).normal(size=(300, 4))
    first = SF.sphere_distance_figure(emb, max_points=40)
    second = SF.sphere_distance_figure(emb, max_points=40)
    assert first.data[0].name == f"40 probe points ({40 * 39 // 2} pairs)"
    np.testing.assert_array_equal(first.data[0].y, second.data[0].y)


def test_a_histogram_carries_its_bins_not_its_values():
    """Catches: histogram traces that ship every value for the browser to bin (the sphere
    histogram of 1000 points would carry 499,500 distances, about 5 MB of JSON)."""
    emb = np.random.default_rng(2).normal(size=(1000, 16))
    fig = SF.sphere_distance_figure(emb)
    assert fig.data[0].name == "1000 probe points (499500 pairs)"
    assert len(fig.data[0].y) == 80
    assert len(fig.to_json()) < 100_000


def history(n=5, columns=None):
    frame = pd.DataFrame(
        {
            "step": np.arange(n) * 10,
            "loss": np.linspace(1, 0.1, n),
            "active_fraction": np.linspace(1, 0.2, n),
            "easy": np.linspace(0, 0.8, n),
            "semi-hard": np.linspace(0.5, 0.1, n),
            "hard": np.linspace(0.5, 0.1, n),
            "empty_batches": np.linspace(0.0, 0.3, n),
            "tuples_per_batch": np.linspace(900, 300, n),
            "precision_at_1": np.linspace(0.2, 0.9, n),
            "r_precision": np.linspace(0.1, 0.7, n),
            "map_at_r": np.linspace(0.05, 0.6, n),
            "beta": np.full(n, 1.2),
            "mean_distance": np.linspace(1.4, 1.0, n),
        }
    )
    return frame if columns is None else frame[columns]


def test_curves_figure_all_columns():
    frame = history()
    fig = F.curves_figure(frame, uirevision="c")
    names = [t.name for t in fig.data]
    assert names == [
        "loss",
        "active (loss > 0)",
        "easy",
        "semi-hard",
        "hard",
        "batches with none",
        "P@1",
        "R-Precision",
        "MAP@R",
        "tuples per batch",
        "beta",
        "mean distance",
    ]
    shares = next(t for t in fig.data if t.name == "batches with none")
    assert tuple(fig.layout[shares.yaxis.replace("y", "yaxis")].range) == (0.0, 1.02)
    loss = fig.data[0]
    np.testing.assert_array_equal(loss.x, frame["step"])
    np.testing.assert_array_equal(loss.y, frame["loss"])
    retrieval = next(t for t in fig.data if t.name == "P@1")
    assert tuple(fig.layout[retrieval.yaxis.replace("y", "yaxis")].range) == (0.0, 1.02)
    # a count starts at 0: a constant 192 tuples per batch must not read as 192.5 vs 193
    tuples = next(t for t in fig.data if t.name == "tuples per batch")
    assert fig.layout[tuples.yaxis.replace("y", "yaxis")].rangemode == "tozero"
    assert fig.layout.uirevision == "c"
    json.loads(fig.to_json())


def test_curves_figure_missing_columns_are_skipped():
    fig = F.curves_figure(history(columns=["step", "loss", "precision_at_1"]))
    assert [t.name for t in fig.data] == ["loss", "P@1"]
    notes = [a.text for a in fig.layout.annotations]
    assert notes.count("not recorded in this run") == 3  # shares, tuples per batch, scalars
    spots = [(a.x, a.y) for a in fig.layout.annotations if a.text == "not recorded in this run"]
    centres = [
        (np.mean(fig.layout[f"xaxis{i}"].domain), np.mean(fig.layout[f"yaxis{i}"].domain))
        for i in (2, 4, 5)
    ]
    np.testing.assert_allclose(spots, centres)
    assert fig.layout.xaxis2.showticklabels is False
    assert fig.layout.xaxis.showticklabels is not False
    no_step = F.curves_figure(history(columns=["loss"]))
    np.testing.assert_array_equal(no_step.data[0].x, np.arange(5))
    with_gap = history()
    with_gap.loc[1, "map_at_r"] = np.nan
    F.curves_figure(with_gap).to_json()


def test_curves_marker_is_one_line_per_drawn_panel_on_its_own_axes():
    """The scrubbed step is a dotted line across each panel that has curves, on that panel's
    own x-axis, from the bottom to the top of its plot; none on a "not recorded" panel.

    Catches: every line on the first panel's axes, a line on a panel without curves, or a
    line that spans only the data instead of the panel.
    """
    fig = F.curves_figure(history(columns=["step", "loss", "precision_at_1"]), marker_x=20)
    drawn = sorted({(t.xaxis, t.yaxis) for t in fig.data})  # [("x", "y"), ("x3", "y3")]
    lines = sorted((s.xref, s.yref.removesuffix(" domain")) for s in fig.layout.shapes)
    assert lines == drawn
    for shape in fig.layout.shapes:
        assert (shape.type, shape.x0, shape.x1, shape.y0, shape.y1) == ("line", 20, 20, 0, 1)
        assert shape.yref.endswith(" domain")
        assert shape.line.dash == "dot"
    assert not F.curves_figure(history(), marker_x=None).layout.shapes


def test_curves_figure_empty_frame_waits():
    for frame in (pd.DataFrame(), F.history_frame([])):
        fig = F.curves_figure(frame, uirevision="c")
        assert not fig.data
        assert [a.text for a in fig.layout.annotations] == [S.WAITING]
        assert fig.layout.uirevision == "c"
        fig.to_json()


def test_density_figure_curves_and_samples():
    samples = {8: np.random.default_rng(0).uniform(0, 2, 100)}
    fig = SF.density_figure([2, 8, 128], samples=samples)
    curves = [t for t in fig.data if isinstance(t, go.Scatter)]
    hists = [t for t in fig.data if isinstance(t, go.Bar)]
    assert [t.name for t in curves] == ["n = 2", "n = 8", "n = 128"]
    for trace in curves[1:]:
        assert np.trapezoid(trace.y, trace.x) == pytest.approx(1.0, abs=1e-3)
    assert np.all(np.isfinite(curves[0].y))
    assert_density_bars(hists[0], samples[8], np.linspace(0.0, 2.0, 101))
    assert fig.layout.template.layout.paper_bgcolor == "white"
    fig.to_json()


def make_snapshot(step, **extra):
    return Snapshot(
        step=step,
        samples_seen=step * 32,
        elapsed=step / 10,
        loss=1.0 / (step + 1),
        active_fraction=0.5,
        probe_emb=np.zeros((4, 2), dtype=np.float32),
        probe_labels=np.zeros(4, dtype=np.int64),
        pos_dist=np.zeros(3, dtype=np.float32),
        neg_dist=np.zeros(3, dtype=np.float32),
        **extra,
    )


def test_history_frame_rows_and_columns():
    snaps = [
        make_snapshot(0),
        make_snapshot(10, metrics={"precision_at_1": 0.5}, kind_shares={"hard": 0.1}),
    ]
    frame = F.history_frame(snaps)
    assert frame["step"].tolist() == [0, 10]
    assert frame["samples_seen"].tolist() == [0, 320]
    assert np.isnan(frame["precision_at_1"].iloc[0])
    assert frame["precision_at_1"].iloc[1] == 0.5
    fig = F.curves_figure(frame)
    assert {"loss", "active (loss > 0)", "hard", "P@1"} <= {t.name for t in fig.data}
    assert list(F.history_frame([]).columns) == [
        "step",
        "samples_seen",
        "elapsed",
        "loss",
        "active_fraction",
    ]


@pytest.mark.parametrize(
    ("plain", "shown"),
    [
        ("d(a,n) = d(a,p) + alpha", "d(a,n) = d(a,p) + α"),
        ("beta - alpha", "β − α"),
        ("d(a,n)^2 = d(a,p)^2 + alpha1", "d(a,n)² = d(a,p)² + α₁"),
        ("soft-plus instead of the hinge [x]_+", "soft-plus instead of the hinge [x]₊"),
        ("cos(x, own) = delta", "cos(x, own) = δ"),
        ("alphabet betas m_neg", "alphabet betas m_neg"),  # whole words only
        ("theta_own + m = theta_other", "θ_own + m = θ_other"),  # a named subscript follows
    ],
)
def test_math_text_rewrites_ascii_maths(plain: str, shown: str) -> None:
    assert S.math_text(plain) == shown


def test_split_symbol_takes_the_equation_symbol_off_a_description() -> None:
    assert S.split_symbol("alpha2: margin of the second term") == (
        "α₂",
        "margin of the second term",
    )
    assert S.split_symbol("m_neg: margin on negatives") == ("m_neg", "margin on negatives")
    assert S.split_symbol("T: temperature") == ("T", "temperature")
    assert S.split_symbol("R - 1: bins") == ("R − 1", "bins")
    assert S.split_symbol("tau: temperature") == ("τ", "temperature")
    assert S.split_symbol("K: sub-centres per class") == ("K", "sub-centres per class")
    # a leading word that is no symbol stays part of the text
    assert S.split_symbol("mse: the paper's loss") == (None, "mse: the paper's loss")
    assert S.split_symbol("no symbol here") == (None, "no symbol here")


def test_histogram_margin_labels_are_shown_with_greek_letters() -> None:
    fig = F.distance_histogram_figure(
        np.array([0.2, 0.3]), np.array([1.2, 1.4]), {"beta - alpha": 0.7, "beta": 0.9}, None
    )
    texts = [a.text for a in fig.layout.annotations]
    assert "β − α = 0.7" in texts
    assert "β = 0.9" in texts


def test_each_curve_keeps_one_colour_and_none_is_green_or_red():
    """Catches: colours by plotting order (P@1 brown in one run, green in another)."""
    full = F.curves_figure(history())
    part = F.curves_figure(history(columns=["step", "precision_at_1", "map_at_r"]))
    colours = {t.name: t.line.color for t in full.data}
    assert {t.name: t.line.color for t in part.data} == {
        name: colours[name] for name in ("P@1", "MAP@R")
    }
    assert len(set(colours.values())) == len(colours)
    assert not {S.POSITIVE_COLOR, S.NEGATIVE_COLOR} & set(colours.values())
