"""``python -m dml_core train`` and its training thread: the command ends after the thread."""

import json
import time
from pathlib import Path

import pytest

from dml_core.cli import main


def test_train_returns_only_once_its_training_thread_has_ended(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``train`` waits for its training thread to end, not only for the run's final state.

    Seen once in ``bench app`` on 2 cores (2026-11-30): ``train --json`` aborted after its last
    step (SIGABRT, "terminate called without an active exception"). The run's state turns
    final before the daemon thread has freed the trainer; a main thread that returns then
    leaves the interpreter to finalise under it. Here that teardown is made to take 1 s.
    Catches a ``run_train`` that stops waiting at the final state (tried: fails).
    """
    from dml_core.services import jobs

    real_train, real_start, started = jobs.train_and_save, jobs.TrainingJob.start, []

    def slow_teardown(*args: object, **kwargs: object) -> object:
        state = real_train(*args, **kwargs)
        time.sleep(1.0)  # the trainer's memory being freed, after the final state is saved
        return state

    def start(job: jobs.TrainingJob) -> None:
        started.append(job)
        real_start(job)

    monkeypatch.setattr(jobs, "train_and_save", slow_teardown)
    monkeypatch.setattr(jobs.TrainingJob, "start", start)
    flags = ["--steps", "2", "--probe-size", "50", "--no-final-eval", "--json"]
    assert main(["train", *flags, "--runs", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "finished"
    assert not started[0]._thread.is_alive()
