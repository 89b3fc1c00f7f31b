"""dml_core.figures.dark: the figures' paper inks on a dark page.

Catches (tried once each): a rule that skips lists of colours (per-point marker colours kept
their near-black ink); one that leaves white label boxes (light text on a light box); one that
re-inks the figure it was given (a cached figure turned dark for every later light page).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from dml_core.figures.dark import DARK_BACKGROUND, DARK_PAGE_INKS, for_dark_page, recolour
from dml_core.figures.diagnostics import effective_rank_figure
from dml_core.figures.live import distance_histogram_figure
from dml_core.figures.sphere import sphere_distance_figure

DARK_PAGE = "#0e1117"


def colours(node: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    """Every (key, colour) in a figure's dict, list items one by one."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from colours(v, k)
    elif isinstance(node, list):
        for item in node:
            yield from colours(item, key)
    elif key.endswith("color") and isinstance(node, str):
        yield key, node


def luminance(hex_colour: str) -> float:
    """Relative luminance (WCAG 2) of ``#rrggbb``."""
    channels = [int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(a: str, b: str) -> float:
    """WCAG contrast ratio of two ``#rrggbb`` colours."""
    high, low = sorted((luminance(a), luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def test_every_paper_ink_reads_on_the_dark_page_and_the_greys_keep_their_order() -> None:
    for paper, dark in DARK_PAGE_INKS.items():
        assert contrast(dark, DARK_PAGE) >= 7.0, (paper, dark)  # WCAG AAA for text
    greys = ["#333333", "#444444", "#555555"]  # darker on paper: lighter on the dark page
    shades = [luminance(DARK_PAGE_INKS[g]) for g in greys]
    assert shades == sorted(shades, reverse=True), shades
    assert len(set(shades)) == len(shades)


def test_a_margin_line_its_label_and_per_point_colours_are_re_inked() -> None:
    fig = go.Figure(go.Scatter(x=[0, 1], y=[0, 1], marker={"color": ["#333333", "#1f77b4"]}))
    fig.add_shape(type="line", x0=0.5, x1=0.5, y0=0, y1=1, line={"color": "#333333"})
    fig.add_annotation(
        x=0.5, y=1, text="m", bgcolor="rgba(255,255,255,0.8)", font={"color": "#222222"}
    )
    dark = for_dark_page(fig)
    assert dark.layout.shapes[0].line.color == DARK_PAGE_INKS["#333333"]
    assert dark.layout.annotations[0].font.color == DARK_PAGE_INKS["#222222"]
    assert dark.layout.annotations[0].bgcolor == "rgba({},{},{},0.8)".format(*DARK_BACKGROUND)
    assert list(dark.data[0].marker.color) == [DARK_PAGE_INKS["#333333"], "#1f77b4"]
    # the figure given stays as drawn on paper
    assert fig.layout.shapes[0].line.color == "#333333"
    assert list(fig.data[0].marker.color) == ["#333333", "#1f77b4"]


def test_colours_that_are_not_paper_inks_stay() -> None:
    node = {"line": {"color": "#2e9e44"}, "bgcolor": "rgba(255,255,255,0)", "width": 2}
    recolour(node)
    assert node == {"line": {"color": "#2e9e44"}, "bgcolor": "rgba(14,17,23,0)", "width": 2}
    kept = {"marker": {"color": [0.1, 0.5]}, "colorscale": "Viridis"}
    recolour(kept)
    assert kept == {"marker": {"color": [0.1, 0.5]}, "colorscale": "Viridis"}


def _figures() -> dict[str, go.Figure]:
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(200, 8))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    history = {"step": [0, 50, 100], "effective_rank": [3.0, 5.0, 6.0], "rank_floor": [1.0] * 3}
    return {
        "histogram with margins": distance_histogram_figure(
            rng.uniform(0, 1, 300), rng.uniform(0.5, 2, 300), {"m": 0.5, "m_neg": 1.2}, 0.1
        ),
        "sphere with q(d)": sphere_distance_figure(emb),
        "effective rank": effective_rank_figure(pd.DataFrame(history), dim=8, marker_step=50),
    }


@pytest.mark.parametrize("name", list(_figures()))
def test_no_paper_ink_or_white_box_is_left_in_the_app_s_figures(name: str) -> None:
    fig = _figures()[name]
    paper = [c for _, c in colours(fig.to_dict()["data"]) if c.lower() in DARK_PAGE_INKS]
    paper += [c for _, c in colours(fig.to_dict()["layout"]) if c.lower() in DARK_PAGE_INKS]
    assert paper, f"{name}: no paper ink to re-ink (the test would prove nothing)"
    dark = for_dark_page(fig).to_dict()
    dark["layout"].pop("template", None)  # Streamlit's theme replaces it
    left = [(k, c) for k, c in colours(dark) if c.lower() in DARK_PAGE_INKS]
    boxes = [(k, c) for k, c in colours(dark) if c.replace(" ", "").startswith("rgba(255,255,255")]
    assert not left, left
    assert not boxes, boxes
