r"""Plotly figures of a training run, built from snapshots; pages only display them.

Pure functions: numpy / pandas in, ``go.Figure`` out; no streamlit, no torch. Every figure uses
the ``plotly_white`` template, a constant ``uirevision`` (so a user's zoom and legend clicks
survive live updates) and a height that suits a Streamlit column; classes keep one colour in
every figure (``CLASS_COLORS``, indexed by label).

What they show (the Train page):
    - ``embedding_figure``: the probe set's layout (UMAP / PCA / direct view), one trace per class.
    - ``distance_histogram_figure``: positive vs negative pair distances with the margins.
    - the sphere figure lives in ``figures/sphere.py`` (shared with Sphere & sampling).
    - ``curves_figure``: loss, active fraction, retrieval metrics (Musgrave et al., A Metric
      Learning Reality Check, ECCV 2020: P@1, R-Precision, MAP@R) and learnable scalars.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dml_core.figures.sphere import sphere_density_max
from dml_core.figures.style import (
    CURVE_COLORS,
    NEGATIVE_COLOR,
    OTHER_CURVE_COLOR,
    POSITIVE_COLOR,
    _histogram,
    _note,
    _on_unit_sphere,
    _style,
    _waiting_figure,
    bin_edges,
    class_color,
    math_text,
    scatter_type,
)
from dml_core.metrics import METRIC_LABELS

if TYPE_CHECKING:
    from dml_core.snapshot import Snapshot

CURVE_PANELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Loss", ("loss",)),
    (
        "Shares of the mined tuples",
        ("active_fraction", "easy", "semi-hard", "hard", "empty_batches"),
    ),
    ("Retrieval on the probe set", ("precision_at_1", "r_precision", "map_at_r")),
    ("Tuples mined per batch", ("tuples_per_batch",)),
    ("Learnable scalars and spread", ("beta", "mean_distance")),
)
CURVE_NAMES = {
    "active_fraction": "active (loss > 0)",
    "empty_batches": "batches with none",
    "tuples_per_batch": "tuples per batch",
    "mean_distance": "mean distance",
    **METRIC_LABELS,
}
FRACTION_PANELS = (1, 2)  # panels whose y-axis is [0, 1]
COUNT_PANELS = (3,)  # panels of counts: their y-axis starts at 0 (a constant count reads flat)


def embedding_figure(
    layout: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    title: str,
    uirevision: str = "embedding",
    customdata: np.ndarray | None = None,
    axis_labels: Sequence[str] = ("dim 1", "dim 2", "dim 3"),
) -> go.Figure:
    """The probe set as points, one trace per class (legend = class names).

    A 2-D layout gives ``go.Scatter`` traces (``go.Scattergl`` above ``WEBGL_ABOVE`` points:
    ``style.scatter_type``) with equal axis scales (a unit circle is drawn when the points lie
    on it); a 3-D layout (direct view of a 3-D embedding) gives
    ``go.Scatter3d`` traces, with a faint unit sphere when the points lie on it.

    Args:
        layout: (n, 2) or (n, 3) coordinates; (n, 1) is drawn on a line at y = 0.
        labels: (n,) integer class labels; class c is named ``class_names[c]``.
        class_names: names indexed by label (labels beyond it are shown as numbers).
        title: figure title.
        uirevision: constant per view, so zoom persists across updates.
        customdata: (n, ...) per-point data returned by selections; defaults to the row index,
            so a selected point maps back to its probe sample.
        axis_labels: axis titles.
    """
    points = np.asarray(layout, dtype=np.float64)
    if points.ndim != 2 or not 1 <= points.shape[1] <= 3:
        raise ValueError(f"The 'layout' must have shape (n, 2) or (n, 3). Got {points.shape}.")
    if points.shape[1] == 1:
        points = np.pad(points, ((0, 0), (0, 1)))  # (n, 2)
    labels = np.asarray(labels)
    if labels.shape != (len(points),):
        raise ValueError(f"The 'labels' must have shape ({len(points)},). Got {labels.shape}.")
    extra = np.arange(len(points)) if customdata is None else np.asarray(customdata)
    three_d = points.shape[1] == 3
    fig = go.Figure()
    for label in np.unique(labels):
        mask = labels == label
        name = class_names[label] if 0 <= label < len(class_names) else str(label)
        common = {
            "mode": "markers",
            "name": name,
            "legendgroup": name,
            "customdata": extra[mask],
            "hovertemplate": f"{name}<br>point %{{customdata}}<extra></extra>",
        }
        if three_d:
            marker = {"size": 3, "color": class_color(label), "opacity": 0.85}
            x, y, z = points[mask].T
            fig.add_trace(go.Scatter3d(x=x, y=y, z=z, marker=marker, **common))
        else:
            marker = {"size": 5, "color": class_color(label), "opacity": 0.8}
            x, y = points[mask].T
            fig.add_trace(scatter_type(len(points))(x=x, y=y, marker=marker, **common))
    on_sphere = _on_unit_sphere(points)
    if three_d:
        if on_sphere:
            fig.add_trace(_unit_sphere_surface())
        axes = {"showbackground": False, "zeroline": False}
        fig.update_layout(
            scene={
                "aspectmode": "cube" if on_sphere else "data",
                "xaxis": {"title": {"text": axis_labels[0]}, **axes},
                "yaxis": {"title": {"text": axis_labels[1]}, **axes},
                "zaxis": {"title": {"text": axis_labels[2]}, **axes},
                "uirevision": uirevision,
            }
        )
    else:
        if on_sphere:
            line = {"color": "rgba(0,0,0,0.25)", "width": 1, "dash": "dot"}
            fig.add_shape(type="circle", x0=-1, y0=-1, x1=1, y1=1, line=line, layer="below")
        fig.update_xaxes(title_text=axis_labels[0], zeroline=False)
        fig.update_yaxes(title_text=axis_labels[1], zeroline=False, scaleanchor="x", scaleratio=1)
    _style(fig, title, uirevision, height=500, legend="right")
    fig.update_layout(legend={"itemsizing": "constant", "title": {"text": "class"}})
    return fig


def _unit_sphere_surface(resolution: int = 30) -> go.Surface:
    """A faint, non-interactive unit sphere behind points that live on it."""
    theta = np.linspace(0.0, np.pi, resolution)  # polar angle
    phi = np.linspace(0.0, 2.0 * np.pi, 2 * resolution)  # azimuth
    x = np.outer(np.sin(theta), np.cos(phi))  # (resolution, 2 * resolution)
    y = np.outer(np.sin(theta), np.sin(phi))
    z = np.outer(np.cos(theta), np.ones_like(phi))
    grey, wire = [[0.0, "#9aa5b1"], [1.0, "#9aa5b1"]], {"show": True, "color": "rgba(0,0,0,0.08)"}
    return go.Surface(
        x=x, y=y, z=z, name="unit sphere", opacity=0.12, colorscale=grey, showscale=False,
        showlegend=False, hoverinfo="skip", contours={"x": wire, "z": wire},
    )  # fmt: skip


class HistogramAxes(NamedTuple):
    """Fixed axes for every snapshot of a run: the bins, the x-range and the top of the y-axis.

    Steady axes make "watch the distributions separate" mean what it says: with per-snapshot
    autoscaling the eye follows the axes instead of the data.
    """

    x_range: tuple[float, float]
    y_max: float
    bins: dict[str, float]


def _finite(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64).ravel()
    return values[np.isfinite(values)]


def histogram_top(
    pos: np.ndarray, neg: np.ndarray, lines: Mapping[str, float], on_sphere: bool
) -> float:
    """The end of the x-axis that one snapshot needs (``histogram_axes`` takes the largest).

    2 on the unit sphere, else its largest distance; past its margin lines either way (5 %
    headroom).
    """
    pos, neg = _finite(pos), _finite(neg)
    top = 2.0 if on_sphere else 0.0
    values = np.concatenate([pos, neg, np.asarray(list(lines.values()), dtype=np.float64)])
    if len(values) and not on_sphere:
        top = max(top, float(values.max()) * 1.05)
    if lines:
        top = max(top, max(lines.values()) * 1.05)
    return top


def density_peak(pos: np.ndarray, neg: np.ndarray, top: float, nbins: int = 60) -> float:
    """The highest density bar of one snapshot's histograms on ``nbins`` bins over [0, top]."""
    edges = bin_edges(axes_for(top, (), nbins).bins)  # the figure's own bins
    peak = 0.0
    for values in (_finite(pos), _finite(neg)):
        if len(values):
            density, _ = np.histogram(values, bins=edges, density=True)
            peak = max(peak, float(density.max()))
    return peak


def shared_top(tops: Iterable[float], on_sphere: bool) -> float:
    """The x-axis end for all snapshots, from each one's ``histogram_top``."""
    top = max(tops, default=2.0 if on_sphere else 0.0)
    return top if top > 0 else 1.0


def axes_for(top: float, peaks: Iterable[float], nbins: int = 60) -> HistogramAxes:
    """The axes over [0, ``top``] from each snapshot's ``density_peak`` at that top."""
    y_max = max(peaks, default=0.0)
    size = top / nbins
    bins = {"start": 0.0, "end": top + size, "size": size}
    return HistogramAxes((0.0, top), y_max * 1.05 if y_max > 0 else 1.0, bins)


def histogram_axes(
    samples: Iterable[tuple[np.ndarray, np.ndarray, Mapping[str, float]]],
    on_sphere: bool,
    nbins: int = 60,
) -> HistogramAxes:
    """Axes that fit every snapshot of a run: x in [0, 2] on the unit sphere, else [0, max].

    The parts (``histogram_top``, ``density_peak``) are per snapshot, so a caller that keeps
    them per snapshot folds a new one in without reading the others again (the Train page).

    Args:
        samples: per snapshot, (positive distances, negative distances, margin lines).
        on_sphere: whether the run's embeddings are L2-normalised (distances lie in [0, 2]).
        nbins: bins over the x-range, shared by every snapshot.
    """
    samples = list(samples)
    tops = (histogram_top(pos, neg, lines, on_sphere) for pos, neg, lines in samples)
    top = shared_top(tops, on_sphere)
    return axes_for(top, (density_peak(pos, neg, top, nbins) for pos, neg, _ in samples), nbins)


class SteadyAxes(NamedTuple):
    """Axes that stay put while scrubbing: histogram bins and ranges, and the sphere's top."""

    histogram: HistogramAxes
    sphere_top: float


def steady_axes(
    snapshots: Sequence[Snapshot], on_sphere: bool, sphere_tops: Sequence[float] | None = None
) -> SteadyAxes:
    """Fixed axes over every snapshot of every shown run (one run on Train) (``histogram_axes``).

    Args:
        snapshots: all snapshots that the scrubber can show, of all runs.
        on_sphere: whether every run trains on the unit sphere (x in [0, 2]); otherwise the
            x-axis spans the runs' global range.
        sphere_tops: ``sphere.sphere_density_max`` of each snapshot's probe embeddings, when the
            caller has them cached; computed here otherwise.
    """
    hist = histogram_axes([(s.pos_dist, s.neg_dist, s.lines) for s in snapshots], on_sphere)
    if sphere_tops is None:
        sphere_tops = [sphere_density_max(s.probe_emb) for s in snapshots]
    return SteadyAxes(hist, max(sphere_tops, default=0.0))


def distance_histogram_figure(
    pos: np.ndarray,
    neg: np.ndarray,
    lines: Mapping[str, float],
    overlap: float | None,
    title: str = "Positive and negative pair distances",
    uirevision: str = "distances",
    nbins: int = 60,
    axes: HistogramAxes | None = None,
) -> go.Figure:
    """Overlaid density histograms of positive and negative pair distances, on shared bins.

    A loss with margin(s) wants positives left of its line(s) and negatives right of them; the
    overlap P(d- < d+) (the chance a random negative is closer than a random positive) is what
    retrieval errors come from.

    Args:
        pos: positive-pair distances, (m,).
        neg: negative-pair distances, (k,).
        lines: label -> distance, drawn as dashed vertical lines (e.g. {"margin": 0.2}).
        overlap: P(d- < d+), shown in the title when given.
        title: figure title.
        uirevision: constant per view.
        nbins: number of shared bins (when no ``axes`` are given).
        axes: fixed bins and ranges for every snapshot of a run (``histogram_axes``).
    """
    pos = np.asarray(pos, dtype=np.float64).ravel()
    neg = np.asarray(neg, dtype=np.float64).ravel()
    both = np.concatenate([pos, neg])
    both = both[np.isfinite(both)]
    bins = None if axes is None else axes.bins
    if bins is None and len(both):
        lo, hi = float(both.min()), float(both.max())
        size = (hi - lo) / nbins if hi > lo else 1e-3
        bins = {"start": lo, "end": hi + size, "size": size}
    fig = go.Figure()
    for values, name, color in (
        (pos, "positive pairs", POSITIVE_COLOR),
        (neg, "negative pairs", NEGATIVE_COLOR),
    ):
        fig.add_trace(_histogram(values, f"{name} (n={len(values)})", color, bins, 0.55))
    for i, (label, value) in enumerate(lines.items()):
        fig.add_vline(
            x=float(value),
            line={"dash": "dash", "color": "#333333", "width": 1.5},
            annotation={
                "text": f"{math_text(label)} = {value:.3g}",
                "font": {"size": 12},
                "bgcolor": "rgba(255,255,255,0.8)",
                "yshift": -18 * i,  # stagger labels of nearby lines
            },
            annotation_position="top right",
        )
    if overlap is not None:
        title = f"{title}   ·   P(d⁻ < d⁺) ≈ {overlap:.2f}"
    _style(fig, title, uirevision)
    fig.update_layout(barmode="overlay", bargap=0.0)
    fig.update_xaxes(title_text="distance d")
    fig.update_yaxes(title_text="density")
    if axes is not None:
        fig.update_xaxes(range=list(axes.x_range))
        fig.update_yaxes(range=[0.0, axes.y_max])
    return fig


def curves_figure(
    history: pd.DataFrame,
    x: str = "step",
    uirevision: str = "curves",
    title: str = "Training curves",
    marker_x: float | None = None,
) -> go.Figure:
    """Loss, shares of the mined tuples, retrieval metrics, tuples per batch, scalars.

    A grid of panels (``CURVE_PANELS``); each curve is drawn only when its column is present,
    so any history works. Mining shares and retrieval metrics share a [0, 1] y-axis.

    Args:
        history: one row per snapshot (``history_frame``), columns as in ``Snapshot.scalars``.
        x: the column on the x-axis (``step``, ``samples_seen`` or ``elapsed``); the row number
            when absent.
        uirevision: constant per view.
        title: figure title.
        marker_x: the scrubbed position on the x-axis, drawn as a vertical line in every panel
            (the curves always show the whole run).
    """
    if history is None or len(history) == 0:
        return _waiting_figure(title, uirevision)
    if x in history.columns:
        xs = history[x].to_numpy(dtype=np.float64, na_value=np.nan)
        x_title = x.replace("_", " ")
    else:
        xs = np.arange(len(history), dtype=np.float64)
        x_title = "snapshot"
    fig = make_subplots(
        rows=3,
        cols=2,
        subplot_titles=[panel for panel, _ in CURVE_PANELS],
        horizontal_spacing=0.1,
        vertical_spacing=0.1,
    )
    drawn = []  # the panels with curves, by axis suffix ("" for the first)
    for i, (_, curves) in enumerate(CURVE_PANELS):
        row, col = divmod(i, 2)
        present = [column for column in curves if column in history.columns]
        axis = str(i + 1) if i else ""
        if not present:
            _note(fig, "not recorded in this run", axis=axis)
            continue
        drawn.append(axis)
        for column in present:
            ys = pd.to_numeric(history[column], errors="coerce").to_numpy(
                dtype=np.float64, na_value=np.nan
            )
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=ys,
                    mode="lines+markers" if len(xs) < 30 else "lines",
                    connectgaps=True,  # metrics may be computed less often than the loss
                    name=CURVE_NAMES.get(column, column),
                    line={"color": CURVE_COLORS.get(column, OTHER_CURVE_COLOR), "width": 2},
                    marker={"size": 4},
                ),
                row=row + 1,
                col=col + 1,
            )
        if i in FRACTION_PANELS:
            fig.update_yaxes(range=[0.0, 1.02], row=row + 1, col=col + 1)
        elif i in COUNT_PANELS:
            fig.update_yaxes(rangemode="tozero", row=row + 1, col=col + 1)
        last_row = i >= len(CURVE_PANELS) - 2
        fig.update_xaxes(title_text=x_title if last_row else None, row=row + 1, col=col + 1)
    if marker_x is not None:  # one layout update: add_vline(row="all") took a third of the time
        line = {"dash": "dot", "color": "#444444", "width": 1.5}
        at = float(marker_x)
        shapes = [
            {"type": "line", "xref": f"x{axis}", "yref": f"y{axis} domain", "line": line}
            | {"x0": at, "x1": at, "y0": 0, "y1": 1}
            for axis in drawn
        ]
        fig.update_layout(shapes=shapes)
    _style(fig, title, uirevision, height=820, legend="bottom")
    fig.update_layout(legend={"y": -0.07})
    return fig


def history_frame(snapshots: Sequence[Snapshot]) -> pd.DataFrame:
    """One row per snapshot from ``Snapshot.scalars()``, in the given order."""
    rows = [snapshot.scalars() for snapshot in snapshots]
    if not rows:
        return pd.DataFrame(columns=["step", "samples_seen", "elapsed", "loss", "active_fraction"])
    return pd.DataFrame(rows)
