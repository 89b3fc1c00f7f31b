"""Figures of distances on the unit sphere: a run's pairwise distances against q(d), and q(d).

Uniformly spread points in D dimensions are almost all ~sqrt(2) apart (Wu et al., Sampling
Matters in Deep Embedding Learning, ICCV 2017, Eq. 3); the Train page compares a run's probe
set with that density, the Sphere & sampling page draws the density for several dimensions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.colors import sample_colorscale

from dml_core.figures.style import (
    CLASS_COLORS,
    _density_grid,
    _histogram,
    _sqrt2_line,
    _style,
    bin_edges,
)


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
    density, _ = np.histogram(dists, bins=bin_edges(SPHERE_BINS), density=True)
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
    # Viridis from 0.3: its darkest purple (#440154) all but vanished on a dark page (1.4:1 on
    # #0e1117); #355f8d reads on both (3:1 there, 6.6:1 on white), as does the yellow end.
    colors = sample_colorscale("Viridis", np.linspace(0.3, 0.95, max(len(dims), 2)).tolist())
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
