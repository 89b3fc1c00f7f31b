"""The loss interface (an abstract ``nn.Module``) and the pair and triplet families.

Every loss is a :class:`Loss`: called as ``loss(emb, labels, tuples=None) -> LossOutput``, with
``tuples`` from a miner (see ``tuples.py``; ``None`` means every valid tuple). Besides
``forward`` it declares what the app reads from it, so nothing outside probes a loss:

- ``curve(d_ap, d_an)``: the loss of one anchor with a positive at d(a,p) and a negative at
  d(a,n), through the same code as training (the Loss explorer plots it);
- ``distance_lines()``: absolute distances worth marking (margins, thresholds);
- ``histogram_lines(pos_dist)``: the lines of the live distance histograms, which may depend on
  the current positive distances (a triplet margin is relative to d(a,p));
- ``extras()``: learnable scalars worth plotting (the margin loss's beta);
- ``class_weights()``: the (C, D) per-class weights of class-level losses (proxies);
- ``decision_boundaries()``: where the loss separates satisfied from violated in the
  (d(a,p), d(a,n)) plane, as :class:`Boundary` polylines (the explorer draws them);
- ``angular_boundaries()``: for class-level losses on angles (ArcFace, CosFace, normalised
  softmax), the boundary in the (theta_own, theta_other) plane, as :class:`AngularBoundary`;
- ``hardness_parameter``: the parameter (a temperature) that sets how sharply the loss weighs
  its hardest negatives; the explorer sweeps it (Wang & Liu, CVPR 2021).

The pair family (:class:`PairLoss`) writes one function, ``pair_terms(d, positive)``, and the
triplet family (:class:`TripletLossBase`) one, ``triplet_terms(d_ap, d_an)``: each family's
``forward`` and ``curve`` are both built from it, once.

Reduction follows pytorch-metric-learning's default (``AvgNonZeroReducer``): the mean over the
terms that are non-zero, so easy tuples do not dilute the gradient as training progresses.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from dml_core.geometry import pairwise_distances
from dml_core.registry import Params
from dml_core.tuples import Pairs, Triplets, Tuples, all_pairs, to_pairs, to_triplets, triplet_kinds

__all__ = [
    "AngularBoundary",
    "Boundary",
    "CurveUnavailableError",
    "Loss",
    "LossOutput",
    "PairLoss",
    "Params",
    "TripletLossBase",
    "mean_active",
]


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


class CurveUnavailableError(ValueError):
    """The loss defines no curve of (d(a,p), d(a,n)); the message says which loss."""

    def __init__(self, loss_name: str) -> None:
        super().__init__(
            f"The {loss_name} loss defines no curve of (d(a,p), d(a,n)), so the explorer "
            "cannot plot it."
        )


@dataclass(frozen=True)
class Boundary:
    """A decision boundary as a polyline in the (d(a,p), d(a,n)) plane (NaN breaks the line).

    Distances are between unit vectors, so the plane is [0, 2]^2; the constructors keep only
    the part inside it. ``coordinates("similarity")`` gives the same line in cosines
    s = 1 - d^2 / 2 (Sun et al. 2020, Fig. 1 draws boundaries in the (s_n, s_p) plane).
    """

    label: str
    d_ap: np.ndarray  # (k,)
    d_an: np.ndarray  # (k,)

    @classmethod
    def clipped(cls, label: str, d_ap: np.ndarray, d_an: np.ndarray) -> Boundary:
        """The polyline (d_ap, d_an) with its points outside [0, 2]^2 turned into NaN."""
        inside = (d_ap >= 0) & (d_ap <= 2) & (d_an >= 0) & (d_an <= 2)
        return cls(label, np.where(inside, d_ap, np.nan), np.where(inside, d_an, np.nan))

    @classmethod
    def vertical(cls, label: str, d: float, num: int = 401) -> Boundary:
        """The line d(a,p) = d, ``num`` points."""
        t = np.linspace(0.0, 2.0, num)  # (num,)
        return cls.clipped(label, np.full_like(t, d), t)

    @classmethod
    def horizontal(cls, label: str, d: float, num: int = 401) -> Boundary:
        """The line d(a,n) = d, ``num`` points."""
        t = np.linspace(0.0, 2.0, num)  # (num,)
        return cls.clipped(label, t, np.full_like(t, d))

    @classmethod
    def shifted(cls, label: str, margin: float, num: int = 401) -> Boundary:
        """The line d(a,n) = d(a,p) + margin; with margin 0, the diagonal d(a,p) = d(a,n)."""
        t = np.linspace(0.0, 2.0, num)  # (num,)
        return cls.clipped(label, t, t + margin)

    @classmethod
    def thresholds(cls, symbol: str, s: float, num: int = 401) -> tuple[Boundary, Boundary]:
        """s_p = s and s_n = s: a similarity threshold for both pairs, as distances."""
        d = math.sqrt(max(2.0 - 2.0 * s, 0.0))
        return cls.vertical(f"s_p = {symbol}", d, num), cls.horizontal(f"s_n = {symbol}", d, num)

    @classmethod
    def from_similarity(cls, label: str, s_p: np.ndarray, s_n: np.ndarray) -> Boundary:
        """A polyline given in cosines (s_p, s_n), as distances (points outside [-1, 1] dropped)."""
        inside = (np.abs(s_p) <= 1) & (np.abs(s_n) <= 1)
        s_p, s_n = np.where(inside, s_p, np.nan), np.where(inside, s_n, np.nan)
        return cls(label, np.sqrt(2.0 - 2.0 * s_p), np.sqrt(2.0 - 2.0 * s_n))

    def coordinates(self, scale: str) -> tuple[np.ndarray, np.ndarray]:
        """(positive, negative) coordinate in ``scale``: ``"distance"`` or ``"similarity"``."""
        if scale == "distance":
            return self.d_ap, self.d_an
        return 1.0 - self.d_ap**2 / 2.0, 1.0 - self.d_an**2 / 2.0


@dataclass(frozen=True)
class AngularBoundary:
    """A decision boundary in the plane of the angles to two class weights, in radians.

    theta_own is the angle between an embedding and its own class's weight, theta_other the
    angle to another class's weight; the boundary is where the own class's logit (with the
    margin) ties with the other's, the line of Deng et al. 2019 (ArcFace), Fig. 5 and Wang et
    al. 2018 (CosFace), Fig. 2. ``theta_other`` is NaN where no angle ties (the own class
    cannot win there).
    """

    label: str
    theta_own: np.ndarray  # (k,) in [0, pi]
    theta_other: np.ndarray  # (k,) in [0, pi], NaN where there is no tie

    @classmethod
    def from_own_logit(
        cls, label: str, own_logit: Callable[[Tensor], Tensor], num: int = 361
    ) -> AngularBoundary:
        """cos(theta_other) = own_logit(cos(theta_own)) over theta_own in [0, pi], ``num`` points.

        ``own_logit`` is the loss's own handicap of the own class's cosine (the function
        training uses), so the boundary is the loss's, not a copy of its formula.
        """
        theta = torch.linspace(0.0, math.pi, num, dtype=torch.float64)  # (num,)
        cos_other = own_logit(torch.cos(theta))  # (num,)
        tie = cos_other.abs() <= 1.0 + 1e-12
        other = torch.where(tie, torch.arccos(cos_other.clamp(-1.0, 1.0)), torch.nan)
        return cls(label, theta.numpy(), other.numpy())


def mean_active(terms: Tensor) -> Tensor:
    """Mean of the non-zero terms (0 with a gradient path when there are none)."""
    return terms.sum() / (terms > 0).sum().clamp_min(1)


class Loss(nn.Module, abc.ABC):
    """The interface of every registered loss: forward, curve, lines, extras, class weights.

    Subclasses must write ``forward``; the other methods have defaults that mean "nothing to
    show": no lines, no extras, no class weights, and no curve (a clear error).
    """

    # The parameter (a temperature) that sets how sharply the loss weighs its hardest
    # negatives: the explorer sweeps it (Wang & Liu 2021). None: nothing to sweep.
    hardness_parameter: ClassVar[str | None] = None

    @abc.abstractmethod
    def forward(self, emb: Tensor, labels: Tensor, tuples: Tuples | None = None) -> LossOutput:
        """The loss of a batch.

        Args:
            emb: (B, D) embeddings.
            labels: (B,) class labels.
            tuples: the pairs or triplets to use (from a miner); None means all valid ones.
        """

    def curve(self, d_ap: Tensor, d_an: Tensor) -> Tensor:
        """Loss of one anchor with a positive at d_ap and a negative at d_an (elementwise).

        The same function training uses, on broadcastable tensors of distances (distances
        between unit vectors for losses on cosine similarity); the Loss explorer plots it.

        Raises:
            CurveUnavailableError: this loss has no such two-distance profile.
        """
        raise CurveUnavailableError(type(self).__name__)

    def distance_lines(self) -> dict[str, float]:
        """Absolute distances worth marking on distance plots (margins); none by default."""
        return {}

    def histogram_lines(self, pos_dist: Tensor | np.ndarray) -> dict[str, float]:
        """Lines for the live distance histograms, given sampled positive distances (n,).

        By default the absolute ``distance_lines``; a loss with a relative margin adds where a
        negative must lie for the typical (median) positive pair.
        """
        return self.distance_lines()

    def extras(self) -> dict[str, float]:
        """Learnable scalars worth plotting during training (e.g. beta); none by default."""
        return {}

    def class_weights(self) -> Tensor | None:
        """The class weights of a class-level loss (detached); None for others.

        (C, D) with one vector per class, or (C K, D) class by class for losses with K centres
        per class: row r belongs to class r // K.
        """
        return None

    def decision_boundaries(self, num: int = 401) -> tuple[Boundary, ...]:
        """Where the loss separates satisfied from violated pairs, ``num`` points per line.

        Each loss declares its own, in the notation of its paper (the Loss explorer draws them
        on its heat maps and marks where a profile crosses them); none by default.
        """
        return ()

    def triplet_boundary(self) -> Callable[[Tensor], Tensor] | None:
        """B with a triplet (a, p, n) violated when d(a,n) < b(d(a,p)); None without a margin.

        Triplet losses with a margin return their ``negative_boundary`` (e.g. d + alpha); the
        hardest-triplets view ranks violations by it. None by default.
        """
        return None

    def angular_boundaries(self, num: int = 361) -> tuple[AngularBoundary, ...]:
        """The decision boundary in the (theta_own, theta_other) plane, ``num`` points per line.

        Declared by class-level losses on angles (ArcFace, CosFace, normalised softmax); the
        Loss explorer draws it as in the papers' figures. None by default.
        """
        return ()


class PairLoss(Loss):
    """Base of losses made of independent terms on positive and negative pair distances.

    Subclasses write ``pair_terms(d, positive)``; ``forward`` applies it to the pairs of the
    batch and ``curve`` to one positive pair at d(a,p) plus one negative pair at d(a,n).
    """

    tuple_type: ClassVar[type] = Pairs

    @abc.abstractmethod
    def pair_terms(self, d: Tensor, positive: bool) -> Tensor:
        """The loss of each pair at distance d; ``positive`` says whether the pair matches."""

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

    def curve(self, d_ap: Tensor, d_an: Tensor) -> Tensor:
        """Loss of one positive pair at d_ap plus one negative pair at d_an (elementwise)."""
        return self.pair_terms(d_ap, positive=True) + self.pair_terms(d_an, positive=False)


class TripletLossBase(Loss):
    """Base of losses with one term per triplet, a function of d(a,p) and d(a,n).

    Subclasses write ``triplet_terms(d_ap, d_an)``; ``forward`` applies it to the triplets of
    the batch and ``curve`` to one triplet. ``margin`` (0: none) is the margin between d(a,p)
    and d(a,n) that labels triplets easy / semi-hard / hard and places the relative line.
    """

    tuple_type: ClassVar[type] = Triplets
    margin: float = 0.0

    @abc.abstractmethod
    def triplet_terms(self, d_ap: Tensor, d_an: Tensor) -> Tensor:
        """The loss of each triplet given its anchor-positive and anchor-negative distances."""

    def forward(self, emb: Tensor, labels: Tensor, tuples: Tuples | None = None) -> LossOutput:
        """Loss over the given triplets (pairs are joined per anchor), or all triplets."""
        triplets = to_triplets(all_pairs(labels) if tuples is None else tuples)
        dist = pairwise_distances(emb)  # (B, B)
        d_ap = dist[triplets.anchor, triplets.pos]  # (T,)
        d_an = dist[triplets.anchor, triplets.neg]  # (T,)
        terms = self.triplet_terms(d_ap, d_an)
        kinds = triplet_kinds(d_ap.detach(), d_an.detach(), self.margin)
        return LossOutput(mean_active(terms), terms, triplets, terms > 0, d_ap, d_an, kinds)

    def curve(self, d_ap: Tensor, d_an: Tensor) -> Tensor:
        """Loss of one triplet with d(a,p) = d_ap and d(a,n) = d_an (elementwise)."""
        return self.triplet_terms(d_ap, d_an)

    def negative_boundary(self, d_ap: Tensor) -> Tensor:
        """Distance d(a,n) beyond which a negative satisfies the margin: d(a,p) + margin."""
        return d_ap + self.margin

    def triplet_boundary(self) -> Callable[[Tensor], Tensor] | None:
        """``negative_boundary`` when the loss has a margin (> 0), else None."""
        return self.negative_boundary if self.margin > 0 else None

    def decision_boundaries(self, num: int = 401) -> tuple[Boundary, ...]:
        """d(a,n) = ``negative_boundary(d(a,p))`` (Schroff et al. 2015, Eq. 1: d(a,p) + alpha).

        Without a margin, where the negative is as close as the positive: d(a,p) = d(a,n).
        """
        if self.margin <= 0:
            return (Boundary.shifted("d(a,p) = d(a,n)", 0.0, num),)
        d_ap = np.linspace(0.0, 2.0, num)  # (num,)
        d_an = self.negative_boundary(torch.from_numpy(d_ap)).numpy()  # (num,)
        return (Boundary.clipped("d(a,n) = d(a,p) + alpha", d_ap, d_an),)

    def histogram_lines(self, pos_dist: Tensor | np.ndarray) -> dict[str, float]:
        """The absolute lines, plus ``negative_boundary`` of the median positive distance.

        Only with a margin (> 0) and at least one positive distance; the median interpolates
        between the two middle values, as ``numpy.median``.
        """
        lines = self.distance_lines()
        pos = torch.as_tensor(pos_dist, dtype=torch.float64).flatten()  # (n,)
        if self.margin <= 0 or pos.numel() == 0:
            return lines
        return lines | {"median d+ + margin": float(self.negative_boundary(pos.quantile(0.5)))}
