"""Tests of batch_view: one batch, every miner's selection, and the sphere sampling comparison."""

from pathlib import Path

import numpy as np
import pytest
import torch

from dml_core.analysis.batch_view import (
    SAMPLING_METHODS,
    SavedRun,
    UntrainedNet,
    draw_batch,
    gradient_noise_variance,
    mine_all,
    sample_sphere_distances,
    sampling_comparison,
)
from dml_core.config import make_config
from dml_core.errors import ConfigError
from dml_core.figures import batch as batch_figures
from dml_core.geometry import distance_density
from dml_core.registry import MINERS
from dml_core.runs import RunStore
from dml_core.tuples import EASY, HARD, SEMI_HARD, Triplets
from tests.saved_runs import train_and_save

ALL = {name: {} for name in MINERS}


@pytest.fixture(scope="module")
def batch():
    return draw_batch("digits", 4, 5, 0, UntrainedNet("mlp", 16))


def test_draw_batch_shapes_and_normalisation(batch) -> None:
    assert batch.emb.shape == (20, 16)
    assert batch.labels.shape == (20,)
    assert batch.images.shape == (20, 8, 8)
    assert np.allclose(np.linalg.norm(batch.emb, axis=1), 1.0, atol=1e-5)
    assert (np.bincount(batch.labels)[np.unique(batch.labels)] == 5).all()
    again = draw_batch("digits", 4, 5, 0, UntrainedNet("mlp", 16))
    assert np.array_equal(batch.emb, again.emb)


@pytest.mark.parametrize(
    ("P", "K", "field"), [(11, 4, "'P'"), (1, 4, "'P'"), (4, 1, "'K'"), (4, 10_000, "'K'")]
)
def test_draw_batch_bad_sizes_name_the_field(P: int, K: int, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        draw_batch("digits", P, K, 0, UntrainedNet())


def test_draw_batch_from_a_saved_run(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    cfg = make_config(steps=2, probe_size=50, embedding_dim=8, final_eval=False, device="cpu")
    run_id = train_and_save(store, cfg)
    batch = draw_batch("digits", 3, 4, 1, SavedRun(tmp_path, run_id))
    assert batch.emb.shape == (12, 8)
    assert run_id in batch.source
    with pytest.raises(ConfigError, match="'dataset'"):
        draw_batch("mnist", 3, 4, 1, SavedRun(tmp_path, run_id))


def test_anchor_views_match_each_miners_tuples(batch) -> None:
    result = mine_all(batch.emb, batch.labels, ALL, margin=0.2)
    assert set(result.selections) == set(MINERS)
    for name, sel in result.selections.items():
        a1, p = sel.pos_pairs
        a2, n = sel.neg_pairs
        for anchor in range(len(batch.labels)):
            view = result.anchor_view(name, anchor)
            assert set(view.positives) == set(p[a1 == anchor].tolist()), name
            assert set(view.negatives) == set(n[a2 == anchor].tolist()), name
            assert (batch.labels[view.positives] == batch.labels[anchor]).all()
            assert (batch.labels[view.negatives] != batch.labels[anchor]).all()
            np.testing.assert_allclose(view.neg_dist, result.dist[anchor, view.negatives])
    table = result.summary()
    assert list(table.miner) == list(MINERS)
    shares = table[["easy", "semi-hard", "hard"]].to_numpy()
    assert np.allclose(shares[table.triplets.to_numpy() > 0].sum(axis=1), 1.0)


def test_semi_hard_and_hard_miners_select_only_their_kind(batch) -> None:
    result = mine_all(batch.emb, batch.labels, {"semi_hard": {}, "hard": {}}, margin=0.3)
    assert (result.selections["semi_hard"].kinds == SEMI_HARD).all()
    assert (result.selections["hard"].kinds == HARD).all()
    for anchor in range(len(batch.labels)):
        assert (result.anchor_view("semi_hard", anchor).neg_kind == SEMI_HARD).all()


def test_kinds_on_a_hand_made_1d_batch() -> None:
    # anchor 0 at x=0, its positive at 1.0; negatives at 0.5 (hard), 1.1 (semi-hard), 2.0 (easy)
    emb = np.array([[0.0], [1.0], [0.5], [1.1], [2.0]])
    labels = np.array([0, 0, 1, 2, 3])
    result = mine_all(emb, labels, {"all": {}}, margin=0.3)
    view = result.anchor_view("all", 0)
    assert view.positives.tolist() == [1]
    assert view.radius == pytest.approx(1.0)
    assert dict(zip(view.negatives.tolist(), view.neg_kind.tolist(), strict=True)) == {
        2: HARD,
        3: SEMI_HARD,
        4: EASY,
    }
    batch_hard = mine_all(emb, labels, {"batch_hard": {}}, margin=0.3).anchor_view("batch_hard", 0)
    assert batch_hard.negatives.tolist() == [2]
    assert batch_hard.neg_kind.tolist() == [HARD]


def test_mine_all_errors_name_the_field(batch) -> None:
    with pytest.raises(ConfigError, match="'K'"):
        mine_all(batch.emb[::5], batch.labels[::5], {"hard": {}}, margin=0.2)
    with pytest.raises(ConfigError, match="'fraction'"):
        mine_all(batch.emb, batch.labels, {"random": {"fraction": 2.0}}, margin=0.2)
    with pytest.raises(ConfigError, match="'margin'"):
        mine_all(batch.emb, batch.labels, {"hard": {}}, margin=0.0)


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
    assert sum(t.type == "histogram" for t in fig.data) == len(SAMPLING_METHODS)


def test_batch_figures(batch) -> None:
    result = mine_all(batch.emb, batch.labels, ALL, margin=0.2)
    pca = batch_figures.batch_pca_figure(batch, result, "semi_hard", anchor=3)
    assert list(pca.data[-1].customdata) == [3]
    polar = batch_figures.anchor_polar_figure(batch, result, 3, list(MINERS))
    assert len(polar.layout.annotations) == len(MINERS)
    assert polar.layout.polar.radialaxis.range[1] >= result.dist[3].max()
