"""Background training: one train-and-save path, and a TrainingJob per run.

``train_and_save`` is the only code that trains a run into the RunStore: the app's jobs, the
CLI, the lessons and the tests all go through it. Every snapshot is saved together with a
checkpoint before it becomes visible, so a crash at any point leaves the last good snapshot
and checkpoint on disk. The final evaluation's embeddings are saved with the run, before its
final metrics, so no page embeds a finished run's images again. A job runs it in a thread
with a stop event and a pause gate; it never calls the UI, and pages read copies of its
state (``progress()``, ``latest``). The ``JobManager`` of the process lives in
``services.job_manager`` (importable from here too).
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch

from dml_core.config import RunConfig
from dml_core.devices import (
    DEVICE_ASSERT_MESSAGE,
    CudaHealth,
    is_device_assert,
    out_of_memory,
    out_of_memory_advice,
    release_memory,
)
from dml_core.errors import ConfigError
from dml_core.evaluation import Evaluation
from dml_core.runs import ACTIVE, FINAL, RESUMABLE, RunEmbeddings, RunRecord, RunState, RunStore
from dml_core.services.progress import Phase, Progress, StepRate
from dml_core.snapshot import Snapshot
from dml_core.train import Trainer, TrainingDivergedError

__all__ = ["Phase", "Progress", "StepRate", "TrainingJob", "train_and_save"]

RAY_ADDRESS_ENV = "DML_RAY_ADDRESS"  # a Ray cluster for the app's runs (services.ray_jobs)
BUSY = ACTIVE - {RunState.QUEUED}  # jobs that hold one of the manager's slots
TRAINING = frozenset({RunState.STARTING, RunState.RUNNING})  # jobs that use the CPU
STATUS_FIELDS = ("state", "phase", "message", "device", "step")  # mirrored in status.json
FINAL_EVALUATION_NOTE = "Final evaluation: every test image against every train image…"


def _ignore(**_: Any) -> None:
    """An ``update`` that listens to nothing."""


def final_embeddings(trainer: Trainer, evaluation: Evaluation) -> RunEmbeddings:
    """The final evaluation's embeddings with their labels and step, as the run saves them.

    The Retrieval page and export read them back instead of embedding every image again.
    """
    return RunEmbeddings(
        trainer.step,
        evaluation.query_emb.numpy(),
        trainer.data.query.y.cpu().numpy(),
        evaluation.reference_emb.numpy(),
        trainer.data.reference.y.cpu().numpy(),
    )


def train_and_save(
    cfg: RunConfig,
    store: RunStore,
    run_id: str,
    *,
    resume: bool = False,
    control: Callable[[int], bool] | None = None,
    update: Callable[..., None] | None = None,
) -> RunState:
    """Train one run to its end, saving snapshots, checkpoints and status as it goes.

    Every change is written to status.json before ``update`` hears of it, so whoever sees
    a final state can read the finished run from disk. Errors never escape: they end the
    run as diverged or failed, with a message saying what broke. After running out of
    memory, the trainer and the traceback are dropped and the memory released before the
    failure is reported, so the next run starts with it free.

    Args:
        cfg: the checked config.
        store: where the run is saved.
        run_id: the run's id in ``store`` (created by the caller).
        resume: continue from the run's last checkpoint (an interrupted or stopped run).
        control: called before every step with the steps done so far; may block (pause) and
            returns False to stop after one last snapshot.
        update: called with the changed fields as keywords: ``state``, ``phase``,
            ``message``, ``device``, ``step`` with ``elapsed`` (training seconds), ``latest``
            (a saved Snapshot), ``final`` (final metrics) with ``eval_seconds`` (the final
            evaluation's wall time).

    Returns:
        The final state: finished, stopped, diverged or failed.
    """
    tell = update or _ignore

    def record(**fields: Any) -> None:
        try:
            store.set_status(run_id, **{k: v for k, v in fields.items() if k in STATUS_FIELDS})
        finally:
            tell(**fields)

    lost_memory = False
    try:
        return _train(cfg, store, run_id, resume, control, tell, record)
    except TrainingDivergedError as err:
        record(state=RunState.DIVERGED, message=str(err))
        store.set_status(run_id, diverged_at=err.step)
        return RunState.DIVERGED
    except ConfigError as err:
        message = str(err)
    except OSError as err:  # the disk is what failed: say so in memory, try the disk once
        message = f"Could not save the run: {err}. Training stopped."
        tell(state=RunState.FAILED, message=message)
        with contextlib.suppress(OSError):
            store.set_status(run_id, state=RunState.FAILED, message=message)
        return RunState.FAILED
    except Exception as err:  # the app must keep serving; the message says what broke
        where = out_of_memory(err)
        lost_memory = where is not None
        if where is not None:
            message = out_of_memory_advice(cfg, where)
            traceback.clear_frames(err.__traceback__)  # its frames' tensors, whoever keeps err
        elif is_device_assert(err):
            CudaHealth.mark_broken()
            message = DEVICE_ASSERT_MESSAGE
        else:
            message = f"Training failed: {type(err).__name__}: {err}"
    # the exception, its traceback and the trainer its frames held are gone now
    if lost_memory:
        release_memory()
    record(state=RunState.FAILED, message=message)
    return RunState.FAILED


def _train(
    cfg: RunConfig,
    store: RunStore,
    run_id: str,
    resume: bool,
    control: Callable[[int], bool] | None,
    tell: Callable[..., None],
    record: Callable[..., None],
) -> RunState:
    """The body of ``train_and_save``: its frame alone holds the trainer."""
    trainer = Trainer(cfg)
    if resume:
        trainer.load_state_dict(store.load_checkpoint(run_id))
        store.forget_after(run_id, trainer.step)  # retrained from here
        tell(step=trainer.step, elapsed=trainer.elapsed)
    note = trainer.resume_note  # e.g. the sampler was reseeded on another device type
    store.set_status(run_id, pid=os.getpid())
    record(state=RunState.RUNNING, phase=Phase.TRAINING, device=trainer.device_note, message=note)
    gate = None if control is None else (lambda: control(trainer.step))
    for snap in trainer.run(control=gate):
        store.save_snapshot(run_id, snap)
        store.save_checkpoint(run_id, trainer.state_dict())
        tell(latest=snap, step=snap.step, elapsed=snap.elapsed)
        store.set_status(run_id, step=snap.step, metrics=snap.metrics)
    if trainer.step < cfg.steps:  # control said stop
        record(state=RunState.STOPPED, message=note)
        return RunState.STOPPED
    if cfg.final_eval:
        record(phase=Phase.FINAL_EVALUATION, message=FINAL_EVALUATION_NOTE)
        started = time.perf_counter()
        evaluation = trainer.final_evaluation()
        eval_seconds = round(time.perf_counter() - started, 2)  # embedding + metrics
        store.save_embeddings(run_id, final_embeddings(trainer, evaluation))
        final = evaluation.metrics
        store.set_status(run_id, final_metrics=final, eval_seconds=eval_seconds)
        tell(final=final, eval_seconds=eval_seconds)
    record(state=RunState.FINISHED, message=note)
    return RunState.FINISHED


class TrainingJob:
    """Trains one run in a background thread (``train_and_save``), with pause and stop.

    Args:
        cfg: the checked config.
        store: where the run is saved.
        run_id: the run's id in ``store`` (created by the caller).
        resume: continue from the run's last checkpoint (an interrupted or stopped run).
        clock: seconds on a monotonic clock (tests pass a fake one).
        threads: torch's intra-op threads for this job's thread (None: torch's default), or
            a function giving them, asked before every step (``JobManager.thread_share``).
    """

    def __init__(
        self,
        cfg: RunConfig,
        store: RunStore,
        run_id: str,
        resume: bool = False,
        clock: Callable[[], float] = time.monotonic,
        threads: int | Callable[[], int] | None = None,
    ) -> None:
        self.cfg, self.store, self.run_id, self.resume_from_checkpoint = cfg, store, run_id, resume
        self._clock = clock
        self.threads = threads
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._resume = threading.Event()
        self._resume.set()
        self._thread: threading.Thread | None = None
        self._finished = threading.Event()  # set as the thread's work ends (see ``join``)
        self._rate = StepRate()
        self._phase_since = clock()
        self._timed_step = 0  # the step ``elapsed`` belongs to
        self.state = RunState.QUEUED
        self.phase = Phase.TRAINING
        self.message = ""
        self.device = ""
        self.step = 0
        self.elapsed = 0.0
        self.latest: Snapshot | None = None
        self.snapshots = 0
        self.final: dict[str, float] = {}
        self.eval_seconds: float | None = None  # the final evaluation's wall time

    def start(self) -> None:
        """Start training in a daemon thread."""
        self._update(state=RunState.STARTING)
        self._thread = threading.Thread(target=self._run, name=f"train-{self.run_id}", daemon=True)
        self._thread.start()

    def pause(self) -> None:
        """Hold before the next step (only while training steps, not in the final evaluation)."""
        if self.state is RunState.RUNNING and self.phase is Phase.TRAINING:
            self._resume.clear()
            self._record(state=RunState.PAUSED)

    def resume(self) -> None:
        """Continue after a pause."""
        if self.state is RunState.PAUSED:
            self._record(state=RunState.RUNNING)
            self._resume.set()

    def stop(self) -> None:
        """Stop after the current step (a last snapshot is saved)."""
        self._stop.set()
        self._resume.set()

    def cancel(self) -> None:
        """Stop a job that never started (taken off the queue)."""
        self.stop()
        self._record(state=RunState.STOPPED)

    def join(self, timeout: float | None = None) -> None:
        """Wait for the thread's work to end (the trainer freed, the state final).

        Waits on an event, not ``Thread.join``: in CPython 3.11 a ``Thread.join`` cut short by
        Ctrl-C marks the thread ended, and every later join returns at once. The CLI then
        printed the run as "running", left it so on disk, and exited under the training.
        """
        if self._thread is not None:
            self._finished.wait(timeout)

    @property
    def done(self) -> bool:
        """True once the job has ended, whatever the reason."""
        return self.state in FINAL

    def progress(self) -> Progress:
        """A consistent copy of the job's state."""
        now = self._clock()
        with self._lock:
            batch = self.cfg.batch_size
            mean = self._timed_step * batch / self.elapsed if self.elapsed > 0 else 0.0
            training = self.state is RunState.RUNNING and self.phase is Phase.TRAINING
            eta = self._rate.eta(self.cfg.steps - self.step) if training else math.nan
            return Progress(
                run_id=self.run_id,
                state=self.state,
                phase=self.phase,
                step=self.step,
                steps=self.cfg.steps,
                samples_per_s=mean,
                steps_per_s=self._rate.steps_per_s,
                eta_s=eta,
                phase_s=now - self._phase_since,
                message=self.message,
                device=self.device,
                snapshots=self.snapshots,
            )

    def _update(self, **fields: Any) -> None:
        """Show changed fields (the ``update`` of ``train_and_save``)."""
        now = self._clock()
        with self._lock:
            if fields.get("phase", self.phase) != self.phase:
                self._phase_since = now
            if "elapsed" in fields:
                self._timed_step = fields["step"]
            if "latest" in fields:
                self.snapshots += 1
            for key, value in fields.items():
                setattr(self, key, value)

    def _record(self, **fields: Any) -> None:
        """Persist the fields to status.json, then show them (so ``done`` implies saved)."""
        try:
            self.store.set_status(self.run_id, **fields)
        finally:
            self._update(**fields)

    def _control(self, step: int) -> bool:
        """Before each step: count it for the rate, hold while paused, say whether to go on."""
        if self._resume.is_set():
            with self._lock:
                self._rate.update(step, self._clock())
        else:  # paused: the time spent waiting is no training speed
            self._resume.wait()
            with self._lock:
                self._rate.restart(step, self._clock())
        with self._lock:
            self.step = step
        if callable(self.threads) and (want := self.threads()) != torch.get_num_threads():
            torch.set_num_threads(want)  # another job started or ended: the share changed
        return not self._stop.is_set()

    def _run(self) -> None:
        # torch.set_num_threads is process-wide in effect: it also sets the count that every
        # thread adopts at its first parallel op. So the job's count is undone when it ends;
        # kept, it would slow (and change the float sums of) everything the process runs later.
        previous = torch.get_num_threads()
        if self.threads is not None:
            torch.set_num_threads(self.threads() if callable(self.threads) else self.threads)
        try:
            train_and_save(
                self.cfg,
                self.store,
                self.run_id,
                resume=self.resume_from_checkpoint,
                control=self._control,
                update=self._update,
            )
        finally:
            if self.threads is not None:
                torch.set_num_threads(previous)
            self._finished.set()


def resumable(store: RunStore, run_id: str) -> RunRecord:
    """The run, if it can be resumed (interrupted or stopped, with a checkpoint), else an error."""
    record = store.load(run_id)
    if record.status.get("state") not in RESUMABLE:
        raise ConfigError(
            f"Only interrupted or stopped runs can be resumed; {run_id} is "
            f"{record.status.get('state')}."
        )
    if not store.has_checkpoint(run_id):
        raise ConfigError(f"The run {run_id} has no checkpoint to resume from.")
    return record


def __getattr__(name: str) -> Any:
    """``JobManager`` lives in ``services.job_manager`` (which imports this module)."""
    if name == "JobManager":
        from dml_core.services.job_manager import JobManager

        return JobManager
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
