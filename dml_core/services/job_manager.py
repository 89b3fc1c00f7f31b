"""The process's training jobs: a queue, at most ``max_running`` at once, or a Ray cluster.

``JobManager`` is what pages use to submit, pause, resume and stop runs. Locally it trains
each run as a ``jobs.TrainingJob`` in a thread of this process, or, as the app asks, as a
``process_jobs.ProcessJob`` in a child process of its own; with a Ray address
(``DML_RAY_ADDRESS``) it hands every run to the cluster (``services.ray_jobs``), which queues
them, and the run's files are written by this process only. (Also importable as
``dml_core.services.jobs.JobManager``.)
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
import weakref

import torch

from dml_core.config import RunConfig
from dml_core.runs import RunState, RunStore
from dml_core.services.jobs import BUSY, RAY_ADDRESS_ENV, TRAINING, TrainingJob, resumable
from dml_core.services.process_jobs import ProcessJob, Standby

STANDBY_RETRY_S = 60.0
"""How long after a failed start the manager tries again to start a child ahead."""
log = logging.getLogger(__name__)
_MANAGERS: weakref.WeakSet[JobManager] = weakref.WeakSet()


def training_here() -> bool:
    """Whether any job manager of this process has a job starting or training now."""
    return any(manager.training() for manager in list(_MANAGERS))


class JobManager:
    """All training jobs of the process, with at most ``max_running`` at once (others queue).

    With a Ray address, jobs are ``ray_jobs.RemoteJob``s, all handed to the cluster, which
    queues them (``queue_position``); ``max_running`` is then the cluster's CPUs.

    Args:
        store: where runs are saved.
        max_running: concurrent local jobs (default: 1 on a GPU, 2 on CPU).
        ray_address: a Ray cluster for the runs (default ``DML_RAY_ADDRESS``; none: here).
        processes: train each local run in a child process (``process_jobs``), with one child
            started ahead while no run trains; the app's choice, away from its page reruns.
    """

    def __init__(
        self,
        store: RunStore,
        max_running: int | None = None,
        ray_address: str | None = None,
        processes: bool = False,
    ) -> None:
        self.store = store
        self.processes = processes
        self._standby: Standby | None = None
        self._standby_retry_at = 0.0
        self.cluster = None
        if address := ray_address or os.environ.get(RAY_ADDRESS_ENV):
            from dml_core.services.ray_jobs import RayJobs  # Ray only when asked for

            self.cluster = RayJobs(store, address)
        local = 1 if torch.cuda.is_available() else 2
        self.max_running = max_running or (self.cluster.slots if self.cluster else local)
        # Jobs share the CPU with each other, the page reruns, the UMAP process and often the
        # browser: each job trains on its share of torch's threads (``thread_share``), all of
        # them while it trains alone, half while two train. With the app's passive OpenMP
        # waiting (``dml_core/__init__``) a team whose thread gets preempted sleeps instead of
        # spinning; a lone job on 2 threads trains 1.4x faster than on 1 beside the browser
        # (``bench app``: 1,547 against 1,306 samples/s on 2 cores; notes of issue 14).
        self.cpu_threads = torch.get_num_threads()
        self._jobs: dict[str, TrainingJob] = {}
        self._queue: list[str] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._scheduler = threading.Thread(target=self._schedule, name="job-scheduler", daemon=True)
        self._scheduler.start()
        _MANAGERS.add(self)

    def submit(self, cfg: RunConfig, run_id: str | None = None) -> str:
        """Create the run on disk and queue its job; returns the run id."""
        run_id = self.store.create(cfg, run_id)
        self._enqueue(self._job(cfg, run_id, resume=False))
        return run_id

    def _job(self, cfg: RunConfig, run_id: str, resume: bool) -> TrainingJob:
        if self.cluster is not None:
            return self.cluster.job(cfg, run_id, resume)
        if self.processes:
            with self._lock:
                standby, self._standby = self._standby, None
            return ProcessJob(
                cfg, self.store, run_id, resume, threads=self.thread_share, standby=standby
            )
        return TrainingJob(cfg, self.store, run_id, resume, threads=self.thread_share)

    def training(self) -> int:
        """How many jobs are starting or training now (here, or on the cluster)."""
        with self._lock:
            return sum(j.state in TRAINING for j in self._jobs.values())

    def thread_share(self) -> int:
        """Torch threads for each job now: the CPU's threads over the jobs training (>= 1).

        Each job asks before every step, so a job alone takes every thread and gives half
        back as soon as a second one starts (never more threads than cores in all).
        """
        return max(1, self.cpu_threads // max(1, self.training()))

    def pause(self, run_id: str) -> None:
        """Pause the run's job, if it is training here."""
        job = self.get(run_id)
        if job is not None:
            job.pause()

    def resume(self, run_id: str) -> None:
        """Continue a paused job, or queue an interrupted or stopped run from its checkpoint."""
        job = self.get(run_id)
        if job is not None and job.state is RunState.PAUSED:
            job.resume()
            return
        record = resumable(self.store, run_id)
        self.store.set_status(run_id, state=RunState.QUEUED, message="", pid=os.getpid())
        self._enqueue(self._job(record.config, run_id, resume=True))

    def _enqueue(self, job: TrainingJob) -> None:
        with self._lock:
            self._jobs[job.run_id] = job
            self._queue.append(job.run_id)
        self._wake.set()

    def get(self, run_id: str) -> TrainingJob | None:
        """The job of a run started in this process, if any."""
        with self._lock:
            return self._jobs.get(run_id)

    def queue_position(self, run_id: str) -> int | None:
        """1-based place in the queue (on Ray: the cluster's, see ``RayJobs``), or None."""
        with self._lock:
            place = self._queue.index(run_id) + 1 if run_id in self._queue else None
        if self.cluster is None:
            return place
        return (
            self.cluster.queue_position(run_id) if place is None else place + self.cluster.waiting()
        )

    def running(self) -> list[str]:
        """Ids of jobs currently starting, running or paused."""
        with self._lock:
            return [r for r, j in self._jobs.items() if j.state in BUSY]

    def stop(self, run_id: str) -> None:
        """Stop a running job, or take a queued one off the queue."""
        with self._lock:
            job = self._jobs.get(run_id)
            queued = run_id in self._queue
            if queued:
                self._queue.remove(run_id)
        if job is None:
            return
        if queued:
            job.cancel()
        else:
            job.stop()

    def stop_all(self, timeout: float = 10.0) -> None:
        """Stop every job (at shutdown) and wait for them."""
        with self._lock:
            jobs = list(self._jobs.values())
            queued = [self._jobs[r] for r in self._queue]
            self._queue.clear()
        for job in queued:
            job.cancel()
        for job in jobs:
            job.stop()
        for job in jobs:
            job.join(timeout)

    def close(self) -> None:
        """Stop every job, then let go of the standby child and the Ray cluster, if any."""
        self.stop_all()
        with self._lock:
            standby, self._standby = self._standby, None
        if standby is not None:
            standby.close()
        if self.cluster is not None:
            self.cluster.close()

    def _schedule(self) -> None:
        while True:
            self._wake.wait(timeout=0.5)
            self._wake.clear()
            with self._lock:
                busy = sum(j.state in BUSY for j in self._jobs.values())
                while self._queue and (self.cluster or busy < self.max_running):  # Ray queues
                    self._jobs[self._queue.pop(0)].start()
                    busy += 1
                idle = self.processes and not self._queue and busy == 0
                if idle and (self._standby is None or not self._standby.alive()):
                    self._start_standby()
            time.sleep(0.05)

    def _start_standby(self) -> None:
        """Start a child ahead for the next run (the scheduler's lock held).

        Its imports take seconds of CPU, so only while no run trains. A failure is logged and
        retried after ``STANDBY_RETRY_S``; the next run then starts its own child.
        """
        if time.monotonic() < self._standby_retry_at:
            return
        if getattr(multiprocessing.current_process(), "_inheriting", False):
            return  # this process is itself still being started by multiprocessing
        try:
            self._standby = Standby()
        except Exception:  # the scheduler must go on: runs start their own child then
            log.exception("Could not start a training process ahead")
            self._standby_retry_at = time.monotonic() + STANDBY_RETRY_S
