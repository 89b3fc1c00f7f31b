"""The Train page's projection panel: UMAP or PCA of the probe set, laid out off the UI thread.

The server's ``ProjectionWorker`` computes layouts (UMAP warm-started along the run, in its
own subprocess); the panel shows the snapshot's own layout when it is there, else the newest
one laid out, else a PCA stand-in, and says which it shows.
"""

from __future__ import annotations

import streamlit as st

from dml_core.figures import diagnostics
from dml_core.figures import live as figures
from dml_core.projection import project
from dml_core.services.projection_worker import IDLE, ProjectionWorker, status_text
from dml_core.snapshot import Snapshot
from pages.live_chart import live_chart
from pages.train_extras import layout_quality_caption, show_true_neighbours
from pages.ui import load_snapshot


def view_method() -> str:
    """The projection chosen on this page: "umap", "pca" or "direct"."""
    return str(st.session_state.get("view.method", "UMAP")).lower()


def embedding_view(
    worker: ProjectionWorker, runs_dir: str, run_id: str, snap: Snapshot, class_names: list[str]
) -> bool:
    """UMAP (warm-started, off the UI thread), PCA, or the raw 2-D/3-D coordinates.

    Returns whether the layout shown is a stand-in (older step or PCA) for one still computing.
    """
    dim = snap.probe_emb.shape[1]
    methods = ["UMAP", "PCA"] + (["Direct"] if dim <= 3 else [])
    method = st.radio(
        "Projection",
        methods,
        horizontal=True,
        key="view.method",
        index=methods.index("Direct") if dim <= 3 else 0,
    )
    name = method.lower()
    note = f"{method} of the probe set at step {snap.step} ({len(snap.probe_labels)} test images)"
    if name == "direct":  # the coordinates themselves: nothing to wait for (UMAP may compile)
        layout = project(diagnostics.with_class_weights(snap.probe_emb, snap.class_weights), name)
    else:
        submit_layout(worker, run_id, snap, name)
        layout = worker.get(run_id, snap.step, name, timeout=0.3)
    # still coming only while the worker has something to do (a failed layout never arrives)
    pending = layout is None and worker.status() != IDLE
    current = True  # the layout shown is this snapshot's own (not an older step's)
    if layout is None:
        latest = worker.latest(run_id, name)
        if latest is not None:
            current = False
            layout = latest[1]
            note = f"{method} of step {latest[0]}; step {snap.step} is being computed"
        else:
            layout = pca_stand_in(runs_dir, run_id, snap.step)
            note = f"PCA shown while {status_text(worker.status())}"
    points, weights = diagnostics.split_layout(layout, len(snap.probe_labels))
    fig = figures.embedding_figure(
        points, snap.probe_labels, class_names, note, uirevision=f"emb-{run_id}-{name}"
    )
    if weights is not None and snap.class_weight_labels is not None:
        diagnostics.add_class_weights(fig, weights, snap.class_weight_labels, class_names)
    key = f"chart.embedding.{run_id}"  # a point clicked in one run is not marked in another
    if current:  # a click marks that point's true neighbours in the embedding
        show_true_neighbours(fig, points, snap.probe_emb, key)
    live_chart(fig, key, selectable=True)
    if current and points.shape[1] == 2:
        st.caption(layout_quality_caption(run_id, snap.step, name, snap.probe_emb, points))
    return pending


@st.cache_data(max_entries=64, show_spinner=False)
def pca_stand_in(runs_dir: str, run_id: str, step: int) -> object:
    """PCA of one snapshot (with any class weights), shown while its UMAP is computed.

    Cached by (run, step): UMAP's first fit takes tens of seconds, during which every redraw
    would otherwise run the SVD again (10-90 ms each on 2 loaded cores, measured).
    """
    snap = load_snapshot(runs_dir, run_id, step)
    return project(diagnostics.with_class_weights(snap.probe_emb, snap.class_weights), "pca")


def submit_layout(worker: ProjectionWorker, run_id: str, snap: Snapshot, method: str) -> None:
    """Ask the worker for the snapshot's layout (class weights laid out below the points).

    Returns at once; a layout already computed or pending is not asked for again.
    """
    worker.submit(
        run_id,
        snap.step,
        diagnostics.with_class_weights(snap.probe_emb, snap.class_weights),
        method,
    )
