"""A plotly chart that a live run redraws in place: the Train page's six snapshot figures.

``st.plotly_chart`` gives a chart a new identity whenever its figure changes (Streamlit 1.67
hashes the figure into the element id), so the browser mounts a new chart for every snapshot
of a live run: six charts and a WebGL context per redraw, about a CPU-second of the browser's
on two cores, taken from the training beside it. ``live_chart`` mounts a Streamlit v2
component keyed by the chart's key alone; its script (``live_chart.js``) hands each new
figure to ``Plotly.react`` on the chart already drawn, and plotly redraws only what changed.

It looks like ``st.plotly_chart``: Streamlit's plotly theme and toolbar, applied in the
browser as Streamlit does, and on a ``selectable`` chart a click selects the point and is
reported as ``st.session_state[key]["selection"]["points"]`` (each with its ``customdata``),
the shape ``st.plotly_chart(on_select=...)`` gives.

plotly.js comes from the plotly package itself (the version the figures are written for),
served by Streamlit's static route for components (``plotly_js_url``: declared, never mounted).
"""

from __future__ import annotations

from pathlib import Path

import plotly
import plotly.graph_objects as go
import streamlit as st
import streamlit.components.v1 as components_v1

from dml_core.figures.dark import DARK_PAGE_INKS

PLOTLY_DIR = str(Path(plotly.__file__).parent / "package_data")
PLOTLY_JS = "plotly.min.js"
DEFAULT_HEIGHT = 450  # plotly.js's, for a figure that sets none
_MOUNT = st.components.v2.component(
    "dml_live_chart",
    js=(Path(__file__).with_suffix(".js")).read_text(encoding="utf-8"),
    isolate_styles=False,  # plotly.js styles its charts from the document's head
)


def plotly_js_url() -> str:
    """Where this server serves the plotly package's ``plotly.min.js``, relative to a page.

    Declared on every call: Streamlit registers a component with the server whose script is
    running (30 us), and a module is imported once per process, maybe outside any script run.
    Every page sits one level below the app's root (``/<page>`` or ``/<base path>/<page>``).
    """
    served = components_v1.declare_component("plotly_js", path=PLOTLY_DIR)
    return f"component/{served.name}/{PLOTLY_JS}"


def _ignore() -> None:
    """A selection reruns the page (``on_selection_change``); there is nothing else to do."""


def live_chart(fig: go.Figure, key: str, *, selectable: bool = False) -> None:
    """Draw ``fig`` under ``key``, updating the chart drawn there before rather than a new one.

    ``selectable``: a click selects a point and reruns the page, and
    ``st.session_state[key]["selection"]`` holds the points, as ``st.plotly_chart`` reports.
    """
    data = {
        "spec": fig.to_json(),
        "plotly_url": plotly_js_url(),
        "selectable": selectable,
        "inks": DARK_PAGE_INKS,  # each paper ink's colour on a dark page (drawn in the browser)
        "height": fig.layout.height or DEFAULT_HEIGHT,  # kept while the chart waits off screen
    }
    if selectable:
        _MOUNT(key=key, data=data, on_selection_change=_ignore)
    else:
        _MOUNT(key=key, data=data)
