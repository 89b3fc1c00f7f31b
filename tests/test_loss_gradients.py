"""Value and gradient of the losses PML lacks, against float64 loops over the papers' equations.

Each reference below is written from its paper, one tuple at a time with scalar torch
operations (no distance matrix, no masks, no reduction helper), so autograd through it gives
an independent gradient; the losses are fed random subsets of all tuples, as a miner would.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from dml_core import LOSSES, Pairs, Triplets
from dml_core.tuples import all_pairs, all_triplets


def batch(seed: int, B: int, D: int, classes: int) -> tuple[Tensor, Tensor, torch.Generator]:
    gen = torch.Generator().manual_seed(seed)
    emb = torch.randn(B, D, generator=gen, dtype=torch.float64).requires_grad_()
    labels = (torch.arange(B) % classes)[torch.randperm(B, generator=gen)]
    return emb, labels, gen


def half(columns: tuple[Tensor, ...], gen: torch.Generator) -> tuple[Tensor, ...]:
    """A random half of the rows of equal-length index columns (order kept)."""
    keep = torch.rand(len(columns[0]), generator=gen) < 0.5
    return tuple(c[keep] for c in columns)


def dist(x: Tensor, y: Tensor) -> Tensor:
    """Euclidean distance of two vectors."""
    return ((x - y) ** 2).sum().sqrt()


def value_and_grad(loss: Tensor, emb: Tensor) -> tuple[float, Tensor]:
    (grad,) = torch.autograd.grad(loss, emb, retain_graph=True)
    return float(loss.detach()), grad


def assert_same(ours: Tensor, reference: Tensor, emb: Tensor) -> None:
    """Equal in value and in the gradient with respect to the embeddings."""
    v_ours, g_ours = value_and_grad(ours, emb)
    v_ref, g_ref = value_and_grad(reference, emb)
    assert v_ours == pytest.approx(v_ref, rel=1e-10, abs=1e-12)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-8, atol=1e-10)


# --- binomial deviance (Yi, Lei, Liao, Li. ICPR 2014, Eq. 5) -------------------------------


def binomial_deviance_reference(
    emb: Tensor, pairs: Pairs, alpha: float, beta: float, C: float
) -> Tensor:
    """sum_ij W_ij log(1 + e^{-alpha (s_ij - beta) m_ij}); m = 1 / -C, W = 1 / #pairs of a kind."""

    def cosine(i: int, j: int) -> Tensor:
        x, y = emb[i], emb[j]
        return (x * y).sum() / ((x * x).sum().sqrt() * (y * y).sum().sqrt())

    def term(i: int, j: int, m: float) -> Tensor:
        return torch.log(1 + torch.exp(-alpha * (cosine(i, j) - beta) * m))

    a1, p, a2, n = (t.tolist() for t in pairs)
    pos = [term(i, j, 1.0) for i, j in zip(a1, p, strict=True)]
    neg = [term(i, j, -C) for i, j in zip(a2, n, strict=True)]
    return sum(pos) / len(pos) + sum(neg) / len(neg)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_binomial_deviance_value_and_gradient(seed: int) -> None:
    emb, labels, gen = batch(seed, B=10, D=3, classes=3)
    alpha, beta, C = 2.5, 0.3, 7.0
    every = all_pairs(labels)
    pairs = Pairs(*half(every[:2], gen), *half(every[2:], gen))  # positives, negatives
    out = LOSSES.create("binomial_deviance", alpha=alpha, beta=beta, C=C)(emb, labels, pairs)
    assert_same(out.loss, binomial_deviance_reference(emb, pairs, alpha, beta, C), emb)


# --- Triplet Network (Hoffer, Ailon. SIMBAD 2015, Eq. 1-2) ---------------------------------


def triplet_network_reference(emb: Tensor, triplets: Triplets, objective: str) -> Tensor:
    """Mean over triplets of ||(d_+, d_- - 1)||^2 (mse) or -log d_- (nll), softmax of d's."""
    terms = []
    for a, p, n in zip(*(t.tolist() for t in triplets), strict=True):
        e_p, e_n = torch.exp(dist(emb[a], emb[p])), torch.exp(dist(emb[a], emb[n]))
        d_plus, d_minus = e_p / (e_p + e_n), e_n / (e_p + e_n)
        terms.append(d_plus**2 + (d_minus - 1) ** 2 if objective == "mse" else -torch.log(d_minus))
    return sum(terms) / len(terms)


@pytest.mark.parametrize("objective", ["mse", "nll"])
@pytest.mark.parametrize("seed", [0, 1])
def test_triplet_network_value_and_gradient(objective: str, seed: int) -> None:
    emb, labels, gen = batch(10 + seed, B=9, D=2, classes=3)
    emb_scaled = emb * 0.4  # distances around 1: the softmax is neither flat nor saturated
    triplets = Triplets(*half(tuple(all_triplets(labels)), gen))
    out = LOSSES.create("triplet_network", objective=objective)(emb_scaled, labels, triplets)
    assert_same(out.loss, triplet_network_reference(emb_scaled, triplets, objective), emb)


# --- quadruplet (Chen, Chen, Zhang, Huang. CVPR 2017, Eq. 5) -------------------------------


def quadruplet_reference(
    emb: Tensor,
    labels: Tensor,
    triplets: Triplets,
    second: Tensor,
    alpha1: float,
    alpha2: float,
) -> tuple[Tensor, list[float]]:
    """Terms [d_ap^2 - d_an1^2 + alpha1]_+ + [d_ap^2 - d_n1n2^2 + alpha2]_+ and their mean > 0.

    ``second[i]`` is triplet i's n2 (-1: the batch has no third class, only the first hinge).
    """
    terms = []
    for a, p, n, m in zip(*(t.tolist() for t in triplets), second.tolist(), strict=True):
        d_ap2 = dist(emb[a], emb[p]) ** 2
        term = torch.clamp(d_ap2 - dist(emb[a], emb[n]) ** 2 + alpha1, min=0)
        if m >= 0:
            assert labels[m] != labels[a]
            assert labels[m] != labels[n]
            term = term + torch.clamp(d_ap2 - dist(emb[n], emb[m]) ** 2 + alpha2, min=0)
        terms.append(term)
    active = [t for t in terms if float(t.detach()) > 0]
    return sum(active) / len(active), [float(t.detach()) for t in terms]


@pytest.mark.parametrize(
    ("classes", "seed"),
    [(4, 0), (4, 1), (3, 2), (2, 3)],
    ids=["4-classes", "4-classes-b", "3-classes", "no-third-class"],
)
def test_quadruplet_value_and_gradient(classes: int, seed: int) -> None:
    emb, labels, gen = batch(20 + seed, B=12, D=3, classes=classes)
    emb_scaled = emb * 0.5  # squared distances comparable to the margins: both hinges matter
    alpha1, alpha2 = 0.8, 0.3
    triplets = Triplets(*half(tuple(all_triplets(labels)), gen))
    loss = LOSSES.create("quadruplet", alpha1=alpha1, alpha2=alpha2, seed=seed)
    twin = LOSSES.create("quadruplet", alpha1=alpha1, alpha2=alpha2, seed=seed)
    second = twin.second_negatives(labels, triplets.anchor, triplets.neg)  # the same draw
    assert bool((second < 0).all()) == (classes == 2)
    out = loss(emb_scaled, labels, triplets)
    reference, terms = quadruplet_reference(emb_scaled, labels, triplets, second, alpha1, alpha2)
    torch.testing.assert_close(out.terms.detach(), torch.tensor(terms, dtype=torch.float64))
    assert_same(out.loss, reference, emb)


def test_the_reference_loops_see_both_hinges_active_and_inactive() -> None:
    """Guard against vacuous comparisons: the chosen scales put tuples on both sides."""
    emb, labels, gen = batch(20, B=12, D=3, classes=4)
    triplets = Triplets(*half(tuple(all_triplets(labels)), gen))
    second = LOSSES.create("quadruplet", seed=0).second_negatives(
        labels, triplets.anchor, triplets.neg
    )
    x = emb.detach() * 0.5
    a, p, n = triplets
    d_ap2 = ((x[a] - x[p]) ** 2).sum(1)
    first = d_ap2 - ((x[a] - x[n]) ** 2).sum(1) + 0.8
    pair = d_ap2 - ((x[n] - x[second]) ** 2).sum(1) + 0.3
    for hinge in (first, pair):
        assert (hinge > 0).any()
        assert (hinge < 0).any()
    assert not math.isclose(float((first > 0).float().mean()), 1.0)
