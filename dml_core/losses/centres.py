r"""Class-level losses with K learnable centres per class (ArcFace, CosFace, SubCenter, SoftTriple).

Like the proxy losses (``proxy.py``), these compare each sample with learnable class weights
instead of with other samples, so a miner's tuples are ignored. Here a class may own K > 1
centres: sub-center ArcFace (Deng et al. 2020) keeps the nearest one, SoftTriple (Qian et al.
2019) a soft-max weighted mean. ArcFace and CosFace are the case K = 1.

Layout: all centres are one (C K, D) parameter ``proxies``, class-major, so row c K + k is
centre k of class c. This is the column order of pytorch-metric-learning's (D, C K) weights
``W`` (ArcFace, CosFace, SubCenterArcFace) and ``fc`` (SoftTriple), whose transposes they are.
K is read from the parameter's shape, rows / C.

What ``LossOutput`` holds here, as for the proxy losses:

- ``terms``: one cross-entropy per sample (a weight regulariser, if any, is only in ``loss``).
- ``tuples``: ``all_pairs(labels)``, the batch pairs the views draw; the loss does not use them.
- ``pos_dist``: (B,) distance from each sample to its own class, ``neg_dist``: (B (C - 1),) to
  every other class; the distance of a class is sqrt(2 - 2 S) for the class similarity S
  (nearest centre, or SoftTriple's weighted mean). Both detached.
"""

from __future__ import annotations

import abc
from typing import ClassVar

import torch
from torch import Tensor, nn

from dml_core.geometry import cosine_similarities, cosine_to_distance, distance_to_cosine
from dml_core.losses.base import Boundary, Loss, LossOutput
from dml_core.losses.proxy import cross_entropy_terms, own_class_mask
from dml_core.tuples import Tuples, all_pairs


def margin_softmax(sim: Tensor, own: Tensor, target: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """Cross-entropy of scale * logits, the own class's similarity replaced by ``target``; mean.

    Args:
        sim: (..., N, C) similarities between samples and classes.
        own: (..., N, C) own-class mask.
        target: (..., N, C) the own class's handicapped similarity (read only where ``own``).
        scale: the factor on every logit (s of ArcFace and CosFace, lambda of SoftTriple).
    """
    terms = cross_entropy_terms(scale * torch.where(own, target, sim), own)  # (..., N)
    return terms.mean(dim=-1), terms


class CentreLoss(Loss):
    """Base of class-level losses with K centres per class; subclasses write the maths.

    ``class_similarities`` turns the (..., N, C, K) cosines between samples and centres into one
    similarity per class, (..., N, C); ``own_logit`` handicaps the own class's similarity by
    the margin; ``loss_and_terms`` turns both into the loss. Training (``forward``), the Loss
    explorer (``curve``) and the decision boundary (where ``own_logit`` of the own class ties
    with the other class's similarity) all call them.
    """

    boundary_label: ClassVar[str] = "margin(S_own) = S_other"

    def __init__(self, num_classes: int, embedding_dim: int, centres_per_class: int = 1) -> None:
        super().__init__()
        self.num_classes = num_classes
        rows = num_classes * centres_per_class
        self.proxies = nn.Parameter(torch.empty(rows, embedding_dim))  # (C K, D)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw the centres from N(0, 1), as pytorch-metric-learning does for ``W``."""
        nn.init.normal_(self.proxies)

    def class_similarities(self, sim: Tensor) -> Tensor:
        """One similarity per class from the cosines to its centres: (..., N, C, K) -> (..., N, C).

        By default the nearest centre (for K = 1, the cosine itself).
        """
        return sim.max(dim=-1).values

    @abc.abstractmethod
    def own_logit(self, sim: Tensor) -> Tensor:
        """The own class's similarity with the margin applied (elementwise, before scaling)."""

    @abc.abstractmethod
    def loss_and_terms(self, sim: Tensor, own: Tensor) -> tuple[Tensor, Tensor]:
        """Loss and per-sample terms from class similarities and own-class mask, (..., N, C)."""

    def forward(self, emb: Tensor, labels: Tensor, tuples: Tuples | None = None) -> LossOutput:
        """Loss of the batch against all centres; ``tuples`` from a miner are ignored."""
        own = own_class_mask(labels, self.num_classes)  # (B, C)
        sim = cosine_similarities(emb, self.proxies.to(emb.dtype))  # (B, C K)
        sim = sim.unflatten(-1, (self.num_classes, -1))  # (B, C, K), class-major rows
        class_sim = self.class_similarities(sim)  # (B, C)
        loss, terms = self.loss_and_terms(class_sim, own)
        dist = cosine_to_distance(class_sim.detach())  # (B, C)
        return LossOutput(loss, terms, all_pairs(labels), terms > 0, dist[own], dist[~own])

    def curve(self, d_ap: Tensor, d_an: Tensor) -> Tensor:
        """Loss of one sample at distance d_ap from its own class and d_an from one other class.

        Every centre of a class sits at that class's distance (so the profile is the same for
        any K, and for sub-centres d is the distance to the nearest one); any centre regulariser
        is left out, since it does not depend on the sample.
        """
        d = torch.stack(torch.broadcast_tensors(d_ap, d_an), dim=-1)  # (..., 2)
        sim = distance_to_cosine(d)[..., None, :, None]  # (..., 1, 2, 1): 1 sample, 2 classes
        own = torch.tensor([[True, False]], device=sim.device).expand(sim.shape[:-1])
        return self.loss_and_terms(self.class_similarities(sim), own)[1].sum(dim=-1)

    def class_weights(self) -> Tensor:
        """The centres, (C K, D) class-major (row c K + k: centre k of class c), detached.

        As stored: the loss compares them normalised. For K = 1 these are the (C, D) class
        weights.
        """
        return self.proxies.detach()

    def decision_boundaries(self, num: int = 401) -> tuple[Boundary, ...]:
        """Where the own class's logit ties with another class's: own_logit(S_own) = S_other.

        Drawn over S_own in [-1, 1] (``num`` points), as distances to the two classes.
        """
        s_own = torch.linspace(-1.0, 1.0, num, dtype=torch.float64)  # (num,)
        s_other = self.own_logit(s_own)  # (num,)
        return (Boundary.from_similarity(self.boundary_label, s_own.numpy(), s_other.numpy()),)
