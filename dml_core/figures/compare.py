r"""Plotly figures that put several runs side by side; pages only display them.

Built on the single-run figures of ``figures.py`` (their traces are reused, then placed in
panels with shared axes), with one colour per run (``run_color``) in every overlaid figure and
the class colours of ``figures.CLASS_COLORS`` in the embedding panels.

- ``embedding_panels_figure``: aligned layouts (``compare.aligned_layouts``), one panel per run,
  identical axis ranges, so the same class is in the same place in every panel.
- ``histogram_panels_figure``: positive / negative pair distances, one panel per run, on shared
  bins and shared x and y axes, with each run's margin lines.
- ``sphere_overlay_figure``: pairwise distances on the unit sphere, one outline per run, with
  q(d) of uniform points (Wu et al., Sampling Matters, ICCV 2017, Eq. 3) for each dimension.
- ``metric_curves_figure``: P@1, R-Precision and MAP@R (Musgrave et al., A Metric Learning
  Reality Check, ECCV 2020) against samples seen or wall time, one line per run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dml_core.figures.live import distance_histogram_figure, embedding_figure
from dml_core.figures.live import sphere_distance_figure as _sphere_figure
from dml_core.figures.style import _style
from dml_core.geometry import SQRT2
from dml_core.snapshot import Snapshot

# Runs are told apart by these (bright, distinct from the muted D3 class colours).
RUN_COLORS: tuple[str, ...] = ("#2E91E5", "#E15F99", "#1CA71C", "#FB0D0D", "#DA16FF", "#222A2A")
X_AXES = {"samples_seen": "samples seen", "elapsed": "wall time (s)", "step": "step"}
CURVES = {"precision_at_1": "P@1", "r_precision": "R-Precision", "map_at_r": "MAP@R"}
SPHERE_BIN = 0.025


def run_color(index: int) -> str:
    """The colour of the ``index``-th compared run (the same in every figure)."""
    return RUN_COLORS[index % len(RUN_COLORS)]


def _padded_range(values: np.ndarray, pad: float = 0.06) -> list[float]:
    lo, hi = float(np.min(values)), float(np.max(values))
    span = hi - lo or 1.0
    return [lo - pad * span, hi + pad * span]


def embedding_panels_figure(
    layouts: Sequence[np.ndarray],
    labels: np.ndarray,
    class_names: Sequence[str],
    titles: Sequence[str],
    title: str = "Probe set, aligned layouts",
    uirevision: str = "compare-embedding",
) -> go.Figure:
    """One scatter panel per run, same axis ranges and zoom (``matches``), coloured by class.

    Args:
        layouts: (n, 2) layouts in one frame (``compare.aligned_layouts``).
        labels: (n,) probe labels, shared by every run.
        class_names: names indexed by label.
        titles: one panel title per run.
        title: figure title.
        uirevision: constant per view (zoom survives reruns).
    """
    count = len(layouts)
    fig = make_subplots(rows=1, cols=count, subplot_titles=list(titles), horizontal_spacing=0.03)
    for i, layout in enumerate(layouts):
        single = embedding_figure(layout, labels, class_names, "", customdata=None)
        for trace in single.data:
            trace.update(showlegend=i == 0, marker={"size": 4})
            fig.add_trace(trace, row=1, col=i + 1)
    points = np.concatenate([np.asarray(layout) for layout in layouts])  # (count * n, 2)
    x_range, y_range = _padded_range(points[:, 0]), _padded_range(points[:, 1])
    for i in range(count):
        suffix = "" if i == 0 else str(i + 1)
        fig.update_xaxes(
            range=x_range, matches="x", showticklabels=False, zeroline=False, row=1, col=i + 1
        )
        fig.update_yaxes(
            range=y_range,
            matches="y",
            scaleanchor=f"x{suffix}",
            scaleratio=1,
            showticklabels=False,
            zeroline=False,
            row=1,
            col=i + 1,
        )
    _style(fig, title, uirevision, height=460, legend="right")
    fig.update_layout(
        legend={"itemsizing": "constant", "title": {"text": "class"}}, margin={"t": 110}
    )
    fig.update_annotations(font_size=12)
    return fig


def histogram_panels_figure(
    snapshots: Sequence[Snapshot],
    titles: Sequence[str],
    title: str = "Positive and negative pair distances",
    uirevision: str = "compare-hist",
    nbins: int = 60,
) -> go.Figure:
    """Pos/neg distance histograms, one panel per run, on shared bins and shared axes.

    Args:
        snapshots: one snapshot per run (``pos_dist``, ``neg_dist``, ``lines``, ``metrics``).
        titles: one panel title per run.
        title: figure title.
        uirevision: constant per view.
        nbins: bins over the range of all runs' distances.
    """
    count = len(snapshots)
    overlap = [s.metrics.get("pair_overlap") for s in snapshots]
    subtitles = [
        f"{t} · P(d⁻ < d⁺) ≈ {o:.2f}" if o is not None else t
        for t, o in zip(titles, overlap, strict=True)
    ]
    fig = make_subplots(
        rows=1, cols=count, shared_yaxes=True, subplot_titles=subtitles, horizontal_spacing=0.03
    )
    both = np.concatenate([np.concatenate([s.pos_dist, s.neg_dist]) for s in snapshots])
    both = both[np.isfinite(both)]
    lo, hi = (float(both.min()), float(both.max())) if len(both) else (0.0, 1.0)
    size = (hi - lo) / nbins if hi > lo else 1e-3
    bins = {"start": lo, "end": hi + size, "size": size}
    for i, snap in enumerate(snapshots):
        single = distance_histogram_figure(snap.pos_dist, snap.neg_dist, {}, None)
        for trace in single.data:
            trace.update(
                xbins=bins,
                showlegend=i == 0,
                legendgroup=trace.name.split(" (")[0],
                name=trace.name.split(" (")[0],
            )
            fig.add_trace(trace, row=1, col=i + 1)
        for j, (label, value) in enumerate(snap.lines.items()):
            fig.add_vline(
                x=float(value),
                line={"dash": "dash", "color": "#333333", "width": 1.2},
                annotation={
                    "text": f"{label}={value:.3g}",
                    "font": {"size": 10},
                    "yshift": -14 * j,
                },
                annotation_position="top right",
                row=1,
                col=i + 1,
            )
    fig.update_xaxes(range=[lo - size, hi + size], matches="x", title_text="distance d")
    fig.update_yaxes(rangemode="tozero")
    fig.update_yaxes(title_text="density", row=1, col=1)
    _style(fig, title, uirevision, height=420, legend="right")
    fig.update_layout(barmode="overlay", bargap=0.0, margin={"t": 110})
    fig.update_annotations(font_size=12, selector={"xref": "paper"})
    return fig


def sphere_overlay_figure(
    embs: Sequence[np.ndarray],
    names: Sequence[str],
    title: str = "Pairwise distances on the unit sphere",
    uirevision: str = "compare-sphere",
) -> go.Figure:
    """The distribution of pairwise probe distances (L2-normalised) of each run, overlaid.

    Each run is a step outline in its colour (so four runs stay readable); q(d) of points
    uniform on S^{D-1} is drawn once per distinct dimension D, dashed.

    Args:
        embs: (n, D_r) probe embeddings, one per run.
        names: one legend name per run.
        title: figure title.
        uirevision: constant per view.
    """
    fig = go.Figure()
    edges = np.arange(0.0, 2.0 + SPHERE_BIN, SPHERE_BIN)  # (bins + 1,)
    centres = (edges[:-1] + edges[1:]) / 2  # (bins,)
    densities: dict[int, go.Scatter] = {}
    for i, (emb, name) in enumerate(zip(embs, names, strict=True)):
        single = _sphere_figure(emb)
        dists = np.asarray(single.data[0].x)  # the i < j distances the single figure used
        density, _ = np.histogram(dists, bins=edges, density=True)  # (bins,)
        fig.add_trace(
            go.Scatter(
                x=centres,
                y=density,
                mode="lines",
                line={"shape": "hvh", "color": run_color(i), "width": 2},
                name=f"{name} (D = {emb.shape[1]})",
            )
        )
        if len(single.data) > 1:
            densities.setdefault(emb.shape[1], single.data[1])
    for dim, curve in sorted(densities.items()):
        fig.add_trace(
            go.Scatter(
                x=curve.x,
                y=curve.y,
                mode="lines",
                name=f"uniform on S<sup>{dim - 1}</sup>",
                line={"color": "#555555", "width": 1.5, "dash": "dash"},
            )
        )
    fig.add_vline(
        x=SQRT2,
        line={"dash": "dot", "color": "#555555", "width": 1.5},
        annotation={"text": "√2", "font": {"size": 12}},
        annotation_position="top right",
    )
    _style(fig, title, uirevision, height=420, legend="right")
    fig.update_xaxes(title_text="distance d", range=[0.0, 2.0])
    fig.update_yaxes(title_text="density")
    return fig


def metric_curves_figure(
    histories: Mapping[str, pd.DataFrame],
    x: str = "samples_seen",
    title: str = "Retrieval on the probe set",
    uirevision: str = "compare-curves",
    marker_x: Mapping[str, float] | None = None,
) -> go.Figure:
    """P@1, R-Precision and MAP@R of every run, one panel per metric, one colour per run.

    Args:
        histories: run name -> metrics table (``RunStore.history``), in display order.
        x: ``samples_seen`` (fair across batch sizes), ``elapsed`` (wall time) or ``step``.
        title: figure title.
        uirevision: constant per view.
        marker_x: run name -> x of the snapshot on display; drawn as a dot on each curve.
    """
    if x not in X_AXES:
        raise ValueError(f"The 'x' parameter must be one of {tuple(X_AXES)}. Got {x!r}.")
    fig = make_subplots(
        rows=1, cols=len(CURVES), subplot_titles=list(CURVES.values()), horizontal_spacing=0.06
    )
    for i, (name, history) in enumerate(histories.items()):
        color = run_color(i)
        for j, (column, label) in enumerate(CURVES.items()):
            if column not in history or x not in history:
                continue
            xs = history[x].to_numpy(dtype=np.float64)
            ys = pd.to_numeric(history[column], errors="coerce").to_numpy(dtype=np.float64)
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=ys,
                    mode="lines+markers" if len(xs) < 30 else "lines",
                    name=name,
                    legendgroup=name,
                    showlegend=j == 0,
                    line={"color": color, "width": 2},
                    marker={"size": 4},
                    hovertemplate=f"{name}<br>{label} %{{y:.3f}}<extra></extra>",
                ),
                row=1,
                col=j + 1,
            )
            at = (marker_x or {}).get(name)
            if at is not None and len(xs):
                k = int(np.argmin(np.abs(xs - at)))
                fig.add_trace(
                    go.Scatter(
                        x=[xs[k]],
                        y=[ys[k]],
                        mode="markers",
                        marker={"size": 10, "color": color, "line": {"color": "white", "width": 1}},
                        showlegend=False,
                        hoverinfo="skip",
                    ),
                    row=1,
                    col=j + 1,
                )
    fig.update_yaxes(range=[0.0, 1.02])
    fig.update_xaxes(title_text=X_AXES[x])
    _style(fig, title, uirevision, height=400, legend="right")
    fig.update_layout(margin={"t": 80})
    fig.update_xaxes(nticks=5)
    return fig
