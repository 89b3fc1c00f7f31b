r"""Plotly figures of one batch and its miners, and of what each sampling method selects.

Pure functions: results of ``batch_view`` in, ``go.Figure`` out (no streamlit, no torch); the
look is ``figures``' (``plotly_white``, ``CLASS_COLORS``, titles top left).

- ``batch_pca_figure``: the batch in the plane of its first two principal components, the
  anchor starred, lines to what one miner selects. Clickable: each point carries its batch
  index as ``customdata``. PCA distorts distances, so no margin circle is drawn here.
- ``anchor_polar_figure``: one polar panel per miner, centred on the anchor: radius = the
  true embedding distance d(a, x), angle = the direction of x from the anchor in the PCA
  plane. Radii are exact, so the circles d(a, p_max) and d(a, p_max) + \alpha are honest:
  negatives inside the first are hard, between the two semi-hard, outside easy (FaceNet,
  Schroff et al. 2015, Sec. 3.2; the bands the miners of Hermans et al. 2017 cut).
- ``selected_distance_figure``: histograms of the d(a, n) each sampling method selects, over
  q(d), the density of distances between random points on the sphere (Wu et al., Sampling
  Matters in Deep Embedding Learning, ICCV 2017, Sec. 4, Fig. 2 and Eq. 3).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dml_core.analysis.batch_view import Batch, MiningResult, SamplingComparison
from dml_core.figures.style import TEMPLATE, TITLE_POSITION, _density_grid, class_color
from dml_core.projection import project
from dml_core.tuples import TRIPLET_KINDS

KIND_COLORS = ("#2e9e44", "#f28e2b", "#d64545")  # easy, semi-hard, hard (by kind code)
POSITIVE_COLOR = "#3b6fd6"
ANCHOR_COLOR = "#111111"
METHOD_COLORS = {
    "uniform": "#7f7f7f",
    "semi_hard": "#f28e2b",
    "hard": "#d64545",
    "batch_hard": "#8c1d1d",
    "distance_weighted": "#3b6fd6",
}
POLAR_COLUMNS = 3


def _title(fig: go.Figure, text: str, height: int, top: int = 80) -> go.Figure:
    fig.update_layout(
        template=TEMPLATE,
        title={"text": text, "pad": {"t": 12}, "font": {"size": 16}, **TITLE_POSITION},
        height=height,
        margin={"l": 40, "r": 20, "t": top, "b": 40},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "x": 0.0},
    )
    return fig


def _segments(x0: float, y0: float, xs: np.ndarray, ys: np.ndarray) -> tuple[list, list]:
    """One polyline of segments (x0, y0) -> (x_i, y_i), separated by None."""
    px: list = []
    py: list = []
    for x, y in zip(xs.tolist(), ys.tolist(), strict=True):
        px += [x0, x, None]
        py += [y0, y, None]
    return px, py


def batch_pca_figure(batch: Batch, result: MiningResult, miner: str, anchor: int) -> go.Figure:
    """The batch in 2-D (PCA), the anchor starred, lines to what ``miner`` selects for it.

    Blue: positives; green / orange / red: easy / semi-hard / hard negatives.
    """
    layout = project(batch.emb, "pca")  # (B, 2)
    view = result.anchor_view(miner, anchor)
    fig = go.Figure()
    ax, ay = layout[anchor]
    lines = [("positives", view.positives, POSITIVE_COLOR)]
    lines += [
        (f"{name} negatives", view.negatives[view.neg_kind == code], KIND_COLORS[code])
        for code, name in enumerate(TRIPLET_KINDS)
    ]
    for name, idx, color in lines:
        xs, ys = _segments(ax, ay, layout[idx, 0], layout[idx, 1])
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="lines",
                name=f"{name} ({len(idx)})",
                line={"color": color, "width": 1.5},
                hoverinfo="skip",
            )
        )
    index = np.arange(len(batch.labels))
    for label in np.unique(batch.labels):
        members = index[batch.labels == label]
        fig.add_trace(
            go.Scatter(
                x=layout[members, 0],
                y=layout[members, 1],
                mode="markers",
                name=batch.class_names[label],
                marker={"color": class_color(label), "size": 9, "line": {"width": 0.5}},
                customdata=members,
                hovertemplate=f"#%{{customdata}} class {batch.class_names[label]}<extra></extra>",
            )
        )
    fig.add_trace(
        go.Scatter(
            x=[ax],
            y=[ay],
            mode="markers",
            name=f"anchor #{anchor}",
            marker={"symbol": "star", "size": 20, "color": ANCHOR_COLOR},
            customdata=[anchor],
            hovertemplate="anchor #%{customdata}<extra></extra>",
        )
    )
    _title(
        fig,
        f"The batch in its PCA plane, lines: {miner}<br><sup>click a point to make it the "
        "anchor · PCA distorts distances: the polar view below shows true ones</sup>",
        560,
        top=70,
    )
    fig.update_layout(
        clickmode="event+select",
        dragmode="pan",
        uirevision="batch-pca",
        legend={"orientation": "v", "yanchor": "top", "y": 1.0, "x": 1.02, "xanchor": "left"},
        margin={"l": 50, "r": 20, "t": 70, "b": 50},
    )
    fig.update_xaxes(title_text="PC 1", zeroline=False)
    fig.update_yaxes(title_text="PC 2", zeroline=False, scaleanchor="x")
    return fig


def _circle(radius: float) -> tuple[np.ndarray, np.ndarray]:
    theta = np.linspace(0.0, 360.0, 121)
    return np.full_like(theta, radius), theta


def anchor_polar_figure(
    batch: Batch, result: MiningResult, anchor: int, miners: Sequence[str]
) -> go.Figure:
    """One polar panel per miner around ``anchor``: radius d(a, x), angle from the PCA plane.

    Grey: the rest of the batch; blue: selected positives; green / orange / red: selected
    negatives, easy / semi-hard / hard; dashed circles at d(a, p_max) and d(a, p_max) + margin.
    """
    layout = project(batch.emb, "pca")  # (B, 2)
    offset = layout - layout[anchor]  # (B, 2)
    angle = np.degrees(np.arctan2(offset[:, 1], offset[:, 0]))  # (B,)
    dist = result.dist[anchor]  # (B,)
    rmax = float(max(dist.max(), 1e-3) * 1.08)
    rows = max(1, -(-len(miners) // POLAR_COLUMNS))
    cols = min(len(miners), POLAR_COLUMNS) or 1
    fig = make_subplots(
        rows=rows,
        cols=cols,
        specs=[
            [{"type": "polar"} if r * cols + c < len(miners) else None for c in range(cols)]
            for r in range(rows)
        ],
        subplot_titles=list(miners),
        horizontal_spacing=0.06,
        vertical_spacing=0.08,
    )
    others = np.arange(len(dist)) != anchor
    for i, name in enumerate(miners):
        row, col = i // cols + 1, i % cols + 1
        view = result.anchor_view(name, anchor)
        first = i == 0

        def add(trace: go.Scatterpolar, row: int = row, col: int = col) -> None:
            fig.add_trace(trace, row=row, col=col)

        add(
            go.Scatterpolar(
                r=dist[others],
                theta=angle[others],
                mode="markers",
                marker={"color": "#c8c8c8", "size": 5},
                name="batch",
                legendgroup="batch",
                showlegend=first,
                hoverinfo="skip",
            )
        )
        for radius, dash in ((view.radius, "dash"), (view.radius + result.margin, "dot")):
            r, theta = _circle(radius)
            add(
                go.Scatterpolar(
                    r=r,
                    theta=theta,
                    mode="lines",
                    line={"color": "#555555", "dash": dash, "width": 1},
                    name="d(a,p_max)" if dash == "dash" else "d(a,p_max) + margin",
                    legendgroup=dash,
                    showlegend=first,
                    hoverinfo="skip",
                )
            )
        groups = [("positives", view.positives, POSITIVE_COLOR)] + [
            (kind, view.negatives[view.neg_kind == code], KIND_COLORS[code])
            for code, kind in enumerate(TRIPLET_KINDS)
        ]
        for label, idx, color in groups:
            r = np.stack([np.zeros(len(idx)), dist[idx], np.full(len(idx), np.nan)], 1).ravel()
            theta = np.repeat(angle[idx], 3)
            add(
                go.Scatterpolar(
                    r=r,
                    theta=theta,
                    mode="lines+markers",
                    line={"color": color, "width": 1},
                    marker={"color": color, "size": 6},
                    name=label,
                    legendgroup=label,
                    showlegend=first,
                    connectgaps=False,
                    hovertemplate=f"{label}: d = %{{r:.3f}}<extra>{name}</extra>",
                )
            )
    polar = {
        "radialaxis": {"range": [0, rmax], "tickfont": {"size": 9}, "angle": 90, "nticks": 4},
        "angularaxis": {"showticklabels": False, "ticks": ""},
    }
    fig.update_polars(**polar)
    _title(
        fig,
        f"Around anchor #{anchor}, per miner<br><sup>radius = true embedding distance d(a,x), "
        "angle = direction in the PCA plane: the circles d(a,p_max) and d(a,p_max) + margin "
        "are exact</sup>",
        270 * rows + 150,
        top=70,
    )
    fig.update_layout(
        legend={"orientation": "h", "yanchor": "top", "y": -0.04, "x": 0.0},
        margin={"l": 30, "r": 30, "t": 90, "b": 60},
    )
    fig.update_annotations(font_size=13, yshift=14)
    fig.update_layout(uirevision="anchor-polar")
    return fig


def selected_distance_figure(comparison: SamplingComparison) -> go.Figure:
    """Histograms (densities) of the d(a, n) each method selects, over q(d) on S^{n-1}."""
    methods = list(comparison.neg_dist)
    fig = make_subplots(
        rows=1,
        cols=len(methods),
        shared_yaxes=True,
        subplot_titles=methods,
        horizontal_spacing=0.02,
    )
    grid, density = _density_grid(comparison.dim)
    values = [v for v in comparison.neg_dist.values() if len(v)]
    low = float(min(v.min() for v in values)) if values else 0.0
    high = float(max(v.max() for v in values)) if values else 2.0
    pad = 0.1 * max(high - low, 0.05)
    x_range = [max(0.0, low - pad), min(2.0, high + pad)]
    size = (x_range[1] - x_range[0]) / 40
    for i, method in enumerate(methods, start=1):
        fig.add_trace(
            go.Histogram(
                x=comparison.neg_dist[method],
                histnorm="probability density",
                xbins={"start": 0.0, "end": 2.0, "size": size},
                marker={"color": METHOD_COLORS.get(method, "#555555")},
                name=method,
                showlegend=False,
            ),
            row=1,
            col=i,
        )
        fig.add_trace(
            go.Scatter(
                x=grid,
                y=density,
                mode="lines",
                line={"color": "#222222", "dash": "dash", "width": 1.5},
                name="q(d)",
                showlegend=False,
            ),
            row=1,
            col=i,
        )
    _title(
        fig,
        f"Distances of the negatives each method selects (n = {comparison.dim})<br><sup>"
        "dashed: q(d), the density of distances between random points on the sphere</sup>",
        400,
        top=100,
    )
    fig.update_xaxes(range=x_range, title_text="d(a,n)")
    fig.update_yaxes(title_text="density", row=1, col=1)
    fig.update_layout(bargap=0.0, uirevision="selected-distances")
    return fig
