"""The sweep runner and the sessions that hold runners, on the local executor (no Ray)."""

from __future__ import annotations

from pathlib import Path

from dml_core.config import make_config
from dml_core.runs import RunState, RunStore
from dml_core.services.sweep_runner import LocalExecutor, SweepRunner
from dml_core.services.sweep_session import SweepSessions
from dml_core.sweeps import Axis, SweepState, SweepStore, build_sweep

# runs that would train for minutes: only a stop ends them
ENDLESS = {"steps": 100_000, "snapshot_every": 50, "probe_size": 50, "embedding_dim": 8}


def test_a_local_sweep_stopped_at_its_start_ends_stopped_with_every_run_stopped(
    tmp_path: Path,
) -> None:
    """Stop pressed as the sweep starts: one worker, so one run trains and two wait.

    Catches: the stop not passed on to the sweep's final state (it would read "incomplete",
    as after a crash), and a run taken off the queue left "queued" for ever.
    """
    store = RunStore(tmp_path)
    base = make_config(device="cpu", **ENDLESS)
    sweep = build_sweep(base, [Axis(name="lr", values=(0.001, 0.002, 0.003))], 1)
    SweepStore(store).save(sweep)
    runner = SweepRunner(store, sweep, LocalExecutor(store, workers=1), poll_s=0.05)
    runner.stop()
    assert runner.run() is SweepState.STOPPED
    assert SweepStore(store).status(sweep.sweep_id)["state"] == SweepState.STOPPED
    states = [store.status(run.run_id)["state"] for run in sweep.runs]
    assert states == [RunState.STOPPED] * 3


def test_launching_a_running_sweep_again_returns_its_runner(tmp_path: Path) -> None:
    """A second Launch (another click, another page) while the sweep runs. Catches: a second
    runner started on the same sweep, training the same run folders at once."""
    store = RunStore(tmp_path)
    sweep = build_sweep(make_config(device="cpu", **ENDLESS), [], 1)
    sessions = SweepSessions(store, workers=1)
    try:
        first = sessions.launch(sweep, "local")
        assert sessions.launch(sweep, "local") is first
        assert sessions.active(sweep.sweep_id)
    finally:
        sessions.stop_all()
    assert first.done
