"""Tests for dml_core.projection: layouts, Procrustes alignment, warm starts, the worker."""

import os
from pathlib import Path

import numpy as np
import pytest

from dml_core.projection import Projector, exact_knn, procrustes_align, project

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
