"""The shared look of every figure, and plain-ASCII maths turned into readable Unicode.

One palette (``CLASS_COLORS`` by label; green and red reserved for positive and negative pairs),
one template (``use_template``), one layout helper (``_style``: template, title, ``uirevision``,
margins, legend), and the text helpers (``math_text``, ``split_symbol``) that show registry
names and descriptions as maths.
"""

from __future__ import annotations

import copy
import copyreg
import re

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
from plotly.colors import qualitative

from dml_core.geometry import SQRT2, distance_density

# D3 "category10": qualitative, colour-blind-tolerant; class c gets CLASS_COLORS[c % 10].
CLASS_COLORS: tuple[str, ...] = tuple(qualitative.D3)
POSITIVE_COLOR = "#2e9e44"
NEGATIVE_COLOR = "#d64545"
# One colour per curve, the same in every figure; green and red stay for positive and negative
# pairs, so no curve uses them.
CURVE_COLORS = {
    "loss": "#333333",
    "active_fraction": "#1f77b4",
    "easy": "#c7c7c7",
    "semi-hard": "#ff7f0e",
    "hard": "#8c564b",
    "empty_batches": "#7f7f7f",
    "precision_at_1": "#9467bd",
    "r_precision": "#17becf",
    "map_at_r": "#bcbd22",
    "tuples_per_batch": "#393b79",
    "beta": "#e377c2",
    "mean_distance": "#8c6d31",
}
OTHER_CURVE_COLOR = "#555555"
TEMPLATE = "plotly_white"
HEIGHT = 450
WAITING = "waiting for the first snapshot"


def class_color(label: int) -> str:
    """The colour of class ``label`` (the same in every figure)."""
    return CLASS_COLORS[int(label) % len(CLASS_COLORS)]


LEGENDS = {
    "top": {"orientation": "h", "yanchor": "bottom", "y": 1.02, "xanchor": "left", "x": 0.0},
    "right": {"orientation": "v", "yanchor": "top", "y": 1.0, "xanchor": "left", "x": 1.02},
    "bottom": {"orientation": "h", "yanchor": "top", "y": -0.12, "xanchor": "left", "x": 0.0},
}
TITLE_POSITION = dict(x=0, xref="paper", xanchor="left", y=1, yref="container", yanchor="top")
MARGINS = {
    "top": {"l": 55, "r": 20, "t": 95, "b": 50},
    "right": {"l": 55, "r": 20, "t": 50, "b": 50},
    "bottom": {"l": 55, "r": 20, "t": 70, "b": 110},
}


def use_template(fig: go.Figure) -> go.Figure:
    """Give ``fig`` the house template, ``TEMPLATE``, the way plotly gives a figure its default.

    ``update_layout(template=TEMPLATE)`` validates the whole registered template again, for
    every figure: 8.7 ms each here, ten times the rest of a small figure, paid by every figure
    of every page rerun. A registered template is valid already, so plotly assigns its own
    default template with validation off (``BaseFigure._initialize_layout_template``); this
    does the same, in 0.5 ms. The figure is equal to one given the template by name, and gets
    its own copy of it: changing one figure's template changes no other.
    """
    layout = fig.layout
    layout._validate = False
    try:
        layout.template = pio.templates[TEMPLATE]
    finally:
        layout._validate = getattr(fig, "_validate", True)
    return fig


def _copy_as_built(props: dict) -> go.Figure:
    """A figure from ``props``, the dict of a figure that was validated when it was built."""
    return go.Figure(props, _validate=False)


def _reduce_figure(fig: go.Figure) -> tuple:
    """Pickle (and deep-copy) ``fig`` as its dict, and rebuild it without validating it again.

    ``st.cache_data`` hands every page rerun its own copy of a cached figure by unpickling it,
    and plotly's ``__reduce__`` rebuilds the copy through ``go.Figure(dict)``, which validates
    every property again, the whole template's included: 33-70 ms a figure here, 240 ms for
    the Train page's six figures on each rerun. The dict comes from a figure validated when it
    was built, so the copy skips that, as plotly does for its own templates: 2-7 ms. The copy
    equals the figure, subplot grid included (carried as in plotly's ``__reduce__``). Edits of
    a copy are not validated: the pages show the figures they read from the cache as they are.
    """
    props = fig.to_dict()
    props["_grid_str"] = fig._grid_str
    props["_grid_ref"] = fig._grid_ref
    return _copy_as_built, (props,)


copyreg.pickle(go.Figure, _reduce_figure)  # pickle and copy.deepcopy of a go.Figure use it


def as_cached(fig: go.Figure) -> go.Figure:
    """``fig`` as ``st.cache_data`` returns it on every later read: a copy (``_reduce_figure``).

    For a cached function to return on the run that builds the figure. A copy orders its
    properties plotly's way, while the figure's own order follows the builder's edits, so
    the JSON sent to the browser changed between the building run and the next: Streamlit
    then gave the chart a new element id, and the browser drew it anew (a full ``newPlot``).
    Measured on a finished run's Train page: within 8 s of the first draw the browser re-
    created six charts, five of them unchanged; with this, one (the projection, whose UMAP
    layout had arrived). With the same JSON on every run, an unchanged chart stays as drawn.
    About 5 ms a figure.
    """
    return copy.deepcopy(fig)


def _style(
    fig: go.Figure, title: str, uirevision: str, height: int = HEIGHT, legend: str = "top"
) -> go.Figure:
    """Shared look: template, title, uirevision, compact margins, legend placement."""
    use_template(fig).update_layout(
        title={"text": title, "pad": {"t": 12}, "font": {"size": 16}, **TITLE_POSITION},
        uirevision=uirevision,
        height=height,
        margin=MARGINS[legend],
        legend=LEGENDS[legend],
    )
    return fig


def _on_unit_sphere(points: np.ndarray, tol: float = 1e-3) -> bool:
    """Whether every row has norm 1 (up to ``tol``)."""
    return bool(len(points)) and bool(np.all(np.abs(np.linalg.norm(points, axis=1) - 1.0) < tol))


def _density_grid(dim: int, num: int = 1001) -> tuple[np.ndarray, np.ndarray]:
    """q(d) on [0, 2]; for dim 2 the integrable pole at d = 2 is left out of the grid."""
    d = np.linspace(0.0, 2.0, num)  # (num,)
    if dim == 2:
        d = d[:-1]
    return d, np.asarray(distance_density(d, dim=dim))


GREEK = {
    "alpha": "α",
    "beta": "β",
    "gamma": "γ",
    "delta": "δ",
    "Delta": "Δ",
    "epsilon": "ε",
    "lambda": "λ",
    "nu": "ν",
    "tau": "τ",
    "theta": "θ",
}
SUBSCRIPT_DIGITS = str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉")
_GREEK_WORD = re.compile(r"\b(" + "|".join(GREEK) + r")(\d*)(?=\b|_)")  # theta_own -> θ_own


def math_text(text: str) -> str:
    """Plain-ASCII maths as readable Unicode, for labels and help texts.

    Greek letter names become letters with subscript digits ("alpha1" -> "α₁", "beta - alpha"
    -> "β − α"), "^2" becomes "²" and the hinge "[x]_+" becomes "[x]₊". Code keeps the ASCII
    names (keys of ``distance_lines``, parameter names); only what is shown is rewritten.
    """
    text = _GREEK_WORD.sub(lambda m: GREEK[m[1]] + m[2].translate(SUBSCRIPT_DIGITS), text)
    return text.replace("^2", "²").replace("]_+", "]₊").replace(" - ", " − ")


_SYMBOL = re.compile(r"(?:" + "|".join(GREEK) + r")\d*|m|s|m_pos|m_neg|T|M|C|K|R - 1")


def split_symbol(description: str) -> tuple[str | None, str]:
    """A parameter description "alpha: what it does" as ("α", "what it does"), in Unicode.

    Registry descriptions start with the parameter's symbol in the paper's equation where it
    has one; a description without one comes back as (None, text).
    """
    head, sep, rest = description.partition(": ")
    if sep and _SYMBOL.fullmatch(head):
        return math_text(head), math_text(rest)
    return None, math_text(description)


# plotly express's render_mode="auto": WebGL above 1,000 points, SVG up to it
WEBGL_ABOVE = 1000


def scatter_type(n_points: int) -> type[go.Scatter] | type[go.Scattergl]:
    """SVG (``go.Scatter``) for up to ``WEBGL_ABOVE`` points, WebGL (``go.Scattergl``) above.

    plotly express's own rule (``render_mode="auto"``). Each draw of a WebGL figure sets up
    WebGL contexts, which costs more than a few hundred SVG markers; the Train page redraws
    its figures every few seconds while a run trains (digits: 540 probe points). WebGL pays
    off for many points.
    """
    return go.Scattergl if n_points > WEBGL_ABOVE else go.Scatter


def overlay_type(fig: go.Figure) -> type[go.Scatter] | type[go.Scattergl]:
    """The scatter type for traces drawn over ``fig``'s 2-D points: WebGL if they are WebGL.

    Plotly draws every SVG trace beneath the WebGL ones, so a marker over WebGL points must
    be WebGL too.
    """
    return go.Scattergl if any(isinstance(t, go.Scattergl) for t in fig.data) else go.Scatter


def bin_edges(bins: dict[str, float]) -> np.ndarray:
    """The edges of plotly-style bins ``{"start", "end", "size"}``: start, start + size, ...

    As many whole bins of ``size`` as fit from ``start`` to ``end`` (at least one).
    """
    count = max(1, round((bins["end"] - bins["start"]) / bins["size"]))
    return bins["start"] + bins["size"] * np.arange(count + 1)


def _histogram(x: np.ndarray, name: str, color: str, bins: dict | None, opacity: float):
    """A density histogram of ``x`` on ``bins``, binned here: one bar per bin.

    The bars are ``np.histogram(x, edges, density=True)``: each bin's share of the finite
    values inside the edges, over its width (plotly's ``histnorm="probability density"``).
    Binned here, a figure carries one number per bin instead of every value: the Train
    page's sphere histogram of 540 probe points was 145,530 distances, 1.5 MB of JSON that
    the browser parsed and binned again at each redraw. ``bins`` None (no values) gives an
    empty trace.
    """
    values = np.asarray(x, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    if bins is None or not len(values):
        centres = density = np.zeros(0)
        low = high = np.zeros(0)
        width = None
    else:
        edges = bin_edges(bins)
        density, _ = np.histogram(values, bins=edges, density=True)
        density = np.nan_to_num(density)  # no value inside the edges: empty bars, not NaN
        low, high = edges[:-1], edges[1:]
        centres, width = (low + high) / 2, float(bins["size"])
    return go.Bar(
        x=centres,
        y=density,
        width=width,
        name=name,
        customdata=np.stack([low, high], axis=1),
        hovertemplate="d in [%{customdata[0]:.3g}, %{customdata[1]:.3g}): "
        "density %{y:.3g}<extra>%{fullData.name}</extra>",
        marker={"color": color, "line": {"width": 0}},
        opacity=opacity,
    )


def _sqrt2_line(fig: go.Figure, position: str) -> None:
    """A dotted vertical line at sqrt(2), where random points on a high-dim sphere sit."""
    fig.add_vline(
        x=SQRT2,
        line={"dash": "dot", "color": "#555555", "width": 1.5},
        annotation={"text": "√2", "font": {"size": 12}},
        annotation_position=position,
    )


def _note(fig: go.Figure, text: str, size: int = 14, axis: str | None = None) -> None:
    """Grey text in the middle of the figure, or of the subplot whose axes end in ``axis``."""
    x, y = 0.5, 0.5
    if axis is not None:  # paper coordinates: "x3 domain" refs misplace on trace-less axes
        x = float(np.mean(fig.layout[f"xaxis{axis}"].domain))
        y = float(np.mean(fig.layout[f"yaxis{axis}"].domain))
    font = {"size": size, "color": "#888888"}
    where = {"x": x, "y": y, "xref": "paper", "yref": "paper", "xanchor": "center"}
    fig.add_annotation(text=text, showarrow=False, font=font, **where)
    hidden = {"showgrid": False, "showticklabels": False, "zeroline": False, "showline": False}
    fig.update_layout({f"xaxis{axis or ''}": hidden, f"yaxis{axis or ''}": hidden})


def _waiting_figure(title: str, uirevision: str) -> go.Figure:
    """An empty figure that says it is waiting for data."""
    fig = go.Figure()
    _note(fig, WAITING, size=16)
    return _style(fig, title, uirevision)
