"""Tests for dml_core.figures.diagnostics: each figure draws exactly the recorded values."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from dml_core.figures import diagnostics as D
from dml_core.figures import live as F
from dml_core.figures import style as S

NAMES = [f"class {c}" for c in range(10)]


def history(shuffled: bool = True) -> pd.DataFrame:
    """Four snapshots, rows out of step order (a resumed run's table may be)."""
    frame = pd.DataFrame(
        {
            "step": [0, 50, 100, 150],
            "uniformity": [-0.9, -1.8, -2.3, -2.5],
            "alignment": [0.35, 0.30, 0.22, 0.20],
            "effective_rank": [19.2, 16.5, 16.0, 15.5],
            "rank_floor": [5.5, 5.5, 5.5, 5.5],
        }
    )
    return frame.iloc[[2, 0, 3, 1]].reset_index(drop=True) if shuffled else frame


def trace(fig: go.Figure, name: str):
    return next(t for t in fig.data if t.name == name)


def test_path_runs_through_the_snapshots_in_step_order_uniformity_on_x() -> None:
    """Catches: axes swapped (alignment on x) and a path drawn in table order, not steps."""
    fig = D.alignment_uniformity_figure(history())
    path = trace(fig, "path so far")
    np.testing.assert_array_equal(path.x, [-0.9, -1.8, -2.3, -2.5])  # uniformity
    np.testing.assert_array_equal(path.y, [0.35, 0.30, 0.22, 0.20])  # alignment
    np.testing.assert_array_equal(path.customdata, [0, 50, 100, 150])
    assert "uniformity" in fig.layout.xaxis.title.text
    assert "alignment" in fig.layout.yaxis.title.text
    start = trace(fig, "start")
    assert (start.x[0], start.y[0]) == (-0.9, 0.35)
    now = trace(fig, "step 150")  # the last snapshot by default
    assert (now.x[0], now.y[0]) == (-2.5, 0.20)
    json.loads(fig.to_json())


def test_scrubbed_snapshot_is_marked_and_the_rest_drawn_faint() -> None:
    """Catches: a marker that ignores the scrubbed step, or a path cut at it."""
    fig = D.alignment_uniformity_figure(history(), marker_step=50)
    now = trace(fig, "step 50")
    assert (now.x[0], now.y[0]) == (-1.8, 0.30)
    np.testing.assert_array_equal(trace(fig, "path so far").x, [-0.9, -1.8])
    np.testing.assert_array_equal(trace(fig, "later").x, [-1.8, -2.3, -2.5])


def test_axes_are_the_same_at_every_snapshot_and_hold_the_whole_path() -> None:
    """Catches: axes fitted to the path up to the shown snapshot (they jump while scrubbing)."""
    frame = history()
    axes = D.geometry_axes(frame, dim=32)
    ranges = set()
    for step in (0, 50, 150):
        path = D.alignment_uniformity_figure(frame, step, axes)
        rank = D.effective_rank_figure(frame, 32, step, axes)
        ranges.add(
            (tuple(path.layout.xaxis.range), tuple(path.layout.yaxis.range),
             tuple(rank.layout.yaxis.range))
        )  # fmt: skip
    assert len(ranges) == 1
    (x_range, y_range, rank_range) = ranges.pop()
    assert x_range[0] < -2.5
    assert x_range[1] > -0.9
    assert 0.0 <= y_range[0] < 0.20
    assert y_range[1] > 0.35
    assert rank_range == (0.0, pytest.approx(32 * 1.08))


def test_effective_rank_over_time_under_the_ceiling_d() -> None:
    """Catches: the ceiling drawn at the rank's maximum instead of D, ranks in table order."""
    fig = D.effective_rank_figure(history(), 32, marker_step=100)
    rank = trace(fig, "effective rank")
    np.testing.assert_array_equal(rank.x, [0, 50, 100, 150])
    np.testing.assert_array_equal(rank.y, [19.2, 16.5, 16.0, 15.5])
    np.testing.assert_array_equal(trace(fig, "dimensional collapse below").y, [5.5] * 4)
    ceiling = [s for s in fig.layout.shapes if s.y0 == s.y1]
    assert [s.y0 for s in ceiling] == [32.0]
    assert any("D = 32" in a.text for a in fig.layout.annotations)
    marker = [s for s in fig.layout.shapes if s.x0 == s.x1]
    assert [s.x0 for s in marker] == [100.0]


@pytest.mark.parametrize("builder", ["path", "rank"])
def test_runs_saved_before_the_diagnostics_say_so(builder: str) -> None:
    old = history().drop(columns=["uniformity", "alignment", "effective_rank", "rank_floor"])
    if builder == "path":
        fig = D.alignment_uniformity_figure(old)
    else:
        fig = D.effective_rank_figure(old, 8)
    assert not fig.data
    assert any("not recorded" in a.text for a in fig.layout.annotations)
    empty = D.alignment_uniformity_figure(pd.DataFrame())
    assert any("waiting" in a.text for a in empty.layout.annotations)


@pytest.mark.parametrize(("dim", "n"), [(2, 30), (2, 1500), (3, 30)])
def test_class_weights_are_drawn_as_one_legend_entry_in_class_colours(dim: int, n: int) -> None:
    """Catches: weights drawn like probe points (same size, no legend entry) or off-colour, or
    in SVG over WebGL points (plotly draws them beneath, hidden)."""
    rng = np.random.default_rng(0)
    layout, labels = rng.normal(size=(n, dim)), np.arange(n) % 3
    fig = F.embedding_figure(layout, labels, NAMES, "probe")
    weights = rng.normal(size=(6, dim))
    D.add_class_weights(fig, weights, np.repeat(np.arange(3), 2), NAMES)
    drawn = trace(fig, "class weights")
    points = type(trace(fig, "class 0"))  # SVG up to 1000 points, WebGL above
    assert points is (go.Scatter3d if dim == 3 else go.Scattergl if n > 1000 else go.Scatter)
    assert type(drawn) is points
    np.testing.assert_array_equal(drawn.x, weights[:, 0])
    if dim == 3:
        np.testing.assert_array_equal(drawn.z, weights[:, 2])
    assert list(drawn.marker.color) == [S.class_color(c) for c in (0, 0, 1, 1, 2, 2)]
    assert drawn.marker.symbol == "diamond"
    assert drawn.marker.size > trace(fig, "class 0").marker.size
    assert list(drawn.text) == ["class 0", "class 0", "class 1", "class 1", "class 2", "class 2"]
    with pytest.raises(ValueError, match="'points'"):
        D.add_class_weights(fig, weights[:, :1], np.zeros(6, dtype=int), NAMES)


def test_weights_stack_below_the_probe_and_split_back() -> None:
    """Catches: weights stacked on top (the probe points would get the weights' layout)."""
    probe, weights = np.zeros((5, 3), np.float32), np.ones((2, 3), np.float32)
    stacked = D.with_class_weights(probe, weights)
    np.testing.assert_array_equal(stacked[5:], weights)
    points, back = D.split_layout(stacked[:, :2], 5)
    np.testing.assert_array_equal(points, probe[:, :2])
    np.testing.assert_array_equal(back, weights[:, :2])
    assert D.with_class_weights(probe, None) is probe
    assert D.split_layout(probe, 5)[1] is None  # a layout computed without weights
