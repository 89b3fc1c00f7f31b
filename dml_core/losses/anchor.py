"""Losses whose term is per anchor, pooling over its positives and negatives.

Lifted structure, N-pair, histogram, multi-similarity and circle losses all read the whole
(B, B) distance or similarity matrix through boolean masks of the positive and negative pairs;
a miner's pairs (or triplets, split into pairs) restrict the masks. Each formula is a plain
function of the matrix and the masks, so ``curve`` (the Loss explorer) and ``forward``
(training) run the same code.

References:
    Song, Xiang, Jegelka, Savarese. Deep Metric Learning via Lifted Structured Feature
    Embedding. CVPR 2016.
    Sohn. Improved Deep Metric Learning with Multi-class N-pair Loss Objective. NeurIPS 2016.
    Ustinova, Lempitsky. Learning Deep Embeddings with Histogram Loss. NeurIPS 2016.
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
    distance_to_cosine,
    pairwise_distances,
)
from dml_core.losses.base import Boundary, Loss, LossOutput, mean_active
from dml_core.registry import LOSSES, NoParams, Params
from dml_core.tuples import Pairs, Tuples, label_masks, to_pairs


def pair_masks(labels: Tensor, tuples: Tuples | None) -> tuple[Tensor, Tensor]:
    """Boolean (B, B) masks of the positive and negative pairs: all, or the given ones."""
    if tuples is None:
        return label_masks(labels)
    pairs = to_pairs(tuples)
    pos_mask = torch.zeros(len(labels), len(labels), dtype=torch.bool, device=labels.device)
    neg_mask = torch.zeros_like(pos_mask)
    pos_mask[pairs.anchor_pos, pairs.pos] = True
    neg_mask[pairs.anchor_neg, pairs.neg] = True
    return pos_mask, neg_mask


def masked_logsumexp(x: Tensor, mask: Tensor, add_one: bool = False) -> Tensor:
    """log(sum_{masked} e^x) (log(1 + sum) with add_one) over the last dim; 0 if none masked.

    Masked-out entries take the dtype's smallest finite value (not -inf): gradients stay finite.
    """
    x = x.masked_fill(~mask, torch.finfo(x.dtype).min)
    if add_one:
        x = torch.cat([x, torch.zeros_like(x[..., :1])], dim=-1)
    return torch.logsumexp(x, dim=-1).masked_fill(~mask.any(dim=-1), 0.0)


def as_float(emb: Tensor) -> Tensor:
    """Embeddings in at least float32: exponentials of similarities overflow in half."""
    return emb.to(torch.promote_types(emb.dtype, torch.float32))


def minimal_similarities(d_ap: Tensor, d_an: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Similarities (..., 2) = (s_ap, s_an), s = 1 - d^2 / 2, and the (2,) pos and neg masks."""
    sim = torch.stack([distance_to_cosine(d_ap), distance_to_cosine(d_an)], dim=-1)  # (..., 2)
    pos_mask = torch.tensor([True, False], device=d_ap.device)
    return sim, pos_mask, ~pos_mask


def anchor_output(loss: Tensor, terms: Tensor, pairs: Pairs, dist: Tensor) -> LossOutput:
    """LossOutput of a per-anchor loss; pair distances are read from ``dist`` (detached)."""
    dist = dist.detach()
    d_pos = dist[pairs.anchor_pos, pairs.pos]  # (n_pos,)
    d_neg = dist[pairs.anchor_neg, pairs.neg]  # (n_neg,)
    return LossOutput(loss, terms, pairs, terms > 0, d_pos, d_neg)


def mask_pairs(pos_mask: Tensor, neg_mask: Tensor) -> Pairs:
    """The pairs marked in two (B, B) masks, row-major."""
    return Pairs(*pos_mask.nonzero(as_tuple=True), *neg_mask.nonzero(as_tuple=True))


class LiftedStructureParams(Params):
    """Parameters of the lifted structured loss."""

    neg_margin: float = Field(1.0, gt=0, le=4, description="alpha: margin on negative distances")


def lifted_terms(d_pos: Tensor, lse_i: Tensor, lse_j: Tensor, any_neg: Tensor) -> Tensor:
    """[J_ij]_+^2 / 2 with J_ij = log(e^{lse_i} + e^{lse_j}) + d_ij (Song et al., Eq. 4).

    lse_i = log sum_k e^{alpha - d_ik} over the negatives of i (the dtype's minimum if none);
    where neither end has a negative the log-sum is taken as 0 (as pytorch-metric-learning).
    """
    J = torch.where(any_neg, torch.logaddexp(lse_i, lse_j), 0.0) + d_pos
    return J.relu().square() / 2


@LOSSES.register(
    name="lifted_structure",
    params=LiftedStructureParams,
    paper="Song, Xiang, Jegelka, Savarese. Deep Metric Learning via Lifted Structured Feature "
    "Embedding. CVPR 2016",
    equation=r"J_{ij} = \log\Big(\sum_{(i,k) \in N} e^{\alpha - d_{ik}} + "
    r"\sum_{(j,l) \in N} e^{\alpha - d_{jl}}\Big) + d_{ij},\quad "
    r"L = \frac{1}{2|P|} \sum_{(i,j) \in P} [J_{ij}]_+^2",
    kind="pairs",
)
class LiftedStructureLoss(Loss):
    """Lifted structured loss: each positive pair against a soft-max of all its negatives.

    Song et al. 2016, Eq. (4), on plain Euclidean distances: for a positive pair (i, j),
    J_ij = log(sum_k e^{alpha - d(i,k)} + sum_l e^{alpha - d(j,l)}) + d(i,j), over the
    negatives k of i and l of j, and L = 1 / (2|P|) sum [J_ij]_+^2 over the positive pairs.
    The log-sum-exp is a smooth maximum, so the nearest negative of either end weighs most but
    every negative inside the margin alpha gets a gradient; alpha is an absolute distance.
    Equal to pytorch-metric-learning's ``LiftedStructureLoss(neg_margin=alpha, pos_margin=0)``
    (its ``GeneralizedLiftedStructureLoss`` is the per-anchor variant of Hermans et al. 2017).

    One term per anchor i: sum_j [J_ij]_+^2 / 2 over its positives; the loss is the sum of the
    terms over the number of ordered positive pairs (each unordered pair counts twice, which
    the 1/2 undoes). Without any negative pair the loss is 0.
    """

    def __init__(self, neg_margin: float = 1.0) -> None:
        super().__init__()
        self.neg_margin = neg_margin

    def forward(self, emb: Tensor, labels: Tensor, tuples: Tuples | None = None) -> LossOutput:
        """Loss over the given positive and negative pairs (or all pairs)."""
        dist = pairwise_distances(as_float(emb))  # (B, B)
        pos_mask, neg_mask = pair_masks(labels, tuples)
        low = torch.finfo(dist.dtype).min
        lse = torch.logsumexp((self.neg_margin - dist).masked_fill(~neg_mask, low), dim=1)  # (B,)
        has_neg = neg_mask.any(dim=1)  # (B,)
        any_neg = has_neg[:, None] | has_neg[None, :]  # (B, B)
        pair_loss = lifted_terms(dist, lse[:, None], lse[None, :], any_neg)  # (B, B)
        terms = (pair_loss * pos_mask).sum(dim=1) * neg_mask.any()  # (B,)
        loss = terms.sum() / pos_mask.sum().clamp_min(1)
        return anchor_output(loss, terms, mask_pairs(pos_mask, neg_mask), dist)

    def curve(self, d_ap: Tensor, d_an: Tensor) -> Tensor:
        """[d_ap - d_an + alpha]_+^2 / 2: one negative, next to the anchor only."""
        low = torch.full_like(d_ap, torch.finfo(d_ap.dtype).min)
        return lifted_terms(d_ap, self.neg_margin - d_an, low, torch.ones_like(d_ap, dtype=bool))

    def decision_boundaries(self, num: int = 401) -> tuple[Boundary, ...]:
        """With one negative, J = 0 at d(a,n) = d(a,p) + alpha (Eq. 4)."""
        return (Boundary.shifted("d(a,n) = d(a,p) + alpha", self.neg_margin, num),)


def n_pair_terms(logits: Tensor, target: Tensor) -> Tensor:
    """log(sum_j e^{logit_j}) - logit_target = log(1 + sum_{n} e^{f.f_n - f.f_p})."""
    return torch.logsumexp(logits, dim=-1) - target


@LOSSES.register(
    name="n_pair",
    params=NoParams,
    paper="Sohn. Improved Deep Metric Learning with Multi-class N-pair Loss Objective. "
    "NeurIPS 2016",
    equation=r"L = \log\Big(1 + \sum_{j \neq i} e^{f_i^T f_j^+ - f_i^T f_i^+}\Big)",
    kind="pairs",
)
class NPairLoss(Loss):
    """Multi-class N-pair loss: a softmax that must pick each anchor's positive among N classes.

    Sohn 2016, Eq. (6) (the N-pair-mc form): from N classes take one pair (f_i, f_i^+) each;
    anchor i's negatives are the positives f_j^+ of the other classes, and its term is
    log(1 + sum_{j != i} exp(f_i . f_j^+ - f_i . f_i^+)), a cross-entropy over the N classes.
    It uses raw dot products, as in the paper, so the norm of the embedding acts as an inverse
    temperature; with L2-normalised embeddings it is cosine similarity. The paper's L2 penalty
    on the embeddings is not included.

    As pytorch-metric-learning's ``NPairsLoss``, the pair of each class is the first positive
    pair (in row-major order of the given pairs, or of all pairs) whose anchor has that class;
    negative pairs given by a miner are ignored (the negatives are the other pairs). One term
    per anchor (zero for samples not chosen as anchors); the loss is the mean over the N anchors.
    """

    def forward(self, emb: Tensor, labels: Tensor, tuples: Tuples | None = None) -> LossOutput:
        """Loss over one positive pair per class, taken from the given pairs (or all pairs)."""
        emb = as_float(emb)
        pos_mask, _ = pair_masks(labels, tuples)
        a1, p = pos_mask.nonzero(as_tuple=True)  # (n_pos,) row-major
        classes, cls = torch.unique(labels[a1], return_inverse=True)  # (N,), (n_pos,)
        rank = torch.arange(len(a1), device=emb.device)  # (n_pos,)
        first = torch.full_like(classes, len(a1)).scatter_reduce(0, cls, rank, reduce="amin")
        a, p = a1[first], p[first]  # (N,) the first pair of each class
        sim = emb[a] @ emb[p].T  # (N, N): anchor i against the positive of every class
        anchor_terms = n_pair_terms(sim, sim.diagonal())  # (N,)
        terms = torch.zeros(len(labels), dtype=emb.dtype, device=emb.device)
        terms = terms.index_put((a,), anchor_terms)  # (B,)
        loss = anchor_terms.mean() if len(a) else emb.sum() * 0.0
        i, j = (~torch.eye(len(a), dtype=torch.bool, device=emb.device)).nonzero(as_tuple=True)
        pairs = Pairs(a, p, a[i], p[j])
        return anchor_output(loss, terms, pairs, pairwise_distances(emb.detach()))

    def curve(self, d_ap: Tensor, d_an: Tensor) -> Tensor:
        """Term of an anchor with one other class, on the unit sphere (f.f = 1 - d^2 / 2)."""
        sim, _, _ = minimal_similarities(d_ap, d_an)  # (..., 2)
        return n_pair_terms(sim, sim[..., 0])

    def decision_boundaries(self, num: int = 401) -> tuple[Boundary, ...]:
        """The softmax's tie: the negative as close as the positive, d(a,p) = d(a,n)."""
        return (Boundary.shifted("d(a,p) = d(a,n)", 0.0, num),)


class HistogramParams(Params):
    """Parameters of the histogram loss."""

    num_bins: int = Field(
        100, ge=2, le=1000, description="R - 1: bins of width 2 / (R - 1) on [-1, 1]"
    )


def triangular_weights(s: Tensor, num_bins: int) -> Tensor:
    """Linear histogram votes: (..., n) similarities in [-1, 1] -> (..., n, R) node weights.

    Each value splits one vote between its two nearest of the R = num_bins + 1 nodes
    t_r = -1 + r Delta, Delta = 2 / num_bins, in proportion to closeness: [1 - |s - t_r| / Delta]_+.
    """
    nodes = torch.linspace(-1.0, 1.0, num_bins + 1, dtype=s.dtype, device=s.device)  # (R,)
    return (1.0 - (s.clamp(-1.0, 1.0)[..., None] - nodes).abs() * (num_bins / 2.0)).relu()


def histogram_terms(s_pos: Tensor, s_neg: Tensor, num_bins: int) -> Tensor:
    """Per negative pair: sum_r delta_r(s_neg) Phi_pos[r] (Ustinova & Lempitsky, Eq. 4-5).

    Phi_pos is the cumulative histogram of the positive similarities (..., n_pos), so each term
    is (smoothly) the fraction of positive pairs less similar than that negative pair; their
    mean over the (..., n_neg) negative pairs is the loss.
    """
    h_pos = triangular_weights(s_pos, num_bins).mean(dim=-2)  # (..., R)
    phi_pos = torch.cumsum(h_pos, dim=-1)  # (..., R)
    return (triangular_weights(s_neg, num_bins) * phi_pos[..., None, :]).sum(dim=-1)


@LOSSES.register(
    name="histogram",
    params=HistogramParams,
    paper="Ustinova, Lempitsky. Learning Deep Embeddings with Histogram Loss. NeurIPS 2016",
    equation=r"L = \sum_{r=1}^{R} h^-_r \sum_{q=1}^{r} h^+_q",
    kind="pairs",
)
class HistogramLoss(Loss):
    """Histogram loss: the probability that a random negative pair beats a random positive one.

    Ustinova & Lempitsky 2016, Eq. (2)-(5): the cosine similarities of the positive and of the
    negative pairs are put into linear (triangular) histograms h+ and h- with R nodes on
    [-1, 1], and L = sum_r h-_r Phi+_r with Phi+ the cumulative h+: the overlap of the two
    distributions, with no margin and no parameter but the bin width 2 / (R - 1). It acts on
    whole distributions, so it does not care about individual hard pairs; with few pairs or
    narrow bins it is noisy. Equal to pytorch-metric-learning's ``HistogramLoss(n_bins)``:
    pairs are unordered and count once, and (as there) a pair only counts if its anchor has
    pairs of both kinds.

    One term per sample: half of the contribution of each negative pair goes to each of its
    two ends, so the terms add up to the loss.
    """

    def __init__(self, num_bins: int = 100) -> None:
        super().__init__()
        self.num_bins = num_bins

    def forward(self, emb: Tensor, labels: Tensor, tuples: Tuples | None = None) -> LossOutput:
        """Loss over the given pairs (or all pairs), on cosine similarities."""
        sim = cosine_similarities(as_float(emb))  # (B, B)
        pos_mask, neg_mask = pair_masks(labels, tuples)
        both = (pos_mask.any(dim=1) & neg_mask.any(dim=1))[:, None]  # (B, 1)
        pos_mask = torch.triu((pos_mask & both) | (pos_mask & both).T, diagonal=1)  # unordered
        neg_mask = torch.triu((neg_mask & both) | (neg_mask & both).T, diagonal=1)
        pairs = mask_pairs(pos_mask, neg_mask)
        terms = torch.zeros(len(labels), dtype=sim.dtype, device=sim.device)  # (B,)
        loss = sim.sum() * 0.0
        if len(pairs.pos) and len(pairs.neg):
            neg_terms = histogram_terms(sim[pos_mask], sim[neg_mask], self.num_bins)  # (n_neg,)
            loss = neg_terms.mean()
            share = neg_terms / (2 * len(neg_terms))
            terms = terms.index_add(0, pairs.anchor_neg, share).index_add(0, pairs.neg, share)
        return anchor_output(loss, terms, pairs, cosine_to_distance(sim))

    def curve(self, d_ap: Tensor, d_an: Tensor) -> Tensor:
        """Loss with one positive and one negative pair, on the unit sphere."""
        s_ap, s_an = distance_to_cosine(d_ap), distance_to_cosine(d_an)
        return histogram_terms(s_ap[..., None], s_an[..., None], self.num_bins)[..., 0]

    def decision_boundaries(self, num: int = 401) -> tuple[Boundary, ...]:
        """Where the negative pair starts to beat the positive one: d(a,p) = d(a,n)."""
        return (Boundary.shifted("d(a,p) = d(a,n)", 0.0, num),)


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
