"""kill -9 at named points of a run's writes, and SIGTERM: the store stays whole and resumable.

A child process (``tests/fault_child.py``) trains ``fault_runs.tiny_config()`` and, at the
write of step 30 named by the test, prints ``PHASE <name>`` and blocks; the test reads that
line and kills the child with SIGKILL (no sleeps: the marker is the trigger). Afterwards every
run in the store loads, no file under a final name is partial (each parses whole, and the
metrics rows it holds are the uninterrupted run's), the file being written is its previous
version or absent, and the run resumes to exactly the uninterrupted run's end without
rewriting the snapshots its checkpoint already covers.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from dml_core.runs import RunStore
from dml_core.services.jobs import resumable
from dml_core.train import Trainer
from tests.fault_runs import (
    EVERY,
    MIDWAY,
    WALL_CLOCK_COLUMNS,
    Child,
    Outcome,
    assert_same_training,
    assert_store_loads,
    snapshot_files,
    tiny_config,
    train,
)

FINAL_NAMES = {"config.json", "status.json", "metrics.csv", "checkpoint.pt", "snapshots"}
# (phase, file being written): where the child is killed, and what must be on disk then
PHASES = {
    ("inside-temp-write", "checkpoint"): {"checkpoint": EVERY, "snapshots": (0, EVERY, MIDWAY)},
    ("inside-temp-write", "metrics"): {"checkpoint": EVERY, "history": (0, EVERY)},
    ("between-fsync-and-rename", "snapshot"): {"checkpoint": EVERY, "snapshots": (0, EVERY)},
    ("between-fsync-and-rename", "status"): {"checkpoint": MIDWAY, "status_step": EVERY},
    ("between-snapshot-and-metrics", "snapshot"): {
        "checkpoint": EVERY,
        "snapshots": (0, EVERY, MIDWAY),
        "history": (0, EVERY),
    },
}


def kill_at(tmp_path: Path, phase: str, kind: str) -> RunStore:
    """Run the child until ``phase`` of the step-30 write of ``kind``, then kill -9 it."""
    config = tmp_path / "config.json"
    config.write_text(tiny_config().model_dump_json())
    root = tmp_path / "runs"
    args = ["--phase", phase, "--file", kind, "--step", str(MIDWAY), "--root", str(root),
            "--config", str(config), "--run-id", "killed"]  # fmt: skip
    child = Child(tmp_path / "child.log", *args)
    child.wait_for_line(f"PHASE {phase}")
    assert child.signal(signal.SIGKILL) == -signal.SIGKILL
    return RunStore(root)


@pytest.mark.parametrize(("phase", "kind"), list(PHASES))
def test_kill_9_at_a_write_phase_leaves_a_whole_resumable_run(
    phase: str, kind: str, tmp_path: Path, reference_run: Outcome
) -> None:
    store = kill_at(tmp_path, phase, kind)
    expect = PHASES[phase, kind]
    assert store.list() == ["killed"]
    status = store.status("killed")
    assert status["state"] == "interrupted"
    assert_store_loads(store)
    path = store.path("killed")
    visible = {p.name for p in path.iterdir() if not p.name.startswith(".")}
    assert visible <= FINAL_NAMES
    assert store.load_checkpoint("killed")["step"] == expect["checkpoint"]
    if "snapshots" in expect:
        assert store.snapshot_steps("killed") == expect["snapshots"]
    history = store.history("killed")
    if "history" in expect:
        assert tuple(history["step"]) == expect["history"]
    if "status_step" in expect:
        assert json.loads((path / "status.json").read_text())["step"] == expect["status_step"]
    # the rows on disk are whole: each is the uninterrupted run's row of that step
    want = reference_run.history.set_index("step").loc[history["step"]].reset_index()
    skip = [*WALL_CLOCK_COLUMNS, "pair_overlap"]  # see test_resume: pair samples (snapshots)
    pd.testing.assert_frame_equal(history.drop(columns=skip), want.drop(columns=skip))

    checkpoint = expect["checkpoint"]
    kept = {s: f for s, f in snapshot_files(store, "killed").items() if s <= checkpoint}
    job = train(store, "killed", resume=True)
    assert job.progress().state == "finished", job.progress().message
    assert_store_loads(store)
    after = snapshot_files(store, "killed")
    assert {s: after[s] for s in kept} == kept  # the resume rewrote none of them
    assert_same_training(Outcome.read(store, "killed"), reference_run, exact_snapshots=False)


def test_sigterm_stops_the_cli_within_10_s_and_leaves_a_resumable_run(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    cli = ["train", "--steps", "100000", "--snapshot-every", str(EVERY), "--probe-size", "120",
           "--embedding-dim", "8", "--classes-per-batch", "4", "--samples-per-class", "8",
           "--no-final-eval", "--out", str(root)]  # fmt: skip
    child = Child(tmp_path / "child.log", "--phase", "after-checkpoint", "--step", str(EVERY),
                  "--cli", *cli)  # fmt: skip
    child.wait_for_line("PHASE after-checkpoint")
    try:
        child.signal(signal.SIGTERM, timeout=10.0)  # a bound on the wait, not a measurement
    except subprocess.TimeoutExpired:
        child.proc.kill()
        pytest.fail("the trainer did not stop within 10 s of SIGTERM")
    store = RunStore(root)
    (run_id,) = store.list()
    record = resumable(store, run_id)  # interrupted or stopped, with a checkpoint
    assert_store_loads(store)
    state = store.load_checkpoint(run_id)
    assert state["step"] >= EVERY
    trainer = Trainer(record.config)
    trainer.load_state_dict(state)
    (snap,) = trainer.run(steps=state["step"] + 1)  # it trains on from there
    assert snap.step == state["step"] + 1
