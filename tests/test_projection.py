"""Tests for dml_core.projection: layouts, Procrustes alignment, warm starts, the worker."""

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

from dml_core.projection import Projector, exact_knn, procrustes_align, project
from dml_core.services.projection_worker import (
    COLD_EPOCHS,
    COMPILING,
    IDLE,
    UMAP_NICE,
    WORKING,
    ProjectionWorker,
)

ROOT = Path(__file__).resolve().parents[1]


def blobs(n=200, dim=16, classes=5, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)) * 3.0
    labels = rng.integers(0, classes, n)
    return (centres[labels] + rng.normal(size=(n, dim))).astype(np.float32)


def rotation(theta):
    return np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])


def test_pca_shape_and_determinism():
    emb = blobs()
    layout = project(emb, "pca")
    assert layout.shape == (200, 2)
    np.testing.assert_array_equal(layout, project(emb, "pca"))
    np.testing.assert_allclose(layout.mean(axis=0), 0.0, atol=1e-6)
    assert layout[:, 0].var() >= layout[:, 1].var()


def test_pca_of_one_dimensional_embedding_is_padded():
    emb = np.arange(10, dtype=np.float32)[:, None]
    layout = project(emb, "pca")
    assert layout.shape == (10, 2)
    np.testing.assert_array_equal(layout[:, 1], 0.0)


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_direct_returns_raw_coordinates(dim):
    emb = blobs(dim=dim)
    layout = project(emb, "direct")
    assert layout.shape == (200, dim)
    np.testing.assert_allclose(layout, emb)


def test_direct_raises_above_three_dims():
    with pytest.raises(ValueError, match="dimension <= 3"):
        project(blobs(dim=4), "direct")


def test_unknown_method_raises():
    with pytest.raises(ValueError, match="method"):
        project(blobs(), "tsne")


def test_umap_rejects_init_of_wrong_shape():
    with pytest.raises(ValueError, match="init"):
        project(blobs(), "umap", init=np.zeros((10, 2)))


def test_exact_knn_matches_brute_force():
    emb = blobs(n=300)
    indices, dists = exact_knn(emb, 6, chunk=64)
    full = np.linalg.norm(emb[:, None] - emb[None], axis=-1)
    expected = np.sort(full, axis=1)[:, :6]
    np.testing.assert_array_equal(indices[:, 0], np.arange(300))
    np.testing.assert_allclose(dists, expected, atol=1e-4)


def test_procrustes_recovers_rotation_scale_shift():
    reference = np.random.default_rng(1).normal(size=(50, 2))
    moved = 3.7 * reference @ rotation(1.1) + np.array([5.0, -2.0])
    aligned = procrustes_align(moved, reference)
    assert np.abs(aligned - reference).max() < 1e-8


def test_procrustes_recovers_reflection():
    reference = np.random.default_rng(2).normal(size=(40, 2))
    mirrored = 0.5 * reference @ np.diag([-1.0, 1.0]) @ rotation(0.3) - 1.0
    aligned = procrustes_align(mirrored, reference)
    assert np.abs(aligned - reference).max() < 1e-8


def test_procrustes_in_three_dimensions_and_degenerate_input():
    rng = np.random.default_rng(3)
    reference = rng.normal(size=(30, 3))
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    assert np.abs(procrustes_align(2.0 * reference @ q + 1.0, reference) - reference).max() < 1e-8
    collapsed = procrustes_align(np.ones((30, 3)), reference)
    np.testing.assert_allclose(collapsed, np.broadcast_to(reference.mean(axis=0), (30, 3)))
    with pytest.raises(ValueError, match="equal shapes"):
        procrustes_align(np.zeros((3, 2)), np.zeros((4, 2)))


@pytest.mark.slow  # numba compiles umap-learn: ~25 s in a fresh cache, ~2 s once cached
def test_umap_is_deterministic_for_a_seed():
    emb = blobs(n=120)
    first = project(emb, "umap", seed=3, n_epochs=30)
    second = project(emb, "umap", seed=3, n_epochs=30)
    assert first.shape == (120, 2)
    np.testing.assert_array_equal(first, second)


def test_umap_kernels_compile_through_numbas_disk_cache():
    """umap-learn's kernels without ``cache=True`` are cached too, so no process compiles them
    twice (before: ~4.4 s of every new process's first fit). Catches a kernel left without the
    disk cache (``_import_umap`` gone, or covering one of the two modules only): its stats then
    have no cache path."""
    project(blobs(n=60), "umap", seed=0, n_epochs=10)
    Projector("umap", seed=0, warm_epochs=5).update(blobs(n=60))
    import umap.layouts
    import umap.umap_

    cache_dir = os.environ["NUMBA_CACHE_DIR"]
    used = (
        umap.umap_.smooth_knn_dist,
        umap.umap_.compute_membership_strengths,
        umap.layouts._nb_optimize_layout_euclidean_single_epoch,
    )
    for kernel in used:
        stats = kernel.stats
        assert stats.cache_path is not None, kernel
        assert stats.cache_path.startswith(cache_dir), stats.cache_path
        assert sum(stats.cache_hits.values()) + sum(stats.cache_misses.values()) >= 1, kernel


@pytest.mark.slow
def test_projector_warm_start_stays_close():
    emb = blobs(n=200)
    projector = Projector("umap", seed=0, warm_epochs=30)
    first = projector.update(emb)
    perturbed = emb + 0.01 * np.random.default_rng(5).normal(size=emb.shape).astype(np.float32)
    second = projector.update(perturbed)
    spread = np.linalg.norm(first - first.mean(axis=0), axis=1).mean()
    displacement = np.linalg.norm(second - first, axis=1).mean()
    assert second.shape == (200, 2)
    assert displacement < 0.3 * spread  # measured 0.10-0.15 over seeds; a cold refit: 0.6-0.9


def test_projector_pca_is_aligned_and_restarts_on_new_size():
    emb = blobs(n=100)
    projector = Projector("pca")
    first = projector.update(emb)
    flipped = projector.update(-emb)  # PCA of -emb is a sign flip: alignment undoes it
    np.testing.assert_allclose(flipped, first, atol=1e-9)
    assert projector.update(blobs(n=50)).shape == (50, 2)


def test_projector_rejects_unknown_method():
    with pytest.raises(ValueError, match="method"):
        Projector("tsne")


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
    deadline = time.monotonic() + 60  # a bound on the wait, not a timing check
    while process_state(info["pid"]) not in (None, "Z") and time.monotonic() < deadline:
        time.sleep(0.1)
    state = process_state(info["pid"])
    if state not in (None, "Z"):
        os.kill(info["pid"], signal.SIGKILL)
    assert state in (None, "Z"), f"the UMAP process outlived its parent (state {state})"
