"""Losses on triplets (a, p, n): triplet (hinge and soft-plus), Triplet Network, quadruplet.

References:
    Schroff, Kalenichenko, Philbin. FaceNet. CVPR 2015.
    Hoffer, Ailon. Deep Metric Learning Using Triplet Network. SIMBAD (ICLR workshop) 2015.
    Chen, Chen, Zhang, Huang. Beyond Triplet Loss: a Deep Quadruplet Network for Person
    Re-identification. CVPR 2017.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import Tensor, nn

from dml_core.geometry import pairwise_distances
from dml_core.losses.base import Boundary, LossOutput, TripletLossBase, mean_active
from dml_core.registry import LOSSES, Params
from dml_core.tuples import Tuples, all_pairs, to_triplets, triplet_kinds


class TripletParams(Params):
    """Parameters of the triplet loss."""

    margin: float = Field(
        0.2,
        gt=0,
        le=2,
        description="alpha: how much farther the negative must be than the positive",
    )
    soft: bool = Field(False, description="soft-plus log(1 + e^x) instead of the hinge [x]_+")


@LOSSES.register(
    name="triplet",
    params=TripletParams,
    paper="Schroff, Kalenichenko, Philbin. FaceNet. CVPR 2015",
    equation=r"L = [d(a,p) - d(a,n) + \alpha]_+",
    kind="triplets",
)
class TripletLoss(TripletLossBase):
    """Triplet loss: each anchor's negative must be a margin farther than its positive.

    Schroff et al. 2015 (FaceNet), Eq. (1)-(2): [d(a,p) - d(a,n) + alpha]_+, on plain
    (not squared) distances as in pytorch-metric-learning. Only relative distances matter, so
    the scale of the space can differ from place to place. With ``soft=True`` the hinge becomes
    the soft-plus log(1 + exp(d(a,p) - d(a,n) + alpha)) (Hermans et al. 2017): every triplet
    keeps a small gradient, even easy ones.
    """

    def __init__(self, margin: float = 0.2, soft: bool = False) -> None:
        super().__init__()
        self.margin, self.soft = margin, soft

    def triplet_terms(self, d_ap: Tensor, d_an: Tensor) -> Tensor:
        """[d_ap - d_an + alpha]_+, or its soft-plus."""
        violation = d_ap - d_an + self.margin
        return nn.functional.softplus(violation) if self.soft else violation.relu()


class TripletNetworkParams(Params):
    """Parameters of the Triplet Network loss."""

    objective: Literal["mse", "nll"] = Field(
        "mse",
        description="mse: the paper's ||(d+, d- - 1)||^2 = 2 d+^2; nll: -log d- (a soft-plus)",
    )


@LOSSES.register(
    name="triplet_network",
    params=TripletNetworkParams,
    paper="Hoffer, Ailon. Deep Metric Learning Using Triplet Network. SIMBAD 2015",
    equation=r"d_+ = \frac{e^{d(a,p)}}{e^{d(a,p)} + e^{d(a,n)}},\quad L = \|(d_+, d_- - 1)\|^2",
    kind="triplets",
)
class TripletNetworkLoss(TripletLossBase):
    """Triplet Network loss: a softmax over (d(a,p), d(a,n)) that should pick the negative.

    Hoffer & Ailon 2015, Eq. (1)-(2): d_+ = e^{d(a,p)} / (e^{d(a,p)} + e^{d(a,n)}) and
    d_- = 1 - d_+, the softmax of the two plain distances; the loss is the squared error of
    (d_+, d_-) against (0, 1), ||(d_+, d_- - 1)||^2 = 2 d_+^2 (``objective="mse"``). It depends
    only on the difference d(a,n) - d(a,p), has no margin, and saturates: it stops pushing once
    the negative is a few units farther than the positive, so the scale of the embedding
    matters (with unit-norm embeddings, d_+ >= 1 / (1 + e^2) and the loss never vanishes).
    ``objective="nll"`` uses -log d_- = log(1 + e^{d(a,p) - d(a,n)}) instead, the soft-plus
    triplet loss with zero margin, whose gradient does not vanish on hard triplets.
    """

    def __init__(self, objective: Literal["mse", "nll"] = "mse") -> None:
        super().__init__()
        self.objective = objective

    def triplet_terms(self, d_ap: Tensor, d_an: Tensor) -> Tensor:
        """2 d_+^2 with d_+ = sigmoid(d_ap - d_an), or -log d_- = softplus(d_ap - d_an)."""
        if self.objective == "mse":
            return 2.0 * torch.sigmoid(d_ap - d_an).square()
        return nn.functional.softplus(d_ap - d_an)


class QuadrupletParams(Params):
    """Parameters of the quadruplet loss."""

    alpha1: float = Field(
        1.0,
        gt=0,
        le=4,
        description="alpha1: margin between d(a,p)^2 and d(a,n1)^2 (the triplet term)",
    )
    alpha2: float = Field(
        0.5,
        ge=0,
        le=4,
        description="alpha2: margin between d(a,p)^2 and d(n1,n2)^2, a pair not sharing the "
        "anchor (keep it below alpha1)",
    )
    seed: int = Field(0, ge=0, description="seed of the random choice of the second negative")


def random_other_class(labels: Tensor, exclude1: Tensor, exclude2: Tensor, u: Tensor) -> Tensor:
    """For each i, a uniformly random sample whose label is neither exclude1[i] nor exclude2[i].

    Vectorised in O(B + T): samples are sorted by class, so the allowed samples are everything
    outside two contiguous blocks; the rank floor(u * count) among them is shifted past the
    blocks. Entries with no allowed sample get -1.

    Args:
        labels: (B,) labels of the batch.
        exclude1: (T,) a label to avoid.
        exclude2: (T,) another label to avoid (different from exclude1).
        u: (T,) uniform numbers in [0, 1) that make the choice.
    """
    classes, cls, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    order = torch.argsort(cls, stable=True)  # (B,) samples grouped by class
    start = torch.cumsum(counts, 0) - counts  # (C,) first position of each class block
    c1 = torch.searchsorted(classes, exclude1)  # (T,)
    c2 = torch.searchsorted(classes, exclude2)  # (T,)
    lo, hi = torch.minimum(c1, c2), torch.maximum(c1, c2)  # (T,) blocks by position
    allowed = len(labels) - counts[lo] - counts[hi]  # (T,)
    rank = (u * allowed).long().clamp_max(allowed - 1)  # (T,) rank among the allowed samples
    pos = rank + counts[lo] * (rank >= start[lo])  # (T,) skip the first block
    pos = pos + counts[hi] * (pos >= start[hi])  # (T,) skip the second block
    return torch.where(allowed > 0, order[pos.clamp(0, len(labels) - 1)], -1)


@LOSSES.register(
    name="quadruplet",
    params=QuadrupletParams,
    paper="Chen, Chen, Zhang, Huang. Beyond Triplet Loss: a Deep Quadruplet Network for Person "
    "Re-identification. CVPR 2017",
    equation=r"L = [d(a,p)^2 - d(a,n_1)^2 + \alpha_1]_+ + [d(a,p)^2 - d(n_1,n_2)^2 + \alpha_2]_+",
    kind="triplets",
)
class QuadrupletLoss(TripletLossBase):
    """Quadruplet loss: the triplet loss plus a push on negative pairs that exclude the anchor.

    Chen et al. 2017, Eq. (5), on squared distances as in the paper:
    [d(a,p)^2 - d(a,n1)^2 + alpha1]_+ + [d(a,p)^2 - d(n1,n2)^2 + alpha2]_+, where n2 belongs
    to neither the anchor's nor n1's class. The second term compares a positive distance with a
    negative distance between two other points, so intra-class distances must be smaller than
    inter-class distances across the whole space, not just around each anchor: this is what
    makes a single global threshold work. alpha1 is the usual triplet margin; alpha2 (smaller)
    is the weaker global constraint. The paper's adaptive margins are not used.

    The second negative is drawn for each triplet uniformly among the batch samples of a third
    class, from a generator seeded with ``seed`` (so runs repeat); a triplet whose batch has no
    third class keeps only the first term. One term per triplet: the sum of the two hinges;
    the loss is the mean over non-zero terms.
    """

    def __init__(self, alpha1: float = 1.0, alpha2: float = 0.5, seed: int = 0) -> None:
        super().__init__()
        self.alpha1, self.alpha2 = alpha1, alpha2
        self.margin = alpha1  # for triplet_kinds, on squared distances
        self.generator = torch.Generator().manual_seed(seed)

    def second_negatives(self, labels: Tensor, anchor: Tensor, neg: Tensor) -> Tensor:
        """Draw n2 for each triplet: a sample of a third class, or -1 when there is none."""
        u = torch.rand(len(anchor), generator=self.generator, device="cpu").to(labels.device)
        return random_other_class(labels, labels[anchor], labels[neg], u)

    def triplet_hinge(self, d_ap: Tensor, d_an: Tensor) -> Tensor:
        """The triplet term [d(a,p)^2 - d(a,n1)^2 + alpha1]_+."""
        return (d_ap.square() - d_an.square() + self.alpha1).relu()

    def pair_hinge(self, d_ap: Tensor, d_nn: Tensor) -> Tensor:
        """The second term [d(a,p)^2 - d(n1,n2)^2 + alpha2]_+."""
        return (d_ap.square() - d_nn.square() + self.alpha2).relu()

    def triplet_terms(self, d_ap: Tensor, d_an: Tensor, d_nn: Tensor | None = None) -> Tensor:
        """Both hinges; d(n1,n2) defaults to d(a,n1) (the negative pair as far apart)."""
        d_nn = d_an if d_nn is None else d_nn
        return self.triplet_hinge(d_ap, d_an) + self.pair_hinge(d_ap, d_nn)

    def forward(self, emb: Tensor, labels: Tensor, tuples: Tuples | None = None) -> LossOutput:
        """Loss over the given triplets (or all), each with a random second negative pair."""
        emb = emb.to(torch.promote_types(emb.dtype, torch.float32))
        triplets = to_triplets(all_pairs(labels) if tuples is None else tuples)
        a, p, n = triplets
        n2 = self.second_negatives(labels, a, n)  # (T,)
        dist = pairwise_distances(emb)  # (B, B)
        d_ap, d_an, d_nn = dist[a, p], dist[a, n], dist[n, n2.clamp_min(0)]  # (T,)
        terms = self.triplet_hinge(d_ap, d_an) + self.pair_hinge(d_ap, d_nn) * (n2 >= 0)
        kinds = triplet_kinds(d_ap.detach().square(), d_an.detach().square(), self.alpha1)
        return LossOutput(mean_active(terms), terms, triplets, terms > 0, d_ap, d_an, kinds)

    def negative_boundary(self, d_ap: Tensor) -> Tensor:
        """Where the triplet term stops: d(a,n1) = sqrt(d(a,p)^2 + alpha1) (squared margin)."""
        return (d_ap.square() + self.alpha1).sqrt()

    def decision_boundaries(self, num: int = 401) -> tuple[Boundary, ...]:
        """Where each hinge of Eq. (5) stops: d(a,n)^2 = d(a,p)^2 + alpha, for alpha1 and alpha2.

        The first is ``negative_boundary``; the second takes d(n1,n2) = d(a,n), as ``curve``.
        """
        d_ap = np.linspace(0.0, 2.0, num)  # (num,)
        return tuple(
            Boundary.clipped(f"d(a,n)^2 = d(a,p)^2 + {k}", d_ap, np.sqrt(d_ap**2 + alpha))
            for k, alpha in (("alpha1", self.alpha1), ("alpha2", self.alpha2))
        )
