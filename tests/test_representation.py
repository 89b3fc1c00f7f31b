"""Alignment, uniformity and effective rank against direct loop formulas.

Mutations these catch: alignment over all pairs instead of positives, or without the
exponent alpha; uniformity as mean of logs instead of log of the mean, or with t applied to
the distance instead of its square; effective rank from eigenvalues of the Gram matrix
(sigma^2) instead of singular values, or from the centred matrix.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dml_core.metrics import alignment_uniformity, effective_rank


def _loops(x: np.ndarray, y: np.ndarray, alpha: float, t: float) -> tuple[float, float]:
    pos, pot = [], []
    n = len(x)
    for i in range(n):
        for j in range(i + 1, n):
            d = math.sqrt(sum((a - b) ** 2 for a, b in zip(x[i], x[j], strict=True)))
            pot.append(math.exp(-t * d * d))
            if y[i] == y[j]:
                pos.append(d**alpha)
    return sum(pos) / len(pos), math.log(sum(pot) / len(pot))


@pytest.mark.parametrize(("alpha", "t"), [(2.0, 2.0), (1.0, 0.5), (3.0, 5.0)])
def test_alignment_uniformity_match_loops(alpha: float, t: float) -> None:
    gen = torch.Generator().manual_seed(int(alpha * 10 + t))
    x = torch.nn.functional.normalize(torch.randn(23, 5, generator=gen), dim=1)
    y = torch.randint(0, 4, (23,), generator=gen)
    got = alignment_uniformity(x, y, alpha=alpha, t=t)
    align, unif = _loops(x.double().numpy(), y.numpy(), alpha, t)
    assert got["alignment"] == pytest.approx(align, rel=1e-9)
    assert got["uniformity"] == pytest.approx(unif, rel=1e-9)


def test_alignment_is_nan_without_positives_and_uniformity_extremes() -> None:
    x = torch.eye(3)
    out = alignment_uniformity(x, torch.tensor([0, 1, 2]))
    assert math.isnan(out["alignment"])
    assert out["uniformity"] == pytest.approx(-2 * 2.0)  # all pairs at squared distance 2
    same = alignment_uniformity(torch.ones(4, 3), torch.zeros(4, dtype=torch.long))
    assert same == {"alignment": 0.0, "uniformity": 0.0}  # collapsed: log(mean(exp 0)) = 0


def test_effective_rank_matches_entropy_of_singular_values() -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(40, 6, generator=gen) * torch.tensor([5.0, 3, 2, 1, 0.5, 0.1])
    s = np.linalg.svd(x.double().numpy(), compute_uv=False)
    p = s / s.sum()
    assert effective_rank(x) == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-9)


def test_effective_rank_extremes() -> None:
    assert effective_rank(torch.eye(8)) == pytest.approx(8.0)  # equal singular values: D
    line = torch.randn(30, 1) * torch.tensor([[1.0, 2.0, -1.0, 0.5]])  # rank one
    assert effective_rank(line) == pytest.approx(1.0, abs=1e-6)
    assert effective_rank(torch.zeros(5, 4)) == 0.0
    # uncentred: points around a far-off common offset read as (nearly) one dimension
    offset = torch.randn(200, 4, generator=torch.Generator().manual_seed(0)) * 0.01 + 10.0
    assert effective_rank(offset) < 1.1
