r"""Plotly figures of a training run, built from snapshots; pages only display them.

Pure functions: numpy / pandas in, ``go.Figure`` out; no streamlit, no torch. Every figure uses
the ``plotly_white`` template, a constant ``uirevision`` (so a user's zoom and legend clicks
survive live updates) and a height that suits a Streamlit column; classes keep one colour in
every figure (``CLASS_COLORS``, indexed by label).

What they show (the Train page):
    - ``embedding_figure``: the probe set's layout (UMAP / PCA / direct view), one trace per class.
    - ``distance_histogram_figure``: positive vs negative pair distances with the margins.
    - ``sphere_distance_figure``: all pairwise distances of the L2-normalised embeddings against
      q(d), the density for points uniform on S^{D-1} (Wu et al., Sampling Matters in Deep
      Embedding Learning, ICCV 2017, Eq. 3), which concentrates at sqrt(2) as D grows.
    - ``curves_figure``: loss, active fraction, retrieval metrics (Musgrave et al., A Metric
      Learning Reality Check, ECCV 2020: P@1, R-Precision, MAP@R) and learnable scalars.
    - ``density_figure``: q(d) for several dimensions, optionally against sampled distances.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import sample_colorscale
from plotly.subplots import make_subplots

from dml_core.figures.style import (
    CLASS_COLORS,
    CURVE_COLORS,
    NEGATIVE_COLOR,
    OTHER_CURVE_COLOR,
    POSITIVE_COLOR,
    _density_grid,
    _histogram,
    _note,
    _on_unit_sphere,
    _sqrt2_line,
    _style,
    _waiting_figure,
    class_color,
    math_text,
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

    A 2-D layout gives ``go.Scattergl`` traces with equal axis scales (a unit circle is drawn
    when the points lie on it); a 3-D layout (direct view of a 3-D embedding) gives
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
            fig.add_trace(go.Scattergl(x=x, y=y, marker=marker, **common))
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


def histogram_axes(
    samples: Iterable[tuple[np.ndarray, np.ndarray, Mapping[str, float]]],
    on_sphere: bool,
    nbins: int = 60,
) -> HistogramAxes:
    """Axes that fit every snapshot of a run: x in [0, 2] on the unit sphere, else [0, max].

    Args:
        samples: per snapshot, (positive distances, negative distances, margin lines).
        on_sphere: whether the run's embeddings are L2-normalised (distances lie in [0, 2]).
        nbins: bins over the x-range, shared by every snapshot.
    """
    samples = [(_finite(pos), _finite(neg), dict(lines)) for pos, neg, lines in samples]
    top = 2.0 if on_sphere else 0.0
    for pos, neg, lines in samples:
        values = np.concatenate([pos, neg, np.asarray(list(lines.values()), dtype=np.float64)])
        if len(values) and not on_sphere:
            top = max(top, float(values.max()) * 1.05)
        if lines:
            top = max(top, max(lines.values()) * 1.05)
    top = top if top > 0 else 1.0
    size = top / nbins
    edges = np.linspace(0.0, top, nbins + 1)  # (nbins + 1,)
    y_max = 0.0
    for pos, neg, _ in samples:
        for values in (pos, neg):
            if len(values):
                density, _ = np.histogram(values, bins=edges, density=True)
                y_max = max(y_max, float(density.max()))
    bins = {"start": 0.0, "end": top + size, "size": size}
    return HistogramAxes((0.0, top), y_max * 1.05 if y_max > 0 else 1.0, bins)


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


def _pairwise_upper(points: np.ndarray) -> np.ndarray:
    """Distances ||x_i - x_j|| for i < j of unit rows, as a flat array (n (n - 1) / 2,)."""
    gram = points @ points.T  # (n, n)
    dist = np.sqrt(np.clip(2.0 - 2.0 * gram, 0.0, None))  # (n, n)
    return dist[np.triu_indices(len(points), k=1)]


SPHERE_BINS = {"start": 0.0, "end": 2.0, "size": 0.025}


def sphere_distances(emb: np.ndarray, max_points: int = 1000) -> np.ndarray:
    """All pairwise distances (i < j) of the L2-normalised rows of ``emb``, a flat array.

    At most ``max_points`` rows enter (a fixed-seed subsample), so 1000 points give 499,500
    distances whatever the probe size.
    """
    points = np.asarray(emb, dtype=np.float64)
    points = points / np.clip(np.linalg.norm(points, axis=1, keepdims=True), 1e-12, None)
    if len(points) > max_points:
        keep = np.sort(np.random.default_rng(0).choice(len(points), max_points, replace=False))
        points = points[keep]
    return _pairwise_upper(points)


def sphere_density_max(emb: np.ndarray, max_points: int = 1000) -> float:
    """The highest bar of ``sphere_distance_figure``'s histogram for ``emb`` (same bins)."""
    dists = sphere_distances(emb, max_points)
    edges = np.arange(0.0, 2.0 + SPHERE_BINS["size"] / 2, SPHERE_BINS["size"])
    density, _ = np.histogram(dists, bins=edges, density=True)
    return float(density.max()) if len(dists) else 0.0


def sphere_distance_figure(
    emb: np.ndarray,
    title: str = "All pairwise distances on the unit sphere",
    max_points: int = 1000,
    uirevision: str = "sphere",
    y_max: float | None = None,
    trained_on_sphere: bool = True,
) -> go.Figure:
    """Histogram of pairwise distances of the L2-normalised embeddings vs uniform-sphere q(d).

    Uniformly spread points in D dimensions are almost all ~sqrt(2) apart (Wu et al. 2017,
    Eq. 3); a trained embedding should pull same-class pairs well below that, and a collapsed
    one piles everything near 0.

    Args:
        emb: embeddings, (n, D); normalised here.
        title: figure title.
        max_points: at most this many points (a fixed-seed subsample) enter the i < j pairs.
        uirevision: constant per view.
        y_max: top of the y-axis, fixed for every snapshot of a run (None: autoscale).
        trained_on_sphere: False when the run trains without normalisation: the figure then
            says that it normalised the points for this plot only.
    """
    dists = sphere_distances(emb, max_points)
    dim = np.asarray(emb).shape[1]
    n_points = min(len(emb), max_points)
    fig = go.Figure()
    name = f"{n_points} probe points ({len(dists)} pairs)"
    fig.add_trace(_histogram(dists, name, CLASS_COLORS[0], SPHERE_BINS, 0.6))
    density_top = 0.0
    if dim >= 2:
        grid, density = _density_grid(dim)
        density_top = float(np.nanmax(density[np.isfinite(density)]))
        fig.add_trace(
            go.Scatter(
                x=grid,
                y=density,
                mode="lines",
                name=f"uniform on S<sup>{dim - 1}</sup>",
                line={"color": "#222222", "width": 2},
            )
        )
    _sqrt2_line(fig, "top right")
    if not trained_on_sphere:
        title = f"{title}, normalised for this plot (the run trains off the sphere)"
    _style(fig, f"{title} (D = {dim})", uirevision)
    fig.update_layout(bargap=0.0)
    fig.update_xaxes(title_text="distance d", range=[0.0, 2.0])
    fig.update_yaxes(title_text="density")
    if y_max is not None:
        fig.update_yaxes(range=[0.0, max(y_max, min(density_top, 3 * y_max)) * 1.05])
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
    for i, (_, curves) in enumerate(CURVE_PANELS):
        row, col = divmod(i, 2)
        present = [column for column in curves if column in history.columns]
        if not present:
            _note(fig, "not recorded in this run", axis=str(i + 1) if i else "")
            continue
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
        last_row = i >= len(CURVE_PANELS) - 2
        fig.update_xaxes(title_text=x_title if last_row else None, row=row + 1, col=col + 1)
    if marker_x is not None:
        line = {"dash": "dot", "color": "#444444", "width": 1.5}
        fig.add_vline(x=float(marker_x), line=line, row="all", col="all")
    _style(fig, title, uirevision, height=820, legend="bottom")
    fig.update_layout(legend={"y": -0.07})
    return fig


def density_figure(
    dims: Sequence[int],
    samples: Mapping[int, np.ndarray] | None = None,
    title: str = "Distance between two random points on the unit sphere S<sup>n−1</sup>",
    uirevision: str = "density",
) -> go.Figure:
    """The analytic density q(d) (Wu et al. 2017, Eq. 3) for several dimensions n.

    Args:
        dims: ambient dimensions n >= 2; one curve each.
        samples: optional n -> sampled distances (e.g. of uniform random points), drawn as
            density histograms in the curve's colour.
        title: figure title.
        uirevision: constant per view.
    """
    dims = [int(n) for n in dims]
    colors = sample_colorscale("Viridis", np.linspace(0.0, 0.9, max(len(dims), 2)).tolist())
    fig = go.Figure()
    for n, color in zip(dims, colors, strict=False):
        grid, density = _density_grid(n)
        fig.add_trace(
            go.Scatter(x=grid, y=density, mode="lines", name=f"n = {n}", line={"color": color})
        )
        if samples is not None and n in samples:
            values = np.asarray(samples[n], dtype=np.float64).ravel()
            bins = {"start": 0.0, "end": 2.0, "size": 0.02}
            fig.add_trace(_histogram(values, f"sampled, n = {n}", color, bins, 0.35))
    _sqrt2_line(fig, "top left")
    _style(fig, title, uirevision)
    fig.update_layout(barmode="overlay", bargap=0.0)
    fig.update_xaxes(title_text="distance d", range=[0.0, 2.0])
    fig.update_yaxes(title_text="density q(d)")
    return fig


def history_frame(snapshots: Sequence[Snapshot]) -> pd.DataFrame:
    """One row per snapshot from ``Snapshot.scalars()``, in the given order."""
    rows = [snapshot.scalars() for snapshot in snapshots]
    if not rows:
        return pd.DataFrame(columns=["step", "samples_seen", "elapsed", "loss", "active_fraction"])
    return pd.DataFrame(rows)
