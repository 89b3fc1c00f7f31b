r"""2-D layouts of the probe embeddings: UMAP warm-started frame to frame, PCA, direct view.

What the live embedding view needs: a layout per snapshot that is cheap to update and does not
spin, flip or jump between consecutive frames.

- ``project``: one layout. UMAP (McInnes, Healy, Melville, arXiv:1802.03426, 2018) through
  umap-learn; PCA through numpy's SVD; "direct" returns the raw coordinates when D <= 3.
- ``procrustes_align``: orthogonal Procrustes with uniform scale and translation
  (Schoenemann 1966; Gower 1975): the similarity transform that best maps one layout onto
  another in least squares, \min_{s, R, t} ||s X R + t - Y||_F with R^T R = I.
- ``Projector``: chains layouts along a run. Each UMAP update starts from the previous layout
  (``init=prev``, 50 epochs instead of 200-500) and is then aligned to it.
- ``services.projection_worker.ProjectionWorker`` computes these layouts off the UI thread.

umap-learn compiles its kernels with numba on the first fit of a process (timed by ``bench``).
Importing this module sets ``NUMBA_CACHE_DIR`` (unless already set) to a persistent folder so
later processes reuse the compiled code; umap itself is imported lazily, on the first fit.
The setting only takes effect if numba has not been imported yet.
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np

os.environ.setdefault("NUMBA_CACHE_DIR", str(Path.home() / ".cache" / "dml_playground" / "numba"))

Method = Literal["umap", "pca", "direct"]
METHODS: tuple[str, ...] = ("umap", "pca", "direct")

N_NEIGHBORS = 15
MIN_DIST = 0.1
WARM_EPOCHS = 50
EXACT_KNN_MAX = 10_000  # exact neighbours up to here (~1 s at 10k), pynndescent above


def _pca(emb: np.ndarray) -> np.ndarray:
    """First two principal components via SVD, signs fixed (largest loading positive)."""
    centred = emb - emb.mean(axis=0)  # (n, D)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)  # vt: (min(n, D), D)
    components = vt[:2]  # (k, D), k <= 2
    signs = np.sign(components[np.arange(len(components)), np.abs(components).argmax(axis=1)])
    layout = centred @ (components * signs[:, None]).T  # (n, k)
    if layout.shape[1] < 2:
        layout = np.pad(layout, ((0, 0), (0, 2 - layout.shape[1])))  # (n, 2)
    return layout


def exact_knn(emb: np.ndarray, k: int, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours (self included, first) in Euclidean distance.

    Candidates come from float32 BLAS distances in row chunks; the k kept are re-measured in
    float64. Replaces umap-learn's small-data path, which calls a numba metric once per pair
    through scikit-learn (n^2 Python calls: ~3 s for 2k points), and pynndescent below
    ``EXACT_KNN_MAX`` points (no numba compile, exact, deterministic; ~1 s for 10k).

    Returns:
        indices (n, k) int64 and distances (n, k) float32, sorted by distance.
    """
    x = np.ascontiguousarray(emb, dtype=np.float32)
    sq = np.einsum("ij,ij->i", x, x)  # (n,)
    indices = []
    for start in range(0, len(x), chunk):
        rows = slice(start, start + chunk)
        d2 = sq[rows, None] + sq[None, :] - 2.0 * x[rows] @ x.T  # (c, n)
        d2[np.arange(d2.shape[0]), np.arange(start, start + d2.shape[0])] = -1.0  # self first
        indices.append(np.argpartition(d2, k - 1, axis=1)[:, :k])  # (c, k), unordered
    idx = np.concatenate(indices)  # (n, k)
    x64 = x.astype(np.float64)
    dist = np.linalg.norm(x64[idx] - x64[:, None, :], axis=-1)  # (n, k)
    dist[idx == np.arange(len(x))[:, None]] = -1.0  # self first even among duplicates
    order = np.argsort(dist, axis=1, kind="stable")
    idx = np.take_along_axis(idx, order, axis=1)
    dist = np.clip(np.take_along_axis(dist, order, axis=1), 0.0, None)
    return idx.astype(np.int64), dist.astype(np.float32)


def _knn(emb: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest neighbours: exact up to ``EXACT_KNN_MAX`` points, else pynndescent."""
    if len(emb) <= EXACT_KNN_MAX:
        return exact_knn(emb, k)
    from umap.umap_ import nearest_neighbors

    idx, dist, _ = nearest_neighbors(
        emb, k, "euclidean", {}, False, np.random.RandomState(seed), n_jobs=1
    )
    return idx, dist


@functools.cache
def _import_umap() -> object:
    """umap-learn, imported on first use, with numba's disk cache on for all its kernels.

    umap-learn 0.5 declares ``smooth_knn_dist``, ``compute_membership_strengths`` and the layout
    epoch without ``cache=True``, so every new process compiled them again: about 4.4 s of its
    first fit, with the rest of the kernels already loaded from ``NUMBA_CACHE_DIR``. Turning
    the cache on is what numba's own ``cache=True`` does (``Dispatcher.enable_caching``).
    Importing umap-learn takes over a second, so it waits until a fit needs it; the kernels
    are looked through once per process, not on every warm-started update.
    """
    import umap
    import umap.layouts
    import umap.umap_
    from numba.core.caching import NullCache
    from numba.core.dispatcher import Dispatcher

    for module in (umap.umap_, umap.layouts):
        for kernel in vars(module).values():
            if isinstance(kernel, Dispatcher) and isinstance(kernel._cache, NullCache):
                with contextlib.suppress(RuntimeError):  # no writable cache folder: compile
                    kernel.enable_caching()
    return umap


def _umap_cold(emb: np.ndarray, seed: int, n_epochs: int | None) -> np.ndarray:
    """A UMAP fit from umap-learn's spectral initialisation."""
    umap = _import_umap()
    k = min(N_NEIGHBORS, len(emb) - 1)
    reducer = umap.UMAP(
        n_neighbors=k,
        min_dist=MIN_DIST,
        metric="euclidean",
        n_components=2,
        random_state=seed,
        n_jobs=1,  # what random_state implies anyway; saying it silences umap's warning
        init="spectral",
        n_epochs=n_epochs,
        precomputed_knn=(*_knn(emb, k, seed), None),
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"precomputed_knn\[2\]", category=UserWarning)
        return reducer.fit_transform(emb).astype(np.float64)  # (n, 2)


def _umap_warm(emb: np.ndarray, init: np.ndarray, seed: int, n_epochs: int) -> np.ndarray:
    """UMAP's optimisation started from ``init`` as is, on the new embeddings' fuzzy graph.

    ``umap.UMAP(init=array)`` min-max rescales the start to [0, 10] per axis, which shrinks and
    stretches the previous layout and moves whole clusters (measured: mean displacement ~30% of
    the layout's spread for a 1% perturbation of the data). Calling umap-learn's own building
    blocks (``fuzzy_simplicial_set``, ``optimize_layout_euclidean``) with the layout unscaled
    keeps it at ~7%, the same as re-running on unchanged data.
    """
    _import_umap()
    from umap.layouts import optimize_layout_euclidean
    from umap.umap_ import find_ab_params, fuzzy_simplicial_set, make_epochs_per_sample

    k = min(N_NEIGHBORS, len(emb) - 1)
    knn_indices, knn_dists = _knn(emb, k, seed)
    random_state = np.random.RandomState(seed)
    graph, _, _ = fuzzy_simplicial_set(
        emb, k, random_state, "euclidean", knn_indices=knn_indices, knn_dists=knn_dists
    )
    graph = graph.tocoo()
    graph.sum_duplicates()
    graph.data[graph.data < graph.data.max() / float(n_epochs)] = 0.0  # as umap-learn prunes
    graph.eliminate_zeros()
    a, b = find_ab_params(1.0, MIN_DIST)
    rng_state = random_state.randint(np.iinfo(np.int32).min + 1, np.iinfo(np.int32).max, 3)
    layout = np.array(init, dtype=np.float32, order="C")  # (n, 2), updated in place
    layout = optimize_layout_euclidean(
        layout,
        layout,
        graph.row,
        graph.col,
        n_epochs,
        graph.shape[1],
        make_epochs_per_sample(graph.data, n_epochs),
        a,
        b,
        rng_state.astype(np.int64),
        gamma=1.0,
        initial_alpha=1.0,
        negative_sample_rate=5,
        parallel=False,
        move_other=True,
    )
    return layout.astype(np.float64)  # (n, 2)


def project(
    emb: np.ndarray,
    method: Method,
    init: np.ndarray | None = None,
    seed: int = 0,
    n_epochs: int | None = None,
) -> np.ndarray:
    """A low-dimensional layout of the embeddings, deterministic for a fixed seed.

    Args:
        emb: embeddings, (n, D).
        method: "umap" (n >= 4), "pca", or "direct" (the raw coordinates; D <= 3 only).
        init: UMAP only: a previous (n, 2) layout to start from (warm start). Without it UMAP
            starts from its spectral initialisation.
        seed: UMAP's ``random_state``. Setting it makes umap-learn run single-threaded; on 2
            cores that costs little (measured, see the module's notes) and makes frames
            reproducible.
        n_epochs: UMAP optimisation epochs; default 50 when warm-started, else umap-learn's
            default (500 for n <= 10k, 200 above).

    Returns:
        (n, 2) float64 layout; (n, D) for "direct".

    Raises:
        ValueError: unknown method, direct view of D > 3, too few points for UMAP, or an
            ``init`` whose shape is not (n, 2).
    """
    emb = np.asarray(emb, dtype=np.float32)
    if emb.ndim != 2:
        raise ValueError(f"The 'emb' parameter of project must be 2-D (n, D). Got {emb.shape}.")
    if method == "direct":
        if emb.shape[1] > 3:
            raise ValueError(
                f"The direct view needs an embedding dimension <= 3. Got {emb.shape[1]}."
            )
        return emb.astype(np.float64)
    if method == "pca":
        return _pca(emb.astype(np.float64))
    if method == "umap":
        n = emb.shape[0]
        if n < 4:
            raise ValueError(f"UMAP needs at least 4 points. Got {n}.")
        if init is not None:
            init = np.asarray(init, dtype=np.float64)
            if init.shape != (n, 2):
                raise ValueError(f"The 'init' layout must have shape ({n}, 2). Got {init.shape}.")
        if init is None:
            return _umap_cold(emb, seed, n_epochs)
        return _umap_warm(emb, init, seed, WARM_EPOCHS if n_epochs is None else n_epochs)
    raise ValueError(f"The 'method' parameter of project must be one of {METHODS}. Got {method!r}.")


def procrustes_align(layout: np.ndarray, reference: np.ndarray) -> np.ndarray:
    r"""Map ``layout`` onto ``reference`` by rotation/reflection, uniform scale and translation.

    Orthogonal Procrustes with scaling (Gower 1975): with centred X, Y and the SVD
    X^T Y = U S V^T, the optimum is R = U V^T, s = trace(S) / ||X||_F^2, t = mean(Y) - s mean(X) R.
    Reflections are allowed, so a mirrored UMAP frame is flipped back.

    Args:
        layout: the new layout, (n, k).
        reference: the layout to match (usually the previous frame), (n, k).

    Returns:
        s X R + t, (n, k). A layout collapsed to one point maps to the reference's centre.
    """
    X = np.asarray(layout, dtype=np.float64)
    Y = np.asarray(reference, dtype=np.float64)
    if X.shape != Y.shape:
        raise ValueError(f"procrustes_align needs equal shapes. Got {X.shape} and {Y.shape}.")
    mx, my = X.mean(axis=0), Y.mean(axis=0)  # (k,)
    Xc, Yc = X - mx, Y - my  # (n, k)
    norm_x = float(np.sum(Xc**2))
    if norm_x == 0.0:
        return np.broadcast_to(my, X.shape).copy()
    U, S, Vt = np.linalg.svd(Xc.T @ Yc)  # (k, k) each
    R = U @ Vt  # (k, k)
    scale = S.sum() / norm_x
    return scale * Xc @ R + my


class Projector:
    """Layouts of one run's probe set, each warm-started from and aligned to the previous one.

    The first ``update`` is a cold fit; each later one passes the previous layout as ``init``
    (UMAP) and Procrustes-aligns the result onto it, so the view neither spins nor flips. A
    change in the number of points starts cold again. "direct" is never aligned: its axes are
    the embedding's own.

    Args:
        method: "umap", "pca" or "direct".
        seed: UMAP's random_state.
        cold_epochs: UMAP epochs of the first fit (None: umap-learn's default).
        warm_epochs: UMAP epochs of each warm-started update.
        project_fn: what computes a layout (default ``project``; the worker may pass one that
            runs it in another process).
    """

    def __init__(
        self,
        method: Method = "umap",
        seed: int = 0,
        cold_epochs: int | None = None,
        warm_epochs: int = WARM_EPOCHS,
        project_fn: Callable[..., np.ndarray] | None = None,
    ):
        if method not in METHODS:
            raise ValueError(
                f"The 'method' parameter of Projector must be one of {METHODS}. Got {method!r}."
            )
        self.method = method
        self.seed = seed
        self.cold_epochs = cold_epochs
        self.warm_epochs = warm_epochs
        self.project_fn = project_fn or project
        self.previous: np.ndarray | None = None

    def update(self, emb: np.ndarray) -> np.ndarray:
        """The layout of ``emb`` (n, D), chained on the previous one. Returns (n, 2)."""
        prev = self.previous
        if prev is not None and prev.shape[0] != len(emb):
            prev = None
        warm = prev is not None and self.method == "umap"
        layout = self.project_fn(
            emb,
            self.method,
            init=prev if warm else None,
            seed=self.seed,
            n_epochs=self.warm_epochs if warm else self.cold_epochs,
        )
        if prev is not None and self.method != "direct":
            layout = procrustes_align(layout, prev)
        self.previous = layout
        return layout
