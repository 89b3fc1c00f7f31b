"""Shared UI pieces: process-wide services, registry-driven parameter widgets, run picking.

No maths here: widgets are read from the registries' declared parameters, everything else is
a call into ``dml_core``.
"""

from __future__ import annotations

import atexit
import functools
import math
import os
import typing
from collections.abc import Callable, Collection, Mapping
from typing import Any
from urllib.parse import urlencode

import plotly.graph_objects as go
import streamlit as st
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from streamlit.errors import StreamlitAPIException
from streamlit.runtime.pages_manager import PagesManager
from streamlit.runtime.scriptrunner import get_script_run_ctx

from dml_core.config import RunConfig
from dml_core.errors import ConfigError, field_bounds
from dml_core.figures import live as live_figures
from dml_core.figures.dark import for_dark_page
from dml_core.figures.live import SteadyAxes
from dml_core.figures.sphere import sphere_density_max
from dml_core.figures.style import split_symbol
from dml_core.registry import Entry
from dml_core.runs import RunState, RunStore
from dml_core.services import export
from dml_core.services.job_manager import training_here
from dml_core.services.jobs import JobManager
from dml_core.services.projection_worker import ProjectionWorker
from dml_core.services.share_links import Link
from dml_core.snapshot import Snapshot

RUNS_DIR = os.environ.get("DML_RUNS_DIR", "runs")
RUNS_IN_THREADS_ENV = "DML_RUNS_IN_THREADS"  # "1": train in threads of the server (AppTests)
# How often timed fragments rerun, in seconds: one place for every page.
POLL_LIVE_S = 1.5  # a run this page shows is training
POLL_LAYOUT_S = 1.0  # a UMAP layout is being computed
POLL_OTHERS_S = 2.0  # runs that other pages or sessions started (Compare, Lessons, Retrieval)
STATE_ICONS = {
    RunState.QUEUED: "⏳",
    RunState.STARTING: "⏳",
    RunState.RUNNING: "🏃",
    RunState.PAUSED: "⏸️",
    RunState.FINISHED: "✅",
    RunState.STOPPED: "⏹️",
    RunState.DIVERGED: "💥",
    RunState.FAILED: "❌",
    RunState.INTERRUPTED: "⚠️",
}


PAGE_NOW = "ui.page_now"  # the page this session's last full run drew
ARRIVED = "ui.arrived"  # whether this run is the session's first on this page (see read_new_link)


def use_app_navigation() -> None:
    """Make sure the page runs under app.py's ``st.navigation``, also on a server's first request.

    Streamlit treats a ``pages/`` folder as a legacy multipage app until some session has run
    ``st.navigation``; a first request straight to ``/train`` would run the page alone, without
    app.py's page list and layout. Switching the flag off and rerunning routes it through app.py.
    """
    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()
    ctx = get_script_run_ctx()
    page = ctx.page_script_hash if ctx is not None else None
    st.session_state[ARRIVED] = st.session_state.get(PAGE_NOW) != page  # read by links
    st.session_state[PAGE_NOW] = page


def services() -> tuple[RunStore, JobManager, ProjectionWorker]:
    """The run store and job manager of this server's runs directory, and the projector.

    A bad ``DML_RAY_ADDRESS`` (nothing listens there) stops the page with its one-line message.
    """
    try:
        store, manager = _jobs(RUNS_DIR)
    except ConfigError as err:
        st.error(str(err), icon="🚫")
        st.stop()
    return store, manager, _projection_worker()


@st.cache_resource
def _jobs(runs_dir: str) -> tuple[RunStore, JobManager]:
    """One store and job manager per runs directory, shared by every session."""
    store = RunStore(runs_dir)
    max_jobs = int(os.environ.get("DML_MAX_JOBS", "0")) or None
    # each run in a child process, off the page reruns' GIL (``services.process_jobs``)
    in_processes = os.environ.get(RUNS_IN_THREADS_ENV, "") != "1"
    manager = JobManager(store, max_running=max_jobs, processes=in_processes)
    atexit.register(manager.stop_all)
    return store, manager


@st.cache_resource
def _projection_worker() -> ProjectionWorker:
    """One projection worker per server process (UMAP in a subprocess, compiled at start).

    Its fits yield to the runs this process trains (``job_manager.training_here``).
    """
    worker = ProjectionWorker(in_subprocess=True, training=training_here)
    worker.warm_up()  # compile UMAP's numba kernels before the first real request
    return worker


def run_class_names(cfg: RunConfig) -> tuple[str, ...]:
    """Names of a run's classes (cached per config: a user's data is read to find them)."""
    return _class_names(cfg.model_dump_json())


@st.cache_data(max_entries=64, show_spinner=False)
def _class_names(cfg_json: str) -> tuple[str, ...]:
    return export.class_names_of(RunConfig.model_validate_json(cfg_json))


@st.cache_data(max_entries=512, show_spinner=False)
def load_snapshot(runs_dir: str, run_id: str, step: int) -> Snapshot:
    """One snapshot from disk, cached by (run, step): a page refresh re-reads nothing."""
    return RunStore(runs_dir).load_snapshot(run_id, step)


SNAPSHOT_PARTS = 8192  # per-snapshot numbers kept (a few floats each)


@functools.lru_cache(maxsize=SNAPSHOT_PARTS)
def sphere_top(runs_dir: str, run_id: str, step: int) -> float:
    """Highest bar of one snapshot's sphere histogram (cached: snapshots never change).

    The per-snapshot parts of the axes are kept in plain ``lru_cache``s: ``steady_axes`` asks
    for each snapshot's parts at every new snapshot, and a ``st.cache_data`` hit (hashing and
    unpickling) costs about 0.2 ms, 56 ms for 100 snapshots' parts.
    """
    return sphere_density_max(load_snapshot(runs_dir, run_id, step).probe_emb)


@functools.lru_cache(maxsize=SNAPSHOT_PARTS)
def histogram_top(runs_dir: str, run_id: str, step: int, on_sphere: bool) -> float:
    """One snapshot's ``live_figures.histogram_top`` (cached: snapshots never change)."""
    snap = load_snapshot(runs_dir, run_id, step)
    return live_figures.histogram_top(snap.pos_dist, snap.neg_dist, snap.lines, on_sphere)


@functools.lru_cache(maxsize=SNAPSHOT_PARTS)
def density_peak(runs_dir: str, run_id: str, step: int, top: float) -> float:
    """One snapshot's ``live_figures.density_peak`` on the bins over [0, top] (cached)."""
    snap = load_snapshot(runs_dir, run_id, step)
    return live_figures.density_peak(snap.pos_dist, snap.neg_dist, top)


@st.cache_data(max_entries=64, show_spinner=False)
def steady_axes(
    runs_dir: str, steps: tuple[tuple[str, tuple[int, ...]], ...], on_sphere: bool
) -> SteadyAxes:
    """Histogram and sphere axes over every saved snapshot of the runs.

    Train passes its one run, Compare the shown ones; ``steps`` pairs each run with its
    snapshot steps, so a new snapshot recomputes them. Each snapshot's part is cached on its
    own, so a new snapshot reads only itself: a redraw costs the same at the 400th snapshot
    as at the 4th, apart from a fold over the kept numbers (before, every snapshot was loaded
    and binned again at every redraw: 91 ms at the 101st snapshot, now 15 ms, mostly the
    new snapshot's own sphere histogram).
    """
    shown = [(r, step) for r, run_steps in steps for step in run_steps]
    top = live_figures.shared_top(
        (histogram_top(runs_dir, r, step, on_sphere) for r, step in shown), on_sphere
    )
    peaks = (density_peak(runs_dir, r, step, top) for r, step in shown)
    sphere = max((sphere_top(runs_dir, r, step) for r, step in shown), default=0.0)
    return SteadyAxes(live_figures.axes_for(top, peaks), sphere)


def _nice_step(low: float, high: float) -> float:
    raw = (high - low) / 200
    magnitude = 10 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)


def plotly_chart(fig: go.Figure, where: Any = st, **kwargs: Any) -> Any:
    """``where.plotly_chart(fig, **kwargs)``, with the figure re-inked when the page is dark.

    ``where``: ``st`` or a container (a column, an expander).

    The figures' near-black reference lines and labels vanish on Streamlit's dark theme
    (``dml_core.figures.dark``). The theme is the browser's as this script run heard it
    (``st.context.theme``); a theme changed in the settings shows from the next rerun.
    """
    if st.context.theme.type == "dark":
        fig = for_dark_page(fig)
    return where.plotly_chart(fig, **kwargs)


def _help(field: FieldInfo) -> str | None:
    """The field's description, its paper symbol spelled out ("α in the equation: …")."""
    symbol, text = split_symbol(field.description or "")
    return f"{symbol} in the equation: {text}" if symbol else text or None


LOCKED_NOTE = "🔒 fixed by this link"


def field_widget(
    model: type[BaseModel], name: str, key: str, label: str | None = None, disabled: bool = False
) -> Any:
    """One widget for one declared field of a pydantic model; returns its value.

    bool -> checkbox; Literal -> radio (``horizontal`` hint) or selectbox; declared ``choices``
    -> select slider; int -> number input; float with a finite range of at most 100 -> slider
    (``widget="number"`` asks for a number input). Limits, default, label (``title``) and help
    come from the model, so no bound is typed twice. ``disabled`` (a teacher's link locks it)
    draws it greyed out with a short note.
    """
    value = _field_widget(model, name, key, label, disabled)
    if disabled:
        st.caption(LOCKED_NOTE)
    return value


def _field_widget(
    model: type[BaseModel], name: str, key: str, label: str | None, disabled: bool
) -> Any:
    field = model.model_fields[name]
    hints = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    label = label or field.title or name
    annotation, default, help_text = field.annotation, field.default, _help(field)
    common = {"key": key, "help": help_text, "disabled": disabled}
    if annotation is bool:
        return st.checkbox(label, value=default, **common)
    if typing.get_origin(annotation) is typing.Literal:
        options = list(typing.get_args(annotation))
        if hints.get("horizontal"):
            return st.radio(label, options, index=options.index(default), horizontal=True, **common)
        return st.selectbox(label, options, index=options.index(default), **common)
    if "choices" in hints:
        return st.select_slider(label, list(hints["choices"]), default, **common)
    bounds = field_bounds(model, name)
    low = bounds.get("ge", bounds.get("gt"))
    high = bounds.get("le", bounds.get("lt"))
    if annotation is int:
        return st.number_input(
            label,
            min_value=low if low is None else int(low) + ("gt" in bounds),
            max_value=high if high is None else int(high) - ("lt" in bounds),
            value=int(default),
            step=int(hints.get("step", 1)),
            **common,
        )
    finite = low is not None and high is not None
    if hints.get("widget") != "number" and finite and high - low <= 100:
        return float_slider(
            label, (float(low), float(high)), "gt" in bounds, default, key, help_text, disabled
        )
    return st.number_input(
        label,
        value=float(default),
        format="%g",
        step=hints.get("step"),
        min_value=None if low is None else float(low),
        max_value=None if high is None else float(high),
        **common,
    )


def float_slider(
    label: str,
    limits: tuple[float, float],
    low_open: bool,
    default: float,
    key: str,
    help_text: str | None,
    disabled: bool = False,
) -> float:
    """A slider over [low, high] (or (low, high]) with a round step of about 1/200 of the range.

    An open range starts one step above ``low``; a valid value below that (a link's
    ``loss.margin=0.001``) moves the start down to it rather than failing.
    """
    low, high = limits
    step = _nice_step(low, high)
    start = low + (step if low_open else 0.0)
    preset = st.session_state.get(key)
    if isinstance(preset, int | float) and low < preset < start:
        start = float(preset)
    return st.slider(
        label,
        min_value=start,
        max_value=high,
        value=float(default),
        step=step,
        format="%g",
        key=key,
        help=help_text,
        disabled=disabled,
    )


def param_widgets(
    entry: Entry, prefix: str, skip: Collection[str] = (), locked: Collection[str] = ()
) -> dict[str, Any]:
    """One widget per declared parameter of ``entry`` but ``skip``; returns {name: value}.

    ``locked`` ones (a teacher's link fixes them) are drawn disabled.
    """
    return {
        name: field_widget(
            entry.params,
            name,
            f"{prefix}.{entry.name}.{name}",
            label=name,
            disabled=name in locked,
        )
        for name in entry.params.model_fields
        if name not in skip
    }


def describe(entry: Entry) -> None:
    """The entry's equation, paper and explanation."""
    st.latex(entry.equation)
    with st.expander(f"About {entry.name}", expanded=False):
        st.markdown(entry.doc)
        st.caption(entry.paper)


def run_label(store: RunStore, run_id: str) -> str:
    """``✅ 20261123-154501-triplet-3fa2``, or ``✅ margin 0.5 (20261123-…)`` once renamed."""
    icon = STATE_ICONS.get(store.status(run_id).get("state", ""), "•")
    label = store.label(run_id)
    return f"{icon} {label} ({run_id})" if label else f"{icon} {run_id}"


COMPARE_SELECTION = "cmp.runs"  # the Compare page's run picker (pages/compare.py SELECTED)


def open_in_compare(run_ids: list[str]) -> None:
    """Preselect up to four runs on the Compare page and go there."""
    st.session_state[COMPARE_SELECTION] = run_ids[:4]
    try:
        st.switch_page("pages/compare.py")
    except StreamlitAPIException:
        st.info("The Compare page is not part of this app's navigation.")


def read_new_link(
    state_key: str, read: Callable[[Mapping[str, str]], Link], keep: Collection[str] = ()
) -> Link | None:
    """The URL's link (``share_links``) when it is new to this page, else None.

    New: the session's first run of the page, or arriving at the page (from another one, see
    :func:`use_app_navigation`) with a URL whose settings differ from the ones the page last
    wrote (:func:`copy_link`), e.g. a ``st.page_link`` with query parameters. Reruns on the
    page never re-read it: the widgets are the truth there, and a rerun may carry a URL older
    than the page's last write (the browser had not applied it yet; re-reading it reset a
    slider moved key by key back to an earlier value). The link is kept under ``state_key``;
    a page puts its values into its widgets' state before they draw, and shows its problems
    with :func:`link_warnings`. Keys in ``keep`` (Train's ``run``) are the page's own and no
    settings.
    """
    query = {k: v for k, v in st.query_params.to_dict().items() if k not in keep}
    arrived = st.session_state.get(ARRIVED, True)
    if state_key in st.session_state and (not arrived or not query or query == _written(state_key)):
        return None
    link = read(st.query_params.to_dict())
    st.session_state[state_key] = link
    return link


def _written(state_key: str) -> dict[str, str] | None:
    return st.session_state.get(f"{state_key}.written")


def link_warnings(state_key: str) -> None:
    """One warning per bad value of the link the session opened the page with."""
    link = st.session_state.get(state_key)
    for problem in link.problems if link else ():
        st.warning(f"This link: {problem}", icon="🔗")


def url_of(query: Mapping[str, str], path: str) -> str:
    """A full link: this page's address (``st.context.url``, else ``/path``) and the query."""
    base = st.context.url or f"/{path}"
    text = urlencode(dict(query), safe=",")
    return f"{base}?{text}" if text else base


def sync_url(query: Mapping[str, str], keep: Collection[str] = ()) -> None:
    """Make the browser's URL carry ``query``, keeping the keys in ``keep`` (Train's ``run``)."""
    current = st.query_params.to_dict()
    for key in current:
        if key not in query and key not in keep:
            del st.query_params[key]
    for key, value in query.items():
        if current.get(key) != value:
            st.query_params[key] = value


def copy_link(
    query: Mapping[str, str], path: str, state_key: str, keep: Collection[str] = ()
) -> None:
    """Keep the URL in step with ``query``, then show it to copy (st.code has a copy button).

    What was written is kept beside the link under ``state_key`` (see :func:`read_new_link`).
    """
    sync_url(query, keep)
    st.session_state[f"{state_key}.written"] = dict(query)
    st.caption("Copy link: opens this page with these settings.")
    st.code(url_of(st.query_params.to_dict(), path), language=None, wrap_lines=True)
