import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad

from dml_core.geometry import (
    cosine_similarities,
    cosine_to_distance,
    distance_density,
    distance_to_cosine,
    l2_normalize,
    pairwise_distances,
)


def test_pairwise_distances_match_loop_and_have_zero_diagonal() -> None:
    x = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    d = pairwise_distances(x)
    loop = torch.tensor([[float((a - b).norm()) for b in x] for a in x], dtype=torch.float64)
    torch.testing.assert_close(d, loop)
    assert (d.diagonal() == 0).all()


def test_identical_points_give_finite_gradients() -> None:
    x = torch.ones(4, 5, requires_grad=True)
    pairwise_distances(x).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_cosine_distance_round_trip() -> None:
    x = l2_normalize(torch.randn(5, 4, dtype=torch.float64))
    s = cosine_similarities(x)
    torch.testing.assert_close(cosine_to_distance(s), pairwise_distances(x), atol=1e-6, rtol=0)
    torch.testing.assert_close(distance_to_cosine(pairwise_distances(x)), s)


@pytest.mark.parametrize("dim", [2, 3, 4, 16, 128, 512])
def test_distance_density_integrates_to_one(dim: int) -> None:
    # quad handles the integrable singularity at d = 2 when dim = 2
    total, _ = quad(lambda d: float(distance_density(np.array([d]), dim)[0]), 0, 2, limit=200)
    assert total == pytest.approx(1.0, abs=1e-6)


def test_density_in_three_dims_is_linear() -> None:
    d = np.array([0.5, 1.0, 1.5])
    np.testing.assert_allclose(distance_density(d, 3), d / 2)


@pytest.mark.parametrize("dim", [3, 8, 32, 128])
def test_distance_density_matches_monte_carlo(dim: int) -> None:
    gen = torch.Generator().manual_seed(dim)
    a = l2_normalize(torch.randn(60_000, dim, generator=gen, dtype=torch.float64))
    b = l2_normalize(torch.randn(60_000, dim, generator=gen, dtype=torch.float64))
    d = (a - b).norm(dim=1).numpy()
    hist, edges = np.histogram(d, bins=40, range=(0, 2), density=True)
    centres = (edges[:-1] + edges[1:]) / 2
    expected = distance_density(centres, dim)
    assert np.abs(hist - expected).max() < 0.05 * expected.max() + 0.02
    mean, _ = quad(lambda r: r * float(distance_density(np.array([r]), dim)[0]), 0, 2, limit=200)
    assert np.mean(d) == pytest.approx(mean, rel=0.005)


def test_density_concentrates_near_sqrt2() -> None:
    d = np.linspace(0, 2, 10_001)
    peaks = [d[np.argmax(distance_density(d, n))] for n in (4, 32, 512)]
    assert abs(peaks[-1] - math.sqrt(2)) < 0.01
    assert (
        abs(peaks[0] - math.sqrt(2)) > abs(peaks[1] - math.sqrt(2)) > abs(peaks[2] - math.sqrt(2))
    )


def test_the_diagonal_is_exactly_zero_for_a_float32_batch() -> None:
    """64 unit vectors in float32, as training has them: rounding leaves up to ~7e-4 on the
    diagonal of a distance matrix. Catches: the diagonal not set to zero (a point at a
    positive distance from itself, which the miners would see as a pair)."""
    x = torch.nn.functional.normalize(
        torch.randn(64, 32, generator=torch.Generator().manual_seed(0))
    )
    assert (pairwise_distances(x).diagonal() == 0).all()
