"""Train page extras (issue 16): the hardest triplets, trust in the picture, true neighbours.

No maths here: ``dml_core`` computes and draws.

Used by ``pages/train.py``:

- ``render_hardest_triplets(runs_dir, run_id, step)``: behind a toggle (it costs seconds on
  a 2000-point probe set), the k most violating triplets of the snapshot as images.
- ``layout_quality_caption(run_id, step, method, emb, points)``: trustworthiness and
  preserved neighbours of the layout shown, one line for ``st.caption`` (``quality_text`` for
  a result computed elsewhere, e.g. by the projection worker).
- ``show_true_neighbours(fig, points, emb, chart_key)``: a click on the layout (the chart's
  selection) marks that point's k nearest neighbours in the embedding.
- ``shown_settings(cfg)``: the shown run's settings card, its equations, "Load these settings".
- ``export_buttons(store, run_id)``: the shown run's downloads, each built only when clicked.
- ``loss_preview(cfg)``: before a run, the chosen loss as one pair's distance moves.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import plotly.graph_objects as go
import streamlit as st

from dml_core.analysis import loss_curves
from dml_core.analysis.hard_triplets import snapshot_hardest_triplets
from dml_core.analysis.layout_quality import layout_quality
from dml_core.config import RunConfig, describe_config
from dml_core.errors import ConfigError
from dml_core.figures import losses as loss_figures
from dml_core.figures import neighbours, thumbnails
from dml_core.figures.style import as_cached
from dml_core.registry import LOSSES, MINERS
from dml_core.runs import RunStore
from dml_core.services import export
from pages.live_chart import live_chart
from pages.train_settings import load_settings
from pages.ui import describe, load_snapshot, plotly_chart, run_class_names

Array = Any  # a numpy array: pages never import numpy (tests/test_boundaries.py)

HARD_TRIPLETS_K = 8
NEIGHBOURS_K = 10  # one k for the caption's numbers and the clicked point's neighbours


@st.cache_data(max_entries=64, show_spinner="Finding the hardest triplets of the probe set…")
def hardest_triplets_figure(
    runs_dir: str, run_id: str, step: int, k: int, one_per_anchor: bool
) -> go.Figure:
    """The strip of one snapshot's hardest triplets (cached: snapshots never change).

    Raises:
        ConfigError: the probe images cannot be recovered (the dataset changed since the run).
    """
    snap = load_snapshot(runs_dir, run_id, step)
    store = RunStore(runs_dir)
    cfg = store.load(run_id).config
    pictures = export.probe_images(store, run_id, snap)  # (n, H, W), checked against labels
    hard = snapshot_hardest_triplets(
        snap.probe_emb, snap.probe_labels, cfg, k, one_per_anchor=one_per_anchor
    )
    fig = thumbnails.triplet_strip_figure(hard, pictures, snap.probe_labels, run_class_names(cfg))
    return as_cached(fig)


def render_hardest_triplets(runs_dir: str, run_id: str, step: int) -> None:
    """A toggle, and when on, the snapshot's hardest triplets as images with a caption."""
    c1, c2 = st.columns([2, 3])
    shown = c1.toggle(
        "Show the hardest triplets now",
        key="view.hard_triplets",
        help="The triplets of the probe set the loss most wants fixed, as images",
    )
    spread = c2.toggle(
        "One per anchor",
        value=True,
        key="view.hard_triplets_spread",
        disabled=not shown,
        help="Each anchor's worst triplet only, so one odd image cannot fill the strip; off: "
        "the k worst triplets, often one mislabelled image with many partners",
    )
    if not shown:
        return
    try:
        fig = hardest_triplets_figure(runs_dir, run_id, step, HARD_TRIPLETS_K, spread)
    except ConfigError as err:
        st.error(str(err), icon="🚫")
        return
    plotly_chart(fig, key="chart.hard_triplets")
    st.caption(
        "Each column is one (anchor, positive, negative) of the probe set at this snapshot: "
        "the negative (red) sits closer to the anchor than the loss allows. Violation = how "
        "far inside the margin it is, b(d(a,p)) − d(a,n); hard (×): closer than the "
        "positive (green) itself. Mislabelled or ambiguous images often show up here."
    )


@st.cache_data(max_entries=256, show_spinner=False)
def _quality(run_id: str, step: int, method: str, _emb: Array, points: Array) -> dict:
    """``layout_quality`` of one layout (keyed by run, step, method and the layout itself)."""
    return layout_quality(_emb, points, NEIGHBOURS_K)


def layout_quality_caption(run_id: str, step: int, method: str, emb: Array, points: Array) -> str:
    """One line: how far to trust the layout ``points`` of ``emb`` (k = ``NEIGHBOURS_K``)."""
    if len(points) < 2 * NEIGHBOURS_K + 1:
        return ""
    return quality_text(_quality(run_id, step, method, emb, points))


def quality_text(q: dict[str, float]) -> str:
    """The caption line for a ``layout_quality`` result (k = ``NEIGHBOURS_K``)."""
    return (
        f"How far to trust this picture ({NEIGHBOURS_K} neighbours): trustworthiness "
        f"**{q['trustworthiness']:.3f}** (1: it invents no neighbour; about 0.5: random), "
        f"**{q['knn_preserved']:.0%}** of each point's {NEIGHBOURS_K} nearest in the embedding "
        "are among its nearest here. Click a point to see its true neighbours."
    )


def clicked_point(chart_key: str, n: int) -> int | None:
    """The probe point last clicked on the chart ``chart_key`` (its selection), if any."""
    event = st.session_state.get(chart_key) or {}
    points = (event.get("selection") or {}).get("points") or []
    if not points:
        return None
    data = points[0].get("customdata")
    data = data[0] if isinstance(data, list) and data else data
    if isinstance(data, (int, float)) and 0 <= int(data) < n:
        return int(data)
    return None  # a class weight or an overlay, not a probe point


def show_true_neighbours(fig: go.Figure, points: Array, emb: Array, chart_key: str) -> int | None:
    """Draw the clicked point's true neighbours on ``fig`` (2-D layouts); returns the point."""
    index = clicked_point(chart_key, len(emb))
    if index is None or points.shape[1] != 2:
        return None
    neighbours.add_true_neighbours(fig, points, emb, index, NEIGHBOURS_K)
    return index


def export_buttons(store: RunStore, run_id: str) -> None:
    """Downloads of the shown run, built only when clicked."""
    downloads = (  # label, bytes (built only when clicked), file suffix, MIME type, key, help
        ("Metrics (CSV)", lambda: store.history(run_id).to_csv(index=False), "metrics.csv",
         "text/csv", "dl.csv", None),
        ("Embedding Projector (zip)", lambda: export.projector_zip(store, run_id),
         "projector.zip", "application/zip", "dl.projector",
         "tensors.tsv, metadata.tsv and a sprite for TensorBoard's Embedding Projector"),
        ("Animation (HTML)", lambda: export.animation_html_bytes(store, run_id),
         "animation.html", "text/html", "dl.html", None),
        ("Animation (GIF)", lambda: export.animation_gif_bytes(store, run_id),
         "animation.gif", "image/gif", "dl.gif", None),
    )  # fmt: skip
    with st.expander("Export this run"):
        for col, (label, data, suffix, mime, key, help_text) in zip(
            st.columns(len(downloads)), downloads, strict=True
        ):
            col.download_button(
                label, data, file_name=f"{run_id}-{suffix}", mime=mime, key=key, help=help_text
            )
        st.caption("Each figure has its own PNG download in its toolbar (camera icon).")


def shown_settings(cfg: RunConfig) -> None:
    """The shown run's own settings: a config card, its equations and "Load these settings"."""
    st.markdown(f"**Shown run:** {describe_config(cfg)}")
    st.button(
        "Load these settings",
        key="btn.load_settings",
        on_click=load_settings,
        args=(cfg,),
        help="Copy this run's settings into the sidebar, to train it again or vary one thing",
    )
    left, right = st.columns(2)
    with left:
        describe(LOSSES[cfg.loss])
    with right:
        describe(MINERS[cfg.miner])


def loss_preview(cfg: RunConfig) -> None:
    """Before a run: the chosen loss as one pair's distance moves, at the sidebar's parameters.

    The Loss explorer's two profiles in one figure (the other distance held at its default),
    so a margin moved in the sidebar moves its boundary here at once. A loss without per-pair
    curves shows none. A live chart, as the run's figures are: the page also has their
    plotly.js loaded before Train is pressed, instead of in the middle of the run's first
    live draw, and a moved margin redraws the preview in place.
    """
    fig = preview_figure(cfg.loss, json.dumps(cfg.loss_params, sort_keys=True))
    if fig is None:
        return
    live_chart(fig, "chart.loss_preview")
    st.caption(
        f"It follows the sidebar. {loss_curves.PROFILE_NOTE} The Loss explorer shows more: "
        "heat maps, two losses."
    )


@st.cache_data(max_entries=64, show_spinner=False)
def preview_figure(loss: str, params_json: str) -> go.Figure | None:
    """``loss_preview``'s figure (about 50 ms to build; a dragged slider asks again and again)."""
    params = json.loads(params_json)
    try:
        profiles = [
            loss_curves.loss_profile(loss, params, axis) for axis in ("positive", "negative")
        ]
    except (ConfigError, loss_curves.CurveUnavailableError):
        return None
    # the title names the loss and its settings (the profiles' own label: ``setting_label``)
    # and what is plotted; the legend and the axes, the pair that varies
    title = f"{profiles[0].label}: one anchor, a positive and a negative"
    profiles = [replace(p, label=f"{p.axis} pair") for p in profiles]
    fig = loss_figures.profile_figure(profiles, title, uirevision="train-preview", height=460)
    return as_cached(fig)
