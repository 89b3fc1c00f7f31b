"""Shared UI pieces: process-wide services, registry-driven parameter widgets, run picking.

No maths here: widgets are read from the registries' declared parameters, everything else is
a call into ``dml_core``.
"""

from __future__ import annotations

import atexit
import math
import os
import typing
from typing import Any

import streamlit as st
from streamlit.runtime.pages_manager import PagesManager

from dml_core.errors import field_bounds
from dml_core.figures.style import split_symbol
from dml_core.projection import ProjectionWorker
from dml_core.registry import Entry
from dml_core.runs import RunStore
from dml_core.services.jobs import JobManager
from dml_core.snapshot import Snapshot

RUNS_DIR = os.environ.get("DML_RUNS_DIR", "runs")
STATE_ICONS = {
    "queued": "⏳",
    "starting": "⏳",
    "running": "🏃",
    "paused": "⏸️",
    "finished": "✅",
    "stopped": "⏹️",
    "diverged": "💥",
    "failed": "❌",
    "interrupted": "⚠️",
}


def use_app_navigation() -> None:
    """Make sure the page runs under app.py's ``st.navigation``, also on a server's first request.

    Streamlit treats a ``pages/`` folder as a legacy multipage app until some session has run
    ``st.navigation``; a first request straight to ``/train`` would run the page alone, without
    app.py's page list and layout. Switching the flag off and rerunning routes it through app.py.
    """
    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()


def services() -> tuple[RunStore, JobManager, ProjectionWorker]:
    """The run store and job manager of this server's runs directory, and the projector."""
    store, manager = _jobs(RUNS_DIR)
    return store, manager, _projection_worker()


@st.cache_resource
def _jobs(runs_dir: str) -> tuple[RunStore, JobManager]:
    """One store and job manager per runs directory, shared by every session."""
    store = RunStore(runs_dir)
    max_jobs = int(os.environ.get("DML_MAX_JOBS", "0")) or None
    manager = JobManager(store, max_running=max_jobs)
    atexit.register(manager.stop_all)
    return store, manager


@st.cache_resource
def _projection_worker() -> ProjectionWorker:
    """One projection worker per server process (UMAP in a subprocess, compiled at start)."""
    worker = ProjectionWorker(in_subprocess=True)
    worker.warm_up()  # compile UMAP's numba kernels before the first real request
    return worker


@st.cache_data(max_entries=512, show_spinner=False)
def load_snapshot(runs_dir: str, run_id: str, step: int) -> Snapshot:
    """One snapshot from disk, cached by (run, step): a page refresh re-reads nothing."""
    return RunStore(runs_dir).load_snapshot(run_id, step)


def _nice_step(low: float, high: float) -> float:
    raw = (high - low) / 200
    magnitude = 10 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)


def param_widgets(entry: Entry, prefix: str) -> dict[str, Any]:
    """One widget per declared parameter of ``entry``; returns {name: value}.

    bool -> checkbox, Literal -> selectbox, int -> number input, float with a finite range ->
    slider (else number input). Limits, defaults and help come from the pydantic model.
    """
    values: dict[str, Any] = {}
    for name, field in entry.params.model_fields.items():
        key = f"{prefix}.{entry.name}.{name}"
        annotation, default = field.annotation, field.default
        symbol, text = split_symbol(field.description or "")
        help_text = f"{symbol} in the equation: {text}" if symbol else text or None
        if annotation is bool:
            values[name] = st.checkbox(name, value=default, key=key, help=help_text)
        elif typing.get_origin(annotation) is typing.Literal:
            options = list(typing.get_args(annotation))
            values[name] = st.selectbox(
                name, options, index=options.index(default), key=key, help=help_text
            )
        else:
            bounds = field_bounds(entry.params, name)
            low = bounds.get("ge", bounds.get("gt"))
            high = bounds.get("le", bounds.get("lt"))
            if annotation is int:
                values[name] = st.number_input(
                    name,
                    min_value=low if low is None else int(low) + ("gt" in bounds),
                    max_value=high if high is None else int(high) - ("lt" in bounds),
                    value=int(default),
                    step=1,
                    key=key,
                    help=help_text,
                )
            elif low is not None and high is not None and high - low <= 100:
                step = _nice_step(float(low), float(high))
                low_ok = float(low) + (step if "gt" in bounds else 0.0)
                values[name] = st.slider(
                    name,
                    min_value=low_ok,
                    max_value=float(high),
                    value=float(default),
                    step=step,
                    format="%g",
                    key=key,
                    help=help_text,
                )
            else:
                values[name] = st.number_input(
                    name,
                    value=float(default),
                    format="%g",
                    key=key,
                    help=help_text,
                    min_value=None if low is None else float(low),
                    max_value=None if high is None else float(high),
                )
    return values


def describe(entry: Entry) -> None:
    """The entry's equation, paper and explanation."""
    st.latex(entry.equation)
    with st.expander(f"About {entry.name}", expanded=False):
        st.markdown(entry.doc)
        st.caption(entry.paper)


def run_label(store: RunStore, run_id: str) -> str:
    """``✅ 20261123-154501-triplet-3fa2`` with its state icon."""
    return f"{STATE_ICONS.get(store.status(run_id).get('state', ''), '•')} {run_id}"
