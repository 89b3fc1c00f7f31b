"""Figures on a dark page: the paper's near-black ink turns light, a light label box dark.

The figures are drawn as on paper: reference lines (a loss's margins, the sphere's analytic
q(d), the effective rank's ceiling), outlines and label text in near-black or dark grey ink,
and labels on white boxes at some opacity. On Streamlit's dark theme that ink all but
vanishes: a margin's dashed line at #333333 on the page's #0e1117 has a contrast of 1.6:1.

One rule for every chart, in ``DARK_PAGE_INKS``: each paper ink has its colour for a dark page
(near-black becomes the dark theme's text colour, the dark greys a lighter grey, so ink and
grey stay apart), and a white box takes the page's background at the box's opacity. Pages
apply it to the figures they show with ``st.plotly_chart`` when the theme is dark
(``for_dark_page``); the live charts' script (``pages/live_chart.js``) is handed the same table
and applies it in the browser, where it reads the page's own background.
"""

from __future__ import annotations

import re
from typing import Any

import plotly.graph_objects as go

DARK_PAGE_INKS: dict[str, str] = {
    "#000000": "#fafafa",
    "black": "#fafafa",
    "#222222": "#fafafa",
    "#333333": "#fafafa",
    "#444444": "#c9ccd6",
    "#555555": "#a3a8b8",
}
"""Each ink of the figures (lower case) and its colour on a dark page. #fafafa is the text
colour of Streamlit's dark theme; the greys keep the order of their paper shades."""
DARK_BACKGROUND = (14, 17, 23)
"""The page background of Streamlit's dark theme, #0e1117, as RGB."""
LIGHT_BOX = re.compile(r"^rgba\(\s*255\s*,\s*255\s*,\s*255\s*,")
"""A white box at some opacity, ``rgba(255,255,255,a)``, as the figures give labels."""


def recolour(node: Any, background: tuple[int, int, int] = DARK_BACKGROUND) -> None:
    """Re-ink, in place, every colour in ``node`` (a figure's dict, or any part of one).

    Every key ending in ``color`` is looked at: a paper ink takes its ``DARK_PAGE_INKS``
    colour, a white box (``bgcolor``) the ``background`` at the same opacity. Lists of
    colours (a marker's per-point colours) are re-inked item by item.
    """
    if isinstance(node, list):
        for item in node:
            recolour(item, background)
        return
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        if key.endswith("color"):
            node[key] = _dark(key, value, background)
        elif isinstance(value, (dict, list)):
            recolour(value, background)


def _dark(key: str, value: Any, background: tuple[int, int, int]) -> Any:
    """One colour (or list of colours) as it shows on a dark page."""
    if isinstance(value, list):
        return [_dark(key, item, background) for item in value]
    if not isinstance(value, str):
        return value
    if (ink := DARK_PAGE_INKS.get(value.lower())) is not None:
        return ink
    if key == "bgcolor" and LIGHT_BOX.match(value):
        return LIGHT_BOX.sub("rgba({},{},{},".format(*background), value)
    return value


def for_dark_page(fig: go.Figure) -> go.Figure:
    """A copy of ``fig`` for a dark page (``recolour``); ``fig`` itself is unchanged.

    The layout's template is left as it is: Streamlit replaces it with its own theme's.
    """
    props = fig.to_dict()
    template = props.get("layout", {}).pop("template", None)
    recolour(props)
    if template is not None:
        props["layout"]["template"] = template
    return go.Figure(props, _validate=False)
