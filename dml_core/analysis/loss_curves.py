r"""Loss curves for the Loss explorer: every registered loss as a function of two distances.

Each loss exposes ``curve(d_ap, d_an)``: the loss of one anchor with one positive at distance
d(a,p) and one negative at d(a,n) (for class-level losses: one sample at d from its own proxy
and from one other proxy), computed by the same internal function as training. This module
only evaluates that function on grids and differentiates it with autograd, so the explorer
shows exactly the value and the gradient the optimiser sees: no loss formula is copied here.
Where a loss detaches a weight during training (circle loss's alpha_p, alpha_n), the gradient
shown is the training gradient, not the derivative of the plotted value.

Coordinates: distances between unit vectors lie in [0, 2]; the similarity axis uses the
cosine s = 1 - d^2 / 2 in [-1, 1] (the same identity the cosine losses use). The similarity
plane is drawn as (s_n, s_p), the orientation of Sun et al. 2020, Fig. 1.

Decision boundaries (drawn on the heat maps, marked on the profiles) are declared by each loss
(``Loss.decision_boundaries``), in the notation of its paper: e.g. d(a,n) = d(a,p) + alpha for
the triplet loss (Schroff et al. 2015, Eq. 1), d(a,n) = m_neg for the contrastive loss, the
circle s_n^2 + (s_p - 1)^2 = 2 m^2 for the circle loss (Sun et al. 2020, Eq. 10). This module
asks for them and draws nothing it does not get from the loss, so a new loss brings its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from dml_core.geometry import cosine_to_distance
from dml_core.losses import CurveUnavailableError, Loss
from dml_core.losses.base import Boundary
from dml_core.registry import LOSSES

Scale = Literal["distance", "similarity"]
Axis = Literal["positive", "negative"]

# What the class-level losses need to be built; the curve itself uses neither.
CONTEXT: dict[str, int] = {"num_classes": 2, "embedding_dim": 8}
RANGES: dict[str, tuple[float, float]] = {"distance": (0.0, 2.0), "similarity": (-1.0, 1.0)}
# The other coordinate's default while one is varied: d(a,n) = 1 for the positive-pair
# profile, d(a,p) = 0.5 for the negative-pair profile (distances on the unit sphere).
DEFAULT_FIXED: dict[str, float] = {"positive": 1.0, "negative": 0.5}
# What a profile plots, for the captions of the pages that draw profiles (Loss explorer, Train)
PROFILE_NOTE = (
    "Each curve is the loss of one anchor with a positive and a negative: one distance moves, "
    "the other is held (its value is written above the plot). With a loss made of pair terms, "
    "such as the contrastive loss, the held pair's term adds a constant."
)
S_MAX = 1.0 - 1e-9  # s = 1 is d = 0, where d(d)/ds is infinite; the last point sits just below


@dataclass(frozen=True)
class Profile:
    """Loss along one coordinate, the other fixed.

    Attributes:
        label: the loss and its settings, for legends.
        axis: ``"positive"`` (d(a,p) or s_p varies) or ``"negative"`` (d(a,n) or s_n varies).
        scale: ``"distance"`` or ``"similarity"``.
        x: (n,) the varied coordinate.
        value: (n,) the loss.
        grad: (n,) d loss / d x from autograd through ``curve`` (signed; plots show |grad|).
        fixed: the other coordinate, in the same scale.
        x_label: what x is, e.g. ``"d(a,p)"``; fixed_label: what the fixed coordinate is.
        marks: where the profile crosses a decision boundary, {label: x}; a boundary crossed
            again gets `` (2)``, `` (3)``, ... after its label.
        crossings: the same points as (boundary label, x) pairs in the order of ``marks``, each
            with its boundary's own label (the figures label every crossing by its boundary).
    """

    label: str
    axis: Axis
    scale: Scale
    x: np.ndarray
    value: np.ndarray
    grad: np.ndarray
    fixed: float
    x_label: str
    fixed_label: str
    marks: dict[str, float] = field(default_factory=dict)
    crossings: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class Surface:
    """Loss and gradient magnitude on a grid of the (positive, negative) plane.

    In the distance scale x = d(a,p) and y = d(a,n); in the similarity scale x = s_n and
    y = s_p (Sun et al. 2020, Fig. 1). ``value[i, j]`` is the loss at (x[j], y[i]), the layout
    of a heat map; ``grad`` is the norm of the gradient with respect to (x, y) (None when the
    surface was computed without it).
    """

    label: str
    scale: Scale
    x: np.ndarray  # (n,)
    y: np.ndarray  # (n,)
    value: np.ndarray  # (n, n)
    grad: np.ndarray | None  # (n, n), None when not computed
    x_label: str
    y_label: str
    boundaries: tuple[Boundary, ...]

    def boundary_xy(self, boundary: Boundary) -> tuple[np.ndarray, np.ndarray]:
        """The boundary in this surface's (x, y) coordinates."""
        pos, neg = boundary.coordinates(self.scale)
        return (pos, neg) if self.scale == "distance" else (neg, pos)


def build_loss(name: str, params: Mapping[str, Any] | None = None) -> Loss:
    """The registered loss with validated parameters (raises ``ConfigError`` if invalid)."""
    return LOSSES.create(name, CONTEXT, **dict(params or {}))


def setting_label(name: str, params: Mapping[str, Any] | None = None) -> str:
    """``triplet (margin=0.2, soft=False)``: a legend entry naming the loss and its settings."""
    if not params:
        return name
    values = ", ".join(
        f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
    )
    return f"{name} ({values})"


def axis_labels(name: str, scale: Scale) -> tuple[str, str]:
    """Names of the (positive, negative) coordinates; class-level losses measure to proxies."""
    if LOSSES[name].kind == "classes":
        if scale == "distance":
            return "d(x, own proxy)", "d(x, other proxy)"
        return "cos(x, own proxy)", "cos(x, other proxy)"
    return ("d(a,p)", "d(a,n)") if scale == "distance" else ("s_p = cos(a,p)", "s_n = cos(a,n)")


def evaluate(
    loss: Loss,
    pos: np.ndarray,
    neg: np.ndarray,
    scale: Scale = "distance",
    gradient: bool = True,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Loss and its partial derivatives at (pos, neg), elementwise (broadcast shapes).

    Args:
        loss: a built loss; its ``curve(d_ap, d_an)`` is evaluated.
        pos: d(a,p) (or s_p in the similarity scale).
        neg: d(a,n) (or s_n).
        scale: ``"distance"`` or ``"similarity"``; in the latter d = sqrt(2 - 2 s) first.
        gradient: also differentiate (else the two derivatives are None; about 3x faster).

    Returns:
        value, d value / d pos, d value / d neg, each of the broadcast shape (float64).
    """
    pos_t = torch.as_tensor(np.asarray(pos, dtype=np.float64)).requires_grad_(gradient)
    neg_t = torch.as_tensor(np.asarray(neg, dtype=np.float64)).requires_grad_(gradient)
    if scale == "similarity":  # s = 1 is moved to S_MAX, keeping d/ds = 1 (clamp would zero it)
        d_ap = cosine_to_distance(pos_t - (pos_t - S_MAX).clamp_min(0.0).detach())
        d_an = cosine_to_distance(neg_t - (neg_t - S_MAX).clamp_min(0.0).detach())
    else:
        d_ap, d_an = pos_t, neg_t
    d_ap, d_an = torch.broadcast_tensors(d_ap, d_an)
    try:
        value = loss.curve(d_ap, d_an)
    except NotImplementedError:  # a curve left unwritten the usual PyTorch way
        raise CurveUnavailableError(type(loss).__name__) from None
    if not gradient:
        return value.detach().numpy(), None, None
    grads: tuple[Tensor | None, ...] = (None, None)
    if value.requires_grad:
        grads = torch.autograd.grad(value.sum(), (pos_t, neg_t), allow_unused=True)
    zeros = torch.zeros(value.shape, dtype=value.dtype)
    g_pos, g_neg = (zeros if g is None else g.expand(value.shape) for g in grads)
    return value.detach().numpy(), g_pos.numpy(), g_neg.numpy()


def decision_boundaries(loss: Loss, num: int = 401) -> tuple[Boundary, ...]:
    """The loss's own decision boundaries (``Loss.decision_boundaries``), ``num`` points each.

    Polylines in distance coordinates; none for a loss that declares none.
    """
    return loss.decision_boundaries(num)


def _crossings(x: np.ndarray, y: np.ndarray, level: float) -> list[float]:
    """The x where the polyline (x, y) crosses y = level (linear interpolation, no repeats)."""
    a, b = y[:-1] - level, y[1:] - level  # (k - 1,) each segment's ends, relative to level
    hit = np.isfinite(a) & np.isfinite(b) & ((a > 0) != (b > 0))
    t = a[hit] / (a[hit] - b[hit])  # where along the segment (a != b on a hit)
    xs = x[:-1][hit] + (x[1:][hit] - x[:-1][hit]) * t
    return sorted({round(float(v), 9) for v in xs})


def loss_profile(
    name: str,
    params: Mapping[str, Any] | None = None,
    axis: Axis = "positive",
    grid: np.ndarray | None = None,
    fixed: float | None = None,
    *,
    scale: Scale = "distance",
) -> Profile:
    """The loss and d loss / d x along one coordinate, the other held fixed.

    Args:
        name: registry key of the loss.
        params: its parameters (checked; ``ConfigError`` names a bad one).
        axis: ``"positive"``: x = d(a,p) (or s_p) varies with d(a,n) fixed; ``"negative"``:
            x = d(a,n) (or s_n) varies with d(a,p) fixed.
        grid: (n,) values of x; default 201 points over [0, 2] (or [-1, 1]).
        fixed: the other coordinate in the same scale; default d(a,n) = 1 for the positive
            profile and d(a,p) = 0.5 for the negative one (or their cosines).
        scale: ``"distance"`` or ``"similarity"`` (s = 1 - d^2 / 2, unit sphere).

    Raises:
        ConfigError: a parameter is out of range.
        CurveUnavailableError: the loss has no curve.
    """
    loss = build_loss(name, params)
    x = np.linspace(*RANGES[scale], 201) if grid is None else np.asarray(grid, dtype=np.float64)
    if fixed is None:
        d = DEFAULT_FIXED[axis]
        fixed = d if scale == "distance" else 1.0 - d**2 / 2.0
    other = np.full_like(x, fixed)
    pos, neg = (x, other) if axis == "positive" else (other, x)
    value, g_pos, g_neg = evaluate(loss, pos, neg, scale)
    pos_label, neg_label = axis_labels(name, scale)
    marks: dict[str, float] = {}
    crossings: list[tuple[str, float]] = []
    for boundary in decision_boundaries(loss):
        b_pos, b_neg = boundary.coordinates(scale)
        b_x, b_other = (b_pos, b_neg) if axis == "positive" else (b_neg, b_pos)
        for i, cross in enumerate(_crossings(b_x, b_other, fixed)):
            marks[boundary.label + ("" if i == 0 else f" ({i + 1})")] = cross
            crossings.append((boundary.label, cross))
    return Profile(
        label=setting_label(name, params),
        axis=axis,
        scale=scale,
        x=x,
        value=value,
        grad=g_pos if axis == "positive" else g_neg,
        fixed=float(fixed),
        x_label=pos_label if axis == "positive" else neg_label,
        fixed_label=neg_label if axis == "positive" else pos_label,
        marks=marks,
        crossings=tuple(crossings),
    )


def loss_surface(
    name: str,
    params: Mapping[str, Any] | None = None,
    n: int = 121,
    *,
    scale: Scale = "distance",
    gradient: bool = True,
) -> Surface:
    """The loss and its gradient norm on an n x n grid, with the decision boundaries.

    Distance scale: x = d(a,p), y = d(a,n) over [0, 2]^2. Similarity scale: x = s_n, y = s_p
    over [-1, 1]^2, the plane of Sun et al. 2020, Fig. 1 (where the circle loss's boundary is
    a circle). ``gradient=False`` skips the gradient norm (``grad`` is None), for speed.

    Raises:
        ConfigError: a parameter is out of range.
        CurveUnavailableError: the loss has no curve.
    """
    loss = build_loss(name, params)
    x = np.linspace(*RANGES[scale], n)  # (n,)
    y = x.copy()
    X, Y = np.meshgrid(x, y)  # (n, n): X varies along columns
    pos, neg = (X, Y) if scale == "distance" else (Y, X)
    value, g_pos, g_neg = evaluate(loss, pos, neg, scale, gradient)
    pos_label, neg_label = axis_labels(name, scale)
    return Surface(
        label=setting_label(name, params),
        scale=scale,
        x=x,
        y=y,
        value=value,
        grad=None if g_pos is None or g_neg is None else np.hypot(g_pos, g_neg),
        x_label=pos_label if scale == "distance" else neg_label,
        y_label=neg_label if scale == "distance" else pos_label,
        boundaries=decision_boundaries(loss),
    )
