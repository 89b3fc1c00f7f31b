"""Train: pick a loss, a miner and a margin, press Train, watch the embedding change live."""

from __future__ import annotations

import gc
import time
from typing import Any

import streamlit as st

from dml_core.config import RunConfig, config_for_data, make_config
from dml_core.errors import ConfigError
from dml_core.figures import diagnostics
from dml_core.figures import live as figures
from dml_core.figures import sphere as sphere_figures
from dml_core.figures.live import SteadyAxes
from dml_core.figures.style import as_cached
from dml_core.metrics import METRIC_LABELS
from dml_core.probe import collapse_advice, collapse_kind
from dml_core.registry import LOSSES, MINERS
from dml_core.services.run_view import (
    FigureNews,
    RunView,
    awaits_layout,
    figure_news,
    redraw_due,
    run_view,
)
from pages.live_chart import live_chart
from pages.train_extras import (
    export_buttons,
    loss_preview,
    render_hardest_triplets,
    shown_settings,
)
from pages.train_projection import embedding_view, submit_layout, view_method
from pages.train_replay import play_interval, scrub_controls
from pages.train_settings import sidebar_config
from pages.train_views import render_views_strip
from pages.ui import (
    POLL_LAYOUT_S,
    POLL_LIVE_S,
    describe,
    load_snapshot,
    run_class_names,
    run_label,
    services,
    steady_axes,
    use_app_navigation,
)


@st.cache_resource(show_spinner=False)
def freeze_startup_heap() -> bool:
    """Exempt the objects alive after the imports from later full garbage collections.

    Streamlit runs ``gc.collect(2)`` after each script and fragment run: with torch, plotly and
    pandas loaded it walks ~340k objects, ~0.17 s of CPU (measured), taken from the training.
    """
    gc.freeze()
    return True


use_app_navigation()
store, manager, worker = services()
freeze_startup_heap()


def check(values: dict[str, Any], problem: str | None) -> tuple[RunConfig | None, str | None]:
    """Validate the settings (and against the data) before anything starts."""
    if problem:
        return None, problem
    try:
        cfg = make_config(**values)
        return RunConfig.model_validate_json(fitted_config(cfg.model_dump_json())), None
    except (ConfigError, ValueError) as err:
        return None, str(err)


@st.cache_data(max_entries=16, ttl=60, show_spinner=False)
def fitted_config(cfg_json: str) -> str:
    """``config_for_data`` of a config given as JSON, once per settings, not on every rerun.

    A user's folder would be read from its cache on each rerun; a problem is raised, not cached.
    """
    cfg, _ = config_for_data(RunConfig.model_validate_json(cfg_json))
    return cfg.model_dump_json()


def current_run() -> str | None:
    """The run shown: from the URL (a reload or a shared link reattaches), else this session's."""
    wanted = st.query_params.get("run")
    if wanted and not store.exists(wanted):
        st.warning(f"There is no run '{wanted}' in this app's runs; showing the page without it.")
    for run_id in (wanted, st.session_state.get("current_run")):
        if store.exists(run_id):
            return run_id
    return None


def show_run(run_id: str) -> None:
    """Make ``run_id`` the run this page shows, in the URL and in the session."""
    st.query_params["run"] = run_id
    st.session_state["current_run"] = run_id


def train_button(cfg: RunConfig | None, error: str | None) -> None:
    """Train (outside the live fragment: it reads the sidebar)."""
    if st.button("Train", type="primary", disabled=cfg is None, key="btn.train", icon="▶️"):
        new_id = manager.submit(cfg)
        st.session_state.setdefault("my_runs", []).append(new_id)
        show_run(new_id)
        st.rerun()
    if error:
        st.error(error, icon="🚫")


def run_controls(run_id: str, view: RunView) -> None:
    """Pause / Resume / Stop, enabled exactly when they apply (inside the live fragment).

    Each acts in its ``on_click`` callback, which Streamlit runs before the rerun's script:
    a click is never lost to a rerun that a newer poll cuts short before it reaches the button.
    """
    cols = st.columns([1, 1, 1, 5])
    cols[0].button(
        "Pause",
        disabled=not view.can_pause,
        key="btn.pause",
        on_click=manager.pause,
        args=(run_id,),
    )
    cols[1].button(
        "Resume",
        disabled=not view.can_resume,
        key="btn.resume",
        help="Continue a paused run, or an interrupted/stopped one from its last checkpoint",
        on_click=resume_run,
        args=(run_id,),
    )
    cols[2].button(
        "Stop", disabled=not view.can_stop, key="btn.stop", on_click=manager.stop, args=(run_id,)
    )
    if error := st.session_state.pop("view.control_error", None):
        st.error(error, icon="🚫")


def resume_run(run_id: str) -> None:
    """Resume's callback: a run that cannot resume (any more) says why on the next draw."""
    try:
        manager.resume(run_id)
    except ConfigError as err:
        st.session_state["view.control_error"] = str(err)


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


@st.cache_data(max_entries=256, show_spinner=False)
def snapshot_figures(runs_dir: str, run_id: str, step: int, axes: SteadyAxes) -> tuple:
    """The distance histogram and the sphere figure of one snapshot, on the run's fixed axes."""
    snap = load_snapshot(runs_dir, run_id, step)
    overlap = snap.metrics.get("pair_overlap")
    hist = figures.distance_histogram_figure(
        snap.pos_dist, snap.neg_dist, snap.lines, overlap, uirevision=f"hist-{run_id}",
        axes=axes.histogram,
    )  # fmt: skip
    sphere = sphere_figures.sphere_distance_figure(
        snap.probe_emb,
        uirevision=f"sphere-{run_id}",
        y_max=axes.sphere_top,
        trained_on_sphere=store.load(run_id).config.normalize,
    )
    return as_cached(hist), as_cached(sphere)


@st.cache_data(max_entries=256, show_spinner=False)
def curves(runs_dir: str, run_id: str, step: int, rows: int) -> object:
    """The whole run's curves with a marker at ``step`` (``rows`` keys new snapshots)."""
    fig = figures.curves_figure(store.history(run_id), uirevision=f"curves-{run_id}", marker_x=step)
    return as_cached(fig)


@st.cache_data(max_entries=256, show_spinner=False)
def geometry_figures(runs_dir: str, run_id: str, step: int, rows: int) -> tuple:
    """The (uniformity, alignment) path and the effective rank, on axes fixed over the run."""
    history = store.history(run_id)
    dim = store.load(run_id).config.embedding_dim
    axes = diagnostics.geometry_axes(history, dim)
    path = diagnostics.alignment_uniformity_figure(
        history, step, axes, uirevision=f"align-{run_id}"
    )
    rank = diagnostics.effective_rank_figure(history, dim, step, axes, uirevision=f"rank-{run_id}")
    return as_cached(path), as_cached(rank)


def progress_line(run_id: str, view: RunView) -> None:
    """The run's label, state, step (or final evaluation), rate, ETA and device."""
    st.progress(view.fraction, text=f"{run_label(store, run_id)} · {view.progress_text}")
    if view.message:
        (st.error if view.is_error else st.info)(view.message)


def headline_metrics(snap, final: dict[str, float] | None) -> None:
    """Retrieval at the shown snapshot (probe set), then the final test-vs-train figures."""
    keys = ("precision_at_1", "r_precision", "map_at_r")
    rows = [(keys, snap.metrics, f"at step {snap.step}", "Within the probe set at this snapshot")]
    if final:
        help_final = "After training: every test image queried against every training image"
        rows.append(((*keys, "nmi"), final, "final", help_final))
    for names, values, when, help_text in rows:
        for col, key in zip(st.columns(4), names, strict=False):
            value = values.get(key)
            text = "—" if value is None else f"{value:.3f}"
            col.metric(f"{METRIC_LABELS[key]} {when}", text, help=help_text)


def desired_interval(view: RunView | None) -> float | None:
    """How often the progress line polls: while the run moves, or while a layout is pending."""
    if view is None:
        return None
    if view.active:
        return POLL_LIVE_S
    if st.session_state.get("view.pending"):
        return POLL_LAYOUT_S
    return None


def news(run_id: str, view: RunView) -> FigureNews:
    """What decides the figures now (``run_view.figure_news``), for the projection chosen."""
    return figure_news(store, worker, run_id, view_method(), view.state)


def layout_wait(run_id: str, now: FigureNews) -> float | None:
    """Since when the page waits on the newest snapshot's layout (asked for here), or None."""
    method = view_method()
    if not awaits_layout(now, method):
        return None
    submit_layout(worker, run_id, load_snapshot(str(store.root), run_id, now[1]), method)
    return st.session_state.setdefault("view.waiting_since", time.monotonic())


def progress_body(run_id: str | None, interval: float | None) -> None:
    """The polled part of the live view: progress line and controls (a few ms per poll).

    Redraws the whole page (figures included) only when ``redraw_due`` says so (news since
    the figures drew, paced by how long drawing takes), or the polling rate should change
    (the run started or ended, a layout arrived).
    """
    if run_id is None:
        return
    view = run_view(store, manager, run_id)
    progress_line(run_id, view)
    run_controls(run_id, view)
    now = news(run_id, view)
    due = redraw_due(
        now,
        st.session_state.get("view.drawn"),
        st.session_state.get("view.drawn_at", 0.0),
        st.session_state.get("view.draw_s", 0.0),
        time.monotonic(),
        layout_wait(run_id, now),
    )
    if due or desired_interval(view) != interval:
        st.rerun()


def figures_body(run_id: str | None, interval: float | None) -> None:
    """Scrubber and figures; reruns when redrawn, on its own widgets, and while playing."""
    if run_id is None:
        st.info("Idle. Choose settings in the sidebar and press **Train**, or open a saved run.")
        return
    started = time.monotonic()
    drawn = news(run_id, run_view(store, manager, run_id))  # before reading: nothing is missed
    record = store.load(run_id)
    steps_saved = record.snapshot_steps
    if not steps_saved:
        st.caption("Waiting for the first snapshot…")
        pending = False
    else:
        with st.container():  # one slot whatever it holds: the charts below keep their place
            step = scrub_controls(tuple(steps_saved))
        pending = snapshot_view(run_id, record, tuple(steps_saved), step)
    st.session_state["view.pending"] = pending
    st.session_state.pop("view.waiting_since", None)  # what it waited on is drawn
    st.session_state["view.drawn"] = drawn
    st.session_state["view.drawn_at"] = time.monotonic()
    st.session_state["view.draw_s"] = st.session_state["view.drawn_at"] - started
    if play_interval() != interval:
        st.rerun()  # Play was pressed or reached the end: re-time the replay


def snapshot_view(run_id: str, record, steps_saved: tuple[int, ...], step: int) -> bool:
    """Every figure of one snapshot, on the run's fixed axes; returns whether UMAP is pending."""
    snap = load_snapshot(str(store.root), run_id, step)
    # One slot, with or without the final metrics: a live chart that moved to another place
    # in the page would be mounted anew (its zoom lost, its first draw paid again).
    with st.container():
        headline_metrics(snap, record.status.get("final_metrics"))
    index = steps_saved.index(step)
    st.caption(
        f"Snapshot {index + 1} of {len(steps_saved)}: step {snap.step}, "
        f"{snap.samples_seen:,} samples seen, {snap.elapsed:.1f} s of training"
    )
    warning = st.empty()  # a fixed slot: the figures below never shift when it fills
    if collapse_kind(snap.collapse):
        warning.warning(collapse_advice(record.config, snap.scalars()), icon="⚠️")
    axes = steady_axes(str(store.root), ((run_id, steps_saved),), record.config.normalize)
    hist, sphere = snapshot_figures(str(store.root), run_id, snap.step, axes)
    left, right = st.columns(2)
    with left:
        names = run_class_names(record.config)
        pending = embedding_view(worker, str(store.root), run_id, snap, names)
    with right:
        live_chart(hist, "chart.hist")
    left, right = st.columns(2)
    with left:
        live_chart(sphere, "chart.sphere")
    with right:
        fig = curves(str(store.root), run_id, snap.step, len(steps_saved))
        live_chart(fig, "chart.curves")
    path, rank = geometry_figures(str(store.root), run_id, snap.step, len(steps_saved))
    left, right = st.columns(2)
    with left:
        live_chart(path, "chart.align_uniform")
    with right:
        live_chart(rank, "chart.rank")
    st.caption(
        "Alignment: how close same-class points sit; uniformity: how evenly all points cover "
        "the sphere (Wang & Isola, ICML 2020, Fig. 1). Effective rank (Roy & Vetterli 2007): "
        "how many directions the points really use, out of D; falling towards 1 is "
        "dimensional collapse."
    )
    render_hardest_triplets(str(store.root), run_id, snap.step)
    return pending


def live_view(run_id: str | None) -> None:
    """Always rendered: a polled progress line above figures that redraw only on news.

    The figures draw first (they record what they drew and whether a layout is pending);
    the progress fragment, placed above them, is timed from that.
    """
    header = st.container()
    playing = play_interval()
    st.fragment(run_every=playing)(figures_body)(run_id, playing)
    interval = desired_interval(run_view(store, manager, run_id) if run_id else None)
    with header:
        st.fragment(run_every=interval)(progress_body)(run_id, interval)


st.title("Train an embedding")
values, problem = sidebar_config()
cfg, error = check(values, problem)
run_id = current_run()
train_button(cfg, error)
run_picker(run_id)
if run_id is not None:
    shown_settings(store.load(run_id).config)
    render_views_strip(store.load(run_id).config)
else:
    if cfg is not None:
        render_views_strip(cfg)
    left, right = st.columns(2)
    with left:
        describe(LOSSES[values["loss"]])
    with right:
        describe(MINERS[values["miner"]])
    if cfg is not None:
        loss_preview(cfg)
live_view(run_id)
if run_id is not None:
    export_buttons(store, run_id)
