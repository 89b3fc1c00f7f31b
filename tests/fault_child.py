"""A training process for the fault tests: it announces named points of its writes.

Run by ``tests/fault_runs.Child``. It wraps the functions a run's writes go through
(``os.fsync``, ``os.replace``, ``runs.atomic_write_bytes``, ``RunStore.save_snapshot`` /
``save_checkpoint``), and once the run has reached ``--step`` it prints ``PHASE <name>`` at the
named point of the next write of the ``--file`` kind, then blocks (or, for
``after-checkpoint``, goes on), so the parent can kill it exactly there:

* ``inside-temp-write``: the bytes are written but not yet fsynced; half of them are cut
  off first, as when a process dies in the middle of writing;
* ``between-fsync-and-rename``: the file is complete and fsynced, not yet moved into place;
* ``between-snapshot-and-metrics``: the snapshot file is in place, the metrics row is not;
* ``after-checkpoint``: the checkpoint of ``--step`` is saved (the run goes on).

Usage: ``fault_child.py --phase P --file K --step N (--root R --config C --run-id I | --cli
ARGS...)``; ``--cli`` runs ``python -m dml_core`` with ARGS instead of a TrainingJob.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from pathlib import Path

import torch

from dml_core import runs
from dml_core.config import RunConfig
from dml_core.runs import RunStore
from dml_core.services.jobs import TrainingJob
from dml_core.snapshot import Snapshot
from tests.fault_runs import KINDS, TEST_THREADS, final_name

armed = threading.Event()  # set once the run reaches --step
fired = threading.Event()  # the phase was announced (once)


def announce(phase: str, block: bool = True) -> None:
    """Print the phase marker; then wait forever (for the parent's signal) if ``block``."""
    fired.set()
    print(f"PHASE {phase}", flush=True)
    if block:
        threading.Event().wait()


def install(phase: str, kind: str, step: int) -> None:
    """Wrap the write functions so that ``phase`` is announced at the right write."""
    pattern = KINDS["snapshot" if phase == "between-snapshot-and-metrics" else kind]

    def due(path: str | os.PathLike[str]) -> bool:
        return armed.is_set() and not fired.is_set() and bool(pattern.fullmatch(final_name(path)))

    save_snapshot = RunStore.save_snapshot

    def arming_save_snapshot(self: RunStore, run_id: str, snap: Snapshot) -> None:
        if snap.step >= step:
            armed.set()
        save_snapshot(self, run_id, snap)

    RunStore.save_snapshot = arming_save_snapshot  # type: ignore[method-assign]

    if phase == "inside-temp-write":
        fsync = os.fsync

        def cut_fsync(fd: int) -> None:
            if due(os.readlink(f"/proc/self/fd/{fd}")):
                os.ftruncate(fd, os.fstat(fd).st_size // 2)
                announce(phase)
            fsync(fd)

        os.fsync = cut_fsync
    elif phase == "between-fsync-and-rename":
        replace = os.replace

        def held_replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
            if due(dst):
                announce(phase)
            replace(src, dst)

        os.replace = held_replace
    elif phase == "between-snapshot-and-metrics":
        write = runs.atomic_write_bytes

        def held_write(path: Path, data: bytes) -> None:
            write(path, data)
            if due(path):
                announce(phase)

        runs.atomic_write_bytes = held_write
    elif phase == "after-checkpoint":
        save_checkpoint = RunStore.save_checkpoint

        def announcing_save_checkpoint(self: RunStore, run_id: str, state: dict) -> None:
            save_checkpoint(self, run_id, state)
            if state["step"] >= step and not fired.is_set():
                announce(phase, block=False)

        RunStore.save_checkpoint = announcing_save_checkpoint  # type: ignore[method-assign]
    else:
        raise SystemExit(f"unknown phase {phase!r}")


def main() -> int:
    """Parse the arguments, install the hooks, train; print ``DONE <state>`` at the end."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--phase", required=True)
    parser.add_argument("--file", default="checkpoint", choices=sorted(KINDS))
    parser.add_argument("--step", type=int, required=True)
    parser.add_argument("--root")
    parser.add_argument("--config")
    parser.add_argument("--run-id")
    parser.add_argument("--cli", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    torch.set_num_threads(TEST_THREADS)  # as fault_runs.train: the same sums, the same weights
    install(args.phase, args.file, args.step)
    if args.cli is not None:
        from dml_core import cli  # only here: it imports the export and figure modules

        return cli.main(args.cli)
    cfg = RunConfig.model_validate_json(Path(args.config).read_text())
    store = RunStore(args.root)
    run_id = store.create(cfg, args.run_id)
    job = TrainingJob(cfg, store, run_id)
    job.start()
    job.join()
    print(f"DONE {job.progress().state}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
