"""Fault injection: killed processes, full disks and resumes never lose a run."""

import errno
import signal
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from dml_core.config import make_config
from dml_core.runs import RunStore
from dml_core.services.jobs import JobManager, TrainingJob
from tests.fault_runs import Child, assert_store_loads, snapshot_files


def wait_for(predicate, timeout: float = 300.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.1)


def test_kill_9_mid_training_then_resume_to_the_end(tmp_path: Path) -> None:
    """kill -9 at an unplanned moment of a CLI run (just after its checkpoint of step 40 the
    child goes on training and writing), then resume through the JobManager to the end."""
    root = tmp_path / "runs"
    args = ["train", "--steps", "300", "--snapshot-every", "20", "--probe-size", "120",
            "--embedding-dim", "8", "--classes-per-batch", "4", "--samples-per-class", "8",
            "--no-final-eval", "--out", str(root)]  # fmt: skip
    child = Child(tmp_path / "child.log", "--phase", "after-checkpoint", "--step", "40",
                  "--cli", *args)  # fmt: skip
    child.wait_for_line("PHASE after-checkpoint")
    assert child.signal(signal.SIGKILL) == -signal.SIGKILL
    store = RunStore(root)
    (run_id,) = store.list()
    status = store.status(run_id)
    assert status["state"] == "interrupted"
    assert "Resume it" in status["message"]
    assert_store_loads(store)  # every file written before the kill loads
    checkpoint_step = store.load_checkpoint(run_id)["step"]
    assert 40 <= checkpoint_step < 300
    kept = {s: f for s, f in snapshot_files(store, run_id).items() if s <= checkpoint_step}
    manager = JobManager(store, max_running=1)
    manager.resume(run_id)
    wait_for(lambda: manager.get(run_id) is not None and manager.get(run_id).done)
    manager.get(run_id).join(30)
    assert manager.get(run_id).progress().state == "finished"
    assert store.status(run_id)["state"] == "finished"
    assert store.snapshot_steps(run_id) == tuple(range(0, 301, 20))
    # the table as written (not store.history, which sorts): one row per snapshot, in order
    written = pd.read_csv(store.path(run_id) / "metrics.csv")["step"].tolist()
    assert written == list(range(0, 301, 20))
    after = snapshot_files(store, run_id)
    assert {s: after[s] for s in kept} == kept  # the resume rewrote nothing it had


def test_a_finished_run_cannot_be_resumed(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    run_id = store.create(make_config(steps=5, probe_size=100, final_eval=False))
    store.set_status(run_id, state="finished")
    with pytest.raises(ValueError, match="Only interrupted or stopped runs can be resumed"):
        JobManager(store).resume(run_id)


def test_disk_full_stops_training_with_a_clear_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = RunStore(tmp_path)
    cfg = make_config(steps=1000, snapshot_every=10, probe_size=100, embedding_dim=8)
    run_id = store.create(cfg)
    saved: list[int] = []
    original = RunStore.save_snapshot

    def save_until_full(self: RunStore, rid: str, snap) -> None:
        if len(saved) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        saved.append(snap.step)
        original(self, rid, snap)

    monkeypatch.setattr(RunStore, "save_snapshot", save_until_full)
    job = TrainingJob(cfg, store, run_id)
    job.start()
    job.join(120)
    progress = job.progress()
    assert progress.state == "failed"
    assert "Could not save the run" in progress.message
    assert "No space left on device" in progress.message
    assert progress.step <= 20  # training did not go on without saving
    assert store.snapshot_steps(run_id) == (0, 10)
    assert store.status(run_id)["state"] == "failed"


def test_out_of_gpu_memory_fails_the_run_with_advice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection: the step raises CUDA's OOM error (simulated; CI has no GPU)."""
    from dml_core.train import Trainer

    def oom(self: Trainer) -> dict:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(Trainer, "train_step", oom)
    store = RunStore(tmp_path)
    cfg = make_config(steps=50, probe_size=100, embedding_dim=8)
    run_id = store.create(cfg)
    job = TrainingJob(cfg, store, run_id)
    job.start()
    job.join(120)
    assert job.progress().state == "failed"
    assert "Out of GPU memory" in job.progress().message
    assert "smaller batch" in job.progress().message
    assert store.status(run_id)["state"] == "failed"
    assert store.snapshot_steps(run_id) == (0,)  # the untrained snapshot is kept
