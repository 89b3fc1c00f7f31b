"""Ctrl-C in the commands that train: real processes, sent SIGINT once their runs train.

``python -m dml_core train`` and ``sweep`` stop their runs after a last snapshot, wait for
them, and record and print them stopped, each with its checkpoint at its last snapshot (so a
resume goes on from there). Both once returned before their runs stopped: the jobs waited with
``Thread.join``, which in CPython 3.11 returns at once after a join that a Ctrl-C cut short.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from dml_core.runs import RunState, RunStore
from dml_core.sweeps import SweepState, SweepStore
from tests.test_sweeps import TINY

WAIT_S = 120  # a bound on each wait, not a timing check


def interrupted(command: list[str], store: RunStore, step: int) -> dict[str, Any]:
    """Run ``python -m dml_core COMMAND``; Ctrl-C once a run of ``store`` reached ``step``.

    The command must exit 0; returns the JSON it printed.
    """
    cmd = [sys.executable, "-m", "dml_core", *command]
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def training() -> bool:
        return any(store.status(r).get("step", 0) >= step for r in store.list())

    deadline = time.monotonic() + WAIT_S
    while not training() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=WAIT_S)
    assert process.returncode == 0, err
    return json.loads(out)


def assert_stopped_at_its_last_snapshot(store: RunStore, run_id: str) -> int:
    """The run reads stopped, at its last snapshot, with its checkpoint there; its step."""
    status = store.status(run_id)
    assert status["state"] == RunState.STOPPED, status
    last = store.snapshot_steps(run_id)[-1]
    assert status["step"] == last
    assert store.load_checkpoint(run_id)["step"] == last
    return last


def test_ctrl_c_stops_the_run_and_prints_it_stopped(tmp_path: Path) -> None:
    """``train``: the run is saved and printed "stopped" (exit status 0).

    Catches (seen before the fix): the command printing the run as "running", exiting 1 and
    leaving it "running" on disk.
    """
    store = RunStore(tmp_path)
    flags = ["--steps", "100000", "--snapshot-every", "5", "--runs", str(tmp_path), "--json"]
    result = interrupted(["train", *flags], store, step=10)
    assert result["state"] == RunState.STOPPED
    assert assert_stopped_at_its_last_snapshot(store, result["run_id"]) == result["steps"] >= 10


def test_ctrl_c_stops_the_sweep_and_records_it_stopped(tmp_path: Path) -> None:
    """``sweep``: every run stops (a queued one never starts), and the sweep is recorded and
    printed "stopped" (exit status 0).

    Catches (seen before the fix): the command printing its result while the runs still
    trained, and the sweep left "running" on disk.
    """
    store = RunStore(tmp_path)
    flags = [*TINY, "--steps", "100000", "--seeds", "2", "--runs", str(tmp_path), "--json"]
    result = interrupted(["sweep", *flags], store, step=6)
    assert result["state"] == SweepState.STOPPED
    (sweep_id,) = SweepStore(store).list()
    assert SweepStore(store).status(sweep_id)["state"] == SweepState.STOPPED
    for run in result["runs"]:
        if store.snapshot_steps(run["run_id"]):  # it trained
            assert_stopped_at_its_last_snapshot(store, run["run_id"])
        else:
            assert store.status(run["run_id"])["state"] == RunState.STOPPED
