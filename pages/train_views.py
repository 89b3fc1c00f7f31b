"""The Train page's views strip: for a label-free run, two views of a few images.

No maths here: ``augment.example_views`` makes the views (seeded like the run's sampler) and
``figures.views`` draws them.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from dml_core.augment import example_views
from dml_core.config import RunConfig
from dml_core.data import DatasetError, load_for_config
from dml_core.figures.views import views_strip_figure
from pages.ui import plotly_chart

Array = Any  # a numpy array: pages never import numpy (tests/test_boundaries.py)

STRIP_IMAGES = 8
CAPTION = (
    "Label-free training (SimCLR): the two views of an image are its only positive pair; "
    "every other view in the batch is a negative. Labels are never shown to the loss: they "
    "only colour the live views and score retrieval."
)


@st.cache_data(max_entries=32, show_spinner=False)
def strip_views(cfg_json: str, n: int) -> Array:
    """``example_views`` of a config given as JSON (hashable), (n, 2, H, W) in [0, 1]."""
    cfg = RunConfig.model_validate_json(cfg_json)
    return example_views(cfg, load_for_config(cfg), n)


def render_views_strip(cfg: RunConfig, n: int = STRIP_IMAGES) -> None:
    """Draw the views strip of ``cfg`` when it trains on views; nothing for a labelled run."""
    if cfg.supervision != "views":
        return
    try:
        pairs = strip_views(cfg.model_dump_json(), n)
    except DatasetError as err:
        st.info(f"The views cannot be shown: {err}")
        return
    plotly_chart(views_strip_figure(pairs), key="chart.views_strip")
    st.caption(CAPTION)
