r"""Plotly figures of the Loss explorer's hardness and angle views (``analysis.loss_geometry``).

Pure functions, no streamlit, no torch; the look of ``figures/losses.py`` (title in the top
margin, legend below the plot, one entry per row).

- ``hardness_figure``: the weight of each negative in the gradient against its similarity to
  the anchor, one curve per temperature, the user's highlighted (Wang & Liu, CVPR 2021, Eq. 4-5
  and Fig. 3): low tau concentrates the gradient on the hardest negatives.
- ``angular_figure``: decision boundaries in the (theta_own, theta_other) plane, in degrees,
  with the plain softmax's diagonal and the shaded margin region between them (Deng et al.
  2019, ArcFace, Fig. 5; Wang et al. 2018, CosFace, Fig. 2).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.colors import hex_to_rgb, sample_colorscale

from dml_core.analysis.loss_geometry import (
    HARDEST,
    AngularPlane,
    NegativeWeights,
    angular_gaps,
    hardest_share,
    margin_region,
)
from dml_core.figures.losses import loss_layout, series_color
from dml_core.figures.style import math_text

CHOSEN_COLOR = "#d62728"
SOFTMAX_COLOR = "#555555"


def _layout(
    fig: go.Figure, title: str, subtitle: str, uirevision: str, height: int, legend_rows: int
) -> go.Figure:
    """The Loss explorer's shared look (``losses.loss_layout``), legend always shown."""
    return loss_layout(fig, title, subtitle, uirevision, height, legend_rows).update_layout(
        showlegend=True
    )


def symbol_text(text: str) -> str:
    """ASCII maths as shown: ``theta_own`` -> θ_own (subscript), Greek names as letters."""
    text = text.replace("theta_own", "θ<sub>own</sub>").replace("theta_other", "θ<sub>other</sub>")
    return math_text(text)


def hardness_figure(
    weights: NegativeWeights,
    log_y: bool = False,
    uirevision: str = "loss-hardness",
    height: int = 600,
) -> go.Figure:
    """The relative weight of each negative against its cosine to the anchor, per temperature.

    One curve per swept value, coloured from dark (low tau) to light (high tau); the user's
    value is thick and red. A dashed line marks 1, every negative weighed alike. The legend
    says what share of the gradient the hardest 10 % of the negatives receive.

    Args:
        weights: from ``loss_geometry.negative_weights``.
        log_y: a logarithmic weight axis (each curve becomes a line of slope 1 / tau).
        uirevision: constant per view.
        height: figure height in pixels.
    """
    fig = go.Figure()
    x = weights.similarity
    shares = hardest_share(weights, HARDEST)
    colors = sample_colorscale("Viridis", list(np.linspace(0.0, 0.85, len(weights.values))))
    symbol = math_text(weights.parameter.replace("temperature", "tau"))
    for value, y, share, color in zip(weights.values, weights.weight, shares, colors, strict=True):
        chosen = value == weights.chosen
        name = f"{symbol} = {value:g}{' (yours)' if chosen else ''}"
        name += f": hardest {HARDEST:.0%} get {share:.0%}"
        fig.add_trace(
            go.Scatter(
                x=x,
                y=y,
                mode="lines",
                name=name,
                line={"color": CHOSEN_COLOR if chosen else color, "width": 4 if chosen else 1.8},
                hovertemplate=f"s = %{{x:.3f}}<br>weight = %{{y:.3g}}<extra>{symbol} = {value:g}"
                "</extra>",
            )
        )
    fig.add_trace(
        go.Scatter(
            x=[-1.0, 1.0],
            y=[1.0, 1.0],
            mode="lines",
            name="1: every negative weighed alike",
            line={"color": SOFTMAX_COLOR, "width": 1.2, "dash": "dash"},
            hoverinfo="skip",
        )
    )
    fig.update_xaxes(title_text="s = cos(anchor, negative): harder →", range=[-1.0, 1.0])
    fig.update_yaxes(
        title_text="weight in the gradient (1 = average)",
        type="log" if log_y else "linear",
        rangemode="tozero",
    )
    if log_y:  # one tick per power of ten, from 1/1000 of the average
        top = float(np.log10(weights.weight.max())) + 0.2
        fig.update_yaxes(range=[-3.0, top], dtick=1)
    name = weights.label.partition(" (")[0]
    title = f"{name}: how much each negative pushes back, by its similarity"
    subtitle = f"∂L/∂s ∝ exp(s/{symbol}), Wang & Liu 2021 · {len(x)} negatives spread evenly"
    return _layout(fig, title, subtitle, uirevision, height, len(weights.values) + 1)


def _rgba(color: str, alpha: float) -> str:
    """``#1f77b4`` as ``rgba(31, 119, 180, alpha)``."""
    r, g, b = hex_to_rgb(color)
    return f"rgba({r}, {g}, {b}, {alpha})"


def angular_figure(
    planes: Sequence[AngularPlane], uirevision: str = "loss-angles", height: int = 620
) -> go.Figure:
    """Decision boundaries over (theta_own, theta_other) in degrees, with the margin shaded.

    The plain softmax decides on the diagonal theta_own = theta_other; each loss's own boundary
    is drawn in its series colour. For the first loss, the band between the two (nearer the
    own class, still penalised) is shaded, and vertical bars measure the angular margin at
    ``loss_geometry.GAP_ANGLES``: constant for ArcFace, shrinking with the angle for CosFace.

    Args:
        planes: from ``loss_geometry.angular_plane``, one per loss or setting (overlaid).
        uirevision: constant per view.
        height: figure height in pixels.
    """
    if not planes:
        raise ValueError("angular_figure needs at least one plane.")
    fig = go.Figure()
    hover = "θ<sub>own</sub> = %{x:.1f}°<br>θ<sub>other</sub> = %{y:.1f}°"
    for i, plane in enumerate(planes):
        color = series_color(i)
        for boundary in plane.boundaries:
            own, lower, upper = (np.degrees(v) for v in margin_region(boundary))
            if i == 0:  # overlaid bands would mix colours: only the first loss's is shaded
                fig.add_trace(
                    go.Scatter(
                        x=np.concatenate([own, own[::-1]]),
                        y=np.concatenate([upper, lower[::-1]]),
                        fill="toself",
                        fillcolor=_rgba(color, 0.22),
                        line={"width": 0},
                        mode="lines",
                        name=f"margin region of {plane.label}: nearer own class, still penalised",
                        hoverinfo="skip",
                    )
                )
            fig.add_trace(
                go.Scatter(
                    x=own,
                    y=np.degrees(boundary.theta_other),
                    mode="lines",
                    name=f"{plane.label}: {symbol_text(boundary.label)}",
                    line={"color": color, "width": 3, "dash": "solid" if i == 0 else "dash"},
                    hovertemplate=hover + f"<extra>{plane.label}</extra>",
                )
            )
    fig.add_trace(
        go.Scatter(
            x=[0.0, 180.0],
            y=[0.0, 180.0],
            mode="lines",
            name=symbol_text("plain softmax: theta_own = theta_other"),
            line={"color": SOFTMAX_COLOR, "width": 1.5, "dash": "dot"},
            hoverinfo="skip",
        )
    )
    shapes, notes = [], []
    for at, gap in angular_gaps(planes[0].boundaries[0]).items():
        if gap < 0.5:
            continue
        shapes.append(
            {"type": "line", "x0": at, "x1": at, "y0": at, "y1": at + gap, "xref": "x"}
            | {"yref": "y", "line": {"color": "#000000", "width": 2}}
        )
        notes.append(
            {"x": at, "y": at + gap / 2, "text": f"{gap:.1f}°", "showarrow": False}
            | {"xanchor": "right", "xshift": -4, "font": {"size": 12}}
            | {"bgcolor": "rgba(255,255,255,0.8)"}
        )
    notes += [
        {"x": 40, "y": 160, "text": "own class wins", "showarrow": False, "font": {"size": 13}},
        {"x": 140, "y": 30, "text": "other class nearer", "showarrow": False, "font": {"size": 13}},
    ]
    fig.update_layout(shapes=shapes, annotations=notes)
    ticks = {"tickmode": "linear", "tick0": 0, "dtick": 30, "ticksuffix": "°"}
    fig.update_xaxes(
        title_text="θ<sub>own</sub>: angle to the own class weight",
        range=[0, 180],
        constrain="domain",
        **ticks,
    )
    fig.update_yaxes(
        title_text="θ<sub>other</sub>: angle to another class weight",
        range=[0, 180],
        scaleanchor="x",
        scaleratio=1,
        constrain="domain",
        **ticks,
    )
    title = "Decision boundary between two classes, by angle"
    subtitle = "as in ArcFace (Deng et al. 2019), Fig. 5 and CosFace (Wang et al. 2018), Fig. 2"
    return _layout(fig, title, subtitle, uirevision, height, len(fig.data))
