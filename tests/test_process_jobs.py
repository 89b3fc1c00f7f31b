"""services.process_jobs: the app's runs, each trained in a child process.

Catches (tried once each): a ProcessJob that trains in a thread of this process (the run's
recorded pid is ours); a child that never reads the order (pause, stop) and trains on; a pump
that leaves a run whose child was killed "running" (the page waits forever); a manager that
does not hand its standby to the next run (a second child is started); status.json written
without the cross-process lock (updates of two processes lost).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from dml_core.config import make_config
from dml_core.runs import RunState, RunStore
from dml_core.services.child_process import start_without_main
from dml_core.services.job_manager import JobManager
from dml_core.services.jobs import resumable
from dml_core.services.process_jobs import Standby
from dml_core.snapshot import Snapshot
from tests.test_jobs import wait_for
from tests.test_projection_worker import state_once_ended

FAST = {"steps": 60, "snapshot_every": 20, "probe_size": 200, "embedding_dim": 8}
ENDLESS = {**FAST, "steps": 1_000_000, "final_eval": False}


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[JobManager]:
    """A job manager that trains in child processes, closed after the test."""
    jobs = JobManager(RunStore(tmp_path), processes=True)
    yield jobs
    jobs.close()


def finish(manager: JobManager, run_id: str, timeout: float = 180.0) -> None:
    """Wait until the manager started the run's job, then until the job ended."""
    wait_for(lambda: manager.get(run_id).state is not RunState.QUEUED)
    manager.get(run_id).join(timeout)


def test_a_run_trains_in_a_child_process_and_the_job_shows_what_it_saved(
    manager: JobManager,
) -> None:
    run_id = manager.submit(make_config(**FAST))
    finish(manager, run_id)
    job = manager.get(run_id)
    progress = job.progress()
    assert progress.state == RunState.FINISHED
    assert progress.step == 60
    status = manager.store.status(run_id)
    assert status["state"] == RunState.FINISHED
    assert status["pid"] not in (None, os.getpid())  # trained by another process
    assert manager.store.snapshot_steps(run_id) == (0, 20, 40, 60)
    assert progress.snapshots == 4
    assert isinstance(job.latest, Snapshot)
    assert job.latest.step == 60
    assert job.final == status["final_metrics"]
    assert job.final["precision_at_1"] > 0.5
    assert job.exitcode == 0


def test_pause_resume_and_stop_reach_the_child(manager: JobManager) -> None:
    run_id = manager.submit(make_config(**ENDLESS))
    job = manager.get(run_id)
    wait_for(lambda: job.progress().step > 5)
    job.pause()
    wait_for(lambda: job.progress().state == RunState.PAUSED)
    assert manager.store.status(run_id)["state"] == RunState.PAUSED
    paused_at = job.progress().step
    time.sleep(0.6)
    assert job.progress().step == paused_at
    job.resume()
    wait_for(lambda: job.progress().step > paused_at)
    assert job.progress().state == RunState.RUNNING
    job.stop()
    job.join(60)
    stopped_at = job.progress().step
    assert job.progress().state == RunState.STOPPED
    assert manager.store.status(run_id)["state"] == RunState.STOPPED
    assert manager.store.snapshot_steps(run_id)[-1] == stopped_at
    assert manager.store.load_checkpoint(run_id)["step"] == stopped_at


def test_a_killed_child_leaves_its_run_interrupted_and_resumable(manager: JobManager) -> None:
    run_id = manager.submit(make_config(**ENDLESS))
    job = manager.get(run_id)
    wait_for(lambda: job.progress().snapshots >= 2)
    child = manager.store.status(run_id)["pid"]
    assert child != os.getpid()  # never this test's own process
    os.kill(child, signal.SIGKILL)
    job.join(30)
    assert job.done
    assert job.progress().state == RunState.INTERRUPTED
    assert "exit code -9" in job.progress().message
    status = manager.store.status(run_id)
    assert status["state"] == RunState.INTERRUPTED
    record = resumable(manager.store, run_id)  # raises if it cannot be resumed
    assert manager.store.load_checkpoint(run_id)["step"] >= 20
    assert record.status["state"] == RunState.INTERRUPTED


def test_the_standby_started_while_idle_trains_the_next_run(manager: JobManager) -> None:
    wait_for(lambda: manager._standby is not None and manager._standby.alive())
    standby_pid = manager._standby.process.pid
    run_id = manager.submit(make_config(**{**FAST, "final_eval": False}))
    finish(manager, run_id)
    assert manager.store.status(run_id)["pid"] == standby_pid
    assert manager.get(run_id).progress().state == RunState.FINISHED
    # once nothing trains, a new child is started ahead for the run after
    wait_for(lambda: manager._standby is not None and manager._standby.alive())
    assert manager._standby.process.pid != standby_pid


def _write_fields(root: str, run_id: str, prefix: str, count: int) -> None:
    store = RunStore(root)
    for i in range(count):
        store.set_status(run_id, **{f"{prefix}{i}": i})


def test_status_updates_of_two_processes_are_all_kept(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    run_id = store.create(make_config(**FAST))
    ctx = multiprocessing.get_context("spawn")
    writers = [
        ctx.Process(target=_write_fields, args=(str(tmp_path), run_id, prefix, 150))
        for prefix in ("a", "b")
    ]
    for writer in writers:
        start_without_main(writer)  # not an AppTest's script left as __main__
    for writer in writers:
        writer.join(120)
        assert writer.exitcode == 0
    status = store.status(run_id)
    missing = [f"{p}{i}" for p in "ab" for i in range(150) if f"{p}{i}" not in status]
    assert not missing, missing


SERVER = """
import json, os, signal, sys, time
sys.path.insert(0, {root!r})
from dml_core.config import make_config
from dml_core.runs import RunStore
from dml_core.services.job_manager import JobManager

if __name__ == "__main__":
    manager = JobManager(RunStore({runs!r}), processes=True)
    run_id = manager.submit(make_config(**{endless!r}))
    while manager.get(run_id).progress().snapshots < 2:
        time.sleep(0.05)
    manager.pause(run_id)  # a paused child sends nothing: only the server's end can end it
    while manager.get(run_id).progress().state != "paused":
        time.sleep(0.05)
    pid = manager.store.status(run_id)["pid"]
    with open({out!r}, "w") as f:
        json.dump({{"run_id": run_id, "child": pid}}, f)
    os.kill(os.getpid(), signal.SIGKILL)  # the server dies without stopping anything
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads Linux's /proc")
def test_a_run_s_child_ends_with_a_killed_server_and_its_run_reads_interrupted(
    tmp_path: Path,
) -> None:
    """A paused run's child ends with its killed server; the run reads "interrupted".

    Catches (tried once each): a child without ``end_with_parent`` (paused, it sends nothing
    through its pipe, so nothing broke: it slept on forever); a zombie child counted alive
    (the run read "running" until whoever adopted the child reaped it).
    """
    script, out, runs = tmp_path / "server.py", tmp_path / "child.json", tmp_path / "runs"
    root = str(Path(__file__).resolve().parents[1])
    script.write_text(SERVER.format(root=root, runs=str(runs), endless=ENDLESS, out=str(out)))
    with (tmp_path / "log").open("w") as log:  # a file: an orphan holding it cannot block us
        done = subprocess.run([sys.executable, str(script)], stdout=log, stderr=log, timeout=300)
    assert done.returncode == -signal.SIGKILL, (tmp_path / "log").read_text()[-2000:]
    info = json.loads(out.read_text())
    state = state_once_ended(info["child"])
    assert state in (None, "Z"), f"the run's child outlived its server (state {state})"
    store = RunStore(runs)
    assert store.status(info["run_id"])["state"] == RunState.INTERRUPTED, state
    resumable(store, info["run_id"])  # raises if it cannot be resumed


def test_a_child_does_not_run_the_page_the_server_ran_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Streamlit installs each page run's script as ``__main__``; a spawned child must not
    run it again (in an AppTest's worker, that script failed in every child).

    Catches (tried once): ``Standby`` started with ``process.start()``, whose child ran the
    page below and exited 3 before taking its run.
    """
    page = tmp_path / "page.py"
    page.write_text("raise SystemExit(3)\n")
    main = types.ModuleType("__main__")
    main.__file__ = str(page)
    monkeypatch.setitem(sys.modules, "__main__", main)
    standby = Standby()
    try:
        time.sleep(3.0)  # long enough for the page to have run, were it run
        assert standby.alive(), standby.process.exitcode
    finally:
        standby.close()
    assert sys.modules["__main__"] is main  # the server's own __main__ is back
