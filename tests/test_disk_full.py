"""A full disk at each kind of write: the run fails, says why, and loses nothing it had saved.

The disk fills up after the checkpoint of step 15 (``fault_runs.tiny_config``: a snapshot and
checkpoint every 15 steps), at the first write of one kind of file (snapshot, metrics table,
checkpoint or status), and stays full: from then on every write fails with ENOSPC at its
fsync, after only half of its bytes reached the file. The run must end "failed" with a message
naming the full disk, leave no temporary file behind, keep every file it had saved whole, and
its checkpoint must still be a sound resume point: resumed once space is free, it ends as the
uninterrupted run.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import pytest

from dml_core.runs import RunStore
from tests.fault_runs import (
    EVERY,
    KINDS,
    MIDWAY,
    STEPS,
    Outcome,
    assert_same_training,
    assert_store_loads,
    final_name,
    temp_files,
    tiny_config,
    train,
)

# written once, after the last step: the final evaluation's embeddings (RunStore.save_embeddings)
FINAL_KINDS = {"embeddings": re.compile(r"embeddings\.npz")}


class FullDisk:
    """``os.fsync`` that fails with ENOSPC once the disk is full, truncating the file first.

    The disk becomes full at the first write of a ``kind`` file after the checkpoint of
    ``after_step``.
    """

    def __init__(self, kind: str, after_step: int) -> None:
        self.kind, self.after_step = kind, after_step
        self.armed = self.full = False
        self.failed: list[str] = []  # final names of the writes that failed
        self._fsync = os.fsync

    def fsync(self, fd: int) -> None:
        """Fail once the disk is full; fill it at the first ``kind`` write once armed."""
        name = final_name(os.readlink(f"/proc/self/fd/{fd}"))
        if self.armed and {**KINDS, **FINAL_KINDS}[self.kind].fullmatch(name):
            self.full = True
        if self.full:
            self.failed.append(name)
            os.ftruncate(fd, os.fstat(fd).st_size // 2)  # the write did not complete
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._fsync(fd)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Patch ``os.fsync`` and ``RunStore.save_checkpoint`` (arms after ``after_step``)."""
        save_checkpoint = RunStore.save_checkpoint

        def save_then_arm(store: RunStore, run_id: str, state: dict) -> None:
            save_checkpoint(store, run_id, state)
            if state["step"] >= self.after_step:
                self.armed = True

        monkeypatch.setattr(os, "fsync", self.fsync)
        monkeypatch.setattr(RunStore, "save_checkpoint", save_then_arm)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_disk_full_at_each_kind_of_write(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reference_run: Outcome
) -> None:
    store = RunStore(tmp_path)
    run_id = store.create(tiny_config(), "full")
    disk = FullDisk(kind, after_step=EVERY)
    disk.install(monkeypatch)
    job = train(store, run_id)
    monkeypatch.undo()  # space is free again

    assert KINDS[kind].fullmatch(disk.failed[0]), disk.failed  # the kind under test broke first
    progress = job.progress()
    assert progress.state == "failed"
    assert os.strerror(errno.ENOSPC) in progress.message  # "No space left on device"
    assert progress.step <= MIDWAY  # training did not go on without saving
    assert temp_files(store, run_id) == []
    assert_store_loads(store)
    assert store.load_checkpoint(run_id)["step"] == EVERY
    assert {0, EVERY} <= set(store.snapshot_steps(run_id))
    assert store.history(run_id)["step"].tolist()[:2] == [0, EVERY]

    resumed = train(store, run_id, resume=True, check=False)  # failed runs are not offered
    assert resumed.progress().state == "finished", resumed.progress().message
    assert_same_training(Outcome.read(store, run_id), reference_run, exact_snapshots=False)


def test_disk_full_at_the_final_embeddings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reference_run: Outcome
) -> None:
    """The disk fills when the final evaluation saves its embeddings, after every step.

    The run fails saying so, leaves no temporary file and no half embeddings file, keeps its
    last checkpoint, and resumed once space is free it ends as the uninterrupted run, with
    its embeddings. Catches: the embeddings written in place (a half file under the final
    name), an OSError there escaping the job (the job thread dies, the state never final).
    """
    store = RunStore(tmp_path)
    run_id = store.create(tiny_config(), "full")
    disk = FullDisk("embeddings", after_step=STEPS)
    disk.install(monkeypatch)
    job = train(store, run_id)
    monkeypatch.undo()  # space is free again

    assert disk.failed[:1] == ["embeddings.npz"], disk.failed
    progress = job.progress()
    assert progress.state == "failed"
    assert os.strerror(errno.ENOSPC) in progress.message
    assert temp_files(store, run_id) == []
    assert_store_loads(store)
    assert store.load_embeddings(run_id) is None
    assert store.load_checkpoint(run_id)["step"] == STEPS

    resumed = train(store, run_id, resume=True, check=False)  # failed runs are not offered
    assert resumed.progress().state == "finished", resumed.progress().message
    assert_same_training(Outcome.read(store, run_id), reference_run, exact_snapshots=False)
    saved = store.load_embeddings(run_id)
    assert saved is not None
    assert saved.step == STEPS
