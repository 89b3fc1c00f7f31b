"""Shared pieces of the fault tests: one tiny run, its uninterrupted reference, comparisons.

A fault test trains ``tiny_config()`` with a fault (a stop, a kill -9, a full disk) half way,
resumes it, and compares the result with the same config trained without a fault (the
``reference_run`` fixture of ``conftest.py``): CPU training is deterministic for a seed, so a
resume that restores everything ends with the very same weights, final metrics and metrics
table. The table's ``elapsed`` column is wall-clock time and is left out of the comparison.
"""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from dml_core.config import RunConfig, make_config
from dml_core.runs import RunStore
from dml_core.services.jobs import TrainingJob, resumable

TEST_THREADS = 2  # torch threads of every fault-test training (fault_child sets the same)

ROOT = Path(__file__).resolve().parents[1]
CHILD = Path(__file__).with_name("fault_child.py")
STEPS, EVERY, MIDWAY = 60, 15, 30  # the run, its snapshot interval, where faults strike
WALL_CLOCK_COLUMNS = ("elapsed",)
KINDS = {  # the kinds of file a run writes, by the name they are written under
    "snapshot": re.compile(r"\d{8}\.npz"),
    "checkpoint": re.compile(r"checkpoint\.pt"),
    "metrics": re.compile(r"metrics\.csv"),
    "status": re.compile(r"status\.json"),
}


def final_name(path: str | os.PathLike[str]) -> str:
    """The name a file is written under: ``.checkpoint.pt.ab12cd.tmp`` -> ``checkpoint.pt``.

    Temporary names are ``runs.atomic_write_bytes``'s: ``.<name>.<random>.tmp``.
    """
    name = Path(path).name
    if name.startswith(".") and name.endswith(".tmp"):
        name = name[1:-4].rsplit(".", 1)[0]
    return name


def tiny_config(**changes: Any) -> RunConfig:
    """Digits, MLP, D=8, 4 x 8 batches, 60 steps, a snapshot (and checkpoint) every 15.

    120 probe points give more than 5,000 negative pairs, so snapshots subsample pairs with
    the trainer's pair generator (a resume must restore it too).
    """
    values: dict[str, Any] = {
        "dataset": "digits",
        "net": "mlp",
        "embedding_dim": 8,
        "classes_per_batch": 4,
        "samples_per_class": 8,
        "steps": STEPS,
        "snapshot_every": EVERY,
        "probe_size": 120,
        "final_eval": True,
        "device": "cpu",
        "seed": 0,
    }
    return make_config(**{**values, **changes})


def train(store: RunStore, run_id: str, *, resume: bool = False, check: bool = True) -> TrainingJob:
    """Train the run to its end with a TrainingJob (the app's path).

    Args:
        store: the run store.
        run_id: a run created in ``store``.
        resume: continue from the run's checkpoint.
        check: before resuming, require what the app requires (``jobs.resumable``: an
            interrupted or stopped run with a checkpoint).
    """
    record = resumable(store, run_id) if resume and check else store.load(run_id)
    cfg = record.config
    # two threads, as the fault child and conftest: the same float sums in every process,
    # whatever thread count an earlier test in this process left behind
    job = TrainingJob(cfg, store, run_id, resume=resume, threads=TEST_THREADS)
    job.start()
    job.join()
    return job


@dataclass(frozen=True)
class Outcome:
    """What a finished run left on disk: final weights and metrics, the table, snapshots."""

    net: dict[str, torch.Tensor]
    final_metrics: dict[str, float]
    history: pd.DataFrame
    snapshot_steps: tuple[int, ...]

    @classmethod
    def read(cls, store: RunStore, run_id: str) -> Outcome:
        """Read the outcome of a finished run."""
        status = store.status(run_id)
        assert status["state"] == "finished", status.get("message")
        return cls(
            store.load_checkpoint(run_id)["net"],
            status["final_metrics"],
            store.history(run_id),
            store.snapshot_steps(run_id),
        )


def assert_same_training(got: Outcome, want: Outcome, *, exact_snapshots: bool = True) -> None:
    """The run ended exactly as the uninterrupted one: weights, final metrics, every snapshot.

    ``exact_snapshots=False`` leaves out ``pair_overlap``, the one scalar computed from the
    snapshots' random pair sample (see test_resume for why it is compared on its own).
    """
    assert got.net.keys() == want.net.keys()
    for name, value in want.net.items():
        assert torch.equal(got.net[name], value), f"final weights differ in {name}"
    assert got.final_metrics == want.final_metrics
    assert got.snapshot_steps == want.snapshot_steps
    skip = [*WALL_CLOCK_COLUMNS, *(() if exact_snapshots else ("pair_overlap",))]
    pd.testing.assert_frame_equal(
        got.history.drop(columns=skip), want.history.drop(columns=skip), check_exact=True
    )


def file_identity(path: Path) -> tuple[bytes, int, int]:
    """Bytes, inode and modification time of a file: equal only if it was never rewritten."""
    stat = path.stat()
    return path.read_bytes(), stat.st_ino, stat.st_mtime_ns


def snapshot_files(store: RunStore, run_id: str) -> dict[int, tuple[bytes, int, int]]:
    """``file_identity`` of every snapshot file, by step."""
    folder = store.path(run_id) / "snapshots"
    return {s: file_identity(folder / f"{s:08d}.npz") for s in store.snapshot_steps(run_id)}


def temp_files(store: RunStore, run_id: str) -> list[Path]:
    """Temporary files (``.<name>.*.tmp``, see ``runs.atomic_write_bytes``) in the run."""
    return sorted(p for p in store.path(run_id).rglob("*") if p.name.endswith(".tmp"))


def assert_store_loads(store: RunStore) -> None:
    """Every run of the store loads, and every file under a final name is whole.

    Final names are the ones readers open: config.json, status.json, metrics.csv, the
    snapshot files, checkpoint.pt; each must parse completely.
    """
    for run_id in store.list():
        record = store.load(run_id)
        path = record.path
        json.loads((path / "config.json").read_text())
        json.loads((path / "status.json").read_text())
        history = store.history(run_id)
        if (path / "metrics.csv").exists():
            assert history["step"].is_unique
            assert set(history["step"]) <= set(record.snapshot_steps)
        for step in record.snapshot_steps:
            snap = store.load_snapshot(run_id, step)
            assert snap.step == step
            assert np.isfinite(snap.probe_emb).all()
        if (path / "checkpoint.pt").exists():
            assert store.load_checkpoint(run_id)["step"] in record.snapshot_steps


class Child:
    """``tests/fault_child.py`` in its own process; the parent waits for its marker lines.

    The child prints ``PHASE <name>`` when it reaches a named point of a write; waiting for
    that line (not for time to pass) is what triggers the parent's signal. Its stderr goes to
    ``log`` (shown when it fails).
    """

    def __init__(self, log: Path, *args: str) -> None:
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
        self.log = log
        with log.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(CHILD), *args],
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": path},
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)  # end of output: the child exited

    def wait_for_line(self, marker: str, timeout: float = 240.0) -> None:
        """Read the child's stdout until a line equal to ``marker`` (fails on exit or timeout).

        ``timeout`` only bounds the wait for a child that hangs; it triggers nothing.
        """
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                self.proc.kill()
                raise AssertionError(
                    f"no {marker!r} from the child; it printed {self.seen}"
                ) from None
            if line is None:
                self.proc.wait()
                raise AssertionError(
                    f"the child ended (status {self.proc.returncode}) before {marker!r}; "
                    f"stdout {self.seen}; stderr:\n{self.log.read_text()[-3000:]}"
                )
            self.seen.append(line)
            if line == marker:
                return

    def signal(self, signum: int, timeout: float = 60.0) -> int:
        """Send ``signum``; wait (at most ``timeout``, a bound, not a check) for it to end."""
        self.proc.send_signal(signum)
        return self.proc.wait(timeout)
