r"""Plotly figures of one batch and its miners, and of what each sampling method selects.

Pure functions: results of ``analysis.batch_view`` / ``analysis.sphere`` in, ``go.Figure`` out
(no streamlit, no torch); the look is ``figures.style``'s (``plotly_white``, ``CLASS_COLORS``,
titles top left). Encodings are kept apart: class = fill colour (``class_color``), positive /
negative pair = green / red line (``POSITIVE_COLOR`` / ``NEGATIVE_COLOR``), and the kind of a
negative (easy / semi-hard / hard) = the SHAPE of a dark outline marker (``KIND_SYMBOLS``),
never a colour, so it cannot be mistaken for a class.

- ``batch_pca_figure``: the batch in the plane of its first two principal components, the
  anchor starred, lines to what one miner selects. Clickable: each point carries its batch
  index as ``customdata``. PCA distorts distances, so no margin ring is drawn here.
- ``anchor_polar_figure``: one polar panel per miner, centred on the anchor: radius = the
  true embedding distance d(a, x), angle = the direction of x from the anchor in the PCA
  plane. Radii are exact, so the rings d(a, p) and d(a, p) + \alpha of the chosen positive p
  are honest, and each negative's mark is judged against the same p: inside the first ring
  hard, between the two semi-hard, outside easy (FaceNet, Schroff et al. 2015, Sec. 3.2).
- ``selected_distance_figure``: histograms of the d(a, n) each sampling method selects, over
  q(d), the density of distances between random points on the sphere (Wu et al., Sampling
  Matters in Deep Embedding Learning, ICCV 2017, Sec. 4, Fig. 2 and Eq. 3).
- ``sampled_density_figure``: q(d) for one n against sampled distances. Both sphere figures
  keep d in [0, 2] for every n, so the concentration near sqrt(2) shows; ``zoom`` narrows it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dml_core.analysis.batch_view import AnchorView, Batch, MiningResult
from dml_core.analysis.sphere import BIN_EDGES, SamplingComparison
from dml_core.figures import sphere
from dml_core.figures.style import (
    NEGATIVE_COLOR,
    POSITIVE_COLOR,
    TITLE_POSITION,
    _density_grid,
    class_color,
    use_template,
)
from dml_core.projection import project
from dml_core.tuples import TRIPLET_KINDS

INK = "#222222"  # outline of the kind and positive marks: not a class colour, not green / red
KIND_SYMBOLS = ("circle-open", "diamond-open", "x-thin")  # easy, semi-hard, hard (by kind code)
KIND_MARKS = ("○", "◇", "×")  # the same shapes in legend text
POSITIVE_SYMBOL = "square-open"
ANCHOR_COLOR = "#111111"
METHOD_COLORS = {
    "uniform": "#7f7f7f",
    "semi_hard": "#f28e2b",
    "hard": "#b07aa1",
    "batch_hard": "#8c564b",
    "distance_weighted": "#3b6fd6",
}
POLAR_COLUMNS = 3


def _title(fig: go.Figure, text: str, height: int, top: int = 80) -> go.Figure:
    use_template(fig).update_layout(
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


def _marks(
    x: np.ndarray, y: np.ndarray, view: AnchorView, polar: bool, show: bool, miner: str
) -> list[go.Scatter | go.Scatterpolar]:
    """Outline marks over the selected points: squares on positives, kind shapes on negatives.

    ``x``, ``y`` are (B,) coordinates (polar: r, theta). Each trace carries ``meta`` (role,
    kind code, miner, positive) so tests can read what was drawn.
    """
    trace = go.Scatterpolar if polar else go.Scatter
    meta = {"miner": miner, "positive": view.positive}
    others = view.positives[view.positives != view.positive]
    groups = [
        (others, "selected positives", POSITIVE_SYMBOL, 10, 1.5, {"role": "positive"}),
        (np.array([view.positive]), f"positive #{view.positive} (rings)", POSITIVE_SYMBOL, 15,
         2.5, {"role": "positive"}),
    ] + [
        (view.negatives[view.neg_kind == code], f"{KIND_MARKS[code]} {kind} negatives",
         KIND_SYMBOLS[code], 13, 2.0, {"role": "negative", "kind": code})
        for code, kind in enumerate(TRIPLET_KINDS)
    ]  # fmt: skip
    traces = []
    for idx, name, symbol, size, width, role in groups:
        coords = {"r": x[idx], "theta": y[idx]} if polar else {"x": x[idx], "y": y[idx]}
        traces.append(
            trace(
                **coords,
                mode="markers",
                name=name,
                legendgroup=name,
                showlegend=show,
                marker={
                    "symbol": symbol,
                    "size": size,
                    "color": INK,
                    "line": {"color": INK, "width": width},
                },
                meta=meta | role,
                customdata=idx,
                hovertemplate=f"{name} #%{{customdata}}<extra>{miner}</extra>",
            )
        )
    return traces


def batch_pca_figure(
    batch: Batch, result: MiningResult, miner: str, anchor: int, positive: int | None = None
) -> go.Figure:
    """The batch in 2-D (PCA), the anchor starred, lines to what ``miner`` selects for it.

    Fill: class. Lines: green to selected positives, red to selected negatives. Outline marks:
    squares on positives (the large one is ``positive``), and each negative's kind against
    ``positive`` by shape: ○ easy, ◇ semi-hard, × hard.
    """
    layout = project(batch.emb, "pca")  # (B, 2)
    view = result.anchor_view(miner, anchor, positive)
    fig = go.Figure()
    ax, ay = layout[anchor]
    pairs = [("positive pairs", view.positives, POSITIVE_COLOR)]
    pairs.append(("negative pairs", view.negatives, NEGATIVE_COLOR))
    for name, idx, color in pairs:
        xs, ys = _segments(ax, ay, layout[idx, 0], layout[idx, 1])
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="lines",
                name=f"{name} ({len(idx)})",
                line={"color": color, "width": 1.2},
                opacity=0.6,
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
    for trace in _marks(layout[:, 0], layout[:, 1], view, polar=False, show=True, miner=miner):
        fig.add_trace(trace)
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


def _spokes(dist: np.ndarray, angle: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, ...]:
    """Polar lines from the anchor (r = 0) to each point of ``idx``, separated by gaps."""
    r = np.stack([np.zeros(len(idx)), dist[idx], np.full(len(idx), np.nan)], 1).ravel()
    return r, np.repeat(angle[idx], 3)


def anchor_polar_figure(
    batch: Batch,
    result: MiningResult,
    anchor: int,
    miners: Sequence[str],
    positive: int | None = None,
) -> go.Figure:
    """One polar panel per miner around ``anchor``: radius d(a, x), angle from the PCA plane.

    Grey: the rest of the batch; green / red spokes: selected positive / negative pairs;
    outline marks: squares on positives, ○ / ◇ / × on easy / semi-hard / hard negatives. The
    dashed and dotted rings are d(a, p) and d(a, p) + margin for the chosen ``positive``
    (default: the farthest), the same p every negative's mark is judged against.
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
    chosen = positive
    for i, name in enumerate(miners):
        row, col = i // cols + 1, i % cols + 1
        view = result.anchor_view(name, anchor, positive)
        chosen = view.positive
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
        rings = ((view.radius, "dash", "d(a,p)"), (view.radius + result.margin, "dot", "+ α"))
        for radius, dash, label in rings:
            r, theta = _circle(radius)
            ring_name = "ring d(a,p)" if dash == "dash" else "ring d(a,p) + α"
            add(
                go.Scatterpolar(
                    r=r,
                    theta=theta,
                    mode="lines",
                    line={"color": "#555555", "dash": dash, "width": 1},
                    name=ring_name,
                    legendgroup=dash,
                    showlegend=first,
                    meta={"role": "ring", "ring": label, "miner": name, "radius": radius},
                    hoverinfo="skip",
                )
            )
        for label, idx, color in (
            ("positive pairs", view.positives, POSITIVE_COLOR),
            ("negative pairs", view.negatives, NEGATIVE_COLOR),
        ):
            r, theta = _spokes(dist, angle, idx)
            add(
                go.Scatterpolar(
                    r=r,
                    theta=theta,
                    mode="lines",
                    line={"color": color, "width": 1},
                    opacity=0.6,
                    name=label,
                    legendgroup=label,
                    showlegend=first,
                    connectgaps=False,
                    hoverinfo="skip",
                )
            )
        for trace in _marks(dist, angle, view, polar=True, show=first, miner=name):
            add(trace)
    polar = {
        "radialaxis": {"range": [0, rmax], "tickfont": {"size": 9}, "angle": 90, "nticks": 4},
        "angularaxis": {"showticklabels": False, "ticks": ""},
    }
    fig.update_polars(**polar)
    _title(
        fig,
        f"Around anchor #{anchor}, rings for positive #{chosen}, per miner<br><sup>radius = "
        "true embedding distance d(a,x), angle = direction in the PCA plane · rings d(a,p) "
        "and d(a,p) + α; inside: hard ×, between: semi-hard ◇, outside: easy ○</sup>",
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


def _zoom_range(edges: np.ndarray, counts: np.ndarray) -> tuple[float, float]:
    """The central 99.8 % of a histogram's mass, padded by 15 % of its width, within [0, 2]."""
    cdf = np.cumsum(counts) / max(counts.sum(), 1)  # (bins,)
    lo = edges[int(np.searchsorted(cdf, 0.001))]
    hi = edges[min(int(np.searchsorted(cdf, 0.999)) + 1, len(edges) - 1)]
    pad = 0.15 * max(hi - lo, 0.02)
    return max(0.0, float(lo - pad)), min(2.0, float(hi + pad))


def _visible_peak(dim: int, x_range: tuple[float, float]) -> float:
    """The largest q(d) on the grid inside ``x_range``."""
    grid, density = _density_grid(dim)
    inside = (grid >= x_range[0]) & (grid <= x_range[1])
    return float(density[inside].max()) if inside.any() else 0.0


def selected_distance_figure(comparison: SamplingComparison, zoom: bool = False) -> go.Figure:
    """Histograms (densities) of the d(a, n) each method selects, over q(d) on S^{n-1}.

    Args:
        comparison: the result of ``analysis.sphere.sampling_comparison`` (exact counts).
        zoom: False keeps d in [0, 2] for every n (bins of 0.05), so the pile-up near
            sqrt(2) in high n shows; True narrows the axis to where the distances are, with
            finer bins (about 40 across the shown range).
    """
    methods = list(comparison.counts)
    fig = make_subplots(
        rows=1,
        cols=len(methods),
        shared_yaxes=True,
        subplot_titles=methods,
        horizontal_spacing=0.02,
    )
    total = np.sum([comparison.counts[m] for m in methods], axis=0)  # (bins,)
    x_range = _zoom_range(BIN_EDGES, total) if zoom and total.sum() else (0.0, 2.0)
    fine = BIN_EDGES[1] - BIN_EDGES[0]
    merge = max(1, round((x_range[1] - x_range[0]) / fine / 40))
    while (len(BIN_EDGES) - 1) % merge:
        merge -= 1
    edges = BIN_EDGES[::merge]  # (bins / merge + 1,)
    width = float(edges[1] - edges[0])
    grid, density = _density_grid(comparison.dim)
    peak = _visible_peak(comparison.dim, x_range)
    for i, method in enumerate(methods, start=1):
        counts = comparison.counts[method].reshape(-1, merge).sum(axis=1)  # (bins / merge,)
        heights = counts / max(counts.sum(), 1) / width
        shown = (edges[1:] > x_range[0]) & (edges[:-1] < x_range[1])
        peak = max(peak, float(heights[shown].max()) if shown.any() else 0.0)
        fig.add_trace(
            go.Bar(
                x=(edges[:-1] + edges[1:]) / 2,
                y=heights,
                width=width,
                marker={"color": METHOD_COLORS.get(method, "#555555"), "line": {"width": 0}},
                name=method,
                showlegend=False,
                customdata=counts,
                hovertemplate="d %{x:.3f}: %{customdata} triplets<extra></extra>",
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
    fig.update_xaxes(range=list(x_range), title_text="d(a,n)")
    fig.update_yaxes(range=[0.0, 1.05 * max(peak, 1e-6)])
    fig.update_yaxes(title_text="density", row=1, col=1)
    fig.update_layout(bargap=0.0, uirevision=f"selected-distances-{zoom}")
    return fig


def sampled_density_figure(
    dim: int, distances: np.ndarray, zoom: bool = False, uirevision: str = "sphere-one"
) -> go.Figure:
    """q(d) on S^{dim-1} against the histogram of sampled ``distances`` (Wu et al., Fig. 2).

    The x-axis stays [0, 2] for every n unless ``zoom`` (then: where the distances are); the
    y-axis reaches the largest density shown, curve or bars.
    """
    distances = np.asarray(distances, dtype=np.float64).ravel()
    fig = sphere.density_figure(
        [dim],
        samples={dim: distances},
        title=f"S<sup>{dim - 1}</sup>: q(d) vs {len(distances):,} sampled distances",
        uirevision=uirevision,
    )
    counts = np.histogram(distances, bins=BIN_EDGES)[0]  # (bins,)
    x_range = _zoom_range(BIN_EDGES, counts) if zoom and len(distances) else (0.0, 2.0)
    bars, edges = np.histogram(distances, bins=np.linspace(0.0, 2.0, 101), density=True)
    shown = (edges[1:] > x_range[0]) & (edges[:-1] < x_range[1])
    peak = max(_visible_peak(dim, x_range), float(bars[shown].max()) if shown.any() else 0.0)
    fig.update_xaxes(range=list(x_range))
    fig.update_yaxes(range=[0.0, 1.05 * max(peak, 1e-6)])
    return fig
