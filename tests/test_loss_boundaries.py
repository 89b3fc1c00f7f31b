"""Decision boundaries are declared by each loss (``Loss.decision_boundaries``), not probed.

The oracle below is the explorer's former ``isinstance`` chain, frozen as it was (2026-11-29):
every loss that existed then must draw exactly the same lines through its own method.
"""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

from dml_core import LOSSES
from dml_core.analysis import loss_curves as LC
from dml_core.losses import Loss, LossOutput, anchor, memory, pair, proxy, similarity, triplet
from dml_core.losses.base import Boundary
from dml_core.tuples import Tuples, all_pairs

ROOT = Path(__file__).resolve().parents[1]
CONTEXT = {"num_classes": 2, "embedding_dim": 8}
# The losses the frozen chain knew, with a non-default setting each (plus the defaults).
SETTINGS: dict[str, list[dict]] = {
    "contrastive": [{}, {"pos_margin": 0.3, "neg_margin": 1.4}],
    "binomial_deviance": [{}, {"beta": -0.4}],
    "margin": [{}, {"alpha": 0.35, "beta": 0.9}],
    "triplet": [{}, {"margin": 0.7, "soft": True}],
    "triplet_network": [{}, {"objective": "nll"}],
    "quadruplet": [{}, {"alpha1": 0.6, "alpha2": 0.25}],
    "lifted_structure": [{}, {"neg_margin": 0.7}],
    "n_pair": [{}],
    "histogram": [{}, {"num_bins": 37}],
    "multi_similarity": [{}, {"lam": 0.3}],
    "circle": [{}, {"m": 0.4}],
    "normalized_softmax": [{}],
    "proxy_nca": [{}],
    "proxy_anchor": [{}, {"margin": 0.3}],
    "cross_batch_memory": [{}, {"loss": "triplet"}, {"loss": "multi_similarity"}],
}
# Labels fixed on purpose since: a proxy loss's tie is between proxies, not pairs.
RELABELLED = {"d(a,p) = d(a,n)": "d(x, own) = d(x, other)"}


def _line(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    inside = (x >= 0) & (x <= 2) & (y >= 0) & (y <= 2)
    return np.where(inside, x, np.nan), np.where(inside, y, np.nan)


def _from_similarity(label: str, s_p: np.ndarray, s_n: np.ndarray) -> Boundary:
    inside = (np.abs(s_p) <= 1) & (np.abs(s_n) <= 1)
    s_p, s_n = np.where(inside, s_p, np.nan), np.where(inside, s_n, np.nan)
    return Boundary(label, np.sqrt(2.0 - 2.0 * s_p), np.sqrt(2.0 - 2.0 * s_n))


def old_boundaries(loss: Loss, num: int = 401) -> tuple[Boundary, ...]:
    """The former ``loss_curves.decision_boundaries``, verbatim but for the names."""
    t = np.linspace(0.0, 2.0, num)
    full = np.full_like(t, 1.0)

    def vertical(label: str, d: float) -> Boundary:
        return Boundary(label, *_line(d * full, t))

    def horizontal(label: str, d: float) -> Boundary:
        return Boundary(label, *_line(t, d * full))

    def threshold(label: str, s: float) -> list[Boundary]:
        d = math.sqrt(max(2.0 - 2.0 * s, 0.0))
        return [vertical(f"s_p = {label}", d), horizontal(f"s_n = {label}", d)]

    diagonal = Boundary("d(a,p) = d(a,n)", t, t)
    if isinstance(loss, memory.CrossBatchMemory):
        return old_boundaries(loss.inner, num)
    if isinstance(loss, triplet.TripletLoss):
        return (Boundary("d(a,n) = d(a,p) + alpha", *_line(t, t + loss.margin)),)
    if isinstance(loss, anchor.LiftedStructureLoss):
        return (Boundary("d(a,n) = d(a,p) + alpha", *_line(t, t + loss.neg_margin)),)
    if isinstance(loss, triplet.QuadrupletLoss):
        lines = [("alpha1", loss.alpha1), ("alpha2", loss.alpha2)]
        return tuple(
            Boundary(f"d(a,n)^2 = d(a,p)^2 + {k}", *_line(t, np.sqrt(t**2 + a))) for k, a in lines
        )
    if isinstance(loss, pair.ContrastiveLoss):
        pos = [vertical("d(a,p) = m_pos", loss.pos_margin)] if loss.pos_margin > 0 else []
        return (*pos, horizontal("d(a,n) = m_neg", loss.neg_margin))
    if isinstance(loss, pair.MarginLoss):
        beta = float(loss.beta.detach().mean())
        return (
            vertical("d(a,p) = beta - alpha", beta - loss.alpha),
            horizontal("d(a,n) = beta + alpha", beta + loss.alpha),
        )
    if isinstance(loss, pair.BinomialDevianceLoss):
        return tuple(threshold("beta", loss.beta))
    if isinstance(loss, similarity.MultiSimilarityLoss):
        return tuple(threshold("lambda", loss.lam))
    if isinstance(loss, proxy.ProxyAnchorLoss):
        return (
            vertical("cos(x, own) = delta", math.sqrt(2.0 - 2.0 * loss.margin)),
            horizontal("cos(x, other) = -delta", math.sqrt(2.0 + 2.0 * loss.margin)),
        )
    if isinstance(loss, similarity.CircleLoss):
        r = math.sqrt(2.0) * loss.m
        angle = np.linspace(np.pi, 2 * np.pi, num)
        circle = _from_similarity(
            "circle: s_n^2 + (s_p - 1)^2 = 2 m^2", 1.0 + r * np.sin(angle), r * np.cos(angle)
        )
        s_n = np.linspace(-1.0, 1.0, num)
        return circle, _from_similarity("linear: s_p - s_n = m", s_n + loss.m, s_n)
    if isinstance(
        loss,
        anchor.NPairLoss | anchor.HistogramLoss | proxy.ProxyLoss | triplet.TripletNetworkLoss,
    ):
        return (diagonal,)
    return ()


CASES = [(name, params) for name, settings in SETTINGS.items() for params in settings]


def test_the_frozen_chain_covers_every_loss_it_knew() -> None:
    assert set(SETTINGS) <= set(LOSSES), "a loss of the frozen chain left the registry"


@pytest.mark.parametrize(("name", "params"), CASES, ids=[f"{n}-{p}" for n, p in CASES])
@pytest.mark.parametrize("num", [401, 21])
def test_declared_boundaries_equal_the_former_isinstance_chain(
    name: str, params: dict, num: int
) -> None:
    loss = LOSSES.create(name, CONTEXT, **params)
    new, old = loss.decision_boundaries(num), old_boundaries(loss, num)
    assert old, "the frozen chain drew nothing: the comparison would be vacuous"
    assert len(new) == len(old)
    relabel = RELABELLED if LOSSES[name].kind == "classes" else {}
    for b_new, b_old in zip(new, old, strict=True):
        assert b_new.label == relabel.get(b_old.label, b_old.label)
        np.testing.assert_array_equal(b_new.d_ap, b_old.d_ap)  # bit for bit, NaN gaps included
        np.testing.assert_array_equal(b_new.d_an, b_old.d_an)
    assert [b.label for b in LC.decision_boundaries(loss, num)] == [b.label for b in new]


@pytest.mark.parametrize("name", ["triplet", "quadruplet"])
def test_triplet_family_boundary_is_its_negative_boundary(name: str) -> None:
    loss = LOSSES.create(name, CONTEXT, **SETTINGS[name][1])
    first = loss.decision_boundaries(41)[0]
    ok = np.isfinite(first.d_an)
    expected = loss.negative_boundary(torch.from_numpy(first.d_ap[ok])).numpy()
    np.testing.assert_allclose(first.d_an[ok], expected, rtol=1e-15)


class Plain(Loss):
    """A loss that declares nothing but ``forward``."""

    def forward(self, emb: Tensor, labels: Tensor, tuples: Tuples | None = None) -> LossOutput:
        zero = emb.sum() * 0
        return LossOutput(zero, zero[None], all_pairs(labels), zero[None] > 0, zero, zero)


class Declared(Plain):
    """A new loss that brings its own boundary: the explorer draws it with no code of its own."""

    def decision_boundaries(self, num: int = 401) -> tuple[Boundary, ...]:
        return (Boundary.horizontal("d(a,n) = 0.9", 0.9, num),)


def test_default_is_none_and_a_new_loss_brings_its_own() -> None:
    assert Plain().decision_boundaries() == ()
    assert LC.decision_boundaries(Plain()) == ()
    (line,) = LC.decision_boundaries(Declared(), num=5)
    assert line.label == "d(a,n) = 0.9"
    np.testing.assert_array_equal(line.d_an, 0.9)
    np.testing.assert_array_equal(line.d_ap, np.linspace(0, 2, 5))


def test_the_explorer_has_no_per_loss_code() -> None:
    """No ``isinstance`` and no loss class named in the explorer's analysis and figures."""
    classes = {
        cls.__name__
        for module in (anchor, memory, pair, proxy, triplet)
        for cls in vars(module).values()
        if isinstance(cls, type) and issubclass(cls, Loss) and cls.__module__ == module.__name__
    }
    for rel in ("dml_core/analysis/loss_curves.py", "dml_core/figures/losses.py"):
        tree = ast.parse((ROOT / rel).read_text())
        calls = [
            ast.unparse(node)
            for node in ast.walk(tree)
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "isinstance"
        ]
        named = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
        named |= {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
        assert not [c for c in calls if any(name in c for name in classes)], f"{rel}: {calls}"
        assert not named & classes, f"{rel} names {named & classes}"
