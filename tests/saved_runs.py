"""Tiny real runs for the tests that read saved runs: trained and saved as the app does it."""

from __future__ import annotations

from dml_core.config import RunConfig
from dml_core.jobs import TrainingJob
from dml_core.runs import RunStore


def train_and_save(store: RunStore, cfg: RunConfig, name: str | None = None) -> str:
    """Train ``cfg`` to its last step with a TrainingJob (the app's own save path).

    Returns the run id; fails the test if the run does not finish.
    """
    run_id = store.create(cfg, name)
    job = TrainingJob(cfg, store, run_id)
    job.start()
    job.join()
    assert job.progress().state == "finished", job.progress().message
    return run_id
