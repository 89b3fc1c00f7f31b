"""The Loss explorer's figures as a class sees them: labels on their own lines, nothing covered.

Geometry is checked in pixels at ``NOMINAL_WIDTH``, the narrowest figure the page lays out
(a wider figure only moves the lines apart), with the figures' own text-width estimate
(``LABEL_CHAR_PX``, checked by eye on PNGs rendered with kaleido).
"""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest

from dml_core import LOSSES
from dml_core.analysis import loss_curves as LC
from dml_core.figures import losses as LF
from dml_core.figures.style import math_text

HELD = {
    "distance": {"positive": 1.0, "negative": 0.5},
    "similarity": {"positive": 0.5, "negative": 0.875},
}


def profiles(settings: list[tuple[str, dict]], axis: str, scale: str) -> list[LC.Profile]:
    held = HELD[scale]["positive" if axis == "positive" else "negative"]
    return [LC.loss_profile(n, p, axis, fixed=held, scale=scale) for n, p in settings]


def plot_px(fig, width: int = LF.NOMINAL_WIDTH) -> float:
    return width - fig.layout.margin.l - fig.layout.margin.r


def top_px(fig) -> float:
    m = fig.layout.margin
    return (fig.layout.height - m.t - m.b) * (1 - LF.VERTICAL_SPACING) / 2


def label_boxes(fig) -> list[tuple[float, float, float, float, float]]:
    """(line x px, left, right, bottom, top) of each label's box in pixels (y up, top plot)."""
    low, high = fig.layout.xaxis.range
    scale, h = plot_px(fig) / (high - low), top_px(fig)
    boxes = []
    for note in fig.layout.annotations:
        x_px = (note.x - low) * scale
        width = LF.LABEL_CHAR_PX * len(note.text) + 6
        tail = x_px + note.ax
        left, right = (tail, tail + width) if note.xanchor == "left" else (tail - width, tail)
        y_px = note.y * h
        boxes.append((x_px, min(left, x_px), max(right, x_px), y_px - 7, y_px + 7))
    return boxes


# (losses overlaid, scale): the circle loss in both planes and at a wide margin, overlays.
CASES = [
    ([("circle", {})], "distance"),
    ([("circle", {})], "similarity"),
    ([("circle", {"m": 0.4})], "similarity"),
    ([("contrastive", {"pos_margin": 0.3, "neg_margin": 1.4})], "distance"),
    ([("triplet", {"margin": 0.2}), ("triplet", {"margin": 0.5})], "distance"),
    ([("proxy_anchor", {}), ("contrastive", {})], "distance"),
    ([("multi_similarity", {}), ("circle", {})], "similarity"),
]
IDS = ["+".join(n for n, _ in losses) + f"-{scale}" for losses, scale in CASES]


@pytest.mark.parametrize(("settings", "scale"), CASES, ids=IDS)
@pytest.mark.parametrize("axis", ["positive", "negative"])
def test_each_boundary_label_points_at_its_own_line_and_none_overlap(
    settings: list, scale: str, axis: str
) -> None:
    shown = profiles(settings, axis, scale)
    fig = LF.profile_figure(shown, "Pair")
    crossings = [(x, re.sub(r" \(\d+\)$", "", k)) for p in shown for k, x in p.marks.items()]
    notes = list(fig.layout.annotations)
    assert len(notes) == len(crossings)
    for note, (x, label) in zip(sorted(notes, key=lambda n: n.x), sorted(crossings), strict=True):
        assert note.showarrow  # an arrow from the text ...
        assert note.x == pytest.approx(x)  # ... ends on the line of this crossing
        assert note.ay == 0
        assert note.text in {math_text(label), math_text(LF.boundary_name(label))}
    boxes = label_boxes(fig)
    for (_, l1, r1, b1, t1), (_, l2, r2, b2, t2) in itertools.combinations(boxes, 2):
        assert r1 <= l2 or r2 <= l1 or t1 <= b2 or t2 <= b1, "two labels overlap"
    for _, left, right, _, top in boxes:
        assert left >= 0
        assert right <= plot_px(fig)
        assert top <= top_px(fig)


@pytest.mark.parametrize(("settings", "scale"), CASES, ids=IDS)
@pytest.mark.parametrize("axis", ["positive", "negative"])
def test_no_label_crosses_another_line(settings: list, scale: str, axis: str) -> None:
    """Every line a label spans ends below that label (each line ends at its own label)."""
    fig = LF.profile_figure(profiles(settings, axis, scale), "Pair")
    low, high = fig.layout.xaxis.range
    scale_px = plot_px(fig) / (high - low)
    tops = [  # (x px, top px) of each line in the loss plot
        ((shape.x0 - low) * scale_px, shape.y1 * top_px(fig))
        for shape in fig.layout.shapes
        if shape.yref == "y domain"
    ]
    assert len(tops) == len(fig.layout.annotations)
    for x, left, right, bottom, _ in label_boxes(fig):
        assert (x, pytest.approx(bottom + 7)) in [(v, top) for v, top in tops]  # own line
        spanned = [top for v, top in tops if abs(v - x) > 0.5 and left < v < right]
        assert all(top < bottom for top in spanned), "a label is crossed by another line"


@pytest.mark.parametrize(("settings", "scale"), CASES, ids=IDS)
def test_labels_sit_above_the_curves(settings: list, scale: str) -> None:
    shown = profiles(settings, "negative", scale)
    fig = LF.profile_figure(shown, "Pair")
    low, high = fig.layout.yaxis.range
    peak = max(float(np.nanmax(p.value)) for p in shown)
    for _, _, _, bottom, _ in label_boxes(fig):
        assert low + (high - low) * bottom / top_px(fig) >= peak


def legend_entries(fig) -> int:
    return sum(t.showlegend is not False for t in fig.data if t.type != "heatmap")


FIGURES = {
    "profile": lambda: LF.profile_figure(profiles([("triplet", {})], "positive", "distance"), "P"),
    "overlay": lambda: LF.profile_figure(
        profiles([("proxy_anchor", {}), ("contrastive", {})], "negative", "distance"), "N"
    ),
    "surface": lambda: LF.surface_figure(LC.loss_surface("multi_similarity", {}, n=9)),
    "circle": lambda: LF.circle_figure(LC.loss_surface("circle", {}, n=9, scale="similarity")),
}


@pytest.mark.parametrize("kind", list(FIGURES))
def test_legend_sits_below_the_plot_and_the_title_alone_on_top(kind: str) -> None:
    fig = FIGURES[kind]()
    legend, margin, title = fig.layout.legend, fig.layout.margin, fig.layout.title
    # The legend grows up from the bottom edge of the figure, one entry per row ...
    assert (legend.yref, legend.y, legend.yanchor, legend.orientation) == (
        "container",
        0,
        "bottom",
        "v",
    )
    # ... inside the bottom margin, under the x tick labels and axis title.
    assert margin.b - LF.AXIS_PX >= legend_entries(fig) * LF.LEGEND_ROW_PX
    # The title hangs from the top edge, in a top margin that holds nothing else.
    assert (title.yref, title.y, title.yanchor) == ("container", 1, "top")
    assert margin.t >= LF.TITLE_PX + (LF.SUBTITLE_PX if title.subtitle.text else 0)


@pytest.mark.parametrize("name", list(LOSSES))
def test_heat_map_titles_fit_the_narrowest_figure(name: str) -> None:
    params = LOSSES[name].defaults()  # the page passes every widget's value
    fig = LF.surface_figure(LC.loss_surface(name, params, n=5, gradient=False))
    assert len(fig.layout.title.text) * 8 + 10 <= LF.NOMINAL_WIDTH  # 15-px font, about 8 px
    assert len(fig.layout.title.subtitle.text or "") * 6.5 + 10 <= LF.NOMINAL_WIDTH


def test_an_overlaid_pair_loss_keeps_its_own_coordinates() -> None:
    proxy, pair = profiles([("proxy_anchor", {}), ("contrastive", {})], "negative", "distance")
    fig = LF.profile_figure([proxy, pair], "Negative pair")
    x_title = fig.layout.xaxis2.title.text
    assert "contrastive: d(a,n)" in x_title
    assert "proxy_anchor: d(x, other proxy)" in x_title
    assert "contrastive: d(a,p) = 0.5" in fig.layout.title.subtitle.text
    assert "proxy_anchor: d(x, own proxy) = 0.5" in fig.layout.title.subtitle.text
    assert "proxy" not in fig.layout.yaxis2.title.text  # the gradient is along each one's x
    hover = {t.name: t.hovertemplate for t in fig.data if t.showlegend is not False}
    assert hover[pair.label].startswith("d(a,n) = ")


@pytest.mark.parametrize("scale", ["distance", "similarity"])
def test_gradient_axis_names_the_variable_not_an_equation(scale: str) -> None:
    (profile,) = profiles([("circle", {})], "negative", scale)
    fig = LF.profile_figure([profile], "Negative pair")
    expected = "|∂ loss / ∂ d(a,n)|" if scale == "distance" else "|∂ loss / ∂ s_n|"
    assert fig.layout.yaxis2.title.text == expected
