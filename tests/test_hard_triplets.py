"""Tests of analysis.hard_triplets against a brute-force loop over every triplet."""

import math

import numpy as np
import pytest
import torch

from dml_core.analysis import hard_triplets as ht
from dml_core.analysis.hard_triplets import hardest_triplets, loss_boundary
from dml_core.config import make_config
from dml_core.figures.images import pixels
from dml_core.tuples import HARD, SEMI_HARD


def probe(n: int = 30, classes: int = 3, dim: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n, dim))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return emb.astype(np.float32), rng.integers(0, classes, n)


def brute_force(emb, labels, b, one_per_anchor=False):
    """Every (a, p, n) with its violation b(d(a,p)) - d(a,n), written out as loops.

    Returns the violating ones sorted by (-violation, a, p, n), and the count of all triplets.
    """
    x = emb.astype(np.float64)
    rows, total = [], 0
    for a in range(len(x)):
        for p in range(len(x)):
            if p == a or labels[p] != labels[a]:
                continue
            for n in range(len(x)):
                if labels[n] == labels[a]:
                    continue
                total += 1
                d_ap, d_an = np.linalg.norm(x[a] - x[p]), np.linalg.norm(x[a] - x[n])
                v = b(d_ap) - d_an
                if v > 0:
                    rows.append((-v, a, p, n, d_ap, d_an))
    rows.sort()
    if one_per_anchor:
        seen, kept = set(), []
        for row in rows:
            if row[1] not in seen:
                seen.add(row[1])
                kept.append(row)
        rows = kept
    return rows, total


ALPHA = 0.3
BOUNDARIES = {  # the loop's own formulas, next to the loss's negative_boundary
    "triplet": (make_config(loss="triplet", loss_params={"margin": ALPHA}), lambda d: d + ALPHA),
    "quadruplet": (
        make_config(loss="quadruplet", loss_params={"alpha1": ALPHA}),
        lambda d: math.sqrt(d * d + ALPHA),
    ),
    "contrastive": (make_config(loss="contrastive"), lambda d: d),
}


@pytest.mark.parametrize("loss", list(BOUNDARIES))
@pytest.mark.parametrize("one_per_anchor", [False, True])
def test_equals_the_brute_force_loop(loss: str, one_per_anchor: bool) -> None:
    """Catches: ordering by d(a,n) alone (tried: the quadruplet and triplet orders change),
    the margin ignored (tried: violations and the violating count change, and the quadruplet
    order too), a wrong count of violating triplets or of all triplets."""
    cfg, loop_b = BOUNDARIES[loss]
    emb, labels = probe()
    boundary, _ = loss_boundary(cfg, 3)
    k = 12
    ours = hardest_triplets(emb, labels, k, boundary, one_per_anchor=one_per_anchor)
    rows, total = brute_force(emb, labels, loop_b, one_per_anchor)
    expected = rows[:k]
    assert len(ours) == len(expected) == k
    assert ours.total == total
    assert ours.violating == (len(rows) if not one_per_anchor else ours.violating)
    np.testing.assert_array_equal(ours.anchor, [r[1] for r in expected])
    np.testing.assert_array_equal(ours.positive, [r[2] for r in expected])
    np.testing.assert_array_equal(ours.negative, [r[3] for r in expected])
    np.testing.assert_allclose(ours.d_ap, [r[4] for r in expected], atol=1e-5)
    np.testing.assert_allclose(ours.d_an, [r[5] for r in expected], atol=1e-5)
    np.testing.assert_allclose(ours.violation, [-r[0] for r in expected], atol=1e-5)
    margins = [loop_b(r[4]) - r[4] for r in expected]
    np.testing.assert_allclose(ours.margin, margins, atol=1e-5)


def test_violating_count_equals_the_loop() -> None:
    emb, labels = probe(n=40, seed=3)
    for loss, (cfg, loop_b) in BOUNDARIES.items():
        boundary, _ = loss_boundary(cfg, 3)
        rows, total = brute_force(emb, labels, loop_b)
        ours = hardest_triplets(emb, labels, 5, boundary)
        assert (ours.violating, ours.total) == (len(rows), total), loss


def test_chunks_of_anchors_agree_with_one_block(monkeypatch: pytest.MonkeyPatch) -> None:
    """Catches: rows of a later chunk mapped to the wrong anchors or not excluded as self."""
    emb, labels = probe(n=50, seed=5)
    cfg, loop_b = BOUNDARIES["triplet"]
    boundary, _ = loss_boundary(cfg, 3)
    whole = hardest_triplets(emb, labels, 10, boundary)
    monkeypatch.setattr(ht, "CHUNK", 7)
    chunked = hardest_triplets(emb, labels, 10, boundary)
    for field in ("anchor", "positive", "negative"):
        np.testing.assert_array_equal(getattr(whole, field), getattr(chunked, field))
    assert (whole.violating, whole.total) == (chunked.violating, chunked.total)
    rows, _ = brute_force(emb, labels, loop_b)
    np.testing.assert_array_equal(chunked.anchor, [r[1] for r in rows[:10]])


def test_kinds_follow_the_loss_margin() -> None:
    emb, labels = probe()
    cfg, _ = BOUNDARIES["triplet"]
    out = hardest_triplets(emb, labels, 10_000, *loss_boundary(cfg, 3))  # every violating one
    hard = out.d_an <= out.d_ap
    assert (out.kind[hard] == HARD).all()
    assert (out.kind[~hard] == SEMI_HARD).all()  # violating but not hard: inside the margin
    assert (~hard).any()
    assert hard.any()


def test_a_set_with_nothing_violating_gives_an_empty_list() -> None:
    """Two tight clusters far apart: every negative is beyond every positive + margin."""
    emb = np.array([[0, 0], [0.01, 0], [0, 0.01], [5, 5], [5.01, 5], [5, 5.01]], np.float32)
    labels = np.array([0, 0, 0, 1, 1, 1])
    out = hardest_triplets(emb, labels, 5, lambda d: d + 0.2)
    assert len(out) == 0
    assert out.violating == 0
    assert out.total == 6 * 2 * 3


def test_collapsed_embeddings_violate_only_with_a_margin() -> None:
    """All points equal: d = 0 everywhere. No margin: d(a,n) < d(a,p) never holds; a margin:
    every triplet violates (catches a <= instead of < in the count)."""
    emb, labels = np.zeros((12, 3), np.float32), np.repeat([0, 1, 2], 4)
    assert hardest_triplets(emb, labels, 3, lambda d: d).violating == 0
    out = hardest_triplets(emb, labels, 3, lambda d: d + 0.2)
    assert out.violating == out.total == 12 * 3 * 8


@pytest.mark.parametrize(
    ("values", "constant", "word"),
    [
        ({"loss": "triplet", "loss_params": {"margin": 0.35}}, 0.35, "+ 0.35"),
        ({"loss": "cross_batch_memory", "loss_params": {"loss": "triplet"}}, 0.2, "+ 0.2"),
        ({"loss": "triplet_network"}, 0.0, "no triplet margin"),
        ({"loss": "contrastive"}, 0.0, "no triplet margin"),
        ({"loss": "proxy_anchor"}, 0.0, "no triplet margin"),
    ],
)
def test_loss_boundary_is_the_loss_own(values: dict, constant: float, word: str) -> None:
    """Catches: the miner's margin, or a fixed 0.2, used instead of the loss's."""
    boundary, rule = loss_boundary(make_config(**values), 10)
    d = torch.tensor([0.1, 0.7, 1.3], dtype=torch.float64)
    np.testing.assert_allclose(boundary(d) - d, constant, atol=1e-12)
    assert word in rule


def test_loss_boundary_leaves_the_global_random_state_alone() -> None:
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    loss_boundary(make_config(loss="proxy_anchor"), 10)  # builds random proxies
    assert torch.equal(torch.rand(3), expected)


def test_bad_k_names_the_field() -> None:
    emb, labels = probe()
    with pytest.raises(ValueError, match="'k'"):
        hardest_triplets(emb, labels, 0)


def test_one_odd_anchor_fills_the_list_unless_one_per_anchor() -> None:
    """A class-0 image sitting among 14 class-1 images, its two positives far away: its
    triplets with the farthest positive are the 12 worst. Catches candidates cut to fewer than
    k negatives per anchor (tried: k // 3 passes the random sets above, fails here)."""
    angles = np.linspace(0, 2 * np.pi, 14, endpoint=False)
    ring = np.stack([np.cos(angles), np.sin(angles)], 1) * np.linspace(0.05, 0.2, 14)[:, None]
    emb = np.concatenate([[[0.0, 0.0]], [[10.0, 0.0], [20.0, 0.0]], ring]).astype(np.float32)
    labels = np.array([0, 0, 0] + [1] * 14)
    rows, _ = brute_force(emb, labels, lambda d: d + 0.2)
    out = hardest_triplets(emb, labels, 12, lambda d: d + 0.2)
    assert (out.anchor == 0).all()
    assert (out.positive == 2).all()
    np.testing.assert_array_equal(out.negative, [r[3] for r in rows[:12]])
    spread = hardest_triplets(emb, labels, 12, lambda d: d + 0.2, one_per_anchor=True)
    assert len(set(spread.anchor.tolist())) == len(spread)


def test_an_anchor_far_from_all_its_positives_fills_the_list() -> None:
    """Anchor 0 with 14 positives 10 to 11.3 away and a negative beside it: its 12 worst
    triplets use 12 different positives. Catches candidates cut to fewer than k positives per
    anchor (tried: k // 3)."""
    positives = np.stack([10.0 + 0.1 * np.arange(14), np.zeros(14)], 1)
    emb = np.concatenate([[[0.0, 0.0]], positives, [[0.0, 0.01]]]).astype(np.float32)
    labels = np.array([0] * 15 + [1])
    rows, _ = brute_force(emb, labels, lambda d: d + 0.2)
    out = hardest_triplets(emb, labels, 12, lambda d: d + 0.2)
    assert (out.anchor == 0).all()
    assert (out.negative == 15).all()
    np.testing.assert_array_equal(out.positive, [r[2] for r in rows[:12]])


def test_triplet_strip_shows_each_triplet_as_its_images_with_its_numbers() -> None:
    """Catches: a tile showing another image than its row (tried: the anchor's image in every
    row), numbers of another column, or triplets out of the list's order."""
    from dml_core.figures import thumbnails

    emb, labels = probe(n=24)
    pictures = np.random.default_rng(9).integers(0, 256, (24, 8, 8)).astype(np.uint8)
    hard = hardest_triplets(emb, labels, 5, lambda d: d + 0.2)
    fig = thumbnails.triplet_strip_figure(hard, pictures, labels, ["zero", "one", "two"])
    tiles = fig.layout.meta["tiles"]
    assert [t["role"] for t in tiles] == ["anchor", "positive", "negative"] * 5
    z = pixels(fig.data[0])  # (height, width, 3), decoded from the PNG drawn
    pad = thumbnails.FRAME + thumbnails.INSET
    factor = thumbnails.TILE // 8
    for t in tiles:
        top, left = int(t["y"]) + pad, int(t["x"]) + pad
        shown = z[top : top + 8 * factor : factor, left : left + 8 * factor : factor, 0]
        np.testing.assert_array_equal(shown, pictures[t["index"]])
        col = t["triplet"]
        row = {"anchor": hard.anchor, "positive": hard.positive, "negative": hard.negative}
        assert t["index"] == row[t["role"]][col]
        if t["role"] == "negative":
            assert t["d_ap"] == pytest.approx(hard.d_ap[col])
            assert t["violation"] == pytest.approx(hard.violation[col])
    assert f"{hard.violating:,} of {hard.total:,} triplets" in fig.layout.title.text


def test_triplet_strip_says_when_nothing_violates() -> None:
    from dml_core.figures import thumbnails

    emb = np.array([[0, 0], [0.01, 0], [5, 5], [5.01, 5]], np.float32)
    labels = np.array([0, 0, 1, 1])
    hard = hardest_triplets(emb, labels, 5, lambda d: d + 0.2, "rule text")
    fig = thumbnails.triplet_strip_figure(hard, np.zeros((4, 8, 8), np.uint8), labels, ["a", "b"])
    assert fig.layout.title.text.startswith("No triplet of the probe set violates")
    assert fig.layout.meta["tiles"] == []
