"""Background training: a TrainingJob per run and a JobManager that caps how many run at once.

A job is a plain object with a thread, a stop event, a pause gate and a lock. It never calls
the UI; pages read copies of its state (``progress()``, ``latest``). Every snapshot is saved to
the RunStore together with a checkpoint before it becomes visible, so a crash at any point
leaves the last good snapshot and checkpoint on disk.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import torch

from dml_core.config import RunConfig
from dml_core.errors import ConfigError
from dml_core.runs import RunRecord, RunStore
from dml_core.snapshot import Snapshot
from dml_core.train import Trainer, TrainingDivergedError


@dataclass(frozen=True)
class Progress:
    """A copy of a job's state for display."""

    run_id: str
    state: str  # queued | starting | running | paused | finished | stopped | diverged | failed
    step: int
    steps: int
    samples_per_s: float
    eta_s: float
    message: str
    device: str
    snapshots: int


class TrainingJob:
    """Trains one run in a background thread, saving snapshots as it goes.

    Args:
        cfg: the checked config.
        store: where the run is saved.
        run_id: the run's id in ``store`` (created by the caller).
        resume: continue from the run's last checkpoint (an interrupted or stopped run).
    """

    def __init__(self, cfg: RunConfig, store: RunStore, run_id: str, resume: bool = False) -> None:
        self.cfg, self.store, self.run_id, self.resume_from_checkpoint = cfg, store, run_id, resume
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._resume = threading.Event()
        self._resume.set()
        self._thread: threading.Thread | None = None
        self.state = "queued"
        self.message = ""
        self.device = ""
        self.step = 0
        self.elapsed = 0.0
        self.latest: Snapshot | None = None
        self.snapshots = 0
        self.final: dict[str, float] = {}

    def start(self) -> None:
        """Start training in a daemon thread."""
        self.state = "starting"
        self._thread = threading.Thread(target=self._run, name=f"train-{self.run_id}", daemon=True)
        self._thread.start()

    def pause(self) -> None:
        """Hold before the next step."""
        if self.state == "running":
            self._resume.clear()
            self._set(state="paused")

    def resume(self) -> None:
        """Continue after a pause."""
        if self.state == "paused":
            self._set(state="running")
            self._resume.set()

    def stop(self) -> None:
        """Stop after the current step (a last snapshot is saved)."""
        self._stop.set()
        self._resume.set()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the thread to end."""
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def done(self) -> bool:
        """True once the job has ended, whatever the reason."""
        return self.state in ("finished", "stopped", "diverged", "failed")

    def progress(self) -> Progress:
        """A consistent copy of the job's state."""
        with self._lock:
            rate = self.step * self.cfg.batch_size / self.elapsed if self.elapsed > 0 else 0.0
            left = (self.cfg.steps - self.step) * self.cfg.batch_size
            eta = left / rate if rate > 0 else float("nan")
            return Progress(
                self.run_id,
                self.state,
                self.step,
                self.cfg.steps,
                rate,
                eta,
                self.message,
                self.device,
                self.snapshots,
            )

    def _set(self, **fields: Any) -> None:
        """Persist the fields to status.json, then show them (so ``done`` implies saved)."""
        keep = {k: v for k, v in fields.items() if k in ("state", "message", "device", "step")}
        try:
            if keep:
                self.store.set_status(self.run_id, **keep)
        finally:
            with self._lock:
                for key, value in fields.items():
                    setattr(self, key, value)

    def _control(self) -> bool:
        self._resume.wait()
        return not self._stop.is_set()

    def _run(self) -> None:
        try:
            trainer = Trainer(self.cfg)
            if self.resume_from_checkpoint:
                trainer.load_state_dict(self.store.load_checkpoint(self.run_id))
                with self._lock:
                    self.step, self.elapsed = trainer.step, trainer.elapsed
            self.store.set_status(self.run_id, pid=os.getpid())
            self._set(state="running", device=trainer.device_note)
            for snap in trainer.run(control=self._control):
                self.store.save_snapshot(self.run_id, snap)
                self.store.save_checkpoint(self.run_id, trainer.state_dict())
                with self._lock:
                    self.latest, self.step, self.elapsed = snap, snap.step, snap.elapsed
                    self.snapshots += 1
                self.store.set_status(self.run_id, step=snap.step, metrics=snap.metrics)
            stopped = self._stop.is_set()
            if self.cfg.final_eval and not stopped:
                self._set(message="Final evaluation: every test image against every train image…")
                self.final = trainer.final_metrics()
                self.store.set_status(self.run_id, final_metrics=self.final)
            self._set(state="stopped" if stopped else "finished", message="")
        except TrainingDivergedError as err:
            self._set(state="diverged", message=str(err))
            self.store.set_status(self.run_id, diverged_at=err.step)
        except ConfigError as err:
            self._set(state="failed", message=str(err))
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            self._set(
                state="failed",
                message="Out of GPU memory: try a smaller batch (P x K) or probe set.",
            )
        except OSError as err:
            self._set_failed_without_disk(f"Could not save the run: {err}. Training stopped.")
        except Exception as err:  # the app must keep serving; the message says what broke
            self._set(state="failed", message=f"Training failed: {type(err).__name__}: {err}")

    def _set_failed_without_disk(self, message: str) -> None:
        with self._lock:
            self.state, self.message = "failed", message
        with contextlib.suppress(OSError):  # the disk is what failed; the message stays in memory
            self.store.set_status(self.run_id, state="failed", message=message)


def resumable(store: RunStore, run_id: str) -> RunRecord:
    """The run, if it can be resumed (interrupted or stopped, with a checkpoint), else an error."""
    record = store.load(run_id)
    if record.status.get("state") not in ("interrupted", "stopped"):
        raise ConfigError(
            f"Only interrupted or stopped runs can be resumed; {run_id} is "
            f"{record.status.get('state')}."
        )
    if not (record.path / "checkpoint.pt").exists():
        raise ConfigError(f"The run {run_id} has no checkpoint to resume from.")
    return record


class JobManager:
    """All training jobs of the process, with at most ``max_running`` at once (others queue).

    Args:
        store: where runs are saved.
        max_running: concurrent jobs (default: 1 on a GPU, 2 on CPU).
    """

    def __init__(self, store: RunStore, max_running: int | None = None) -> None:
        self.store = store
        self.max_running = max_running or (1 if torch.cuda.is_available() else 2)
        self._jobs: dict[str, TrainingJob] = {}
        self._queue: list[str] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._scheduler = threading.Thread(target=self._schedule, name="job-scheduler", daemon=True)
        self._scheduler.start()

    def submit(self, cfg: RunConfig, run_id: str | None = None) -> str:
        """Create the run on disk and queue its job; returns the run id."""
        run_id = self.store.create(cfg, run_id)
        self._enqueue(TrainingJob(cfg, self.store, run_id))
        return run_id

    def resume(self, run_id: str) -> None:
        """Queue an interrupted or stopped run to continue from its last checkpoint."""
        record = resumable(self.store, run_id)
        self.store.set_status(run_id, state="queued", message="", pid=os.getpid())
        self._enqueue(TrainingJob(record.config, self.store, run_id, resume=True))

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
        """1-based place in the queue, or None when not queued."""
        with self._lock:
            return self._queue.index(run_id) + 1 if run_id in self._queue else None

    def running(self) -> list[str]:
        """Ids of jobs currently running or paused."""
        with self._lock:
            return [
                r for r, j in self._jobs.items() if j.state in ("starting", "running", "paused")
            ]

    def stop(self, run_id: str) -> None:
        """Stop a running job, or take a queued one off the queue."""
        with self._lock:
            job = self._jobs.get(run_id)
            queued = run_id in self._queue
            if queued:
                self._queue.remove(run_id)
        if job is None:
            return
        job.stop()
        if queued:
            job._set(state="stopped")

    def stop_all(self, timeout: float = 10.0) -> None:
        """Stop every job (at shutdown) and wait for them."""
        with self._lock:
            jobs = list(self._jobs.values())
            self._queue.clear()
        for job in jobs:
            job.stop()
        for job in jobs:
            job.join(timeout)

    def _schedule(self) -> None:
        while True:
            self._wake.wait(timeout=0.5)
            self._wake.clear()
            with self._lock:
                busy = sum(
                    j.state in ("starting", "running", "paused") for j in self._jobs.values()
                )
                while self._queue and busy < self.max_running:
                    self._jobs[self._queue.pop(0)].start()
                    busy += 1
            time.sleep(0.05)
