"""The projection worker: layouts for the live views, computed off the UI thread.

A daemon thread (with UMAP in a spawned subprocess inside a server) takes the newest snapshot of
each run and drops stale ones, so the pages never compute UMAP themselves and a slow layout
never queues up behind the live view.

The UMAP subprocess yields to training (``umap_pool``): it runs at a lower priority with one
thread, and a fit beside a training run of the server at Linux's idle class (``run_in_turn``),
so on 2 cores a layout takes what training leaves instead of half the machine; it ends with
the server that started it.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import threadpoolctl

from dml_core.projection import METHODS, Method, Projector, project
from dml_core.services.child_process import end_with_parent

T = TypeVar("T")

COMPILING = "starting UMAP (first fit of this server)"
WORKING = "working"
IDLE = "idle"
UMAP_NICE = 19  # CFS weight 15 against 1024 at nice 0
# Beside a training run of this server, a fit runs on a SCHED_IDLE thread (``run_in_turn``):
# Linux hands the core to a waking training thread at once, where beside a nice-19 thread it
# can wait for that thread's time slice, and training threads wake thousands of times a
# second (OpenMP teams, the GIL). Measured 2026-12-01 on a 2-core AVX-512 EPYC, the CLI's default
# FashionMNIST run beside one busy thread: 3,367-3,433 samples/s at nice 19, 4,406-4,611 at
# SCHED_IDLE, 4,948-4,988 alone. Not SCHED_IDLE for good: an unprivileged thread cannot leave
# it, and with every core busy it gets next to nothing (weight 3): beside two CPU-bound
# processes an e2e test waiting for a finished run's UMAP timed out after 180 s, where nice 19
# passed in 109 s. So only fits beside training are idle; the rest run at nice 19.
COLD_EPOCHS = 200
"""UMAP epochs of each run's first layout; the warm starts after it take ``WARM_EPOCHS``.

umap-learn's own default above 10,000 points, instead of the 500 it takes below. A run's
first layout is computed while the run trains. On the 2000 probe points of a FashionMNIST
ConvNet run (one thread, 2026-12-01): 0.55 CPU-s instead of 1.31-1.50; trustworthiness 0.953,
0.990 and 0.987 at steps 0, 150 and 300, against 0.957, 0.991 and 0.987; each point's 10
nearest kept 33-49% against 35-51%."""
THREAD_VARIABLES = (
    "NUMBA_NUM_THREADS",
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
)


def yield_to_training() -> None:
    """Set up the UMAP subprocess (its pool's initializer) to take only what training leaves.

    - Priority: ``os.nice(UMAP_NICE)`` for every thread of the process (Linux keeps a nice
      value per thread; threads started later inherit the caller's).
    - One thread: numba reads ``NUMBA_NUM_THREADS`` when it is first imported, which happens
      later, in the first UMAP fit; BLAS and OpenMP, loaded with numpy already, are capped
      through threadpoolctl.
    - An orphan never stays: a daemon thread waits on the parent's sentinel and ends the
      process when the server dies (a pool worker blocked on its queue would wait forever,
      holding about 1 GB).
    """
    with contextlib.suppress(OSError):
        os.nice(UMAP_NICE)
    tasks = Path("/proc/self/task")
    for tid in os.listdir(tasks) if tasks.is_dir() else ():
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, int(tid), os.getpriority(os.PRIO_PROCESS, 0))
    for name in THREAD_VARIABLES:
        os.environ[name] = "1"
    threadpoolctl.threadpool_limits(1)
    end_with_parent(0)


def run_in_turn(beside_training: bool, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` in the UMAP subprocess, on an idle-class thread beside training.

    Beside training, a thread of its own runs it at ``SCHED_IDLE`` (Linux's policy is per
    thread, and a thread cannot leave SCHED_IDLE unprivileged, so the thread ends with the
    call); otherwise the calling thread runs it at nice ``UMAP_NICE``. See ``UMAP_NICE``.
    """
    if not beside_training:
        return fn(*args, **kwargs)
    out: dict[str, Any] = {}

    def idle() -> None:
        with contextlib.suppress(OSError, AttributeError):  # no SCHED_IDLE: at nice 19
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        try:
            out["value"] = fn(*args, **kwargs)
        except BaseException as error:  # raised again in the caller
            out["error"] = error

    thread = threading.Thread(target=idle, name="umap-beside-training")
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


def umap_pool() -> ProcessPoolExecutor:
    """One spawned worker process for UMAP fits, set up by ``yield_to_training``."""
    return ProcessPoolExecutor(
        max_workers=1,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=yield_to_training,
    )


def status_text(status: str) -> str:
    """What the page says while it shows PCA instead of UMAP, for a ``ProjectionWorker.status``."""
    if status == COMPILING:
        return "UMAP starts (first use compiles)"  # later servers load the compiled kernels
    return "UMAP is computing"


class ProjectionWorker:
    """A daemon thread that computes layouts for the UI, newest snapshot first.

    Requests are keyed by (run key, method). A submitted index replaces every older index of
    the same key that has not started yet, so a slow UMAP skips stale snapshots instead of
    queueing them. One ``Projector`` per (key, method) chains warm starts along a run. The last
    ``max_results`` layouts per (key, method) are kept (LRU). All shared state sits behind one
    condition variable; the thread sleeps on it when there is nothing to do.

    A failed computation does not stop the thread: its message is kept in ``last_error``.

    ``in_subprocess``: UMAP runs in ``umap_pool``'s process, on an idle-class thread while
    ``training()`` says a run trains beside it (``run_in_turn``).
    """

    def __init__(
        self,
        seed: int = 0,
        max_results: int = 200,
        in_subprocess: bool = False,
        training: Callable[[], bool] = lambda: False,
    ):
        self.seed = seed
        self.training = training  # whether a run trains beside the UMAP subprocess now
        # UMAP (numba) holds the GIL for long stretches, above all while it compiles: in a
        # server it would stall the training threads. In a subprocess it only shares the CPU,
        # and yields it to training (``yield_to_training``).
        self._pool = umap_pool() if in_subprocess else None
        self.max_results = max_results
        self.last_error: str | None = None
        self._cond = threading.Condition()
        self._pending: dict[tuple[str, str], dict[int, np.ndarray]] = {}
        self._results: dict[tuple[str, str], OrderedDict[int, np.ndarray]] = {}
        self._projectors: dict[tuple[str, str], Projector] = {}
        self._busy: tuple[str, int, str] | None = None
        self._warm_up_requested = False
        self._umap_ready = False
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="projection-worker", daemon=True)
        self._thread.start()

    def submit(self, key: str, index: int, emb: np.ndarray, method: Method) -> None:
        """Ask for the layout of snapshot ``index`` of run ``key``; returns at once.

        Older pending indices of the same (key, method) are dropped. Requests already
        computed, being computed or pending are ignored (a page polling for a layout asks
        again while the worker computes it).
        """
        if method not in METHODS:
            raise ValueError(f"The 'method' parameter must be one of {METHODS}. Got {method!r}.")
        slot = (key, method)
        with self._cond:
            computed = index in self._results.get(slot, {})
            queued = index in self._pending.get(slot, {})  # no empty slot left behind
            if self._stopped or computed or queued or self._busy == (key, index, method):
                return
            pending = self._pending.setdefault(slot, {})
            for old in [i for i in pending if i < index]:
                del pending[old]
            pending[index] = np.array(emb, dtype=np.float32, copy=True)
            self._cond.notify_all()

    def get(self, key: str, index: int, method: Method, timeout: float = 0.0) -> np.ndarray | None:
        """The layout of snapshot ``index`` if computed, else None; waits up to ``timeout`` s."""
        slot = (key, method)
        with self._cond:
            self._cond.wait_for(lambda: index in self._results.get(slot, {}), timeout=timeout)
            results = self._results.get(slot)
            if results is None or index not in results:
                return None
            results.move_to_end(index)
            return results[index]

    def latest(self, key: str, method: Method) -> tuple[int, np.ndarray] | None:
        """The newest computed (index, layout) of run ``key``, or None if there is none yet."""
        with self._cond:
            results = self._results.get((key, method))
            if not results:
                return None
            index = max(results)
            return index, results[index]

    def status(self) -> str:
        """One of ``COMPILING``, ``WORKING`` or ``IDLE``."""
        with self._cond:
            if self._busy is not None and self._busy[2] == "umap" and not self._umap_ready:
                return COMPILING
            if self._busy is not None or self._pending or self._warm_up_requested:
                return WORKING
            return IDLE

    def warm_up(self) -> None:
        """Start a tiny UMAP fit in the background so numba compiles before the first request."""
        with self._cond:
            if not self._umap_ready:
                self._warm_up_requested = True
                self._cond.notify_all()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until nothing is pending or running; True unless the timeout passed."""
        with self._cond:
            return self._cond.wait_for(
                lambda: self._busy is None and not self._pending and not self._warm_up_requested,
                timeout=timeout,
            )

    def stop(self, timeout: float | None = 5.0) -> None:
        """Drop pending work and end the thread (after the layout it is computing, if any)."""
        with self._cond:
            self._stopped = True
            self._pending.clear()
            self._warm_up_requested = False
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def _project(self, *args: object, **kwargs: object) -> np.ndarray:
        """``project`` here, or UMAP in the worker's subprocess when it has one."""
        if self._pool is not None and args[1] == "umap":
            beside = self.training()
            return self._pool.submit(run_in_turn, beside, project, *args, **kwargs).result()
        return project(*args, **kwargs)  # type: ignore[arg-type]

    def _next_job(self) -> tuple[str, int, str, np.ndarray | None] | None:
        """Pop the next job under the lock: warm-up first, then round-robin over keys."""
        if self._warm_up_requested:
            self._warm_up_requested = False
            return ("", -1, "umap", None)
        slot = next(iter(self._pending))
        pending = self._pending.pop(slot)
        index = max(pending)
        emb = pending.pop(index)
        if pending:
            self._pending[slot] = pending  # re-inserted last: other keys go first
        return (slot[0], index, slot[1], emb)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(
                    lambda: self._stopped or self._pending or self._warm_up_requested
                )
                if self._stopped:
                    self._busy = None
                    self._cond.notify_all()
                    return
                key, index, method, emb = self._next_job()
                self._busy = (key, index, method)
            layout = self._compute(key, method, emb)
            with self._cond:
                if method == "umap" and not (layout is None and emb is not None):
                    self._umap_ready = True
                if layout is not None and emb is not None:
                    results = self._results.setdefault((key, method), OrderedDict())
                    results[index] = layout
                    while len(results) > self.max_results:
                        results.popitem(last=False)
                self._busy = None
                self._cond.notify_all()

    def _compute(self, key: str, method: str, emb: np.ndarray | None) -> np.ndarray | None:
        """Run one job outside the lock; None (and ``last_error`` set) when it fails."""
        try:
            if emb is None:  # warm-up: compiles the cold and the warm path on a tiny problem
                tiny = np.random.default_rng(0).normal(size=(64, 8))
                layout = self._project(tiny, "umap", seed=self.seed, n_epochs=10)
                return self._project(tiny, "umap", init=layout, seed=self.seed, n_epochs=5)
            projector = self._projectors.get((key, method))
            if projector is None:
                projector = Projector(
                    method,
                    seed=self.seed,
                    cold_epochs=COLD_EPOCHS,
                    project_fn=self._project,  # type: ignore[arg-type]
                )
                self._projectors[(key, method)] = projector
            return projector.update(emb)
        except Exception as error:  # the thread must survive a bad request
            self.last_error = f"{type(error).__name__}: {error}"
            return None
