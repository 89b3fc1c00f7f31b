"""Fault injection: killed processes, full disks and resumes never lose a run."""

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dml_core.config import make_config
from dml_core.runs import RunStore
from dml_core.services.jobs import JobManager, TrainingJob

ROOT = Path(__file__).resolve().parents[1]


def wait_for(predicate, timeout: float = 300.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.1)


def test_kill_9_mid_training_then_resume_to_the_end(tmp_path: Path) -> None:
    args = ["train", "--steps", "200", "--snapshot-every", "10", "--probe-size", "200",
            "--embedding-dim", "8", "--no-final-eval", "--out", str(tmp_path)]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "dml_core", *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    store = RunStore(tmp_path)
    wait_for(lambda: store.list() and len(store.snapshot_steps(store.list()[0])) >= 3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    (run_id,) = store.list()
    status = store.status(run_id)
    assert status["state"] == "interrupted"
    assert "Resume it" in status["message"]
    steps = store.snapshot_steps(run_id)
    for step in steps:  # every file written before the kill loads
        store.load_snapshot(run_id, step)
    checkpoint_step = store.load_checkpoint(run_id)["step"]
    assert checkpoint_step in steps
    manager = JobManager(store, max_running=1)
    manager.resume(run_id)
    wait_for(lambda: manager.get(run_id).done)
    manager.get(run_id).join(30)
    assert manager.get(run_id).progress().state == "finished"
    assert store.status(run_id)["state"] == "finished"
    final_steps = store.snapshot_steps(run_id)
    assert final_steps[-1] == 200
    assert set(range(0, 201, 10)) <= set(final_steps)
    assert store.history(run_id)["step"].is_monotonic_increasing


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
