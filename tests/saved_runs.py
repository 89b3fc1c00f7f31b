"""Tiny real runs for the tests that read saved runs: trained and saved as the app does it."""

from __future__ import annotations

from pathlib import Path

from dml_core.config import RunConfig, make_config
from dml_core.runs import RunState, RunStore
from dml_core.services import jobs


def train_and_save(store: RunStore, cfg: RunConfig, name: str | None = None) -> str:
    """Train ``cfg`` to its last step in this thread with ``jobs.train_and_save``, the save
    path of the app's jobs, the CLI and the lessons.

    Returns the run id; fails the test if the run does not finish.
    """
    run_id = store.create(cfg, name)
    state = jobs.train_and_save(cfg, store, run_id)
    assert state is RunState.FINISHED, store.status(run_id).get("message")
    return run_id


def make_tiny_run(
    root: Path, run_id: str = "tiny-digits", split: str = "standard", steps: int = 30
) -> RunStore:
    """A tiny triplet + semi-hard run on digits (D=8, 4 x 8 batches, 2 snapshots after the
    untrained one), saved under ``root``; returns its store."""
    cfg = make_config(
        dataset="digits",
        split=split,
        embedding_dim=8,
        classes_per_batch=4,
        samples_per_class=8,
        steps=steps,
        snapshot_every=steps // 2,
        probe_size=100,
        final_eval=False,
        device="cpu",
    )
    store = RunStore(root)
    train_and_save(store, cfg, run_id)
    return store
