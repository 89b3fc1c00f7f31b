"""Losses on triplets (a, p, n): triplet (hinge and soft-plus), Triplet Network, quadruplet."""

from __future__ import annotations

from pydantic import Field
from torch import Tensor, nn

from dml_core.losses.base import Params, TripletLossBase
from dml_core.registry import LOSSES


class TripletParams(Params):
    """Parameters of the triplet loss."""

    margin: float = Field(
        0.2,
        gt=0,
        le=2,
        description="alpha: how much farther the negative must be than the positive",
    )
    soft: bool = Field(False, description="soft-plus log(1 + e^x) instead of the hinge [x]_+")


@LOSSES.register(
    name="triplet",
    params=TripletParams,
    paper="Schroff, Kalenichenko, Philbin. FaceNet. CVPR 2015",
    equation=r"L = [d(a,p) - d(a,n) + \alpha]_+",
    kind="triplets",
)
class TripletLoss(TripletLossBase):
    """Triplet loss: each anchor's negative must be a margin farther than its positive.

    Schroff et al. 2015 (FaceNet), Eq. (1)-(2): [d(a,p) - d(a,n) + alpha]_+, on plain
    (not squared) distances as in pytorch-metric-learning. Only relative distances matter, so
    the scale of the space can differ from place to place. With ``soft=True`` the hinge becomes
    the soft-plus log(1 + exp(d(a,p) - d(a,n) + alpha)) (Hermans et al. 2017): every triplet
    keeps a small gradient, even easy ones.
    """

    def __init__(self, margin: float = 0.2, soft: bool = False) -> None:
        super().__init__()
        self.margin, self.soft = margin, soft

    def triplet_terms(self, d_ap: Tensor, d_an: Tensor) -> Tensor:
        """[d_ap - d_an + alpha]_+, or its soft-plus."""
        violation = d_ap - d_an + self.margin
        return nn.functional.softplus(violation) if self.soft else violation.relu()
