"""The Loss explorer's hardness and angle views: read from the losses' code, checked against
the papers' formulas (Wang & Liu 2021, Eq. 4-5; ArcFace and CosFace decision boundaries)."""

import math

import numpy as np
import pytest

from dml_core.analysis import loss_geometry
from dml_core.figures import loss_geometry as geometry_figures
from dml_core.registry import LOSSES

TAUS = (0.05, 0.1, 0.2, 0.5, 1.0)


@pytest.mark.parametrize("name", ["ntxent", "supcon"])
def test_negative_weights_are_the_softmax_over_negatives(name: str) -> None:
    """Wang & Liu 2021, Eq. 4-5 in float64, at a non-default tau (0.3, added to the sweep).

    Relative weights: K softmax(s / tau) over the negatives. Raw gradient (one positive at
    s_p): dL/ds_k = (1 / tau) e^{s_k / tau} / (e^{s_p / tau} + sum_j e^{s_j / tau}).
    Catches: tau applied as a multiplier (logits s tau), a missing 1 / tau, the positive left
    out of the denominator, the weights normalised by something else than their sum.
    """
    weights = loss_geometry.negative_weights(name, {"temperature": 0.3})
    assert weights is not None
    assert weights.values == (0.05, 0.1, 0.2, 0.3, 0.5, 1.0)
    assert weights.chosen == 0.3
    assert weights.parameter == "temperature"
    s = weights.similarity
    assert len(s) == loss_geometry.NEGATIVES
    assert np.all(np.abs(s) < 1)
    s_pos = loss_geometry.POSITIVE_SIMILARITY
    for tau, weight, grad in zip(weights.values, weights.weight, weights.grad, strict=True):
        e = np.exp(s / tau)
        np.testing.assert_allclose(weight, len(s) * e / e.sum(), rtol=1e-10, atol=1e-300)
        raw = e / tau / (np.exp(s_pos / tau) + e.sum())
        np.testing.assert_allclose(grad, raw, rtol=1e-10, atol=1e-300)


def test_lower_tau_puts_more_weight_on_the_hardest_negatives() -> None:
    """The hardness-aware property. Catches tau applied as a multiplier (the order reverses)."""
    weights = loss_geometry.negative_weights("ntxent", {"temperature": 0.1})
    assert weights is not None
    share = loss_geometry.hardest_share(weights, 0.1)  # (T,), tau increasing
    assert np.all(np.diff(share) < 0), share
    assert share[0] > 0.95, share
    assert share[-1] < 0.3, share
    hardest, easiest = weights.weight[:, -1], weights.weight[:, 0]
    assert np.all(np.diff(hardest) < 0)
    assert np.all(np.diff(easiest) > 0)


def test_only_the_declaring_losses_get_the_views() -> None:
    """Hardness for the temperature losses, angles for the angular class losses; none else."""
    hardness = {n for n in LOSSES if loss_geometry.negative_weights(n) is not None}
    angles = {n for n in LOSSES if loss_geometry.angular_plane(n) is not None}
    assert hardness == {"ntxent", "supcon"}
    assert angles == {"arcface", "cosface", "sub_center_arcface", "normalized_softmax"}


def finite(boundary):
    keep = np.isfinite(boundary.theta_other)
    return boundary.theta_own[keep], boundary.theta_other[keep], keep


@pytest.mark.parametrize(("name", "margin"), [("arcface", 0.3), ("sub_center_arcface", 0.7)])
def test_arcface_boundary_is_theta_own_plus_m(name: str, margin: float) -> None:
    """Deng et al. 2019, Fig. 5: theta_own + m = theta_other, m in radians, at a non-default m.

    Past theta_own = pi - m the loss's own logit turns linear (cos theta - m sin m, the authors'
    code): there the boundary follows that. Catches: the margin read in degrees, the margin on
    the cosine (CosFace's), a boundary not moved by the margin.
    """
    (boundary,) = loss_geometry.angular_plane(name, {"margin": margin}).boundaries
    own, other, keep = finite(boundary)
    arc = own + margin <= math.pi
    assert arc.sum() >= 280  # all points with theta_own <= pi - m (361 over [0, pi])
    np.testing.assert_allclose(other[arc] - own[arc], margin, atol=1e-9)
    tail = ~arc
    np.testing.assert_allclose(
        np.cos(other[tail]), np.cos(own[tail]) - margin * math.sin(margin), atol=1e-9
    )
    no_tie = ~keep
    assert np.all(np.cos(boundary.theta_own[no_tie]) - margin * math.sin(margin) < -1)
    gaps = loss_geometry.angular_gaps(boundary)
    assert gaps == pytest.approx(dict.fromkeys(loss_geometry.GAP_ANGLES, math.degrees(margin)))


def test_cosface_boundary_is_cos_theta_own_minus_m() -> None:
    """Wang et al. 2018, Fig. 2: cos(theta_own) - m = cos(theta_other), at m = 0.2.

    Catches: the margin added to the angle (ArcFace's), a sign error, no tie left as NaN.
    """
    margin = 0.2
    (boundary,) = loss_geometry.angular_plane("cosface", {"margin": margin}).boundaries
    own, other, keep = finite(boundary)
    np.testing.assert_allclose(np.cos(own) - margin, np.cos(other), atol=1e-9)
    np.testing.assert_array_equal(keep, np.cos(boundary.theta_own) - margin >= -1)
    gaps = loss_geometry.angular_gaps(boundary)
    expected = math.degrees(math.acos(math.cos(math.radians(30)) - margin)) - 30
    assert gaps[30.0] == pytest.approx(expected, abs=1e-3)
    assert gaps[90.0] < gaps[30.0]  # the angular margin shrinks with the angle


def test_normalized_softmax_has_no_margin_and_its_region_is_empty() -> None:
    """theta_own = theta_other whatever T; the margin region is empty. Catches a margin there."""
    (boundary,) = loss_geometry.angular_plane("normalized_softmax", {"temperature": 0.3}).boundaries
    np.testing.assert_allclose(boundary.theta_other, boundary.theta_own, atol=1e-7)
    _, lower, upper = loss_geometry.margin_region(boundary)
    np.testing.assert_allclose(upper, lower, atol=1e-7)


def test_margin_region_runs_from_the_diagonal_to_the_boundary_or_the_top() -> None:
    (boundary,) = loss_geometry.angular_plane("cosface", {"margin": 0.5}).boundaries
    own, lower, upper = loss_geometry.margin_region(boundary)
    np.testing.assert_array_equal(lower, own)
    tie = np.isfinite(boundary.theta_other)
    np.testing.assert_array_equal(upper[tie], boundary.theta_other[tie])
    assert (~tie).any()
    assert np.all(upper[~tie] == math.pi)


def test_hardness_figure_plots_the_weights_and_highlights_the_chosen_tau() -> None:
    weights = loss_geometry.negative_weights("supcon", {"temperature": 0.3})
    fig = geometry_figures.hardness_figure(weights)
    curves = fig.data[: len(weights.values)]
    for trace, row in zip(curves, weights.weight, strict=True):
        np.testing.assert_array_equal(trace.y, row)
        np.testing.assert_array_equal(trace.x, weights.similarity)
    chosen = [t for t in curves if "(yours)" in t.name]
    assert len(chosen) == 1
    assert chosen[0].name.startswith("τ = 0.3 (yours)")
    assert chosen[0].line.width > max(t.line.width for t in curves if t is not chosen[0])
    assert fig.layout.yaxis.type == "linear"
    assert geometry_figures.hardness_figure(weights, log_y=True).layout.yaxis.type == "log"


def test_angular_figure_draws_boundaries_in_degrees_with_the_margin_shaded() -> None:
    arc = loss_geometry.angular_plane("arcface", {"margin": 0.4})
    cos = loss_geometry.angular_plane("cosface")
    fig = geometry_figures.angular_figure([arc, cos])
    lines = [t for t in fig.data if t.fill is None and t.name.startswith(("arcface", "cosface"))]
    for trace, plane in zip(lines, (arc, cos), strict=True):
        np.testing.assert_array_equal(trace.y, np.degrees(plane.boundaries[0].theta_other))
    (band,) = [t for t in fig.data if t.fill == "toself"]  # only the first loss's is shaded
    assert band.name.startswith("margin region of arcface")
    bars = fig.layout.shapes
    assert [b.y1 - b.y0 for b in bars] == pytest.approx([math.degrees(0.4)] * 2)
    with pytest.raises(ValueError, match="at least one plane"):
        geometry_figures.angular_figure([])
