r"""Plotly figures of the Loss explorer, built from ``loss_curves`` results; pages display them.

Pure functions: ``Profile`` / ``Surface`` in, ``go.Figure`` out; no streamlit, no torch. The
look follows ``figures/style.py`` (``plotly_white``, a constant ``uirevision`` per view, D3
colours).

- ``profile_figure``: loss and |d loss / d x| along d(a,p) or d(a,n) (or a similarity), one
  or more losses / settings overlaid, with the points where each crosses its decision boundary.
  Overlaid losses whose coordinates mean different things (a proxy loss measures to proxies, a
  pair loss between samples) say so on the axis and in the title, each in its series' colour.
- ``surface_figure``: heat map of the loss (or its gradient norm) over (d(a,p), d(a,n)) with
  the decision boundaries, e.g. d(a,n) = d(a,p) + alpha for the triplet loss (Schroff et al.
  2015, Eq. 1).
- ``circle_figure``: the (s_n, s_p) plane of Sun et al. 2020 (Circle Loss, Fig. 1): the circle
  loss's circular boundary s_n^2 + (s_p - 1)^2 = 2 m^2 against the linear one s_p - s_n = m.

Layout: the title alone in the top margin, the legend below the plot (one entry per row, in a
bottom margin sized for it), so neither covers the other at any width. Boundary labels on the
profiles point at their own line with a short arrow; ``label_layout`` places them in rows so
that no two overlap and, where room allows, none runs across another line, for any figure at
least ``NOMINAL_WIDTH`` pixels wide (lines only move apart on wider figures).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dml_core.analysis.loss_curves import Profile, Surface
from dml_core.figures.style import CLASS_COLORS, math_text, use_template

# Visible on both ends of Viridis (dark purple and yellow) and in the white legend.
BOUNDARY_STYLES: tuple[tuple[str, str], ...] = (
    ("#e8112d", "solid"),
    ("#00c2e0", "dash"),
    ("#ff00c8", "dot"),
    ("#ff7f0e", "dashdot"),
)
# Pixel sizes of the layout. NOMINAL_WIDTH: the narrowest figure the page lays out (half of the
# wide layout on a 1366-px screen); labels placed for it stay apart on any wider figure.
NOMINAL_WIDTH = 460
MARGIN_LR = {"l": 62, "r": 20}
TITLE_PX, SUBTITLE_PX = 46, 28  # top margin for a title, and for a subtitle under it
# Title (and subtitle) at the top left of the figure, not of the plot: long titles keep room.
TITLE = {"x": 0, "xref": "container", "xanchor": "left", "y": 1, "yref": "container"}
TITLE |= {"yanchor": "top", "pad": {"t": 12, "l": 10}, "font": {"size": 15}}
# Legend at the bottom of the figure, one entry per row, in a bottom margin sized for it.
LEGEND = {"orientation": "v", "x": 0, "xanchor": "left", "y": 0, "yref": "container"}
LEGEND |= {"yanchor": "bottom", "tracegroupgap": 0, "bgcolor": "rgba(255,255,255,0)"}
AXIS_PX = 52  # x tick labels and the x-axis title, below the plot
LEGEND_ROW_PX = 19
LABEL_FONT_PX, LABEL_CHAR_PX, LABEL_ROW_PX, ARROW_PX = 11, 6.5, 17, 14
VERTICAL_SPACING = 0.06


def series_color(i: int) -> str:
    """Colour of the i-th overlaid loss or setting."""
    return CLASS_COLORS[i % len(CLASS_COLORS)]


def margins(subtitle: bool, legend_rows: int) -> dict[str, int]:
    """Margins with room for the title (top) and a one-entry-per-row legend (bottom)."""
    top = TITLE_PX + (SUBTITLE_PX if subtitle else 0)
    return MARGIN_LR | {"t": top, "b": AXIS_PX + LEGEND_ROW_PX * legend_rows + 10}


def loss_layout(
    fig: go.Figure,
    title: str,
    subtitle: str,
    uirevision: str,
    height: int,
    legend_rows: int,
) -> go.Figure:
    """Shared look: title (and subtitle) in the top margin, legend at the bottom, below the axes.

    Plotly misplaces multi-line titles, so a second line of information is a subtitle.
    """
    use_template(fig).update_layout(
        title=TITLE | {"text": title, "subtitle": {"text": subtitle, "font": {"size": 12}}},
        uirevision=uirevision,
        height=height,
        margin=margins(bool(subtitle), legend_rows),
        legend=LEGEND,
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


def symbol(label: str) -> str:
    """The symbol of an axis label: ``"s_p = cos(a,p)"`` -> ``"s_p"``; else the label."""
    return label.partition(" = ")[0]


def boundary_name(label: str) -> str:
    """A boundary's short name, ``"circle: s_n^2 + ..."`` -> ``"circle"``; else the label."""
    head, sep, _ = label.partition(": ")
    return head if sep else label


@dataclass(frozen=True)
class Label:
    """Where a boundary label goes: its line at ``x`` (data), text, side and row."""

    x: float
    text: str
    color: str
    side: str  # "left" or "right" of the line
    row: int


def _box(x_px: float, text: str, side: str) -> tuple[float, float]:
    """Horizontal extent in pixels of a label whose arrow ends on the line at x_px."""
    width = ARROW_PX + LABEL_CHAR_PX * len(text) + 6
    return (x_px, x_px + width) if side == "right" else (x_px - width, x_px)


def label_layout(
    lines: Sequence[tuple[float, str, str]],
    low: float,
    high: float,
    plot_px: float = NOMINAL_WIDTH - MARGIN_LR["l"] - MARGIN_LR["r"],
) -> list[Label]:
    """Place one label per line, as a flag on a pole: no label crosses another line.

    Each line (x, boundary label, colour) is a pole that ends at its own label, whose arrow
    points at the pole's top. A label takes the full boundary label, else its short name, on
    the side towards the middle, else the other side, preferring a place that spans no other
    pole and never one where two labels would span each other's poles. Rows (0 at the top)
    then put every label above the poles it spans, which therefore end below it, and move a
    label down a row while it would overlap another one.

    Args:
        lines: (x in data units, boundary label, colour) per line.
        low: the x-axis start.
        high: the x-axis end.
        plot_px: plot width in pixels the layout must work for (it also works when wider).

    Returns:
        One ``Label`` per line, in the order of ``lines``.
    """
    xs = [(x - low) * plot_px / (high - low) for x, _, _ in lines]  # pole positions in pixels
    spans: dict[int, tuple[float, float]] = {}
    choices: dict[int, tuple[str, str]] = {}
    for k in np.argsort(xs, kind="stable"):
        x_px, label = xs[k], lines[k][1]
        sides = ("right", "left") if x_px < plot_px / 2 else ("left", "right")
        texts = dict.fromkeys([math_text(label), math_text(boundary_name(label))])
        options = [(t, s) for t in texts for s in sides]
        inside = [o for o in options if 0 <= _box(x_px, *o)[0] <= _box(x_px, *o)[1] <= plot_px]

        def cost(option: tuple[str, str], x_px: float = x_px) -> tuple[bool, bool]:
            lo, hi = _box(x_px, *option)
            spanned = [j for j, v in enumerate(xs) if lo < v < hi and abs(v - x_px) > 0.5]
            mutual = any(spans[j][0] < x_px < spans[j][1] for j in spanned if j in spans)
            return mutual, bool(spanned)

        choices[k] = min(inside or options, key=cost)  # min keeps the first of equal costs
        spans[k] = _box(x_px, *choices[k])
    rows = [0] * len(lines)
    for _ in range(4 * len(lines)):  # longest-path layering; bounded if poles span each other
        moved = False
        for i, j in itertools.permutations(range(len(lines)), 2):
            (lo, hi), (lo_j, hi_j) = spans[i], spans[j]
            spans_pole = lo - 3 < xs[j] < hi + 3 and abs(xs[j] - xs[i]) > 0.5
            overlaps = j > i and rows[j] == rows[i] and lo_j < hi + 4 and hi_j > lo - 4
            if (spans_pole and rows[j] <= rows[i]) or overlaps:
                rows[j], moved = rows[i] + 1, True
        if not moved:
            break
    return [
        Label(x, choices[k][0], color, choices[k][1], rows[k])
        for k, (x, _, color) in enumerate(lines)
    ]


def _label_annotation(label: Label, y: float) -> dict:
    """A label at height ``y`` (top subplot's domain), its arrow ending on its line."""
    right = label.side == "right"
    where = {"x": label.x, "y": y, "xref": "x", "yref": "y domain", "yanchor": "middle"}
    arrow = {"showarrow": True, "ax": ARROW_PX if right else -ARROW_PX, "ay": 0, "standoff": 0}
    arrow |= {"arrowcolor": label.color, "arrowwidth": 1.2, "arrowhead": 2, "arrowsize": 0.8}
    text = {"text": label.text, "xanchor": "left" if right else "right"}
    text |= {
        "bgcolor": "rgba(255,255,255,0.9)",
        "font": {"size": LABEL_FONT_PX, "color": label.color},
    }
    return where | arrow | text


def _loss_name(profile: Profile) -> str:
    """The registry key in a profile's label, ``"triplet (margin=0.2)"`` -> ``"triplet"``."""
    return profile.label.partition(" (")[0]


def _colored(text: str, color: str) -> str:
    return f"<span style='color:{color}'>{text}</span>"


def axis_texts(
    profiles: Sequence[Profile], title: str, normalize: bool
) -> tuple[str, str, str, str]:
    """(title, subtitle, x-axis title, gradient-axis title) saying what each coordinate is.

    One meaning for all series: ``d(a,p)``, ``|∂ loss / ∂ d(a,p)|``. Overlaid losses whose
    coordinates differ (a proxy loss against a pair loss): each loss's own coordinate, named and
    coloured as its curves, on the x-axis and in the title's held value.
    """
    first, suffix = profiles[0], " / max" if normalize else ""
    if len({(p.x_label, p.fixed_label) for p in profiles}) == 1:
        held = f"{first.fixed_label} = {first.fixed:.3g}"
        return (
            f"{title}   ·   {held}",
            "",
            first.x_label,
            f"|∂ loss / ∂ {symbol(first.x_label)}|{suffix}",
        )
    x_parts, held_parts = {}, {}
    for i, p in enumerate(profiles):
        name = _loss_name(p)
        x_parts.setdefault(p.x_label, _colored(f"{name}: {p.x_label}", series_color(i)))
        held = f"{name}: {p.fixed_label} = {p.fixed:.3g}"
        held_parts.setdefault(p.fixed_label, _colored(held, series_color(i)))
    return (
        title,
        "   ·   ".join(held_parts.values()),
        "   ·   ".join(x_parts.values()),
        f"|∂ loss / ∂ x|{suffix}",
    )


def profile_figure(
    profiles: Sequence[Profile],
    title: str,
    uirevision: str = "loss-profile",
    normalize: bool = False,
    height: int = 560,
) -> go.Figure:
    """Loss (top) and gradient magnitude (bottom) along one coordinate, one colour per series.

    Each crossing of a decision boundary is a dotted vertical in the series' colour that ends,
    in the loss plot, at its own label (an arrow from the boundary's name; see
    ``label_layout``); the loss axis leaves room above the curves for the labels' rows.

    Args:
        profiles: one or more ``Profile`` along the same coordinate range (overlaid; the
            legend shows each one's ``label``; differing coordinate meanings are named).
        title: figure title; the fixed coordinate's value is appended.
        uirevision: constant per view, so zoom survives reruns.
        normalize: divide each curve by its maximum, so losses of very different scale
            (circle loss with gamma = 80 against a triplet hinge) can be compared by shape.
        height: figure height in pixels.
    """
    if not profiles:
        raise ValueError("profile_figure needs at least one profile.")
    first = profiles[0]
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=VERTICAL_SPACING)
    low, high = (0.0, 2.0) if first.scale == "distance" else (-1.0, 1.0)
    lines: list[tuple[float, str, str]] = []  # (x, boundary label, colour) per crossing
    plotted: list[np.ndarray] = []
    for i, profile in enumerate(profiles):
        color = series_color(i)
        common = {"x": profile.x, "mode": "lines", "legendgroup": str(i), "name": profile.label}
        value = _scaled(profile.value, normalize)
        plotted.append(value[np.isfinite(value)])
        grad = _finite(_scaled(np.abs(profile.grad), normalize))
        hover = f"{profile.x_label} = %{{x:.3f}}<br>%{{y:.4g}}<extra>{profile.label}</extra>"
        line = {
            "color": color,
            "width": 2.5 if i == 0 else 2,
            "dash": "solid" if i == 0 else "dash",
        }
        fig.add_trace(
            go.Scatter(y=_finite(value), line=line, hovertemplate=hover, **common), row=1, col=1
        )
        fig.add_trace(
            go.Scatter(y=grad, line=line, hovertemplate=hover, showlegend=False, **common),
            row=2,
            col=1,
        )
        lines += [(x, label, color) for label, x in profile.crossings]
    full_title, subtitle, x_title, grad_title = axis_texts(profiles, title, normalize)
    fig = loss_layout(fig, full_title, subtitle, uirevision, height, legend_rows=len(profiles))
    margin = fig.layout.margin
    top_px = (height - margin.t - margin.b) * (1 - VERTICAL_SPACING) / 2
    labels = label_layout(lines, low, high)
    heights = [1 - (lab.row + 0.5) * LABEL_ROW_PX / top_px for lab in labels]  # y domain
    shapes = [  # each pole ends at its label in the top plot and spans the whole bottom plot
        {"type": "line", "x0": lab.x, "x1": lab.x, "y0": 0, "y1": y1, "xref": f"x{axis}"}
        | {"yref": f"y{axis} domain", "line": {"color": lab.color, "width": 1.2, "dash": "dot"}}
        for lab, y in zip(labels, heights, strict=True)
        for axis, y1 in (("", y), ("2", 1))
    ]
    notes = [_label_annotation(lab, y) for lab, y in zip(labels, heights, strict=True)]
    fig.update_layout(shapes=shapes, annotations=notes)
    rows = max((lab.row for lab in labels), default=-1) + 1
    values = np.concatenate(plotted)
    bottom = min(0.0, float(values.min())) if values.size else 0.0
    span = (float(values.max()) - bottom if values.size else 0.0) or 1.0
    band = (rows * LABEL_ROW_PX + 4) / top_px if rows else 0.0  # the labels' share of the plot
    fig.update_yaxes(range=[bottom, bottom + span * 1.05 / (1 - band)], row=1, col=1)
    fig.update_yaxes(rangemode="tozero", row=2, col=1)
    fig.update_xaxes(range=[low, high])
    fig.update_xaxes(title_text=x_title, title_font_size=12 if subtitle else 14, row=2, col=1)
    fig.update_yaxes(title_text="loss / max" if normalize else "loss", row=1, col=1)
    fig.update_yaxes(title_text=grad_title, row=2, col=1)
    return fig


def _heat_map(surface: Surface, show: Literal["value", "gradient"]) -> go.Figure:
    """The heat map and its boundary lines, on axes of equal scale."""
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
    fig.update_layout(showlegend=True)
    return fig


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
    fig = _heat_map(surface, show)
    what = "loss" if show == "value" else "|grad loss|"
    name, _, settings = surface.label.partition(" (")
    default = f"{name}: {what}"
    rows = len(surface.boundaries)
    return loss_layout(fig, title or default, settings[:-1], uirevision, height, rows)


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
    fig = _heat_map(surface, show)
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
    name, _, settings = surface.label.partition(" (")
    what = "loss" if show == "value" else "|grad loss|"
    title = f"{name} in the (s_n, s_p) plane (Sun et al. 2020, Fig. 1)"
    subtitle = f"{settings[:-1]}   ·   {what}" if settings else what
    return loss_layout(fig, title, subtitle, uirevision, height, len(surface.boundaries) + 1)
