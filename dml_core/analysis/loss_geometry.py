r"""Two views of the Loss explorer beside the curves: hardness weighting and angular boundaries.

Both are read from the losses' own code, and only for losses that declare them
(``Loss.hardness_parameter``, ``Loss.angular_boundaries``), so the page has no per-loss code.

Hardness (Wang & Liu, Understanding the Behaviour of Contrastive Loss, CVPR 2021, Eq. 4-5):
for a softmax-type contrastive loss with temperature tau, the gradient on the similarity s_k
of negative k is dL/ds_k = (1 / tau) e^{s_k / tau} / Z, with Z the softmax's normaliser, so
relative to each other the negatives are weighed e^{s_k / tau} / sum_j e^{s_j / tau}: a low
tau puts nearly all the weight on the hardest negatives (those most similar to the anchor).
``negative_weights`` does not retype that formula: it builds a batch of one anchor, one
positive and K negatives at known cosines, runs the loss's ``forward`` (the training code) and
takes the autograd gradient with respect to those cosines.

Angular boundaries (Deng et al. 2019, ArcFace, Fig. 5; Wang et al. 2018, CosFace, Fig. 2): in
the plane of theta_own (angle between an embedding and its own class weight) and theta_other
(angle to another class weight), the plain softmax decides at theta_own = theta_other, CosFace
at cos(theta_own) - m = cos(theta_other), ArcFace at theta_own + m = theta_other. Between the
softmax line and the loss's boundary lies the margin region: samples nearer their own class
than the other, still pushed by the loss. Each loss declares its boundary
(``Loss.angular_boundaries``, from the handicap training applies to the own logit).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dml_core.analysis.loss_curves import build_loss, setting_label
from dml_core.losses import Loss
from dml_core.losses.base import AngularBoundary
from dml_core.registry import LOSSES
from dml_core.tuples import Pairs

# The temperatures swept by default (the user's own value is added); Wang & Liu 2021, Fig. 3
# spans 0.07 to 1.
TEMPERATURES: tuple[float, ...] = (0.05, 0.1, 0.2, 0.5, 1.0)
NEGATIVES = 200  # negatives of the synthetic batch, evenly spread over cosines in (-1, 1)
POSITIVE_SIMILARITY = 0.5  # the positive's cosine; the relative weights do not depend on it
HARDEST = 0.1  # the fraction of most similar negatives whose share of the gradient is reported
GAP_ANGLES: tuple[float, ...] = (30.0, 90.0)  # theta_own (degrees) where the margin is measured


@dataclass(frozen=True)
class NegativeWeights:
    """How a loss spreads its gradient over negatives of different similarity, per setting.

    Attributes:
        label: the loss and its settings, for titles.
        parameter: the swept parameter's name (``"temperature"``).
        similarity: (K,) the negatives' cosine similarities to the anchor.
        values: (T,) the swept parameter's values, increasing.
        chosen: the user's value (one of ``values``).
        grad: (T, K) dL/ds_k from autograd through the loss's ``forward``.
        weight: (T, K) K grad / sum_k grad: 1 means every negative weighed alike.
    """

    label: str
    parameter: str
    similarity: np.ndarray
    values: tuple[float, ...]
    chosen: float
    grad: np.ndarray
    weight: np.ndarray


@dataclass(frozen=True)
class AngularPlane:
    """A loss's decision boundaries in the (theta_own, theta_other) plane (radians)."""

    label: str
    boundaries: tuple[AngularBoundary, ...]


def negative_grid(num: int = NEGATIVES) -> np.ndarray:
    """(num,) cosines at the centres of ``num`` equal bins of [-1, 1] (never exactly +-1)."""
    return -1.0 + (2.0 * np.arange(num) + 1.0) / num


def one_anchor_batch(s_pos: float, s_neg: Tensor) -> tuple[Tensor, Tensor, Pairs]:
    """Unit embeddings (K + 2, K + 2): anchor, positive at cosine s_pos, negatives at s_neg.

    The anchor is e_0, the positive s_pos e_0 + sqrt(1 - s_pos^2) e_1 and negative k
    s_k e_0 + sqrt(1 - s_k^2) e_{k+2}, so cos(anchor, negative k) = s_k exactly and the rows
    are differentiable in s_neg, (K,), with |s_k| < 1. Labels: 0 for anchor and positive, k + 1
    for negative k. The pairs are the anchor's only: (0, 1) positive, (0, k + 2) negative.
    """
    k = len(s_neg)
    dtype = s_neg.dtype
    anchor = torch.zeros(1, k + 2, dtype=dtype)
    anchor[0, 0] = 1.0
    positive = torch.zeros(1, k + 2, dtype=dtype)
    positive[0, 0], positive[0, 1] = s_pos, math.sqrt(1.0 - s_pos**2)
    negatives = torch.cat(
        [s_neg[:, None], torch.zeros(k, 1, dtype=dtype), torch.diag((1.0 - s_neg**2).sqrt())],
        dim=1,
    )  # (K, K + 2)
    emb = torch.cat([anchor, positive, negatives])  # (K + 2, K + 2)
    labels = torch.cat([torch.zeros(2, dtype=torch.long), torch.arange(1, k + 1)])
    zero = torch.zeros(1, dtype=torch.long)
    pairs = Pairs(zero, zero + 1, zero.expand(k), torch.arange(2, k + 2))
    return emb, labels, pairs


def negative_gradients(loss: Loss, similarity: np.ndarray, s_pos: float) -> np.ndarray:
    """dL/ds_k for negatives at cosines ``similarity`` (K,), through ``loss.forward``, float64."""
    s_neg = torch.as_tensor(np.asarray(similarity, dtype=np.float64)).requires_grad_()
    emb, labels, pairs = one_anchor_batch(s_pos, s_neg)
    (grad,) = torch.autograd.grad(loss(emb, labels, pairs).loss, s_neg)
    return grad.numpy()


def negative_weights(
    name: str,
    params: Mapping[str, Any] | None = None,
    values: Sequence[float] = TEMPERATURES,
    num: int = NEGATIVES,
    s_pos: float = POSITIVE_SIMILARITY,
) -> NegativeWeights | None:
    """Each negative's relative weight by its similarity, per value of ``hardness_parameter``.

    Wang & Liu 2021, Eq. 4-5, through the loss's ``forward``; None if the loss declares no
    such parameter.

    Args:
        name: registry key of the loss.
        params: its parameters (checked; ``ConfigError`` names a bad one); the declared
            parameter's value here is the user's, added to ``values``.
        values: the values to sweep (each must be allowed by the loss's parameter model).
        num: number of negatives, evenly spread over cosines in (-1, 1).
        s_pos: the positive's cosine to the anchor.
    """
    entry = LOSSES[name]
    key = type(build_loss(name, params)).hardness_parameter
    if key is None:
        return None
    settings = entry.validate(**dict(params or {})).model_dump()
    chosen = float(settings[key])
    swept = tuple(sorted({float(v) for v in values} | {chosen}))
    similarity = negative_grid(num)
    grads = []
    for value in swept:
        grads.append(
            negative_gradients(build_loss(name, settings | {key: value}), similarity, s_pos)
        )
    grad = np.stack(grads)  # (T, K)
    weight = num * grad / grad.sum(axis=1, keepdims=True)
    return NegativeWeights(
        setting_label(name, params), key, similarity, swept, chosen, grad, weight
    )


def hardest_share(weights: NegativeWeights, fraction: float = HARDEST) -> np.ndarray:
    """(T,) the share of each setting's gradient that the ``fraction`` hardest negatives get."""
    top = weights.similarity >= np.quantile(weights.similarity, 1.0 - fraction)  # (K,)
    return weights.weight[:, top].sum(axis=1) / weights.weight.sum(axis=1)


def angular_plane(
    name: str, params: Mapping[str, Any] | None = None, num: int = 361
) -> AngularPlane | None:
    """The loss's declared boundaries in the (theta_own, theta_other) plane; None if none."""
    boundaries = build_loss(name, params).angular_boundaries(num)
    return AngularPlane(setting_label(name, params), boundaries) if boundaries else None


def margin_region(boundary: AngularBoundary) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(theta_own, lower, upper) of the margin region under ``boundary``, in radians.

    Where the own class is the nearer (theta_own < theta_other) but its handicapped logit does
    not win: from the softmax line theta_other = theta_own up to the boundary, or up to pi
    where the boundary has no tie (NaN). Points where the boundary dips below the softmax line
    give an empty band (upper = lower).
    """
    own = boundary.theta_own
    upper = np.where(np.isfinite(boundary.theta_other), boundary.theta_other, math.pi)
    return own, own, np.maximum(upper, own)


def angular_gaps(
    boundary: AngularBoundary, at_degrees: Sequence[float] = GAP_ANGLES
) -> dict[float, float]:
    """theta_other - theta_own on the boundary at each theta_own in ``at_degrees``, in degrees.

    The angular margin the loss asks for there: constant (m) for ArcFace, shrinking with the
    angle for CosFace. Angles where the boundary has no tie are left out.
    """
    own, other = np.degrees(boundary.theta_own), np.degrees(boundary.theta_other)
    gaps = {}
    for at in at_degrees:
        value = float(np.interp(at, own, other - own))
        if np.isfinite(value):
            gaps[float(at)] = value
    return gaps
