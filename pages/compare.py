"""Compare: 2-4 saved runs side by side on the same probe points; a sweep links to Sweep.

Runs are shown under their names (what differs between them, or a name the user gave) on axes
that stay put while scrubbing.
"""

from __future__ import annotations

from urllib.parse import urlencode

import streamlit as st
from streamlit.errors import StreamlitAPIException

from dml_core.analysis import compare
from dml_core.config import make_config
from dml_core.errors import ConfigError
from dml_core.figures import compare as compare_figures
from dml_core.runs import FINAL, RunStore
from pages.ui import (
    POLL_OTHERS_S,
    load_snapshot,
    plotly_chart,
    run_class_names,
    run_label,
    services,
    steady_axes,
    use_app_navigation,
)

use_app_navigation()
store, _, _ = services()
RUNS = str(store.root)
SELECTED = "cmp.runs"
METHODS = {"PCA": "pca", "UMAP": "umap"}
X_AXES = {"samples seen": "samples_seen", "wall time": "elapsed"}


@st.cache_data(max_entries=64, show_spinner="Aligning the layouts…")
def aligned(
    runs_dir: str, run_ids: tuple[str, ...], steps: tuple[int, ...], method: str, frame_step: int
):
    """Aligned layouts of the runs at these steps (cached by runs, steps, method and frame)."""
    return compare.snapshot_layouts(RunStore(runs_dir), run_ids, steps, method, frame_step)


def sweep_link_panel() -> None:
    """A sweep over one parameter: a link to the Sweep page with that parameter filled in."""
    with st.expander("Sweep: one run per value of one parameter", expanded=False):
        left, right = st.columns(2)
        choice = left.selectbox(
            "Base config",
            ["defaults", *store.list()],
            key="sweep.base",
            format_func=lambda r: (
                "defaults (digits, triplet, semi-hard)" if r == "defaults" else run_label(store, r)
            ),
        )
        base = make_config() if choice == "defaults" else store.load(choice).config
        parameter = right.selectbox("Parameter", compare.sweep_parameters(base), key="sweep.param")
        st.caption(
            "Sweeps live on the **Sweep** page: a grid of up to two parameters, each value "
            "trained with several seeds, so the mean ± sd of every cell tells a real "
            "difference from seed noise. Its runs open here, in Compare, from a cell."
        )
        query = compare.sweep_link(None if choice == "defaults" else choice, parameter)
        label = f"Sweep {parameter} on the Sweep page"
        try:
            st.page_link("pages/sweep.py", label=label, icon="🧮", query_params=query)
        except StreamlitAPIException:  # the page alone, outside app.py's navigation
            st.markdown(f"🧮 [{label}](/sweep?{urlencode(query)})")


def pick_runs() -> list[str]:
    """The runs to compare (2-4), newest first, by id.

    The options show the bare id: Streamlit keeps a multiselect's choice by the shown text, so
    a text that changes as a run finishes or is renamed would drop the run from the choice.
    """
    saved = store.list()
    if SELECTED in st.session_state:  # drop runs deleted since they were picked
        st.session_state[SELECTED] = [r for r in st.session_state[SELECTED] if r in saved]
    return st.multiselect(
        "Runs to compare",
        saved,
        key=SELECTED,
        max_selections=4,
        placeholder="Pick 2 to 4 saved runs",
    )


def rename_panel(run_ids: list[str]) -> None:
    """Give a run a name of one's own; it is stored with the run and shown in every figure."""
    names = compare.run_names(store, run_ids)
    with st.expander("Names of these runs", expanded=False):
        st.caption(
            "Runs are named by the settings in which they differ. A name given here is stored "
            "with the run and replaces that; an empty name brings the settings back."
        )
        for run_id in run_ids:
            left, right = st.columns([4, 1], vertical_alignment="bottom")
            text = left.text_input(
                f"Name of {run_id}",
                store.label(run_id) or "",
                placeholder=names[run_id],
                max_chars=80,
                key=f"cmp.name.{run_id}",
            )
            if right.button("Rename", key=f"cmp.rename.{run_id}"):
                try:
                    store.set_label(run_id, text)
                except ConfigError as err:
                    st.error(str(err), icon="🚫")


def comparison(run_ids: list[str], live: bool) -> None:
    """Every panel for the chosen runs at the scrubber's position (refreshed while ``live``)."""
    records = [store.load(r) for r in run_ids]
    if live and all(rec.status.get("state") in FINAL for rec in records):
        st.rerun()  # the last run finished: redraw once more, then stop refreshing
    configs = [rec.config for rec in records]
    problem = compare.comparison_problem(configs)
    if problem:
        st.error(problem, icon="🚫")
        return
    names = compare.run_names(store, run_ids)
    waiting = [names[r.run_id] for r in records if not r.snapshot_steps]
    if waiting:
        st.info(f"Waiting for the first snapshot of {'; '.join(waiting)}.", icon="⏳")
        return
    controls = st.columns([3, 1, 1])
    progress = controls[0].slider(
        "Training progress (all runs, by samples seen)",
        0,
        100,
        100,
        step=5,
        format="%d%%",
        key="cmp.progress",
        help="One scrubber for every panel: each run shows its snapshot nearest to this share "
        "of the longest run's training samples.",
    )
    method = METHODS[controls[1].radio("Layout", list(METHODS), horizontal=True, key="cmp.method")]
    x = X_AXES[controls[2].radio("Curves vs", list(X_AXES), horizontal=True, key="cmp.x")]
    steps = compare.shared_steps(store, run_ids, progress / 100)
    snaps = [load_snapshot(RUNS, r, steps[r]) for r in run_ids]
    titles = compare_figures.panel_titles([names[r] for r in run_ids], snaps)
    st.caption(
        " · ".join(
            f"**{names[r]}** ({r}): {rec.config.loss}, step {s.step}/{rec.config.steps}"
            + ("" if rec.status.get("state") in FINAL else " (training)")
            for r, rec, s in zip(run_ids, records, snaps, strict=True)
        )
    )
    axes = steady_axes(
        RUNS,
        tuple((rec.run_id, tuple(rec.snapshot_steps)) for rec in records),
        all(c.normalize for c in configs),
    )
    note = compare.probe_note(configs)
    class_names = run_class_names(configs[0])
    try:
        steps_now = tuple(s.step for s in snaps)
        frame = records[0].snapshot_steps[-1]
        layouts = aligned(RUNS, tuple(run_ids), steps_now, method, frame)
    except compare.ProbeMismatchError as err:
        st.warning(note or str(err), icon="⚠️")
    else:
        fig = compare_figures.embedding_panels_figure(
            layouts,
            snaps[0].probe_labels,
            class_names,
            titles,
            title=f"{method.upper()} of the same {len(snaps[0].probe_labels)} probe images, "
            "aligned to one frame",
        )
        plotly_chart(fig, key="cmp.chart.embedding")
    fig = compare_figures.histogram_panels_figure(snaps, titles, axes=axes.histogram)
    plotly_chart(fig, key="cmp.chart.hist")
    histories = {names[rec.run_id]: rec.history for rec in records}
    marks = {names[r]: getattr(s, x) for r, s in zip(run_ids, snaps, strict=True)}
    fig = compare_figures.metric_curves_figure(histories, x=x, marker_x=marks)
    plotly_chart(fig, key="cmp.chart.curves")
    fig = compare_figures.sphere_overlay_figure(
        [s.probe_emb for s in snaps],
        [names[r] for r in run_ids],
        y_max=axes.sphere_top,
        normalized=[c.normalize for c in configs],
    )
    plotly_chart(fig, key="cmp.chart.sphere")
    results(run_ids, names)


def results(run_ids: list[str], names: dict[str, str]) -> None:
    """The sortable results table (runs by name) and its CSV download."""
    st.subheader("Results")
    table = compare.results_table(store, run_ids, names)
    st.dataframe(
        table,
        hide_index=True,
        key="cmp.table",
        column_config={
            c: st.column_config.NumberColumn(format="%.3f")
            for c in table.columns
            if c.startswith(("final ", "best "))
        }
        | {
            "wall time (s)": st.column_config.NumberColumn(format="%.1f"),
            "samples/s": st.column_config.NumberColumn(format="%.0f"),
        },
    )
    st.caption(
        "final: every test image against every train image at the end; best: the best value "
        "over the snapshots, on the probe set. Click a column header to sort."
    )
    st.download_button(
        "Download CSV",
        table.to_csv(index=False),
        file_name="compare-runs.csv",
        mime="text/csv",
        key="cmp.csv",
        icon="⬇️",
    )


st.title("Compare runs")
sweep_link_panel()
chosen = pick_runs()
if len(chosen) < 2:
    st.info(
        "Pick at least 2 saved runs to compare (train them on **Train**, or sweep one "
        "parameter on **Sweep**).",
        icon="👆",
    )
else:
    rename_panel(chosen)
    live = any(store.status(r).get("state") not in FINAL for r in chosen)
    st.fragment(run_every=POLL_OTHERS_S if live else None)(comparison)(chosen, live)
