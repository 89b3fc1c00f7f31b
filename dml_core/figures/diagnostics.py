r"""Figures of the representation's geometry over a run, and class weights among the points.

Pure functions, numpy / pandas in, ``go.Figure`` out (no streamlit, no torch). Every value is
read from the run's snapshots (``Snapshot.geometry`` and ``collapse`` via the metrics table,
``Snapshot.class_weights``); nothing is recomputed here.

- ``alignment_uniformity_figure``: the run's path in the (uniformity, alignment) plane, as in
  Wang & Isola, "Understanding Contrastive Representation Learning through Alignment and
  Uniformity on the Hypersphere", ICML 2020, Fig. 1: x = uniformity (log of the mean Gaussian
  potential over all pairs, Eq. 2), y = alignment (mean squared distance of positive pairs,
  Eq. 1); lower is better on both, so a good run heads to the lower left.
- ``effective_rank_figure``: the effective rank (Roy & Vetterli 2007, Def. 1; RankMe, Garrido
  et al., ICML 2023) over the run, under its ceiling D and above the dimensional-collapse floor.
- ``add_class_weights``: a class-level loss's class weights or centres drawn on an embedding
  figure, a larger symbol in each class's colour.

Both run figures take their axes from the whole run (``geometry_axes``), so scrubbing moves
only the marker, as the live histograms do (``live.steady_axes``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from dml_core.figures.style import _note, _style, _waiting_figure, class_color, overlay_type

__all__ = [
    "GeometryAxes",
    "add_class_weights",
    "alignment_uniformity_figure",
    "effective_rank_figure",
    "geometry_axes",
    "split_layout",
    "with_class_weights",
]

PATH_COLOR = "#1f77b4"
RANK_COLOR = "#9467bd"
FLOOR_COLOR = "#d64545"
MANY_WEIGHTS = 30  # more class weights than this are drawn smaller
NOT_RECORDED = "not recorded in this run (saved before the geometry diagnostics)"


class GeometryAxes(NamedTuple):
    """Fixed ranges over a whole run: the (uniformity, alignment) plane and the rank's top."""

    uniformity: tuple[float, float]
    alignment: tuple[float, float]
    rank_top: float


def _column(history: pd.DataFrame, name: str) -> np.ndarray:
    """A numeric column of the metrics table (NaN where missing), float64."""
    if name not in history.columns:
        return np.full(len(history), np.nan)
    values = pd.to_numeric(history[name], errors="coerce")
    return values.to_numpy(dtype=np.float64, na_value=np.nan)


def _padded(values: np.ndarray, share: float = 0.08, floor: float = 0.05) -> tuple[float, float]:
    """The finite values' range, widened by ``share`` of its span (at least ``floor``)."""
    finite = values[np.isfinite(values)]
    if not len(finite):
        return (0.0, 1.0)
    low, high = float(finite.min()), float(finite.max())
    pad = max((high - low) * share, floor)
    return (low - pad, high + pad)


def geometry_axes(history: pd.DataFrame, dim: int) -> GeometryAxes:
    """Ranges that hold every snapshot of the run (alignment never below 0, rank up to D).

    Args:
        history: the run's metrics table (``RunStore.history``), one row per snapshot.
        dim: the embedding dimension D, the effective rank's ceiling.
    """
    low, high = _padded(_column(history, "alignment"))
    return GeometryAxes(
        _padded(_column(history, "uniformity")),
        (max(low, 0.0), high),  # alignment is a mean of distances: never negative
        float(dim) * 1.08,
    )


def _recorded(history: pd.DataFrame | None, columns: Sequence[str]) -> bool:
    return history is not None and all(
        c in history.columns and np.isfinite(_column(history, c)).any() for c in columns
    )


def _current(history: pd.DataFrame, marker_step: float | None) -> int:
    """Row of the snapshot at ``marker_step`` (the last row when None or absent)."""
    steps = _column(history, "step")
    if marker_step is not None:
        hits = np.flatnonzero(steps == float(marker_step))
        if len(hits):
            return int(hits[0])
    return len(history) - 1


def alignment_uniformity_figure(
    history: pd.DataFrame | None,
    marker_step: float | None = None,
    axes: GeometryAxes | None = None,
    uirevision: str = "align-uniform",
    title: str = "Alignment and uniformity, lower left is better",
) -> go.Figure:
    """The run's path in the (uniformity, alignment) plane, the current snapshot marked.

    One line through the snapshots in step order: solid up to the shown snapshot, faint after
    it (while scrubbing), a hollow circle at the start and a star at the shown snapshot.

    Args:
        history: the run's metrics table with ``step``, ``uniformity`` and ``alignment``.
        marker_step: the step of the shown snapshot (default: the last row).
        axes: fixed ranges (``geometry_axes``); fitted to the path when None.
        uirevision: constant per view.
        title: figure title.
    """
    if history is None or len(history) == 0:
        return _waiting_figure(title, uirevision)
    fig = go.Figure()
    if not _recorded(history, ("uniformity", "alignment")):
        _note(fig, NOT_RECORDED)
        return _style(fig, title, uirevision)
    history = history.sort_values("step")
    steps = _column(history, "step")
    x, y = _column(history, "uniformity"), _column(history, "alignment")
    now = _current(history, marker_step)
    hover = "step %{customdata}<br>uniformity %{x:.3f}<br>alignment %{y:.3f}<extra></extra>"
    common = {"mode": "lines+markers", "customdata": steps, "hovertemplate": hover}
    line = {"color": PATH_COLOR, "width": 2}
    fig.add_trace(
        go.Scatter(x=x[: now + 1], y=y[: now + 1], name="path so far", line=line,
                   marker={"size": 5}, **{**common, "customdata": steps[: now + 1]})
    )  # fmt: skip
    if now < len(history) - 1:
        faint = {"color": PATH_COLOR, "width": 1, "dash": "dot"}
        fig.add_trace(
            go.Scatter(x=x[now:], y=y[now:], name="later", line=faint, opacity=0.45,
                       marker={"size": 4}, **{**common, "customdata": steps[now:]})
        )  # fmt: skip
    points = (
        (0, "start", {"symbol": "circle-open", "size": 12, "color": "#555555"}),
        (now, f"step {int(steps[now])}", {"symbol": "star", "size": 16, "color": "#ff7f0e"}),
    )
    for row, name, marker in points:
        marker = {**marker, "line": {"width": 1.5, "color": "#333333"}}
        fig.add_trace(
            go.Scatter(x=[x[row]], y=[y[row]], mode="markers", name=name, marker=marker,
                       customdata=[steps[row]], hovertemplate=hover)
        )  # fmt: skip
    axes = axes or geometry_axes(history, 1)
    fig.update_xaxes(
        title_text="uniformity  (lower: spread more evenly)", range=list(axes.uniformity)
    )
    fig.update_yaxes(title_text="alignment  (lower: positives closer)", range=list(axes.alignment))
    return _style(fig, title, uirevision)


def effective_rank_figure(
    history: pd.DataFrame | None,
    dim: int,
    marker_step: float | None = None,
    axes: GeometryAxes | None = None,
    uirevision: str = "effective-rank",
    title: str = "Effective rank of the probe embeddings",
) -> go.Figure:
    """The effective rank per snapshot, with its ceiling D and the dimensional-collapse floor.

    Args:
        history: the run's metrics table with ``step`` and ``effective_rank`` (``rank_floor``
            drawn when recorded).
        dim: the embedding dimension D, drawn as the ceiling.
        marker_step: the step of the shown snapshot, a vertical dotted line.
        axes: fixed ranges (``geometry_axes``); [0, 1.08 D] when None.
        uirevision: constant per view.
        title: figure title.
    """
    if history is None or len(history) == 0:
        return _waiting_figure(title, uirevision)
    fig = go.Figure()
    if not _recorded(history, ("effective_rank",)):
        _note(fig, NOT_RECORDED)
        return _style(fig, title, uirevision)
    history = history.sort_values("step")
    steps, rank = _column(history, "step"), _column(history, "effective_rank")
    fig.add_trace(
        go.Scatter(x=steps, y=rank, name="effective rank", mode="lines+markers",
                   line={"color": RANK_COLOR, "width": 2}, marker={"size": 5},
                   hovertemplate="step %{x}<br>effective rank %{y:.2f}<extra></extra>")
    )  # fmt: skip
    fig.add_hline(
        y=float(dim), line={"dash": "dash", "color": "#333333", "width": 1.5},
        annotation={"text": f"ceiling: D = {dim}", "font": {"size": 12}},
        annotation_position="top left",  # the right end carries the step marker
    )  # fmt: skip
    floor = _column(history, "rank_floor")
    if np.isfinite(floor).any():
        fig.add_trace(
            go.Scatter(x=steps, y=floor, name="dimensional collapse below", mode="lines",
                       line={"color": FLOOR_COLOR, "width": 1.5, "dash": "dot"},
                       hovertemplate="step %{x}<br>collapse floor %{y:.2f}<extra></extra>")
        )  # fmt: skip
    if marker_step is not None:
        fig.add_vline(x=float(marker_step), line={"dash": "dot", "color": "#444444", "width": 1.5})
    top = axes.rank_top if axes is not None else float(dim) * 1.08
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(title_text="effective rank", range=[0.0, top])
    return _style(fig, title, uirevision)


def with_class_weights(probe_emb: np.ndarray, class_weights: np.ndarray | None) -> np.ndarray:
    """The probe embeddings with the class weights stacked below, to project them together."""
    if class_weights is None or not len(class_weights):
        return probe_emb
    return np.concatenate([probe_emb, np.asarray(class_weights, dtype=probe_emb.dtype)])


def split_layout(layout: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray | None]:
    """A layout of ``with_class_weights`` split into the n probe points and the weights.

    A layout of exactly n rows (computed without weights) comes back whole, with None.
    """
    if len(layout) <= n:
        return layout, None
    return layout[:n], layout[n:]


def add_class_weights(
    fig: go.Figure,
    points: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
) -> go.Figure:
    """Draw class weights or centres on an ``embedding_figure``: one legend entry "class weights".

    Each weight is a diamond in its class's colour with a dark outline, larger than the probe
    points (a little smaller when there are many, e.g. SoftTriple's 10 centres per class, so
    they do not hide the points); 3-D points go on the figure's scene (the direct view at
    D = 3, on the sphere).

    Args:
        fig: the embedding figure (2-D or 3-D, as ``points``).
        points: (rows, 2) or (rows, 3) coordinates in the figure's space.
        labels: (rows,) the class of each row.
        class_names: names indexed by label, for the hover text.
    """
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] not in (2, 3) or len(points) != len(labels):
        raise ValueError(
            f"The 'points' must have shape ({len(labels)}, 2) or ({len(labels)}, 3). "
            f"Got {points.shape}."
        )
    names = [class_names[c] if 0 <= c < len(class_names) else str(c) for c in labels]
    colors = [class_color(c) for c in labels]
    common = {
        "mode": "markers",
        "name": "class weights",
        "legendgroup": "class weights",
        "text": names,
        "hovertemplate": "class weight of %{text}<extra></extra>",
    }
    many = len(points) > MANY_WEIGHTS
    if points.shape[1] == 3:
        marker = {
            "size": 5 if many else 7,
            "color": colors,
            "symbol": "diamond",
            "line": {"width": 2},
        }
        marker["line"]["color"] = "#222222"
        x, y, z = points.T
        fig.add_trace(go.Scatter3d(x=x, y=y, z=z, marker=marker, **common))
    else:
        marker = {"size": 9 if many else 13, "color": colors, "symbol": "diamond"}
        marker["line"] = {"width": 1.5, "color": "#222222"}
        x, y = points.T
        fig.add_trace(overlay_type(fig)(x=x, y=y, marker=marker, **common))
    return fig
