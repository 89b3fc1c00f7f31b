r"""How far to trust a 2-D layout of an embedding: trustworthiness and preserved neighbours.

A UMAP or PCA picture can invent neighbours that are far apart in the embedding, or tear
true neighbours apart. Two numbers say how much, on the same k:

- trustworthiness (Venna & Kaski, Neighborhood Preservation in Nonlinear Projection Methods,
  ICANN 2001; as ``sklearn.manifold.trustworthiness``):

  .. math::
      T(k) = 1 - \frac{2}{n k (2n - 3k - 1)} \sum_{i=1}^{n} \sum_{j \in U_i^k}
      \max(0, r(i, j) - k),

  where :math:`U_i^k` are the k nearest neighbours of i in the layout Y and :math:`r(i, j)` is
  the rank of j among i's neighbours in the embedding X (1 = nearest). Points the layout puts
  next to i that are not among its k nearest in X cost by how far down X's list they are.
  T = 1: the layout invents no neighbour; about 0.5: no better than random.
- ``knn_preserved``: the mean over points of the fraction of their k nearest neighbours in X
  that are also among their k nearest in Y (each point's own entry never counts).

``true_neighbours`` gives one point's k nearest in X, to show where the picture lies.
Embedding distances are Euclidean, compared as squared distances in float64 by the same
dot-product expansion scikit-learn uses (||x||^2 + ||y||^2 - 2 x.y), row chunk by row chunk, so
memory stays O(chunk * n) for probe sets up to 10k points (scikit-learn's function holds three
n x n arrays: 2.4 GB at 10k) and ranks agree with scikit-learn's; the layout's neighbours come
from ``sklearn.neighbors.NearestNeighbors``, as in scikit-learn's function. Only ranks
matter, and squaring keeps them. An exact tie at the k-th distance (duplicate points) is broken
arbitrarily, as in scikit-learn, and a tied point gets the best rank of its tie.
"""

from __future__ import annotations

import numpy as np
from sklearn.neighbors import NearestNeighbors

CHUNK = 256  # rows per block: (CHUNK, n) float64 distances and (CHUNK, k, n) comparisons


def _as_float64(name: str, points: np.ndarray, n: int | None = None) -> np.ndarray:
    """``points`` as a (n, d) float64 array; a ValueError names ``name`` when it is not one."""
    array = np.asarray(points, dtype=np.float64)
    if array.ndim != 2 or len(array) < 3 or (n is not None and len(array) != n):
        rows = "at least 3" if n is None else str(n)
        raise ValueError(f"The '{name}' must be a 2-D array with {rows} rows. Got {array.shape}.")
    return array


def _check_k(k: int, n: int) -> None:
    if not 1 <= k < n / 2:
        raise ValueError(
            f"The 'k' parameter must be an integer from 1 to below half the points "
            f"({n} points: k < {n / 2:g}). Got {k}."
        )


def _squared_distances(x: np.ndarray, sq: np.ndarray, rows: slice) -> np.ndarray:
    """Squared distances from the points of ``rows`` to all, (c, n); each to itself +inf.

    ``sq`` holds the squared norms of ``x``, shape (n,).
    """
    d2 = sq[rows, None] + sq[None, :] - 2.0 * x[rows] @ x.T  # (c, n)
    local = np.arange(d2.shape[0])
    d2[local, local + rows.start] = np.inf  # a point is never its own neighbour
    return d2


def _k_nearest(d2: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k smallest entries of each row of ``d2`` (c, n), in no order, (c, k)."""
    return np.argpartition(d2, k - 1, axis=1)[:, :k]


def layout_quality(X: np.ndarray, Y: np.ndarray, k: int = 10) -> dict[str, float]:
    """Trustworthiness and preserved-neighbour share of the layout Y of the embedding X.

    Args:
        X: (n, D) embedding.
        Y: (n, 2) layout of the same points, in the same order (any dimension works).
        k: neighbours per point, 1 <= k < n / 2 (as scikit-learn requires).

    Returns:
        ``{"trustworthiness": T(k), "knn_preserved": mean fraction}``, both in [0, 1].

    Raises:
        ValueError: the message names the argument (``X``, ``Y`` or ``k``) and its range.
    """
    x = _as_float64("X", X)
    n = len(x)
    y = _as_float64("Y", Y, n)
    _check_k(k, n)
    sq_x = np.einsum("ij,ij->i", x, x)  # (n,)
    # the layout's neighbours, self left out, by the same tree search scikit-learn's uses
    layout_near = NearestNeighbors(n_neighbors=k).fit(y).kneighbors(return_distance=False)
    penalty, shared = 0, 0
    for start in range(0, n, CHUNK):
        rows = slice(start, min(start + CHUNK, n))
        dx = _squared_distances(x, sq_x, rows)  # (c, n)
        near_x = _k_nearest(dx, k)  # (c, k)
        near_y = layout_near[rows]  # (c, k)
        shared += int((near_x[:, :, None] == near_y[:, None, :]).sum())  # common to both sets
        d_j = np.take_along_axis(dx, near_y, axis=1)  # (c, k) X-distance of layout neighbours
        rank = 1 + np.count_nonzero(dx[:, None, :] < d_j[:, :, None], axis=2)  # (c, k) 1 = nearest
        penalty += int(np.clip(rank - k, 0, None).sum())  # 0 for neighbours also near in X
    trust = 1.0 - penalty * 2.0 / (n * k * (2.0 * n - 3.0 * k - 1.0))
    return {"trustworthiness": float(trust), "knn_preserved": shared / (n * k)}


def true_neighbours(X: np.ndarray, index: int, k: int = 10) -> np.ndarray:
    """The k nearest neighbours of point ``index`` in the embedding X, nearest first.

    Args:
        X: (n, D) embedding.
        index: row of the point, 0 <= index < n.
        k: how many, 1 <= k < n.

    Returns:
        (k,) int64 row indices, never ``index`` itself; ties broken by the lower index.
    """
    x = _as_float64("X", X)
    n = len(x)
    if not 0 <= index < n:
        raise ValueError(f"The 'index' must be a point of X, from 0 to {n - 1}. Got {index}.")
    if not 1 <= k < n:
        raise ValueError(f"The 'k' parameter must be from 1 to {n - 1}. Got {k}.")
    d2 = _squared_distances(x, np.einsum("ij,ij->i", x, x), slice(index, index + 1))[0]  # (n,)
    return np.argsort(d2, kind="stable")[:k].astype(np.int64)
