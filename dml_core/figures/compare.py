r"""Plotly figures that put several runs side by side; pages only display them.

Built on the single-run figures of ``figures.live`` (their traces are reused, then placed in
panels with shared axes), with one colour per run (``run_color``) in every overlaid figure and
the class colours of ``style.CLASS_COLORS`` in the embedding panels. Runs are shown under their
names (``analysis.compare.run_names``: what differs, or the user's label), wrapped by
``wrap_name`` so that four panel titles never run into each other.

Steady axes: ``live.steady_axes`` fixes the histogram bins and ranges and the top of the sphere
overlay over every snapshot of every shown run, so the scrubber moves the data, not the axes.

- ``embedding_panels_figure``: aligned layouts (``compare.aligned_layouts``), one panel per run,
  identical axis ranges, so the same class is in the same place in every panel.
- ``histogram_panels_figure``: positive / negative pair distances, one panel per run, on shared
  bins and shared x and y axes, with each run's margin lines.
- ``sphere_overlay_figure``: pairwise distances on the unit sphere, one outline per run, with
  q(d) of uniform points (Wu et al., Sampling Matters, ICCV 2017, Eq. 3) once per distinct
  dimension, in the colour of the run it belongs to (grey when several runs share it).
- ``metric_curves_figure``: P@1, R-Precision and MAP@R (Musgrave et al., A Metric Learning
  Reality Check, ECCV 2020) against samples seen or wall time, one line per run.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dml_core.figures.live import (
    HistogramAxes,
    distance_histogram_figure,
    embedding_figure,
    histogram_axes,
)
from dml_core.figures.sphere import SPHERE_BINS, sphere_distances
from dml_core.figures.style import _density_grid, _sqrt2_line, _style, math_text
from dml_core.snapshot import Snapshot

# Runs are told apart by these (bright, distinct from the muted D3 class colours).
RUN_COLORS: tuple[str, ...] = ("#2E91E5", "#E15F99", "#1CA71C", "#FB0D0D", "#DA16FF", "#222A2A")
X_AXES = {"samples_seen": "samples seen", "elapsed": "wall time (s)", "step": "step"}
CURVES = {"precision_at_1": "P@1", "r_precision": "R-Precision", "map_at_r": "MAP@R"}
SHARED_REFERENCE_COLOR = "#555555"
PANEL_NAME_WIDTH = 26  # characters per title line: four panels fit a 1000 px wide figure
LEGEND_NAME_WIDTH = 30


def run_color(index: int) -> str:
    """The colour of the ``index``-th compared run (the same in every figure)."""
    return RUN_COLORS[index % len(RUN_COLORS)]


def _padded_range(values: np.ndarray, pad: float = 0.06) -> list[float]:
    lo, hi = float(np.min(values)), float(np.max(values))
    span = hi - lo or 1.0
    return [lo - pad * span, hi + pad * span]


def wrap_name(name: str, width: int = PANEL_NAME_WIDTH, max_lines: int = 2) -> str:
    """A run's name broken into lines of at most ``width`` characters, joined by ``<br>``.

    Lines break between settings (``"margin = 0.1, K = 8"``), and inside a setting only at
    spaces; text beyond ``max_lines`` is cut with "…", so a title keeps a known height.
    """
    lines: list[str] = []
    for part in name.split(", "):
        first, *rest = textwrap.wrap(part, width) or [""]
        if lines and len(lines[-1]) + 2 + len(first) <= width:
            lines[-1] = f"{lines[-1]}, {first}"
        else:
            if lines:
                lines[-1] += ","
            lines.append(first)
        lines.extend(rest)
    if len(lines) > max_lines:  # cut after the last whole setting that fits, else mid-word
        last = lines[max_lines - 1].rstrip(",")
        while len(last) + 3 > width and ", " in last:
            last = last.rsplit(", ", 1)[0]
        last = f"{last}, …" if len(last) + 3 <= width else f"{last[: width - 1].rstrip()}…"
        lines = [*lines[: max_lines - 1], last]
    return "<br>".join(lines)


def panel_titles(names: Sequence[str], snapshots: Sequence[Snapshot]) -> list[str]:
    """One panel title per run: its name in bold (at most two lines), then step and samples."""
    return [
        f"<b>{wrap_name(name)}</b><br>step {snap.step} · {snap.samples_seen:,} samples"
        for name, snap in zip(names, snapshots, strict=True)
    ]


def _title_lines(titles: Sequence[str]) -> int:
    return max((t.count("<br>") + 1 for t in titles), default=1)


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
        titles: one panel title per run (``panel_titles``).
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
    lines = _title_lines(titles)
    _style(fig, title, uirevision, height=420 + 16 * lines, legend="right")
    fig.update_layout(
        legend={"itemsizing": "constant", "title": {"text": "class"}},
        margin={"t": 60 + 16 * lines},
    )
    fig.update_annotations(font_size=12)
    return fig


def histogram_panels_figure(
    snapshots: Sequence[Snapshot],
    titles: Sequence[str],
    title: str = "Positive and negative pair distances",
    uirevision: str = "compare-hist",
    axes: HistogramAxes | None = None,
) -> go.Figure:
    """Pos/neg distance histograms, one panel per run, on shared bins and fixed axes.

    Args:
        snapshots: one snapshot per run (``pos_dist``, ``neg_dist``, ``lines``, ``metrics``).
        titles: one panel title per run (``panel_titles``).
        title: figure title.
        uirevision: constant per view.
        axes: bins, x-range and top of the y-axis fixed over every snapshot of every shown run
            (``live.steady_axes``); None fits them to these snapshots only.
    """
    count = len(snapshots)
    subtitles = [
        f"{t}<br>P(d⁻ < d⁺) ≈ {o:.2f}" if (o := s.metrics.get("pair_overlap")) is not None else t
        for t, s in zip(titles, snapshots, strict=True)
    ]
    fig = make_subplots(
        rows=1, cols=count, shared_yaxes=True, subplot_titles=subtitles, horizontal_spacing=0.03
    )
    if axes is None:
        axes = histogram_axes([(s.pos_dist, s.neg_dist, s.lines) for s in snapshots], False)
    for i, snap in enumerate(snapshots):
        single = distance_histogram_figure(snap.pos_dist, snap.neg_dist, {}, None, axes=axes)
        for trace in single.data:
            trace.update(
                showlegend=i == 0,
                legendgroup=trace.name.split(" (")[0],
                name=trace.name.split(" (")[0],
            )
            fig.add_trace(trace, row=1, col=i + 1)
        for j, (label, value) in enumerate(snap.lines.items()):
            fig.add_vline(
                x=float(value),
                line={"dash": "dash", "color": "#333333", "width": 1.2},
                annotation={  # two short lines, so labels stay inside narrow panels
                    "text": f"{math_text(label)}<br>= {value:.3g}",
                    "font": {"size": 10},
                    "align": "left",
                    "bgcolor": "rgba(255,255,255,0.7)",
                    "yshift": -28 * j,
                },
                annotation_position="top right",
                row=1,
                col=i + 1,
            )
    fig.update_xaxes(range=list(axes.x_range), matches="x", title_text="distance d")
    fig.update_yaxes(range=[0.0, axes.y_max], matches="y")
    fig.update_yaxes(title_text="density", row=1, col=1)
    _style(fig, title, uirevision, height=400 + 16 * _title_lines(subtitles), legend="right")
    fig.update_layout(
        barmode="overlay", bargap=0.0, margin={"t": 60 + 16 * _title_lines(subtitles)}
    )
    fig.update_annotations(font_size=12, selector={"xref": "paper"})
    return fig


def sphere_overlay_figure(
    embs: Sequence[np.ndarray],
    names: Sequence[str],
    title: str = "Pairwise distances on the unit sphere",
    uirevision: str = "compare-sphere",
    y_max: float | None = None,
    normalized: Sequence[bool] | None = None,
) -> go.Figure:
    """The distribution of pairwise probe distances (L2-normalised) of each run, overlaid.

    Each run is a step outline in its colour (so four runs stay readable). q(d) of points
    uniform on S^{D-1} (Wu et al. 2017, Eq. 3) is drawn once per distinct dimension D, dashed,
    in the colour of its run when one run has that D, grey when several share it.

    Args:
        embs: (n, D_r) probe embeddings, one per run.
        names: one legend name per run (``analysis.compare.run_names``).
        title: figure title.
        uirevision: constant per view.
        y_max: the highest bar over every snapshot that the scrubber can show
            (``live.steady_axes``), so the y-axis stays put; None fits it to these embeddings.
        normalized: per run, whether it trains on the unit sphere; a run that does not is
            marked "normalised for this plot".
    """
    fig = go.Figure()
    size = SPHERE_BINS["size"]
    edges = np.arange(0.0, 2.0 + size / 2, size)  # (bins + 1,), as sphere.sphere_density_max
    centres = (edges[:-1] + edges[1:]) / 2  # (bins,)
    flags = [True] * len(embs) if normalized is None else list(normalized)
    runs_of_dim: dict[int, list[int]] = {}
    tallest = 0.0
    for i, (emb, name, flag) in enumerate(zip(embs, names, flags, strict=True)):
        dists = sphere_distances(emb)
        density, _ = np.histogram(dists, bins=edges, density=True)  # (bins,)
        tallest = max(tallest, float(density.max()) if len(dists) else 0.0)
        label = wrap_name(name, LEGEND_NAME_WIDTH, 3)
        fig.add_trace(
            go.Scatter(
                x=centres,
                y=density,
                mode="lines",
                line={"shape": "hvh", "color": run_color(i), "width": 2},
                name=label if flag else f"{label}<br>(normalised for this plot)",
                legendgroup=f"run-{i}",
                hovertemplate=f"{name}<br>d %{{x:.3f}}: %{{y:.2f}}<extra></extra>",
            )
        )
        runs_of_dim.setdefault(int(np.shape(emb)[1]), []).append(i)
    reference_top = 0.0
    for dim, runs in sorted(runs_of_dim.items()):
        if dim < 2:
            continue
        grid, density = _density_grid(dim)
        reference_top = max(reference_top, float(np.nanmax(density[np.isfinite(density)])))
        own = len(runs) == 1
        fig.add_trace(
            go.Scatter(
                x=grid,
                y=density,
                mode="lines",
                name=f"uniform on S<sup>{dim - 1}</sup> (D = {dim})",
                legendgroup=f"run-{runs[0]}" if own else f"dim-{dim}",
                line={
                    "color": run_color(runs[0]) if own else SHARED_REFERENCE_COLOR,
                    "width": 1.5,
                    "dash": "dash",
                },
            )
        )
    _sqrt2_line(fig, "top right")
    top = tallest if y_max is None else max(y_max, tallest)
    top = max(top, min(reference_top, 3 * top)) if top > 0 else reference_top or 1.0
    _style(fig, title, uirevision, height=420, legend="right")
    fig.update_xaxes(title_text="distance d", range=[0.0, 2.0])
    fig.update_yaxes(title_text="density", range=[0.0, 1.05 * top])
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
        histories: run name (``analysis.compare.run_names``) -> metrics table
            (``RunStore.history``), in display order; the legend shows the names.
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
                    name=wrap_name(name, LEGEND_NAME_WIDTH, 3),
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
