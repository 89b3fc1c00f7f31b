"""RunView: the state a page shows and the rules for Pause / Resume / Stop, from jobs and disk."""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from dml_core.config import make_config
from dml_core.runs import RunState, RunStore
from dml_core.services.jobs import JobManager, Phase
from dml_core.services.progress import Progress
from dml_core.services.projection_worker import ProjectionWorker
from dml_core.services.run_view import (
    LAYOUT_WAIT_S,
    LIVE_REST_S,
    MIN_REST_S,
    RunView,
    awaits_layout,
    figure_news,
    redraw_due,
    run_view,
)
from tests.saved_runs import make_tiny_run

S = RunState
TRAINING, EVALUATING = Phase.TRAINING, Phase.FINAL_EVALUATION
FAST = {"steps": 100_000, "snapshot_every": 20, "probe_size": 200, "embedding_dim": 8}

# (state, live, phase, has_checkpoint) -> (can_pause, can_resume, can_stop, active)
RULES = [
    ((S.QUEUED, True, TRAINING, False), (False, False, True, True)),
    ((S.STARTING, True, TRAINING, False), (False, False, True, True)),
    ((S.RUNNING, True, TRAINING, True), (True, False, True, True)),
    ((S.RUNNING, True, EVALUATING, True), (False, False, False, True)),
    ((S.PAUSED, True, TRAINING, True), (False, True, True, True)),
    ((S.RUNNING, False, TRAINING, True), (False, False, False, True)),  # another process
    ((S.FINISHED, False, TRAINING, True), (False, False, False, False)),
    ((S.STOPPED, False, TRAINING, True), (False, True, False, False)),
    ((S.STOPPED, False, TRAINING, False), (False, False, False, False)),
    ((S.INTERRUPTED, False, TRAINING, True), (False, True, False, False)),
    ((S.INTERRUPTED, False, TRAINING, False), (False, False, False, False)),
    ((S.DIVERGED, False, TRAINING, True), (False, False, False, False)),
    ((S.FAILED, False, TRAINING, True), (False, False, False, False)),
]


@pytest.mark.parametrize(("given", "expected"), RULES, ids=lambda v: "-".join(map(str, v)))
def test_button_rules(
    given: tuple[RunState, bool, Phase, bool], expected: tuple[bool, bool, bool, bool]
) -> None:
    state, live, phase, checkpoint = given
    view = RunView("r", state, phase=phase, live=live, has_checkpoint=checkpoint)
    assert (view.can_pause, view.can_resume, view.can_stop, view.active) == expected


def test_every_state_has_a_rule() -> None:
    assert {given[0] for given, _ in RULES} == set(RunState)


def test_progress_text_while_training_and_evaluating() -> None:
    view = RunView(
        "r", S.RUNNING, step=50, steps=300, samples_per_s=1234.4, eta_s=17.2, device="CPU",
        live=True,
    )  # fmt: skip
    assert view.progress_text == "running · step 50/300 · 1,234 samples/s · ETA 17 s · CPU"
    assert view.fraction == pytest.approx(50 / 300)
    evaluating = RunView("r", S.RUNNING, EVALUATING, 300, 300, phase_s=12.4, live=True)
    assert evaluating.progress_text == "running · step 300/300 done · final evaluation · 12 s"
    queued = RunView("r", S.QUEUED, queue_position=2, steps=300, live=True)
    assert queued.progress_text == "queued (position 2 in the queue) · step 0/300"
    assert RunView("r", S.FAILED).is_error
    assert not RunView("r", S.STOPPED).is_error
    assert RunView("r", S.FINISHED, step=400, steps=300).fraction == 1.0


@pytest.fixture
def store(tmp_path: Path) -> RunStore:
    return RunStore(tmp_path)


@pytest.fixture
def manager(store: RunStore) -> Iterator[JobManager]:
    manager = JobManager(store, max_running=1)
    yield manager
    manager.stop_all()


def test_view_from_disk(store: RunStore, manager: JobManager) -> None:
    run_id = store.create(make_config(steps=300))
    store.set_status(run_id, state=S.STOPPED, step=120, device="CPU")
    view = run_view(store, manager, run_id)
    assert (view.state, view.step, view.steps, view.live) == (S.STOPPED, 120, 300, False)
    assert not view.can_resume  # no checkpoint yet
    store.save_checkpoint(run_id, {"step": 120})
    assert run_view(store, manager, run_id).can_resume


def test_view_of_a_run_whose_process_died(store: RunStore, manager: JobManager) -> None:
    run_id = store.create(make_config())
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    store.set_status(run_id, state=S.RUNNING, phase=EVALUATING, pid=dead.pid, step=40)
    store.save_checkpoint(run_id, {"step": 40})
    view = run_view(store, manager, run_id)
    assert view.state is S.INTERRUPTED
    assert view.phase is TRAINING
    assert "interrupted" in view.message
    assert view.can_resume
    assert not view.can_stop


def test_view_without_a_status_file(store: RunStore, manager: JobManager) -> None:
    run_id = store.create(make_config())
    (store.path(run_id) / "status.json").unlink()
    view = run_view(store, manager, run_id)
    assert view.state is S.INTERRUPTED
    assert "no readable state" in view.message
    assert not (view.can_pause)
    assert not (view.can_resume)
    assert not (view.can_stop)


class OneJob:
    """A job manager holding one job (or none), queued nowhere: what ``run_view`` asks."""

    def __init__(self, job: object | None) -> None:
        self.job = job

    def get(self, run_id: str) -> object | None:
        return self.job

    def queue_position(self, run_id: str) -> int | None:
        return None


def test_a_live_view_shows_samples_per_s_as_steps_per_s_times_the_batch(store: RunStore) -> None:
    """Catches: the speed shown as the job's steps/s (the batch left out: 32x too low here),
    or the ETA not taken from the job."""
    cfg = make_config(classes_per_batch=4, samples_per_class=8)  # 32 samples a step
    run_id = store.create(cfg)
    progress = Progress(
        run_id, S.RUNNING, TRAINING, step=10, steps=300, samples_per_s=0.0, steps_per_s=5.0,
        eta_s=58.0, phase_s=0.0, message="", device="CPU", snapshots=1,
    )  # fmt: skip
    job = types.SimpleNamespace(progress=lambda: progress, cfg=cfg)
    view = run_view(store, OneJob(job), run_id)  # type: ignore[arg-type]
    assert view.samples_per_s == pytest.approx(5.0 * 32)
    assert view.eta_s == 58.0


def test_a_run_another_live_process_evaluates_shows_its_final_evaluation(store: RunStore) -> None:
    """A run trained by another process (the CLI, or another server) that is in its final
    evaluation: the page says so, from disk. Catches: the on-disk phase ignored (the page
    would say it trains, at step 300/300)."""
    run_id = store.create(make_config(steps=300))
    store.set_status(run_id, state=S.RUNNING, phase=EVALUATING, pid=os.getpid(), step=300)
    view = run_view(store, OneJob(None), run_id)  # type: ignore[arg-type]
    assert view.phase is EVALUATING
    assert "final evaluation" in view.progress_text


def wait_for_view(store: RunStore, manager: JobManager, run_id: str, predicate) -> RunView:
    end = time.monotonic() + 120
    while not predicate(view := run_view(store, manager, run_id)):
        assert time.monotonic() < end, f"timed out at {view}"
        time.sleep(0.05)
    return view


def test_a_submitted_job_can_be_paused_once_it_runs(store: RunStore, manager: JobManager) -> None:
    """Issue 19: Pause stayed disabled for the whole run after Train was pressed."""
    run_id = manager.submit(make_config(**FAST))
    first = run_view(store, manager, run_id)
    assert first.state in (S.QUEUED, S.STARTING, S.RUNNING)
    assert first.live
    assert first.can_stop
    assert not first.can_resume
    view = wait_for_view(store, manager, run_id, lambda v: v.state is S.RUNNING)
    assert view.can_pause
    assert view.can_stop
    assert not view.can_resume
    view = wait_for_view(store, manager, run_id, lambda v: v.eta_s is not None)
    assert view.samples_per_s > 0
    assert view.rate_text.endswith("samples/s")
    manager.pause(run_id)
    view = run_view(store, manager, run_id)
    assert view.state is S.PAUSED
    assert view.can_resume
    assert view.can_stop
    assert not view.can_pause
    assert view.eta_s is None
    assert math.isnan(view.samples_per_s)
    manager.resume(run_id)
    assert run_view(store, manager, run_id).can_pause
    manager.stop(run_id)
    view = wait_for_view(store, manager, run_id, lambda v: not v.active)
    assert (view.state, view.live) == (S.STOPPED, False)
    assert view.can_resume
    assert not view.can_stop
    manager.resume(run_id)
    view = wait_for_view(store, manager, run_id, lambda v: v.state is S.RUNNING)
    assert view.can_pause
    assert view.live


def test_a_queued_job_shows_its_place(store: RunStore, manager: JobManager) -> None:
    cfg = make_config(**FAST)
    first, second = manager.submit(cfg), manager.submit(cfg)
    wait_for_view(store, manager, first, lambda v: v.state is S.RUNNING)
    view = run_view(store, manager, second)
    assert (view.state, view.queue_position) == (S.QUEUED, 1)
    assert view.can_stop
    assert not view.can_pause
    manager.stop(second)
    view = run_view(store, manager, second)
    assert view.state is S.STOPPED
    assert not view.live
    assert not view.can_resume  # it never trained: no checkpoint


def test_figure_news_changes_exactly_when_the_figures_would(tmp_path: Path) -> None:
    """The Train page redraws its figures only when ``figure_news`` changes (issue 14).

    Catches news blind to a new snapshot (the view would stay on an old step), to a layout
    that arrived (UMAP would never replace its PCA stand-in) or to the run's state (final
    metrics would not appear), and news that changes with nothing new (every poll would
    rebuild and resend every figure). Tried: dropping the layout term fails the third check.
    """
    store = make_tiny_run(tmp_path / "runs", "tiny")
    worker = ProjectionWorker()
    try:
        before = figure_news(store, worker, "tiny", "pca", S.RUNNING)
        assert before == figure_news(store, worker, "tiny", "pca", S.RUNNING)  # nothing new
        assert before[:2] == (3, 30)
        last = store.load_snapshot("tiny", 30)
        store.save_snapshot("tiny", dataclasses.replace(last, step=45))
        grown = figure_news(store, worker, "tiny", "pca", S.RUNNING)
        assert grown[:2] == (4, 45)
        worker.submit("tiny", 45, last.probe_emb, "pca")
        assert worker.get("tiny", 45, "pca", timeout=30) is not None
        laid_out = figure_news(store, worker, "tiny", "pca", S.RUNNING)
        assert laid_out != grown
        assert laid_out[2] == 45
        assert figure_news(store, worker, "tiny", "direct", S.RUNNING)[2] is None
        assert figure_news(store, worker, "tiny", "pca", S.FINISHED) != laid_out
    finally:
        worker.stop()


def test_redraw_due_paces_new_snapshots_by_the_draw_time_and_never_delays_a_new_state() -> None:
    """Catches: a redraw on every new snapshot (back-to-back full draws on a loaded machine
    left the Stop button and the progress line no time: CI saw Stop ignored for minutes),
    a new state held back by the pacing, a redraw with nothing new, pacing that ignores how
    long the last draw took, and news that never redraws."""
    drawn = (3, 30, 30, S.RUNNING)
    newer = (4, 40, 30, S.RUNNING)
    # the last draw ended at t = 100 s and took 3 x LIVE_REST_S (a loaded machine): longer
    # than the least rest, so only a pacing that counts the draw's time waits this long
    at, took = 100.0, 3 * LIVE_REST_S
    assert not redraw_due(drawn, drawn, at, took, at + 60)  # nothing new
    assert redraw_due(newer, None, 0.0, 0.0, at)  # nothing drawn yet
    assert not redraw_due(newer, drawn, at, took, at + 0.5)
    assert not redraw_due(newer, drawn, at, took, at + took - 0.1)  # rested less than it took
    assert redraw_due(newer, drawn, at, took, at + took)
    # a quick draw: the least rest, longer while the run trains than for a late layout
    assert not redraw_due(newer, drawn, at, 0.1, at + LIVE_REST_S - 0.1)
    assert redraw_due(newer, drawn, at, 0.1, at + LIVE_REST_S)
    ended, layout = (4, 40, 30, S.FINISHED), (4, 40, 40, S.FINISHED)
    assert not redraw_due(layout, ended, at, 0.1, at + MIN_REST_S / 2)
    assert redraw_due(layout, ended, at, 0.1, at + MIN_REST_S)
    assert LIVE_REST_S > MIN_REST_S
    for state in (S.STOPPED, S.FINISHED, S.PAUSED):  # a new state: at once
        assert redraw_due((3, 30, 30, state), drawn, at, took, at + 0.1)


def test_a_new_snapshot_waits_for_its_own_layout_for_a_bounded_time_while_the_run_trains() -> None:
    """One draw per snapshot, every figure at one step (issue 14: the browser's redraws).

    Catches: a draw as soon as the snapshot lands (beside the previous step's layout, then
    again when its own arrives: two full re-renders per snapshot), a wait with no bound (a
    UMAP slower than the snapshots, or one that failed, would freeze the figures), a wait
    for the first snapshot (the page would show "waiting for the first snapshot" with one
    saved), a wait once the run has ended, and a wait when the snapshot is laid out.
    """
    drawn = (3, 30, 30, S.RUNNING)  # snapshot 30 drawn with its own layout
    landed = (4, 40, 30, S.RUNNING)  # snapshot 40 saved; its layout is still computing
    laid_out = (4, 40, 40, S.RUNNING)
    at, took, seen = 100.0, 0.1, 110.0  # drawn at 100 s, snapshot 40 first seen at 110 s
    assert awaits_layout(landed, "umap")
    assert awaits_layout(landed, "pca")
    assert not awaits_layout(laid_out, "umap")
    assert not awaits_layout(landed, "direct")  # the coordinates themselves: nothing to wait
    assert not awaits_layout((0, None, None, S.RUNNING), "umap")  # no snapshot yet
    assert not redraw_due(landed, drawn, at, took, seen + 1.0, waiting_since=seen)
    assert not redraw_due(landed, drawn, at, took, seen + LAYOUT_WAIT_S - 0.1, seen)
    assert redraw_due(landed, drawn, at, took, seen + LAYOUT_WAIT_S, seen)  # the bound
    assert redraw_due(laid_out, drawn, at, took, seen + 1.0, None)  # its layout arrived
    first = (1, 0, None, S.RUNNING)
    assert redraw_due(first, (0, None, None, S.RUNNING), at, took, seen + 1.0, seen)
    ended = (4, 40, 30, S.FINISHED)  # the run ended: final metrics at once
    assert redraw_due(ended, drawn, at, took, seen + 0.1, seen)
    # once ended, nothing waits: a last snapshot is drawn after the least rest
    assert redraw_due((5, 50, 30, S.FINISHED), ended, at, took, at + MIN_REST_S, at + 0.5)
    assert LAYOUT_WAIT_S <= 2 * LIVE_REST_S  # a snapshot is never held back for long
