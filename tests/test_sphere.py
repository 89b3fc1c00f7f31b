"""Tests of analysis.sphere: distances on the sphere, and the bounded sampling comparison."""

import numpy as np
import pytest
import torch

from dml_core import budgets
from dml_core.analysis.sphere import (
    BIN_EDGES,
    SAMPLING_METHODS,
    anchor_class_groups,
    anchor_classes,
    gradient_noise_variance,
    sample_sphere_distances,
    sampling_comparison,
    uniform_sphere,
)
from dml_core.figures import batch as batch_figures
from dml_core.geometry import distance_density
from dml_core.registry import MINERS
from dml_core.tuples import EASY, SEMI_HARD, Triplets, to_triplets, triplet_kinds

EXACT = ("semi_hard", "hard", "batch_hard")  # deterministic miners: grouping changes nothing


def comparison_points(n: int, dim: int, seed: int) -> torch.Tensor:
    """The uniform points ``sampling_comparison`` draws for ``seed`` (its first draw)."""
    return uniform_sphere(n, dim, torch.Generator().manual_seed(seed)).float()


NUMBERS = ["triplets", "mean d(a,n)", "std d(a,n)", "hard", "semi-hard", "gradient variance"]


@pytest.mark.parametrize("dim", [3, 8, 32, 128])
def test_uniform_sphere_distances_follow_the_density(dim: int) -> None:
    d = sample_sphere_distances(dim, 400, seed=1)
    assert d.shape == (400 * 399 // 2,)
    hist, edges = np.histogram(d, bins=40, range=(0.0, 2.0), density=True)
    centres = (edges[:-1] + edges[1:]) / 2
    expected = distance_density(centres, dim)
    assert np.abs(hist - expected).sum() * 0.05 < 0.05  # L1 distance of the densities


def test_analytic_gradient_variance_matches_monte_carlo() -> None:
    gen = torch.Generator().manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(6, 16, generator=gen, dtype=torch.float64))
    triplets = Triplets(torch.tensor([0, 1]), torch.tensor([2, 3]), torch.tensor([4, 5]))
    sigma, draws = 0.02, 20_000
    analytic = gradient_noise_variance(emb, triplets, sigma)
    a, p, n = (emb[t] for t in triplets)
    noise = sigma / 4.0 * torch.randn(3, draws, 2, 16, generator=gen, dtype=torch.float64)
    to_p = a + noise[0] - p - noise[1]
    to_n = a + noise[0] - n - noise[2]
    g = to_p / to_p.norm(dim=-1, keepdim=True) - to_n / to_n.norm(dim=-1, keepdim=True)
    monte_carlo = g.var(dim=0).sum(dim=-1)
    np.testing.assert_allclose(analytic.numpy(), monte_carlo.numpy(), rtol=0.05)


def test_distance_weighted_spreads_its_negatives_more_than_hard_mining() -> None:
    table = sampling_comparison(32, 8, 8, seed=0).table.set_index("method")
    std = table["std d(a,n)"]
    assert std["distance_weighted"] > std["hard"]
    assert std["distance_weighted"] > 1.5 * std["batch_hard"]


@pytest.mark.parametrize("dim", [3, 8, 32])
def test_gradient_variance_ordering_stated_on_the_page(dim: int) -> None:
    comparison = sampling_comparison(dim, 8, 8, seed=0)
    table = comparison.table.set_index("method")
    assert list(table.index) == list(SAMPLING_METHODS)
    variance = table["gradient variance"]
    assert variance["batch_hard"] > variance["distance_weighted"] > variance["semi_hard"]
    assert variance["distance_weighted"] > variance["uniform"]
    std = table["std d(a,n)"]
    assert std["distance_weighted"] > std["batch_hard"]
    fig = batch_figures.selected_distance_figure(comparison)
    assert sum(t.type == "bar" for t in fig.data) == len(SAMPLING_METHODS)


def test_groups_hold_every_point_as_negative_and_only_their_classes_as_anchors() -> None:
    labels = torch.arange(5).repeat_interleave(4)  # (20,)
    groups = list(anchor_class_groups(labels, labels.unique(), max_triplets=2 * 4 * 3 * 16))
    assert len(groups) == 3  # classes in pairs: {0, 1}, {2, 3}, {4}
    anchored = torch.zeros(20, dtype=torch.int64)
    for group, classes in zip(groups, ([0, 1], [2, 3], [4]), strict=True):
        kept = group == labels
        assert torch.equal(kept, torch.isin(labels, torch.tensor(classes)))
        assert len(group[~kept].unique()) == int((~kept).sum())  # a label of its own each
        assert (group[~kept] > labels.max()).all()
        anchored += kept
    assert (anchored == 1).all()  # every point is an anchor in exactly one group


def direct_variance(emb: torch.Tensor, triplets: Triplets, sigma: float) -> torch.Tensor:
    """The formula of ``gradient_noise_variance`` on the (T, D) difference vectors themselves."""
    a, p, n = (emb[t].double() for t in triplets)  # (T, D) each
    D = emb.shape[1]
    to_p, to_n = a - p, a - n  # (T, D)
    d_ap, d_an = to_p.norm(dim=1), to_n.norm(dim=1)  # (T,)
    c = (to_p * to_n).sum(dim=1) / (d_ap * d_an)  # (T,)
    cross = (D - 2 + c.square()) / (d_ap * d_an)
    trace = 2 * (sigma**2 / D) * ((D - 1) / d_ap.square() + (D - 1) / d_an.square() - cross)
    return trace.clamp(0.0, 4.0).float()


@pytest.mark.parametrize("dim", [2, 3, 16])
def test_gram_variance_equals_the_direct_formula(dim: int) -> None:
    gen = torch.Generator().manual_seed(dim)
    emb = torch.nn.functional.normalize(torch.randn(15, dim, generator=gen, dtype=torch.float64))
    triplets = to_triplets(MINERS.create("all")(emb, torch.arange(5).repeat_interleave(3)))
    torch.testing.assert_close(
        gradient_noise_variance(emb, triplets, 0.5, chunk=17), direct_variance(emb, triplets, 0.5)
    )


@pytest.mark.parametrize(("P", "K", "dim"), [(6, 5, 8), (4, 7, 3)])
def test_grouped_mining_equals_mining_the_whole_batch(P: int, K: int, dim: int) -> None:
    whole = sampling_comparison(dim, P, K, seed=2, group_triplets=10**9)
    grouped = sampling_comparison(dim, P, K, seed=2, group_triplets=1)  # one class per group
    assert (whole.groups, grouped.groups) == (1, P)
    a, b = whole.table.set_index("method"), grouped.table.set_index("method")
    for method in EXACT:
        np.testing.assert_allclose(a.loc[method, NUMBERS], b.loc[method, NUMBERS], rtol=1e-6)
        np.testing.assert_array_equal(whole.counts[method], grouped.counts[method])
    # one draw per anchor-positive pair either way
    assert a.loc["distance_weighted", "triplets"] == b.loc["distance_weighted", "triplets"]


def test_sampled_anchor_classes_count_exactly_their_triplets() -> None:
    P, K, dim = 8, 6, 16
    comparison = sampling_comparison(dim, P, K, seed=5, max_triplets=3 * K * (K - 1) * (P - 1) * K)
    assert len(comparison.anchor_classes) == 3
    assert comparison.anchors == 3 * K < comparison.batch == P * K
    emb = comparison_points(P * K, dim, seed=5)
    labels = torch.arange(P).repeat_interleave(K)
    table = comparison.table.set_index("method")
    for method in ("hard", "semi_hard"):
        params = {"margin": 0.2} if method == "semi_hard" else {}
        a, _, n = MINERS.create(method, **params)(emb, labels)
        mine = torch.isin(labels[a], torch.tensor(comparison.anchor_classes))
        d_an = (emb[a[mine]] - emb[n[mine]]).norm(dim=1)
        assert table.loc[method, "triplets"] == int(mine.sum())
        assert table.loc[method, "mean d(a,n)"] == pytest.approx(float(d_an.mean()), rel=1e-5)


def test_histogram_counts_are_the_selected_distances() -> None:
    comparison = sampling_comparison(8, 5, 4, seed=1)
    emb = comparison_points(20, 8, seed=1)
    labels = torch.arange(5).repeat_interleave(4)
    a, _, n = MINERS.create("batch_hard")(emb, labels)
    d_an = (emb[a] - emb[n]).norm(dim=1).numpy()
    expected = np.histogram(d_an, bins=BIN_EDGES)[0]
    np.testing.assert_array_equal(comparison.counts["batch_hard"], expected)
    assert comparison.table.set_index("method").loc["batch_hard", "triplets"] == 20


def test_kinds_share_matches_the_triplets() -> None:
    comparison = sampling_comparison(16, 4, 5, seed=0, margin=0.3)
    emb = comparison_points(20, 16, seed=0)
    labels = torch.arange(4).repeat_interleave(5)
    a, p, n = MINERS.create("hard")(emb, labels)
    dist = torch.cdist(emb, emb)
    kinds = triplet_kinds(dist[a, p], dist[a, n], 0.3)
    table = comparison.table.set_index("method")
    assert table.loc["hard", "hard"] == pytest.approx(float((kinds == 2).float().mean()))


def test_anchor_classes_fit_the_limit_and_follow_the_seed() -> None:
    labels = torch.arange(10).repeat_interleave(4)
    per_class = 4 * 3 * 36
    chosen = anchor_classes(labels, 3 * per_class, torch.Generator().manual_seed(0))
    again = anchor_classes(labels, 3 * per_class, torch.Generator().manual_seed(0))
    assert len(chosen) == 3
    assert torch.equal(chosen, again)
    assert len(anchor_classes(labels, 1, torch.Generator().manual_seed(0))) == 1
    assert len(anchor_classes(labels, 10**9, torch.Generator().manual_seed(0))) == 10


def test_the_32_by_32_comparison_stays_under_the_memory_budget() -> None:
    """Counted allocation by allocation (budgets.measure), not from the process size.

    Before the bounded version this call held every hard and semi-hard triplet as (T, D)
    float64 tensors: about 20 GB at 32 x 32.
    """
    result, used = budgets.measure(sampling_comparison, 32, 32, 32, 0)
    estimate = budgets.estimate("sampling_comparison", P=32, K=32, dim=32)
    assert used.bytes <= estimate.bytes <= budgets.MEMORY_LIMIT
    assert result.table["triplets"].min() > 0


def test_a_batch_beyond_the_hard_cap_is_refused_before_anything_is_allocated() -> None:
    with pytest.raises(budgets.BudgetError, match="lower P or K") as info:
        budgets.measure(sampling_comparison, 32, 300, 300, 0)
    message = str(info.value)
    assert message.endswith(".")
    assert ". " not in message  # one sentence
    assert "P = 300, K = 300" in message
    assert "limit is 1 GB" in message


def test_sphere_distances_are_budgeted() -> None:
    with pytest.raises(budgets.BudgetError, match="points"):
        sample_sphere_distances(3, 100_000, seed=0)


def test_each_methods_kind_shares_are_those_of_its_triplets() -> None:
    """Catches: the "non-zero loss" or "semi-hard" column filled from another kind's share
    (only the "hard" column was checked)."""
    comparison = sampling_comparison(16, 4, 5, seed=0, margin=0.3)
    emb = uniform_sphere(20, 16, torch.Generator().manual_seed(0)).float()
    labels = torch.arange(4).repeat_interleave(5)
    table = comparison.table.set_index("method")
    dist = torch.cdist(emb, emb)
    for method in ("hard", "semi_hard"):
        params = {"margin": 0.3} if method == "semi_hard" else {}
        a, p, n = MINERS.create(method, **params)(emb, labels)
        kinds = triplet_kinds(dist[a, p], dist[a, n], 0.3)
        semi_hard = float((kinds == SEMI_HARD).float().mean())
        assert table.loc[method, "semi-hard"] == pytest.approx(semi_hard)
        assert table.loc[method, "non-zero loss"] == pytest.approx(
            float((kinds != EASY).float().mean())
        )
