"""A stopped run resumed from its checkpoint ends exactly as the uninterrupted run.

The run (``fault_runs.tiny_config``: 60 steps, a snapshot and checkpoint every 15) is stopped
right after its checkpoint at step 30, then resumed. Training on the CPU is deterministic for
a seed, so a resume that restores everything (weights, optimiser, step, sampler RNG) trains
steps 31-60 only and ends with the very weights, final metrics and metrics table of the
reference run, leaving the files written before the stop as they were.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pandas as pd
import pytest

from dml_core.runs import RunStore
from dml_core.services.jobs import TrainingJob
from dml_core.train import Trainer
from tests.fault_runs import (
    MIDWAY,
    STEPS,
    TEST_THREADS,
    Outcome,
    assert_same_training,
    file_identity,
    snapshot_files,
    temp_files,
    tiny_config,
    train,
)


@dataclass(frozen=True)
class Resumed:
    """A run stopped after its checkpoint at MIDWAY, then resumed: what each part did."""

    store: RunStore
    run_id: str
    stopped_state: str
    files_before: dict[int, tuple[bytes, int, int]]
    checkpoint_before: tuple[bytes, int, int]
    history_before: pd.DataFrame
    resumed_state: str
    steps_trained: list[int]  # the step number of each optimiser step of the resumed job


def stop_after_checkpoint(store: RunStore, run_id: str, step: int, mp: pytest.MonkeyPatch) -> str:
    """Train until the checkpoint of ``step`` is saved, then stop (as the Stop button does)."""
    # TEST_THREADS, as fault_runs.train trains the reference: the same float sums
    job = TrainingJob(store.load(run_id).config, store, run_id, threads=TEST_THREADS)
    save_checkpoint = RunStore.save_checkpoint

    def save_then_stop(self: RunStore, rid: str, state: dict) -> None:
        save_checkpoint(self, rid, state)
        if state["step"] == step:
            job.stop()  # takes effect before step + 1: the checkpoint is the last state

    with mp.context() as patch:
        patch.setattr(RunStore, "save_checkpoint", save_then_stop)
        job.start()
        job.join()
    return job.progress().state


@pytest.fixture(scope="module")
def resumed(tmp_path_factory: pytest.TempPathFactory) -> Resumed:
    """The stop-and-resume run, made once for the tests of this module."""
    store = RunStore(tmp_path_factory.mktemp("resume"))
    run_id = store.create(tiny_config(), "resumed")
    with pytest.MonkeyPatch.context() as mp:
        stopped_state = stop_after_checkpoint(store, run_id, MIDWAY, mp)
        files_before = snapshot_files(store, run_id)
        checkpoint_before = file_identity(store.path(run_id) / "checkpoint.pt")
        history_before = store.history(run_id)
        steps_trained: list[int] = []
        train_step = Trainer.train_step

        def counted_step(self: Trainer) -> dict:
            steps_trained.append(self.step + 1)
            return train_step(self)

        mp.setattr(Trainer, "train_step", counted_step)
        job = train(store, run_id, resume=True)
    return Resumed(
        store,
        run_id,
        stopped_state,
        files_before,
        checkpoint_before,
        history_before,
        job.progress().state,
        steps_trained,
    )


def test_the_run_stops_at_its_checkpoint(resumed: Resumed) -> None:
    assert resumed.stopped_state == "stopped"
    assert sorted(resumed.files_before) == [0, 15, MIDWAY]
    assert resumed.history_before["step"].tolist() == [0, 15, MIDWAY]


def test_resume_trains_only_the_steps_after_the_checkpoint(resumed: Resumed) -> None:
    assert resumed.resumed_state == "finished"
    assert resumed.steps_trained == list(range(MIDWAY + 1, STEPS + 1))


def test_resume_ends_with_the_weights_and_metrics_of_the_uninterrupted_run(
    resumed: Resumed, reference_run: Outcome
) -> None:
    got = Outcome.read(resumed.store, resumed.run_id)
    assert_same_training(got, reference_run, exact_snapshots=False)


def test_resume_leaves_what_was_written_before_the_checkpoint_untouched(
    resumed: Resumed,
) -> None:
    after = snapshot_files(resumed.store, resumed.run_id)
    for step, before in resumed.files_before.items():
        assert after[step] == before, f"the snapshot of step {step} was rewritten"
    history = resumed.store.history(resumed.run_id)
    pd.testing.assert_frame_equal(
        history.iloc[: len(resumed.history_before)], resumed.history_before, check_exact=True
    )
    checkpoint = resumed.store.path(resumed.run_id) / "checkpoint.pt"
    assert file_identity(checkpoint) != resumed.checkpoint_before  # it moved on to step 60
    assert temp_files(resumed.store, resumed.run_id) == []


def test_resumed_snapshots_sample_the_same_pairs(resumed: Resumed, reference_run: Outcome) -> None:
    got = Outcome.read(resumed.store, resumed.run_id)
    assert_same_training(got, reference_run, exact_snapshots=True)


LABEL_FREE = {"supervision": "views", "loss": "ntxent", "miner": "all"}


@pytest.fixture(scope="module")
def views_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Outcome, Outcome]:
    """A label-free run stopped after its checkpoint at MIDWAY and resumed, and the same run
    trained without interruption."""
    store = RunStore(tmp_path_factory.mktemp("resume-views"))
    cfg = tiny_config(**LABEL_FREE)
    reference_id = store.create(cfg, "views-reference")
    train(store, reference_id)
    run_id = store.create(cfg, "views-resumed")
    with pytest.MonkeyPatch.context() as mp:
        assert stop_after_checkpoint(store, run_id, MIDWAY, mp) == "stopped"
    train(store, run_id, resume=True)
    return Outcome.read(store, run_id), Outcome.read(store, reference_id)


def test_a_resumed_views_run_ends_as_the_uninterrupted_one(
    views_runs: tuple[Outcome, Outcome],
) -> None:
    """The checkpoint holds the generator that draws the images and their augmentations.
    Catches it not restored (or the augmentation drawn from another generator): the resumed
    steps would see other views and end with other weights."""
    resumed_run, reference = views_runs
    assert_same_training(resumed_run, reference, exact_snapshots=True)


def test_a_resume_forgets_what_was_recorded_after_its_checkpoint(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A dead attempt may have recorded snapshots past its last checkpoint (a Ray worker
    sends one at most every 10 s): the resume starts again at the checkpoint, so they go.

    Here the attempt stopped at its checkpoint (step 30) and left a snapshot and a metrics
    row at step 45, as a worker that died later would; the resume stops after one step.
    Catches: the resume keeping them (the run would show step 45 beside a stop at 31).
    """
    store = RunStore(tmp_path_factory.mktemp("resume-forget"))
    run_id = store.create(tiny_config(), "forget")
    with pytest.MonkeyPatch.context() as mp:
        assert stop_after_checkpoint(store, run_id, MIDWAY, mp) == "stopped"
        dead = 45
        snap = store.load_snapshot(run_id, MIDWAY)
        store.save_snapshot(run_id, dataclasses.replace(snap, step=dead))
        assert store.snapshot_steps(run_id) == (0, 15, MIDWAY, dead)
        job = TrainingJob(
            store.load(run_id).config, store, run_id, resume=True, threads=TEST_THREADS
        )
        train_step = Trainer.train_step

        def one_step_then_stop(self: Trainer) -> dict:
            job.stop()  # takes effect before the next step
            return train_step(self)

        mp.setattr(Trainer, "train_step", one_step_then_stop)
        job.start()
        job.join()
    assert job.progress().state == "stopped"
    assert store.snapshot_steps(run_id) == (0, 15, MIDWAY, MIDWAY + 1)
    assert store.history(run_id)["step"].tolist() == [0, 15, MIDWAY, MIDWAY + 1]
