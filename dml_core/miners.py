"""Online miners: choose which pairs or triplets of a batch the loss sees.

A miner is called as ``miner(emb, labels) -> Pairs | Triplets`` under ``torch.no_grad`` and
works on the (B, B) distance matrix, with no Python loop over anchors.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field
from torch import Tensor

from dml_core.geometry import pairwise_distances
from dml_core.losses import Params
from dml_core.registry import MINERS
from dml_core.tuples import Pairs, Triplets, Tuples, all_pairs, all_triplets, label_masks


class Miner:
    """Base of miners: computes distances without gradient and hands them to ``select``."""

    tuple_type: ClassVar[type] = Triplets

    def select(self, dist: Tensor, labels: Tensor) -> Tuples:
        """Pick tuples given the (B, B) distance matrix and the (B,) labels."""
        raise NotImplementedError

    @torch.no_grad()
    def __call__(self, emb: Tensor, labels: Tensor) -> Tuples:
        """Mine the batch ``emb`` (B, D) with labels (B,)."""
        return self.select(pairwise_distances(emb.detach().float()), labels)


class NoParams(Params):
    """This miner has no parameters."""


@MINERS.register(
    name="all",
    params=NoParams,
    paper="(no mining: every valid pair or triplet of the batch)",
    equation=r"\{(a,p,n) : y_a = y_p \neq y_n,\ a \neq p\}",
    kind="pairs",
)
class AllMiner(Miner):
    """No mining: every positive and negative pair, which triplet losses join into all triplets."""

    tuple_type = Pairs

    def select(self, dist: Tensor, labels: Tensor) -> Pairs:
        """All pairs of the batch."""
        return all_pairs(labels)


class MarginParams(Params):
    """Parameters of margin-based triplet miners."""

    margin: float = Field(
        0.2, gt=0, le=2, description="alpha: the triplet margin the negatives are compared with"
    )


def _triplet_distances(dist: Tensor, labels: Tensor) -> tuple[Triplets, Tensor, Tensor]:
    triplets = all_triplets(labels)
    d_ap = dist[triplets.anchor, triplets.pos]  # (T,)
    d_an = dist[triplets.anchor, triplets.neg]  # (T,)
    return triplets, d_ap, d_an


def _keep(triplets: Triplets, mask: Tensor) -> Triplets:
    return Triplets(*(t[mask] for t in triplets))


@MINERS.register(
    name="hard",
    params=NoParams,
    paper="Schroff et al., FaceNet, CVPR 2015, Sec. 3.2 (hard negatives)",
    equation=r"d(a,n) \le d(a,p)",
    kind="triplets",
)
class HardMiner(Miner):
    """Hard negatives: every triplet whose negative is no farther than its positive.

    FaceNet, Sec. 3.2: d(a,n) <= d(a,p). These violate the ordering outright; training on them
    alone can collapse the embedding early in training (all points at one place).
    """

    def select(self, dist: Tensor, labels: Tensor) -> Triplets:
        """Triplets with d(a,n) <= d(a,p)."""
        triplets, d_ap, d_an = _triplet_distances(dist, labels)
        return _keep(triplets, d_an <= d_ap)


@MINERS.register(
    name="semi_hard",
    params=MarginParams,
    paper="Schroff et al., FaceNet, CVPR 2015, Eq. (4)",
    equation=r"d(a,p) < d(a,n) < d(a,p) + \alpha",
    kind="triplets",
)
class SemiHardMiner(Miner):
    """Semi-hard negatives: farther than the positive, but still inside the margin.

    FaceNet, Sec. 3.2, Eq. (4): d(a,p) < d(a,n) < d(a,p) + alpha. They still have a positive
    hinge loss but are never closer than the positive, which keeps training stable.
    """

    def __init__(self, margin: float = 0.2) -> None:
        self.margin = margin

    def select(self, dist: Tensor, labels: Tensor) -> Triplets:
        """Triplets with d(a,p) < d(a,n) < d(a,p) + margin."""
        triplets, d_ap, d_an = _triplet_distances(dist, labels)
        return _keep(triplets, (d_an > d_ap) & (d_an < d_ap + self.margin))


@MINERS.register(
    name="batch_hard",
    params=NoParams,
    paper="Hermans, Beyer, Leibe. In Defense of the Triplet Loss. 2017, Eq. (5)",
    equation=r"\left(a, \arg\max_{p} d(a,p), \arg\min_{n} d(a,n)\right)",
    kind="triplets",
)
class BatchHardMiner(Miner):
    """Batch-hard: for each anchor, its farthest positive and its nearest negative.

    Hermans et al. 2017, Eq. (5). One triplet per anchor, the hardest the batch has. With a
    margin loss and no warm-up it is prone to collapse (loss stuck at the margin).
    """

    def select(self, dist: Tensor, labels: Tensor) -> Triplets:
        """One (anchor, hardest positive, hardest negative) triplet per anchor that has both."""
        pos_mask, neg_mask = label_masks(labels)
        hardest_pos = dist.masked_fill(~pos_mask, -1.0).argmax(dim=1)  # (B,)
        hardest_neg = dist.masked_fill(~neg_mask, torch.inf).argmin(dim=1)  # (B,)
        anchor = (pos_mask.any(dim=1) & neg_mask.any(dim=1)).nonzero(as_tuple=True)[0]
        return Triplets(anchor, hardest_pos[anchor], hardest_neg[anchor])
