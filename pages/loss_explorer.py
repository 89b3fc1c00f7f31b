"""Loss explorer: each loss and its gradient against d(a,p), d(a,n) or similarity, no training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

from dml_core.analysis import loss_curves, loss_geometry
from dml_core.errors import ConfigError
from dml_core.figures import loss_geometry as geometry_figures
from dml_core.figures import losses as loss_figures
from dml_core.figures.style import split_symbol
from dml_core.registry import LOSSES, Entry
from dml_core.services.share_links import HELD, Link, explorer_query, read_explorer_link
from pages.ui import (
    copy_link,
    describe,
    link_warnings,
    param_widgets,
    plotly_chart,
    read_new_link,
    use_app_navigation,
)

use_app_navigation()

NAMES = list(LOSSES)
PROBLEMS = (ConfigError, loss_curves.CurveUnavailableError)
SCALES = {"distance": "distance d on the unit sphere", "similarity": "cosine s = 1 − d²/2"}
# HELD (share_links): slider (low, high, default) per scale for the coordinate held fixed.
GRID = 121  # heat-map resolution per axis
LINK_STATE = "link.explorer"  # the link this session opened the page with


def apply_link(link: Link) -> None:
    """A link's controls into the widgets' state (before they draw)."""
    v, params = link.values, link.params
    state = {
        "explorer.loss": v["loss"],
        "explorer.compare": v["compare"],
        "explorer2.loss": v["loss2"],
        "explorer.scale": v["axis"],
        "explorer.show": v["show"],
        "explorer.normalize": v["normalize"],
    }
    for prefix, key in (("loss", "explorer"), ("loss2", "explorer2")):
        state |= {f"{key}.{v[prefix]}.{k}": x for k, x in params[prefix].items()}
    for which in ("negative", "positive"):
        if v[f"held_{which}"] is not None:
            state[f"explorer.held.{v['axis']}.{which}"] = v[f"held_{which}"]
    st.session_state.update(state)


def loss_picker(prefix: str, label: str, default: str) -> tuple[str, dict[str, Any]]:
    """A loss selectbox and its parameter widgets (from the registry)."""
    name = st.selectbox(label, NAMES, index=NAMES.index(default), key=f"{prefix}.loss")
    st.caption(LOSSES[name].summary)
    return name, param_widgets(LOSSES[name], prefix)


def parameter_notes(entry: Entry, params: dict[str, Any]) -> None:
    """What each parameter does: its declared description, next to its current value."""
    fields = entry.params.model_fields
    if not fields:
        st.markdown("This loss has no parameters.")
        return
    lines = []
    for k, f in fields.items():
        symbol, text = split_symbol(f.description or "—")
        named = f"**{k}** ({symbol} in the equation)" if symbol else f"**{k}**"
        lines.append(f"- {named} = `{params[k]}`: {text}")
    st.markdown("\n".join(lines))


def compute(name: str, params: dict[str, Any], scale: str, held: dict[str, float], show: str):
    """Both profiles and the surface of one loss setting (its gradient only when shown)."""
    pos = loss_curves.loss_profile(name, params, "positive", fixed=held["negative"], scale=scale)
    neg = loss_curves.loss_profile(name, params, "negative", fixed=held["positive"], scale=scale)
    surface = loss_curves.loss_surface(
        name, params, n=GRID, scale=scale, gradient=show == "gradient"
    )
    return pos, neg, surface


def heat_maps(name: str, params: dict[str, Any], surface, show: str) -> list:
    """The (d(a,p), d(a,n)) or (s_n, s_p) heat map; the circle loss also in Sun's plane."""
    if surface.scale == "similarity":
        draw = loss_figures.circle_figure if name == "circle" else loss_figures.surface_figure
        return [draw(surface, show)]
    figures = [loss_figures.surface_figure(surface, show)]
    if name == "circle":
        plane = loss_curves.loss_surface(
            name, params, n=GRID, scale="similarity", gradient=show == "gradient"
        )
        figures.append(loss_figures.circle_figure(plane, show))
    return figures


first = read_new_link(LINK_STATE, read_explorer_link)
if first is not None and st.query_params:
    apply_link(first)
st.title("Loss explorer")
st.caption(
    "How each loss weighs a positive pair (anchor a, positive p) and a negative pair (a, n) as "
    "their distances change, with no training. Values and gradients come from the same code "
    "that trains (autograd through each loss's own formula)."
)
link_warnings(LINK_STATE)

with st.sidebar:
    st.header("Loss")
    name, params = loss_picker("explorer", "Loss", "triplet")
    st.header("Compare with")
    comparing = st.toggle(
        "Overlay a second loss or setting",
        key="explorer.compare",
        help="Pick the same loss to compare two settings of it.",
    )
    other: tuple[str, dict[str, Any]] | None = None
    if comparing:
        other = loss_picker("explorer2", "Second loss", name)

entry = LOSSES[name]
describe(entry)
with st.expander("What the parameters do", expanded=True):
    parameter_notes(entry, params)
    if other is not None and other[0] != name:
        st.markdown(f"**{other[0]}**")
        parameter_notes(LOSSES[other[0]], other[1])

c1, c2, c3, c4 = st.columns([1.3, 1, 1, 1])
scale = c1.radio(
    "Axis", list(SCALES), format_func=SCALES.get, horizontal=True, key="explorer.scale"
)
# Each coordinate as every shown loss names it (a proxy loss measures to proxies, a pair loss
# between samples): "d(a,n) / d(x, other proxy) held at" when they differ.
names = dict.fromkeys([name] + ([other[0]] if other else []))
shown = [loss_curves.axis_labels(n, scale) for n in names]
pos_label, neg_label = (" / ".join(dict.fromkeys(labels)) for labels in zip(*shown, strict=True))
held: dict[str, float] = {}
for col, (which, label) in zip(
    (c2, c3), (("negative", neg_label), ("positive", pos_label)), strict=True
):
    low, high, default = HELD[scale][which]
    held[which] = col.slider(
        f"{label} held at",
        low,
        high,
        default,
        step=0.01,
        key=f"explorer.held.{scale}.{which}",
        help="The other pair's coordinate while one profile varies.",
    )
show = c4.radio(
    "Heat map", ["value", "gradient"], horizontal=True, key="explorer.show", help="loss or |grad|"
)
controls = {
    "loss": name,
    "compare": comparing,
    "loss2": other[0] if other else name,
    "axis": scale,
    "held_negative": held["negative"],
    "held_positive": held["positive"],
    "show": show,
    "normalize": st.session_state.get("explorer.normalize", False),  # drawn further down
}
with st.sidebar:
    st.header("Share")
    copy_link(
        explorer_query(controls, {"loss": params, "loss2": other[1] if other else {}}),
        Path(__file__).stem,  # the page's url path (app.py)
        LINK_STATE,
    )

try:
    main = compute(name, params, scale, held, show)
except PROBLEMS as err:
    st.error(str(err), icon="🚫")
    st.stop()

second = None
if other is not None:
    try:
        second = compute(*other, scale, held, show)
    except PROBLEMS as err:
        st.error(f"Second loss: {err}", icon="🚫")

normalize = st.checkbox(
    "Scale each curve to its maximum (compare shapes of losses of different size)",
    value=False,
    key="explorer.normalize",
)
left, right = st.columns(2)
for col, i, title in ((left, 0, "Positive pair"), (right, 1, "Negative pair")):
    profiles = [main[i]] + ([second[i]] if second else [])
    fig = loss_figures.profile_figure(
        profiles, title, uirevision=f"profile-{i}", normalize=normalize
    )
    plotly_chart(fig, col, key=f"explorer.profile.{i}")
st.caption(
    f"{loss_curves.PROFILE_NOTE} Dotted verticals: where a profile crosses the loss's decision "
    "boundary. A flat gradient means pairs there no longer teach the network anything."
)

st.subheader("Both pairs at once")
maps = heat_maps(name, params, main[2], show)
if second and other is not None:
    maps += heat_maps(*other, second[2], show)
columns = st.columns(2)
for i, fig in enumerate(maps):
    plotly_chart(fig, columns[i % 2], key=f"explorer.map.{i}")
st.caption(
    "Lines: the decision boundaries the loss defines (from its parameters). In the distance "
    "plane, triplet-type losses are satisfied above their line, d(a,n) > d(a,p) + margin."
)

# The views a loss declares (a temperature to sweep, boundaries by angle), for each shown setting.
settings = [(name, params)] + ([other] if other is not None and second else [])
settings = [s for i, s in enumerate(settings) if s not in settings[:i]]
weights = [w for s in settings if (w := loss_geometry.negative_weights(*s))]
planes = [p for s in settings if (p := loss_geometry.angular_plane(*s))]
if weights:
    st.subheader("Which negatives the temperature listens to")
    log_y = st.toggle("Logarithmic weight axis", key="explorer.hardness.log")
    columns = st.columns(2)
    for i, w in enumerate(weights):
        fig = geometry_figures.hardness_figure(w, log_y, uirevision=f"hardness-{i}")
        plotly_chart(fig, columns[i % 2], key=f"explorer.hardness.{i}")
    if len(weights) == 1:
        columns[1].markdown(
            "One anchor, one positive and many negatives spread evenly from dissimilar "
            "(s = −1) to nearly identical (s = 1) to the anchor. Each curve is the gradient "
            "the loss puts on each negative, from the loss's own code, divided by the "
            "average: 1 means every negative is pushed alike.\n\n"
            "- A **low τ** gives nearly all the push to the few negatives closest to the "
            "anchor, the hard ones, and ignores the rest: embeddings spread out, but hard "
            "negatives that are really the same kind of thing get pushed away too.\n"
            "- A **high τ** pushes all negatives almost equally and tolerates hard ones."
        )
    st.caption(
        "Wang & Liu, Understanding the Behaviour of Contrastive Loss, CVPR 2021: the "
        "hardness-aware property. The red curve follows your τ slider."
    )
if planes:
    st.subheader("Decision boundary by angle")
    left, right = st.columns(2)
    plotly_chart(geometry_figures.angular_figure(planes), left, key="explorer.angles")
    right.markdown(
        "A sample is at angle θ_own from its own class weight and θ_other from another "
        "class's. A plain softmax picks the nearer class: the dotted diagonal. A margin "
        "loss moves the own class's boundary up, so a sample must be nearer its own "
        "class **by the margin**: the shaded band holds samples already on the right "
        "side, still pushed towards their class, which tightens classes on the sphere.\n\n"
        "- **ArcFace** adds m to the angle: the band has the same height m everywhere.\n"
        "- **CosFace** subtracts m from the cosine: the band is tallest near θ_own = 0 "
        "and shrinks as the angle grows.\n"
        "- **Normalised softmax** has no margin: no band; its temperature sharpens the "
        "softmax but does not move the boundary.\n\n"
        "Black bars: the angular margin the loss asks for at two angles."
    )
