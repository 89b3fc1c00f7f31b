"""Where a 2-D picture lies: one point's true nearest neighbours drawn on its layout.

A UMAP or PCA layout keeps some neighbourhoods and breaks others. ``add_true_neighbours``
marks a clicked point and its k nearest neighbours measured in the embedding itself
(``analysis.layout_quality.true_neighbours``), with a line to each: short lines mean the
picture kept the neighbourhood, long ones that it tore it apart. Those that are also among the
point's k nearest in the picture get a ring, the others a diamond. The traces are of the probe
points' type (``style.overlay_type``): SVG traces would be drawn beneath WebGL points.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from dml_core.analysis.layout_quality import true_neighbours
from dml_core.figures.style import overlay_type

INK = "#222222"  # not a class colour, not the green / red of positive and negative pairs


def add_true_neighbours(
    fig: go.Figure, points: np.ndarray, emb: np.ndarray, index: int, k: int = 10
) -> go.Figure:
    """Mark point ``index`` and its k nearest neighbours in ``emb`` on a 2-D layout figure.

    Args:
        fig: an ``embedding_figure`` of ``points`` (2-D).
        points: (n, 2) layout coordinates.
        emb: (n, D) the embedding the layout shows, same row order.
        index: the clicked point's row.
        k: how many neighbours.

    Returns:
        ``fig``, with three traces (``meta``: role, index, neighbours, kept) and a title line
        saying how many of the k are also among the point's k nearest in the picture.
    """
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"The 'points' must have shape (n, 2). Got {points.shape}.")
    near = true_neighbours(emb, index, k)  # (k,) nearest first, in the embedding
    kept = np.isin(near, true_neighbours(points, index, k))  # (k,) also near in the picture
    x0, y0 = points[index]
    lines_x, lines_y = [], []
    for x, y in points[near]:
        lines_x += [x0, x, None]
        lines_y += [y0, y, None]
    scatter = overlay_type(fig)
    meta = {"index": int(index), "neighbours": near.tolist(), "kept": kept.tolist()}
    fig.add_trace(
        scatter(x=lines_x, y=lines_y, mode="lines", line={"color": INK, "width": 1},
                opacity=0.6, hoverinfo="skip", showlegend=False, meta=meta | {"role": "lines"})
    )  # fmt: skip
    for role, mask, symbol in (("kept", kept, "circle-open"), ("torn", ~kept, "diamond-open")):
        fig.add_trace(
            scatter(  # the probe points' type: an SVG trace is drawn beneath WebGL ones
                x=points[near[mask], 0], y=points[near[mask], 1], mode="markers",
                name=f"true neighbours {'kept' if role == 'kept' else 'torn away'}",
                marker={"symbol": symbol, "size": 12, "color": INK, "line": {"width": 2}},
                customdata=near[mask], meta=meta | {"role": role},
                hovertemplate="true neighbour: point %{customdata}<extra></extra>",
            )
        )  # fmt: skip
    fig.add_trace(
        scatter(x=[x0], y=[y0], mode="markers", name=f"point {index}",
                marker={"symbol": "star", "size": 16, "color": INK}, customdata=[index],
                meta=meta | {"role": "point"},
                hovertemplate="point %{customdata}<extra></extra>")
    )  # fmt: skip
    title = fig.layout.title.text or ""
    fig.update_layout(
        title_text=f"{title}<br><sup>point {index}: {int(kept.sum())} of its {k} true "
        "neighbours are also near here</sup>"
    )
    return fig
