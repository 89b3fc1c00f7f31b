"""Plotly figures of the Retrieval page: neighbour strips, the ROC curve, thresholds.

Pure functions: numpy in, ``go.Figure`` out; no streamlit, no torch. The look (template,
title placement, class colours) is ``figures``' so the pages stay consistent.

- ``neighbour_strip_figure``: a query image and its k nearest references, with distances;
  wrong-class neighbours get a thick red frame, right ones a thin green frame.
- ``roc_figure``: TAR against FAR on a log FAR axis, TAR@FAR = 1e-2 / 1e-3 and the EER marked
  (definitions in ``verification``).
- ``threshold_histogram_figure``: ``live.distance_histogram_figure`` with the chosen
  thresholds drawn as vertical lines.
- ``per_class_figure``: P@1 of each query class (open-set: the unseen classes).
- ``mark_query``: a star on the probe-set scatter where the current query sits.
- ``query_strip_figure``: the strip of one query of a ``retrieval.RetrievalIndex``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dml_core.analysis.retrieval import (
    RetrievalIndex,
    captions,
    has_images,
    images,
    neighbours,
)
from dml_core.analysis.verification import Verification
from dml_core.data import Dataset
from dml_core.figures import live, style
from dml_core.figures.images import image_trace
from dml_core.metrics import METRIC_LABELS, pair_overlap

WRONG_COLOR = style.NEGATIVE_COLOR
RIGHT_COLOR = style.POSITIVE_COLOR
P_AT_1 = METRIC_LABELS["precision_at_1"]
QUERY_COLOR = "#1f3b73"
STRIP_HEIGHT = 215
MARKERS = (("star", "#ff7f0e"), ("diamond", "#9467bd"), ("square", "#8c564b"))


def _name(label: int, class_names: Sequence[str]) -> str:
    return class_names[label] if 0 <= label < len(class_names) else str(label)


def _frame(fig: go.Figure, col: int, shape: tuple[int, int], color: str, width: float) -> None:
    """A rectangle around the image of subplot ``col`` (image pixel coordinates)."""
    h, w = shape
    fig.add_shape(
        type="rect",
        x0=-0.5,
        y0=-0.5,
        x1=w - 0.5,
        y1=h - 0.5,
        line={"color": color, "width": width},
        row=1,
        col=col,
    )


def _rgb(image: np.ndarray) -> np.ndarray:
    """A grey uint8 image (H, W) as RGB (H, W, 3) for ``image_trace``."""
    grey = np.asarray(image, dtype=np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)  # (H, W, 3)


def neighbour_strip_figure(
    query_image: np.ndarray,
    query_label: int,
    images: np.ndarray,
    labels: np.ndarray,
    distances: np.ndarray,
    correct: np.ndarray,
    class_names: Sequence[str],
    title: str,
    uirevision: str = "neighbours",
    captions: Sequence[str] | None = None,
) -> go.Figure:
    """The query image, then its k nearest references left to right (nearest first).

    Args:
        query_image: (H, W) uint8.
        query_label: the query's class.
        images: (k, H, W) uint8 images of the neighbours.
        labels: (k,) their classes.
        distances: (k,) their distances to the query.
        correct: (k,) bool, whether each shares the query's class (else a red frame).
        class_names: names indexed by label.
        title: figure title.
        uirevision: constant per view.
        captions: k + 1 names of the samples, query first, in place of their class names
            (a table's rows, whose tiles are blank: ``row 12: beta``).
    """
    k = len(images)
    names = list(captions) if captions is not None else None
    if names is None:
        names = [_name(int(label), class_names) for label in [query_label, *labels]]
    titles = [f"<b>query</b><br>{names[0]}"]
    for i in range(k):
        mark = "✓" if correct[i] else "<b>✗</b>"
        color = RIGHT_COLOR if correct[i] else WRONG_COLOR
        titles.append(
            f"#{i + 1} d={distances[i]:.3f}<br>"
            f"<span style='color:{color}'>{names[i + 1]} {mark}</span>"
        )
    fig = make_subplots(
        rows=1, cols=k + 1, subplot_titles=titles, horizontal_spacing=0.012 if k > 8 else 0.02
    )
    shape = np.asarray(query_image).shape
    fig.add_trace(image_trace(_rgb(query_image), hoverinfo="skip"), row=1, col=1)
    _frame(fig, 1, shape, QUERY_COLOR, 4)
    for i in range(k):
        fig.add_trace(image_trace(_rgb(images[i]), hoverinfo="skip"), row=1, col=i + 2)
        wrong = not bool(correct[i])
        _frame(fig, i + 2, shape, WRONG_COLOR if wrong else RIGHT_COLOR, 5 if wrong else 1.5)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_annotations(font={"size": 11})
    style._style(fig, title, uirevision, height=STRIP_HEIGHT, legend="right")
    fig.update_layout(margin={"l": 10, "r": 10, "t": 80, "b": 5}, showlegend=False)
    return fig


ROC_CELLS = 1000  # the ROC is drawn to 1/1000 of each axis: under a pixel at the page's size


def drawn_vertices(
    far: np.ndarray, tar: np.ndarray, low: float, cells: int = ROC_CELLS
) -> np.ndarray:
    """Indices of the ROC vertices to draw on the log-FAR axis from ``low`` to 1.

    The first vertex in each cell of a ``cells`` × ``cells`` grid over the plotted axes (log FAR,
    TAR), and the last one. Both rates only grow along the ROC, so the vertices skipped after
    a drawn one lie in its cell: every vertex is within √2 / ``cells`` of each axis' span from
    the drawn line, and at most 2 ``cells`` + 1 are drawn. An evaluation has up to a vertex per
    pair: a FashionMNIST run's ROC was 11 MB of JSON, sent to the browser on every rerun.
    """
    if far.size == 0:
        return np.arange(0)
    span = -np.log10(low)
    u = np.clip((np.log10(far) - np.log10(low)) / span, 0.0, 1.0)
    cell = np.floor(u * cells) * (cells + 1) + np.floor(np.clip(tar, 0.0, 1.0) * cells)
    keep = np.r_[True, np.diff(cell) != 0]
    keep[-1] = True
    return np.flatnonzero(keep)


def roc_figure(
    result: Verification, title: str = "ROC: true accepts vs false accepts", uirevision: str = "roc"
) -> go.Figure:
    """TAR vs FAR (log x), with TAR@FAR = 1e-2 / 1e-3 and the equal error rate marked.

    The curve is drawn through ``drawn_vertices``: within a thousandth of each axis of every
    vertex, each drawn point a true vertex with its threshold in the hover.

    FAR = 0 cannot sit on a log axis: the curve starts at the smallest non-zero FAR, 1 / n_neg
    at best. The dotted line is chance (TAR = FAR).
    """
    keep = result.far > 0
    far, tar, thresholds = result.far[keep], result.tar[keep], result.thresholds[keep]
    fig = go.Figure()
    low = max(min(float(far.min()) if far.size else 1e-4, 1e-3) / 2, 0.5 / max(result.n_neg, 1))
    shown = drawn_vertices(far, tar, low)
    chance = np.logspace(np.log10(low), 0, 100)
    fig.add_trace(
        go.Scatter(
            x=chance,
            y=chance,
            mode="lines",
            name="chance",
            line={"color": "#999999", "dash": "dot", "width": 1},
            hoverinfo="skip",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=far[shown],
            y=tar[shown],
            mode="lines",
            name=f"ROC ({result.n_pos:,} pos / {result.n_neg:,} neg pairs)",
            line={"color": style.CLASS_COLORS[0], "width": 2},
            customdata=thresholds[shown],
            hovertemplate="FAR %{x:.2e}<br>TAR %{y:.3f}<br>d ≤ %{customdata:.3f}<extra></extra>",
        )
    )
    markers = zip(result.tar_at_far, MARKERS, strict=False)  # one marker style per target FAR
    for f, (symbol, color) in markers:
        value = result.tar_at_far[f]
        if np.isnan(value):
            continue
        fig.add_trace(
            go.Scatter(
                x=[f],
                y=[value],
                mode="markers",
                name=f"TAR@FAR={f:g}: {value:.3f} (d ≤ {result.threshold_at_far[f]:.3f})",
                marker={"symbol": symbol, "size": 14, "color": color, "line": {"width": 1}},
            )
        )
    if result.eer > 0:
        fig.add_trace(
            go.Scatter(
                x=[result.eer],
                y=[1 - result.eer],
                mode="markers",
                name=f"EER {result.eer:.3f} (d = {result.eer_threshold:.3f})",
                marker={"symbol": "x", "size": 12, "color": style.NEGATIVE_COLOR},
            )
        )
    style._style(fig, title, uirevision, legend="bottom")
    fig.update_layout(margin={"l": 55, "r": 20, "t": 60, "b": 140}, legend={"y": -0.2})
    fig.update_xaxes(
        type="log",
        title_text="false-accept rate (FAR)",
        range=[np.log10(low), 0],
        dtick=1,
        exponentformat="power",
    )
    fig.update_yaxes(title_text="true-accept rate (TAR)", range=[0, 1.02])
    return fig


def threshold_histogram_figure(
    pos: np.ndarray, neg: np.ndarray, result: Verification, uirevision: str = "threshold"
) -> go.Figure:
    """Positive / negative pair distances with the best (max TAR - FAR) and EER thresholds."""
    lines: Mapping[str, float] = {
        "best threshold (max TAR−FAR)": result.best_threshold,
        "EER threshold": result.eer_threshold,
    }
    return live.distance_histogram_figure(
        pos,
        neg,
        lines,
        pair_overlap(pos, neg),
        title="Pair distances of the evaluation set",
        uirevision=uirevision,
    )


def per_class_figure(
    values: Mapping[int, float],
    class_names: Sequence[str],
    title: str = f"{P_AT_1} per query class",
    uirevision: str = "per-class",
) -> go.Figure:
    """One bar per class, in the class's colour, on a [0, 1] axis, with chance (1 / C) dotted."""
    labels = sorted(values)
    fig = go.Figure(
        go.Bar(
            x=[_name(c, class_names) for c in labels],
            y=[values[c] for c in labels],
            marker={"color": [style.class_color(c) for c in labels]},
            text=[f"{values[c]:.2f}" for c in labels],
            textposition="outside",
            hovertemplate=f"%{{x}}: {P_AT_1} %{{y:.3f}}<extra></extra>",
        )
    )
    if labels:  # a random ranking puts a same-class reference first about 1/C of the time
        fig.add_hline(
            y=1 / len(labels),
            line={"dash": "dot", "color": "#555555", "width": 1.5},
            annotation={"text": f"chance ≈ 1/{len(labels)}", "font": {"size": 12}},
            annotation_position="top left",
        )
    style._style(fig, title, uirevision, height=320, legend="right")
    fig.update_yaxes(range=[0, 1.12], title_text=P_AT_1)
    fig.update_xaxes(type="category")
    return fig


def mark_query(
    fig: go.Figure, layout: np.ndarray, probe_queries: np.ndarray, query_i: int
) -> go.Figure:
    """Outline the current query with a star on the probe-set scatter; returns ``fig``.

    Nothing is added when the query is not a probe point.

    Args:
        fig: the scatter (``live.embedding_figure`` of ``layout``).
        layout: (n_probe, 2) coordinates of the probe points.
        probe_queries: (n_probe,) query index of each probe point.
        query_i: the current query.
    """
    rows = np.flatnonzero(np.asarray(probe_queries) == query_i)
    if rows.size == 0:
        return fig
    x, y = np.asarray(layout, dtype=np.float64)[rows[0], :2]
    fig.add_trace(
        go.Scatter(  # an outline, so the query's own point (its class colour) shows inside
            x=[x],
            y=[y],
            mode="markers",
            name=f"query {query_i}",
            customdata=[query_i],
            marker={"symbol": "star-open", "size": 22, "color": "#111111", "line": {"width": 2}},
            hovertemplate=f"query {query_i}<extra></extra>",
        )
    )
    return fig


def query_strip_figure(
    index: RetrievalIndex, dataset: Dataset, query_i: int, k: int, title: str
) -> go.Figure:
    """``neighbour_strip_figure`` of query ``query_i`` and its ``k`` nearest references."""
    nb = neighbours(index, query_i, k)
    named = None  # a table's rows have blank tiles: each is named by its row and class
    if not has_images(dataset):
        named = captions(dataset, "query", [query_i]) + captions(dataset, "reference", nb.indices)
    return neighbour_strip_figure(
        images(dataset.query, [query_i])[0],
        int(index.query_labels[query_i]),
        images(dataset.reference, nb.indices),
        index.ref_labels[nb.indices],
        nb.distances,
        nb.correct,
        dataset.class_names,
        title,
        uirevision=f"strip-{index.run_id}-{query_i}",
        captions=named,
    )
