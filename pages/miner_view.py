"""Miner view: one P x K batch, one anchor, and what every registered miner selects for it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
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
from dml_core.data import dataset_availability
from dml_core.errors import ConfigError, field_bounds
from dml_core.figures import batch as batch_figures
from dml_core.figures import thumbnails
from dml_core.registry import MINERS
from dml_core.runs import RunStore
from dml_core.services.share_links import (
    MINER_VIEW,
    Link,
    MinerViewControls,
    read_link,
    write_query,
)
from pages.ui import (
    RUNS_DIR,
    copy_link,
    field_widget,
    link_warnings,
    param_widgets,
    plotly_chart,
    read_new_link,
    use_app_navigation,
)

use_app_navigation()
store = RunStore(RUNS_DIR)  # read-only here: listing runs and reading checkpoints
UNTRAINED = "untrained net"
DEFAULT_MARGIN = MinerViewControls().margin
LINK_STATE = "link.miners"  # the link this session opened the page with
CONTROLS = MinerViewControls  # the controls' limits and defaults (shared with links)


def apply_link(link: Link) -> None:
    """A link's controls into the widgets' state (before they draw); a missing run is named."""
    v = link.values
    state = {f"mv.{k}": v[k] for k in ("net", "dim", "dataset", "P", "K", "seed", "anchor")}
    state["mv.miners"] = list(v["miners"])
    source = UNTRAINED
    if v["run"] is not None and v["run"] in store.list():
        source = state["mv.source"] = v["run"]
    elif v["run"] is not None:
        problem = (
            f"The link's 'run' names no saved run here ({v['run']!r}); the untrained net is used."
        )
        st.session_state[LINK_STATE] = replace(link, problems=(*link.problems, problem))
    if "margin" in link.used or source == UNTRAINED:  # else the margin follows the run
        state |= {"mv.margin": v["margin"], "mv.margin_for": source}
    for miner, params in link.params.items():
        state |= {f"mv.{miner}.{k}": x for k, x in params.items()}
    st.session_state.update(state)


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
        controls: dict[str, Any] = CONTROLS().model_dump()
        if source_name == UNTRAINED:
            c1, c2 = st.columns(2)
            with c1:
                net = field_widget(CONTROLS, "net", "mv.net")
            with c2:
                dim = field_widget(CONTROLS, "dim", "mv.dim")
            dataset = field_widget(CONTROLS, "dataset", "mv.dataset")
            source: UntrainedNet | SavedRun = UntrainedNet(net, dim)
            controls |= {"net": net, "dim": dim, "dataset": dataset}
        else:
            cfg = store.load(source_name).config
            dataset = cfg.dataset
            st.caption(f"Dataset of the run: {dataset} ({cfg.split}), D = {cfg.embedding_dim}")
            source = SavedRun(RUNS_DIR, source_name)
            controls["run"] = source_name
        available, note = dataset_availability(dataset)
        if not available:
            problem = note
        batch = {}
        for name, column in zip(("P", "K", "seed"), st.columns(3), strict=True):
            with column:
                batch[name] = field_widget(CONTROLS, name, f"mv.{name}")
        P, K, seed = batch["P"], batch["K"], batch["seed"]
        run_margin = margin_follows(source_name)
        low, high = (float(field_bounds(CONTROLS, "margin")[k]) for k in ("ge", "le"))
        margin = st.slider(
            "Margin α",
            low,
            high,
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
    controls |= {"P": P, "K": K, "seed": seed, "margin": margin, "miners": tuple(chosen)}
    return {**settings, "margin": margin, "miners": params, "controls": controls}, problem


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


first = read_new_link(LINK_STATE, lambda query: read_link(MINER_VIEW, query))
if first is not None and st.query_params:
    apply_link(first)
st.title("Miner view")
st.caption(
    "One P × K batch and one anchor: which positives and negatives each miner picks, and "
    "whether each negative is easy (beyond d(a,p) + α), semi-hard (inside the margin) or "
    "hard (closer than the positive), as in FaceNet (Schroff et al. 2015, Sec. 3.2)."
)
link_warnings(LINK_STATE)
settings, problem = sidebar()
miners, margin = settings.pop("miners"), settings.pop("margin")
controls = settings.pop("controls")
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
    plotly_chart(
        batch_figures.batch_pca_figure(batch, result, focus, anchor, positive),
        key="mv.chart.pca",
        on_select="rerun",
        selection_mode="points",
    )
    plotly_chart(
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
    plotly_chart(
        batch_figures.anchor_polar_figure(batch, result, anchor, list(miners), positive),
        key="mv.chart.polar",
    )

with st.sidebar:
    st.header("Share")
    anchor_now = st.session_state.get("mv.anchor", 0)
    copy_link(
        write_query(MINER_VIEW, controls | {"anchor": anchor_now}, miners),
        Path(__file__).stem,  # the page's url path (app.py)
        LINK_STATE,
    )
