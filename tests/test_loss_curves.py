"""The Loss explorer's curves are the training loss: values, gradients, boundaries, figures."""

import json
import math

import numpy as np
import pytest
import torch
from torch.func import functional_call

from dml_core import LOSSES, ConfigError, Pairs, Triplets
from dml_core.analysis import loss_curves as LC
from dml_core.figures import losses as LF
from dml_core.losses.triplet import TripletLoss

NAMES = list(LOSSES)
# (d(a,p), d(a,n)) away from every hinge and histogram node, so finite differences are exact.
POINTS = [(0.31, 0.93), (1.13, 0.71), (0.53, 1.61), (1.21, 1.27), (0.07, 1.87)]
# Circle loss detaches its weights alpha_p, alpha_n for the gradient (as the paper's code): its
# gradient is the training gradient, not the derivative of the plotted value.
DETACHED_WEIGHTS = {"circle"}


def f64(x: float) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64, requires_grad=True)


def on_circle(*angles: torch.Tensor) -> torch.Tensor:
    t = torch.stack(angles)  # (n,)
    return torch.stack([t.cos(), t.sin()], dim=1)  # (n, 2)


def chord_angle(d: torch.Tensor) -> torch.Tensor:
    """Angle between unit vectors at distance d."""
    return 2 * torch.asin(d / 2)


def training_value(
    name: str, d_ap: torch.Tensor, d_an: torch.Tensor, params: dict | None = None
) -> torch.Tensor:
    """The training forward on a minimal batch whose two pair distances are d_ap and d_an.

    Anchor, positive and negative lie on the unit circle (chord distances are exact, so both
    Euclidean and cosine losses see d_ap and d_an); class-level losses get one sample and two
    proxies, placed by functional_call. The embeddings are differentiable in (d_ap, d_an).
    """
    classes = LOSSES[name].kind == "classes"
    context = {"num_classes": 2, "embedding_dim": 3 if classes else 2}
    loss = LOSSES.create(name, context, **(params or {}))
    zero = torch.zeros((), dtype=torch.float64)
    th_p, th_n = chord_angle(d_ap), chord_angle(d_an)
    if classes:
        x = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
        own = torch.stack([th_p.cos(), th_p.sin(), zero])
        other = torch.stack([th_n.cos(), zero, th_n.sin()])
        out = functional_call(loss, {"proxies": torch.stack([own, other])}, (x, torch.tensor([0])))
        return out.terms.sum()
    if name == "cross_batch_memory":  # the queue side is detached: the inner loss has the grad
        loss = loss.inner
    one = torch.tensor([0])
    if name == "n_pair":  # anchors 0 and 2; anchor 0's negative is anchor 2's positive (3)
        emb = on_circle(zero, th_p, zero + math.pi, -th_n)
        none = torch.tensor([], dtype=torch.int64)
        tuples = Pairs(torch.tensor([0, 2]), torch.tensor([1, 3]), none, none)
        return loss(emb, torch.tensor([0, 0, 1, 1]), tuples).terms[0]
    if name == "quadruplet":  # n2, the only sample of a third class, is d_an away from n1
        emb = torch.stack(
            [torch.stack(r) for r in ((zero, zero), (d_ap, zero), (-d_an, zero), (-d_an, d_an))]
        )
        return loss(emb, torch.tensor([0, 0, 1, 2]), Triplets(one, one + 1, one + 2)).terms.sum()
    emb = on_circle(zero, th_p, -th_n)  # anchor, positive, negative
    kind = LOSSES[name].kind
    tuples = (
        Triplets(one, one + 1, one + 2) if kind == "triplets" else Pairs(one, one + 1, one, one + 2)
    )
    # One triplet, or one positive and one negative pair of anchor 0: the terms add up to it.
    return loss(emb, torch.tensor([0, 0, 1]), tuples).terms.sum()


def training_value_and_grads(
    name: str, d_ap: float, d_an: float, params: dict | None = None
) -> tuple[float, float, float]:
    a, n = f64(d_ap), f64(d_an)
    value = training_value(name, a, n, params)
    g_a, g_n = torch.autograd.grad(value, (a, n), allow_unused=True)
    grads = [0.0 if g is None else float(g) for g in (g_a, g_n)]
    return float(value.detach()), *grads


@pytest.mark.parametrize("name", NAMES)
def test_profiles_equal_the_training_loss_and_its_autograd_gradient(name: str) -> None:
    for d_ap, d_an in POINTS:
        value, g_ap, g_an = training_value_and_grads(name, d_ap, d_an)
        pos = LC.loss_profile(name, {}, "positive", grid=np.array([d_ap]), fixed=d_an)
        neg = LC.loss_profile(name, {}, "negative", grid=np.array([d_an]), fixed=d_ap)
        assert pos.value[0] == pytest.approx(value, rel=1e-9, abs=1e-9)
        assert neg.value[0] == pytest.approx(value, rel=1e-9, abs=1e-9)
        assert pos.grad[0] == pytest.approx(g_ap, rel=1e-7, abs=1e-9)
        assert neg.grad[0] == pytest.approx(g_an, rel=1e-7, abs=1e-9)


# One setting per loss away from its defaults (the margin loss's beta is its initial value).
NON_DEFAULT: dict[str, dict] = {
    "contrastive": {"pos_margin": 0.3, "neg_margin": 1.4},
    "binomial_deviance": {"alpha": 5.0, "beta": 0.2, "C": 3.0},
    "margin": {"alpha": 0.35, "beta": 0.9},
    "triplet": {"margin": 0.7},
    "triplet_network": {"objective": "nll"},
    "quadruplet": {"alpha1": 0.6, "alpha2": 0.25},
    "lifted_structure": {"neg_margin": 0.7},
    "histogram": {"num_bins": 37},
    "multi_similarity": {"alpha": 4.0, "beta": 20.0, "lam": 0.3},
    "circle": {"m": 0.4, "gamma": 32.0},
    "normalized_softmax": {"temperature": 0.2},
    "proxy_nca": {"softmax_scale": 3.0},
    "proxy_anchor": {"alpha": 8.0, "margin": 0.3},
    "cross_batch_memory": {"loss": "multi_similarity"},
    "arcface": {"margin": 0.3, "scale": 16.0},
    "cosface": {"margin": 0.2, "scale": 16.0},
    "sub_center_arcface": {"margin": 0.3, "scale": 16.0, "sub_centers": 2},
    "soft_triple": {"centers_per_class": 2, "la": 8.0, "gamma": 0.5, "tau": 0.0, "margin": 0.1},
    "ntxent": {"temperature": 0.5},
    "supcon": {"temperature": 0.5},
}


def test_every_loss_with_parameters_has_a_non_default_setting() -> None:
    with_params = {name for name in NAMES if LOSSES[name].params.model_fields}
    assert set(NON_DEFAULT) == with_params
    for name, params in NON_DEFAULT.items():
        LOSSES[name].validate(**params)
        assert params != {k: LOSSES[name].defaults()[k] for k in params}


@pytest.mark.parametrize("name", sorted(NON_DEFAULT))
def test_profiles_at_non_default_parameters_equal_the_training_loss(name: str) -> None:
    params = NON_DEFAULT[name]
    differs = False
    for d_ap, d_an in POINTS:
        value, g_ap, g_an = training_value_and_grads(name, d_ap, d_an, params)
        pos = LC.loss_profile(name, params, "positive", grid=np.array([d_ap]), fixed=d_an)
        neg = LC.loss_profile(name, params, "negative", grid=np.array([d_an]), fixed=d_ap)
        assert pos.value[0] == pytest.approx(value, rel=1e-9, abs=1e-9)
        assert neg.value[0] == pytest.approx(value, rel=1e-9, abs=1e-9)
        assert pos.grad[0] == pytest.approx(g_ap, rel=1e-7, abs=1e-9)
        assert neg.grad[0] == pytest.approx(g_an, rel=1e-7, abs=1e-9)
        default = training_value_and_grads(name, d_ap, d_an)
        differs |= default != pytest.approx((value, g_ap, g_an), rel=1e-6, abs=1e-9)
    assert differs, f"{params} changes nothing at these points: the check would be vacuous"


@pytest.mark.parametrize("name", NAMES)
def test_surface_equals_the_training_loss_at_sampled_grid_points(name: str) -> None:
    # x = d(a,p), y = d(a,n) in steps of 2/11: no grid point sits on a hinge or histogram node.
    surface = LC.loss_surface(name, {}, n=12)
    assert surface.value.shape == surface.grad.shape == (12, 12)
    for i, j in [(2, 5), (7, 3), (4, 8), (9, 1)]:
        value, g_ap, g_an = training_value_and_grads(name, surface.x[j], surface.y[i])
        assert surface.value[i, j] == pytest.approx(value, rel=1e-9, abs=1e-9)
        assert surface.grad[i, j] == pytest.approx(math.hypot(g_ap, g_an), rel=1e-7, abs=1e-9)


@pytest.mark.parametrize("name", sorted(set(NAMES) - DETACHED_WEIGHTS))
@pytest.mark.parametrize("axis", ["positive", "negative"])
def test_plotted_gradient_is_the_derivative_of_the_plotted_value(name: str, axis: str) -> None:
    h = 1e-6
    for d_ap, d_an in POINTS:
        x, fixed = (d_ap, d_an) if axis == "positive" else (d_an, d_ap)
        grid = np.array([x - h, x, x + h])
        profile = LC.loss_profile(name, {}, axis, grid=grid, fixed=fixed)
        slope = (profile.value[2] - profile.value[0]) / (2 * h)
        assert profile.grad[1] == pytest.approx(slope, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_similarity_axis_is_the_distance_axis_through_s_equals_1_minus_d2_over_2(name: str) -> None:
    d = np.array([0.31, 0.93, 1.61])
    s = 1 - d**2 / 2
    by_d = LC.loss_profile(name, {}, "negative", grid=d, fixed=0.53)
    by_s = LC.loss_profile(name, {}, "negative", grid=s, fixed=1 - 0.53**2 / 2, scale="similarity")
    np.testing.assert_allclose(by_s.value, by_d.value, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(by_s.grad, by_d.grad * (-1 / d), rtol=1e-6, atol=1e-9)  # dd/ds
    full = LC.loss_profile(name, {}, "positive", scale="similarity")  # includes s = 1 (d = 0)
    assert np.isfinite(full.value).all()
    assert np.isfinite(full.grad).all()
    assert full.x_label.startswith(("s_p", "cos(x, own"))


def test_axis_labels_name_proxies_for_class_level_losses() -> None:
    assert LC.axis_labels("proxy_anchor", "distance") == ("d(x, own proxy)", "d(x, other proxy)")
    assert LC.axis_labels("triplet", "distance") == ("d(a,p)", "d(a,n)")
    profile = LC.loss_profile("proxy_nca", {}, "negative")
    assert (profile.x_label, profile.fixed_label) == ("d(x, other proxy)", "d(x, own proxy)")


@pytest.mark.parametrize("margin", [0.1, 0.2, 0.7])
def test_triplet_boundary_is_d_an_equals_d_ap_plus_margin(margin: float) -> None:
    surface = LC.loss_surface("triplet", {"margin": margin}, n=21)
    (boundary,) = surface.boundaries
    ok = np.isfinite(boundary.d_ap)
    np.testing.assert_allclose(boundary.d_an[ok] - boundary.d_ap[ok], margin, atol=1e-12)
    assert boundary.d_ap[ok].min() == 0
    assert boundary.d_an[ok].max() <= 2
    loss = LC.build_loss("triplet", {"margin": margin})
    d_ap = boundary.d_ap[ok][::40]
    above, _, _ = LC.evaluate(loss, d_ap, d_ap + margin + 1e-3)
    below, _, _ = LC.evaluate(loss, d_ap, d_ap + margin - 1e-3)
    assert np.all(above == 0)
    assert np.all(below > 0)
    profile = LC.loss_profile("triplet", {"margin": margin}, "positive", fixed=1.0)
    assert profile.marks == {"d(a,n) = d(a,p) + alpha": pytest.approx(1.0 - margin)}


def test_contrastive_boundaries_are_its_two_margins() -> None:
    (neg_line,) = LC.loss_surface("contrastive", {"neg_margin": 0.8}, n=5).boundaries
    assert np.nanmax(np.abs(neg_line.d_an - 0.8)) == 0
    assert np.nanmin(neg_line.d_ap) == 0
    pos_line, neg_line = LC.loss_surface(
        "contrastive", {"pos_margin": 0.3, "neg_margin": 1.5}, n=5
    ).boundaries
    assert np.all(pos_line.d_ap == 0.3)
    assert np.all(neg_line.d_an == 1.5)
    assert "m_pos" in pos_line.label
    assert "m_neg" in neg_line.label
    pos = LC.loss_profile("contrastive", {"pos_margin": 0.3, "neg_margin": 1.5}, "positive")
    neg = LC.loss_profile("contrastive", {"pos_margin": 0.3, "neg_margin": 1.5}, "negative")
    assert list(pos.marks.values()) == [pytest.approx(0.3)]
    assert list(neg.marks.values()) == [pytest.approx(1.5)]


@pytest.mark.parametrize("m", [0.1, 0.25, 0.4])
def test_circle_boundary_has_radius_sqrt2_m_around_0_1_and_the_linear_one(m: float) -> None:
    surface = LC.loss_surface("circle", {"m": m}, n=11, scale="similarity")
    assert (surface.x_label, surface.y_label) == ("s_n = cos(a,n)", "s_p = cos(a,p)")
    circle, linear = surface.boundaries
    s_n, s_p = surface.boundary_xy(circle)
    ok = np.isfinite(s_n)
    np.testing.assert_allclose(np.hypot(s_n[ok], s_p[ok] - 1), math.sqrt(2) * m, rtol=1e-9)
    # Sun et al. 2020, Eq. 9: alpha_n (s_n - Delta_n) = alpha_p (s_p - Delta_p) on the circle.
    alpha_n, alpha_p = s_n[ok] + m, 1 + m - s_p[ok]
    np.testing.assert_allclose(alpha_n * (s_n[ok] - m), alpha_p * (s_p[ok] - (1 - m)), atol=1e-9)
    l_n, l_p = surface.boundary_xy(linear)
    ok = np.isfinite(l_n)
    np.testing.assert_allclose(l_p[ok] - l_n[ok], m, atol=1e-12)
    # In the distance plane the same curves are drawn through d = sqrt(2 - 2 s).
    d_ap, _ = circle.coordinates("distance")
    ok = np.isfinite(d_ap)
    np.testing.assert_allclose(1 - d_ap[ok] ** 2 / 2, s_p[np.isfinite(s_p)], rtol=1e-9)


def test_every_loss_has_finite_curves_and_boundaries_inside_the_plane() -> None:
    for name in NAMES:
        for scale in ("distance", "similarity"):
            surface = LC.loss_surface(name, {}, n=9, scale=scale)
            assert np.isfinite(surface.value).all(), name
            assert np.isfinite(surface.grad).all(), name
            for boundary in surface.boundaries:
                x, y = surface.boundary_xy(boundary)
                low, high = LC.RANGES[scale]
                for v in (x, y):
                    v = v[np.isfinite(v)]
                    assert v.size
                    assert v.min() >= low - 1e-12
                    assert v.max() <= high + 1e-12


def test_bad_parameters_and_missing_curves_give_clear_errors(monkeypatch) -> None:
    with pytest.raises(ConfigError, match="'margin' parameter of triplet"):
        LC.loss_profile("triplet", {"margin": -1.0})

    def no_curve(self, d_ap, d_an):
        raise NotImplementedError

    monkeypatch.setattr(TripletLoss, "curve", no_curve)
    with pytest.raises(LC.CurveUnavailableError, match="TripletLoss loss defines no curve"):
        LC.loss_surface("triplet", {})


def test_surface_without_gradient_is_the_same_value() -> None:
    fast = LC.loss_surface("multi_similarity", {}, n=15, gradient=False)
    full = LC.loss_surface("multi_similarity", {}, n=15)
    assert fast.grad is None
    np.testing.assert_array_equal(fast.value, full.value)
    with pytest.raises(ValueError, match="without its gradient"):
        LF.surface_figure(fast, show="gradient")


def test_setting_label_names_the_loss_and_its_values() -> None:
    assert LC.setting_label("triplet", {"margin": 0.2, "soft": False}) == (
        "triplet (margin=0.2, soft=False)"
    )
    assert LC.setting_label("n_pair", {}) == "n_pair"


# --- figures -------------------------------------------------------------------------------


def test_profile_figure_overlays_series_with_distinct_colours() -> None:
    a = LC.loss_profile("triplet", {"margin": 0.2}, "positive")
    b = LC.loss_profile("triplet", {"margin": 0.5}, "positive")
    fig = LF.profile_figure([a, b], "Positive pair")
    spec = json.loads(fig.to_json())
    assert len(fig.data) == 4  # value and |grad| per series
    names = [t.name for t in fig.data if t.showlegend is not False]
    assert names == [a.label, b.label]
    assert fig.data[0].line.color != fig.data[2].line.color
    np.testing.assert_allclose(np.array(fig.data[1].y, dtype=float), np.abs(a.grad))
    assert "d(a,n) = 1" in spec["layout"]["title"]["text"]
    assert len(fig.layout.shapes) == 4  # one mark per series, drawn in both rows
    scaled = LF.profile_figure([a, b], "Positive pair", normalize=True)
    assert max(v for v in scaled.data[0].y if v is not None) == pytest.approx(1.0)


def test_surface_and_circle_figures() -> None:
    surface = LC.loss_surface("contrastive", {"pos_margin": 0.3}, n=21)
    fig = LF.surface_figure(surface)
    heat, *lines = fig.data
    assert np.asarray(heat.z).shape == (21, 21)
    assert [t.name for t in lines] == [b.label for b in surface.boundaries]
    assert fig.layout.xaxis.title.text == "d(a,p)"
    assert fig.layout.yaxis.title.text == "d(a,n)"
    grad = LF.surface_figure(surface, show="gradient")
    np.testing.assert_allclose(np.asarray(grad.data[0].z), surface.grad, rtol=1e-6)
    json.loads(fig.to_json())
    with pytest.raises(ValueError, match="similarity-scale"):
        LF.circle_figure(surface)
    plane = LC.loss_surface("circle", {}, n=21, scale="similarity")
    circle = LF.circle_figure(plane)
    assert "Sun et al. 2020" in circle.layout.title.text
    assert circle.layout.xaxis.title.text == "s_n = cos(a,n)"
    assert any(t.name and t.name.startswith("circle:") for t in circle.data)
