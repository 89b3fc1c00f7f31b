"""Tests for dml_core.miners: shared contract, invariants (hypothesis) and PML agreement."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pytorch_metric_learning.distances import LpDistance
from pytorch_metric_learning.miners import MultiSimilarityMiner, TripletMarginMiner
from scipy.stats import chisquare

from dml_core import MINERS, ConfigError, Pairs, Triplets
from dml_core.geometry import l2_normalize, pairwise_distances
from dml_core.tuples import all_triplets, label_masks

DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
SETTINGS = settings(max_examples=60, deadline=None)


def _pk_batch(device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(12, 8, generator=g)
    return emb.to(device), torch.arange(4).repeat_interleave(3).to(device)


def _check_valid(tuples: Pairs | Triplets, labels: torch.Tensor) -> None:
    """Indices are int64, on the labels' device, and form valid positive/negative relations."""
    for t in tuples:
        assert t.dtype == torch.int64
        assert t.device == labels.device
    if isinstance(tuples, Triplets):
        a, p, n = tuples
        a1, a2 = a, a
    else:
        a1, p, a2, n = tuples
    assert len(a1) == len(p)
    assert len(a2) == len(n)
    assert bool((a1 != p).all())
    assert bool((labels[a1] == labels[p]).all())
    assert bool((labels[a2] != labels[n]).all())


def _as_set(*columns: torch.Tensor) -> set[tuple[int, ...]]:
    return set(zip(*(c.tolist() for c in columns), strict=True))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(MINERS))
def test_every_miner_returns_valid_int64_tuples_on_the_input_device(name: str, device: str) -> None:
    miner = MINERS.create(name)
    emb, labels = _pk_batch(device)
    tuples = miner(emb, labels)
    assert isinstance(tuples, miner.tuple_type)
    assert MINERS[name].kind == ("pairs" if miner.tuple_type is Pairs else "triplets")
    _check_valid(tuples, labels)
    assert len(tuples[0]) > 0


@pytest.mark.parametrize(
    ("name", "field", "value"),
    [
        ("random", "fraction", 0.0),
        ("random", "fraction", 1.5),
        ("random", "seed", -1),
        ("distance_weighted", "cutoff", 2.0),
        ("distance_weighted", "nonzero_loss_cutoff", 0.0),
        ("multi_similarity", "epsilon", -0.1),
        ("semi_hard", "margin", 0.0),
    ],
)
def test_bad_params_name_the_field(name: str, field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"'{field}'"):
        MINERS.create(name, **{field: value})


# Small batches with random labels: singleton classes, one-class batches and, with
# ``integer=True``, rounded embeddings with exact ties and duplicate points.
batches = st.tuples(
    st.lists(st.integers(0, 3), min_size=1, max_size=10),
    st.integers(0, 2**16),
    st.booleans(),
)


def _embed(batch: tuple[list[int], int, bool], dim: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    labels, seed, integer = batch
    emb = torch.randn(len(labels), dim, generator=torch.Generator().manual_seed(seed))
    return (emb * 1.5).round() if integer else emb, torch.tensor(labels)


@SETTINGS
@given(batch=batches, name=st.sampled_from(sorted(MINERS)))
def test_no_miner_crashes_on_odd_batches(batch: tuple, name: str) -> None:
    emb, labels = _embed(batch)
    _check_valid(MINERS.create(name)(emb, labels), labels)


@SETTINGS
@given(batch=batches, margin=st.sampled_from([0.1, 0.2, 1.0]))
def test_semi_hard_matches_definition_and_pml(batch: tuple, margin: float) -> None:
    emb, labels = _embed(batch)
    a, p, n = MINERS.create("semi_hard", margin=margin)(emb, labels)
    dist = pairwise_distances(emb)
    assert bool((dist[a, p] < dist[a, n]).all())
    assert bool((dist[a, n] < dist[a, p] + margin).all())
    pml = TripletMarginMiner(
        margin, type_of_triplets="semihard", distance=LpDistance(normalize_embeddings=False)
    )
    # PML keeps d(a,n) - d(a,p) <= margin, we keep < margin: compare away from that boundary.
    every = all_triplets(labels)
    gap = dist[every.anchor, every.neg] - dist[every.anchor, every.pos] - margin
    boundary = _as_set(*(t[gap.abs() < 1e-5] for t in every))
    assert _as_set(a, p, n) - boundary == _as_set(*pml(emb, labels)) - boundary


@SETTINGS
@given(batch=batches)
def test_hard_matches_pml(batch: tuple) -> None:
    emb, labels = _embed(batch)
    pml = TripletMarginMiner(
        0.2, type_of_triplets="hard", distance=LpDistance(normalize_embeddings=False)
    )
    assert _as_set(*MINERS.create("hard")(emb, labels)) == _as_set(*pml(emb, labels))


@SETTINGS
@given(batch=batches)
def test_batch_hard_picks_the_extremes(batch: tuple) -> None:
    emb, labels = _embed(batch)
    a, p, n = MINERS.create("batch_hard")(emb, labels)
    dist = pairwise_distances(emb).tolist()
    ys = labels.tolist()
    expected_anchors = []
    for i, yi in enumerate(ys):
        pos = [dist[i][j] for j, yj in enumerate(ys) if yj == yi and j != i]
        neg = [dist[i][j] for j, yj in enumerate(ys) if yj != yi]
        if pos and neg:
            expected_anchors.append(i)
            k = expected_anchors.index(i)
            assert dist[i][p[k]] == max(pos)
            assert dist[i][n[k]] == min(neg)
    assert a.tolist() == expected_anchors


@SETTINGS
@given(batch=batches, epsilon=st.sampled_from([0.0, 0.1, 0.5]))
def test_multi_similarity_matches_pml(batch: tuple, epsilon: float) -> None:
    emb, labels = _embed(batch)
    ours = MINERS.create("multi_similarity", epsilon=epsilon)(emb, labels)
    a1, p, a2, n = MultiSimilarityMiner(epsilon)(emb, labels)
    assert _as_set(ours.anchor_pos, ours.pos) == _as_set(a1, p)
    assert _as_set(ours.anchor_neg, ours.neg) == _as_set(a2, n)


@SETTINGS
@given(batch=batches, dim=st.integers(2, 8), seed=st.integers(0, 100))
def test_distance_weighted_draws_only_eligible_negatives(batch: tuple, dim: int, seed: int) -> None:
    emb, labels = _embed(batch, dim)
    miner = MINERS.create("distance_weighted", seed=seed)
    a, p, n = miner(emb, labels)
    pos_mask, neg_mask = label_masks(labels)
    # One triplet per anchor-positive pair whose anchor has a negative.
    expected = (pos_mask & neg_mask.any(dim=1, keepdim=True)).nonzero(as_tuple=True)
    assert len(a) == len(expected[0])
    assert _as_set(a, p) == _as_set(*expected)
    dist = pairwise_distances(l2_normalize(emb))
    eligible = neg_mask & (dist.clamp_min(miner.cutoff) < miner.nonzero_loss_cutoff)
    has_eligible = eligible.any(dim=1)
    assert bool((eligible[a, n] | ~has_eligible[a]).all())


def _unit_at_distances(distances: list[float], dim: int) -> torch.Tensor:
    """Unit vectors at the given chord distances from e_0, in the (e_0, e_1) plane."""
    theta = 2 * np.arcsin(np.asarray(distances) / 2)
    x = np.zeros((len(distances), dim))
    x[:, 0], x[:, 1] = np.cos(theta), np.sin(theta)
    return torch.tensor(x, dtype=torch.float32)


def _draws(neg_distances: list[float], calls: int, dim: int = 8) -> tuple[np.ndarray, torch.Tensor]:
    """Counts of each negative drawn for 40 identical class-0 anchors at e_0, over many calls."""
    anchors = _unit_at_distances([0.0] * 40, dim)
    emb = torch.cat([anchors, _unit_at_distances(neg_distances, dim)])
    labels = torch.cat([torch.zeros(40, dtype=torch.long), torch.arange(1, 1 + len(neg_distances))])
    miner = MINERS.create("distance_weighted", seed=0)
    negatives = torch.cat([miner(emb, labels).neg for _ in range(calls)])
    assert bool((negatives >= 40).all())  # never a positive
    counts = torch.bincount(negatives - 40, minlength=len(neg_distances)).numpy()
    actual = torch.cdist(emb[:1].double(), emb[40:].double())[0]
    return counts, actual


def test_distance_weighted_follows_inverse_density() -> None:
    dim, cutoff, nonzero_cutoff = 8, 0.5, 1.4
    counts, d = _draws([0.2, 0.6, 0.9, 1.1, 1.25, 1.35, 1.45, 1.8], calls=10)
    d = d.numpy().clip(min=cutoff)
    inverse_q = 1.0 / (d ** (dim - 2) * (1 - d**2 / 4) ** ((dim - 3) / 2))
    eligible = d < nonzero_cutoff
    assert counts[~eligible].sum() == 0
    expected = inverse_q[eligible] / inverse_q[eligible].sum() * counts[eligible].sum()
    assert expected.min() > 50  # enough draws for the chi-square approximation
    assert chisquare(counts[eligible], expected).pvalue > 1e-3


def test_distance_weighted_falls_back_to_uniform_when_nothing_is_eligible() -> None:
    counts, _ = _draws([1.5, 1.7, 1.9], calls=3)
    assert chisquare(counts).pvalue > 1e-3


@SETTINGS
@given(
    labels=st.lists(st.integers(0, 3), min_size=1, max_size=12),
    fraction=st.floats(0.01, 1.0),
    seed=st.integers(0, 1000),
)
def test_random_keeps_the_fraction_reproducibly(
    labels: list[int], fraction: float, seed: int
) -> None:
    y = torch.tensor(labels)
    emb = torch.randn(len(labels), 3)
    every = all_triplets(y)
    total = len(every.anchor)
    kept = MINERS.create("random", fraction=fraction, seed=seed)(emb, y)
    if total == 0:
        assert len(kept.anchor) == 0
        return
    assert abs(len(kept.anchor) - fraction * total) <= max(0.5, 1 - fraction * total)
    assert _as_set(*kept) <= _as_set(*every)
    assert len(_as_set(*kept)) == len(kept.anchor)
    again = MINERS.create("random", fraction=fraction, seed=seed)(emb, y)
    assert all(torch.equal(x, z) for x, z in zip(kept, again, strict=True))


def test_random_depends_on_the_seed_and_advances() -> None:
    emb, labels = _pk_batch()
    miner = MINERS.create("random", fraction=0.1, seed=0)
    first, second = miner(emb, labels), miner(emb, labels)
    other = MINERS.create("random", fraction=0.1, seed=1)(emb, labels)
    assert len(first.anchor) == math.floor(0.1 * len(all_triplets(labels).anchor) + 0.5)
    assert not torch.equal(first.neg, second.neg)
    assert not torch.equal(first.neg, other.neg)
