"""Miner view: one P x K batch, one anchor, and what every registered miner selects for it."""

from __future__ import annotations

from typing import Any

import streamlit as st

from dml_core.analysis.batch_view import (
    Batch,
    SavedRun,
    UntrainedNet,
    draw_batch,
    mine_all,
    saved_run_margin,
)
from dml_core.config import EMBEDDING_DIMS
from dml_core.data import DATASETS, dataset_availability
from dml_core.errors import ConfigError
from dml_core.figures import batch as batch_figures
from dml_core.figures import thumbnails
from dml_core.registry import MINERS
from dml_core.runs import RunStore
from pages.ui import RUNS_DIR, param_widgets, use_app_navigation

use_app_navigation()
store = RunStore(RUNS_DIR)  # read-only here: listing runs and reading checkpoints
UNTRAINED = "untrained net"
DIMS = list(EMBEDDING_DIMS)
DEFAULT_MARGIN = 0.2


def margin_follows(source_name: str) -> float:
    """The margin slider's default: the saved run's miner margin (else its loss margin).

    Set only when the net changes, so a value the user picks stays until then.
    """
    default = DEFAULT_MARGIN
    if source_name != UNTRAINED:
        default = saved_run_margin(RUNS_DIR, source_name) or DEFAULT_MARGIN
    if st.session_state.get("mv.margin_for") != source_name:
        st.session_state["mv.margin_for"] = source_name
        st.session_state["mv.margin"] = min(max(default, 0.01), 2.0)
    return default


@st.cache_data(max_entries=32, show_spinner="Embedding the batch…")
def cached_batch(dataset: str, P: int, K: int, seed: int, source: UntrainedNet | SavedRun) -> Batch:
    """One embedded batch per settings: picking another anchor re-embeds nothing."""
    return draw_batch(dataset, P, K, seed, source)


def sidebar() -> tuple[dict[str, Any], str | None]:
    """Batch, net, margin and miners from the widgets; returns (settings, problem)."""
    problem = None
    with st.sidebar:
        st.header("Batch")
        runs = store.list()
        source_name = st.selectbox(
            "Net",
            [UNTRAINED, *runs],
            key="mv.source",
            help="An untrained net, or the last checkpoint of a saved run",
        )
        if source_name == UNTRAINED:
            c1, c2 = st.columns(2)
            net = c1.radio("Architecture", ["mlp", "convnet"], key="mv.net", horizontal=True)
            dim = c2.select_slider("Embedding dim", DIMS, value=32, key="mv.dim")
            dataset = st.selectbox("Dataset", DATASETS, key="mv.dataset")
            source: UntrainedNet | SavedRun = UntrainedNet(net, dim)
        else:
            cfg = store.load(source_name).config
            dataset = cfg.dataset
            st.caption(f"Dataset of the run: {dataset} ({cfg.split}), D = {cfg.embedding_dim}")
            source = SavedRun(RUNS_DIR, source_name)
        available, note = dataset_availability(dataset)
        if not available:
            problem = note
        c1, c2, c3 = st.columns(3)
        P = c1.number_input("P classes", 1, 16, 6, key="mv.P")
        K = c2.number_input("K per class", 1, 64, 8, key="mv.K")
        seed = c3.number_input("Seed", 0, 2**31 - 1, 0, key="mv.seed")
        run_margin = margin_follows(source_name)
        margin = st.slider(
            "Margin α",
            0.01,
            2.0,
            step=0.01,
            key="mv.margin",
            help="easy / semi-hard / hard"
            + ("" if source_name == UNTRAINED else f"; the run mined with α = {run_margin:g}"),
        )
        st.header("Miners")
        chosen = st.pills(
            "Miners",
            list(MINERS),
            selection_mode="multi",
            default=list(MINERS),
            key="mv.miners",
            help="Click a miner to show or hide it.",
        )
        params = {}
        with st.expander("Miner parameters", expanded=False):
            for name in chosen:
                entry = MINERS[name]
                fields = set(entry.params.model_fields)
                st.markdown(f"**{name}** · {entry.paper}")
                if fields == {"margin"}:
                    st.caption("margin: follows the margin slider above")
                params[name] = {} if fields == {"margin"} else param_widgets(entry, "mv")
    settings = {"dataset": dataset, "P": P, "K": K, "seed": seed, "source": source}
    return {**settings, "margin": margin, "miners": params}, problem


def anchor_from_click(batch_size: int) -> None:
    """A click on the PCA chart sets the anchor (before its number input is drawn)."""
    event = st.session_state.get("mv.chart.pca")
    points = (event or {}).get("selection", {}).get("points", [])
    if points:
        clicked = points[0].get("customdata")
        clicked = clicked[0] if isinstance(clicked, list) else clicked
        if clicked is not None and clicked != st.session_state.get("mv.last_click"):
            st.session_state["mv.last_click"] = clicked
            st.session_state["mv.anchor"] = int(clicked)
    if st.session_state.get("mv.anchor", 0) >= batch_size:
        st.session_state["mv.anchor"] = batch_size - 1


st.title("Miner view")
st.caption(
    "One P × K batch and one anchor: which positives and negatives each miner picks, and "
    "whether each negative is easy (beyond d(a,p) + α), semi-hard (inside the margin) or "
    "hard (closer than the positive), as in FaceNet (Schroff et al. 2015, Sec. 3.2)."
)
settings, problem = sidebar()
miners, margin = settings.pop("miners"), settings.pop("margin")
batch = result = None
if problem:
    st.error(problem, icon="🚫")
elif not miners:
    st.error("The 'miners' field is empty: choose at least one miner.", icon="🚫")
else:
    try:
        batch = cached_batch(**settings)
        result = mine_all(batch.emb, batch.labels, miners, margin)
    except (ConfigError, ValueError) as err:
        st.error(str(err), icon="🚫")

if batch is not None and result is not None:
    size = len(batch.labels)
    anchor_from_click(size)
    c1, c2, c3, c4 = st.columns([1, 1, 1.4, 2.6])
    anchor = int(c1.number_input("Anchor (batch index)", 0, size - 1, 0, key="mv.anchor"))
    positives = [int(i) for i in result.positives_of(anchor)]  # farthest first
    if st.session_state.get("mv.positive") not in positives:
        st.session_state["mv.positive"] = positives[0]
    positive = c2.selectbox(
        "Positive (rings)",
        positives,
        key="mv.positive",
        format_func=lambda i: f"#{i}, d = {result.dist[anchor, i]:.3f}",
        help="The margin rings are drawn at d(a,p) and d(a,p) + α for this positive, and each "
        "negative's kind is judged against it. Listed farthest first (the default).",
    )
    focus = c3.selectbox(
        "Miner in the PCA view and the images",
        list(miners),
        key="mv.focus",
        help="Whose selections the lines and the image strip show",
    )
    c4.caption(
        f"{size} images embedded by the {batch.source}. Anchor #{anchor}: class "
        f"{batch.class_names[batch.labels[anchor]]}."
    )
    c4.image(batch.images[anchor], width=56, clamp=True)
    st.plotly_chart(
        batch_figures.batch_pca_figure(batch, result, focus, anchor, positive),
        key="mv.chart.pca",
        on_select="rerun",
        selection_mode="points",
    )
    st.plotly_chart(
        thumbnails.anchor_strip_figure(
            batch, result.anchor_view(focus, anchor, positive), focus, margin
        ),
        key="mv.chart.strip",
    )
    st.dataframe(
        result.summary(),
        hide_index=True,
        column_config={
            k: st.column_config.NumberColumn(format="%.3f")
            for k in ("easy", "semi-hard", "hard", "mean d(a,p)", "mean d(a,n)")
        },
    )
    st.caption(
        "Kinds are counted, in the table, over all the triplets each miner forms (pair "
        "miners: each positive pair joined with every negative pair of its anchor, as a "
        "triplet loss does). In the figures, a negative's kind is judged against the chosen "
        "positive and shown by its outline: ○ easy, ◇ semi-hard, × hard; the fill colour is "
        "the class, green and red lines are positive and negative pairs."
    )
    st.plotly_chart(
        batch_figures.anchor_polar_figure(batch, result, anchor, list(miners), positive),
        key="mv.chart.polar",
    )
