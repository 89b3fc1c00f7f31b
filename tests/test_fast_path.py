"""The fast paths compute what the plain paths compute: same tuples (as sets), same loss."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pytorch_metric_learning.distances import LpDistance
from pytorch_metric_learning.losses import TripletMarginLoss
from pytorch_metric_learning.miners import TripletMarginMiner
from torch import nn

from dml_core.bench.pml_loop import enumerated_semi_hard
from dml_core.config import make_config
from dml_core.geometry import pairwise_distances
from dml_core.losses.triplet import TripletLoss
from dml_core.miners import HardMiner, SemiHardMiner
from dml_core.nets import build_net
from dml_core.train import (
    EXACT_PATHS,
    FAST_PATHS,
    FusedSemiHardTriplet,
    Trainer,
    fused_path,
    native_bf16,
    pool_before_relu,
)
from dml_core.tuples import all_triplets

RAW = LpDistance(normalize_embeddings=False)


def _as_set(*columns: torch.Tensor) -> set[tuple[int, ...]]:
    return set(zip(*(c.tolist() for c in columns), strict=True))


def _pk(P: int = 8, K: int = 32, dim: int = 16, seed: int = 0, spread: float = 0.0):
    """A P x K batch of unit vectors; ``spread`` > 0 pulls classes apart (a trained net)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(P).repeat_interleave(K)
    emb = torch.randn(P * K, dim, generator=g) + spread * torch.randn(P, dim, generator=g)[labels]
    return torch.nn.functional.normalize(emb, dim=1), labels


def _codes(triplets, size: int, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Triplets as sorted int64 codes a B^2 + p B + n: equal codes = equal sets (fast)."""
    a, p, n = triplets
    codes = (a * size + p) * size + n
    return (codes if keep is None else codes[keep]).sort().values


def _odd_batch(labels: list[int], seed: int, integer: bool) -> tuple[torch.Tensor, torch.Tensor]:
    emb = torch.randn(len(labels), 3, generator=torch.Generator().manual_seed(seed))
    return ((emb * 1.5).round() if integer else emb), torch.tensor(labels)


@pytest.mark.parametrize("spread", [0.0, 1.0, 3.0])
@pytest.mark.parametrize("margin", [0.1, 0.2, 0.5])
def test_band_semi_hard_miner_mines_the_enumerated_triplets(spread: float, margin: float) -> None:
    emb, labels = _pk(spread=spread)
    B = len(labels)
    dist = pairwise_distances(emb)
    fast = SemiHardMiner(margin)(emb, labels)
    plain = enumerated_semi_hard(dist, labels, margin)
    assert len(fast.anchor) == len(plain.anchor)
    assert torch.equal(_codes(fast, B), _codes(plain, B))
    # PML keeps d(a,n) - d(a,p) <= margin and measures distances its own way: compare away
    # from the margin boundary, as tests/test_miners.py does.
    pml = TripletMarginMiner(margin, type_of_triplets="semihard", distance=RAW)(emb, labels)

    def off_boundary(t):
        return (dist[t[0], t[2]] - dist[t[0], t[1]] - margin).abs() > 1e-5

    assert torch.equal(_codes(fast, B, off_boundary(fast)), _codes(pml, B, off_boundary(pml)))


@settings(max_examples=80, deadline=None)
@given(
    labels=st.lists(st.integers(0, 3), min_size=1, max_size=12),
    seed=st.integers(0, 2**16),
    integer=st.booleans(),
    margin=st.sampled_from([0.1, 0.2, 1.0]),
)
def test_band_miners_match_enumeration_on_odd_batches_with_ties(
    labels: list[int], seed: int, integer: bool, margin: float
) -> None:
    emb, y = _odd_batch(labels, seed, integer)
    dist = pairwise_distances(emb)
    every = all_triplets(y)
    d_ap, d_an = dist[every.anchor, every.pos], dist[every.anchor, every.neg]
    hard = _as_set(*(t[d_an <= d_ap] for t in every))
    assert _as_set(*HardMiner()(emb, y)) == hard
    assert _as_set(*SemiHardMiner(margin)(emb, y)) == _as_set(
        *enumerated_semi_hard(dist, y, margin)
    )


@pytest.mark.parametrize(
    ("miner_margin", "loss_margin"), [(0.2, 0.2), (0.2, 0.1), (0.1, 0.3), (1.0, 0.5)]
)
@pytest.mark.parametrize("spread", [0.0, 2.0])
def test_fused_loss_equals_miner_then_loss_and_pml(
    miner_margin: float, loss_margin: float, spread: float
) -> None:
    emb, labels = _pk(spread=spread)
    emb.requires_grad_()  # float32, as in training
    loss, mined, active = FusedSemiHardTriplet(miner_margin, loss_margin)(emb, labels)
    (grad,) = torch.autograd.grad(loss, emb)

    tuples = SemiHardMiner(miner_margin)(emb, labels)
    plain = TripletLoss(loss_margin)(emb, labels, tuples)
    (plain_grad,) = torch.autograd.grad(plain.loss, emb)
    assert int(mined) == len(tuples.anchor) > 0
    assert int(active) == int(plain.active.sum())
    torch.testing.assert_close(loss, plain.loss, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grad, plain_grad, rtol=1e-4, atol=1e-7)

    pml_tuples = TripletMarginMiner(miner_margin, type_of_triplets="semihard", distance=RAW)(
        emb, labels
    )
    pml = TripletMarginLoss(margin=loss_margin, distance=RAW)(emb, labels, pml_tuples)
    torch.testing.assert_close(loss, pml, rtol=1e-5, atol=1e-7)


def test_fused_loss_without_semi_hard_triplets_is_zero_with_a_gradient_path() -> None:
    emb, labels = _pk(P=4, K=4, dim=8, spread=50.0)  # classes far apart: nothing to mine
    emb.requires_grad_()
    loss, mined, active = FusedSemiHardTriplet(0.2, 0.2)(emb, labels)
    assert int(mined) == int(active) == 0
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert emb.grad is not None


def test_fused_path_is_used_only_where_it_is_exact() -> None:
    assert isinstance(fused_path(TripletLoss(0.2), SemiHardMiner(0.3)), FusedSemiHardTriplet)
    assert fused_path(TripletLoss(0.2, soft=True), SemiHardMiner(0.2)) is None
    assert fused_path(TripletLoss(0.2), HardMiner()) is None


@pytest.mark.parametrize("net", ["mlp", "convnet"])
def test_trainer_fast_and_plain_steps_agree(net: str) -> None:
    cfg = make_config(
        net=net, steps=3, probe_size=100, embedding_dim=16, classes_per_batch=4,
        samples_per_class=8, device="cpu",
    )  # fmt: skip
    fast, plain = Trainer(cfg, fast=EXACT_PATHS), Trainer(cfg, fast=())
    assert fast.fused is not None
    assert plain.fused is None
    for _ in range(3):
        a, b = fast.train_step(), plain.train_step()
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-6)
        assert a["active_fraction"] == pytest.approx(b["active_fraction"], abs=1e-3)
        assert a.get("kind_shares", {}).keys() == b.get("kind_shares", {}).keys()
        for kind, share in b.get("kind_shares", {}).items():
            assert a["kind_shares"][kind] == pytest.approx(share, abs=1e-3)
    for p, q in zip(fast.net.parameters(), plain.net.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-4)


def test_pool_before_relu_keeps_outputs_gradients_and_state_dict_keys() -> None:
    torch.manual_seed(0)
    plain = build_net("convnet", (1, 28, 28), 16)
    fast = copy.deepcopy(plain)
    pool_before_relu(fast.trunk)
    assert [type(m) for m in fast.trunk][3:5] == [nn.MaxPool2d, nn.ReLU]
    assert fast.state_dict().keys() == plain.state_dict().keys()
    x = torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8)
    out_plain, out_fast = plain(x), fast(x)
    torch.testing.assert_close(out_fast, out_plain, rtol=0, atol=0)
    out_plain.square().sum().backward()
    out_fast.square().sum().backward()
    for p, q in zip(fast.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=0)


@pytest.mark.parametrize("net", ["mlp", "convnet"])
def test_bf16_runs_the_body_in_bfloat16_and_the_embedding_layer_in_float32(net: str) -> None:
    torch.manual_seed(0)
    model = build_net(net, (1, 28, 28), 16)
    seen: dict[str, torch.dtype] = {}

    def record(name: str, tensor: torch.Tensor) -> None:  # a hook returning None changes nothing
        seen.setdefault(name, tensor.dtype)

    first = next(m for m in model.trunk if isinstance(m, nn.Linear | nn.Conv2d))
    first.register_forward_hook(lambda m, i, o: record("first", o))
    model.trunk[-1].register_forward_pre_hook(lambda m, i: record("head_in", i[0]))
    model.trunk[-1].register_forward_hook(lambda m, i, o: record("head_out", o))
    x = torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8)
    low = model(x, low_precision=torch.bfloat16)
    assert seen == {"first": torch.bfloat16, "head_in": torch.float32, "head_out": torch.float32}
    assert low.dtype == torch.float32
    full = model(x)
    torch.testing.assert_close(low, full, rtol=0, atol=0.05)  # bf16: 8 mantissa bits
    assert not torch.equal(low, full)  # it really ran in bfloat16


def test_bf16_is_only_used_where_the_hardware_has_it(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = make_config(steps=1, probe_size=50, embedding_dim=8, device="cpu")
    monkeypatch.setattr("dml_core.train.BF16_MIN_MACS", 0)  # the net size rule: next test
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, name, lambda: False, raising=False)
    assert not native_bf16(torch.device("cpu"))
    assert not Trainer(cfg, fast=FAST_PATHS).autocast
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert native_bf16(torch.device("cpu"))
    assert Trainer(cfg, fast=FAST_PATHS).autocast
    assert not Trainer(cfg, fast=EXACT_PATHS).autocast


def test_bf16_is_only_used_for_nets_big_enough_to_gain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    small = make_config(net="convnet", steps=1, probe_size=50, device="cpu")  # 8x8 digits
    assert not Trainer(small, fast=FAST_PATHS).autocast
    monkeypatch.setattr("dml_core.train.BF16_MIN_MACS", 1000)
    assert Trainer(small, fast=FAST_PATHS).autocast


def test_bf16_training_step_stays_close_to_float32() -> None:
    cfg = make_config(
        net="convnet", steps=2, probe_size=100, embedding_dim=16, classes_per_batch=4,
        samples_per_class=8, device="cpu",
    )  # fmt: skip
    low, full = Trainer(cfg, fast=EXACT_PATHS), Trainer(cfg, fast=EXACT_PATHS)
    low.autocast = True  # whatever this CPU has: autocast runs (emulated where not native)
    a, b = low.train_step(), full.train_step()
    assert a["loss"] == pytest.approx(b["loss"], rel=0.05)
    assert a["loss"] != b["loss"]  # it really ran in bfloat16


def test_snapshots_embed_the_probe_set_in_the_training_precision() -> None:
    cfg = make_config(net="convnet", steps=1, probe_size=60, embedding_dim=16, device="cpu")
    trainer = Trainer(cfg, fast=EXACT_PATHS)
    full = trainer.snapshot({}).probe_emb
    trainer.autocast = True
    low = trainer.snapshot({}).probe_emb
    assert low.dtype == full.dtype
    np.testing.assert_allclose(low, full, atol=0.05)
    assert not np.array_equal(low, full)
