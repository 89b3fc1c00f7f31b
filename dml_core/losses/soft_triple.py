r"""SoftTriple: a softmax over classes that each own K centres, without sampling triplets.

Reference:
    Qian, Shang, Sun, Hu, Li, Jin. SoftTriple Loss: Deep Metric Learning Without Triplet
    Sampling. ICCV 2019. Code: github.com/idstcv/SoftTriple.

Qian et al. show that the normalised softmax is a smoothed triplet loss whose classes have one
centre each; SoftTriple gives each class K centres, so a class may consist of several clusters
(birds in different poses), and keeps the softmax's cost: O(B C K), no mining. The centres are
``proxies`` (C K, D) as described in ``centres.py``.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import Tensor, nn

from dml_core.geometry import l2_normalize
from dml_core.losses.base import LossOutput
from dml_core.losses.centres import CentreLoss, margin_softmax
from dml_core.registry import LOSSES, Params
from dml_core.tuples import Tuples

# Added under the square root of the regulariser, as in the authors' code: the distance between
# two coinciding centres has an infinite derivative.
SQRT_EPS = 1e-5


class SoftTripleParams(Params):
    """Parameters of the SoftTriple loss."""

    centers_per_class: int = Field(
        10, ge=1, le=20, description="K: centres per class; a class may form up to K clusters"
    )
    la: float = Field(
        20.0, gt=0, le=100, description="lambda: scale of the class logits; sharpens the softmax"
    )
    gamma: float = Field(
        0.1,
        gt=0,
        le=1,
        description="gamma: softness of the choice of centre; small gamma picks the nearest one",
    )
    tau: float = Field(
        0.2, ge=0, le=1, description="tau: weight of the regulariser that merges a class's centres"
    )
    margin: float = Field(
        0.01, ge=0, le=1, description="delta: margin subtracted from the own class's similarity"
    )


@LOSSES.register(
    name="soft_triple",
    params=SoftTripleParams,
    paper="Qian, Shang, Sun, Hu, Li, Jin. SoftTriple Loss: Deep Metric Learning Without Triplet "
    "Sampling. ICCV 2019",
    equation=r"S_c = \sum_k \frac{e^{x^\top w_c^k / \gamma}}"
    r"{\sum_{k'} e^{x^\top w_c^{k'} / \gamma}} x^\top w_c^k,\quad "
    r"L = -\log \frac{e^{\lambda (S_y - \delta)}}{e^{\lambda (S_y - \delta)}"
    r" + \sum_{c \neq y} e^{\lambda S_c}} + \frac{\tau}{C K (K - 1)} \sum_c \sum_{k < k'}"
    r" \|w_c^k - w_c^{k'}\|",
    kind="classes",
)
class SoftTripleLoss(CentreLoss):
    r"""SoftTriple loss: a softmax over classes with K centres each, plus a centre regulariser.

    Qian et al. 2019, Sec. 3. The relaxed similarity of sample x to class c is a soft-max
    weighted mean over its centres, S_c = \sum_k softmax_k(x^T w_c^k / gamma) x^T w_c^k, with
    x and the centres normalised. The loss of a sample is the softmax cross-entropy
    -log(e^{lambda (S_y - delta)} / (e^{lambda (S_y - delta)} + \sum_{c != y} e^{lambda S_c})).
    The objective adds tau / (C K (K - 1)) \sum_c \sum_{k < k'} ||w_c^k - w_c^{k'}||, the
    distance between the normalised centres of each class, computed as
    sqrt(2 + 1e-5 - 2 w^T w') as in the authors' code; pytorch-metric-learning leaves it out.

    Geometry: gamma -> 0 makes S_c the nearest centre's cosine (the HardTriple of the paper);
    a large gamma averages all K centres, as if the class had one centre. lambda scales the
    logits like the inverse temperature of the normalised softmax, and delta is the margin the
    own class must win by. tau pulls a class's centres together, so that redundant ones merge
    and the number of clusters per class adapts. K = 1 (with delta = 0) is the normalised
    softmax with temperature 1 / lambda. One cross-entropy per sample in ``terms``; the loss is
    their mean plus the regulariser. ``class_weights`` returns all C K centres, (C K, D),
    class-major: row c K + k is centre k of class c (pytorch-metric-learning's column order of
    ``fc``). They start from Kaiming-uniform with a = sqrt(5) on the (D, C K) layout, as in
    pytorch-metric-learning.
    """

    def __init__(
        self,
        centers_per_class: int = 10,
        la: float = 20.0,
        gamma: float = 0.1,
        tau: float = 0.2,
        margin: float = 0.01,
        *,
        num_classes: int,
        embedding_dim: int,
    ) -> None:
        super().__init__(num_classes, embedding_dim, centers_per_class)
        self.centers_per_class = centers_per_class
        self.la, self.gamma, self.tau, self.margin = la, gamma, tau, margin

    def reset_parameters(self) -> None:
        """Kaiming-uniform (a = sqrt(5)) on the (D, C K) view, as pytorch-metric-learning."""
        nn.init.kaiming_uniform_(self.proxies.T, a=math.sqrt(5))

    def class_similarities(self, sim: Tensor) -> Tensor:
        """Relaxed similarity S_c: softmax_k(sim / gamma)-weighted mean over K, (..., N, C)."""
        return (torch.softmax(sim / self.gamma, dim=-1) * sim).sum(dim=-1)

    boundary_label = "S_own - delta = S_other"

    def own_logit(self, sim: Tensor) -> Tensor:
        """S_y - delta."""
        return sim - self.margin

    def loss_and_terms(self, sim: Tensor, own: Tensor) -> tuple[Tensor, Tensor]:
        """Cross-entropy of lambda (S - delta [own]) per sample, and the mean."""
        return margin_softmax(sim, own, self.own_logit(sim), self.la)

    def centre_spread(self) -> Tensor:
        """The regulariser: sum_c sum_{k < k'} ||w_c^k - w_c^k'|| / (C K (K - 1)); 0 for K = 1.

        Centres are normalised first.
        """
        centres = self.proxies.unflatten(0, (self.num_classes, -1))  # (C, K, D)
        C, K = centres.shape[:2]
        if K == 1:
            return self.proxies.sum() * 0
        unit = l2_normalize(centres)  # (C, K, D)
        sim = unit @ unit.transpose(1, 2)  # (C, K, K) cosines within each class
        upper = torch.ones(K, K, dtype=torch.bool, device=sim.device).triu(diagonal=1)  # (K, K)
        dist = (2.0 + SQRT_EPS - 2.0 * sim[:, upper]).sqrt()  # (C, K (K - 1) / 2)
        return dist.sum() / (C * K * (K - 1))

    def forward(self, emb: Tensor, labels: Tensor, tuples: Tuples | None = None) -> LossOutput:
        """The cross-entropy of the batch plus tau times the centre regulariser."""
        out = super().forward(emb, labels, tuples)
        if self.tau == 0:
            return out
        return out._replace(loss=out.loss + self.tau * self.centre_spread().to(out.loss.dtype))
