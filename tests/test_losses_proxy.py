"""Tests for dml_core.losses.proxy and dml_core.losses.memory (CPU, float64 against PML)."""

from __future__ import annotations

import pytest
import torch
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning.distances import LpDistance

from dml_core import LOSSES, ConfigError, LossOutput
from dml_core.geometry import cosine_to_distance

B, D, C = 12, 5, 4
CONTEXT = {"num_classes": C, "embedding_dim": D}
PROXY_LOSSES = ["normalized_softmax", "proxy_nca", "proxy_anchor"]


def _batch(seed: int = 0, n: int = B) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(n, D, generator=g, dtype=torch.float64)
    labels = torch.randint(0, C, (n,), generator=g)
    return emb, labels


@pytest.mark.parametrize("name", PROXY_LOSSES)
def test_builds_with_defaults_and_gradients_reach_embeddings_and_proxies(name: str) -> None:
    torch.manual_seed(0)
    loss_fn = LOSSES.create(name, CONTEXT)
    assert LOSSES[name].kind == "classes"
    assert loss_fn.proxies.shape == (C, D)
    assert any(p is loss_fn.proxies for p in loss_fn.parameters())
    emb, labels = _batch()
    emb = emb.float().requires_grad_()
    out = loss_fn(emb, labels)
    assert isinstance(out, LossOutput)
    assert out.loss.shape == ()
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert emb.grad is not None
    assert emb.grad.abs().sum() > 0
    assert loss_fn.proxies.grad is not None
    assert loss_fn.proxies.grad.abs().sum() > 0
    n_terms = C if name == "proxy_anchor" else B
    assert out.terms.shape == out.active.shape == (n_terms,)
    assert out.pos_dist.shape == (B,)
    assert out.neg_dist.shape == (B * (C - 1),)
    assert bool(((out.pos_dist >= 0) & (out.pos_dist <= 2)).all())


@pytest.mark.parametrize("name", PROXY_LOSSES)
def test_miner_tuples_are_ignored(name: str) -> None:
    torch.manual_seed(0)
    loss_fn = LOSSES.create(name, CONTEXT)
    emb, labels = _batch()
    some = (torch.tensor([0]), torch.tensor([1]), torch.tensor([2]))
    assert torch.equal(loss_fn(emb.float(), labels).loss, loss_fn(emb.float(), labels, some).loss)


@pytest.mark.parametrize(
    ("name", "field", "value"),
    [
        ("normalized_softmax", "temperature", 0.0),
        ("proxy_nca", "softmax_scale", -1.0),
        ("proxy_anchor", "alpha", 0.0),
        ("proxy_anchor", "margin", 2.0),
        ("cross_batch_memory", "memory_size", 0),
        ("cross_batch_memory", "loss", "lifted"),
    ],
)
def test_bad_params_name_the_field(name: str, field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"'{field}'"):
        LOSSES.create(name, CONTEXT, **{field: value})


def test_labels_outside_the_classes_are_a_clear_error() -> None:
    loss_fn = LOSSES.create("proxy_nca", CONTEXT)
    with pytest.raises(ValueError, match=r"labels in \[0, 4\)"):
        loss_fn(torch.randn(3, D), torch.tensor([0, 1, C]))


def _pml_proxy_loss(name: str, ours: torch.nn.Module, params: dict) -> torch.nn.Module:
    if name == "normalized_softmax":
        theirs = pml_losses.NormalizedSoftmaxLoss(C, D, **params).double()
        with torch.no_grad():
            theirs.W.copy_(ours.proxies.T)  # PML stores the weights as (D, C)
        return theirs
    cls = pml_losses.ProxyNCALoss if name == "proxy_nca" else pml_losses.ProxyAnchorLoss
    theirs = cls(C, D, **params).double()
    with torch.no_grad():
        theirs.proxies.copy_(ours.proxies)
    return theirs


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("normalized_softmax", {}),
        ("normalized_softmax", {"temperature": 0.3}),
        ("proxy_nca", {}),
        ("proxy_nca", {"softmax_scale": 8.0}),
        ("proxy_anchor", {}),
        ("proxy_anchor", {"alpha": 4.0, "margin": 0.3}),
    ],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_pytorch_metric_learning(name: str, params: dict, seed: int) -> None:
    torch.manual_seed(seed)
    ours = LOSSES.create(name, CONTEXT, **params).double()
    theirs = _pml_proxy_loss(name, ours, params)
    emb, labels = _batch(seed)
    emb_ours, emb_theirs = emb.clone().requires_grad_(), emb.clone().requires_grad_()
    loss_ours = ours(emb_ours, labels).loss
    loss_theirs = theirs(emb_theirs, labels)
    loss_ours.backward()
    loss_theirs.backward()
    theirs_grad = theirs.W.grad.T if name == "normalized_softmax" else theirs.proxies.grad
    torch.testing.assert_close(loss_ours, loss_theirs, rtol=0, atol=1e-5)
    torch.testing.assert_close(emb_ours.grad, emb_theirs.grad, rtol=0, atol=1e-5)
    torch.testing.assert_close(ours.proxies.grad, theirs_grad, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", PROXY_LOSSES)
def test_curve_is_the_loss_of_one_sample_against_two_proxies(name: str) -> None:
    # A batch of one sample with two classes: its loss is the curve at its two distances.
    ours = LOSSES.create(name, {"num_classes": 2, "embedding_dim": 3}).double()
    emb = torch.tensor([[0.3, -1.0, 0.5]], dtype=torch.float64)
    out = ours(emb, torch.tensor([0]))
    d_ap, d_an = out.pos_dist, out.neg_dist
    # proxy-anchor: the own proxy's positive part plus the other proxy's negative part.
    torch.testing.assert_close(ours.curve(d_ap, d_an), out.terms.sum().reshape(1))
    grid = ours.curve(torch.linspace(0, 2, 7)[:, None], torch.linspace(0, 2, 5)[None, :])
    assert grid.shape == (7, 5)
    assert bool(torch.isfinite(grid).all())


def test_proxy_anchor_distance_lines() -> None:
    lines = LOSSES.create("proxy_anchor", CONTEXT, margin=0.1).distance_lines()
    expected = cosine_to_distance(torch.tensor([0.1, -0.1], dtype=torch.float64)).tolist()
    assert sorted(lines.values()) == pytest.approx(expected)
    assert LOSSES.create("proxy_nca", CONTEXT).distance_lines() == {}


def test_cross_batch_memory_matches_pytorch_metric_learning_over_three_batches() -> None:
    # memory 20 with batches of 8: the third batch wraps around the queue.
    ours = LOSSES.create("cross_batch_memory", CONTEXT, memory_size=20)
    inner = pml_losses.ContrastiveLoss(distance=LpDistance(normalize_embeddings=False))
    theirs = pml_losses.CrossBatchMemory(inner, D, memory_size=20)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        emb = 0.5 * torch.randn(8, D, generator=g, dtype=torch.float64)
        labels = torch.randint(0, 3, (8,), generator=g)
        emb_ours, emb_theirs = emb.clone().requires_grad_(), emb.clone().requires_grad_()
        out = ours(emb_ours, labels)
        loss_theirs = theirs(emb_theirs, labels)
        out.loss.backward()
        loss_theirs.backward()
        torch.testing.assert_close(out.loss, loss_theirs, rtol=0, atol=1e-5)
        torch.testing.assert_close(emb_ours.grad, emb_theirs.grad, rtol=0, atol=1e-5)
    assert ours.filled
    assert ours.queue_idx == 4
    # Pairs run from the batch (indices < 8) to the queue (indices >= 8), never to oneself.
    a1, p, a2, n = out.tuples
    assert bool((a1 < 8).all() and (a2 < 8).all() and (p >= 8).all() and (n >= 8).all())
    own_slot = torch.arange(16, 24) % 20  # where the third batch was written
    assert not bool((p - 8 == own_slot[a1]).any())


def test_cross_batch_memory_with_mined_tuples_and_batch_larger_than_memory() -> None:
    ours = LOSSES.create("cross_batch_memory", CONTEXT, memory_size=16)
    emb, labels = _batch(n=8)
    emb = emb.requires_grad_()
    mined = (torch.tensor([0]), torch.tensor([1]), torch.tensor([2]))
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    out = ours(emb, labels, mined)  # queue holds only this batch: exactly the mined pairs
    assert out.tuples.anchor_pos.tolist() == [0]
    assert out.tuples.pos.tolist() == [8 + 1]
    assert out.tuples.neg.tolist() == [8 + 2]
    out.loss.backward()
    assert emb.grad is not None
    with pytest.raises(ConfigError, match="'memory_size'"):
        ours(torch.randn(17, D), torch.zeros(17, dtype=torch.long))


def test_cross_batch_memory_resolves_its_inner_loss() -> None:
    ours = LOSSES.create("cross_batch_memory", CONTEXT, loss="triplet", memory_size=32)
    emb, labels = _batch()
    out = ours(emb.float(), labels)
    assert type(ours.inner) is LOSSES["triplet"].build
    assert torch.isfinite(out.loss)
    assert list(ours.parameters()) == list(ours.inner.parameters())
