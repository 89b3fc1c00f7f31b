r"""Distances between embeddings, and how distances are distributed on the unit sphere.

References:
    Wu, Manmatha, Smola, Kraehenbuehl. Sampling Matters in Deep Embedding Learning. ICCV 2017.
    Section 4, Eq. (3): for points uniform on the unit sphere S^{n-1} in R^n, the distance d
    between two of them has density q(d) \propto d^{n-2} (1 - d^2/4)^{(n-3)/2} on [0, 2].
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

SQRT2 = math.sqrt(2.0)


def l2_normalize(x: Tensor, eps: float = 1e-12) -> Tensor:
    """Project each row onto the unit sphere: x / max(||x||, eps). Shape (B, D) -> (B, D).

    Half-precision inputs are normalised in float32 (eps underflows in float16) and cast back.
    """
    half = x.dtype in (torch.float16, torch.bfloat16)
    xf = x.float() if half else x
    return (xf / xf.norm(dim=-1, keepdim=True).clamp_min(eps)).to(x.dtype)


def pairwise_distances(x: Tensor, y: Tensor | None = None) -> Tensor:
    """Euclidean distances ||x_i - y_j||, shape (B, B') (y defaults to x).

    Uses ``torch.cdist``, whose backward is defined (zero) at d = 0, so identical embeddings
    never produce NaN gradients. The diagonal of ``pairwise_distances(x)`` is set to exactly 0.
    """
    same = y is None
    if x.dtype in (torch.float16, torch.bfloat16):  # cdist has no half kernel on CPU
        x, y = x.float(), (None if same else y.float())
    dist = torch.cdist(x, x if same else y)  # (B, B')
    if same:
        dist = dist.clone()
        dist.fill_diagonal_(0.0)
    return dist


def cosine_similarities(x: Tensor, y: Tensor | None = None) -> Tensor:
    """Cosine similarities of the rows of x and y, shape (B, B')."""
    xn = l2_normalize(x)
    return xn @ (xn if y is None else l2_normalize(y)).T


def cosine_to_distance(s: Tensor) -> Tensor:
    """Distance between unit vectors with cosine similarity s: d = sqrt(2 - 2 s)."""
    return (2.0 - 2.0 * s).clamp_min(0.0).sqrt()


def distance_to_cosine(d: Tensor) -> Tensor:
    """Cosine similarity of unit vectors at distance d: s = 1 - d^2 / 2."""
    return 1.0 - d.square() / 2.0


def log_distance_density(d: Tensor, dim: int) -> Tensor:
    """Log q(d) of Wu et al. 2017, Eq. (3), normalised so that q integrates to 1 over [0, 2].

    With t = d^2 / 4 the integral of d^{n-2} (1 - d^2/4)^{(n-3)/2} over [0, 2] equals
    2^{n-2} B((n-1)/2, (n-1)/2), the normaliser used here.

    Args:
        d: distances in (0, 2); values at or beyond the ends give -inf or nan-free limits.
        dim: n, the dimension of the ambient space (the sphere is S^{n-1}); n >= 2.
    """
    if dim < 2:
        raise ValueError(f"The distance density needs dim >= 2. Got {dim}.")
    n = float(dim)
    half = (n - 1.0) / 2.0
    log_norm = (n - 2.0) * math.log(2.0) + 2 * math.lgamma(half) - math.lgamma(2 * half)
    d = d.clamp(1e-12, 2.0 - 1e-12)
    return (n - 2.0) * d.log() + (n - 3.0) / 2.0 * torch.log1p(-d.square() / 4.0) - log_norm


def distance_density(d: np.ndarray | Tensor, dim: int) -> np.ndarray | Tensor:
    """q(d) for uniform points on S^{dim-1} (Wu et al. 2017, Eq. 3); integrates to 1 on [0, 2].

    Accepts and returns a numpy array or a tensor. It peaks near sqrt(2) and concentrates
    there as dim grows: in high dimensions almost all pairs of random points are ~sqrt(2) apart.
    """
    if isinstance(d, Tensor):
        return log_distance_density(d, dim).exp()
    values = torch.as_tensor(np.asarray(d, dtype=np.float64))
    return log_distance_density(values, dim).exp().numpy()
