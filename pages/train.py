"""Train: pick a loss, a miner and a margin, press Train, watch the embedding change live."""

from __future__ import annotations

import math
from typing import Any

import streamlit as st

from dml_core.config import RunConfig, check_against_dataset, make_config
from dml_core.data import DATASETS, dataset_availability, load_dataset
from dml_core.errors import ConfigError
from dml_core.figures import live as figures
from dml_core.projection import COMPILING, project
from dml_core.registry import LOSSES, MINERS
from dml_core.services import export
from dml_core.train import resolve_device
from pages.ui import (
    describe,
    load_snapshot,
    param_widgets,
    run_label,
    services,
    use_app_navigation,
)

use_app_navigation()
store, manager, worker = services()
FIELDS = RunConfig.model_fields


def sidebar_config() -> tuple[dict[str, Any], str | None]:
    """The run settings, from widgets; returns (values, problem or None)."""
    problem = None
    with st.sidebar:
        st.header("Settings")
        dataset = st.selectbox(
            "Dataset", DATASETS, key="cfg.dataset", help=FIELDS["dataset"].description
        )
        available, source = dataset_availability(dataset)
        if available:
            st.caption(f"Source: {source}")
        else:
            st.warning(source)
            problem = f"The {dataset} dataset is not available here."
        split = st.radio(
            "Split",
            ["standard", "open-set"],
            key="cfg.split",
            horizontal=True,
            help=FIELDS["split"].description,
        )
        net = st.radio("Net", ["mlp", "convnet"], key="cfg.net", horizontal=True)
        dim = st.select_slider(
            "Embedding dim",
            [2, 3, 4, 8, 16, 32, 64, 128, 256, 512],
            value=32,
            key="cfg.embedding_dim",
            help=FIELDS["embedding_dim"].description,
        )
        normalize = st.checkbox("L2-normalise (unit sphere)", value=True, key="cfg.normalize")

        st.subheader("Loss")
        loss = st.selectbox(
            "Loss", list(LOSSES), index=list(LOSSES).index("triplet"), key="cfg.loss"
        )
        loss_entry = LOSSES[loss]
        st.caption(loss_entry.summary)
        loss_params = param_widgets(loss_entry, "loss")

        st.subheader("Miner")
        miner = st.selectbox(
            "Miner", list(MINERS), index=list(MINERS).index("semi_hard"), key="cfg.miner"
        )
        miner_entry = MINERS[miner]
        st.caption(miner_entry.summary)
        miner_params = param_widgets(miner_entry, "miner")

        st.subheader("Batch and optimiser")
        c1, c2 = st.columns(2)
        p = c1.number_input(
            "P classes", 2, 10, 6, key="cfg.P", help=FIELDS["classes_per_batch"].description
        )
        k = c2.number_input(
            "K per class", 1, 512, 16, key="cfg.K", help=FIELDS["samples_per_class"].description
        )
        lr = st.number_input("Learning rate", value=1e-3, format="%g", step=1e-4, key="cfg.lr")
        steps = st.number_input("Steps", 1, 1_000_000, 300, step=50, key="cfg.steps")
        with st.expander("More"):
            snapshot_every = st.number_input(
                "Snapshot every (steps)",
                1,
                100_000,
                FIELDS["snapshot_every"].default,
                key="cfg.snap",
                help=FIELDS["snapshot_every"].description,
            )
            probe = st.number_input("Probe points", 50, 10_000, 2000, step=100, key="cfg.probe")
            seed = st.number_input("Seed", 0, 2**31 - 1, 0, key="cfg.seed")
            device = st.radio("Device", ["auto", "cpu", "cuda"], key="cfg.device", horizontal=True)
        try:
            st.caption(f"Device: {resolve_device(device)[1]}")
        except RuntimeError as err:
            problem = str(err)
    values = {
        "dataset": dataset,
        "split": split,
        "net": net,
        "embedding_dim": dim,
        "normalize": normalize,
        "loss": loss,
        "loss_params": loss_params,
        "miner": miner,
        "miner_params": miner_params,
        "classes_per_batch": p,
        "samples_per_class": k,
        "lr": lr,
        "steps": steps,
        "snapshot_every": snapshot_every,
        "probe_size": probe,
        "seed": seed,
        "device": device,
    }
    return values, problem


def check(values: dict[str, Any], problem: str | None) -> tuple[RunConfig | None, str | None]:
    """Validate the settings (and against the data) before anything starts."""
    if problem:
        return None, problem
    try:
        cfg = make_config(**values)
        check_against_dataset(cfg, load_dataset(cfg.dataset, cfg.split))
        return cfg, None
    except (ConfigError, ValueError) as err:
        return None, str(err)


def current_run() -> str | None:
    """The run shown: from the URL (a reload or a shared link reattaches), else this session's."""
    for run_id in (st.query_params.get("run"), st.session_state.get("current_run")):
        if store.exists(run_id):
            return run_id
    return None


def show_run(run_id: str) -> None:
    """Make ``run_id`` the run this page shows, in the URL and in the session."""
    st.query_params["run"] = run_id
    st.session_state["current_run"] = run_id


def controls(cfg: RunConfig | None, error: str | None, run_id: str | None) -> None:
    """Train / Pause / Resume / Stop (outside the live fragment)."""
    job = manager.get(run_id) if run_id else None
    state = job.progress().state if job else None
    saved_state = store.status(run_id).get("state") if run_id else None
    can_continue = state is None or job.done
    resumable = can_continue and saved_state in ("interrupted", "stopped")
    cols = st.columns([1, 1, 1, 1, 4])
    if cols[0].button("Train", type="primary", disabled=cfg is None, key="btn.train", icon="▶️"):
        new_id = manager.submit(cfg)
        st.session_state.setdefault("my_runs", []).append(new_id)
        show_run(new_id)
        st.rerun()
    if cols[1].button("Pause", disabled=state != "running", key="btn.pause"):
        job.pause()
        st.rerun()
    if cols[2].button(
        "Resume",
        disabled=state != "paused" and not resumable,
        key="btn.resume",
        help="Continue a paused run, or an interrupted/stopped one from its last checkpoint",
    ):
        if state == "paused":
            job.resume()
        else:
            manager.resume(run_id)
        st.rerun()
    if cols[3].button(
        "Stop", disabled=state not in ("queued", "running", "paused", "starting"), key="btn.stop"
    ):
        manager.stop(run_id)
        st.rerun()
    if error:
        st.error(error, icon="🚫")


def export_buttons(run_id: str) -> None:
    """Downloads of the shown run, built only when clicked."""
    with st.expander("Export this run"):
        cols = st.columns(4)
        cols[0].download_button(
            "Metrics (CSV)",
            lambda: store.history(run_id).to_csv(index=False),
            file_name=f"{run_id}-metrics.csv",
            mime="text/csv",
            key="dl.csv",
        )
        cols[1].download_button(
            "Embedding Projector (zip)",
            lambda: export.projector_zip(store, run_id),
            file_name=f"{run_id}-projector.zip",
            mime="application/zip",
            key="dl.projector",
            help="tensors.tsv, metadata.tsv and a sprite for TensorBoard's Embedding Projector",
        )
        cols[2].download_button(
            "Animation (HTML)",
            lambda: export.animation_html_bytes(store, run_id),
            file_name=f"{run_id}-animation.html",
            mime="text/html",
            key="dl.html",
        )
        cols[3].download_button(
            "Animation (GIF)",
            lambda: export.animation_gif_bytes(store, run_id),
            file_name=f"{run_id}-animation.gif",
            mime="image/gif",
            key="dl.gif",
        )
        st.caption("Each figure has its own PNG download in its toolbar (camera icon).")


def run_picker(run_id: str | None) -> None:
    """Reopen a saved run (this session's runs first)."""
    saved = store.list()  # lists the folder and reads every status once
    mine = [r for r in st.session_state.get("my_runs", []) if r in saved]
    options = ["—", *mine, *[r for r in saved if r not in mine]]
    index = options.index(run_id) if run_id in options else 0
    with st.expander("Runs", expanded=False):
        chosen = st.selectbox(
            "Open a run",
            options,
            index=index,
            key="run.picker",
            format_func=lambda r: r if r == "—" else run_label(store, r),
        )
        if chosen != "—" and chosen != run_id:
            show_run(chosen)
            st.rerun()


def embedding_view(run_id: str, snap, class_names, dim: int) -> None:
    """UMAP (warm-started, off the UI thread), PCA, or the raw 2-D/3-D coordinates."""
    methods = ["UMAP", "PCA"] + (["Direct"] if dim <= 3 else [])
    method = st.radio(
        "Projection",
        methods,
        horizontal=True,
        key="view.method",
        index=methods.index("Direct") if dim <= 3 else 0,
    )
    name = method.lower()
    worker.submit(run_id, snap.step, snap.probe_emb, name)
    layout = worker.get(run_id, snap.step, name, timeout=0.3)
    note = f"{method} of the probe set at step {snap.step} ({len(snap.probe_labels)} test images)"
    if layout is None:
        latest = worker.latest(run_id, name)
        if latest is not None:
            layout = latest[1]
            note = f"{method} of step {latest[0]}; step {snap.step} is being computed"
        else:
            layout = project(snap.probe_emb, "pca")
            status = worker.status()
            why = (
                "UMAP is compiling (first fit, ~30 s)"
                if status == COMPILING
                else "UMAP is computing"
            )
            note = f"PCA shown while {why}"
    if layout is None:
        st.info("Computing the first layout…")
        return
    fig = figures.embedding_figure(
        layout, snap.probe_labels, class_names, note, uirevision=f"emb-{run_id}-{name}"
    )
    st.plotly_chart(fig, key="chart.embedding")


ACTIVE = ("queued", "starting", "running", "paused")


@st.cache_data(max_entries=256, show_spinner=False)
def snapshot_figures(runs_dir: str, run_id: str, step: int) -> tuple:
    """The distance histogram and the sphere figure of one snapshot, built once."""
    snap = load_snapshot(runs_dir, run_id, step)
    overlap = snap.metrics.get("pair_overlap")
    hist = figures.distance_histogram_figure(
        snap.pos_dist, snap.neg_dist, snap.lines, overlap, uirevision=f"hist-{run_id}"
    )
    sphere = figures.sphere_distance_figure(snap.probe_emb, uirevision=f"sphere-{run_id}")
    return hist, sphere


@st.cache_data(max_entries=256, show_spinner=False)
def curves(runs_dir: str, run_id: str, step: int, rows: int) -> object:
    """The training curves up to ``step`` (``rows`` keys the cache on new snapshots)."""
    history = store.history(run_id)
    return figures.curves_figure(history[history.step <= step], uirevision=f"curves-{run_id}")


@st.cache_data(show_spinner=False)
def class_names(dataset: str, split: str) -> tuple[str, ...]:
    """Names of the classes (cached: loading the data is not free)."""
    return load_dataset(dataset, split).class_names


def run_state(run_id: str) -> dict[str, Any]:
    """State, progress and message of a run, from its live job or from disk."""
    job = manager.get(run_id)
    if job is not None and not job.done:
        p = job.progress()
        return {
            "state": p.state,
            "step": p.step,
            "steps": p.steps,
            "message": p.message,
            "device": p.device,
            "position": manager.queue_position(run_id),
            "rate": f"{p.samples_per_s:,.0f} samples/s" if p.samples_per_s else "",
            "eta": f"ETA {p.eta_s:.0f} s"
            if math.isfinite(p.eta_s) and p.state == "running"
            else "",
        }
    status = store.status(run_id)
    return {
        "state": status.get("state", "?"),
        "step": status.get("step", 0),
        "steps": store.load(run_id).config.steps,
        "message": status.get("message", ""),
        "device": status.get("device", ""),
        "position": None,
        "rate": "",
        "eta": "",
    }


def scrubber(steps_saved: tuple[int, ...], playing: bool) -> int:
    """Index of the snapshot to show: the latest, the slider's, or the next while playing."""
    last = len(steps_saved) - 1
    if last == 0 or st.session_state.get("view.follow", True):
        return last
    if playing:
        st.session_state["view.scrub"] = min(st.session_state.get("view.scrub", 0) + 1, last)
    return st.slider(
        "Snapshot",
        0,
        last,
        last,
        key="view.scrub",
        format="%d",
        help="Replay the run: every figure follows this slider",
    )


def live_body(run_id: str | None) -> None:
    """The live part of the page: progress, scrubber and figures."""
    if run_id is None:
        st.info("Idle. Choose settings in the sidebar and press **Train**, or open a saved run.")
        return
    info = run_state(run_id)
    seen = st.session_state.setdefault("seen_state", {})
    if seen.get(run_id) in ACTIVE and info["state"] not in ACTIVE:
        seen[run_id] = info["state"]
        st.rerun()  # the run ended: refresh the buttons and stop polling
    seen[run_id] = info["state"]
    queued = f" (position {info['position']} in the queue)" if info["position"] else ""
    parts = [
        run_label(store, run_id),
        f"{info['state']}{queued}",
        f"step {info['step']}/{info['steps']}",
        info["rate"],
        info["eta"],
        info["device"],
    ]
    st.progress(
        min(info["step"] / max(info["steps"], 1), 1.0), text=" · ".join(p for p in parts if p)
    )
    if info["message"]:
        (st.error if info["state"] in ("failed", "diverged") else st.info)(info["message"])
    record = store.load(run_id)
    steps_saved = record.snapshot_steps
    if not steps_saved:
        st.caption("Waiting for the first snapshot…")
        return
    final = record.status.get("final_metrics")
    if final:
        labels = {
            "precision_at_1": "P@1",
            "r_precision": "R-Precision",
            "map_at_r": "MAP@R",
            "nmi": "NMI",
        }
        for col, (key, label) in zip(st.columns(4), labels.items(), strict=True):
            col.metric(f"{label} (test vs train)", f"{final[key]:.3f}")
    c1, c2 = st.columns([1, 3])
    c1.toggle("Follow the latest snapshot", value=True, key="view.follow")
    playing = c2.toggle(
        "Play",
        value=False,
        key="view.play",
        help="Replay the snapshots in order",
        disabled=st.session_state.get("view.follow", True),
    )
    index = scrubber(steps_saved, playing)
    snap = load_snapshot(str(store.root), run_id, steps_saved[index])
    st.caption(
        f"Snapshot {index + 1}/{len(steps_saved)}: step {snap.step}, "
        f"{snap.samples_seen:,} samples seen, {snap.elapsed:.1f} s of training"
    )
    warning = st.empty()  # a fixed slot: the figures below never shift when it fills
    if snap.collapse.get("collapsing"):
        warning.warning(
            "Collapse: the probe points have crowded together, far closer than at the "
            "start (see the sphere histogram). Hardest-negative mining with a margin does "
            "this; semi-hard mining (FaceNet) avoids it.",
            icon="⚠️",
        )
    hist, sphere = snapshot_figures(str(store.root), run_id, snap.step)
    left, right = st.columns(2)
    with left:
        names = class_names(record.config.dataset, record.config.split)
        embedding_view(run_id, snap, names, record.config.embedding_dim)
    with right:
        st.plotly_chart(hist, key="chart.hist")
    left, right = st.columns(2)
    with left:
        st.plotly_chart(sphere, key="chart.sphere")
    with right:
        st.plotly_chart(
            curves(str(store.root), run_id, snap.step, len(steps_saved)), key="chart.curves"
        )


def live_view(run_id: str | None) -> None:
    """Always rendered; polls while the run is active or playing, and is static otherwise."""
    active = run_id is not None and run_state(run_id)["state"] in ACTIVE
    playing = st.session_state.get("view.play") and not st.session_state.get("view.follow", True)
    interval = 1.5 if active else (1.0 if playing else None)
    st.fragment(run_every=interval)(live_body)(run_id)


st.title("Train an embedding")
values, problem = sidebar_config()
cfg, error = check(values, problem)
run_id = current_run()
controls(cfg, error, run_id)
run_picker(run_id)
left, right = st.columns(2)
with left:
    describe(LOSSES[values["loss"]])
with right:
    describe(MINERS[values["miner"]])
live_view(run_id)
if run_id is not None:
    export_buttons(run_id)
