"""AppTests of pages/live_chart: one identity per key, and the newest figure.

What the browser does with them (the same chart updated in place, Streamlit's theme, the
plotly package's plotly.js, a click reported) is checked in real Chromium, in
``tests/e2e/test_train_page.py::test_train_live_stop_and_reload``.
"""

from __future__ import annotations

import json

from streamlit.testing.v1 import AppTest

from tests.page_apps import live_charts


def two_steps_app() -> None:
    """A live chart whose figure changes with ``st.session_state["step"]``."""
    import plotly.graph_objects as go
    import streamlit as st

    from pages.live_chart import live_chart

    step = st.session_state.setdefault("step", 1)
    fig = go.Figure(go.Bar(x=[0, 1, 2], y=[step, 2 * step, 3 * step]))
    fig.update_layout(title={"text": f"step {step}"}, uirevision="steps")
    live_chart(fig, "chart.steps")
    st.session_state["figure"] = fig.to_json()


def test_a_new_figure_goes_to_the_chart_already_drawn() -> None:
    """The element keeps its id (the browser keeps its chart) and carries the new figure.

    Catches: a chart whose identity hashes its figure (``st.plotly_chart``: a new chart, and a
    WebGL context, per snapshot) and a chart handed a stale figure.
    """
    at = AppTest.from_function(two_steps_app)
    at.run()
    assert not at.exception
    (first,) = live_charts(at).values()
    first_id = at.get("bidi_component")[0].proto.id
    assert first["spec"] == json.loads(at.session_state["figure"])
    at.session_state["step"] = 2
    at.run()
    (second,) = live_charts(at).values()
    assert at.get("bidi_component")[0].proto.id == first_id
    assert second["spec"] == json.loads(at.session_state["figure"])
    assert second["spec"]["layout"]["title"]["text"] == "step 2"
    assert second["spec"] != first["spec"]
    assert list(live_charts(at)) == ["chart.steps"]
