r"""Plotly figures of the Loss explorer, built from ``loss_curves`` results; pages display them.

Pure functions: ``Profile`` / ``Surface`` in, ``go.Figure`` out; no streamlit, no torch. The
look follows ``figures.py`` (``plotly_white``, a constant ``uirevision`` per view, D3 colours).

- ``profile_figure``: loss and |d loss / d x| along d(a,p) or d(a,n) (or a similarity), one
  or more losses / settings overlaid, with the points where each crosses its decision boundary.
- ``surface_figure``: heat map of the loss (or its gradient norm) over (d(a,p), d(a,n)) with
  the decision boundaries, e.g. d(a,n) = d(a,p) + alpha for the triplet loss (Schroff et al.
  2015, Eq. 1).
- ``circle_figure``: the (s_n, s_p) plane of Sun et al. 2020 (Circle Loss, Fig. 1): the circle
  loss's circular boundary s_n^2 + (s_p - 1)^2 = 2 m^2 against the linear one s_p - s_n = m.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dml_core.analysis.loss_curves import Profile, Surface
from dml_core.figures.style import CLASS_COLORS, TEMPLATE, math_text

# Visible on both ends of Viridis (dark purple and yellow) and in the white legend.
BOUNDARY_STYLES: tuple[tuple[str, str], ...] = (
    ("#e8112d", "solid"),
    ("#00c2e0", "dash"),
    ("#ff00c8", "dot"),
    ("#ff7f0e", "dashdot"),
)
LEGEND_TOP = {"orientation": "h", "yanchor": "bottom", "y": 1.02, "xanchor": "left", "x": 0.0}
LEGEND_BELOW = {"orientation": "h", "yanchor": "top", "y": -0.16, "xanchor": "left", "x": 0.0}


def series_color(i: int) -> str:
    """Colour of the i-th overlaid loss or setting."""
    return CLASS_COLORS[i % len(CLASS_COLORS)]


def _layout(
    fig: go.Figure, title: str, uirevision: str, height: int, legend_below: bool = False
) -> go.Figure:
    """Shared look: template, left-aligned title, legend above (or below) the plot."""
    fig.update_layout(
        template=TEMPLATE,
        title={"text": title, "x": 0, "xanchor": "left", "font": {"size": 15}},
        uirevision=uirevision,
        height=height,
        margin={
            "l": 60,
            "r": 20,
            "t": 60 if legend_below else 110,
            "b": 120 if legend_below else 55,
        },
        legend=LEGEND_BELOW if legend_below else LEGEND_TOP,
    )
    return fig


def _finite(values: np.ndarray) -> list[float | None]:
    """Values with NaN / inf as None (a gap in the line, never a JSON error)."""
    return [float(v) if np.isfinite(v) else None for v in np.asarray(values, dtype=np.float64)]


def _scaled(values: np.ndarray, normalize: bool) -> np.ndarray:
    """``values`` divided by their largest finite magnitude when ``normalize`` (else as is)."""
    finite = np.abs(values[np.isfinite(values)])
    peak = float(finite.max()) if normalize and finite.size else 0.0
    return values / peak if peak > 0 else values


def profile_figure(
    profiles: Sequence[Profile],
    title: str,
    uirevision: str = "loss-profile",
    normalize: bool = False,
    height: int = 560,
) -> go.Figure:
    """Loss (top) and gradient magnitude (bottom) along one coordinate, one colour per series.

    Args:
        profiles: one or more ``Profile`` along the same coordinate (overlaid; the legend
            shows each one's ``label``).
        title: figure title; the fixed coordinate's value is appended.
        uirevision: constant per view, so zoom survives reruns.
        normalize: divide each curve by its maximum, so losses of very different scale
            (circle loss with gamma = 80 against a triplet hinge) can be compared by shape.
        height: figure height in pixels.
    """
    if not profiles:
        raise ValueError("profile_figure needs at least one profile.")
    first = profiles[0]
    suffix = " / max" if normalize else ""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.06)
    low, high = (0.0, 2.0) if first.scale == "distance" else (-1.0, 1.0)
    mid = (low + high) / 2  # labels of marks right of it extend to the left
    shapes: list[dict] = []  # added at once: add_vline per mark is slow on subplots
    notes: list[dict] = []
    for i, profile in enumerate(profiles):
        color = series_color(i)
        common = {"x": profile.x, "mode": "lines", "legendgroup": str(i), "name": profile.label}
        value = _finite(_scaled(profile.value, normalize))
        grad = _finite(_scaled(np.abs(profile.grad), normalize))
        hover = f"{profile.x_label} = %{{x:.3f}}<br>%{{y:.4g}}<extra>{profile.label}</extra>"
        line = {
            "color": color,
            "width": 2.5 if i == 0 else 2,
            "dash": "solid" if i == 0 else "dash",
        }
        fig.add_trace(go.Scatter(y=value, line=line, hovertemplate=hover, **common), row=1, col=1)
        fig.add_trace(
            go.Scatter(y=grad, line=line, hovertemplate=hover, showlegend=False, **common),
            row=2,
            col=1,
        )
        for label, x in profile.marks.items():
            style = {"color": color, "width": 1.2, "dash": "dot"}
            for axis in ("", "2"):  # both rows share the x-axis
                shapes.append(
                    {"type": "line", "x0": x, "x1": x, "y0": 0, "y1": 1, "line": style}
                    | {"xref": f"x{axis}", "yref": f"y{axis} domain"}
                )
            notes.append(
                {"x": x, "y": 1, "xref": "x", "yref": "y domain", "text": math_text(label)}
                | {"showarrow": False, "yanchor": "top"}
                | (
                    {"xanchor": "left", "xshift": 3}
                    if x < mid
                    else {"xanchor": "right", "xshift": -3}
                )
                | {"yshift": -16 * len(notes), "bgcolor": "rgba(255,255,255,0.8)"}
                | {"font": {"size": 11, "color": color}}
            )
    fig.update_layout(shapes=shapes, annotations=notes)
    fig.update_xaxes(range=[low, high])
    fig.update_xaxes(title_text=first.x_label, row=2, col=1)
    fig.update_yaxes(rangemode="tozero")
    fig.update_yaxes(title_text=f"loss{suffix}", row=1, col=1)
    fig.update_yaxes(title_text=f"|d loss / d {first.x_label}|{suffix}", row=2, col=1)
    full_title = f"{title}   ·   {first.fixed_label} = {first.fixed:.3g}"
    return _layout(fig, full_title, uirevision, height)


def surface_figure(
    surface: Surface,
    show: Literal["value", "gradient"] = "value",
    title: str | None = None,
    uirevision: str = "loss-surface",
    height: int = 560,
) -> go.Figure:
    """Heat map of the loss (or its gradient norm) over the plane, with decision boundaries.

    Distance scale: x = d(a,p), y = d(a,n); pairs above a triplet-type boundary are satisfied.
    Similarity scale: x = s_n, y = s_p (Sun et al. 2020, Fig. 1). Axes have equal scales.

    Args:
        surface: from ``loss_curves.loss_surface``.
        show: ``"value"`` (the loss) or ``"gradient"`` (norm of its gradient in the plane).
        title: figure title; default names the loss and what is shown.
        uirevision: constant per view.
        height: figure height in pixels.
    """
    z = surface.value if show == "value" else surface.grad
    if z is None:
        raise ValueError("This surface was computed without its gradient (gradient=False).")
    what = "loss" if show == "value" else "|grad loss|"
    fig = go.Figure(
        go.Heatmap(
            x=surface.x,
            y=surface.y,
            z=np.where(np.isfinite(z), z, np.nan).astype(np.float32),
            colorscale="Viridis",
            colorbar={"title": {"text": what}, "thickness": 14},
            hovertemplate=f"{surface.x_label} = %{{x:.3f}}<br>{surface.y_label} = %{{y:.3f}}"
            f"<br>{what} = %{{z:.4g}}<extra></extra>",
            showlegend=False,
        )
    )
    for i, boundary in enumerate(surface.boundaries):
        color, dash = BOUNDARY_STYLES[i % len(BOUNDARY_STYLES)]
        x, y = surface.boundary_xy(boundary)
        fig.add_trace(
            go.Scatter(
                x=_finite(x),
                y=_finite(y),
                mode="lines",
                name=math_text(boundary.label),
                line={"color": color, "width": 2.5, "dash": dash},
                hoverinfo="name",
            )
        )
    low, high = float(surface.x[0]), float(surface.x[-1])
    fig.update_xaxes(title_text=surface.x_label, range=[low, high], constrain="domain")
    fig.update_yaxes(
        title_text=surface.y_label,
        range=[low, high],
        scaleanchor="x",
        scaleratio=1,
        constrain="domain",  # a tall plot shrinks instead of showing y outside the plane
    )
    fig.update_layout(showlegend=True, legend={"bgcolor": "rgba(255,255,255,0.85)"})
    default = f"{surface.label}: {what}"
    return _layout(fig, title or default, uirevision, height, legend_below=True)


def circle_figure(
    surface: Surface,
    show: Literal["value", "gradient"] = "value",
    uirevision: str = "loss-circle",
    height: int = 560,
) -> go.Figure:
    """The circle loss over (s_n, s_p) with its circular and the linear boundary (Sun 2020, Fig. 1).

    The boundary circle is centred at (0, 1), the midpoint of the optimum (O_n, O_p) = (-m, 1 + m)
    and the thresholds (Delta_n, Delta_p) = (m, 1 - m); a marker shows that centre.

    Args:
        surface: ``loss_surface("circle", ..., scale="similarity")``.
        show: ``"value"`` or ``"gradient"``.
        uirevision: constant per view.
        height: figure height in pixels.
    """
    if surface.scale != "similarity":
        raise ValueError(f"circle_figure needs a similarity-scale surface. Got {surface.scale!r}.")
    title = f"{surface.label} in the (s_n, s_p) plane (Sun et al. 2020, Fig. 1)"
    fig = surface_figure(surface, show, title=title, uirevision=uirevision, height=height)
    fig.add_trace(
        go.Scatter(
            x=[0.0],
            y=[1.0],
            mode="markers",
            name="centre (0, 1)",
            marker={"symbol": "x", "size": 10, "color": "#ffffff", "line": {"width": 1}},
            cliponaxis=False,
        )
    )
    return fig
