"""Online miners: choose which pairs or triplets of a batch the loss sees.

A miner is called as ``miner(emb, labels) -> Pairs | Triplets`` under ``torch.no_grad`` and
works on a (B, B) matrix (distances, or cosine similarities for multi-similarity), with no
Python loop over anchors. Miners that sample own a seeded ``torch.Generator`` per device, so a
run is reproducible.

References:
    Schroff et al. FaceNet. CVPR 2015. Hermans et al. In Defense of the Triplet Loss. 2017.
    Wu et al. Sampling Matters in Deep Embedding Learning. ICCV 2017.
    Wang et al. Multi-Similarity Loss with General Pair Weighting. CVPR 2019.
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple

import torch
from pydantic import Field
from torch import Tensor

from dml_core.geometry import (
    cosine_similarities,
    l2_normalize,
    log_distance_density,
    pairwise_distances,
)
from dml_core.registry import MINERS, NoParams, Params
from dml_core.tuples import Pairs, Triplets, Tuples, all_pairs, all_triplets, label_masks


class Miner:
    """Base of miners: computes distances without gradient and hands them to ``select``.

    ``enumerates_triplets`` declares a miner whose ``select`` materialises every valid triplet
    of the batch, B (K - 1) (B - K) ~ B^3 / P of them: its memory is budgeted before a run
    starts (``config.check_budget``).
    """

    tuple_type: ClassVar[type] = Triplets
    enumerates_triplets: ClassVar[bool] = False

    def matrix(self, emb: Tensor) -> Tensor:
        """The (B, B) matrix the miner reads: Euclidean distances unless overridden."""
        return pairwise_distances(emb)

    def select(self, dist: Tensor, labels: Tensor) -> Tuples:
        """Pick tuples given the (B, B) matrix from ``matrix`` and the (B,) labels."""
        raise NotImplementedError

    @torch.no_grad()
    def __call__(self, emb: Tensor, labels: Tensor) -> Tuples:
        """Mine the batch ``emb`` (B, D) with labels (B,)."""
        return self.select(self.matrix(emb.detach().float()), labels)


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


class MinerMarginParams(Params):
    """Parameters of margin-based triplet miners."""

    margin: float = Field(
        0.2, gt=0, le=2, description="alpha: the triplet margin the negatives are compared with"
    )


class SortedNegatives(NamedTuple):
    """Each anchor's negatives sorted by distance: the index behind the band miners.

    Attributes:
        pos_mask: (B, B) positive pairs (same label, a != p).
        dist: (B, B) the distances the bands are measured on.
        sorted_dist: (B, B) row a holds d(a, n) over a's negatives ascending, then +inf.
        order: (B, B) row a holds the batch index of each entry of ``sorted_dist[a]``.
    """

    pos_mask: Tensor
    dist: Tensor
    sorted_dist: Tensor
    order: Tensor

    @classmethod
    def build(cls, dist: Tensor, labels: Tensor) -> SortedNegatives:
        """Sort every row's negatives (O(B^2 log B)); ``dist`` is (B, B), labels (B,)."""
        pos_mask, neg_mask = label_masks(labels)
        sorted_dist, order = dist.masked_fill(~neg_mask, torch.inf).sort(dim=1)  # (B, B)
        return cls(pos_mask, dist, sorted_dist.contiguous(), order)

    def count_below(self, bound: Tensor, inclusive: bool) -> Tensor:
        """How many negatives n of anchor a have d(a,n) < bound[a, p], as (B, B) int64.

        With ``inclusive``, d(a,n) <= bound[a, p]. Exactly the elementwise comparison, ties
        and all.
        """
        return torch.searchsorted(self.sorted_dist, bound.contiguous(), right=inclusive)

    def band(self, lo: Tensor, hi: Tensor) -> Triplets:
        """Triplets (a, p, n) whose negative's rank among a's sorted negatives is in [lo, hi).

        lo and hi are (B, B); only positive pairs (a, p) count. O(B^2 + output) work.
        """
        count = (hi - lo).clamp_min(0) * self.pos_mask  # (B, B)
        a, p = count.nonzero(as_tuple=True)  # (m,) pairs with at least one negative
        c = count[a, p]  # (m,)
        total = int(c.sum()) if len(c) else 0
        pair = torch.repeat_interleave(torch.arange(len(a), device=a.device), c, output_size=total)
        first = torch.cumsum(c, 0) - c  # (m,) position of each pair's first triplet
        rank = lo[a, p][pair] + torch.arange(total, device=a.device) - first[pair]  # (T,)
        return Triplets(a[pair], p[pair], self.order[a[pair], rank])


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

    enumerates_triplets: ClassVar[bool] = True

    def select(self, dist: Tensor, labels: Tensor) -> Triplets:
        """Triplets with d(a,n) <= d(a,p), read off each anchor's sorted negatives."""
        neg = SortedNegatives.build(dist, labels)
        return neg.band(torch.zeros_like(neg.order), neg.count_below(dist, inclusive=True))


@MINERS.register(
    name="semi_hard",
    params=MinerMarginParams,
    paper="Schroff et al., FaceNet, CVPR 2015, Eq. (4)",
    equation=r"d(a,p) < d(a,n) < d(a,p) + \alpha",
    kind="triplets",
)
class SemiHardMiner(Miner):
    """Semi-hard negatives: farther than the positive, but still inside the margin.

    FaceNet, Sec. 3.2, Eq. (4): d(a,p) < d(a,n) < d(a,p) + alpha. They still have a positive
    hinge loss but are never closer than the positive, which keeps training stable.
    """

    enumerates_triplets: ClassVar[bool] = True

    def __init__(self, margin: float = 0.2) -> None:
        self.margin = margin

    def select(self, dist: Tensor, labels: Tensor) -> Triplets:
        """Triplets with d(a,p) < d(a,n) < d(a,p) + margin.

        With each anchor's negatives sorted by distance, the semi-hard negatives of a pair
        (a, p) are one contiguous run, found by binary search: no tensor over all
        B (K - 1) (B - K) triplets is built, only the triplets kept (order: by anchor, positive,
        then distance to the negative).
        """
        neg = SortedNegatives.build(dist, labels)
        lo = neg.count_below(dist, inclusive=True)  # negatives with d(a,n) <= d(a,p)
        hi = neg.count_below(dist + self.margin, inclusive=False)  # d(a,n) < d(a,p) + margin
        return neg.band(lo, hi)


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


class DeviceGenerators:
    """One ``torch.Generator`` per device, each seeded with ``seed`` when first used."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._by_device: dict[torch.device, torch.Generator] = {}

    def __call__(self, device: torch.device) -> torch.Generator:
        """The generator for ``device`` (created and seeded on first use)."""
        if device not in self._by_device:
            self._by_device[device] = torch.Generator(device).manual_seed(self.seed)
        return self._by_device[device]


class RandomParams(Params):
    """Parameters of the random miner."""

    fraction: float = Field(
        0.1, gt=0, le=1, description="share of all valid triplets kept, drawn uniformly"
    )
    seed: int = Field(0, ge=0, le=2**31 - 1, description="seed of the miner's own generator")


@MINERS.register(
    name="random",
    params=RandomParams,
    paper="(baseline: a uniformly random subset of the valid triplets)",
    equation=r"S \subseteq \mathcal{T} \text{ uniformly at random}, "
    r"\ |S| = \mathrm{round}(f\, |\mathcal{T}|)",
    kind="triplets",
)
class RandomMiner(Miner):
    """Random triplets: a uniform subset of all valid triplets, blind to distances.

    The baseline every miner should beat: it keeps round(f T) of the T valid triplets of the
    batch (at least one when there is any), each subset equally likely, so the loss sees the
    same mix of easy, semi-hard and hard triplets as the batch holds. With f = 1 it is no
    mining at all. Draws come from the miner's own generator seeded with ``seed``.
    """

    enumerates_triplets: ClassVar[bool] = True

    def __init__(self, fraction: float = 0.1, seed: int = 0) -> None:
        self.fraction = fraction
        self.generators = DeviceGenerators(seed)

    def select(self, dist: Tensor, labels: Tensor) -> Triplets:
        """round(fraction * T) triplets drawn without replacement, in their original order."""
        triplets = all_triplets(labels)
        total = len(triplets.anchor)
        count = min(total, max(1, round(self.fraction * total))) if total else 0
        generator = self.generators(labels.device)
        order = torch.randperm(total, generator=generator, device=labels.device)  # (T,)
        return Triplets(*(t[order[:count].sort().values] for t in triplets))


class DistanceWeightedParams(Params):
    """Parameters of distance-weighted sampling."""

    cutoff: float = Field(
        0.5,
        ge=0,
        lt=2,
        description="closer negatives are weighted as if at this distance (caps their weight)",
    )
    nonzero_loss_cutoff: float = Field(
        1.4,
        gt=0,
        le=2,
        description="negatives at or beyond this distance are never drawn (no loss left there)",
    )
    seed: int = Field(0, ge=0, le=2**31 - 1, description="seed of the miner's own generator")


@MINERS.register(
    name="distance_weighted",
    params=DistanceWeightedParams,
    paper="Wu, Manmatha, Smola, Kraehenbuehl. Sampling Matters in Deep Embedding Learning. "
    "ICCV 2017, Sec. 4",
    equation=r"\Pr(n \mid a) \propto \min\left(\lambda, q(d_{an})^{-1}\right)",
    kind="triplets",
)
class DistanceWeightedMiner(Miner):
    r"""Distance-weighted sampling: negatives drawn with probability inverse to their density.

    Wu et al. 2017, Sec. 4: on the unit sphere S^{D-1} random pairs crowd near distance
    sqrt(2) with density q(d) \propto d^{D-2} (1 - d^2/4)^{(D-3)/2} (Eq. 3), so uniform sampling
    mostly yields uninformative negatives. For each anchor-positive pair one negative is drawn
    with probability \propto 1 / q(max(d, cutoff)): spread evenly over distances instead of
    bunched at sqrt(2). ``cutoff`` bounds the weight of very close (noisy, high-variance)
    negatives; negatives at or beyond ``nonzero_loss_cutoff`` get weight 0, since a margin loss
    would give them no gradient. An anchor with no negative inside the cutoff draws uniformly
    from all its negatives. Embeddings are L2-normalised inside the miner (as
    pytorch-metric-learning's distance does), because q(d) describes the unit sphere only;
    the loss still sees the embeddings as given.
    """

    enumerates_triplets: ClassVar[bool] = True

    def __init__(
        self, cutoff: float = 0.5, nonzero_loss_cutoff: float = 1.4, seed: int = 0
    ) -> None:
        self.cutoff, self.nonzero_loss_cutoff = cutoff, nonzero_loss_cutoff
        self.generators = DeviceGenerators(seed)

    @torch.no_grad()
    def __call__(self, emb: Tensor, labels: Tensor) -> Triplets:
        """Mine the batch ``emb`` (B, D), normalised onto the unit sphere, with labels (B,)."""
        emb = l2_normalize(emb.detach().float())  # (B, D)
        return self.sample(pairwise_distances(emb), labels, dim=emb.shape[1])

    def log_weights(self, dist: Tensor, labels: Tensor, dim: int) -> Tensor:
        """Unnormalised log-probability of drawing n for anchor a, shape (B, B); -inf: never.

        Args:
            dist: distances between unit vectors, shape (B, B).
            labels: shape (B,).
            dim: D, the embedding dimension (the sphere is S^{D-1}).
        """
        _, neg_mask = label_masks(labels)
        clipped = dist.clamp_min(self.cutoff)  # (B, B)
        log_w = -log_distance_density(clipped, dim)  # (B, B) log 1/q(d)
        eligible = neg_mask & (clipped < self.nonzero_loss_cutoff) & log_w.isfinite()
        log_w = log_w.masked_fill(~eligible, -torch.inf)
        uniform = torch.zeros_like(log_w).masked_fill(~neg_mask, -torch.inf)  # (B, B)
        return torch.where(eligible.any(dim=1, keepdim=True), log_w, uniform)

    def sample(self, dist: Tensor, labels: Tensor, dim: int) -> Triplets:
        """One negative per anchor-positive pair, drawn from ``log_weights``."""
        pos_mask, neg_mask = label_masks(labels)
        pos_mask &= neg_mask.any(dim=1, keepdim=True)  # anchors that have a negative
        anchor, pos = pos_mask.nonzero(as_tuple=True)  # (n_pos,)
        if len(anchor) == 0:
            return Triplets(anchor, pos, pos)
        probs = torch.softmax(self.log_weights(dist, labels, dim)[anchor], dim=1)  # (n_pos, B)
        neg = torch.multinomial(probs, 1, generator=self.generators(dist.device))  # (n_pos, 1)
        return Triplets(anchor, pos, neg.squeeze(1))


class MultiSimilarityMinerParams(Params):
    """Parameters of the multi-similarity miner."""

    epsilon: float = Field(
        0.1,
        ge=0,
        le=1,
        description="epsilon: how far past the hardest pair of the other kind a pair may be",
    )


@MINERS.register(
    name="multi_similarity",
    params=MultiSimilarityMinerParams,
    paper="Wang, Han, Huang, Dong, Scott. Multi-Similarity Loss with General Pair Weighting "
    "for Deep Metric Learning. CVPR 2019, Eq. (4)-(5)",
    equation=r"S_{an} > \min_{p} S_{ap} - \epsilon, \quad S_{ap} < \max_{n} S_{an} + \epsilon",
    kind="pairs",
)
class MultiSimilarityMiner(Miner):
    r"""Multi-similarity pair mining: pairs that are informative relative to the other kind.

    Wang et al. 2019, Sec. 4.1, Eq. (4)-(5), on cosine similarity S: a negative pair is kept
    when S_an > min_p S_ap - epsilon (it is more similar than the anchor's least similar
    positive, up to epsilon), a positive pair when S_ap < max_n S_an + epsilon. A larger
    epsilon keeps more pairs; epsilon = 0 keeps only pairs that break the ordering. An anchor
    with no positive keeps no negative, and one with no negative keeps no positive.
    """

    tuple_type = Pairs

    def __init__(self, epsilon: float = 0.1) -> None:
        self.epsilon = epsilon

    def matrix(self, emb: Tensor) -> Tensor:
        """Cosine similarities, shape (B, B)."""
        return cosine_similarities(emb)

    def select(self, dist: Tensor, labels: Tensor) -> Pairs:
        """Pairs kept by Eq. (4)-(5); ``dist`` holds cosine similarities here."""
        sim = dist
        pos_mask, neg_mask = label_masks(labels)
        min_pos = sim.masked_fill(~pos_mask, torch.inf).amin(dim=1, keepdim=True)  # (B, 1)
        max_neg = sim.masked_fill(~neg_mask, -torch.inf).amax(dim=1, keepdim=True)  # (B, 1)
        a1, p = (pos_mask & (sim - self.epsilon < max_neg)).nonzero(as_tuple=True)
        a2, n = (neg_mask & (sim + self.epsilon > min_pos)).nonzero(as_tuple=True)
        return Pairs(a1, p, a2, n)
