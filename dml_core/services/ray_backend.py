"""The Ray executor: each run a Ray task with declared resources; only the driver writes runs.

A run is one call of ``train_remote``, a Ray task declaring ``num_cpus`` (and, on GPU
clusters, a fractional ``num_gpus``, so several small runs share one GPU). On the worker it
runs ``jobs.train_and_save``, the one train-and-save path, against a ``StreamingStore``: its
reads come from what the driver sent (the checkpoint to resume from), and every write
(``set_status``, ``save_snapshot``, ``save_checkpoint_bytes``, ``save_embeddings``, any
``RunStore.save_*``) is sent, in order and in groups (one per status change, pickled), to a
``Channel`` actor (``ray_worker``). The driver (``RayExecutor``) takes the records from the
channel and replays them on its ``RunStore``, whose writes are atomic as always. No shared
filesystem is needed.

Control goes the other way: the driver sets a run's order (run, pause, stop) in the channel;
the worker reads it before training steps (at most every ``ORDER_EVERY_S``). A run not started
yet is cancelled (``ray.cancel``). Tasks are not retried (``max_retries=0``): a worker that
dies (killed, out of memory, node lost) leaves its run ``interrupted``, resumable from the
last checkpoint that reached the driver.

The driver's pid is the run's ``pid`` in status.json (if the driver dies, nothing more lands
and the run reads interrupted); the worker's host and pid are its ``worker``.
"""

from __future__ import annotations

import logging
import os
import pickle
import socket
import threading
import time
from pathlib import Path
from typing import Any

import ray
import torch
from ray.exceptions import RayError, RayTaskError, TaskCancelledError

import dml_core
from dml_core.config import RunConfig
from dml_core.errors import ConfigError
from dml_core.runs import RunState, RunStore
from dml_core.services.jobs import RAY_ADDRESS_ENV, train_and_save
from dml_core.services.ray_worker import WRITES, Channel, Record, RemoteControl, StreamingStore
from dml_core.services.sweep_runner import RunTask, worker_info

GPU_SHARE = 0.25
"""GPUs each run declares by default on a cluster with GPUs: four small runs share one."""
CLOSE_WAIT_S = 30.0
"""How long ``RayExecutor.close`` waits for the runs it stopped to send their last records."""


def connect(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Attach this process to Ray; returns True when it started a local instance for itself.

    Args:
        address: a Ray address (``"auto"``, ``"10.0.0.5:6379"``, ``"ray://host:10001"``);
            None: ``DML_RAY_ADDRESS`` if set, else start a local instance with ``num_cpus``.
            Workers of an existing cluster get this ``dml_core`` as a ``py_modules``
            runtime environment, so the cluster needs no copy of the code.
        num_cpus: CPUs of a local instance (None: all of this machine's).
    """
    if ray.is_initialized():
        return False
    address = address or os.environ.get(RAY_ADDRESS_ENV) or None
    quiet: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
    if address is None:
        ray.init(num_cpus=num_cpus, include_dashboard=False, **quiet)
        return True
    check_reachable(address)
    package = str(Path(dml_core.__file__).parent)
    runtime = {"py_modules": [package], "excludes": ["__pycache__"]}
    try:
        ray.init(address=address, runtime_env=runtime, **quiet)
    except ConnectionError as err:  # Ray sends its token to a named address only if told to
        raise ConfigError(
            f"Could not connect to the Ray cluster at {address} ({err}). A cluster with token "
            "authentication (Ray 2.60's default) needs RAY_AUTH_MODE=token here, with its "
            "token in ~/.ray/auth_token or RAY_AUTH_TOKEN."
        ) from None
    return False


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail in one line, at once, when nothing listens at a ``HOST:PORT`` address.

    Ray itself retries an unreachable head for minutes. Other forms (``auto``,
    ``ray://...``) are left to Ray.
    """
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "/" in address:
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise ConfigError(
            f"Nothing answers at the Ray address {address} ({err.strerror or err}): start the "
            "head with `ray start --head` and use the address it prints."
        ) from None


@ray.remote(max_retries=0)
def train_remote(
    cfg_json: str, run_id: str, checkpoint: dict[str, Any] | None, channel: Any, threads: int
) -> str:
    """Train one run on a Ray worker; every write goes back to the driver through ``channel``.

    Returns:
        The run's final state (its records say the same and reached the channel first).
    """
    torch.set_num_threads(threads)
    start = time.perf_counter()
    store = StreamingStore(channel, checkpoint)
    control = RemoteControl(channel, store, run_id)
    store.set_status(run_id, worker=worker_info())
    if control.first():
        cfg = RunConfig.model_validate_json(cfg_json)
        state = train_and_save(  # type: ignore[arg-type]  # StreamingStore: RunStore's writes
            cfg, store, run_id, resume=checkpoint is not None, control=control
        )
    else:
        state = RunState.STOPPED
        store.set_status(run_id, state=state, message="Cancelled before it started.")
    store.set_status(run_id, seconds=round(time.perf_counter() - start, 3))
    store.flush()
    return state.value


def newest_checkpoints(records: list[Record]) -> list[Record]:
    """``records`` less each checkpoint that a later one of the same run replaces."""
    later: set[str] = set()
    kept = []
    for record in reversed(records):
        run_id, method = record[0], record[1]
        if method == "save_checkpoint_bytes":  # what StreamingStore.save_checkpoint sends
            if run_id in later:
                continue
            later.add(run_id)
        kept.append(record)
    return kept[::-1]


class RayExecutor:
    """Runs on a Ray cluster: one task per run, records replayed on this process's store.

    Args:
        store: where runs are saved (only this process writes it).
        address: see ``connect``.
        num_cpus: CPUs each run declares (its torch threads too).
        num_gpus: GPUs each run declares; None: ``GPU_SHARE`` when the cluster has GPUs,
            else 0 (Ray then hides the GPUs from the run). Runs on ``device="cpu"`` declare 0.
        local_cpus: CPUs of a local instance started here (None: all).
    """

    name = "ray"

    def __init__(
        self,
        store: RunStore,
        address: str | None = None,
        num_cpus: float = 1.0,
        num_gpus: float | None = None,
        local_cpus: int | None = None,
    ) -> None:
        self.store = store
        self._owns_ray = connect(address, local_cpus)
        has_gpus = ray.cluster_resources().get("GPU", 0) > 0
        self.num_cpus = num_cpus
        self.num_gpus = (GPU_SHARE if has_gpus else 0.0) if num_gpus is None else num_gpus
        self.channel = Channel.remote()  # type: ignore[attr-defined]
        ray.get(self.channel.order.remote(""))  # its process is up before the first run waits
        self._lock = threading.Lock()  # stop() may come from another thread than wait()
        self._refs: dict[Any, str] = {}
        self._by_run: dict[str, Any] = {}
        self._waiting: list[str] = []  # submitted, no worker yet
        self._failed: dict[str, str] = {}  # runs whose records could not be written
        self.workers: dict[str, dict[str, Any]] = {}
        self._closed = False

    def _order(self, run_id: str, order: str) -> None:
        """Set the run's order in the channel (nothing once closed: the channel is gone)."""
        if not self._closed:
            ray.get(self.channel.set_order.remote(run_id, order))

    def submit(self, task: RunTask) -> None:
        """Start the run's task (it waits for resources in Ray's queue)."""
        checkpoint = self.store.load_checkpoint(task.run_id) if task.resume else None
        self._order(task.run_id, "run")  # not a stop of its last task
        gpus = 0.0 if task.config.device == "cpu" else self.num_gpus
        options = {"num_cpus": self.num_cpus, "num_gpus": gpus}
        ref = train_remote.options(**options).remote(
            task.config.model_dump_json(),
            task.run_id,
            checkpoint,
            self.channel,
            max(1, int(self.num_cpus)),
        )
        with self._lock:
            self._refs[ref] = task.run_id
            self._by_run[task.run_id] = ref
            self._waiting.append(task.run_id)

    def pause(self, run_id: str) -> None:
        """Hold the run before its next step."""
        self._order(run_id, "pause")

    def resume(self, run_id: str) -> None:
        """Continue a paused run."""
        self._order(run_id, "run")

    def stop(self, run_id: str) -> None:
        """Stop the run after a last snapshot; cancel it if no worker took it yet."""
        self._order(run_id, "stop")
        with self._lock:
            queued = self._by_run.get(run_id) if run_id in self._waiting else None
        if queued is not None:
            ray.cancel(queued)

    def queue_position(self, run_id: str) -> int | None:
        """1-based place among this driver's runs that no worker took yet, or None."""
        with self._lock:
            return self._waiting.index(run_id) + 1 if run_id in self._waiting else None

    def waiting(self) -> int:
        """How many of this driver's runs no worker took yet."""
        with self._lock:
            return len(self._waiting)

    def wait(self, timeout: float) -> list[str]:
        """Replay the records that arrived; return the runs whose tasks ended.

        Tasks are looked at before the records are taken: a task flushes its records before
        it returns, so an ended run's records are all replayed before it is reported.
        """
        with self._lock:
            refs = list(self._refs)
        if refs:
            ray.wait(refs, num_returns=1, timeout=timeout)
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        else:
            time.sleep(timeout)
            ready = []
        parcels = ray.get(self.channel.take.remote())
        self._replay([record for _, parcel in parcels for record in pickle.loads(parcel)])
        ended = []
        for ref in ready:
            with self._lock:
                run_id = self._refs.pop(ref)
                self._by_run.pop(run_id, None)
                if run_id in self._waiting:
                    self._waiting.remove(run_id)
            self._end(run_id, ref)
            ended.append(run_id)
        return ended

    def _replay(self, records: list[Record]) -> None:
        for run_id, method, args, kwargs in newest_checkpoints(records):
            if method not in WRITES or run_id in self._failed:
                continue
            if "worker" in kwargs:
                self.workers[run_id] = kwargs["worker"]
                with self._lock:
                    if run_id in self._waiting:
                        self._waiting.remove(run_id)
            try:
                getattr(self.store, method)(run_id, *args, **kwargs)
            except OSError as err:  # the driver's disk: stop the run, say why at its end
                self._failed[run_id] = f"Could not save the run: {err}. Training stopped."
                self.channel.set_order.remote(run_id, "stop")

    def _end(self, run_id: str, ref: Any) -> None:
        """Record how a run's task ended, unless its own records said so."""
        try:
            ray.get(ref)
        except TaskCancelledError:
            self.store.set_status(
                run_id, state=RunState.STOPPED, message="Cancelled before it started."
            )
        except RayTaskError as err:  # an error outside train_and_save (which catches its own)
            cause = getattr(err, "cause", None) or err
            message = f"The Ray worker failed: {type(cause).__name__}: {cause}".splitlines()[0]
            self.store.set_status(run_id, state=RunState.FAILED, message=message)
        except RayError as err:  # the worker or its node died
            worker = self.workers.get(run_id, {})
            step = self.store.status(run_id).get("step", 0)
            self.store.set_status(
                run_id,
                state=RunState.INTERRUPTED,
                message=(
                    f"The Ray worker {worker.get('host', '?')} pid {worker.get('pid', '?')} "
                    f"died at step {step} ({type(err).__name__}). Resume the run from its "
                    "last checkpoint."
                ),
            )
        if run_id in self._failed:
            self.store.set_status(run_id, state=RunState.FAILED, message=self._failed[run_id])

    def close(self, timeout: float = CLOSE_WAIT_S) -> None:
        """Stop runs still going and write their last records; drop the channel; end our Ray.

        A stopped run sends a last snapshot, its checkpoint at that step and its "stopped"
        status as it ends; they are replayed here (for at most ``timeout`` seconds) before the
        channel goes, so the run resumes from where it stopped. Killed at once, it would still
        read "running", its checkpoint up to ``CHECKPOINT_EVERY_S`` (``ray_worker``) old. A run
        that has not ended by then (e.g. in its final evaluation) keeps what reached the
        driver. Ray itself is shut down only if this executor started it.
        """
        with self._lock:
            going = list(self._by_run)
        for run_id in going:
            self.stop(run_id)
        deadline = time.monotonic() + timeout
        try:
            while self._refs and (left := deadline - time.monotonic()) > 0:
                self.wait(min(left, 0.5))
        finally:
            self._closed = True  # a late stop (e.g. a manager's at exit) finds nothing to do
            ray.kill(self.channel)
            if self._owns_ray:
                ray.shutdown()
