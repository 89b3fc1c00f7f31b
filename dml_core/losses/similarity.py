"""Losses weighting each anchor's pairs by their similarity: multi-similarity and circle.

Both read the (B, B) cosine-similarity matrix through boolean masks of the positive and
negative pairs (a miner's tuples restrict the masks), and both have one term per anchor.
``SimilarityAnchorLoss`` gives them their shared ``forward`` and ``curve``; each writes only
its ``anchor_terms``.

References:
    Wang, Han, Huang, Dong, Scott. Multi-Similarity Loss with General Pair Weighting. CVPR 2019.
    Sun, Cheng, Zhang, Zhang, Zheng, Wang, Wei. Circle Loss. CVPR 2020.
"""

from __future__ import annotations

import abc
import math

import numpy as np
import torch
from pydantic import Field
from torch import Tensor, nn

from dml_core.geometry import (
    cosine_similarities,
    cosine_to_distance,
)
from dml_core.losses.anchor import (
    anchor_output,
    as_float,
    mask_pairs,
    masked_logsumexp,
    minimal_similarities,
    pair_masks,
)
from dml_core.losses.base import Boundary, Loss, LossOutput, mean_active
from dml_core.registry import LOSSES, Params
from dml_core.tuples import Tuples


class SimilarityAnchorLoss(Loss):
    """Base of per-anchor losses on cosine similarities (multi-similarity, circle).

    Subclasses write ``anchor_terms(sim, pos_mask, neg_mask)``, one term per row of a
    similarity matrix whose masks mark each row's positives and negatives; ``forward`` applies
    it to the (B, B) batch and ``curve`` to one anchor with one positive and one negative.
    ``reduce`` turns the terms into the loss (default: the mean of the non-zero terms).
    """

    @abc.abstractmethod
    def anchor_terms(self, sim: Tensor, pos_mask: Tensor, neg_mask: Tensor) -> Tensor:
        """Per-anchor terms (...,) from similarities and masks (..., n), last dim pooled."""

    def reduce(self, terms: Tensor) -> Tensor:
        """The loss from the (B,) anchor terms: the mean of the non-zero ones."""
        return mean_active(terms)

    def forward(self, emb: Tensor, labels: Tensor, tuples: Tuples | None = None) -> LossOutput:
        """Loss over the given pairs (or all pairs), on cosine similarities."""
        sim = cosine_similarities(as_float(emb))  # (B, B)
        pos_mask, neg_mask = pair_masks(labels, tuples)
        terms = self.anchor_terms(sim, pos_mask, neg_mask)  # (B,)
        pairs = mask_pairs(pos_mask, neg_mask)
        return anchor_output(self.reduce(terms), terms, pairs, cosine_to_distance(sim))

    def curve(self, d_ap: Tensor, d_an: Tensor) -> Tensor:
        """Term of an anchor with one positive and one negative, on the unit sphere."""
        return self.anchor_terms(*minimal_similarities(d_ap, d_an))


class MultiSimilarityParams(Params):
    """Parameters of the multi-similarity loss."""

    alpha: float = Field(2.0, gt=0, le=100, description="alpha: sharpness over positive pairs")
    beta: float = Field(50.0, gt=0, le=200, description="beta: sharpness over negative pairs")
    lam: float = Field(0.5, ge=-1, le=1, description="lambda: similarity threshold between pairs")


def multi_similarity_terms(
    sim: Tensor, pos_mask: Tensor, neg_mask: Tensor, alpha: float, beta: float, lam: float
) -> Tensor:
    """Wang et al. 2019, Eq. (12), per anchor (last dim pooled)."""
    pos = masked_logsumexp(-alpha * (sim - lam), pos_mask, add_one=True) / alpha
    neg = masked_logsumexp(beta * (sim - lam), neg_mask, add_one=True) / beta
    return pos + neg


@LOSSES.register(
    name="multi_similarity",
    params=MultiSimilarityParams,
    paper="Wang, Han, Huang, Dong, Scott. Multi-Similarity Loss with General Pair Weighting "
    "for Deep Metric Learning. CVPR 2019",
    equation=r"L_i = \frac{1}{\alpha} \log\Big(1 + \sum_{p} e^{-\alpha (s_{ip} - \lambda)}\Big) "
    r"+ \frac{1}{\beta} \log\Big(1 + \sum_{n} e^{\beta (s_{in} - \lambda)}\Big)",
    kind="pairs",
)
class MultiSimilarityLoss(SimilarityAnchorLoss):
    """Multi-similarity loss: soft-max pooling of each anchor's positives and negatives.

    Wang et al. 2019, Eq. (12), on cosine similarities s: for anchor i,
    1/alpha log(1 + sum_p e^{-alpha (s_ip - lambda)}) + 1/beta log(1 + sum_n e^{beta
    (s_in - lambda)}). Each pair's gradient weight depends on its own similarity and on the
    other pairs of the anchor (a soft-max), so the hardest pairs dominate. lambda is the
    similarity threshold, an absolute distance sqrt(2 - 2 lambda) on the sphere; alpha and beta
    set how sharply the positives and the negatives are pooled (beta >> alpha: negatives act
    almost like a hinge at lambda). Equal to pytorch-metric-learning's
    ``MultiSimilarityLoss(alpha, beta, base=lambda)``; its and the authors' code default is
    lambda = 0.5 (the paper's text says lambda = 1). The paper's pair mining is a separate
    miner. One term per anchor; the loss is their mean over the batch (anchors without pairs
    count as 0, as there).
    """

    def __init__(self, alpha: float = 2.0, beta: float = 50.0, lam: float = 0.5) -> None:
        super().__init__()
        self.alpha, self.beta, self.lam = alpha, beta, lam

    def anchor_terms(self, sim: Tensor, pos_mask: Tensor, neg_mask: Tensor) -> Tensor:
        """Eq. (12) per anchor."""
        return multi_similarity_terms(sim, pos_mask, neg_mask, self.alpha, self.beta, self.lam)

    def reduce(self, terms: Tensor) -> Tensor:
        """The mean over all B anchors (those without pairs count as 0)."""
        return terms.mean()

    def distance_lines(self) -> dict[str, float]:
        """The threshold lambda as a distance between unit vectors, sqrt(2 - 2 lambda)."""
        return {"lambda": math.sqrt(2.0 - 2.0 * self.lam)}

    def decision_boundaries(self, num: int = 401) -> tuple[Boundary, ...]:
        """s_p = lambda and s_n = lambda, the threshold of Eq. (12), as distances."""
        return Boundary.thresholds("lambda", self.lam, num)


class CircleParams(Params):
    """Parameters of the circle loss."""

    m: float = Field(0.25, ge=0, le=1, description="m: positives above 1 - m, negatives below m")
    gamma: float = Field(80.0, gt=0, le=1024, description="gamma: scale of all logits")


def circle_terms(sim: Tensor, pos_mask: Tensor, neg_mask: Tensor, m: float, gamma: float) -> Tensor:
    """Sun et al. 2020, Eq. (4) with the weights of Eq. (5)-(6), per anchor (last dim pooled).

    The weights alpha_p = [1 + m - s_p]_+ and alpha_n = [s_n + m]_+ are constants for the
    gradient (detached), as in the authors' and pytorch-metric-learning's code. An anchor that
    lacks positives or negatives gets 0.
    """
    s = sim.detach()
    pos_logits = -gamma * (1.0 + m - s).relu() * (sim - (1.0 - m))
    neg_logits = gamma * (s + m).relu() * (sim - m)
    logits = torch.where(pos_mask, pos_logits, neg_logits)
    lse = masked_logsumexp(logits, pos_mask) + masked_logsumexp(logits, neg_mask)
    return nn.functional.softplus(lse) * (pos_mask.any(dim=-1) & neg_mask.any(dim=-1))


@LOSSES.register(
    name="circle",
    params=CircleParams,
    paper="Sun, Cheng, Zhang, Zhang, Zheng, Wang, Wei. Circle Loss: A Unified Perspective of "
    "Pair Similarity Optimization. CVPR 2020",
    equation=r"L_i = \log\Big(1 + \sum_{n} e^{\gamma \alpha_n (s_n - \Delta_n)} "
    r"\sum_{p} e^{-\gamma \alpha_p (s_p - \Delta_p)}\Big)",
    kind="pairs",
)
class CircleLoss(SimilarityAnchorLoss):
    """Circle loss: pair similarities re-weighted by how far each is from its optimum.

    Sun et al. 2020, Eq. (4) with Eq. (6): on cosine similarities, anchor i's term is
    log(1 + sum_n e^{gamma alpha_n (s_n - Delta_n)} sum_p e^{-gamma alpha_p (s_p - Delta_p)}),
    with optima O_p = 1 + m, O_n = -m, margins Delta_p = 1 - m, Delta_n = m and weights
    alpha_p = [O_p - s_p]_+, alpha_n = [s_n - O_n]_+. A pair far from its optimum gets a large
    weight, so the decision boundary in the (s_n, s_p) plane is a circle around (0, 1) of
    radius sqrt(2) m rather than a line. m alone sets both margins (positives above 1 - m,
    negatives below m); gamma scales all logits (larger: closer to a hard maximum). Defaults:
    m = 0.25 (the paper's face and re-id value) with gamma = 80 (pytorch-metric-learning's
    default; the paper pairs m = 0.25 with gamma = 256 or 128, and gamma = 80 with m = 0.4), a
    milder scale for small nets. Equal to pytorch-metric-learning's ``CircleLoss(m, gamma)``.
    One term per anchor; the loss is the mean of the non-zero terms.
    """

    def __init__(self, m: float = 0.25, gamma: float = 80.0) -> None:
        super().__init__()
        self.m, self.gamma = m, gamma

    def anchor_terms(self, sim: Tensor, pos_mask: Tensor, neg_mask: Tensor) -> Tensor:
        """Eq. (4) with the weights of Eq. (6), per anchor."""
        return circle_terms(sim, pos_mask, neg_mask, self.m, self.gamma)

    def distance_lines(self) -> dict[str, float]:
        """The decision thresholds Delta_p = 1 - m and Delta_n = m as distances on the sphere."""
        return {
            "Delta_p": math.sqrt(2.0 - 2.0 * (1.0 - self.m)),
            "Delta_n": math.sqrt(2.0 - 2.0 * self.m),
        }

    def decision_boundaries(self, num: int = 401) -> tuple[Boundary, ...]:
        """Eq. (10), Fig. 1: the circle s_n^2 + (s_p - 1)^2 = 2 m^2 (s_p <= 1); s_p - s_n = m."""
        r, angle = math.sqrt(2.0) * self.m, np.linspace(np.pi, 2 * np.pi, num)  # lower half
        s_n = np.linspace(-1.0, 1.0, num)
        return (
            Boundary.from_similarity(
                "circle: s_n^2 + (s_p - 1)^2 = 2 m^2", 1.0 + r * np.sin(angle), r * np.cos(angle)
            ),
            Boundary.from_similarity("linear: s_p - s_n = m", s_n + self.m, s_n),
        )
