"""Verification on hand-made distances with known ROC, TAR@FAR and EER."""

from __future__ import annotations

import numpy as np
import pytest

from dml_core.analysis.verification import evaluation_pairs, verification
from dml_core.figures.retrieval import (
    ROC_CELLS,
    drawn_vertices,
    roc_figure,
    threshold_histogram_figure,
)


def test_perfectly_separated_pairs() -> None:
    pos = np.linspace(0.1, 0.5, 500)
    neg = np.linspace(1.0, 2.0, 20_000)
    v = verification(pos, neg)
    assert v.eer == 0.0
    assert v.tar_at_far[1e-2] == 1.0
    assert v.tar_at_far[1e-3] == 1.0
    assert 0.5 <= v.best_threshold < 1.0
    assert (v.best_tar, v.best_far) == (1.0, 0.0)
    assert not v.notes


def test_identical_distributions_have_eer_one_half() -> None:
    rng = np.random.default_rng(0)
    v = verification(rng.uniform(size=20_000), rng.uniform(size=20_000))
    assert v.eer == pytest.approx(0.5, abs=0.02)
    assert v.tar_at_far[1e-2] == pytest.approx(1e-2, abs=5e-3)


def test_a_known_staircase() -> None:
    # accept d <= t. pos: 1, 3; neg: 2, 4. Vertices: (0,0) (0,.5) (.5,.5) (.5,1) (1,1)
    v = verification(np.array([1.0, 3.0]), np.array([2.0, 4.0]), target_fars=(0.5,))
    assert v.eer == pytest.approx(0.5)
    assert v.best_tar - v.best_far == pytest.approx(0.5)
    assert v.n_pos == v.n_neg == 2


def test_tar_at_far_is_the_step_value_not_an_interpolation() -> None:
    # 1000 negatives at 1..1000 (FAR steps of 1e-3); positives half at 0, half at 11.5
    neg = np.arange(1, 1001, dtype=float)
    pos = np.array([0.0] * 50 + [11.5] * 50)
    v = verification(pos, neg, target_fars=(0.0105,))
    # FAR <= 0.0105 allows t up to 10 (10 false accepts): only the positives at 0 are accepted,
    # and the loosest such threshold is reported
    assert v.tar_at_far[0.0105] == 0.5
    assert v.threshold_at_far[0.0105] == 10.0


def test_too_few_negatives_are_said_not_guessed() -> None:
    v = verification(np.linspace(0, 1, 100), np.linspace(0.5, 2, 5000))
    assert not np.isnan(v.tar_at_far[1e-2])
    assert np.isnan(v.tar_at_far[1e-3])
    assert any("1e-03" in n or "0.001" in n for n in v.notes)


def test_bad_input_is_rejected() -> None:
    with pytest.raises(ValueError, match="positive and negative pairs"):
        verification(np.array([]), np.array([1.0]))


def test_evaluation_pairs_and_figures() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 30)
    emb = rng.normal(size=(120, 5)).astype(np.float32) + labels[:, None]
    pos, neg = evaluation_pairs(emb, labels, max_points=100)
    assert len(pos) + len(neg) == 100 * 99 // 2
    v = verification(pos, neg)
    assert 0 <= v.eer < 0.5
    roc = roc_figure(v)
    assert roc.layout.xaxis.type == "log"
    hist = threshold_histogram_figure(pos, neg, v)
    assert len(hist.layout.shapes) == 2


def test_tar_at_far_counts_a_far_exactly_at_the_target() -> None:
    """1000 negatives at 1..1000: at threshold 10, FAR is exactly 10 / 1000 = 0.01, with
    exactly the 10 false accepts the estimate needs. Catches: FAR < target instead of <=, and
    a minimum of false accepts counted with <= instead of <."""
    positives = np.r_[np.zeros(50), np.full(50, 10.0)]
    v = verification(positives, np.arange(1, 1001.0), target_fars=(0.01,))
    assert v.tar_at_far[0.01] == 1.0
    assert v.threshold_at_far[0.01] == 10.0


def test_the_eer_and_its_threshold_are_interpolated_where_far_and_frr_cross() -> None:
    """FRR stays 1/3 while FAR rises from 0 to 1/2 between thresholds 2 and 2.5: they cross
    at 1/3, two thirds of the way. Catches: the interpolation's weights swapped, or the
    threshold taken at a grid point."""
    v = verification(np.array([1.0, 2.0, 3.0]), np.array([2.5, 4.0]))
    assert v.eer == pytest.approx(1 / 3)
    assert v.eer_threshold == pytest.approx(2 + 0.5 * 2 / 3)


def test_the_best_threshold_maximises_tar_minus_far() -> None:
    """Youden's J = TAR - FAR. Catches: the best threshold taken where TAR is highest (it
    would accept every pair)."""
    v = verification(np.array([1.0, 1.0, 1.0, 10.0]), np.array([2.0, 3.0, 4.0, 5.0]))
    assert (v.best_threshold, v.best_tar, v.best_far) == (1.0, 0.75, 0.0)


def test_the_roc_is_drawn_within_a_thousandth_of_each_axis_of_every_vertex() -> None:
    """An ROC of 400k pairs (about 200k vertices) is drawn through at most 2,001 of them, first
    to last, each a true vertex with its own threshold, and every vertex lies within √2 / 1000
    of the drawn line in the plotted units (log FAR over the axis, TAR).

    Catches (each tried): every vertex sent (the Retrieval page sent 11 MB for one ROC), cells
    on a linear FAR axis (the flat run to the corner, spread out by the log axis, would be cut
    to one diagonal line), and a grid too coarse.
    """
    rng = np.random.default_rng(0)
    # half the positives tie at d = 0.5: TAR jumps to 0.5 at FAR = 1e-4, a corner that the log
    # axis shows wide (the curve runs flat to it from FAR = 3e-6)
    positives = np.r_[np.full(50_000, 0.5), rng.normal(1.0, 0.3, 50_000)]
    v = verification(positives, rng.normal(1.6, 0.3, 300_000))
    keep = v.far > 0
    far, tar, thresholds = v.far[keep], v.tar[keep], v.thresholds[keep]
    assert far.size > 100_000
    roc = roc_figure(v)
    low = 10 ** roc.layout.xaxis.range[0]
    drawn = drawn_vertices(far, tar, low)
    curve = roc.data[1]
    x, y, t = (np.asarray(a, dtype=float) for a in (curve.x, curve.y, curve.customdata))
    assert 2 < x.size <= 2 * ROC_CELLS + 1
    np.testing.assert_array_equal(far[drawn], x)  # the figure draws these vertices, as they are
    np.testing.assert_array_equal(tar[drawn], y)
    np.testing.assert_array_equal(thresholds[drawn], t)
    assert drawn[0] == 0
    assert drawn[-1] == far.size - 1

    u, w = (np.log10(far) - np.log10(low)) / -np.log10(low), tar  # plotted units, axes span 1
    seg = np.clip(np.searchsorted(drawn, np.arange(far.size), side="right") - 1, 0, drawn.size - 2)
    a, b = drawn[seg], drawn[seg + 1]  # the drawn segment over each vertex
    du, dw = u[b] - u[a], w[b] - w[a]
    s = np.clip(((u - u[a]) * du + (w - w[a]) * dw) / np.maximum(du**2 + dw**2, 1e-300), 0, 1)
    gap = np.hypot(u - (u[a] + s * du), w - (w[a] + s * dw))
    assert gap.max() < np.sqrt(2) / ROC_CELLS
