"""Running a sweep's missing runs on an executor: local threads, or a Ray cluster.

An *executor* trains runs into the ``RunStore`` through ``jobs.train_and_save`` and records,
in each run's status.json, ``worker`` (host and pid of the process that trained it) and
``seconds`` (wall time of the run, from start to its final state). Two exist:

- ``LocalExecutor``: ``workers`` threads of this process, each training one run at a time as
  a ``jobs.TrainingJob`` (no Ray needed; the embedded default);
- ``services.ray_backend.RayExecutor``: one Ray task per run, records streamed back to this
  process, which alone writes the store.

Both take ``submit``, ``pause``, ``resume``, ``stop`` (a queued run is cancelled) and report
ended runs from ``wait``. ``SweepRunner`` puts a sweep's missing runs on one and keeps the
sweep's status; it runs in the caller's thread (``run``) or in the background (``start``),
so a page can launch a sweep and poll ``sweeps.progress``.
"""

from __future__ import annotations

import contextlib
import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from dml_core.config import RunConfig
from dml_core.runs import RunState, RunStore
from dml_core.services.jobs import TrainingJob
from dml_core.sweeps import Sweep, SweepState, SweepStore, missing_runs, sweep_state

BACKENDS = ("local", "ray")


@dataclass(frozen=True)
class RunTask:
    """One run to train: its id in the store, its config, and whether to resume it."""

    run_id: str
    config: RunConfig
    resume: bool = False


def worker_info() -> dict[str, object]:
    """This process as a worker: ``{"host": ..., "pid": ...}``."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


class Executor(Protocol):
    """Trains submitted runs into the store; only the process that owns it writes the store."""

    name: str

    def submit(self, task: RunTask) -> None:
        """Queue a run (its directory exists; state queued)."""

    def pause(self, run_id: str) -> None:
        """Hold a training run before its next step."""

    def resume(self, run_id: str) -> None:
        """Continue a paused run."""

    def stop(self, run_id: str) -> None:
        """Stop a training run after one last snapshot, or cancel a queued one."""

    def queue_position(self, run_id: str) -> int | None:
        """1-based place among the runs not started yet, or None."""

    def wait(self, timeout: float) -> list[str]:
        """Wait up to ``timeout`` seconds; return the ids of runs that ended since last call."""

    def close(self) -> None:
        """Release what the executor holds (threads, a Ray instance it started)."""


class LocalExecutor:
    """Runs in this process: ``workers`` threads, one ``TrainingJob`` each at a time.

    Args:
        store: where runs are saved.
        workers: runs trained at once.
        threads: torch threads while it trains (None: leave torch's setting).
    """

    name = "local"

    def __init__(self, store: RunStore, workers: int = 1, threads: int | None = None) -> None:
        self.store = store
        self._queue: queue.Queue[RunTask | None] = queue.Queue()
        self._waiting: list[str] = []
        self._jobs: dict[str, TrainingJob] = {}
        self._ended: queue.Queue[str] = queue.Queue()
        self._lock = threading.Lock()
        self._threads_before = torch.get_num_threads()
        if threads is not None:
            torch.set_num_threads(threads)
        self._workers = [
            threading.Thread(target=self._work, name=f"sweep-local-{i}", daemon=True)
            for i in range(workers)
        ]
        for thread in self._workers:
            thread.start()

    def submit(self, task: RunTask) -> None:
        """Queue a run."""
        with self._lock:
            self._waiting.append(task.run_id)
        self._queue.put(task)

    def _work(self) -> None:
        while (task := self._queue.get()) is not None:
            with self._lock:
                if task.run_id not in self._waiting:  # cancelled while queued
                    continue
                self._waiting.remove(task.run_id)
                job = TrainingJob(task.config, self.store, task.run_id, resume=task.resume)
                self._jobs[task.run_id] = job
            start = time.perf_counter()
            self.store.set_status(task.run_id, worker=worker_info())
            job.start()
            job.join()
            self.store.set_status(task.run_id, seconds=round(time.perf_counter() - start, 3))
            self._ended.put(task.run_id)

    def _job(self, run_id: str) -> TrainingJob | None:
        with self._lock:
            return self._jobs.get(run_id)

    def pause(self, run_id: str) -> None:
        """Pause the run's job, if it trains."""
        if (job := self._job(run_id)) is not None:
            job.pause()

    def resume(self, run_id: str) -> None:
        """Continue a paused job."""
        if (job := self._job(run_id)) is not None:
            job.resume()

    def stop(self, run_id: str) -> None:
        """Stop a training job, or take a queued run off the queue (it reads stopped)."""
        with self._lock:
            queued = run_id in self._waiting
            if queued:
                self._waiting.remove(run_id)
        if queued:
            self.store.set_status(run_id, state=RunState.STOPPED, message="Cancelled.")
            self._ended.put(run_id)
        elif (job := self._job(run_id)) is not None:
            job.stop()

    def queue_position(self, run_id: str) -> int | None:
        """1-based place among the runs not started yet, or None."""
        with self._lock:
            return self._waiting.index(run_id) + 1 if run_id in self._waiting else None

    def wait(self, timeout: float) -> list[str]:
        """Runs that ended since the last call (waits up to ``timeout`` for the first)."""
        ended = []
        try:
            ended.append(self._ended.get(timeout=timeout))
            while True:
                ended.append(self._ended.get_nowait())
        except queue.Empty:
            return ended

    def close(self) -> None:
        """Let the worker threads end (after their current run) and restore torch's threads."""
        for _ in self._workers:
            self._queue.put(None)
        torch.set_num_threads(self._threads_before)


def make_executor(
    backend: str,
    store: RunStore,
    *,
    workers: int = 1,
    threads: int | None = None,
    address: str | None = None,
    num_cpus: float = 1.0,
    num_gpus: float | None = None,
) -> Executor:
    """The executor of ``backend`` ("local" or "ray"; Ray is imported only for "ray").

    Args:
        backend: "local" or "ray".
        store: where runs are saved.
        workers: local runs at once (Ray schedules by resources instead).
        threads: torch threads of a local run (Ray: ``num_cpus``).
        address: a Ray address (None: ``DML_RAY_ADDRESS``, else a local Ray instance).
        num_cpus: CPUs each Ray run declares.
        num_gpus: GPUs (fractional) each Ray run declares (None: see ``RayExecutor``).
    """
    if backend == "local":
        return LocalExecutor(store, workers, threads)
    from dml_core.services.ray_backend import RayExecutor  # optional dependency

    return RayExecutor(store, address=address, num_cpus=num_cpus, num_gpus=num_gpus)


class SweepRunner:
    """Trains a sweep's missing runs on an executor and keeps the sweep's status.

    Args:
        store: the runs directory's store.
        sweep: a saved sweep (``SweepStore.save``).
        executor: where runs train (closed by the runner when it ends).
        poll_s: how often the runner looks at the executor.
        on_change: called (in the runner's thread) after runs ended, with their ids.
    """

    def __init__(
        self,
        store: RunStore,
        sweep: Sweep,
        executor: Executor,
        poll_s: float = 0.25,
        on_change: Callable[[list[str]], None] | None = None,
    ) -> None:
        self.store, self.sweep, self.executor = store, sweep, executor
        self.sweeps = SweepStore(store)
        self.poll_s = poll_s
        self.on_change = on_change
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._pending: set[str] = set()  # submitted runs that did not end yet
        self._thread: threading.Thread | None = None
        self._finished = threading.Event()  # set as the thread's work ends (see ``join``)
        self.state: SweepState | None = None
        self.error: str = ""

    def start(self) -> None:
        """Run the sweep in a background thread (``state`` is set when it ends)."""
        self._thread = threading.Thread(target=self._run_quietly, name="sweep-runner", daemon=True)
        self._thread.start()

    def _run_quietly(self) -> None:
        """``run`` in the background: an error ends the sweep and is kept in ``error``."""
        try:
            with contextlib.suppress(Exception):
                self.run()
        finally:
            self._finished.set()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the background thread's work to end (its state recorded).

        An event, not ``Thread.join``, which once cut short by Ctrl-C returns at once
        (CPython 3.11): ``python -m dml_core sweep`` then left the sweep "running".
        """
        if self._thread is not None:
            self._finished.wait(timeout)

    @property
    def done(self) -> bool:
        """True once the runner ended."""
        return self.state is not None

    def pause(self, run_id: str) -> None:
        """Pause one run of the sweep."""
        self.executor.pause(run_id)

    def resume(self, run_id: str) -> None:
        """Continue one paused run."""
        self.executor.resume(run_id)

    def stop(self) -> None:
        """Stop every run of the sweep (training ones after a last snapshot; queued ones now).

        The orders go out from the caller's thread at once, not after the runner's next look.
        """
        self._stop.set()
        with self._lock:
            pending = sorted(self._pending)
        for run_id in pending:
            self.executor.stop(run_id)

    def _prepare(self) -> list[RunTask]:
        """Create or re-queue each missing run; return what to submit."""
        tasks = []
        for run, resume in missing_runs(self.store, self.sweep):
            cfg = self.sweep.config(run)
            if self.store.exists(run.run_id) and not resume:  # no checkpoint: start again
                self.store.delete(run.run_id)
            if not self.store.exists(run.run_id):
                self.store.create(cfg, run.run_id)
            else:
                self.store.set_status(
                    run.run_id, state=RunState.QUEUED, message="", pid=os.getpid()
                )
            tasks.append(RunTask(run.run_id, cfg, resume))
        return tasks

    def run(self) -> SweepState:
        """Train every missing run; return (and record) the sweep's final state."""
        sweep_id = self.sweep.sweep_id
        try:
            self.sweeps.mark_running(sweep_id, self.executor.name)
            tasks = self._prepare()
            for task in tasks:
                self.executor.submit(task)
            with self._lock:
                self._pending = {t.run_id for t in tasks}
            if self._stop.is_set():  # stopped while the runs were being submitted
                self.stop()
            while self._pending:
                ended = self.executor.wait(self.poll_s)
                with self._lock:
                    self._pending -= set(ended)
                if ended and self.on_change is not None:
                    self.on_change(ended)
        except Exception as err:  # the sweep's status must not stay "running"
            self.error = f"{type(err).__name__}: {err}"
            raise
        finally:
            self.executor.close()
            state = sweep_state(self.store, self.sweep, stopped=self._stop.is_set())
            self.sweeps.set_status(sweep_id, state=state, message=self.error)
            self.state = state  # done only once the status on disk says so (callers read it)
        return state
