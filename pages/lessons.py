"""Lessons: presets that reproduce a paper's claim in one click, and check that it held."""

from __future__ import annotations

from urllib.parse import urlencode

import streamlit as st
from streamlit.errors import StreamlitAPIException

from dml_core.analysis.compare import params_text
from dml_core.config import RunConfig
from dml_core.runs import ACTIVE, RunState, RunStore
from dml_core.services.lessons import (
    LESSONS,
    Lesson,
    evaluate,
    latest_lesson_runs,
    lesson_configs,
    lesson_run_ids,
    lesson_runs_active,
    load_results,
)
from pages.ui import POLL_OTHERS_S, STATE_ICONS, open_in_compare, services, use_app_navigation

use_app_navigation()
store, manager, _ = services()
RUNS = str(store.root)
PAGE_TITLES = {
    "pages/train.py": ("Train", "🏋️", "train"),
    "pages/compare.py": ("Compare", "⚖️", "compare"),
    "pages/loss_explorer.py": ("Loss explorer", "📈", "losses"),
    "pages/sphere.py": ("Sphere & sampling", "🌐", "sphere"),
    "pages/miner_view.py": ("Miner view", "⛏️", "miners"),
}


@st.cache_data(max_entries=64, show_spinner="Checking the lesson's claim…")
def verdict(runs_dir: str, key: str, run_ids: tuple[str, ...]) -> tuple[bool, str]:
    """The lesson's check on its finished runs (cached: finished runs never change)."""
    return evaluate(LESSONS[key], load_results(RunStore(runs_dir), run_ids))


def link(
    page: str,
    label: str,
    run_id: str | None = None,
    icon: str | None = None,
    params: dict[str, str] | None = None,
) -> None:
    """A link to an app page with ``?run=`` (or other ``params``).

    A plain link when the page is not registered.
    """
    _, page_icon, path = PAGE_TITLES.get(page, (page, "📄", page))
    icon = icon or page_icon
    params = {"run": run_id} if run_id else params
    try:
        st.page_link(page, label=label, icon=icon, query_params=params)
    except StreamlitAPIException:
        query = f"?{urlencode(params)}" if params else ""
        st.markdown(f"{icon} [{label}](/{path}{query})")


def describe_config(cfg: RunConfig) -> str:
    """One line: loss (params), miner (params), dim, batch, lr, steps."""
    loss = f"{cfg.loss} {params_text(cfg.loss_params)}".strip()
    miner = f"{cfg.miner} {params_text(cfg.miner_params)}".strip()
    return (
        f"`{loss}` · miner `{miner}` · D={cfg.embedding_dim} · "
        f"{cfg.classes_per_batch}x{cfg.samples_per_class} · lr {cfg.lr:g} · {cfg.steps} steps"
    )


def launch(lesson: Lesson) -> None:
    """Submit the lesson's runs as background jobs (normal saved runs)."""
    runs = zip(lesson_configs(lesson), lesson_run_ids(lesson), lesson.labels, strict=True)
    for cfg, run_id, label in runs:
        manager.submit(cfg, run_id)
        store.set_label(run_id, f"{lesson.key}: {label}")  # how Compare and the pickers name it


def runs_panel(lesson: Lesson) -> None:
    """The lesson's latest runs: state, links to Train and Compare, and the verdict."""
    run_ids = latest_lesson_runs(store, lesson)
    if not run_ids:
        st.caption("Not run yet.")
        return
    states = [store.status(r).get("state", "") for r in run_ids]
    for label, run_id, state in zip(lesson.labels, run_ids, states, strict=True):
        link("pages/train.py", f"{label}: {run_id}", run_id, STATE_ICONS.get(state, "•"))
    if len(run_ids) > 1 and st.button(
        "Compare these runs", key=f"lesson.compare.{lesson.key}", icon="⚖️"
    ):
        open_in_compare(run_ids)
    if any(s in ACTIVE for s in states):
        st.info("Training… the verdict appears when every run has finished.", icon="⏳")
    elif all(s is RunState.FINISHED for s in states):
        holds, message = verdict(RUNS, lesson.key, tuple(run_ids))
        if holds:
            st.success(f"The claim holds: {message}", icon="✅")
        else:
            st.warning(f"The claim did not hold in these runs: {message}", icon="⚠️")
    else:
        st.warning("Some runs did not finish (stopped, failed or interrupted); run it again.")


def lesson_panel(lesson: Lesson) -> None:
    """Text, paper, runs, the claim, the run button and the pages that show the effect."""
    st.markdown(lesson.text)
    st.markdown(f"**Claim checked after the runs:** {lesson.claim}")
    st.caption(f"Paper: {lesson.paper}")
    runs = "\n".join(
        f"- **{label}**: {describe_config(cfg)}"
        for label, cfg in zip(lesson.labels, lesson_configs(lesson), strict=True)
    )
    st.markdown(runs)
    left, right = st.columns([1, 2])
    with left:
        if st.button("Run this lesson", key=f"lesson.run.{lesson.key}", type="primary", icon="▶️"):
            launch(lesson)
            st.rerun()  # the whole page, which now refreshes while the runs train
        st.markdown("**Open**")
        for page in lesson.pages:
            link(page, PAGE_TITLES.get(page, (page,))[0])
        link(
            "pages/train.py",
            "Train with its first run's settings",
            params={"lesson": lesson.key},  # share_links' lesson= (a link for a class, too)
        )
    with right:
        runs_panel(lesson)


def lessons(live: bool) -> None:
    """Every lesson in an expander; refreshed every few seconds while ``live`` (runs train)."""
    if live and not lesson_runs_active(store):
        st.rerun()  # the last run ended: draw its verdict once more, then stop refreshing
    for lesson in LESSONS.values():
        with st.expander(lesson.title):
            lesson_panel(lesson)


st.title("Lessons")
st.markdown(
    "Each lesson trains a few short runs on digits (under 2 minutes on 2 CPU cores), names "
    "what to look for, and checks the paper's claim on the finished runs. The runs are "
    f"normal saved runs; they train in the background, {manager.max_running} at a time."
)
live = lesson_runs_active(store)
st.fragment(run_every=POLL_OTHERS_S if live else None)(lessons)(live)
