r"""Angular-margin softmax losses: ArcFace, CosFace and sub-center ArcFace.

Each is a softmax cross-entropy over the scaled cosines s cos(theta_j) between a normalised
embedding and normalised class weights, where the own class's logit is handicapped by a margin:
ArcFace adds m to the angle, CosFace subtracts m from the cosine. A sample is only free of loss
once it beats every other class by the margin, which tightens each class's angular spread on the
sphere. Sub-center ArcFace gives each class K weights and uses the nearest one.

References:
    Deng, Guo, Xue, Zafeiriou. ArcFace: Additive Angular Margin Loss for Deep Face
    Recognition. CVPR 2019.
    Wang, Wang, Zhou, Ji, Gong, Zhou, Li, Liu. CosFace: Large Margin Cosine Loss for Deep Face
    Recognition. CVPR 2018.
    Deng, Guo, Liu, Gong, Zafeiriou. Sub-center ArcFace: Boosting Face Recognition by
    Large-scale Noisy Web Faces. ECCV 2020.

The weights are ``proxies`` (C K, D) as described in ``centres.py``. pytorch-metric-learning
takes the ArcFace margin in degrees (28.6 = 0.5 rad); here m is in radians, as in the paper.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from pydantic import Field
from torch import Tensor

from dml_core.losses.base import AngularBoundary
from dml_core.losses.centres import CentreLoss, margin_softmax
from dml_core.registry import LOSSES, Params

ARCFACE_EQUATION = (
    r"L = -\log \frac{e^{s \cos(\theta_y + m)}}{e^{s \cos(\theta_y + m)} + "
    r"\sum_{j \neq y} e^{s \cos \theta_j}}"
)


def sine_of_angle(cos: Tensor) -> Tensor:
    """sin(theta) = sqrt(1 - cos^2) for theta in [0, pi]; 0 where rounding puts |cos| above 1."""
    return (1.0 - cos.square()).clamp_min(0.0).sqrt()


def arcface_target(cos: Tensor, m: float) -> Tensor:
    """cos(theta + m) from cos(theta), where theta + m <= pi; cos(theta) - m sin(m) beyond.

    cos(theta + m) = cos(theta) cos(m) - sin(theta) sin(m) stops decreasing at theta = pi - m;
    past it the authors' code (and pytorch-metric-learning) switches to the linear
    cos(theta) - m sin(m), which keeps the target logit decreasing in theta.
    """
    margin = cos * math.cos(m) - sine_of_angle(cos) * math.sin(m)
    return torch.where(cos >= -math.cos(m), margin, cos - m * math.sin(m))


class AngularMarginLoss(CentreLoss):
    """A centre loss whose margin acts on the angle to the own class weight (or its cosine).

    Declares its decision boundary in the (theta_own, theta_other) plane from ``own_logit``,
    the handicap training applies: cos(theta_other) = own_logit(cos(theta_own)), as drawn in
    Deng et al. 2019 (ArcFace), Fig. 5 and Wang et al. 2018 (CosFace), Fig. 2.
    """

    angle_label: ClassVar[str] = "margin(theta_own) = theta_other"

    def angular_boundaries(self, num: int = 361) -> tuple[AngularBoundary, ...]:
        """The own class's tie with another class, over theta_own in [0, pi], in radians."""
        return (AngularBoundary.from_own_logit(self.angle_label, self.own_logit, num),)


class ArcFaceParams(Params):
    """Parameters of the ArcFace loss."""

    margin: float = Field(
        0.5,
        gt=0,
        lt=math.pi / 2,
        description="m: angular margin in radians added to the angle to the own class weight",
    )
    scale: float = Field(
        64.0, gt=0, le=256, description="s: logits are s cos(theta); a large s sharpens the softmax"
    )


@LOSSES.register(
    name="arcface",
    params=ArcFaceParams,
    paper="Deng, Guo, Xue, Zafeiriou. ArcFace: Additive Angular Margin Loss for Deep Face "
    "Recognition. CVPR 2019",
    equation=ARCFACE_EQUATION,
    kind="classes",
)
class ArcFaceLoss(AngularMarginLoss):
    r"""ArcFace: softmax over scaled cosines to class weights, with a margin m on the own angle.

    Deng et al. 2019, Eq. (3): L = -log(e^{s cos(theta_y + m)} / (e^{s cos(theta_y + m)} +
    \sum_{j != y} e^{s cos theta_j})), with theta_j the angle between the normalised embedding
    and the normalised weight of class j. The additive angular margin m asks the angle to the
    own weight to be m smaller than the angle to any other weight: classes become caps on the
    sphere separated by geodesic gaps of about m, and the decision boundary between classes y
    and j is theta_y + m = theta_j. The scale s puts the logits on a sphere of radius s: with
    s = 64 the softmax is sharp, so a sample keeps a gradient until its margin is met. Past
    theta_y = pi - m, cos(theta + m) would rise again; there the target becomes
    cos(theta_y) - m sin(m), as in the authors' code. One cross-entropy per sample, the loss is
    their mean. Weights (C, D) start from N(0, 1) as in pytorch-metric-learning (which stores
    them transposed and takes m in degrees).
    """

    def __init__(
        self, margin: float = 0.5, scale: float = 64.0, *, num_classes: int, embedding_dim: int
    ) -> None:
        super().__init__(num_classes, embedding_dim)
        self.margin, self.scale = margin, scale

    boundary_label = "theta_own + m = theta_other"
    angle_label = "theta_own + m = theta_other"

    def own_logit(self, sim: Tensor) -> Tensor:
        """cos(theta_y + m) (linear past theta_y = pi - m)."""
        return arcface_target(sim, self.margin)

    def loss_and_terms(self, sim: Tensor, own: Tensor) -> tuple[Tensor, Tensor]:
        """Eq. (3) per sample, and the mean."""
        return margin_softmax(sim, own, self.own_logit(sim), self.scale)


class CosFaceParams(Params):
    """Parameters of the CosFace loss."""

    margin: float = Field(
        0.35,
        ge=0,
        lt=1,
        description="m: cosine margin subtracted from the cosine to the own class weight",
    )
    scale: float = Field(
        64.0, gt=0, le=256, description="s: logits are s cos(theta); a large s sharpens the softmax"
    )


@LOSSES.register(
    name="cosface",
    params=CosFaceParams,
    paper="Wang et al. CosFace: Large Margin Cosine Loss for Deep Face Recognition. CVPR 2018",
    equation=r"L = -\log \frac{e^{s (\cos \theta_y - m)}}{e^{s (\cos \theta_y - m)} + "
    r"\sum_{j \neq y} e^{s \cos \theta_j}}",
    kind="classes",
)
class CosFaceLoss(AngularMarginLoss):
    r"""CosFace (large margin cosine loss): softmax over scaled cosines, own cosine minus m.

    Wang et al. 2018, Eq. (4): L = -log(e^{s (cos theta_y - m)} / (e^{s (cos theta_y - m)} +
    \sum_{j != y} e^{s cos theta_j})). The margin is on the cosine, not the angle: the decision
    boundary between classes y and j is cos(theta_y) - m = cos(theta_j), so the angular gap it
    asks for is widest where the classes are close (cosines near 1 change slowly with the
    angle). m = 0 is the normalised softmax with temperature 1 / s. The scale s sharpens the
    softmax as in ArcFace. One cross-entropy per sample, the loss is their mean. Weights (C, D)
    start from N(0, 1) as in pytorch-metric-learning.
    """

    def __init__(
        self, margin: float = 0.35, scale: float = 64.0, *, num_classes: int, embedding_dim: int
    ) -> None:
        super().__init__(num_classes, embedding_dim)
        self.margin, self.scale = margin, scale

    boundary_label = "cos(x, own) - m = cos(x, other)"
    angle_label = "cos(theta_own) - m = cos(theta_other)"

    def own_logit(self, sim: Tensor) -> Tensor:
        """cos(theta_y) - m."""
        return sim - self.margin

    def loss_and_terms(self, sim: Tensor, own: Tensor) -> tuple[Tensor, Tensor]:
        """Eq. (4) per sample, and the mean."""
        return margin_softmax(sim, own, self.own_logit(sim), self.scale)


class SubCenterArcFaceParams(ArcFaceParams):
    """Parameters of the sub-center ArcFace loss."""

    sub_centers: int = Field(
        3, ge=1, le=10, description="K: weights per class; a sample is compared with the nearest"
    )


@LOSSES.register(
    name="sub_center_arcface",
    params=SubCenterArcFaceParams,
    paper="Deng, Guo, Liu, Gong, Zafeiriou. Sub-center ArcFace: Boosting Face Recognition by "
    "Large-scale Noisy Web Faces. ECCV 2020",
    equation=ARCFACE_EQUATION + r",\quad \cos \theta_j = \max_{k \le K} \cos(x, w_{j,k})",
    kind="classes",
)
class SubCenterArcFaceLoss(AngularMarginLoss):
    r"""Sub-center ArcFace: ArcFace with K weights per class, each sample matched to the nearest.

    Deng et al. 2020, Sec. 3: the ArcFace loss (Deng et al. 2019, Eq. 3) on
    cos(theta_j) = max_k cos(x, w_{j,k}), the cosine to the nearest of class j's K sub-centres.
    A sample only has to be close to one sub-centre of its class, so a class may spread over up
    to K caps on the sphere: the clean majority gathers around a dominant sub-centre, while
    hard or mislabelled samples drift to the others instead of pulling the class apart. K = 1
    is ArcFace. Only the nearest sub-centre gets a gradient from a sample. m and s act as in
    ArcFace. ``class_weights`` returns all C K sub-centres, (C K, D), class-major: row c K + k is
    sub-centre k of class c (pytorch-metric-learning's column order of ``W``). They start from
    N(0, 1).
    """

    def __init__(
        self,
        margin: float = 0.5,
        scale: float = 64.0,
        sub_centers: int = 3,
        *,
        num_classes: int,
        embedding_dim: int,
    ) -> None:
        super().__init__(num_classes, embedding_dim, sub_centers)
        self.margin, self.scale, self.sub_centers = margin, scale, sub_centers

    boundary_label = "theta_own + m = theta_other (nearest sub-centres)"
    angle_label = "theta_own + m = theta_other (nearest sub-centres)"

    def own_logit(self, sim: Tensor) -> Tensor:
        """cos(theta_y + m) of the nearest own sub-centre (linear past theta_y = pi - m)."""
        return arcface_target(sim, self.margin)

    def loss_and_terms(self, sim: Tensor, own: Tensor) -> tuple[Tensor, Tensor]:
        """ArcFace's Eq. (3) per sample on the nearest-sub-centre cosines, and the mean."""
        return margin_softmax(sim, own, self.own_logit(sim), self.scale)
