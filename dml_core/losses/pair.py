"""Losses on independent positive and negative pairs: contrastive, binomial deviance, margin."""

from __future__ import annotations

from pydantic import Field
from torch import Tensor

from dml_core.losses.base import PairLoss, Params
from dml_core.registry import LOSSES


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
