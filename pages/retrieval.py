"""Retrieval: a query image and its nearest neighbours, the worst queries, and verification."""

from __future__ import annotations

import math
from typing import Any

import streamlit as st

from dml_core.analysis import retrieval, verification
from dml_core.data import OPEN_SET_TRAIN_CLASSES, DatasetError
from dml_core.figures import live as figures
from dml_core.figures import retrieval as retrieval_figures
from dml_core.metrics import METRIC_LABELS
from dml_core.projection import project
from dml_core.runs import RunStore
from pages import ui
from pages.ui import POLL_LAYOUT_S, load_snapshot, run_label, services, use_app_navigation

use_app_navigation()

QUERY_KEY = "retrieval.query"
CHART_KEY = "retrieval.embedding"


@st.cache_resource(max_entries=8, show_spinner=False)
def cached_run(runs_dir: str, run_id: str):
    """Config and dataset of a run, loaded once."""
    return retrieval.load_run_data(RunStore(runs_dir), run_id)


@st.cache_resource(max_entries=4, show_spinner=False)
def cached_index(runs_dir: str, run_id: str, step: int) -> retrieval.RetrievalIndex:
    """The run's retrieval index at a checkpoint step (its saved embeddings when it has them)."""
    return retrieval.build_index(RunStore(runs_dir), run_id)


@st.cache_resource(max_entries=4, show_spinner=False)
def cached_verification(runs_dir: str, run_id: str, step: int):
    """Pair distances of the query split and their ROC summary."""
    index = cached_index(runs_dir, run_id, step)
    pos, neg = verification.evaluation_pairs(index.query_emb, index.query_labels)
    return pos, neg, verification.verification(pos, neg)


def picked_query(state: Any) -> int | None:
    """The query index of the point clicked in the probe scatter (its customdata), if any."""
    points = (state or {}).get("selection", {}).get("points", [])
    if not points:
        return None
    data = points[0].get("customdata")
    if isinstance(data, list):
        data = data[0] if data else None
    return None if data is None else int(data)


def pick_run(store: RunStore) -> str:
    """A saved run with a checkpoint (stops the page when there is none)."""
    runs = retrieval.runs_with_checkpoint(store)
    if not runs:
        st.info(
            "No saved run with weights yet. Train one on the **Train** page (digits trains in "
            "seconds), then come back here to see what it retrieves.",
            icon="🔎",
        )
        st.stop()
    wanted = st.query_params.get("run")
    if wanted and wanted not in runs:
        why = "has no saved weights yet" if store.exists(wanted) else "does not exist"
        st.warning(f"The run '{wanted}' in the link {why}; showing {runs[0]} instead.")
    run_id = st.selectbox(
        "Run",
        runs,
        index=runs.index(wanted) if wanted in runs else 0,
        key="retrieval.run",
        format_func=lambda r: run_label(store, r),
    )
    st.query_params["run"] = run_id
    return run_id


def open_set_note(dataset) -> None:
    """Say plainly what an open-set run retrieves."""
    names = dataset.class_names
    seen = ", ".join(names[c] for c in OPEN_SET_TRAIN_CLASSES)
    unseen = ", ".join(names[c] for c in range(len(names)) if c not in OPEN_SET_TRAIN_CLASSES)
    st.info(
        f"**Open-set run.** The net was trained on classes {seen} only. Every query and every "
        f"reference below belongs to classes **{unseen}, never seen in training**. When they "
        "still cluster and retrieve their own class, the net has learned a notion of "
        "similarity that transfers to new classes: the real claim of metric learning.",
        icon="🧪",
    )


@st.fragment(run_every=POLL_LAYOUT_S)
def wait_for_umap(worker, key: str, step: int) -> None:
    """Poll the projection worker; rerun the page once the UMAP layout is ready."""
    if worker.get(key, step, "umap") is not None:
        st.rerun()


def probe_scatter(run_id: str, cfg, dataset, query_i: int) -> None:
    """The last snapshot's probe set (UMAP / PCA); clicking a point picks that query."""
    steps = RunStore(ui.RUNS_DIR).snapshot_steps(run_id)
    if not steps:
        st.caption("This run has no snapshot to draw.")
        return
    snap = load_snapshot(ui.RUNS_DIR, run_id, steps[-1])
    probe = retrieval.probe_query_indices(cfg, dataset)
    method = st.radio("Layout", ["UMAP", "PCA"], horizontal=True, key="retrieval.method")
    layout, shown = None, method
    if method == "UMAP":
        worker = services()[2]
        key = f"retrieval:{ui.RUNS_DIR}:{run_id}"
        worker.submit(key, snap.step, snap.probe_emb, "umap")
        layout = worker.get(key, snap.step, "umap", timeout=0.5)
        if layout is None:
            st.caption(f"PCA shown while UMAP is computing ({worker.status()}).")
            wait_for_umap(worker, key, snap.step)
    if layout is None:
        layout, shown = project(snap.probe_emb, "pca"), "PCA"
    fig = figures.embedding_figure(
        layout,
        snap.probe_labels,
        dataset.class_names,
        f"{shown} of {len(probe)} test images (step {snap.step}): click one",
        uirevision=f"retrieval-{run_id}-{shown}",
        customdata=probe,
    )
    retrieval_figures.mark_query(fig, layout, probe, query_i)
    ui.plotly_chart(fig, on_select="rerun", selection_mode="points", key=CHART_KEY)


def query_section(
    run_id: str, cfg, dataset, index: retrieval.RetrievalIndex, map_at_r: float
) -> int:
    """Scatter + query picker + the neighbour strip; returns k."""
    clicked = picked_query(st.session_state.get(CHART_KEY))
    if clicked is not None and clicked != st.session_state.get("retrieval.clicked"):
        st.session_state["retrieval.clicked"] = clicked
        st.session_state[QUERY_KEY] = clicked
    if st.session_state.get(QUERY_KEY, 0) >= index.n_queries:
        st.session_state[QUERY_KEY] = 0
    st.session_state.setdefault(QUERY_KEY, 0)

    samples = "images" if retrieval.has_images(dataset) else "rows"
    left, right = st.columns([3, 2])
    with right:
        query_i = int(
            st.number_input(
                f"Query (index in the {index.n_queries:,} test {samples})",
                min_value=0,
                max_value=index.n_queries - 1,
                step=1,
                key=QUERY_KEY,
                help="Or click a point in the scatter",
            )
        )
        k = int(st.slider("k nearest neighbours", 1, 20, 8, key="retrieval.k"))
        label = int(index.query_labels[query_i])
        ap = float(index.ap_at_r[query_i])
        c1, c2 = st.columns(2)
        c1.metric("Query class", dataset.class_names[label])
        c2.metric("AP@R of this query", "—" if math.isnan(ap) else f"{ap:.3f}")
        c1, c2 = st.columns(2)
        p_at_1 = float(index.precision_at_1.mean())
        c1.metric(f"{METRIC_LABELS['precision_at_1']} (all queries)", f"{p_at_1:.3f}")
        c2.metric(f"{METRIC_LABELS['map_at_r']} (all queries)", f"{map_at_r:.3f}")
        st.caption(
            "AP@R (Musgrave et al. 2020): precision averaged over the R references of the "
            "query's class, counting only those ranked in the first R. 1 = all R come first."
        )
    with left:
        probe_scatter(run_id, cfg, dataset, query_i)
    ui.plotly_chart(
        retrieval_figures.query_strip_figure(
            index, dataset, query_i, k, f"Query {query_i} and its {k} nearest references"
        ),
        key="retrieval.strip",
    )
    st.caption("Green frame: same class as the query. **Red frame: wrong class.**")
    return k


def worst_section(dataset, index: retrieval.RetrievalIndex, k: int) -> None:
    """The queries with the lowest AP@R: where the embedding is confused."""
    st.header("Worst queries")
    st.caption(
        "The queries with the lowest AP@R: their own class is ranked behind other classes. "
        "This is where you see what the embedding confuses."
    )
    n = int(st.slider("How many", 1, 10, 4, key="retrieval.worst_n"))
    worst, ap = retrieval.worst_queries(index, n)
    for rank, (query_i, value) in enumerate(zip(worst.tolist(), ap.tolist(), strict=True)):
        label = dataset.class_names[int(index.query_labels[query_i])]
        title = f"Worst #{rank + 1}: query {query_i} ({label}), AP@R = {value:.3f}"
        fig = retrieval_figures.query_strip_figure(index, dataset, query_i, k, title)
        ui.plotly_chart(fig, key=f"retrieval.worst.{rank}")


def verification_section(run_id: str, step: int) -> None:
    """ROC, TAR@FAR, EER and the best threshold on the pair-distance histograms."""
    st.header("Verification: same class or not?")
    st.caption(
        "Accept a pair as the same class when its distance is at most a threshold t. "
        "TAR: share of same-class pairs accepted; FAR: share of different-class pairs "
        "accepted. Pairs: all i < j pairs of up to 2,000 test images."
    )
    pos, neg, v = cached_verification(ui.RUNS_DIR, run_id, step)
    cols = st.columns(4)
    for col, f in zip(cols, verification.TARGET_FARS, strict=False):
        value = v.tar_at_far[f]
        col.metric(
            f"TAR @ FAR = {f:g}",
            "—" if math.isnan(value) else f"{value:.3f}",
            help="true-accept rate at the largest threshold with at most this false-accept rate",
        )
    cols[2].metric("Equal error rate", f"{v.eer:.3f}", help=f"at d = {v.eer_threshold:.3f}")
    cols[3].metric(
        "Best threshold",
        f"{v.best_threshold:.3f}",
        help=f"max TAR − FAR: TAR {v.best_tar:.3f}, FAR {v.best_far:.3f}",
    )
    for note in v.notes:
        st.warning(note, icon="⚠️")
    left, right = st.columns(2)
    with left:
        fig = retrieval_figures.roc_figure(v, uirevision=f"roc-{run_id}")
        ui.plotly_chart(fig, key="retrieval.roc")
    with right:
        fig = retrieval_figures.threshold_histogram_figure(pos, neg, v, uirevision=f"thr-{run_id}")
        ui.plotly_chart(fig, key="retrieval.threshold")


st.title("Retrieval")
st.caption(
    "Pick a trained run, then a test image: see the training images the embedding puts "
    "nearest, the queries it serves worst, and how well one distance threshold verifies pairs."
)
store = RunStore(ui.RUNS_DIR)
run_id = pick_run(store)
try:
    cfg, dataset = cached_run(ui.RUNS_DIR, run_id)
except DatasetError as err:
    st.error(str(err), icon="🚫")
    st.stop()
step = retrieval.checkpoint_step(store, run_id)
st.caption(
    f"{dataset.name} ({cfg.split}) · {cfg.net}, D = {cfg.embedding_dim} · {cfg.loss} + "
    f"{cfg.miner} · weights of step {step} · {len(dataset.query):,} queries (test images) "
    f"against {len(dataset.reference):,} references (training images)"
)
if cfg.split == "open-set":
    open_set_note(dataset)

saved = retrieval.has_cached_index(store, run_id, step)  # a finished run saved its final ones
ready = (
    saved or retrieval.index_is_cheap(dataset) or st.session_state.get(f"retrieval.full.{run_id}")
)
total = len(dataset.query) + len(dataset.reference)
if not ready:
    st.info(
        f"Neighbours need the embeddings of all {total:,} query and reference images. This "
        "run has none saved for its weights (it did not finish its final evaluation, or was "
        "trained before runs kept them): they are computed once and saved in the run's folder."
    )
    if st.button("Compute full index", type="primary", key="retrieval.compute"):
        st.session_state[f"retrieval.full.{run_id}"] = True
        st.rerun()
    st.stop()
with st.spinner(
    f"Reading the saved {total:,} embeddings…" if saved else f"Embedding {total:,} images…"
):
    index = cached_index(ui.RUNS_DIR, run_id, step)
    map_at_r = retrieval.mean_ap_at_r(index)  # every query's AP@R, computed once

k = query_section(run_id, cfg, dataset, index, map_at_r)
worst_section(dataset, index, k)
st.header(f"Per-class {METRIC_LABELS['precision_at_1']}")
if cfg.split == "open-set":
    st.caption("Classes never seen in training: P@1 well above chance means they still cluster.")
ui.plotly_chart(
    retrieval_figures.per_class_figure(
        retrieval.per_class_precision_at_1(index), dataset.class_names
    ),
    key="retrieval.per_class",
)
verification_section(run_id, step)
