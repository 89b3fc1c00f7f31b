"""NT-Xent, SupCon, ArcFace, CosFace, sub-center ArcFace, SoftTriple (float64, against PML 2.9)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pytorch_metric_learning import losses as pml
from torch.nn.functional import softplus

from dml_core import LOSSES, MINERS, ConfigError, LossOutput, Pairs
from dml_core.losses.angular import sine_of_angle
from dml_core.tuples import all_pairs, all_triplets, to_pairs

B, D, C = 14, 5, 4
CONTEXT = {"num_classes": C, "embedding_dim": D}
PAIR_LOSSES = ["ntxent", "supcon"]
CLASS_LOSSES = ["arcface", "cosface", "sub_center_arcface", "soft_triple"]
MODERN = PAIR_LOSSES + CLASS_LOSSES
# Large scales saturate the softmax: log 2 on the boundary is then checked with a blunt curve.
SMALL_SCALE = {"arcface": {"scale": 4.0}, "sub_center_arcface": {"scale": 4.0}}
MINED = {"semi_hard": {"margin": 1.0}, "hard": {}, "batch_hard": {}, "multi_similarity": {}}


def batch(seed: int = 0, n: int = B) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(n, D, generator=g, dtype=torch.float64)
    labels = (torch.arange(n) % C)[torch.randperm(n, generator=g)]
    return emb, labels


def pml_pair_loss(name: str, temperature: float) -> torch.nn.Module:
    cls = pml.NTXentLoss if name == "ntxent" else pml.SupConLoss
    return cls(temperature=temperature)


def pml_class_loss(name: str, ours: torch.nn.Module) -> torch.nn.Module:
    """PML's loss with our parameters, and our weights copied into its (D, C K) ``W`` or ``fc``."""
    entry = LOSSES[name]
    p = {k: getattr(ours, k) for k in entry.params.model_fields}
    if name in {"arcface", "sub_center_arcface"}:
        p["margin"] = math.degrees(p["margin"])  # PML takes degrees
    if name == "soft_triple":
        assert p.pop("tau") == 0  # PML's SoftTriple has no centre regulariser
    cls = {
        "arcface": pml.ArcFaceLoss,
        "cosface": pml.CosFaceLoss,
        "sub_center_arcface": pml.SubCenterArcFaceLoss,
        "soft_triple": pml.SoftTripleLoss,
    }[name]
    size = ours.proxies.shape[1]
    theirs = cls(num_classes=ours.num_classes, embedding_size=size, **p).double()
    weights = theirs.fc if name == "soft_triple" else theirs.W
    assert weights.shape == ours.proxies.T.shape
    with torch.no_grad():
        weights.copy_(ours.proxies.T)
    return theirs


def compare(ours, theirs, emb, labels, tuples=None, indices=None) -> None:
    """Value and embedding gradient equal (1e-5)."""
    e_ours, e_theirs = emb.clone().requires_grad_(), emb.clone().requires_grad_()
    loss_ours = ours(e_ours, labels, tuples).loss
    loss_theirs = theirs(e_theirs, labels, indices)
    torch.testing.assert_close(loss_ours, loss_theirs, rtol=0, atol=1e-5)
    loss_ours.backward()
    loss_theirs.backward()
    torch.testing.assert_close(e_ours.grad, e_theirs.grad, rtol=0, atol=1e-5)
    assert e_ours.grad.abs().sum() > 0


# --- against pytorch-metric-learning ---------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.1, 0.05, 0.7])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", PAIR_LOSSES)
def test_pair_losses_match_pml_on_all_pairs(name: str, seed: int, temperature: float) -> None:
    emb, labels = batch(seed)
    ours = LOSSES.create(name, temperature=temperature)
    compare(ours, pml_pair_loss(name, temperature), emb, labels)


def random_subset(labels: torch.Tensor, seed: int) -> Pairs:
    g = torch.Generator().manual_seed(seed)
    a1, p, a2, n = all_pairs(labels)
    keep_pos = torch.rand(len(p), generator=g) < 0.5
    keep_neg = torch.rand(len(n), generator=g) < 0.5
    return Pairs(a1[keep_pos], p[keep_pos], a2[keep_neg], n[keep_neg])


@pytest.mark.filterwarnings("ignore:Using a non-tuple sequence:UserWarning")
@pytest.mark.parametrize("kind", ["subset", "triplets", *MINED])
@pytest.mark.parametrize("name", PAIR_LOSSES)
def test_pair_losses_match_pml_on_mined_tuples(name: str, kind: str) -> None:
    """Our miners' tuples (and random subsets) given to both, as PML's ``indices_tuple``."""
    emb, labels = batch(3)
    if kind == "subset":
        tuples = random_subset(labels, 3)
    elif kind == "triplets":
        tuples = all_triplets(labels)
    else:
        tuples = MINERS.create(kind, **MINED[kind])(emb, labels)
    assert len(tuples[0]) > 0, f"{kind} mined nothing: the comparison would be vacuous"
    # PML splits triplets into (a, p, a, n) without removing repeats; ours deduplicates.
    indices = to_pairs(tuples)
    compare(
        LOSSES.create(name, temperature=0.2), pml_pair_loss(name, 0.2), emb, labels, tuples, indices
    )


def test_ntxent_counts_repeated_pairs_as_pml_does() -> None:
    emb, labels = batch(4)
    a1, p, a2, n = random_subset(labels, 4)
    twice = Pairs(
        torch.cat([a1, a1[:3]]),
        torch.cat([p, p[:3]]),
        torch.cat([a2, a2[:5]]),
        torch.cat([n, n[:5]]),
    )
    compare(LOSSES.create("ntxent"), pml_pair_loss("ntxent", 0.1), emb, labels, twice, twice)


CLASS_CASES = [
    ("arcface", {}),
    ("arcface", {"margin": 0.2, "scale": 10.0}),
    ("cosface", {}),
    ("cosface", {"margin": 0.1, "scale": 8.0}),
    ("sub_center_arcface", {}),
    ("sub_center_arcface", {"sub_centers": 5, "margin": 0.3, "scale": 16.0}),
    ("soft_triple", {"tau": 0.0}),
    ("soft_triple", {"centers_per_class": 3, "la": 8.0, "gamma": 0.5, "tau": 0.0, "margin": 0.2}),
]


@pytest.mark.parametrize(("name", "params"), CLASS_CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_class_losses_match_pml_in_value_and_both_gradients(
    name: str, params: dict, seed: int
) -> None:
    torch.manual_seed(seed)
    ours = LOSSES.create(name, CONTEXT, **params).double()
    theirs = pml_class_loss(name, ours)
    compare(ours, theirs, *batch(seed))
    their_weights = theirs.fc if name == "soft_triple" else theirs.W
    torch.testing.assert_close(ours.proxies.grad, their_weights.grad.T, rtol=0, atol=1e-5)


def test_arcface_past_pi_minus_m_takes_the_linear_target_as_pml() -> None:
    """Own-class angles on both sides of pi - m (2.64 rad for m = 0.5): PML's two branches."""
    m, s = 0.5, 4.0
    loss = LOSSES.create("arcface", {"num_classes": 2, "embedding_dim": 2}, scale=s).double()
    angles = torch.tensor([2.9, 3.1, 1.0, 2.5], dtype=torch.float64)  # to the own weight
    emb = torch.stack([angles.cos(), angles.sin()], dim=1)  # (4, 2); weights at 0 and 1.3 rad
    with torch.no_grad():
        w = [[1.0, 0.0], [math.cos(1.3), math.sin(1.3)]]
        loss.proxies.copy_(torch.tensor(w, dtype=torch.float64))
    labels = torch.zeros(4, dtype=torch.int64)
    theirs = pml_class_loss("arcface", loss)
    compare(loss, theirs, emb, labels)
    other = s * (angles - 1.3).cos()
    own = s * torch.where(angles <= math.pi - m, (angles + m).cos(), angles.cos() - m * math.sin(m))
    expected = torch.logaddexp(own, other) - own
    torch.testing.assert_close(loss(emb, labels).terms, expected, rtol=0, atol=1e-12)


# --- the centres -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "K"), [("arcface", 1), ("cosface", 1), ("sub_center_arcface", 3), ("soft_triple", 10)]
)
def test_class_weights_are_all_centres_class_major(name: str, K: int) -> None:
    torch.manual_seed(0)
    loss = LOSSES.create(name, CONTEXT)
    weights = loss.class_weights()
    assert weights.shape == (C * K, D)
    assert not weights.requires_grad
    assert any(p is loss.proxies for p in loss.parameters())
    # Put centre K - 1 of class 2 (row 2 K + K - 1) on a sample of class 2: its class distance is 0.
    x = torch.randn(1, D)
    with torch.no_grad():
        loss.proxies[2 * K + K - 1] = 3 * x[0]
    if name == "soft_triple":  # the relaxed similarity only reaches 1 when gamma picks the centre
        loss.gamma = 1e-4
    out = loss(x, torch.tensor([2]))
    assert out.pos_dist.shape == (1,)
    assert out.neg_dist.shape == (C - 1,)
    assert float(out.pos_dist[0]) == pytest.approx(0.0, abs=1e-3)


def test_sub_center_arcface_trains_only_the_nearest_sub_centre_of_each_class() -> None:
    torch.manual_seed(0)
    loss = LOSSES.create("sub_center_arcface", CONTEXT, sub_centers=4, scale=8.0).double()
    emb, labels = batch(0, n=1)
    loss(emb, labels).loss.backward()
    touched = (loss.proxies.grad.abs().sum(dim=1) > 0).view(C, 4)  # (C, K)
    assert touched.sum(dim=1).tolist() == [1] * C
    nearest = torch.nn.functional.normalize(loss.proxies.detach().view(C, 4, D), dim=-1) @ (
        torch.nn.functional.normalize(emb[0], dim=0)
    )  # (C, K)
    assert touched.int().argmax(dim=1).tolist() == nearest.argmax(dim=1).tolist()


@pytest.mark.parametrize("tau", [0.2, 0.7])
def test_soft_triple_regulariser_is_the_mean_centre_distance_of_each_class(tau: float) -> None:
    torch.manual_seed(1)
    K = 4
    loss = LOSSES.create("soft_triple", CONTEXT, centers_per_class=K, tau=tau).double()
    emb, labels = batch(5)
    without = LOSSES.create("soft_triple", CONTEXT, centers_per_class=K, tau=0.0).double()
    without.load_state_dict(loss.state_dict())
    w = torch.nn.functional.normalize(loss.proxies.detach(), dim=1)
    total = 0.0
    for c in range(C):
        for k in range(K):
            for k2 in range(k + 1, K):
                cos = float(w[c * K + k] @ w[c * K + k2])
                total += math.sqrt(2 + 1e-5 - 2 * cos)
    expected = tau * total / (C * K * (K - 1))
    gap = (loss(emb, labels).loss - without(emb, labels).loss).detach()
    assert float(gap) == pytest.approx(expected, rel=1e-10)
    # the regulariser pulls the centres of a class together: its gradient reaches every centre
    loss.centre_spread().backward()
    assert bool((loss.proxies.grad.abs().sum(dim=1) > 0).all())


# --- the explorer's curves by hand -----------------------------------------------------------


def cos_of(d: torch.Tensor) -> torch.Tensor:
    return 1 - d**2 / 2


def test_curves_are_the_papers_formulas_for_one_positive_and_one_negative() -> None:
    d_ap = torch.tensor([0.3, 0.9, 1.4], dtype=torch.float64)
    d_an = torch.tensor([1.2, 0.5, 1.9], dtype=torch.float64)
    s_p, s_n = cos_of(d_ap), cos_of(d_an)
    th_p, th_n = s_p.acos(), s_n.acos()
    ctx = {"num_classes": 2, "embedding_dim": 3}
    expected = {
        "ntxent": softplus((s_n - s_p) / 0.1),
        "supcon": softplus((s_n - s_p) / 0.1),
        "arcface": softplus(64 * (th_n.cos() - (th_p + 0.5).cos())),
        "sub_center_arcface": softplus(64 * (th_n.cos() - (th_p + 0.5).cos())),
        "cosface": softplus(64 * (s_n - (s_p - 0.35))),
        "soft_triple": softplus(20 * (s_n - (s_p - 0.01))),
    }
    for name, value in expected.items():
        curve = LOSSES.create(name, ctx).curve(d_ap, d_an)
        torch.testing.assert_close(curve, value, rtol=1e-10, atol=1e-10, msg=name)


# --- interface and faults ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "field", "value", "allowed"),
    [
        ("ntxent", "temperature", 0.0, "in (0, 1]"),
        ("supcon", "temperature", -0.5, "in (0, 1]"),
        ("arcface", "margin", 0.0, "in (0, 1.5708)"),
        ("arcface", "margin", math.pi / 2, "in (0, 1.5708)"),
        ("sub_center_arcface", "margin", 2.0, "in (0, 1.5708)"),
        ("sub_center_arcface", "sub_centers", 0, "in [1, 10]"),
        ("soft_triple", "centers_per_class", 0, "in [1, 20]"),
        ("soft_triple", "gamma", 0.0, "in (0, 1]"),
        ("cosface", "scale", 0.0, "in (0, 256]"),
    ],
)
def test_bad_parameters_get_one_sentence_naming_the_field(
    name: str, field: str, value: float, allowed: str
) -> None:
    with pytest.raises(ConfigError) as err:
        LOSSES.create(name, CONTEXT, **{field: value})
    message = str(err.value)
    assert message == f"The '{field}' parameter of {name} must be {allowed}. Got {value!r}."


@pytest.mark.parametrize("name", MODERN)
def test_registered_described_and_declared(name: str) -> None:
    entry = LOSSES[name]
    assert entry.kind == ("pairs" if name in PAIR_LOSSES else "classes")
    assert entry.paper
    assert entry.equation.isascii()
    assert entry.doc.isascii()
    assert entry.summary
    for field in entry.params.model_fields.values():
        assert field.description
        assert ": " in field.description  # "symbol: what it does"


@pytest.mark.parametrize("name", CLASS_LOSSES)
def test_class_losses_ignore_miner_tuples_and_check_labels(name: str) -> None:
    torch.manual_seed(0)
    loss = LOSSES.create(name, CONTEXT)
    emb, labels = batch(0)
    emb = emb.float()
    some = MINERS.create("hard")(emb, labels)
    assert torch.equal(loss(emb, labels).loss, loss(emb, labels, some).loss)
    with pytest.raises(ValueError, match=r"labels in \[0, 4\)"):
        loss(emb, torch.full_like(labels, C))


def finite(name: str, emb: torch.Tensor, labels: torch.Tensor) -> LossOutput:
    torch.manual_seed(0)
    emb = emb.clone().requires_grad_()
    out = LOSSES.create(name, CONTEXT)(emb, labels)
    assert torch.isfinite(out.loss), name
    out.loss.backward()
    assert torch.isfinite(emb.grad).all(), name
    return out


@pytest.mark.parametrize("name", MODERN)
def test_degenerate_and_half_precision_batches_stay_finite(name: str) -> None:
    emb, labels = batch(0)
    finite(name, emb, labels)
    finite(name, torch.zeros_like(emb), labels)
    finite(name, torch.nn.functional.normalize(torch.ones_like(emb), dim=1), labels)
    finite(name, emb, torch.zeros_like(labels))  # one class: no negatives
    for dtype in (torch.float16, torch.bfloat16):
        finite(name, emb.to(dtype), labels)


def test_ntxent_without_negatives_or_positives_is_zero_with_a_gradient_path() -> None:
    emb, _ = batch(0, n=4)
    emb.requires_grad_()
    for labels in (torch.zeros(4, dtype=torch.int64), torch.arange(4)):
        out = LOSSES.create("ntxent")(emb, labels)
        assert float(out.loss.detach()) == 0.0
        out.loss.backward()


def test_supcon_is_zero_without_negative_pairs_as_pml() -> None:
    """One class in the batch: PML's SupCon returns 0 (it needs a positive and a negative)."""
    emb, _ = batch(0, n=6)
    labels = torch.zeros(6, dtype=torch.int64)
    ours = LOSSES.create("supcon")(emb, labels)
    assert float(pml_pair_loss("supcon", 0.1)(emb, labels)) == 0.0
    assert float(ours.loss) == 0.0
    assert bool((ours.terms > 0).all())  # the per-anchor terms themselves are not zero


@pytest.mark.parametrize("name", MODERN)
def test_decision_boundary_is_where_the_two_logits_tie(name: str) -> None:
    """On the boundary a two-way softmax is undecided: the curve's loss is log 2 everywhere."""
    loss = LOSSES.create(name, {"num_classes": 2, "embedding_dim": 3}, **SMALL_SCALE.get(name, {}))
    (boundary,) = loss.decision_boundaries(num=101)
    ok = np.isfinite(boundary.d_ap) & np.isfinite(boundary.d_an)
    assert ok.sum() > 50
    d_ap = torch.from_numpy(boundary.d_ap[ok])
    d_an = torch.from_numpy(boundary.d_an[ok])
    value = loss.curve(d_ap, d_an)
    torch.testing.assert_close(value, torch.full_like(value, math.log(2)), rtol=0, atol=1e-9)
    # a negative a little further away than the boundary satisfies the loss better
    room = d_an < 1.99
    assert bool((loss.curve(d_ap[room], d_an[room] + 0.01) < value[room]).all())


def test_ntxent_positive_pairs_whose_anchor_has_no_negative_count_as_zero_in_the_mean() -> None:
    emb, labels = batch(6)
    a1, p, a2, n = all_pairs(labels)
    lonely = a2 != a1[0]  # anchor a1[0] keeps its positive pairs but loses all its negatives
    tuples = Pairs(a1, p, a2[lonely], n[lonely])
    out = LOSSES.create("ntxent")(emb, labels, tuples)
    assert bool((out.terms[a1 == a1[0]] == 0).all())
    compare(LOSSES.create("ntxent"), pml_pair_loss("ntxent", 0.1), emb, labels, tuples, tuples)


def test_sine_of_angle_is_zero_not_nan_where_rounding_pushes_the_cosine_past_one() -> None:
    cos = torch.tensor([1 + 1e-15, -1 - 1e-15, 0.6, -0.8], dtype=torch.float64)
    torch.testing.assert_close(sine_of_angle(cos), torch.tensor([0.0, 0.0, 0.8, 0.6]).double())
