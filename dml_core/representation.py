"""Two diagnostics of an embedding's shape that explain the contrastive losses.

- ``alignment_uniformity``: Wang & Isola, "Understanding Contrastive Representation Learning
  through Alignment and Uniformity on the Hypersphere", ICML 2020, Eqs. (1) and (2). Alignment
  is how close positives sit; uniformity is how evenly all points spread on the sphere.
  Contrastive losses with a low temperature drive both down.
- ``effective_rank``: Roy & Vetterli, "The effective rank: a measure of effective
  dimensionality", EUSIPCO 2007, Def. 1 (used as RankMe by Garrido et al., ICML 2023). It
  falls towards 1 when the embedding collapses onto a line (dimensional collapse), even while
  the points stay apart.

Both are re-exported from ``dml_core.metrics``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["alignment_uniformity", "effective_rank"]


def alignment_uniformity(
    emb: Tensor, labels: Tensor, alpha: float = 2.0, t: float = 2.0
) -> dict[str, float]:
    """Alignment and uniformity of embeddings (Wang & Isola 2020, Eqs. 1-2).

    alignment  = mean over positive pairs i < j (same label) of ||x_i - x_j||^alpha
    uniformity = log of the mean over all pairs i < j of exp(-t ||x_i - x_j||^2)

    The paper computes both on L2-normalised features; this takes the embeddings as given
    (the playground's nets normalise by default). Lower is better for both.

    Args:
        emb: (n, D) embeddings.
        labels: (n,) labels; pairs with equal labels are the positives.
        alpha: the exponent of the alignment distance (paper: 2).
        t: the Gaussian potential's scale in uniformity (paper: 2).

    Returns:
        ``{"alignment", "uniformity"}``; alignment is NaN without a positive pair, and
        both are NaN for fewer than two points.
    """
    x = emb.detach().double()  # (n, D)
    n = x.shape[0]
    if n < 2:
        return {"alignment": float("nan"), "uniformity": float("nan")}
    # squared distances of all pairs i < j from one (n, n) matrix: O(n^2) memory, not O(n^2 D)
    sq_all = torch.cdist(x, x).pow(2)  # (n, n)
    upper = torch.ones(n, n, dtype=torch.bool, device=x.device).triu(diagonal=1)
    labels = torch.as_tensor(labels).to(x.device)
    positive = (labels[:, None] == labels[None, :]) & upper  # (n, n)
    sq = sq_all[upper]  # (n (n-1) / 2,)
    if positive.any():
        alignment = sq_all[positive].sqrt().pow(alpha).mean()
    else:
        alignment = sq.new_tensor(float("nan"))
    # log-mean-exp, stable: log(sum exp(-t sq)) - log(count)
    uniformity = torch.logsumexp(-t * sq, dim=0) - torch.log(sq.new_tensor(float(len(sq))))
    return {"alignment": float(alignment), "uniformity": float(uniformity)}


def effective_rank(emb: Tensor) -> float:
    """Exp of the Shannon entropy of the normalised singular values (Roy & Vetterli 2007).

    With sigma the singular values of the (uncentred) (n, D) embedding matrix and
    p_k = sigma_k / sum(sigma), erank = exp(-sum_k p_k log p_k). It is D for a matrix whose
    singular values are all equal, 1 for a rank-one matrix, and 0 for the zero matrix.

    Args:
        emb: (n, D) embeddings.
    """
    sigma = torch.linalg.svdvals(emb.detach().double())  # (min(n, D),)
    total = sigma.sum()
    if total <= 0:
        return 0.0
    p = sigma / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))
