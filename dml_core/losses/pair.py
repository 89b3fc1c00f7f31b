"""Losses on independent positive and negative pairs: contrastive, binomial deviance, margin.

References:
    Hadsell, Chopra, LeCun. Dimensionality Reduction by Learning an Invariant Mapping. CVPR 2006.
    Yi, Lei, Liao, Li. Deep Metric Learning for Person Re-Identification. ICPR 2014.
    Wu, Manmatha, Smola, Kraehenbuehl. Sampling Matters in Deep Embedding Learning. ICCV 2017.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn

from dml_core.errors import ConfigError
from dml_core.geometry import distance_to_cosine, l2_normalize, pairwise_distances
from dml_core.losses.base import Boundary, LossOutput, PairLoss
from dml_core.registry import LOSSES, Params
from dml_core.tuples import Tuples, all_pairs, to_triplets


class ContrastiveParams(Params):
    """Parameters of the contrastive loss."""

    pos_margin: float = Field(
        0.0,
        ge=0,
        le=2,
        description="m_pos: positive pairs closer than this are left alone (0: one-margin form)",
    )
    neg_margin: float = Field(
        1.0, gt=0, le=4, description="m_neg: negative pairs are pushed apart until this distance"
    )


@LOSSES.register(
    name="contrastive",
    params=ContrastiveParams,
    paper="Hadsell, Chopra, LeCun. Dimensionality Reduction by Learning an Invariant Mapping. "
    "CVPR 2006",
    equation=r"L = [d(a,p) - m_{pos}]_+ + [m_{neg} - d(a,n)]_+",
    kind="pairs",
)
class ContrastiveLoss(PairLoss):
    """Contrastive loss: pull positive pairs together, push negatives beyond a margin.

    Hadsell et al. 2006, Eq. (4), in the double-margin form of pytorch-metric-learning:
    a positive pair costs [d - m_pos]_+ and a negative pair [m_neg - d]_+ (plain, not squared,
    distances; the paper squares them). With m_pos = 0 it is the classic one-margin loss, which
    pulls every positive pair to a point; m_pos > 0 lets classes keep some spread. m_neg sets
    the absolute distance at which classes count as separated, the same everywhere in the space.
    The positive and negative parts are each averaged over their non-zero terms, then added.
    """

    def __init__(self, pos_margin: float = 0.0, neg_margin: float = 1.0) -> None:
        super().__init__()
        self.pos_margin, self.neg_margin = pos_margin, neg_margin

    def pair_terms(self, d: Tensor, positive: bool) -> Tensor:
        """[d - m_pos]_+ for positive pairs, [m_neg - d]_+ for negative pairs."""
        return (d - self.pos_margin).relu() if positive else (self.neg_margin - d).relu()

    def distance_lines(self) -> dict[str, float]:
        """The margins, absolute distances (m_pos only when it is non-zero)."""
        lines = {"m_pos": self.pos_margin} if self.pos_margin > 0 else {}
        return lines | {"m_neg": self.neg_margin}

    def decision_boundaries(self, num: int = 401) -> tuple[Boundary, ...]:
        """d(a,p) = m_pos (only when non-zero) and d(a,n) = m_neg, where each hinge stops."""
        negative = Boundary.horizontal("d(a,n) = m_neg", self.neg_margin, num)
        if self.pos_margin <= 0:
            return (negative,)
        return Boundary.vertical("d(a,p) = m_pos", self.pos_margin, num), negative


class BinomialDevianceParams(Params):
    """Parameters of the binomial deviance loss."""

    alpha: float = Field(
        2.0, gt=0, le=50, description="alpha: slope of the soft-plus; larger is closer to a hinge"
    )
    beta: float = Field(
        0.5,
        ge=-1,
        le=1,
        description="beta: cosine similarity at which a pair costs log 2, the soft threshold",
    )
    C: float = Field(
        1.0,
        gt=0,
        le=100,
        description="C: extra slope on negative pairs (the paper uses 25 to balance the many "
        "negatives)",
    )


@LOSSES.register(
    name="binomial_deviance",
    params=BinomialDevianceParams,
    paper="Yi, Lei, Liao, Li. Deep Metric Learning for Person Re-Identification. ICPR 2014",
    equation=r"L = \log(1 + e^{-\alpha (s_{ap} - \beta)}) "
    r"+ \log(1 + e^{C \alpha (s_{an} - \beta)})",
    kind="pairs",
)
class BinomialDevianceLoss(PairLoss):
    """Binomial deviance loss: a soft-plus on cosine similarity, smooth contrastive loss.

    Yi et al. 2014, Eq. (5): sum_ij W_ij log(1 + exp(-alpha (s_ij - beta) m_ij)), with cosine
    similarity s_ij, m_ij = 1 for positive pairs and m_ij = -C for negative pairs, and W_ij
    = 1 / (number of pairs of that kind): the mean of the positive terms plus the mean of the
    negative terms (all terms are positive, so this is also the non-zero mean of the base).
    Embeddings are L2-normalised and s = 1 - d^2 / 2 is read off the distance d of the
    normalised pair, so the pos/neg distances reported are chordal distances on the sphere.

    beta is the similarity where both kinds cost log 2: positives are pulled above it and
    negatives pushed below it, with no hard cut-off: every pair keeps a gradient. alpha sets how
    sharp the transition is (large alpha approaches [beta - s]_+ scaled by alpha). C multiplies
    the slope on negatives only, which makes the few hard negatives weigh much more than the
    many easy ones (the paper uses C = 25; C = 1 is symmetric).
    """

    def __init__(self, alpha: float = 2.0, beta: float = 0.5, C: float = 1.0) -> None:
        super().__init__()
        self.alpha, self.beta, self.C = alpha, beta, C

    def pair_terms(self, d: Tensor, positive: bool) -> Tensor:
        """log(1 + e^{-alpha (s - beta)}) for positives, log(1 + e^{C alpha (s - beta)}) else."""
        s = distance_to_cosine(d)
        scale = -self.alpha if positive else self.C * self.alpha
        return nn.functional.softplus(scale * (s - self.beta))

    def forward(self, emb: Tensor, labels: Tensor, tuples: Tuples | None = None) -> LossOutput:
        """The pair loss on the L2-normalised embeddings (computed in at least float32)."""
        emb = emb.to(torch.promote_types(emb.dtype, torch.float32))
        return super().forward(l2_normalize(emb), labels, tuples)

    def distance_lines(self) -> dict[str, float]:
        """The threshold beta as a distance between unit vectors, sqrt(2 - 2 beta)."""
        return {"beta": (2.0 - 2.0 * self.beta) ** 0.5}

    def decision_boundaries(self, num: int = 401) -> tuple[Boundary, ...]:
        """s_p = beta and s_n = beta, where each pair costs log 2 (as distances)."""
        return Boundary.thresholds("beta", self.beta, num)


class MarginLossParams(Params):
    """Parameters of the margin loss."""

    alpha: float = Field(
        0.2,
        gt=0,
        le=2,
        description="alpha: half-width of the band around beta that pairs must leave",
    )
    beta: float = Field(
        1.2,
        gt=0,
        le=4,
        description="beta: initial boundary distance between positives and negatives (learnt)",
    )
    nu: float = Field(
        0.0,
        ge=0,
        le=1,
        description="nu: weight of the regulariser nu * beta, which pushes beta down",
    )
    per_class_beta: bool = Field(
        False,
        description="learn one beta per class (indexed by the anchor's class)",
        json_schema_extra={"per_class": True},  # needs labels: refused with supervision=views
    )


def margin_terms(d: Tensor, positive: bool, alpha: float, beta: Tensor) -> Tensor:
    """Wu et al. 2017, Eq. (8): [alpha + d - beta]_+ for positives, [alpha - (d - beta)]_+ else."""
    return (alpha + d - beta).relu() if positive else (alpha - d + beta).relu()


@LOSSES.register(
    name="margin",
    params=MarginLossParams,
    paper="Wu, Manmatha, Smola, Kraehenbuehl. Sampling Matters in Deep Embedding Learning. "
    "ICCV 2017",
    equation=r"L = [\alpha + d(a,p) - \beta]_+ + [\alpha - d(a,n) + \beta]_+ + \nu \beta",
    kind="pairs",
)
class MarginLoss(PairLoss):
    """Margin loss: positives inside beta - alpha, negatives beyond beta + alpha, beta learnt.

    Wu et al. 2017, Eq. (8)-(9): a positive pair costs [alpha + d - beta]_+ and a negative pair
    [alpha - (d - beta)]_+, on plain distances, plus nu * beta. Unlike the contrastive loss the
    boundary beta is an ``nn.Parameter`` the optimiser moves with the embedding, so the loss
    finds its own scale; nu > 0 pulls beta (and so the whole embedding) smaller. alpha is the
    half-width of the empty band the loss asks for around beta. With ``per_class_beta`` each
    class has its own beta (the anchor's class decides; the constructor then needs
    ``num_classes``); the paper adds a global and a per-class beta, this keeps only the latter.

    As in pytorch-metric-learning (``MarginLoss(triplets_per_anchor="all")``), pairs are joined
    into triplets (a, p, n): each term is the positive plus the negative part of one triplet,
    and the loss is their sum divided by the number of non-zero parts, plus nu * beta (per
    class: nu * beta of each triplet's anchor class, summed and divided the same way).
    """

    def __init__(
        self,
        alpha: float = 0.2,
        beta: float = 1.2,
        nu: float = 0.0,
        per_class_beta: bool = False,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        if per_class_beta and not num_classes:
            raise ConfigError(
                "The 'per_class_beta' parameter of margin needs the number of classes "
                "(num_classes). Got none."
            )
        self.alpha, self.nu, self.per_class_beta = alpha, nu, per_class_beta
        self.beta = nn.Parameter(torch.full((num_classes if per_class_beta else 1,), beta))

    def forward(self, emb: Tensor, labels: Tensor, tuples: Tuples | None = None) -> LossOutput:
        """Loss over the triplets formed from the given pairs (or all pairs)."""
        emb = emb.to(torch.promote_types(emb.dtype, torch.float32))
        triplets = to_triplets(all_pairs(labels) if tuples is None else tuples)
        a, p, n = triplets
        beta = self.beta[labels[a]] if self.per_class_beta else self.beta  # (T,) or (1,)
        beta = beta.to(emb.dtype)
        dist = pairwise_distances(emb)  # (B, B)
        d_ap, d_an = dist[a, p], dist[a, n]  # (T,)
        pos_terms = margin_terms(d_ap, True, self.alpha, beta)  # (T,)
        neg_terms = margin_terms(d_an, False, self.alpha, beta)  # (T,)
        terms = pos_terms + neg_terms
        divisor = (pos_terms > 0).sum() + (neg_terms > 0).sum()
        loss = terms.sum() / divisor.clamp_min(1)
        if self.nu > 0 and len(a) > 0:
            reg = self.nu * beta.sum()
            if self.per_class_beta:  # summed over triplets, divided like the terms (0 if none)
                reg = reg * (divisor > 0) / divisor.clamp_min(1)
            loss = loss + reg
        return LossOutput(loss, terms, triplets, terms > 0, d_ap, d_an)

    def pair_terms(self, d: Tensor, positive: bool) -> Tensor:
        """Eq. (8) at the current (mean, detached) beta: what the Loss explorer plots."""
        beta = self.beta.detach().mean().to(d.dtype)
        return margin_terms(d, positive, self.alpha, beta)

    def distance_lines(self) -> dict[str, float]:
        """The band the loss asks for, at the current (mean) beta."""
        beta = float(self.beta.detach().mean())
        return {"beta - alpha": beta - self.alpha, "beta": beta, "beta + alpha": beta + self.alpha}

    def decision_boundaries(self, num: int = 401) -> tuple[Boundary, ...]:
        """d(a,p) = beta - alpha and d(a,n) = beta + alpha (Eq. 8), at the current (mean) beta."""
        beta = float(self.beta.detach().mean())
        return (
            Boundary.vertical("d(a,p) = beta - alpha", beta - self.alpha, num),
            Boundary.horizontal("d(a,n) = beta + alpha", beta + self.alpha, num),
        )

    def extras(self) -> dict[str, float]:
        """Values worth plotting during training: the current (mean) beta."""
        return {"beta": float(self.beta.detach().mean())}
