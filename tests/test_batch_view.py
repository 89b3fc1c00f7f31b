"""Tests of batch_view: one batch, every miner's selection, judged against one chosen positive."""

from pathlib import Path

import numpy as np
import pytest
import torch

from dml_core.analysis.batch_view import (
    SavedRun,
    UntrainedNet,
    draw_batch,
    mine_all,
    miner_params,
    saved_run_margin,
)
from dml_core.config import make_config
from dml_core.errors import ConfigError
from dml_core.figures import batch as batch_figures
from dml_core.figures import thumbnails
from dml_core.figures.images import pixels
from dml_core.figures.style import CLASS_COLORS, NEGATIVE_COLOR, POSITIVE_COLOR
from dml_core.registry import MINERS
from dml_core.runs import RunStore
from dml_core.tuples import EASY, HARD, SEMI_HARD
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
        ta, tp, tn = sel.triplets
        for anchor in range(len(batch.labels)):
            for positive in result.positives_of(anchor)[:2]:
                view = result.anchor_view(name, anchor, int(positive))
                assert view.positive == positive
                assert set(view.positives) == set(p[a1 == anchor].tolist()), name
                if sel.kind == "pairs":  # every negative pair of the anchor, for any positive
                    expected = n[a2 == anchor]
                else:  # the negatives of the triplets (anchor, positive, .)
                    expected = tn[(ta == anchor) & (tp == positive)]
                assert set(view.negatives) == set(expected.tolist()), name
                assert (batch.labels[view.positives] == batch.labels[anchor]).all()
                assert (batch.labels[view.negatives] != batch.labels[anchor]).all()
                np.testing.assert_allclose(view.neg_dist, result.dist[anchor, view.negatives])
                assert view.radius == pytest.approx(result.dist[anchor, positive])
    table = result.summary()
    assert list(table.miner) == list(MINERS)
    shares = table[["easy", "semi-hard", "hard"]].to_numpy()
    assert np.allclose(shares[table.triplets.to_numpy() > 0].sum(axis=1), 1.0)


def test_the_default_positive_is_the_farthest(batch) -> None:
    result = mine_all(batch.emb, batch.labels, {"hard": {}}, margin=0.2)
    for anchor in range(len(batch.labels)):
        positives = result.positives_of(anchor)
        same = np.flatnonzero(batch.labels == batch.labels[anchor])
        assert set(positives.tolist()) == set(same.tolist()) - {anchor}
        assert (np.diff(result.dist[anchor, positives]) <= 0).all()  # farthest first
        assert result.anchor_view("hard", anchor).positive == positives[0]
    with pytest.raises(ConfigError, match="'positive'"):
        result.anchor_view(
            "hard", 0, positive=int(np.flatnonzero(batch.labels != batch.labels[0])[0])
        )


def kind_of(d: float, rings: dict[str, float]) -> int:
    """The kind a negative at distance d has against the drawn rings (FaceNet, Sec. 3.2)."""
    if d <= rings["d(a,p)"]:
        return HARD
    return SEMI_HARD if d < rings["+ α"] else EASY


@pytest.mark.parametrize("margin", [0.05, 0.2, 0.6])
def test_every_negative_mark_agrees_with_the_drawn_rings(batch, margin: float) -> None:
    result = mine_all(batch.emb, batch.labels, ALL, margin=margin)
    checked = 0
    for anchor in (0, 7, 13):
        for positive in [None, *result.positives_of(anchor).tolist()]:
            fig = batch_figures.anchor_polar_figure(batch, result, anchor, list(MINERS), positive)
            for miner in MINERS:
                traces = [t for t in fig.data if t.meta and t.meta["miner"] == miner]
                rings = {t.meta["ring"]: float(t.r[0]) for t in traces if t.meta["role"] == "ring"}
                assert rings["+ α"] == pytest.approx(rings["d(a,p)"] + margin)
                for t in traces:
                    if t.meta["role"] == "negative":
                        for d in t.r:
                            assert kind_of(d, rings) == t.meta["kind"], (miner, anchor, d)
                            checked += 1
    assert checked > 100


def test_kinds_are_shapes_never_a_class_colour(batch) -> None:
    result = mine_all(batch.emb, batch.labels, ALL, margin=0.2)
    reserved = {c.lower() for c in (*CLASS_COLORS, POSITIVE_COLOR, NEGATIVE_COLOR)}
    pca = batch_figures.batch_pca_figure(batch, result, "all", 3)
    polar = batch_figures.anchor_polar_figure(batch, result, 3, list(MINERS))
    for fig in (pca, polar):
        marks = [t for t in fig.data if t.meta and t.meta.get("role") == "negative"]
        symbols = {t.meta["kind"]: t.marker.symbol for t in marks}
        assert len(set(symbols.values())) == 3  # one shape per kind
        for t in marks:
            assert t.marker.color.lower() not in reserved
            assert t.marker.line.color.lower() not in reserved
        lines = {t.name.split(" (")[0]: t.line.color for t in fig.data if t.mode == "lines"}
        assert lines["positive pairs"] == POSITIVE_COLOR
        assert lines["negative pairs"] == NEGATIVE_COLOR
        classes = [t for t in fig.data if t.name in batch.class_names]
        assert all(t.marker.color in CLASS_COLORS for t in classes)


def test_a_saved_runs_margin_is_its_miners(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    cfg = make_config(
        steps=1, probe_size=50, final_eval=False, miner="semi_hard", miner_params={"margin": 0.35}
    )
    semi = store.create(cfg)
    assert saved_run_margin(tmp_path, semi) == pytest.approx(0.35)
    no_margin = store.create(
        make_config(steps=1, probe_size=50, miner="batch_hard", loss_params={"margin": 0.45})
    )
    assert saved_run_margin(tmp_path, no_margin) == pytest.approx(0.45)


def test_a_batch_beyond_the_mining_budget_is_refused_in_one_sentence() -> None:
    labels = np.repeat(np.arange(10), 64)
    emb = np.eye(640, 16, dtype=np.float32)
    with pytest.raises(ConfigError, match=r"lower P or K \(at K = 64, P <= \d\)") as info:
        mine_all(emb, labels, {"all": {}}, margin=0.2)
    assert ". " not in str(info.value)


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


def test_batch_figures(batch) -> None:
    result = mine_all(batch.emb, batch.labels, ALL, margin=0.2)
    pca = batch_figures.batch_pca_figure(batch, result, "semi_hard", anchor=3)
    assert list(pca.data[-1].customdata) == [3]
    polar = batch_figures.anchor_polar_figure(batch, result, 3, list(MINERS))
    assert len(polar.layout.annotations) == len(MINERS)
    assert polar.layout.polar.radialaxis.range[1] >= result.dist[3].max()


def test_drawing_a_batch_leaves_the_global_generator_alone() -> None:
    """Catches: torch.manual_seed in the Miner view, which reseeds every other thread's draws."""
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first = draw_batch("digits", 4, 5, 7, UntrainedNet("mlp", 16))
    assert torch.equal(torch.rand(3), expected)
    again = draw_batch("digits", 4, 5, 7, UntrainedNet("mlp", 16))
    assert np.array_equal(first.emb, again.emb)  # the seed alone still decides the weights


def tile_pixels(fig, tile: dict, shape: tuple[int, int]) -> np.ndarray:
    """The image drawn in one tile of a thumbnail strip, back at the dataset's size (H, W)."""
    z = pixels(fig.data[0])  # (height, width, 3), decoded from the PNG drawn
    h, w = shape
    factor = max(1, thumbnails.TILE // max(h, w))
    pad = thumbnails.FRAME + thumbnails.INSET
    top = int(tile["y"]) + pad + (thumbnails.TILE - h * factor) // 2
    left = int(tile["x"]) + pad + (thumbnails.TILE - w * factor) // 2
    return z[top : top + h * factor : factor, left : left + w * factor : factor, 0]


@pytest.mark.parametrize("miner", ["all", "semi_hard", "batch_hard", "multi_similarity"])
def test_anchor_strip_shows_the_selection_as_images_nearest_first(batch, miner: str) -> None:
    """Catches: tiles in another order than distance (tried: farthest first), a kind worked out
    anew instead of the view's (tried: against the farthest positive instead of the chosen
    one), a tile showing another image than its index (tried: images[j] for the j-th tile)."""
    result = mine_all(batch.emb, batch.labels, ALL, margin=0.3)
    anchor = 6
    positive = int(result.positives_of(anchor)[-1])  # the nearest: kinds differ from the default
    view = result.anchor_view(miner, anchor, positive)
    fig = thumbnails.anchor_strip_figure(batch, view, miner, 0.3)
    tiles = fig.layout.meta["tiles"]
    assert tiles[0] == tiles[0] | {"role": "anchor", "index": anchor}
    for role, indices, dists in (
        ("positive", view.positives, view.pos_dist),
        ("negative", view.negatives, view.neg_dist),
    ):
        shown = [t for t in tiles if t["role"] == role]
        assert sorted(t["index"] for t in shown) == sorted(indices.tolist())
        d = [t["distance"] for t in shown]
        assert d == sorted(d)
        np.testing.assert_allclose(d, np.sort(dists), rtol=1e-6)
        np.testing.assert_allclose(d, result.dist[anchor, [t["index"] for t in shown]], rtol=1e-6)
    kinds = dict(zip(view.negatives.tolist(), view.neg_kind.tolist(), strict=True))
    for t in tiles:
        if t["role"] == "negative":
            assert t["kind"] == kinds[t["index"]]
        np.testing.assert_array_equal(tile_pixels(fig, t, (8, 8)), batch.images[t["index"]])
    captions = [a.text for a in fig.layout.annotations]
    if positive in view.positives:
        assert any("(rings)" in c and f"#{positive}" in c for c in captions)
    else:  # batch_hard keeps only the farthest positive: no negative goes with this one
        assert not len(view.negatives)
        assert any(f"did not select positive #{positive}" in c for c in captions)


def test_anchor_strip_caps_the_negatives_and_says_how_many_are_left() -> None:
    big = draw_batch("digits", 8, 6, 1, UntrainedNet("mlp", 16))
    result = mine_all(big.emb, big.labels, {"all": {}}, margin=0.2)
    view = result.anchor_view("all", 0)
    fig = thumbnails.anchor_strip_figure(big, view, "all", 0.2)
    limit = thumbnails.PER_ROW * thumbnails.MAX_NEGATIVE_ROWS
    negatives = [t for t in fig.layout.meta["tiles"] if t["role"] == "negative"]
    assert len(view.negatives) == 42
    assert [t["index"] for t in negatives] == view.negatives[np.argsort(view.neg_dist)][
        :limit
    ].tolist()
    assert any(f"{42 - limit} farther ones not shown" in a.text for a in fig.layout.annotations)


def test_the_summary_means_are_those_of_each_miners_triplets(batch) -> None:
    """Catches: mean d(a,p) and mean d(a,n) swapped in the table."""
    result = mine_all(batch.emb, batch.labels, {"hard": {}}, margin=0.2)
    row = result.summary().set_index("miner").loc["hard"]
    a, p, n = result.selections["hard"].triplets
    assert row["mean d(a,p)"] == pytest.approx(result.dist[a, p].mean())
    assert row["mean d(a,n)"] == pytest.approx(result.dist[a, n].mean())


def test_the_pages_margin_reaches_the_miner(batch) -> None:
    """A margin of 0.05, below the miner's default of 0.2. Catches: the miner left at its
    default, which picks negatives that are easy at 0.05."""
    assert miner_params("semi_hard", {}, 0.05) == {"margin": 0.05}
    result = mine_all(batch.emb, batch.labels, {"semi_hard": {}}, margin=0.05)
    assert (result.selections["semi_hard"].kinds == SEMI_HARD).all()


def test_the_batchs_images_and_labels_are_its_sampled_rows(batch) -> None:
    """Catches: pictures taken from the first rows of the data instead of the sampled ones
    (every thumbnail would show another sample than its point)."""
    from dml_core.data import load_for_config
    from dml_core.sampling import PKSampler
    from dml_core.user_data.for_runs import thumbnails as tiles

    data = load_for_config(make_config(dataset="digits", net="mlp", embedding_dim=16))
    idx = PKSampler(data.train.y, 4, 5, 0).sample()
    np.testing.assert_array_equal(batch.labels, data.train.y[idx].numpy())
    np.testing.assert_array_equal(batch.images, tiles(data.train.x[idx]))
