"""The sweeps a server process drives: one ``SweepRunner`` per launched sweep, shared by sessions.

A page launches a sweep here (saved first, then trained in the background on the local backend,
or on Ray when ``DML_RAY_ADDRESS`` is set) and any session can find its runner again by id to
stop it; progress is read from the run store (``sweeps.progress``), not from the runner.
"""

from __future__ import annotations

import atexit
import os
import threading
from pathlib import Path

from dml_core.runs import RunStore
from dml_core.services.sweep_runner import SweepRunner, make_executor
from dml_core.sweeps import Sweep, SweepStore


def default_backend() -> str:
    """``"ray"`` when ``DML_RAY_ADDRESS`` names a cluster, else ``"local"``."""
    return "ray" if os.environ.get("DML_RAY_ADDRESS") else "local"


class SweepSessions:
    """The runners of the sweeps this process launched, by sweep id.

    Args:
        store: the runs directory's store.
        workers: local runs trained at once (the job manager's default on CPU).
    """

    def __init__(self, store: RunStore, workers: int = 2) -> None:
        self.store = store
        self.sweeps = SweepStore(store)
        self.workers = workers
        self._runners: dict[str, SweepRunner] = {}
        self._lock = threading.Lock()

    def launch(self, sweep: Sweep, backend: str | None = None) -> SweepRunner:
        """Save ``sweep`` (if new) and train its missing runs in the background."""
        with self._lock:
            current = self._runners.get(sweep.sweep_id)
            if current is not None and not current.done:
                return current
            if sweep.sweep_id not in self.sweeps.list():
                self.sweeps.save(sweep)
            backend = backend or default_backend()
            executor = make_executor(backend, self.store, workers=self.workers)
            runner = SweepRunner(self.store, sweep, executor)
            self._runners[sweep.sweep_id] = runner
        runner.start()
        return runner

    def runner(self, sweep_id: str) -> SweepRunner | None:
        """The runner of a sweep this process launched, or None."""
        with self._lock:
            return self._runners.get(sweep_id)

    def active(self, sweep_id: str) -> bool:
        """True while this process trains the sweep."""
        runner = self.runner(sweep_id)
        return runner is not None and not runner.done

    def stop(self, sweep_id: str) -> None:
        """Stop the sweep's runs (training ones after a last snapshot, queued ones now)."""
        if (runner := self.runner(sweep_id)) is not None:
            runner.stop()

    def stop_all(self, timeout: float | None = 30.0) -> None:
        """Stop every sweep and wait for their runners (at exit, and after tests)."""
        with self._lock:
            runners = list(self._runners.values())
        for runner in runners:
            runner.stop()
        for runner in runners:
            runner.join(timeout)


_SHARED: dict[str, SweepSessions] = {}
_SHARED_LOCK = threading.Lock()


def shared(store: RunStore) -> SweepSessions:
    """The process-wide registry of ``store``'s runs directory (one per directory)."""
    key = str(Path(store.root).resolve())
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = SweepSessions(store)
            atexit.register(_SHARED[key].stop_all)
        return _SHARED[key]


def stop_all_shared() -> None:
    """Stop every shared registry's sweeps and forget them (tests, shutdown)."""
    with _SHARED_LOCK:
        registries = list(_SHARED.values())
        _SHARED.clear()
    for registry in registries:
        registry.stop_all()
