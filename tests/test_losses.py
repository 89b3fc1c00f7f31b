"""Tests for the pair, triplet and per-anchor losses (dml_core.losses.pair/triplet/anchor)."""

from __future__ import annotations

import math
import typing

import pytest
import torch
from pytorch_metric_learning import losses as pml
from pytorch_metric_learning.distances import DotProductSimilarity, LpDistance

from dml_core import LOSSES, MINERS, ConfigError, Pairs, Triplets
from dml_core.errors import field_bounds
from dml_core.losses.triplet import random_other_class
from dml_core.tuples import all_pairs, all_triplets, to_pairs

PAIR = ["contrastive", "binomial_deviance", "margin"]
TRIPLET = ["triplet", "triplet_network", "quadruplet"]
ANCHOR = ["lifted_structure", "n_pair", "histogram", "multi_similarity", "circle"]
NAMES = PAIR + TRIPLET + ANCHOR
CONTEXT = {"num_classes": 4, "embedding_dim": 8}
# Losses that go through PairLoss/TripletLossBase.forward unchanged, i.e. geometry's torch.cdist,
# which has no Half/BFloat16 kernel on CPU.


def batch(
    seed: int = 0, B: int = 16, D: int = 8, classes: int = 4, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    emb = torch.randn(B, D, generator=gen, dtype=torch.float64).to(dtype)
    labels = torch.arange(B) % classes
    return emb.requires_grad_(), labels[torch.randperm(B, generator=gen)]


def bad_value(model: type) -> tuple[str, object]:
    """A field and a value it must reject."""
    for name, field in model.model_fields.items():
        bounds = field_bounds(model, name)
        if "gt" in bounds or "ge" in bounds:
            return name, -1e9
        if typing.get_origin(field.annotation) is typing.Literal:
            return name, "bogus"
    return "bogus", 1.0


# --- shared checks ------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_builds_with_defaults_and_is_described(name: str) -> None:
    entry = LOSSES[name]
    loss = LOSSES.create(name, CONTEXT)
    assert isinstance(loss, torch.nn.Module)
    assert entry.summary
    assert entry.equation
    assert entry.paper
    assert entry.equation.isascii()
    assert entry.doc.isascii()
    assert isinstance(loss.distance_lines(), dict)


@pytest.mark.parametrize("name", NAMES)
def test_finite_loss_and_gradients_flow(name: str) -> None:
    emb, labels = batch()
    out = LOSSES.create(name, CONTEXT)(emb, labels)
    assert out.loss.shape == ()
    assert torch.isfinite(out.loss)
    assert out.terms.shape == out.active.shape
    out.loss.backward()
    assert torch.isfinite(emb.grad).all()
    assert emb.grad.abs().sum() > 0


@pytest.mark.parametrize("name", NAMES)
def test_bad_param_rejected_naming_the_field(name: str) -> None:
    field, value = bad_value(LOSSES[name].params)
    with pytest.raises(ConfigError, match=f"'{field}'"):
        LOSSES.create(name, CONTEXT, **{field: value})


def test_margin_per_class_beta_needs_num_classes() -> None:
    with pytest.raises(ConfigError, match="per_class_beta"):
        LOSSES.create("margin", per_class_beta=True)
    loss = LOSSES.create("margin", CONTEXT, per_class_beta=True, beta=0.9)
    assert loss.beta.shape == (4,)
    assert loss.extras() == pytest.approx({"beta": 0.9})
    assert loss.distance_lines() == pytest.approx(
        {"beta - alpha": 0.7, "beta": 0.9, "beta + alpha": 1.1}
    )


def test_distance_lines() -> None:
    assert LOSSES.create("contrastive").distance_lines() == {"m_neg": 1.0}
    assert LOSSES.create("contrastive", pos_margin=0.1).distance_lines() == {
        "m_pos": 0.1,
        "m_neg": 1.0,
    }
    assert LOSSES.create("multi_similarity", lam=0.5).distance_lines() == {"lambda": 1.0}
    lines = LOSSES.create("circle", m=0.25).distance_lines()
    assert lines == pytest.approx({"Delta_p": math.sqrt(0.5), "Delta_n": math.sqrt(1.5)})
    assert LOSSES.create("triplet").distance_lines() == {}


# --- against pytorch-metric-learning -------------------------------------------------------
# Parameter and reduction mapping (ours -> PML); every PML default reducer already matches ours:
#   contrastive(pos_margin, neg_margin)  -> ContrastiveLoss(pos_margin, neg_margin), plain L2
#       (AvgNonZero on the positive and the negative parts, added: our PairLoss reduction)
#   triplet(margin, soft)                -> TripletMarginLoss(margin, smooth_loss=soft), plain L2
#   margin(alpha, beta, nu, per_class)   -> MarginLoss(margin=alpha, beta, nu, learn_beta=True,
#       triplets_per_anchor="all", num_classes=C or None), plain L2 (DivisorReducer: sum over
#       triplets / number of non-zero pos and neg parts, + nu * beta)
#   lifted_structure(neg_margin)         -> LiftedStructureLoss(neg_margin, pos_margin=0), plain
#       L2 (MeanReducer over the ordered positive pairs)
#   n_pair()                             -> NPairsLoss(DotProductSimilarity(normalize=False))
#   histogram(num_bins)                  -> HistogramLoss(n_bins=num_bins), cosine
#   multi_similarity(alpha, beta, lam)   -> MultiSimilarityLoss(alpha, beta, base=lam), cosine
#       (MeanReducer over all B anchors)
#   circle(m, gamma)                     -> CircleLoss(m, gamma), cosine (AvgNonZero over anchors)
# Pair losses get our deduplicated pairs (to_pairs) as indices_tuple, because PML splits a
# triplet (a, p, n) into (a, p, a, n) without removing repeats; triplet losses get the triplets.

L2 = {"distance": LpDistance(normalize_embeddings=False)}


def pml_pair(name: str, rng: torch.Generator) -> tuple[dict, torch.nn.Module]:
    def u(low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand((), generator=rng, dtype=torch.float64))

    if name == "contrastive":
        ours = {"pos_margin": u(0, 0.5), "neg_margin": u(0.5, 3)}
        return ours, pml.ContrastiveLoss(**ours, **L2)
    if name == "triplet":
        ours = {"margin": u(0.1, 2), "soft": bool(torch.rand((), generator=rng) < 0.5)}
        return ours, pml.TripletMarginLoss(margin=ours["margin"], smooth_loss=ours["soft"], **L2)
    if name == "margin":
        per_class = bool(torch.rand((), generator=rng) < 0.5)
        ours = {"alpha": u(0.1, 1), "beta": u(1, 4), "nu": u(0, 0.5), "per_class_beta": per_class}
        theirs = pml.MarginLoss(
            margin=ours["alpha"],
            nu=ours["nu"],
            beta=ours["beta"],
            triplets_per_anchor="all",
            learn_beta=True,
            num_classes=4 if per_class else None,
            **L2,
        )
        return ours, theirs
    if name == "lifted_structure":
        ours = {"neg_margin": u(0.5, 4)}
        return ours, pml.LiftedStructureLoss(neg_margin=ours["neg_margin"], pos_margin=0, **L2)
    if name == "n_pair":
        return {}, pml.NPairsLoss(distance=DotProductSimilarity(normalize_embeddings=False))
    if name == "histogram":
        ours = {"num_bins": int(u(5, 150))}
        return ours, pml.HistogramLoss(n_bins=ours["num_bins"])
    if name == "multi_similarity":
        ours = {"alpha": u(0.5, 5), "beta": u(5, 60), "lam": u(0, 0.8)}
        theirs = pml.MultiSimilarityLoss(alpha=ours["alpha"], beta=ours["beta"], base=ours["lam"])
        return ours, theirs
    assert name == "circle"
    ours = {"m": u(0.1, 0.5), "gamma": u(10, 256)}
    return ours, pml.CircleLoss(**ours)


# Our miners whose tuples feed both implementations (semi-hard with a band wide enough that a
# batch of 14 random points has semi-hard triplets).
MINED = {"semi_hard": {"margin": 1.0}, "hard": {}, "batch_hard": {}, "multi_similarity": {}}


def mined(
    kind: str, emb: torch.Tensor, labels: torch.Tensor, rng: torch.Generator
) -> Pairs | Triplets | None:
    """No tuples, a random half of all triplets or pairs (kept in order), or a miner's tuples."""
    if kind == "none":
        return None
    if kind in MINED:
        tuples = MINERS.create(kind, **MINED[kind])(emb, labels)
        assert len(tuples[0]) > 0, f"{kind} mined nothing: the comparison would be vacuous"
        return tuples
    tuples = all_triplets(labels) if kind == "triplets" else all_pairs(labels)
    if kind == "triplets":
        keep = torch.rand(len(tuples.anchor), generator=rng) < 0.5
        return Triplets(*(t[keep] for t in tuples))
    keep_pos = torch.rand(len(tuples.pos), generator=rng) < 0.5
    keep_neg = torch.rand(len(tuples.neg), generator=rng) < 0.5
    a1, p, a2, n = tuples
    return Pairs(a1[keep_pos], p[keep_pos], a2[keep_neg], n[keep_neg])


PML_NAMES = [
    "contrastive",
    "triplet",
    "margin",
    "lifted_structure",
    "n_pair",
    "histogram",
    "multi_similarity",
    "circle",
]


@pytest.mark.filterwarnings("ignore:Using a non-tuple sequence:UserWarning")
@pytest.mark.parametrize("kind", ["none", "triplets", "pairs", *MINED])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", PML_NAMES)
def test_matches_pytorch_metric_learning(name: str, seed: int, kind: str) -> None:
    """Value and gradient equal PML's on all tuples, random subsets, and our miners' tuples."""
    rng = torch.Generator().manual_seed(100 * seed + NAMES.index(name))
    emb, labels = batch(seed, B=14, D=5, classes=4, dtype=torch.float64)
    params, theirs = pml_pair(name, rng)
    ours = LOSSES.create(name, CONTEXT, **params)
    tuples = mined(kind, emb, labels, rng)
    indices = tuples
    if tuples is not None and name not in {"triplet", "margin"}:
        indices = to_pairs(tuples)
    emb_pml = emb.detach().clone().requires_grad_()
    ours_loss = ours(emb, labels, tuples).loss
    their_loss = theirs(emb_pml, labels, indices)
    torch.testing.assert_close(ours_loss, their_loss, atol=1e-5, rtol=1e-5)
    ours_loss.backward()
    their_loss.backward()
    torch.testing.assert_close(emb.grad, emb_pml.grad, atol=1e-5, rtol=1e-5)
    if name == "margin" and params["nu"] > 0:
        torch.testing.assert_close(ours.beta.grad, theirs.beta.grad, atol=1e-5, rtol=1e-5)


# --- against loops over the papers' equations ----------------------------------------------


def test_binomial_deviance_matches_loop_reference() -> None:
    emb, labels = batch(4, B=10, D=3, classes=3, dtype=torch.float64)
    alpha, beta, C = 2.5, 0.3, 7.0
    out = LOSSES.create("binomial_deviance", alpha=alpha, beta=beta, C=C)(emb, labels)
    x = [[float(v) for v in row] for row in emb.detach()]
    pos, neg = [], []
    for i in range(len(x)):
        for j in range(len(x)):
            if i == j:
                continue
            s = sum(a * b for a, b in zip(x[i], x[j], strict=True))
            s /= math.sqrt(sum(a * a for a in x[i]) * sum(b * b for b in x[j]))
            if labels[i] == labels[j]:
                pos.append(math.log(1 + math.exp(-alpha * (s - beta))))
            else:
                neg.append(math.log(1 + math.exp(C * alpha * (s - beta))))
    assert float(out.loss.detach()) == pytest.approx(
        sum(pos) / len(pos) + sum(neg) / len(neg), rel=1e-9
    )


@pytest.mark.parametrize("objective", ["mse", "nll"])
def test_triplet_network_matches_loop_reference(objective: str) -> None:
    emb, labels = batch(5, B=9, D=2, classes=3, dtype=torch.float64)
    out = LOSSES.create("triplet_network", objective=objective)(emb, labels)
    dist = torch.cdist(emb, emb).detach()
    terms = []
    for a, p, n in zip(*all_triplets(labels), strict=True):
        e_ap, e_an = math.exp(dist[a, p]), math.exp(dist[a, n])
        d_plus, d_minus = e_ap / (e_ap + e_an), e_an / (e_ap + e_an)
        mse = d_plus**2 + (d_minus - 1) ** 2
        terms.append(mse if objective == "mse" else -math.log(d_minus))
    assert float(out.loss.detach()) == pytest.approx(sum(terms) / len(terms), rel=1e-9)


def test_quadruplet_matches_loop_reference() -> None:
    emb, labels = batch(6, B=12, D=3, classes=4, dtype=torch.float64)
    alpha1, alpha2 = 0.8, 0.3
    loss = LOSSES.create("quadruplet", alpha1=alpha1, alpha2=alpha2, seed=7)
    twin = LOSSES.create("quadruplet", alpha1=alpha1, alpha2=alpha2, seed=7)
    triplets = all_triplets(labels)
    n2 = twin.second_negatives(labels, triplets.anchor, triplets.neg)  # the same draw
    out = loss(emb, labels)
    dist = torch.cdist(emb, emb).detach()
    terms = []
    for a, p, n, m in zip(*triplets, n2, strict=True):
        assert labels[m] != labels[a]
        assert labels[m] != labels[n]
        first = max(0.0, dist[a, p] ** 2 - dist[a, n] ** 2 + alpha1)
        second = max(0.0, dist[a, p] ** 2 - dist[n, m] ** 2 + alpha2)
        terms.append(float(first + second))
    active = [t for t in terms if t > 0]
    torch.testing.assert_close(out.terms, torch.tensor(terms, dtype=torch.float64))
    assert float(out.loss.detach()) == pytest.approx(sum(active) / len(active), rel=1e-9)


def test_random_other_class_avoids_both_labels_and_covers_the_rest() -> None:
    labels = torch.tensor([5, 5, 2, 2, 2, 9, 7, 7])
    T = 4000
    ex1, ex2 = torch.full((T,), 2), torch.full((T,), 7)
    picks = random_other_class(labels, ex1, ex2, torch.rand(T))
    assert set(picks.tolist()) == {0, 1, 5}
    none = random_other_class(labels[:5], torch.tensor([5]), torch.tensor([2]), torch.rand(1))
    assert none.tolist() == [-1]


# --- curve == forward on a minimal configuration -------------------------------------------

GRID = [(0.3, 0.9), (1.1, 0.7), (0.5, 1.6), (1.2, 1.25), (0.05, 1.9)]
SPHERE = {"binomial_deviance", "histogram", "multi_similarity", "circle", "n_pair"}
PER_ANCHOR_TERM = {"margin", "n_pair", "multi_similarity", "circle", "lifted_structure"}


def on_circle(*angles: float) -> torch.Tensor:
    t = torch.tensor(angles, dtype=torch.float64)
    return torch.stack([t.cos(), t.sin()], dim=1)


def minimal_batch(name: str, d_ap: float, d_an: float):
    """Anchor 0, a positive at d_ap, a negative at d_an, and only those pairs/that triplet."""
    one, none = torch.tensor([0]), torch.tensor([], dtype=torch.int64)
    if name == "n_pair":  # anchors 0 and 2; anchor 0's negative is 2's positive (3)
        th_p, th_n = 2 * math.asin(d_ap / 2), 2 * math.asin(d_an / 2)
        emb = on_circle(0.0, th_p, math.pi, -th_n)
        return (
            emb,
            torch.tensor([0, 0, 1, 1]),
            Pairs(torch.tensor([0, 2]), torch.tensor([1, 3]), none, none),
        )
    if name == "quadruplet":  # n2 (the only sample of a third class) is d_an away from n1
        emb = torch.tensor(
            [[0.0, 0.0], [d_ap, 0.0], [-d_an, 0.0], [-d_an, d_an]], dtype=torch.float64
        )
        return emb, torch.tensor([0, 0, 1, 2]), Triplets(one, one + 1, one + 2)
    if name in SPHERE:
        emb = on_circle(0.0, 2 * math.asin(d_ap / 2), -2 * math.asin(d_an / 2))
    else:
        emb = torch.tensor([[0.0], [d_ap], [-d_an]], dtype=torch.float64)
    tuples = (
        Triplets(one, one + 1, one + 2) if name in TRIPLET else Pairs(one, one + 1, one, one + 2)
    )
    return emb, torch.tensor([0, 0, 1]), tuples


@pytest.mark.parametrize("name", NAMES)
def test_curve_equals_forward_on_a_minimal_batch(name: str) -> None:
    loss = LOSSES.create(name, CONTEXT)
    for d_ap, d_an in GRID:
        emb, labels, tuples = minimal_batch(name, d_ap, d_an)
        out = loss(emb, labels, tuples)
        value = out.terms[0] if name in PER_ANCHOR_TERM else out.loss
        curve = loss.curve(
            torch.tensor(d_ap, dtype=torch.float64), torch.tensor(d_an, dtype=torch.float64)
        )
        torch.testing.assert_close(curve, value.detach(), atol=1e-9, rtol=1e-7)


@pytest.mark.parametrize("name", NAMES)
def test_curve_is_elementwise_with_finite_gradient(name: str) -> None:
    loss = LOSSES.create(name, CONTEXT)
    d = torch.linspace(0.0, 2.0, 21)
    d_ap, d_an = torch.meshgrid(d, d, indexing="ij")
    d_ap, d_an = d_ap.clone().requires_grad_(), d_an.clone().requires_grad_()
    values = loss.curve(d_ap, d_an)
    assert values.shape == d_ap.shape
    assert torch.isfinite(values).all()
    values.sum().backward()
    assert torch.isfinite(d_ap.grad).all()
    assert torch.isfinite(d_an.grad).all()
    assert d_ap.grad.abs().sum() > 0


# --- numerical safety ------------------------------------------------------------------------


def check_finite(name: str, emb: torch.Tensor, labels: torch.Tensor) -> None:
    emb = emb.detach().requires_grad_()
    out = LOSSES.create(name, CONTEXT)(emb, labels)
    assert torch.isfinite(out.loss), out.loss
    out.loss.backward()
    assert emb.grad is not None
    assert torch.isfinite(emb.grad).all()


@pytest.mark.parametrize("name", NAMES)
def test_degenerate_batches_give_finite_loss_and_gradients(name: str) -> None:
    emb, labels = batch()
    check_finite(name, torch.zeros_like(emb), labels)
    unit = torch.nn.functional.normalize(torch.ones_like(emb), dim=1)
    check_finite(name, unit, labels)
    check_finite(name, emb, torch.zeros_like(labels))
    for D in (2, 512):
        check_finite(name, *batch(1, D=D))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", NAMES)
def test_half_precision_gives_finite_loss_and_gradients(name: str, dtype: torch.dtype) -> None:
    emb, labels = batch(dtype=dtype)
    check_finite(name, emb, labels)
    check_finite(name, torch.zeros_like(emb), labels)
