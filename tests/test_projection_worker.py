"""Tests for dml_core.services.projection_worker: the layouts' thread and its UMAP process."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from test_projection import blobs

from dml_core.projection import Projector, project
from dml_core.services.projection_worker import (
    COLD_EPOCHS,
    COMPILING,
    IDLE,
    UMAP_NICE,
    WORKING,
    ProjectionWorker,
    run_in_turn,
    umap_pool,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def worker():
    w = ProjectionWorker()
    yield w
    w.stop()


def test_worker_computes_newest_and_skips_stale(worker):
    embs = [blobs(n=100, seed=s) for s in range(3)]
    for index, emb in enumerate(embs):
        worker.submit("run", index, emb, "pca")
    newest = worker.get("run", 2, "pca", timeout=10.0)
    assert newest is not None
    assert newest.shape == (100, 2)
    assert worker.wait_idle(timeout=10.0)
    assert worker.status() == IDLE
    assert worker.latest("run", "pca")[0] == 2
    for index in (0, 1):  # stale: computed only if the worker got to it first
        layout = worker.get("run", index, "pca")
        assert layout is None or layout.shape == (100, 2)


def test_a_runs_first_umap_layout_takes_cold_epochs_and_the_next_warm_ones(worker, monkeypatch):
    """The worker's first UMAP fit of a run takes ``COLD_EPOCHS`` (200), then warm starts.

    Catches: umap-learn's default for fewer than 10,000 points (500 epochs: 2.5x the CPU
    of a run's first layout, taken from its training) and a second layout fitted cold.
    """
    from dml_core.projection import WARM_EPOCHS
    from dml_core.services import projection_worker

    fits = []

    def recorded(*args, **kwargs):
        fits.append((kwargs.get("init") is not None, kwargs.get("n_epochs")))
        return project(*args, **kwargs)

    monkeypatch.setattr(projection_worker, "project", recorded)
    for index in (0, 1):
        worker.submit("run", index, blobs(n=100, seed=index), "umap")
        assert worker.get("run", index, "umap", timeout=60.0) is not None
    assert fits == [(False, COLD_EPOCHS), (True, WARM_EPOCHS)]
    assert COLD_EPOCHS == 200


def test_worker_drops_pending_older_indices(worker):
    with worker._cond:  # re-entrant: the worker cannot start a job while the test holds it
        for index in range(5):
            worker.submit("run", index, blobs(n=100, seed=index), "pca")
        worker.submit("run", 2, blobs(n=100), "pca")  # older than pending 4: kept beside it
        assert sorted(worker._pending[("run", "pca")]) == [2, 4]
        worker.submit("run", 7, blobs(n=100), "pca")  # newer: drops 2 and 4
        assert sorted(worker._pending[("run", "pca")]) == [7]
    assert worker.wait_idle(timeout=10.0)
    computed = [i for i in range(8) if worker.get("run", i, "pca") is not None]
    assert computed == [7]


def test_worker_ignores_a_request_for_the_layout_it_is_computing(worker, monkeypatch):
    """The Train page asks for the newest layout on every poll while it waits for it.

    Catches a ``submit`` that queues the index being computed again: each UMAP layout would
    then be computed twice (tried: 2 computations instead of 1).
    """
    started, release, computed = threading.Event(), threading.Event(), []
    real = worker._compute

    def slow_compute(key, method, emb):
        computed.append(key)
        started.set()
        release.wait(10.0)
        return real(key, method, emb)

    monkeypatch.setattr(worker, "_compute", slow_compute)
    emb = blobs(n=100)
    worker.submit("run", 3, emb, "pca")
    assert started.wait(10.0)
    worker.submit("run", 3, emb, "pca")  # asked again while it is computed
    release.set()
    assert worker.wait_idle(timeout=10.0)
    assert computed == ["run"]
    assert worker.get("run", 3, "pca") is not None


def test_worker_ignores_a_request_already_pending(worker, monkeypatch):
    """A second request for a pending index is ignored: its embedding is not copied again.

    Catches a ``submit`` that replaces the pending request: here the second array differs, so
    the layout would be computed from it (tried: the layout came from the second array).
    """
    started, release, real = threading.Event(), threading.Event(), worker._compute

    def held_compute(key, method, emb):
        if key == "busy":
            started.set()
            release.wait(10.0)
        return real(key, method, emb)

    monkeypatch.setattr(worker, "_compute", held_compute)
    worker.submit("busy", 0, blobs(n=100), "pca")  # holds the worker while "run" is queued
    assert started.wait(10.0)
    first, second = blobs(n=100, seed=1), blobs(n=100, seed=2)
    worker.submit("run", 5, first, "pca")
    worker.submit("run", 5, second, "pca")  # asked again while pending
    release.set()
    assert worker.wait_idle(timeout=10.0)
    got = worker.get("run", 5, "pca")
    np.testing.assert_allclose(got, Projector("pca", seed=worker.seed).update(first), atol=1e-5)


def test_an_ignored_request_leaves_the_worker_working(worker):
    """A request that is ignored (here: already computed) queues nothing, not even an empty
    slot: the worker's next job would be taken from it.

    Catches a ``submit`` that creates the slot before deciding to ignore the request (tried:
    the worker thread dies on ``max()`` of an empty queue and run "b" is never laid out).
    """
    worker.submit("a", 1, blobs(n=60), "pca")
    assert worker.wait_idle(timeout=10.0)
    worker.submit("a", 1, blobs(n=60), "pca")  # computed already: ignored
    worker.submit("b", 0, blobs(n=60), "pca")
    assert worker.wait_idle(timeout=10.0)
    assert worker.get("b", 0, "pca", timeout=1.0) is not None


def test_worker_keys_and_methods_are_separate(worker):
    worker.submit("a", 0, blobs(n=60, dim=3), "direct")
    worker.submit("b", 0, blobs(n=60, dim=8), "pca")
    assert worker.get("a", 0, "direct", timeout=10.0).shape == (60, 3)
    assert worker.get("b", 0, "pca", timeout=10.0).shape == (60, 2)
    assert worker.get("a", 0, "pca") is None
    assert worker.latest("c", "pca") is None


def test_worker_survives_a_bad_request(worker):
    worker.submit("run", 0, blobs(n=30, dim=8), "direct")  # direct of D > 3 raises
    assert worker.wait_idle(timeout=10.0)
    assert worker.get("run", 0, "direct") is None
    assert "dimension" in worker.last_error
    worker.submit("run", 1, blobs(n=30, dim=2), "direct")
    assert worker.get("run", 1, "direct", timeout=10.0) is not None


def test_worker_lru_bound():
    w = ProjectionWorker(max_results=3)
    try:
        for index in range(6):
            w.submit("run", index, blobs(n=20, dim=2, seed=index), "direct")
            assert w.get("run", index, "direct", timeout=10.0) is not None
        assert len(w._results[("run", "direct")]) == 3
        assert w.get("run", 0, "direct") is None
    finally:
        w.stop()


@pytest.mark.slow
def test_worker_umap_warm_up_and_status(worker):
    worker.warm_up()
    assert worker.status() in (COMPILING, WORKING, IDLE)
    worker.submit("run", 0, blobs(n=80), "umap")
    layout = worker.get("run", 0, "umap", timeout=120.0)
    assert layout is not None
    assert layout.shape == (80, 2)
    assert worker.wait_idle(timeout=60.0)
    assert worker.status() == IDLE


def test_worker_stop_ends_thread_and_ignores_later_submits():
    w = ProjectionWorker()
    w.stop()
    assert not w._thread.is_alive()
    w.submit("run", 0, blobs(n=10, dim=2), "direct")
    time.sleep(0.05)
    assert w.get("run", 0, "direct") is None


@pytest.mark.slow
def test_worker_can_run_umap_in_a_subprocess() -> None:
    """The server's mode: UMAP off the GIL in a spawned process gives the same layout."""
    emb = np.random.default_rng(3).normal(size=(120, 8)).astype(np.float32)
    worker = ProjectionWorker(in_subprocess=True)
    try:
        worker.submit("run", 0, emb, "umap")
        layout = worker.get("run", 0, "umap", timeout=240)
        assert worker.last_error is None
        assert layout is not None
        assert layout.shape == (120, 2)
        expected = project(emb, "umap", seed=0, n_epochs=COLD_EPOCHS)  # a run's first layout
        np.testing.assert_allclose(layout, expected, atol=1e-4)
    finally:
        worker.stop()


UMAP_CHILD = '''
import json, os, signal, sys

sys.path.insert(0, {root!r})


def thread_nices():
    """Nice value of every thread of this process (field 19 of /proc/self/task/*/stat)."""
    out = []
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{{tid}}/stat") as f:
            out.append(int(f.read().rsplit(")", 1)[1].split()[16]))
    return out


def thread_policies():
    """Scheduling policy of every thread of this process."""
    return [os.sched_getscheduler(int(tid)) for tid in os.listdir("/proc/self/task")]


if __name__ == "__main__":
    import threadpoolctl
    from dml_core.services.projection_worker import umap_pool

    pool = umap_pool()
    info = {{
        "pid": pool.submit(os.getpid).result(),
        "nices": pool.submit(thread_nices).result(),
        "policies": pool.submit(thread_policies).result(),
        "numba": pool.submit(os.getenv, "NUMBA_NUM_THREADS").result(),
        "pools": pool.submit(threadpoolctl.threadpool_info).result(),
    }}
    with open(sys.argv[1], "w") as f:
        json.dump(info, f)
    os.kill(os.getpid(), signal.SIGKILL)  # the server dies without shutting the pool down
'''


def process_state(pid: int) -> str | None:
    """The state letter of a process (R, S, Z, ...), None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def state_once_ended(pid: int, within_s: float = 60.0) -> str | None:
    """``process_state`` once the process ended (gone or a zombie), or after ``within_s``.

    A process still running then is killed, so no orphan outlives the test; its state then
    (R, S, ...) is returned for the test to fail on.
    """
    deadline = time.monotonic() + within_s  # a bound on the wait, not a timing check
    while process_state(pid) not in (None, "Z") and time.monotonic() < deadline:
        time.sleep(0.1)
    state = process_state(pid)
    if state not in (None, "Z"):
        os.kill(pid, signal.SIGKILL)
    return state


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads Linux's /proc")
@pytest.mark.slow
def test_the_umap_process_yields_to_training_and_dies_with_its_parent(tmp_path) -> None:
    """The server's UMAP subprocess: lower priority on every thread, one thread, no orphan.

    Catches: no ``os.nice`` (nice 0); only the calling thread reniced (BLAS threads started
    at numpy's import stay at 0); ``SCHED_IDLE`` (layouts starve on a busy machine: see
    ``UMAP_NICE``); numba or BLAS left at the core count; a worker that
    outlives a killed server (a pool worker waits on its queue forever).
    """
    script, out, log = tmp_path / "umap_child.py", tmp_path / "info.json", tmp_path / "log"
    script.write_text(UMAP_CHILD.format(root=str(ROOT)))
    with log.open("w") as err:  # a file, not a pipe: an orphan holding it cannot block the test
        done = subprocess.run(
            [sys.executable, str(script), str(out)], stdout=err, stderr=err, timeout=300
        )
    assert done.returncode == -signal.SIGKILL, log.read_text()[-2000:]
    info = json.loads(out.read_text())
    assert info["nices"]
    assert set(info["nices"]) == {UMAP_NICE}, info["nices"]
    assert set(info["policies"]) == {os.SCHED_OTHER}, info["policies"]  # never starved
    assert info["numba"] == "1"
    assert info["pools"]
    assert {p["num_threads"] for p in info["pools"]} == {1}, info["pools"]
    state = state_once_ended(info["pid"])
    assert state in (None, "Z"), f"the UMAP process outlived its parent (state {state})"


def thread_policy() -> int:
    """The scheduling policy of the calling thread."""
    return os.sched_getscheduler(0)


def policies_of_every_thread() -> set[int]:
    return {os.sched_getscheduler(int(tid)) for tid in os.listdir("/proc/self/task")}


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux's scheduling policies")
@pytest.mark.slow
def test_a_fit_beside_training_runs_idle_and_leaves_the_process_as_it_was() -> None:
    """In the UMAP process, work beside training runs on a SCHED_IDLE thread, and only then.

    Catches: the flag ignored (idle always, or never: a nice-19 fit holds a core that a
    waking training thread waits for, see ``UMAP_NICE``), and SCHED_IDLE set on the process's
    own thread (an unprivileged thread cannot leave it: every later fit would starve beside
    any busy process). Errors and results come back as from a plain call.
    """
    pool = umap_pool()
    try:
        assert pool.submit(run_in_turn, True, thread_policy).result() == os.SCHED_IDLE
        assert pool.submit(run_in_turn, False, thread_policy).result() == os.SCHED_OTHER
        assert pool.submit(policies_of_every_thread).result() == {os.SCHED_OTHER}
        emb = blobs(n=60, dim=8)
        beside = pool.submit(run_in_turn, True, project, emb, "pca").result()
        np.testing.assert_allclose(beside, project(emb, "pca"), atol=1e-5)
        with pytest.raises(ValueError, match="method"):
            pool.submit(run_in_turn, True, project, emb, "tsne").result()
    finally:
        pool.shutdown()


class RecordingPool:
    """Stands in for the UMAP process: records each call's ``beside_training`` flag."""

    def __init__(self) -> None:
        self.flags: list[bool] = []

    def submit(self, fn, beside_training, inner, *args, **kwargs):
        from concurrent.futures import Future

        self.flags.append(beside_training)
        future: Future = Future()
        future.set_result(inner(*args, **kwargs))
        return future

    def shutdown(self, **_: object) -> None:
        pass


def test_the_worker_asks_whether_a_run_trains_before_each_umap_fit(monkeypatch) -> None:
    """Each fit in the UMAP process is marked with what ``training()`` says as it starts.

    Catches: the flag read once (at start, or at the first fit), or never passed on.
    """
    from dml_core.services import projection_worker

    fake_umap = lambda emb, method, **kw: project(emb, "pca")  # noqa: E731
    monkeypatch.setattr(projection_worker, "project", fake_umap)
    trains = [False]
    worker = ProjectionWorker(training=lambda: trains[0])
    worker._pool = RecordingPool()
    try:
        for index, training in enumerate((False, True, True, False)):
            trains[0] = training
            worker.submit("run", index, blobs(n=40, dim=4, seed=index), "umap")
            assert worker.get("run", index, "umap", timeout=30) is not None
        assert worker._pool.flags == [False, True, True, False]
    finally:
        worker.stop()
