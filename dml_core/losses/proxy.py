r"""Class-level losses: each class has a learnable proxy, and samples are pulled towards it.

Instead of comparing samples with each other, these losses compare each sample with C proxies,
one per class, trained by the optimiser together with the net. Cost is O(B C) instead of
O(B^2) or O(B^3), and no mining is needed: a miner's tuples are ignored.

References:
    Zhai, Wu. Classification is a Strong Baseline for Deep Metric Learning. BMVC 2019
    (arXiv 2018). Movshovitz-Attias, Toshev, Leung, Ioffe, Singh. No Fuss Distance Metric
    Learning using Proxies. ICCV 2017. Kim, Kim, Cho, Kwak. Proxy Anchor Loss for Deep Metric
    Learning. CVPR 2020.

Embeddings and proxies are compared on the unit sphere (both are L2-normalised), by cosine
similarity s or by the distance d = sqrt(2 - 2 s). What ``LossOutput`` holds here:

- ``terms``: one per sample (normalised softmax, proxy-NCA) or one per proxy (proxy-anchor).
- ``tuples``: ``all_pairs(labels)``, the batch pairs the views know how to draw; the loss
  itself does not use them, since a sample-proxy relation is not a batch tuple.
- ``pos_dist``: distance of each sample to its own proxy, shape (B,); ``neg_dist``: distance of
  each sample to every other proxy, shape (B (C - 1),). Both are detached (for the views).
"""

from __future__ import annotations

import abc
import math

import torch
from pydantic import Field
from torch import Tensor, nn

from dml_core.geometry import cosine_similarities, cosine_to_distance, distance_to_cosine
from dml_core.losses.base import AngularBoundary, Boundary, Loss, LossOutput
from dml_core.registry import LOSSES, Params
from dml_core.tuples import Tuples, all_pairs


def log1p_sum_exp(x: Tensor, keep: Tensor, dim: int) -> Tensor:
    """log(1 + sum of e^x over the kept entries along ``dim``); 0 where nothing is kept."""
    x = x.masked_fill(~keep, -torch.inf)
    zeros = torch.zeros_like(x.narrow(dim, 0, 1))
    return torch.logsumexp(torch.cat([x, zeros], dim=dim), dim=dim)


def own_class_mask(labels: Tensor, num_classes: int) -> Tensor:
    """Boolean (B, C) mask of each sample's own class; raises on labels outside [0, C)."""
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"Proxy losses need labels in [0, {num_classes}). "
            f"Got labels in [{int(labels.min())}, {int(labels.max())}]."
        )
    return nn.functional.one_hot(labels, num_classes).bool()  # (B, C)


class ProxyLoss(Loss):
    """Base of class-level losses: holds the proxies and builds the ``LossOutput``.

    Subclasses only write ``loss_and_terms``, a function of the cosine similarities between
    samples and proxies: training (``forward``) and the Loss explorer (``curve``) call it.
    ``class_weights`` hands the proxies to the views.
    """

    def __init__(self, num_classes: int, embedding_dim: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.proxies = nn.Parameter(torch.empty(num_classes, embedding_dim))  # (C, D)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw the proxies from N(0, 1), as pytorch-metric-learning does."""
        nn.init.normal_(self.proxies)

    @abc.abstractmethod
    def loss_and_terms(self, sim: Tensor, own: Tensor) -> tuple[Tensor, Tensor]:
        """Loss and terms from similarities (..., N, C) and own-class mask (..., N, C)."""

    def forward(self, emb: Tensor, labels: Tensor, tuples: Tuples | None = None) -> LossOutput:
        """Loss of the batch against all proxies; ``tuples`` from a miner are ignored."""
        own = own_class_mask(labels, self.num_classes)  # (B, C)
        sim = cosine_similarities(emb, self.proxies.to(emb.dtype))  # (B, C)
        loss, terms = self.loss_and_terms(sim, own)
        dist = cosine_to_distance(sim.detach())  # (B, C)
        return LossOutput(loss, terms, all_pairs(labels), terms > 0, dist[own], dist[~own])

    def curve(self, d_ap: Tensor, d_an: Tensor) -> Tensor:
        """Loss of one sample at distance d_ap from its own proxy and d_an from one other one."""
        d = torch.stack(torch.broadcast_tensors(d_ap, d_an), dim=-1)  # (..., 2)
        sim = distance_to_cosine(d).unsqueeze(-2)  # (..., 1, 2): one sample, two proxies
        own = torch.tensor([[True, False]], device=sim.device).expand_as(sim)  # (..., 1, 2)
        return self.loss_and_terms(sim, own)[1].sum(dim=-1)

    def class_weights(self) -> Tensor:
        """The proxies, (C, D), detached and as stored (the loss compares them normalised)."""
        return self.proxies.detach()

    def decision_boundaries(self, num: int = 401) -> tuple[Boundary, ...]:
        """Where the own and the other proxy are equally close, the softmax's tie."""
        return (Boundary.shifted("d(x, own) = d(x, other)", 0.0, num),)


def cross_entropy_terms(logits: Tensor, own: Tensor) -> Tensor:
    """-log softmax(logits)[own class], per sample: (..., N, C) -> (..., N)."""
    return torch.logsumexp(logits, dim=-1) - logits.masked_fill(~own, 0.0).sum(dim=-1)


class NormalizedSoftmaxParams(Params):
    """Parameters of the normalised softmax loss."""

    temperature: float = Field(
        0.05,
        gt=0,
        le=1,
        description="T: logits are cos(x, w_c) / T; a small T asks for tight classes",
    )


@LOSSES.register(
    name="normalized_softmax",
    params=NormalizedSoftmaxParams,
    paper="Zhai, Wu. Classification is a Strong Baseline for Deep Metric Learning. BMVC 2019",
    equation=r"L = -\log \frac{\exp(\cos(x, w_y) / T)}{\sum_{c} \exp(\cos(x, w_c) / T)}",
    kind="classes",
)
class NormalizedSoftmaxLoss(ProxyLoss):
    r"""Normalised softmax: cross-entropy over cosine similarities to one weight per class.

    Zhai & Wu 2018, Sec. 3.1, Eq. (2): -log(exp(s_y / T) / \sum_c exp(s_c / T)) with
    s_c = cos(x, w_c) between the normalised embedding and class weight w_c. The temperature T
    scales the logits: a small T (0.05) makes the softmax sharp, so a sample keeps a gradient
    until it is much closer to its own weight than to any other, which packs classes into tight
    caps on the sphere; a large T is satisfied with loose clusters. One term per sample, the
    loss is their mean. Weights (C, D) start from N(0, 1) as in pytorch-metric-learning (which
    stores them transposed, (D, C)).
    """

    def __init__(self, temperature: float = 0.05, *, num_classes: int, embedding_dim: int) -> None:
        super().__init__(num_classes, embedding_dim)
        self.temperature = temperature

    def loss_and_terms(self, sim: Tensor, own: Tensor) -> tuple[Tensor, Tensor]:
        """Cross-entropy of logits s / T per sample, and their mean."""
        terms = cross_entropy_terms(sim / self.temperature, own)  # (..., N)
        return terms.mean(dim=-1), terms

    def angular_boundaries(self, num: int = 361) -> tuple[AngularBoundary, ...]:
        """No margin: the own class wins when it is the nearer, theta_own = theta_other.

        The plain softmax line of Deng et al. 2019 (ArcFace), Fig. 5; T sharpens the softmax
        but does not move the boundary.
        """
        return (AngularBoundary.from_own_logit("theta_own = theta_other", lambda c: c, num),)


class ProxyNCAParams(Params):
    """Parameters of the proxy-NCA loss."""

    softmax_scale: float = Field(
        1.0,
        gt=0,
        le=100,
        description="s: logits are -s d(x, p_c)^2; a larger s sharpens the softmax over proxies",
    )


@LOSSES.register(
    name="proxy_nca",
    params=ProxyNCAParams,
    paper="Movshovitz-Attias et al. No Fuss Distance Metric Learning using Proxies. ICCV 2017",
    equation=r"L = -\log \frac{\exp(-s\, d(x, p_y)^2)}{\sum_{c} \exp(-s\, d(x, p_c)^2)}",
    kind="classes",
)
class ProxyNCALoss(ProxyLoss):
    r"""Proxy-NCA: neighbourhood component analysis with one learnable proxy per class.

    Movshovitz-Attias et al. 2017, Eq. (6)-(7), in pytorch-metric-learning's form: the paper's
    denominator leaves out the own proxy, this one sums over every proxy (a plain softmax, which
    stays bounded below by 0). Embeddings and proxies are normalised, d is their Euclidean
    distance on the sphere, and the logits are -s d^2. With s = 1 the logits span only [-4, 0],
    so the softmax never gets sharp and the loss stays above log(1 + (C - 1) e^{-4}); a larger
    s lets the loss separate classes further. One term per sample, the loss is their mean.
    Proxies (C, D) start from N(0, 1).
    """

    def __init__(self, softmax_scale: float = 1.0, *, num_classes: int, embedding_dim: int) -> None:
        super().__init__(num_classes, embedding_dim)
        self.softmax_scale = softmax_scale

    def loss_and_terms(self, sim: Tensor, own: Tensor) -> tuple[Tensor, Tensor]:
        """Cross-entropy of logits -s d^2 = -s (2 - 2 cos) per sample, and their mean."""
        terms = cross_entropy_terms(-self.softmax_scale * (2.0 - 2.0 * sim), own)  # (..., N)
        return terms.mean(dim=-1), terms


class ProxyAnchorParams(Params):
    """Parameters of the proxy-anchor loss."""

    alpha: float = Field(
        32.0,
        gt=0,
        le=128,
        description="alpha: scale; a large alpha focuses the gradient on the hardest samples",
    )
    margin: float = Field(
        0.1,
        ge=0,
        le=1,
        description="delta: positives are pulled above cos = delta, negatives below -delta",
    )


@LOSSES.register(
    name="proxy_anchor",
    params=ProxyAnchorParams,
    paper="Kim, Kim, Cho, Kwak. Proxy Anchor Loss for Deep Metric Learning. CVPR 2020",
    equation=r"L = \frac{1}{|P^+|} \sum_{p \in P^+} \log(1 + \sum_{x \in X_p^+} "
    r"e^{-\alpha (s(x,p) - \delta)}) + \frac{1}{|P|} \sum_{p \in P} \log(1 + "
    r"\sum_{x \in X_p^-} e^{\alpha (s(x,p) + \delta)})",
    kind="classes",
)
class ProxyAnchorLoss(ProxyLoss):
    r"""Proxy-anchor: each proxy is an anchor that pulls its batch samples and pushes the rest.

    Kim et al. 2020, Eq. (4). For each proxy p, a soft-plus of a log-sum-exp over the batch:
    positives X_p^+ contribute e^{-alpha (s - delta)} and negatives X_p^- e^{alpha (s + delta)},
    where s is the cosine similarity. The positive part is averaged over the proxies that have
    a positive in the batch (P^+), the negative part over all C proxies. The margin delta moves
    the targets: positives should reach cos > delta (distance < sqrt(2 - 2 delta)), negatives
    stay below cos < -delta (distance > sqrt(2 + 2 delta)). The scale alpha sets how sharply the
    log-sum-exp weighs samples: with alpha = 32 nearly all the gradient goes to the hardest
    ones. ``terms`` holds one value per proxy (its positive plus its negative part). Proxies
    (C, D) start from Kaiming-normal with fan-out (std sqrt(2 / C)), as in
    pytorch-metric-learning.
    """

    def __init__(
        self,
        alpha: float = 32.0,
        margin: float = 0.1,
        *,
        num_classes: int,
        embedding_dim: int,
    ) -> None:
        super().__init__(num_classes, embedding_dim)
        self.alpha, self.margin = alpha, margin

    def reset_parameters(self) -> None:
        """Kaiming-normal proxies with fan-out, as pytorch-metric-learning does."""
        nn.init.kaiming_normal_(self.proxies, mode="fan_out")

    def loss_and_terms(self, sim: Tensor, own: Tensor) -> tuple[Tensor, Tensor]:
        """Per-proxy positive and negative soft-plus terms, reduced as in Eq. (4)."""
        pos = log1p_sum_exp(self.alpha * (self.margin - sim), own, dim=-2)  # (..., C)
        neg = log1p_sum_exp(self.alpha * (sim + self.margin), ~own, dim=-2)  # (..., C)
        with_pos = own.any(dim=-2).sum(dim=-1).clamp_min(1)  # (...,) |P^+|
        loss = pos.sum(dim=-1) / with_pos + neg.sum(dim=-1) / own.shape[-1]
        return loss, pos + neg

    def distance_lines(self) -> dict[str, float]:
        """Where the positive and negative targets lie, as distances on the unit sphere."""
        delta = torch.tensor([self.margin, -self.margin], dtype=torch.float64)
        pos, neg = cosine_to_distance(delta).tolist()
        return {"positive target (cos = delta)": pos, "negative target (cos = -delta)": neg}

    def decision_boundaries(self, num: int = 401) -> tuple[Boundary, ...]:
        """The targets of Eq. (4): cos(x, own proxy) = delta and cos(x, other proxy) = -delta."""
        return (
            Boundary.vertical("cos(x, own) = delta", math.sqrt(2.0 - 2.0 * self.margin), num),
            Boundary.horizontal("cos(x, other) = -delta", math.sqrt(2.0 + 2.0 * self.margin), num),
        )
