"""The job manager's runs on a Ray cluster: ``RemoteJob`` and ``RayJobs``.

When ``DML_RAY_ADDRESS`` is set (or a ``JobManager`` is given a Ray address), the app's single
runs (the Train page's, a classroom's) go to a Ray cluster instead of this process's threads.
They take the sweep's path: one ``ray_backend.RayExecutor`` task per run, running
``jobs.train_and_save`` on a worker; the worker's writes stream back and this process (the
driver) replays them on its ``RunStore``. Pause, stop and cancel go to the worker through the
executor's channel actor.

A ``RemoteJob`` is a ``TrainingJob`` whose state is fed by those replayed writes, after each
is on disk (so ``done`` still implies saved): pages read it through ``progress()`` as they
read a local job. The driver hands every run to Ray at once; Ray queues what the cluster has
no CPU for, and ``queue_position`` counts the runs no worker took yet.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import ray

from dml_core.config import RunConfig
from dml_core.runs import RunState, RunStore
from dml_core.services.jobs import STATUS_FIELDS, Phase, TrainingJob
from dml_core.services.ray_backend import RayExecutor
from dml_core.services.sweep_runner import RunTask

POLL_S = 0.25
"""How long the pump waits for Ray before replaying what arrived (the lag a page may see)."""
STATUS_TO_JOB = {"final_metrics": "final", "eval_seconds": "eval_seconds", "worker": "worker"}
"""status.json fields a job shows under another (or no ``STATUS_FIELDS``) name."""

log = logging.getLogger(__name__)


class RemoteJob(TrainingJob):
    """One run trained by a Ray worker; its state is what the worker's records said.

    Args:
        cfg: the checked config.
        store: the driver's store (written by the executor, not by the job).
        run_id: the run's id in ``store``.
        resume: continue from the run's last checkpoint on the driver.
        executor: the Ray executor that trains it.
    """

    def __init__(
        self,
        cfg: RunConfig,
        store: RunStore,
        run_id: str,
        resume: bool,
        executor: RayExecutor,
    ) -> None:
        super().__init__(cfg, store, run_id, resume)
        self.executor = executor
        self.worker: dict[str, Any] = {}
        self._ended = threading.Event()
        self._submitted = False

    def start(self) -> None:
        """Hand the run to Ray; it stays queued until a worker's first record says otherwise."""
        with self._lock:
            if self._stop.is_set():
                return
            self._submitted = True
        self.executor.submit(RunTask(self.run_id, self.cfg, self.resume_from_checkpoint))

    def pause(self) -> None:
        """Ask the worker to hold before its next step (the page sees it paused once it did)."""
        if self.state is RunState.RUNNING and self.phase is Phase.TRAINING:
            self.executor.pause(self.run_id)

    def resume(self) -> None:
        """Ask a paused worker to go on."""
        if self.state is RunState.PAUSED:
            self.executor.resume(self.run_id)

    def stop(self) -> None:
        """Stop after the worker's current step; Ray cancels a run no worker took yet."""
        with self._lock:
            self._stop.set()
            submitted = self._submitted
        if submitted:
            self.executor.stop(self.run_id)

    def cancel(self) -> None:
        """Take a run off the manager's queue; once handed to Ray, as ``stop``."""
        self.stop()
        if not self._submitted:
            self._record(state=RunState.STOPPED, message="Cancelled before it started.")
            self._ended.set()

    def join(self, timeout: float | None = None) -> None:
        """Wait until Ray reported the run's task ended (its records all replayed)."""
        self._ended.wait(timeout)

    def hear(self, fields: dict[str, Any]) -> None:
        """Show one replayed write: status fields, or ``latest`` (a saved snapshot)."""
        if (snap := fields.get("latest")) is not None:
            self._update(latest=snap, step=snap.step, elapsed=snap.elapsed)
            with self._lock:  # the training clock: the worker's speed, pauses left out
                self._rate.update(snap.step, snap.elapsed)
            return
        shown = {k: v for k, v in fields.items() if k in STATUS_FIELDS}
        shown |= {STATUS_TO_JOB[k]: v for k, v in fields.items() if k in STATUS_TO_JOB}
        if shown:
            self._update(**shown)


class HeardStore:
    """The driver's ``RunStore`` as the executor writes it: each write, once saved, is heard.

    Args:
        store: the store every write goes to.
        hear: called with the run id and the written fields (``latest`` for a snapshot).
    """

    def __init__(self, store: RunStore, hear: Any) -> None:
        self._store, self._hear = store, hear

    def __getattr__(self, name: str) -> Any:
        """Every other method is the store's."""
        return getattr(self._store, name)

    def set_status(self, run_id: str, **fields: Any) -> dict[str, Any]:
        """Save the fields, then tell the run's job."""
        status = self._store.set_status(run_id, **fields)
        self._hear(run_id, fields)
        return status

    def save_snapshot(self, run_id: str, snap: Any) -> None:
        """Save the snapshot, then tell the run's job."""
        self._store.save_snapshot(run_id, snap)
        self._hear(run_id, {"latest": snap})


class RayJobs:
    """A job manager's Ray side: one executor, a pump thread replaying what workers send.

    Args:
        store: the runs directory's store (only this process writes it).
        address: the Ray address (``"auto"``, ``"HOST:PORT"``, ``"ray://..."``); a process
            already attached to Ray keeps its instance.
        num_cpus: CPUs each run declares (and its torch threads on the worker).
    """

    def __init__(self, store: RunStore, address: str, num_cpus: float = 1.0) -> None:
        self.store = store
        self.executor = RayExecutor(
            HeardStore(store, self._hear),  # type: ignore[arg-type]  # RunStore's methods
            address=address,
            num_cpus=num_cpus,
        )
        self.slots = max(1, int(ray.cluster_resources().get("CPU", 1) // num_cpus))
        self._jobs: dict[str, RemoteJob] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._pump = threading.Thread(target=self._pump_records, name="ray-jobs", daemon=True)
        self._pump.start()

    def job(self, cfg: RunConfig, run_id: str, resume: bool = False) -> RemoteJob:
        """A job for the run (not started), once the run's previous task, if any, ended."""
        with self._lock:
            previous = self._jobs.get(run_id)
        if previous is not None and not previous._ended.is_set():  # records still coming
            previous.stop()
            previous.join(timeout=30)
        job = RemoteJob(cfg, self.store, run_id, resume, self.executor)
        with self._lock:
            self._jobs[run_id] = job
        return job

    def queue_position(self, run_id: str) -> int | None:
        """1-based place among this driver's runs that no Ray worker took yet, or None."""
        return self.executor.queue_position(run_id)

    def waiting(self) -> int:
        """Runs handed to Ray that no worker took yet."""
        return self.executor.waiting()

    def _hear(self, run_id: str, fields: dict[str, Any]) -> None:
        with self._lock:
            job = self._jobs.get(run_id)
        if job is not None:
            job.hear(fields)

    def _pump_records(self) -> None:
        """Replay the workers' records; tell each job whose task ended."""
        while not self._closed.is_set():
            try:
                ended = self.executor.wait(POLL_S)
            except Exception:  # a lost connection must not end the pump of a serving app
                log.exception("Replaying the Ray workers' records failed")
                self._closed.wait(1.0)
                continue
            for run_id in ended:
                with self._lock:
                    job = self._jobs.get(run_id)
                if job is not None:
                    job._ended.set()

    def close(self) -> None:
        """Stop the pump, then the runs still going (``RayExecutor.close``)."""
        self._closed.set()
        self._pump.join(timeout=10)
        self.executor.close()
