"""Tests of analysis.layout_quality: trustworthiness as scikit-learn's, neighbours by counting."""

import numpy as np
import pytest
from sklearn.manifold import trustworthiness

from dml_core.analysis.layout_quality import CHUNK, layout_quality, true_neighbours


def embedding(n: int = 120, dim: int = 8, seed: int = 0) -> np.ndarray:
    """Three blobs in float64 (scikit-learn's float32 distances would make ties of their own)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, dim)) * 3.0
    return centres[rng.integers(0, 3, n)] + rng.normal(size=(n, dim))


def loop_knn_preserved(X: np.ndarray, Y: np.ndarray, k: int) -> float:
    """The definition, one point at a time: |kNN_X(i) & kNN_Y(i)| / k, self left out."""
    fractions = []
    for i in range(len(X)):
        others = [j for j in range(len(X)) if j != i]
        near_x = sorted(others, key=lambda j: np.linalg.norm(X[i] - X[j]))[:k]
        near_y = sorted(others, key=lambda j: np.linalg.norm(Y[i] - Y[j]))[:k]
        fractions.append(len(set(near_x) & set(near_y)) / k)
    return float(np.mean(fractions))


@pytest.mark.parametrize("k", [1, 5, 10])
@pytest.mark.parametrize("layout", ["pca", "noisy", "shuffled"])
def test_trustworthiness_equals_scikit_learn(k: int, layout: str) -> None:
    """Catches: a wrong normaliser 2 / (n k (2n - 3k - 1)), ranks counted from 0, the penalty
    summed over every layout neighbour instead of those beyond X's k (rank - k > 0), and
    neighbour sets that include the point itself (tried: each changes T)."""
    X = embedding()
    rng = np.random.default_rng(1)
    Y = {
        "pca": X @ np.linalg.svd(X - X.mean(0), full_matrices=False)[2][:2].T,
        "noisy": X[:, :2] + rng.normal(size=(len(X), 2)),
        "shuffled": rng.permutation(X[:, :2]),
    }[layout]
    ours = layout_quality(X, Y, k)["trustworthiness"]
    assert ours == pytest.approx(trustworthiness(X, Y, n_neighbors=k), abs=1e-12)


def test_knn_preserved_equals_a_direct_count() -> None:
    """Catches: the point itself counted among its neighbours (every point then shares at
    least itself: + 1/k), and X's neighbours compared with themselves instead of the layout's."""
    X = embedding(n=60)
    Y = X[:, :2] + np.random.default_rng(2).normal(size=(60, 2)) * 0.5
    for k in (1, 4, 10):
        assert layout_quality(X, Y, k)["knn_preserved"] == pytest.approx(
            loop_knn_preserved(X, Y, k), abs=1e-12
        )


def test_a_faithful_layout_scores_one_and_a_shuffled_one_does_not() -> None:
    X = embedding(dim=2)
    assert layout_quality(X, X * 3.0 + 1.0, 10) == {"trustworthiness": 1.0, "knn_preserved": 1.0}
    shuffled = layout_quality(X, np.random.default_rng(3).permutation(X), 10)
    assert shuffled["trustworthiness"] < 0.8
    assert shuffled["knn_preserved"] < 0.3


def test_chunks_give_the_same_numbers_as_one_block() -> None:
    """More points than one chunk: rows of later chunks map to their own points (catches an
    offset bug in the self-exclusion of chunk > 0)."""
    X = embedding(n=CHUNK + 37, dim=4)
    Y = X[:, :2] + np.random.default_rng(4).normal(size=(len(X), 2)) * 0.3
    ours = layout_quality(X, Y, 7)
    assert ours["trustworthiness"] == pytest.approx(trustworthiness(X, Y, n_neighbors=7), abs=1e-12)
    assert ours["knn_preserved"] == pytest.approx(loop_knn_preserved(X, Y, 7), abs=1e-12)


def test_float32_embeddings_are_measured_in_float64() -> None:
    X = embedding().astype(np.float32)
    Y = X[:, :2] + 0.1
    expected = trustworthiness(X.astype(np.float64), Y.astype(np.float64), n_neighbors=10)
    assert layout_quality(X, Y)["trustworthiness"] == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    ("X", "Y", "k", "field"),
    [
        (np.zeros((10, 3)), np.zeros((10, 2)), 5, "'k'"),
        (np.zeros((10, 3)), np.zeros((10, 2)), 0, "'k'"),
        (np.zeros((10, 3)), np.zeros((9, 2)), 2, "'Y'"),
        (np.zeros(10), np.zeros((10, 2)), 2, "'X'"),
    ],
)
def test_bad_input_names_the_argument(X, Y, k, field) -> None:
    with pytest.raises(ValueError, match=field):
        layout_quality(X, Y, k)


def test_true_neighbours_are_the_nearest_in_the_embedding_nearest_first() -> None:
    """Catches: the point itself returned as its own nearest neighbour, or the layout used."""
    X = embedding(n=50)
    for i in (0, 17, 49):
        d = np.linalg.norm(X - X[i], axis=1)
        d[i] = np.inf
        np.testing.assert_array_equal(true_neighbours(X, i, 6), np.argsort(d)[:6])
    with pytest.raises(ValueError, match="'index'"):
        true_neighbours(X, 50, 3)


def test_true_neighbours_overlay_marks_kept_and_torn_neighbours() -> None:
    """Catches: neighbours taken from the layout instead of the embedding, or 'kept' judged
    against the embedding's own list (everything kept)."""
    import plotly.graph_objects as go

    from dml_core.figures.neighbours import add_true_neighbours

    X = embedding(n=80)
    Y = np.random.default_rng(5).normal(size=(80, 2))  # a picture that keeps little
    fig = add_true_neighbours(go.Figure(), Y, X, 7, k=6)
    roles = {t.meta["role"]: t for t in fig.data}
    d_x = np.linalg.norm(X - X[7], axis=1)
    d_y = np.linalg.norm(Y - Y[7], axis=1)
    d_x[7] = d_y[7] = np.inf
    near_x, near_y = set(np.argsort(d_x)[:6].tolist()), set(np.argsort(d_y)[:6].tolist())
    assert set(roles["kept"].customdata) | set(roles["torn"].customdata) == near_x
    assert set(roles["kept"].customdata) == near_x & near_y
    assert len(roles["torn"].customdata) > 0
    assert f"{len(near_x & near_y)} of its 6 true neighbours" in fig.layout.title.text


@pytest.mark.parametrize("n", [80, 1500])
def test_true_neighbours_are_drawn_over_the_points_in_their_own_kind(n: int) -> None:
    """Catches: SVG marks over WebGL points (plotly draws every SVG trace beneath the WebGL
    ones: the marks would hide under the points), or WebGL marks over SVG ones."""
    import plotly.graph_objects as go

    from dml_core.figures.live import embedding_figure
    from dml_core.figures.neighbours import add_true_neighbours

    X = embedding(n=n)
    Y = np.random.default_rng(5).normal(size=(n, 2))
    fig = embedding_figure(Y, np.arange(n) % 3, ["a", "b", "c"], "layout")
    points = len(fig.data)
    add_true_neighbours(fig, Y, X, 7, k=6)
    kinds = {type(t) for t in fig.data}
    assert kinds == {go.Scattergl if n > 1000 else go.Scatter}
    assert len(fig.data) == points + 4  # lines, kept, torn, the point
