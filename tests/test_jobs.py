import time
from pathlib import Path

import pytest
import torch

from dml_core.config import make_config
from dml_core.runs import RunStore
from dml_core.services.jobs import JobManager, TrainingJob
from dml_core.train import Trainer

FAST = {
    "steps": 60,
    "snapshot_every": 20,
    "probe_size": 200,
    "embedding_dim": 8,
    "final_eval": False,
}


def wait_for(predicate, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("timed out")
        time.sleep(0.05)


def test_job_trains_in_background_and_saves_every_snapshot(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    cfg = make_config(**{**FAST, "final_eval": True})
    run_id = store.create(cfg)
    job = TrainingJob(cfg, store, run_id)
    job.start()
    job.join(120)
    progress = job.progress()
    assert progress.state == "finished"
    assert progress.step == 60
    assert store.snapshot_steps(run_id) == (0, 20, 40, 60)
    status = store.status(run_id)
    assert status["state"] == "finished"
    assert status["final_metrics"]["precision_at_1"] > 0.5
    assert store.load_checkpoint(run_id)["step"] == 60


def test_pause_resume_stop(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    cfg = make_config(**{**FAST, "steps": 100_000})
    run_id = store.create(cfg)
    job = TrainingJob(cfg, store, run_id)
    job.start()
    wait_for(lambda: job.progress().state == "running" and job.latest is not None)
    job.pause()
    time.sleep(0.3)
    assert job.progress().state == "paused"
    paused_at = job.progress().step
    time.sleep(0.5)
    assert job.progress().step == paused_at
    job.resume()
    assert job.progress().state == "running"
    job.stop()
    job.join(30)
    assert job.progress().state == "stopped"
    assert store.status(run_id)["state"] == "stopped"
    assert store.snapshot_steps(run_id)[-1] > 0  # a last snapshot at the stopping step


def test_divergence_is_recorded_and_last_good_snapshot_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection: at step 30 a weight becomes NaN, as after a blown-up update."""
    original = Trainer.train_step

    def poisoned_step(self: Trainer) -> dict:
        if self.step == 30:
            with torch.no_grad():
                self.net.trunk[1].weight[0, 0] = float("nan")
        return original(self)

    monkeypatch.setattr(Trainer, "train_step", poisoned_step)
    store = RunStore(tmp_path)
    cfg = make_config(**FAST)
    run_id = store.create(cfg)
    job = TrainingJob(cfg, store, run_id)
    job.start()
    job.join(120)
    progress = job.progress()
    assert progress.state == "diverged"
    assert "diverged at step 31" in progress.message
    assert store.status(run_id)["diverged_at"] == 31
    assert store.snapshot_steps(run_id) == (0, 20)
    assert store.load_checkpoint(run_id)["step"] == 20
    assert torch.isfinite(store.load_checkpoint(run_id)["net"]["trunk.1.weight"]).all()


def test_manager_caps_concurrent_jobs_and_queues_the_rest(tmp_path: Path) -> None:
    manager = JobManager(RunStore(tmp_path), max_running=1)
    cfg = make_config(**{**FAST, "steps": 100_000})
    first = manager.submit(cfg)
    second = manager.submit(cfg)
    wait_for(lambda: manager.get(first).state == "running")
    time.sleep(0.3)
    assert manager.get(second).state == "queued"
    assert manager.queue_position(second) == 1
    manager.stop(first)
    wait_for(lambda: manager.get(second).state in ("starting", "running"))
    assert manager.queue_position(second) is None
    manager.stop_all()
    assert manager.get(first).done
    assert manager.get(second).done
