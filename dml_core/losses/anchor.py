"""Losses whose term is per anchor, pooling over its positives and negatives.

Lifted structure, N-pair and histogram losses (and, in ``similarity.py``, multi-similarity and
circle) read the whole (B, B) distance or similarity matrix through boolean masks of the
positive and negative pairs;
a miner's pairs (or triplets, split into pairs) restrict the masks. Each formula is a plain
function of the matrix and the masks, so ``curve`` (the Loss explorer) and ``forward``
(training) run the same code.

References:
    Song, Xiang, Jegelka, Savarese. Deep Metric Learning via Lifted Structured Feature
    Embedding. CVPR 2016.
    Sohn. Improved Deep Metric Learning with Multi-class N-pair Loss Objective. NeurIPS 2016.
    Ustinova, Lempitsky. Learning Deep Embeddings with Histogram Loss. NeurIPS 2016.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from dml_core.geometry import (
    cosine_similarities,
    cosine_to_distance,
    distance_to_cosine,
    pairwise_distances,
)
from dml_core.losses.base import Boundary, Loss, LossOutput
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
