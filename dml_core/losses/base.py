"""What every loss shares: its output, its parameter base, reduction, pair and triplet bases.

Every loss is an ``nn.Module`` called as ``loss(emb, labels, tuples=None) -> LossOutput``.
``tuples`` come from a miner (see ``tuples.py``); ``None`` means every valid tuple. Each loss
also exposes its formula as a plain function of distances (``pair_terms`` or
``triplet_terms``): training and the Loss explorer call the same code.

Reduction follows pytorch-metric-learning's default (``AvgNonZeroReducer``): the mean over the
terms that are non-zero, so easy tuples do not dilute the gradient as training progresses.
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

from dml_core.geometry import pairwise_distances
from dml_core.tuples import Pairs, Triplets, Tuples, all_pairs, to_pairs, to_triplets, triplet_kinds


class LossOutput(NamedTuple):
    """What a loss returns: the value, and what it was made of (for the live views).

    Attributes:
        loss: the scalar to minimise, shape ().
        terms: the loss's summands, shape (n,): pair losses one per pair (positive pairs then
            negative pairs); triplet losses one per triplet; anchor losses (lifted structure,
            N-pair, multi-similarity, circle, histogram) one per anchor; the margin loss one
            per triplet; class-level losses one per sample (proxy-anchor: one per proxy).
        tuples: the pairs or triplets the loss used.
        active: which terms are non-zero, i.e. give a gradient, shape (n,).
        pos_dist: distances of the positive pairs used, shape (n_pos,).
        neg_dist: distances of the negative pairs used, shape (n_neg,).
        kinds: for triplet losses, easy / semi-hard / hard code per triplet (see
            ``tuples.triplet_kinds``), else None.
    """

    loss: Tensor
    terms: Tensor
    tuples: Tuples
    active: Tensor
    pos_dist: Tensor
    neg_dist: Tensor
    kinds: Tensor | None = None


class Params(BaseModel):
    """Base of every parameter model: immutable, and unknown names are an error."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def mean_active(terms: Tensor) -> Tensor:
    """Mean of the non-zero terms (0 with a gradient path when there are none)."""
    return terms.sum() / (terms > 0).sum().clamp_min(1)


class PairLoss(nn.Module):
    """Base of losses made of independent terms on positive and negative pair distances."""

    tuple_type: ClassVar[type] = Pairs

    def pair_terms(self, d: Tensor, positive: bool) -> Tensor:
        """The loss of each pair at distance d; ``positive`` says whether the pair matches."""
        raise NotImplementedError

    def forward(self, emb: Tensor, labels: Tensor, tuples: Tuples | None = None) -> LossOutput:
        """Loss over the given pairs (triplets are split into their pairs), or all pairs."""
        pairs = all_pairs(labels) if tuples is None else to_pairs(tuples)
        dist = pairwise_distances(emb)  # (B, B)
        d_pos = dist[pairs.anchor_pos, pairs.pos]  # (n_pos,)
        d_neg = dist[pairs.anchor_neg, pairs.neg]  # (n_neg,)
        pos_terms = self.pair_terms(d_pos, positive=True)
        neg_terms = self.pair_terms(d_neg, positive=False)
        terms = torch.cat([pos_terms, neg_terms])
        loss = mean_active(pos_terms) + mean_active(neg_terms)
        return LossOutput(loss, terms, pairs, terms > 0, d_pos, d_neg)


class TripletLossBase(nn.Module):
    """Base of losses with one term per triplet, a function of d(a,p) and d(a,n)."""

    tuple_type: ClassVar[type] = Triplets
    margin: float = 0.0

    def triplet_terms(self, d_ap: Tensor, d_an: Tensor) -> Tensor:
        """The loss of each triplet given its anchor-positive and anchor-negative distances."""
        raise NotImplementedError

    def forward(self, emb: Tensor, labels: Tensor, tuples: Tuples | None = None) -> LossOutput:
        """Loss over the given triplets (pairs are joined per anchor), or all triplets."""
        triplets = to_triplets(all_pairs(labels) if tuples is None else tuples)
        dist = pairwise_distances(emb)  # (B, B)
        d_ap = dist[triplets.anchor, triplets.pos]  # (T,)
        d_an = dist[triplets.anchor, triplets.neg]  # (T,)
        terms = self.triplet_terms(d_ap, d_an)
        kinds = triplet_kinds(d_ap.detach(), d_an.detach(), self.margin)
        return LossOutput(mean_active(terms), terms, triplets, terms > 0, d_ap, d_an, kinds)
