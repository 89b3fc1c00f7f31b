"""Sweep: a grid of runs (up to two axes) over several seeds, watched live, with mean ± sd per cell.

No maths here: the grid is checked and named by ``dml_core.sweeps.build_sweep``, trained by a
``SweepRunner`` (local threads, or Ray when ``DML_RAY_ADDRESS`` is set), read back with
``sweeps.progress`` / ``sweeps.cell_results`` and drawn by ``figures.sweep.sweep_figure``.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import streamlit as st

from dml_core.analysis import compare
from dml_core.config import RunConfig, make_config
from dml_core.errors import ConfigError
from dml_core.figures.sweep import METRIC_NAMES, sweep_figure
from dml_core.registry import LOSSES, MINERS
from dml_core.runs import ACTIVE
from dml_core.services.sweep_session import default_backend, shared
from dml_core.sweeps import (
    NOT_SWEPT,
    PENDING,
    Axis,
    Sweep,
    SweepStore,
    build_sweep,
    cell_label,
    cell_results,
    progress,
)
from pages.ui import (
    POLL_OTHERS_S,
    STATE_ICONS,
    field_widget,
    open_in_compare,
    plotly_chart,
    run_label,
    services,
    use_app_navigation,
)

use_app_navigation()
store, manager, _ = services()
CURRENT = "swp.current"
LENGTH_FIELDS = ("dataset", "steps", "snapshot_every", "probe_size")
NO_AXIS = "(none)"


sessions = shared(store)  # one registry of running sweeps per runs directory, for all sessions
sweep_store = SweepStore(sessions.store)


def base_config(choice: str, length: dict[str, Any]) -> RunConfig:
    """The grid's starting point: the defaults or a saved run's config, with the run length."""
    base = make_config() if choice == "defaults" else store.load(choice).config
    return make_config(**{**base.model_dump(), **length})


def axis_names(base: RunConfig) -> list[str]:
    """What an axis can vary: the loss's and miner's parameters, then the run settings."""
    params = [*LOSSES[base.loss].params.model_fields, *MINERS[base.miner].params.model_fields]
    fields = [f for f in RunConfig.model_fields if f not in NOT_SWEPT]
    return list(dict.fromkeys([*params, *fields]))


def axis_input(base: RunConfig, index: int, default: str) -> Axis | None:
    """One axis: a parameter and its comma-separated values (None when unset or empty)."""
    names = axis_names(base)
    options = [NO_AXIS, *names] if index else names
    left, right = st.columns([1, 2])
    name = left.selectbox(
        f"Axis {index + 1}",
        options,
        index=options.index(default) if default in options else 0,
        key=f"swp.axis{index}",
    )
    if name == NO_AXIS:
        return None
    text = right.text_input(
        f"Values of {name} (comma-separated)",
        compare.suggested_values(base, name),
        key=f"swp.values{index}.{name}",
        help="Checked by the same rules as a single run; each value is one row/column.",
    )
    values = compare.parse_values(text)
    return Axis(name=name, values=tuple(values)) if values else None


def grid_panel() -> None:
    """Define the grid and launch it; a bad grid is one line of error.

    Compare's link (``?axis=NAME&base=RUN``, ``compare.sweep_link``) opens it with that base
    and first axis chosen.
    """
    linked_base, linked_axis = compare.sweep_prefill(st.query_params.to_dict(), store.list())
    with st.expander("New sweep", expanded=linked_axis is not None or not sweep_store.list()):
        bases = ["defaults", *store.list()]
        choice = st.selectbox(
            "Base config",
            bases,
            index=bases.index(linked_base),
            key="swp.base",
            format_func=lambda r: (
                "defaults (digits, triplet, semi-hard)" if r == "defaults" else run_label(store, r)
            ),
        )
        columns = st.columns(len(LENGTH_FIELDS) + 1)
        length = {}
        for column, name in zip(columns, LENGTH_FIELDS, strict=False):
            with column:
                length[name] = field_widget(RunConfig, name, f"swp.{name}")
        seeds = columns[-1].number_input(
            "Seeds per cell", min_value=1, value=2, key="swp.seeds",
            help="Each cell is trained with seeds base, base+1, ...",
        )  # fmt: skip
        try:
            base = base_config(choice, length)
        except ConfigError as err:
            st.error(str(err), icon="🚫")
            return
        axes = [axis_input(base, 0, linked_axis or "margin"), axis_input(base, 1, NO_AXIS)]
        backend = default_backend()
        st.caption(
            f"Base: {base.loss} {compare.params_text(base.loss_params)} · miner {base.miner} · "
            f"dim {base.embedding_dim} · {base.dataset} · seed {base.seed}. Backend: {backend}"
            + (" (DML_RAY_ADDRESS)" if backend == "ray" else f", {sessions.workers} at a time.")
        )
        if st.button("Launch sweep", type="primary", key="swp.launch", icon="🚀"):
            try:
                sweep = build_sweep(base, [a for a in axes if a is not None], int(seeds))
                sessions.launch(sweep, backend)
            except ConfigError as err:
                st.error(str(err), icon="🚫")
                return
            st.session_state[CURRENT] = sweep.sweep_id
            st.rerun()


def _metric_text(value: float) -> str:
    """``0.912`` -> "0.912"; not measured yet (NaN) -> "–"."""
    return "–" if math.isnan(value) else f"{value:.3f}"


def state_table(table: pd.DataFrame, axes: list[str]) -> None:
    """Every run: its cell, seed, state and progress."""
    shown = pd.DataFrame(
        {
            "cell": [cell_label({a: r[a] for a in axes}) or "base" for _, r in table.iterrows()],
            "seed": table["seed"],
            "state": [f"{STATE_ICONS.get(s, '•')} {s}" for s in table["state"]],
            "progress": (table["step"] / table["steps"]).clip(0, 1),
            "MAP@R": [_metric_text(v) for v in table["map_at_r"]],
            "P@1": [_metric_text(v) for v in table["precision_at_1"]],
            "run": table["run_id"],
        }
    )
    st.dataframe(
        shown,
        hide_index=True,
        width="stretch",
        column_config={
            "progress": st.column_config.ProgressColumn(min_value=0.0, max_value=1.0),
        },
    )


def cell_picker(sweep: Sweep, table: pd.DataFrame) -> None:
    """Pick a cell and open its runs in Compare."""
    labels = [cell_label(cell) or "base" for cell in sweep.cells]
    left, right = st.columns([3, 1], vertical_alignment="bottom")
    cell = left.selectbox(
        "Cell", range(len(labels)), format_func=lambda i: labels[i], key="swp.cell"
    )
    runs = [r for r in table[table.cell == cell]["run_id"] if store.exists(r)]
    if right.button("Open in Compare", key="swp.compare", icon="⚖️", disabled=not runs):
        open_in_compare(runs)


def is_live(sweep_id: str) -> bool:
    """True while this process or another driver (the CLI) trains the sweep."""
    return sessions.active(sweep_id) or sweep_store.status(sweep_id)["state"] == "running"


def watch(sweep_id: str, live: bool) -> None:
    """Every run's state and progress, then the results figure (polled while it trains)."""
    try:
        sweep = sweep_store.load(sweep_id)
    except ConfigError:  # deleted meanwhile (by another session, or by hand)
        st.info(f"The sweep {sweep_id} is gone from the runs directory.", icon="🗑️")
        return
    if live and not is_live(sweep_id):  # it just ended: rerun the page to stop polling
        st.rerun()
    axes = [axis.name for axis in sweep.axes]
    table = progress(store, sweep)
    status = sweep_store.status(sweep_id)
    done = int((~table.state.isin([*ACTIVE, PENDING])).sum())
    st.markdown(
        f"**{sweep_id}** · {status['state']} · {done}/{len(table)} runs ended · "
        f"{len(sweep.cells)} cells × {len(sweep.seeds)} seeds · backend "
        f"{status.get('backend', '?')}"
    )
    if sessions.active(sweep_id) and st.button("Stop sweep", key="swp.stop", icon="⏹️"):
        sessions.stop(sweep_id)
    state_table(table, axes)
    metric = st.radio(
        "Metric", ["map_at_r", "precision_at_1"], format_func=METRIC_NAMES.get,
        horizontal=True, key="swp.metric",
    )  # fmt: skip
    figure = sweep_figure(cell_results(store, sweep), axes, metric, uirevision=sweep_id)
    plotly_chart(figure, width="stretch", key="swp.figure")
    cell_picker(sweep, table)


st.title("Sweep")
st.caption(
    "A grid of runs over one or two parameters, each cell trained with several seeds: "
    "the mean and spread across seeds tell a real difference from seed noise."
)
grid_panel()
saved = sweep_store.list()
if not saved:
    st.info("No sweep yet: define a grid above and launch it.", icon="👆")
else:
    if st.session_state.get(CURRENT) not in saved:
        st.session_state[CURRENT] = saved[0]
    chosen = st.selectbox("Sweep", saved, key=CURRENT)
    live = is_live(chosen)
    st.fragment(run_every=POLL_OTHERS_S if live else None)(watch)(chosen, live)
