"""The app's local runs, each trained in a process of its own: ``ProcessJob``.

A job of the app trained in a thread of the Streamlit server shares the server's GIL with the
page reruns, which build figures in pure Python while the run trains. Each time the training
thread comes back from a torch op it has to take the GIL again, and while a rerun holds it
that wait lasts up to the switch interval (5 ms), op after op. Measured 2026-12-01 on 2 cores
(the CLI's default FashionMNIST run beside 150 ms of Python every 1.5 s): 4,210 samples/s
with that Python in a thread of the training process, 4,669 with it in another process,
4,724 with none. In the app, py-spy counted 0.5 s of the page reruns' GIL in a 9 s run.

So the app trains each run in a spawned child process (``JobManager(processes=True)``):

- The child runs ``train_and_save`` on a ``RunStore`` of the same runs folder and writes the
  run's files itself, as the thread did; ``RunStore.set_status`` locks status.json across
  processes. Every change is saved before it is sent, so ``done`` still implies saved.
- Its ``update`` fields (state, phase, snapshots, final metrics) come back through a pipe, and
  a tick with the step at most every ``TICK_S``; a pump thread shows them on the job.
- Orders go the other way through shared values: run, pause or stop, and the job's share of
  torch's threads (``JobManager.thread_share``), read before every step.
- A child that dies (killed, out of memory, a crash in native code) takes only its run down,
  not the server: the run reads "interrupted", with the exit code, and resumes from its last
  snapshot and checkpoint, as a run whose server died. A child ends with the server.
- Starting Python and importing torch takes seconds, so the manager keeps one child started
  ahead (``Standby``), its imports done, and starts the next one only when no run trains.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import threading
import time
from pathlib import Path
from typing import Any

from dml_core.config import RunConfig
from dml_core.runs import FINAL, RunState, RunStore
from dml_core.services.child_process import end_with_parent, start_without_main
from dml_core.services.jobs import Phase, TrainingJob

TICK_S = 0.2
"""How often (at most) a child tells the job its step between snapshots."""
PAUSE_POLL_S = 0.05
RUN, PAUSE, STOP = 0, 1, 2
"""The orders a job gives its child, in a shared value."""
PROCESS_NAME = "dml-train"
"""A child's process name (Linux)."""
_CONTEXT = multiprocessing.get_context("spawn")  # never fork a server with threads and OpenMP


def _child(conn: Any, order: Any, threads: Any) -> None:
    """A child's life: import what training needs, wait for its run, train it, end."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the server, which stops us
    with contextlib.suppress(OSError):  # its name in ps, top and /proc (``bench.processes``)
        Path("/proc/self/comm").write_text(PROCESS_NAME)
    end_with_parent(1)
    import torch

    from dml_core.services.jobs import train_and_save

    try:
        cfg_json, root, run_id, resume = conn.recv()
    except EOFError:  # the server let the standby go
        return
    cfg = RunConfig.model_validate_json(cfg_json)
    store = RunStore(root)
    told = [0.0]

    def tell(**fields: Any) -> None:
        conn.send(("update", fields))

    def control(step: int) -> bool:
        if threads.value and threads.value != torch.get_num_threads():
            torch.set_num_threads(threads.value)
        if order.value == PAUSE:
            store.set_status(run_id, state=RunState.PAUSED)
            tell(state=RunState.PAUSED)
            while order.value == PAUSE:
                time.sleep(PAUSE_POLL_S)
            if order.value != STOP:
                store.set_status(run_id, state=RunState.RUNNING)
                tell(state=RunState.RUNNING)
        if (now := time.monotonic()) - told[0] >= TICK_S:
            told[0] = now
            conn.send(("tick", step))
        return order.value != STOP

    if threads.value:
        torch.set_num_threads(threads.value)
    try:
        train_and_save(cfg, store, run_id, resume=resume, control=control, update=tell)
    finally:
        conn.close()


class Standby:
    """A child process started ahead: Python up, torch imported, waiting for a run."""

    def __init__(self) -> None:
        self.conn, child_conn = _CONTEXT.Pipe()
        self.order = _CONTEXT.Value("i", RUN, lock=False)
        self.threads = _CONTEXT.Value("i", 0, lock=False)
        self.process = _CONTEXT.Process(
            target=_child, args=(child_conn, self.order, self.threads), daemon=True
        )
        start_without_main(self.process)  # not the page the server ran last
        child_conn.close()

    def alive(self) -> bool:
        """Whether the child is still there to take a run."""
        return self.process.is_alive()

    def close(self) -> None:
        """Let the child go without a run."""
        self.conn.close()
        self.process.join(timeout=10)


class ProcessJob(TrainingJob):
    """A ``TrainingJob`` whose ``train_and_save`` runs in a child process (module docstring).

    Args:
        cfg, store, run_id, resume, clock, threads: as ``TrainingJob``'s.
        standby: a child started ahead to train in (None: one is started now).
    """

    def __init__(self, *args: Any, standby: Standby | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._standby = standby
        self._child: Standby | None = None
        self.exitcode: int | None = None

    def start(self) -> None:
        """Hand the run to the child; a pump thread shows what it sends."""
        self._update(state=RunState.STARTING)
        spec = (self.cfg.model_dump_json(), str(self.store.root), self.run_id,
                self.resume_from_checkpoint)  # fmt: skip
        child = self._standby if self._standby is not None and self._standby.alive() else None
        for attempt in (child, None):  # a standby that died since: a child of its own
            self._child = attempt or Standby()
            if isinstance(self.threads, int):
                self._child.threads.value = self.threads
            try:
                self._child.conn.send(spec)
                break
            except OSError:
                continue
        if self._stop.is_set():
            self._child.order.value = STOP
        self._thread = threading.Thread(target=self._pump, name=f"pump-{self.run_id}", daemon=True)
        self._thread.start()

    def pause(self) -> None:
        """Ask the child to hold before its next step (it says when it did)."""
        training = self.state is RunState.RUNNING and self.phase is Phase.TRAINING
        if training and self._child is not None:
            self._child.order.value = PAUSE

    def resume(self) -> None:
        """Let a paused child go on."""
        if self._child is not None and self._child.order.value == PAUSE:
            self._child.order.value = RUN

    def stop(self) -> None:
        """Stop after the child's current step (a last snapshot is saved)."""
        super().stop()
        if self._child is not None:
            self._child.order.value = STOP

    def _share(self) -> None:
        """Tell the child its share of torch's threads now."""
        if callable(self.threads) and self._child is not None:
            self._child.threads.value = self.threads()

    def _pump(self) -> None:
        """Show the child's updates and ticks until it ends; a child that died fails its run."""
        assert self._child is not None
        child = self._child
        try:
            self._share()
            while True:
                try:
                    kind, value = child.conn.recv()
                except (EOFError, OSError):
                    break
                if kind == "tick":
                    with self._lock:
                        self._rate.update(value, self._clock())
                        self.step = value
                else:
                    if value.get("state") is RunState.RUNNING and self.state is RunState.PAUSED:
                        with self._lock:  # the time spent paused is no training speed
                            self._rate.restart(self.step, self._clock())
                    self._update(**value)
                self._share()
            child.process.join()
            self.exitcode = child.process.exitcode
            if self.state not in FINAL:
                self._record(
                    state=RunState.INTERRUPTED,
                    message=f"This run was interrupted: its training process ended (exit code "
                    f"{self.exitcode}) at step {self.step}. Resume it from its last checkpoint.",
                )
        finally:
            child.conn.close()
            self._finished.set()
